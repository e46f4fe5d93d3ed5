"""Cost of collecting NC statistics inside an evaluation pass.

Model: GPT-Neo, 2 layers, d = 128, vocabulary 50,257 (random init; the cost does not depend on the
weights). Three passes over the same batches under ``torch.no_grad`` in eval mode:

1. plain evaluation (forward with labels, as ``Trainer.evaluate`` does);
2. the same with the statistics hooks (``FeatureCollector``, pass 1);
3. the NC4 pass (``collect_nc4``: forward + nearest-centre matmul against the K class means).

Prints the ratios 2/1 (goal <= 1.10) and 3/1 (goal <= 2.2), the best of ``--repeats`` runs each,
and the peak memory added by collection (CPU: growth of the process's max RSS; CUDA: max allocated).

    PYTHONPATH=src python scripts/benchmark_collection.py [--text FILE --tokenizer DIR] [--device cuda]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import torch


def make_batches(args):
    g = torch.Generator().manual_seed(0)
    if args.text:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.tokenizer)
        with open(args.text, encoding="utf-8") as f:
            ids = tok(f.read(args.batches * args.batch_size * args.seq_len * 8))["input_ids"]
        ids = torch.tensor(ids[: args.batches * args.batch_size * args.seq_len])
        if ids.numel() < args.batches * args.batch_size * args.seq_len:
            sys.exit("--text is too short for --batches x --batch-size x --seq-len tokens")
        ids = ids.view(args.batches, args.batch_size, args.seq_len)
    else:  # uniform tokens: nearly every class present, the worst case for the NC4 matmul
        ids = torch.randint(0, 50257, (args.batches, args.batch_size, args.seq_len), generator=g)
    return [{"input_ids": b.to(args.device), "labels": b.to(args.device)} for b in ids]


def timed(fn, repeats, device):
    best = float("inf")
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def peak_mb(device):
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--text", help="tokenize this text file instead of uniform random tokens")
    p.add_argument("--tokenizer", help="tokenizer folder for --text (GPT-2)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    from hf_collapse.collect import FeatureCollector, _run_pass, collect_nc4

    torch.manual_seed(0)
    cfg = GPTNeoConfig(vocab_size=50257, hidden_size=128, num_layers=2, num_heads=4,
                       attention_types=[[["global", "local"], 1]], max_position_embeddings=max(args.seq_len, 128))
    model = GPTNeoForCausalLM(cfg).to(args.device).eval()
    batches = make_batches(args)
    tokens = sum(b["input_ids"].numel() for b in batches)

    def plain():
        with torch.no_grad():
            for b in batches:
                model(**b)

    holder = {}

    def collect():
        holder.clear()  # one accumulator alive at a time
        col = FeatureCollector(model)
        _run_pass(model, batches, col, max_tokens=None, max_batches=None, progress=False, desc="")
        holder["stats"] = col.statistics["lm_head"]

    def nc4():
        collect_nc4(model, batches, holder["stats"], progress=False)

    plain()  # warm-up
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t_plain = timed(plain, args.repeats, args.device)
    mem_plain = peak_mb(args.device)
    t_collect = timed(collect, args.repeats, args.device)
    mem_collect = peak_mb(args.device)
    t_nc4 = timed(nc4, args.repeats, args.device)
    stats = holder["stats"]
    stats_mb = (stats.sums.numel() + 2 * stats.counts.numel()) * 8 / 2**20
    K = int(stats.present.sum())
    print(f"GPT-Neo 2 layers d=128 V=50257 | {args.batches} batches x {args.batch_size} x {args.seq_len} = {tokens} "
          f"tokens | K={K} classes present | device={args.device} threads={torch.get_num_threads()}")
    print(f"plain eval pass      {t_plain:8.3f} s")
    print(f"with collection      {t_collect:8.3f} s   ratio {t_collect / t_plain:.3f}  (goal <= 1.10)")
    print(f"NC4 pass             {t_nc4:8.3f} s   ratio {t_nc4 / t_plain:.3f}  (goal <= 2.2)")
    print(f"peak memory: plain {mem_plain:.0f} MiB, after collection {mem_collect:.0f} MiB "
          f"(+{mem_collect - mem_plain:.0f} MiB; statistics C x d float64 = {stats_mb:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
