#!/usr/bin/env python
"""Benchmark the data path of ``hf-collapse measure``: memory against corpus size, the tokenization cache,
collection overhead and tokenization throughput.

    python scripts/benchmark_data.py                       # 1M- and 10M-token corpora, tiny GPT-Neo
    python scripts/benchmark_data.py --sizes 1e6 --skip-throughput --model ../shared/data/models/stories260K

The default model is a randomly initialised GPT-Neo 1x32 with the stories260K tokenizer (512 ids),
saved into the temporary folder: its forward is cheap, so the runs show the data path, not the model.

1. Corpora of about ``--sizes`` tokens are made by repeating ``train-head.txt`` (TinyStories) in a
   temporary folder. ``hf-collapse measure`` runs twice on each as a subprocess (a fresh process, so
   the peak RSS, from ``wait4``, is the run's own): the first run tokenizes into a fresh datasets
   cache, the second finds it there. Printed: labelled tokens, peak RSS, wall time, tokens/s.
   Goals (issue 10): peak RSS at 10M tokens within 10% of 1M; the second run not slower.
2. The statistics pass (``collect_statistics``) against a plain ``model.eval()`` forward over the same
   blocks, best of ``--repeats`` (goal: at most 10% slower).
3. Tokenization throughput of ``Dataset.map(batched=True, num_proc=...)`` with 1 worker and with one
   per core, into fresh caches.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HF_COLLAPSE_SHARED_DATA", REPO.parent / "shared" / "data"))


def tiny_model(folder: Path, block_size: int) -> str:
    """A random GPT-Neo 1x32 (4 heads) with the stories260K tokenizer, saved with it into ``folder``."""
    import torch
    from transformers import AutoTokenizer, GPTNeoForCausalLM

    from hf_collapse.study.train import gpt_neo_config

    tok = AutoTokenizer.from_pretrained(SHARED / "models" / "stories260K")
    torch.manual_seed(0)
    cfg = gpt_neo_config(
        32,
        1,
        len(tok),
        num_heads=4,
        window_size=min(256, block_size),
        max_position_embeddings=max(256, block_size),
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    out = folder / "tiny-gpt-neo"
    GPTNeoForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def make_corpus(folder: Path, tokens: float, tokens_per_copy: int) -> Path:
    """``train-head.txt`` repeated until the corpus holds about ``tokens`` tokens."""
    copies = max(1, round(tokens / tokens_per_copy))
    text = (SHARED / "tinystories" / "train-head.txt").read_text(encoding="utf-8")
    if not text.endswith("\n"):
        text += "\n"
    path = folder / f"corpus-{copies}x.txt"
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(copies):
            f.write(text)
            f.write("<|endoftext|>\n")
    return path


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (tokenization workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def _anon_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:")) / 1024
    except (OSError, StopIteration):
        return 0.0


def run_measure(model: str, corpus: Path, cache: Path, args) -> dict:
    """One ``hf-collapse measure`` subprocess: labelled tokens, seconds, and the peak anonymous
    memory (heap, not the shared libraries' file pages, whose residency depends on the page cache)
    of any process of its tree, sampled every 20 ms."""
    cmd = [
        sys.executable,
        "-m",
        "hf_collapse.cli",
        "measure",
        model,
        "--train-file",
        str(corpus),
        "--block-size",
        str(args.block_size),
        "--batch-size",
        str(args.batch_size),
        "--no-progress",
        "--no-reuse",
        "--cache-dir",
        str(cache),
        "--checkpoint-every",
        "0",
    ]
    if args.max_tokens:
        cmd += ["--max-tokens", str(args.max_tokens)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    import threading

    anon = [0.0]

    def sample():
        while proc.poll() is None:
            anon[0] = max([anon[0], *(_anon_mib(p) for p in _tree(proc.pid))])
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    sampler.join()
    seconds = time.perf_counter() - start
    # wait4 has reaped it inside communicate(); the children rusage of this process grows by its peak
    if proc.returncode != 0:
        raise SystemExit(f"measure failed ({proc.returncode}): {err[-2000:]}")
    found = re.search(r"tokens=(\d+)", out)
    return {"tokens": int(found.group(1)) if found else -1, "seconds": seconds, "anon_mib": anon[0]}


def peak_rss_of(fn):
    """Run ``fn`` (which starts one subprocess) in a forked child and return (result, child's peak RSS MiB)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child runs the subprocess; its children's rusage is then that subprocess alone
        os.close(r)
        import json
        import resource

        res = fn()
        res["rss_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        os.write(w, json.dumps(res).encode())
        os._exit(0)
    os.close(w)
    import json

    chunks = []
    while True:
        b = os.read(r, 65536)
        if not b:
            break
        chunks.append(b)
    os.waitpid(pid, 0)
    if not chunks:
        raise SystemExit("the benchmark child failed")
    return json.loads(b"".join(chunks))


def memory_and_cache(args, folder: Path, tokens_per_copy: int) -> list[dict]:
    rows = []
    for size in args.sizes:
        corpus = make_corpus(folder, size, tokens_per_copy)
        cache = folder / f"cache-{corpus.stem}"
        for run in ("first (tokenizes)", *[f"run {i + 2} (cached)" for i in range(args.runs - 1)]):
            res = peak_rss_of(functools.partial(run_measure, args.model, corpus, cache, args))
            res.update(corpus=f"{size:.0e}", run=run)
            rows.append(res)
            print(
                f"  corpus {size:.0e}: {run:<18} tokens {res['tokens']:>11,}  peak RSS {res['rss_mib']:6.1f} MiB (anon {res['anon_mib']:6.1f})  "
                f"{res['seconds']:6.1f} s  {res['tokens'] / res['seconds']:>9,.0f} tokens/s",
                flush=True,
            )
    return rows


def read_all_blocks(args, folder: Path) -> tuple[int, float, float]:
    """Resident memory growth (MiB) after reading every block of the largest corpus in this process,
    with the mapping's pages released as the pass goes (default) and without."""
    from transformers import AutoTokenizer

    from hf_collapse.integrations.data import text_blocks

    def rss_mib() -> float:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024

    tok = AutoTokenizer.from_pretrained(args.model)
    corpus = make_corpus(folder, args.sizes[-1], args.tokens_per_copy)
    grow = []
    for release in (True, False):
        blocks = text_blocks(tok, args.block_size, files=corpus, cache_dir=str(folder / f"cache-{corpus.stem}"))
        if not release:
            blocks.stream._maps = []
        before = rss_mib()
        for i in range(len(blocks)):
            blocks[i]
        grow.append(rss_mib() - before)
    return blocks.num_tokens, grow[0], grow[1]


def collection_overhead(args, folder: Path) -> tuple[float, float, int]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_collapse.integrations.data import collate, text_blocks
    from hf_collapse.integrations.passes import collect_statistics

    tok = AutoTokenizer.from_pretrained(args.model)
    corpus = make_corpus(folder, args.overhead_tokens, args.tokens_per_copy)
    blocks = text_blocks(
        tok,
        args.block_size,
        files=corpus,
        cache_dir=str(folder / "cache-overhead"),
        max_tokens=int(args.overhead_tokens),
    )
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    batches = list(torch.utils.data.DataLoader(blocks, batch_size=args.batch_size, collate_fn=collate))
    tokens = sum(int(b["attention_mask"][:, 1:].sum()) for b in batches)

    def plain():
        with torch.no_grad():
            for b in batches:
                model(**b)

    def hooked():
        collect_statistics(model, batches, progress=False)

    best = {}
    for name, fn in (("plain", plain), ("hooked", hooked)) * args.repeats:
        t = time.perf_counter()
        fn()
        best[name] = min(best.get(name, float("inf")), time.perf_counter() - t)
    return best["plain"], best["hooked"], tokens


def tokenization_throughput(args, folder: Path) -> list[tuple[int, float, float]]:
    from transformers import AutoTokenizer

    from hf_collapse.integrations.data import TokenStream, default_num_proc, load_text_dataset, tokenize_dataset

    tok = AutoTokenizer.from_pretrained(args.model)
    corpus = make_corpus(folder, args.sizes[-1], args.tokens_per_copy)
    docs = load_text_dataset(corpus, cache_dir=str(folder / "cache-docs"))
    out = []
    for n in sorted({1, default_num_proc(None)}):
        fresh = load_text_dataset(corpus, cache_dir=str(folder / f"cache-tok-{n}"))
        t = time.perf_counter()
        ds = tokenize_dataset(fresh, tok, num_proc=n)
        seconds = time.perf_counter() - t
        tokens = len(TokenStream(ds))
        out.append((n, tokens / seconds, len(docs) / seconds))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model",
        default="tiny",
        help="model folder with tokenizer, or 'tiny' (default): a random GPT-Neo 1x32 with the stories260K tokenizer",
    )
    p.add_argument("--sizes", type=float, nargs="+", default=[1e6, 1e7], help="corpus sizes in tokens")
    p.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="budget of the statistics pass (same for every corpus; default: the whole corpus)",
    )
    p.add_argument("--block-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--overhead-tokens", type=float, default=1e6, help="corpus size of the overhead comparison")
    p.add_argument("--repeats", type=int, default=3, help="best of N for the overhead comparison")
    p.add_argument("--runs", type=int, default=3, help="runs per corpus: the first tokenizes, the others use the cache")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-overhead", action="store_true")
    p.add_argument("--skip-throughput", action="store_true")
    args = p.parse_args(argv)
    if not (SHARED / "tinystories" / "train-head.txt").is_file():
        print(f"no shared data at {SHARED} (set HF_COLLAPSE_SHARED_DATA)", file=sys.stderr)
        return 1
    import platform

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets

    datasets.disable_progress_bars()
    from transformers import AutoTokenizer

    from hf_collapse.integrations.data import iter_documents

    tok = AutoTokenizer.from_pretrained(SHARED / "models" / "stories260K" if args.model == "tiny" else args.model)
    docs = list(iter_documents(SHARED / "tinystories" / "train-head.txt"))
    args.tokens_per_copy = sum(len(x) + 1 for x in tok(docs, add_special_tokens=False)["input_ids"])
    cores = len(os.sched_getaffinity(0))
    print(
        f"machine: {platform.node()} {platform.machine()}, {cores} cores; model {args.model}; "
        f"{args.tokens_per_copy:,} tokens per copy of train-head.txt; block {args.block_size}, "
        f"batch {args.batch_size}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    with tempfile.TemporaryDirectory(prefix="hf_collapse_bench_data_") as tmp:
        folder = Path(tmp)
        os.environ["HF_DATASETS_CACHE"] = str(folder / "hf-datasets")  # never the user's cache
        if args.model == "tiny":
            args.model = tiny_model(folder, args.block_size)
        if not args.skip_memory:
            print("hf-collapse measure (subprocess, peak RSS from wait4):")
            rows = memory_and_cache(args, folder, args.tokens_per_copy)
            firsts = [r for r in rows if r["run"].startswith("first")]
            seconds = [r for r in rows if r["run"] == "run 2 (cached)"]
            corpora = list(dict.fromkeys(r["corpus"] for r in rows))
            for key, what in (("rss_mib", "peak RSS"), ("anon_mib", "peak anonymous RSS")):
                peak = {c: max(r[key] for r in rows if r["corpus"] == c) for c in corpora}
                if len(peak) >= 2:
                    (a, pa), (b, pb) = list(peak.items())[0], list(peak.items())[-1]
                    print(
                        f"  highest {what} over the runs: {b} {pb:.1f} MiB / {a} {pa:.1f} MiB = {pb / pa:.3f} "
                        f"(goal <= 1.10)"
                    )
            for f, s in zip(firsts, seconds):
                print(
                    f"  corpus {f['corpus']}: second run {s['seconds']:.1f} s vs first {f['seconds']:.1f} s "
                    f"({'not slower' if s['seconds'] <= f['seconds'] else 'SLOWER'})"
                )
            n, released, kept = read_all_blocks(args, folder)
            print(
                f"  reading all {n:,} tokens of the {args.sizes[-1]:.0e} corpus block by block in one process: "
                f"RSS +{released:.1f} MiB (pages released every 8 MiB read), +{kept:.1f} MiB without releasing"
            )
        if not args.skip_overhead:
            plain, hooked, tokens = collection_overhead(args, folder)
            print(
                f"statistics pass vs plain eval forward ({tokens:,} labelled tokens, best of {args.repeats}): "
                f"plain {tokens / plain:,.0f} tokens/s, collect_statistics {tokens / hooked:,.0f} tokens/s, "
                f"overhead {100 * (hooked / plain - 1):+.1f}% (goal <= 10%)"
            )
        if not args.skip_throughput:
            for n, tps, dps in tokenization_throughput(args, folder):
                print(
                    f"tokenization, num_proc={n}: {tps:,.0f} tokens/s ({dps:,.0f} documents/s), "
                    f"corpus {args.sizes[-1]:.0e}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
