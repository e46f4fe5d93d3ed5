#!/usr/bin/env python
"""GPU check of hf_collapse at the paper's scale; prints one table. Run it on a machine with CUDA:

    python scripts/gpu_check.py                      # everything, ~ a few minutes on an A100/H100
    python scripts/gpu_check.py --skip-sweep --batches 4

Rows:
1. the pairwise measure set (``measure_collapse`` with float32 weights, so NC3 too) at C = 50,257 and
   128,256 classes, d = 1,024 and 4,096, for each ``--tile-sizes``, against one dense float32 matmul
   with the flops of the upper triangle ((C x d) @ (d x C/2)); the best tile size per (C, d) is marked;
   the peak memory it allocated beyond the statistics, in multiples of the C x d float64 sums;
2. collection (``collect_statistics``) on a randomly initialised GPT-Neo 12x1024 (the paper's largest
   configuration, appendix B; ``hf_collapse.study.train.gpt_neo_config``) in bf16, batches of 32 x 2,048
   tokens, against a plain ``model.eval()`` forward over the same batches (tokens/s, overhead, peak
   memory), and with the statistics in host memory (``collapse_statistics_device="cpu"``);
3. the NC4 pass (``collect_nc4``) over the same batches;
4. host synchronisations of the hook path: ``torch.cuda.set_sync_debug_mode`` around hooked forwards
   (batches already on the device, a device-side token budget): the hooks must add none; with a
   forward that does not sync itself, mode ``"error"`` must not raise.

On a machine without CUDA it says so and exits with status 0 (CPU CI does not depend on it).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
import warnings


def _timed(fn, sync) -> float:
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


def sweep_rows(args, dev, sync) -> list[tuple[str, str, str]]:
    import torch

    from hf_collapse import CollapseStatistics, measure_collapse

    rows = []
    for C, d in ((C, d) for d in args.dims for C in args.classes):
        g = torch.Generator().manual_seed(0)
        stats = CollapseStatistics(C, d, device=dev)
        stats.counts.fill_(10.0)
        stats.sums.copy_((torch.randn(C, d, generator=g, dtype=torch.float64) * 10.0).to(dev))
        stats.sq_sums.copy_(stats.sums.pow(2).sum(1) / 10.0 + 10.0 * d)
        stats.has_shift = True
        weights = torch.randn(C, d, generator=g).to(dev)  # float32, as a model's head
        a = torch.randn(C, d, device=dev)
        b = torch.randn(C // 2, d, device=dev)
        dense = min(_timed(lambda a=a, b=b: a @ b.T, sync) for _ in range(3))
        del a, b
        times, peaks = {}, {}
        for tile in args.tile_sizes:
            run = functools.partial(measure_collapse, stats, weights, k=2.0, per_class=True, tile_size=tile)
            run()  # warm-up (kernels, allocator)
            base = _reset_peak(dev)
            times[tile] = min(_timed(run, sync) for _ in range(2))
            peaks[tile] = (_peak(dev) - base) / (8 * C * d)
        best = min(times, key=times.get)
        for tile, t in times.items():
            rows.append(
                (
                    f"pairwise set C={C:,} d={d:,} tile={tile}" + (" (best)" if tile == best else ""),
                    f"{t * 1e3:.1f} ms",
                    f"{t / dense:.2f}x dense matmul ({dense * 1e3:.1f} ms); peak +{peaks[tile]:.2f}x the sums",
                )
            )
        del stats, weights
        _empty_cache(dev)
    return rows


def _reset_peak(dev) -> int:
    """Reset the device's peak-memory counter; returns the bytes allocated now (0 on the CPU: not tracked)."""
    import torch

    if dev.type != "cuda":
        return 0
    torch.cuda.reset_peak_memory_stats(dev)
    return torch.cuda.memory_allocated(dev)


def _peak(dev) -> int:
    import torch

    return torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else 0


def _empty_cache(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.empty_cache()


def collection_rows(args, dev, sync) -> list[tuple[str, str, str]]:
    import torch
    from transformers import GPTNeoForCausalLM

    from hf_collapse.integrations.hooks import FeatureHooks, StatisticsSink
    from hf_collapse.integrations.passes import collect_nc4, collect_statistics
    from hf_collapse.integrations.settings import CollapseArguments
    from hf_collapse.study.train import gpt_neo_config

    torch.manual_seed(0)
    cfg = gpt_neo_config(args.width, args.depth, args.vocab, max_position_embeddings=max(2048, args.seq_len))
    model = GPTNeoForCausalLM(cfg).to(dev, torch.bfloat16).eval()
    g = torch.Generator().manual_seed(1)
    batches = [
        {"input_ids": torch.randint(0, args.vocab, (args.batch_size, args.seq_len), generator=g).to(dev)}
        for _ in range(args.batches)
    ]
    tokens = args.batches * args.batch_size * (args.seq_len - 1)

    def plain():
        with torch.no_grad():
            for b in batches:
                model(**b)

    plain()  # warm-up
    t_plain = min(_timed(plain, sync) for _ in range(2))
    stats = None

    def hooked():
        nonlocal stats
        stats = collect_statistics(model, batches, progress=False)

    hooked()
    base = _reset_peak(dev)
    t_hooked = min(_timed(hooked, sync) for _ in range(2))
    peak_hooked = _peak(dev) - base
    t_nc4 = _timed(lambda: collect_nc4(model, batches, stats, progress=False), sync)
    host = CollapseArguments(collapse_statistics_device="cpu")
    t_host = _timed(lambda: collect_statistics(model, batches, host, progress=False), sync)
    name = f"GPT-Neo {args.depth}x{args.width} bf16, {args.batches} x {args.batch_size} x {args.seq_len}"
    rows = [
        (f"plain eval forward, {name}", f"{tokens / t_plain:,.0f} tok/s", f"{t_plain:.2f} s"),
        (
            "collect_statistics (hooked)",
            f"{tokens / t_hooked:,.0f} tok/s",
            f"overhead {100 * (t_hooked / t_plain - 1):+.1f}% (goal <= 10%); peak {peak_hooked / 2**30:.2f} GiB "
            f"beyond the model",
        ),
        ("collect_nc4", f"{tokens / t_nc4:,.0f} tok/s", f"{t_nc4 / t_plain:.2f}x plain forward"),
        (
            "collect_statistics, statistics on the CPU",
            f"{tokens / t_host:,.0f} tok/s",
            f"{t_host / t_plain:.2f}x plain",
        ),
    ]
    if dev.type != "cuda":  # the CPU smoke test of this script stops here
        return rows

    # 4. syncs: count the warnings of sync-debug mode "warn" for plain and hooked forwards
    def count_syncs(fn) -> int:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                fn()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message).lower() for w in caught)

    collector = FeatureHooks(model)
    collector.sink = StatisticsSink(collector.num_classes)
    collector.remaining = torch.tensor(tokens // 2, device=dev)  # a budget, as one process cuts it
    few = batches[: min(8, len(batches))]
    n_plain = count_syncs(plain)
    with torch.no_grad(), collector:
        n_hooked = count_syncs(lambda: [model(**b) for b in few]) * len(batches) / len(few)
    verdict = "hooks add none" if n_hooked <= n_plain else f"hooks add {n_hooked - n_plain:.0f}"
    rows.append(("host syncs per pass (sync_debug_mode warn)", f"plain {n_plain}, hooked {n_hooked:.0f}", verdict))
    if n_plain == 0:
        try:
            with torch.no_grad(), collector:
                torch.cuda.set_sync_debug_mode("error")
                try:
                    for b in few:
                        model(**b)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            collector.check()
            rows.append(("set_sync_debug_mode('error') around hooked forwards", "passed", "no sync"))
        except RuntimeError as e:
            rows.append(("set_sync_debug_mode('error') around hooked forwards", "RAISED", str(e).splitlines()[0]))
    else:
        rows.append(("set_sync_debug_mode('error')", "skipped", "the plain forward itself synchronises"))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, nargs="+", default=[50_257, 128_256])
    p.add_argument("--dims", type=int, nargs="+", default=[1_024, 4_096])
    p.add_argument("--tile-sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    p.add_argument("--width", type=int, default=1024, help="GPT-Neo width d (paper's largest: 1024)")
    p.add_argument("--depth", type=int, default=12, help="GPT-Neo depth L (paper's largest: 12)")
    p.add_argument("--vocab", type=int, default=50_257)
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--skip-sweep", action="store_true")
    p.add_argument("--skip-collection", action="store_true")
    args = p.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device on this machine (torch.cuda.is_available() is False): nothing to check. "
            "Run it on a machine with an NVIDIA GPU."
        )
        return 0
    dev = torch.device("cuda")
    sync = torch.cuda.synchronize
    print(
        f"device: {torch.cuda.get_device_name(dev)}, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    rows = []
    if not args.skip_sweep:
        rows += sweep_rows(args, dev, sync)
    if not args.skip_collection:
        rows += collection_rows(args, dev, sync)
    w = [max(len(r[i]) for r in rows) for i in range(3)] if rows else [0, 0, 0]
    for r in rows:
        print(f"{r[0]:<{w[0]}}  {r[1]:>{w[1]}}  {r[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
