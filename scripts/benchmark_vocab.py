"""Time and peak memory of the statistics pass and ``measure_collapse`` at vocabulary scale.

For each C (default 32,768, 131,072 and 262,144 classes) at a small feature width d, a fresh process
runs a statistics pass of ``--tokens`` random features (``CollapseStatistics.update``), then
``measure_collapse`` on it (with float32 weights, k=5) and ``CollapseStatistics.save``, and reports the
wall time of each, the process's peak RSS, and the peak RSS each of the measures and the save adds
above the memory it started from, in multiples of the state (C x d float64), next to the memory plan
(``hf_collapse.integrations.memory``). Peaks per phase come from resetting the kernel's high-water mark
(``/proc/self/clear_refs``, Linux). Run:

  .venv/bin/python scripts/benchmark_vocab.py --dim 64
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time


def one(C: int, d: int, tokens: int, batch: int, measure: bool = True) -> dict:
    import torch

    from hf_collapse.core.measures import measure_collapse
    from hf_collapse.core.statistics import CollapseStatistics
    from hf_collapse.integrations.memory import module_plan

    torch.manual_seed(0)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    stats = CollapseStatistics(C, d)
    t0 = time.perf_counter()
    for start in range(0, tokens, batch):
        n = min(batch, tokens - start)
        labels = torch.randint(0, C, (n,))
        feats = torch.randn(n, d) + labels[:, None].float().sin()
        stats.update(feats, labels)
    t_pass = time.perf_counter() - t0
    peak_pass = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    W = torch.randn(C, d)
    unit = 8 * C * d  # the state's C x d float64 sums
    start = _reset_peak()
    t0 = time.perf_counter()
    res = measure_collapse(stats, weights=W, k=5) if measure else {}
    t_measure = time.perf_counter() - t0 if measure else float("nan")
    measure_extra = (_peak() - start) / unit if measure else float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = _reset_peak()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        stats.save(os.path.join(tmp, "statistics.safetensors"))
        t_save = time.perf_counter() - t0
        save_extra = (_peak() - start) / unit
    plan = module_plan("head", C, d)
    return {
        "C": C,
        "d": d,
        "tokens": tokens,
        "plan_state_MiB": module_plan("head", C, d).state / 2**20,
        "plan_peak_MiB": (plan.state + plan.working_set) / 2**20,
        "plan_measures_x": plan.working_set / unit,
        "pass_s": round(t_pass, 2),
        "measure_s": round(t_measure, 2),
        "save_s": round(t_save, 2),
        "measures_x": measure_extra,
        "save_x": save_extra,
        "rss_before_MiB": base / 2**20,
        "peak_rss_pass_MiB": peak_pass / 2**20,
        "peak_rss_MiB": peak / 2**20,
        "keys": len(res),
    }


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))


def _reset_peak() -> int:
    """Reset the peak RSS (VmHWM) to the current RSS; returns the current RSS in bytes."""
    import gc

    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status("VmRSS:")


def _peak() -> int:
    return _status("VmHWM:")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, nargs="+", default=[32_768, 131_072, 262_144])
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--tokens", type=int, default=1_000_000)
    p.add_argument("--batch", type=int, default=16_384)
    p.add_argument(
        "--measure-up-to",
        type=int,
        default=None,
        help="run measure_collapse only up to this C (its pairwise sweep is O(C^2 d): ~70 s at 32k on 2 cores)",
    )
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-measure", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.classes[0], args.dim, args.tokens, args.batch, not args.no_measure)))
        return 0
    print(
        "C        d    tokens     pass_s  measure_s  save_s  state_MiB  measures+ (plan)  save+  "
        "peak_RSS_MiB (process, torch incl.)"
    )
    for C in args.classes:  # a fresh process each: ru_maxrss is a high-water mark
        cmd = [sys.executable, __file__, "--one", "--classes", str(C), "--dim", str(args.dim)]
        cmd += ["--tokens", str(args.tokens), "--batch", str(args.batch)]
        if args.measure_up_to is not None and C > args.measure_up_to:
            cmd.append("--no-measure")
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        print(
            f"{r['C']:<8} {r['d']:<4} {r['tokens']:<10} {r['pass_s']:<7} {r['measure_s']:<10} {r['save_s']:<7} "
            f"{r['plan_state_MiB']:<10.0f} {r['measures_x']:.2f}x ({r['plan_measures_x']:.2f}x)    "
            f"{r['save_x']:.2f}x  {r['peak_rss_MiB']:.0f} "
            f"(before: {r['rss_before_MiB']:.0f}, after the pass: {r['peak_rss_pass_MiB']:.0f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
