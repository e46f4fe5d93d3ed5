"""Benchmark: the pairwise measure set at the paper's scale vs one dense matmul of the same size.

Prints, for C classes of dimension d (default the paper's 29,233 x 1,024) on random means:
- wall time of ``measure_collapse`` (CDNV, interference, log kernel, per-class row means), in a
  fresh process, everything included;
- wall time of one plain dense float32 matmul with the flops of the upper triangle
  ((C x d) @ (d x C/2)), measured in the same run (the faster of two runs);
- their ratio (goal <= 1.5, stretch 1.2) and the peak memory beyond the inputs (goal < 2 GiB).

With ``--riesz-s S`` the Riesz kernel rides the sweep too (``gnc2_riesz_mean``/``gnc2_riesz_cov``).
It also times, alone, the d x d closed forms that every call computes (``nc2_etf_error``,
``effective_rank``, ``nc1_trace_quotient``: one d x d Gram of the centred means + its spectrum).

    python scripts/benchmark_measures.py                 # paper scale, ~30 s on 2 CPU cores
    python scripts/benchmark_measures.py --riesz-s 2     # with the Riesz kernel
    python scripts/benchmark_measures.py --classes 3000 --dim 256
"""

from __future__ import annotations

import argparse
import resource
import time

clock = time.perf_counter  # time.process_time with --cpu-time


def rss_gib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, default=29_233)
    p.add_argument("--dim", type=int, default=1_024)
    p.add_argument("--tile-size", type=int, default=1024)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--riesz-s", type=float, default=None, help="also compute the Riesz s-kernel measures")
    p.add_argument(
        "--cpu-time",
        action="store_true",
        help="one thread, timed by process CPU time: robust to other jobs on a shared machine",
    )
    args = p.parse_args(argv)

    import torch

    from hf_collapse import CollapseStatistics, measure_collapse

    global clock
    if args.cpu_time:
        torch.set_num_threads(1)
        clock = time.process_time

    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    C, d = args.classes, args.dim
    g = torch.Generator().manual_seed(args.seed)
    # statistics of random class means: one fake sample per class is enough to fill the state
    stats = CollapseStatistics(C, d, device=dev)
    stats.counts.fill_(10.0)
    stats.sums.copy_(torch.randn(C, d, generator=g, dtype=torch.float64) * 10.0)
    stats.sq_sums.copy_(stats.sums.pow(2).sum(1) / 10.0 + 10.0 * d)  # sigma_c^2 = d
    stats.has_shift = True
    sync()
    base_rss = rss_gib()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()

    a = torch.randn(C, d, generator=g).to(dev)
    b = torch.randn(C // 2, d, generator=g).to(dev)

    def dense() -> float:  # the flops of the upper triangle: (C x d) @ (d x C/2)
        sync()
        t = clock()
        _ = a @ b.T
        sync()
        return clock() - t

    t0 = clock()
    res = measure_collapse(
        stats, k=2.0, per_class=True, tile_size=args.tile_size, dtype=getattr(torch, args.dtype), riesz_s=args.riesz_s
    )
    sync()
    t_measure = clock() - t0
    peak = peak_gib() - base_rss
    if dev.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base_cuda) / 2**30
    # the faster of two dense runs (after the measure, so they do not count in its peak memory):
    # the ratio errs on the high side
    t_dense = min(dense(), dense())
    t_spectral = spectral_seconds(stats, getattr(torch, args.dtype), sync)

    print(
        f"C={C} d={d} tile={args.tile_size} dtype={args.dtype} device={dev} threads={torch.get_num_threads()}"
        + (" (CPU time)" if args.cpu_time else " (wall time)")
    )
    for key in (
        "nc1_cdnv",
        "nc2_interference_mean",
        "nc2_interference_std",
        "gnc2_log_kernel_mean",
        "gnc2_uniformity_cov",
        "nc2_etf_error",
        "effective_rank",
        "gnc2_riesz_mean",
        "gnc2_riesz_cov",
    ):
        if key in res:
            print(f"  {key:<24} {res[key]:.6g}")
    print(f"measure_collapse (pairwise set): {t_measure:8.2f} s")
    print(f"dense matmul (C x d)@(d x C/2):   {t_dense:8.2f} s")
    print(f"ratio:                           {t_measure / t_dense:8.2f}   (goal <= 1.5, stretch 1.2)")
    print(f"peak memory beyond inputs:       {peak:8.2f} GiB (goal < 2)")
    print(f"of which d x d closed forms:     {t_spectral:8.2f} s  (Gram of M + spectrum, timed alone)")
    print(f"ratio without them:              {(t_measure - t_spectral) / t_dense:8.2f}")


def spectral_seconds(stats, dtype, sync) -> float:
    """Wall time of the d x d closed forms alone on the same centred means (the faster of two runs)."""
    from hf_collapse.core.measures import _spectral

    idx = stats.present.nonzero().squeeze(1)
    counts, mu, sig = stats.moments(idx)
    M = mu - mu.mean(0)
    r = M.norm(dim=1)
    best = float("inf")
    for _ in range(2):
        sync()
        t = clock()
        _spectral(M, r, counts, sig, dtype)
        sync()
        best = min(best, clock() - t)
    return best


if __name__ == "__main__":
    main()
