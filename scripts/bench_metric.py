"""Cost of the ``neural_collapse`` evaluate metric: add_batch / compute for N x d float32 features.

    PYTHONPATH=src python scripts/bench_metric.py                   # 100k x 768, 100 batches, C=1000
    PYTHONPATH=src python scripts/bench_metric.py --samples 20000   # smaller

Prints seconds per phase and the process's peak RSS after each phase, and the same data through the
core (``CollapseStatistics.update`` + ``measure_collapse``) for comparison.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import evaluate
    import torch

    from hf_collapse import CollapseStatistics, measure_collapse

    rng = np.random.default_rng(args.seed)
    X = rng.standard_normal((args.samples, args.dim), dtype=np.float32)  # (N, d)
    y = rng.integers(0, args.num_classes, args.samples)  # (N,)
    print(
        f"data: {args.samples} x {args.dim} float32 ({X.nbytes / 2**20:.0f} MiB), C={args.num_classes}, "
        f"batches of {args.batch_size}; peak RSS {peak_rss_gb():.2f} GB"
    )

    with tempfile.TemporaryDirectory() as cache:
        nc = evaluate.load(str(REPO / "metrics" / "neural_collapse"), cache_dir=cache)
        t0 = time.perf_counter()
        for i in range(0, args.samples, args.batch_size):
            nc.add_batch(features=X[i : i + args.batch_size], labels=y[i : i + args.batch_size])
        t1 = time.perf_counter()
        print(f"metric add_batch: {t1 - t0:.2f} s   peak RSS {peak_rss_gb():.2f} GB")
        result = nc.compute(num_classes=args.num_classes)
        t2 = time.perf_counter()
        print(
            f"metric compute:   {t2 - t1:.2f} s   peak RSS {peak_rss_gb():.2f} GB   (nc1_cdnv={result['nc1_cdnv']:.6g})"
        )

    t0 = time.perf_counter()
    stats = CollapseStatistics(args.num_classes, args.dim)
    for i in range(0, args.samples, args.batch_size):
        stats.update(torch.from_numpy(X[i : i + args.batch_size]), torch.from_numpy(y[i : i + args.batch_size]))
    t1 = time.perf_counter()
    core = measure_collapse(stats)
    t2 = time.perf_counter()
    print(f"core update:      {t1 - t0:.2f} s;  core measure: {t2 - t1:.2f} s   (nc1_cdnv={core['nc1_cdnv']:.6g})")
    same = all(abs(result[k] - core[k]) <= 1e-9 * max(1.0, abs(core[k])) for k in core)
    print(f"metric == core: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
