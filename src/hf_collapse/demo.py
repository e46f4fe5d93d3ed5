"""``hf-collapse demo``: the paper's study in miniature, offline, in a few minutes on a CPU.

Trains a grid of GPT-Neo causal LMs (default 3 sizes x 2 training lengths, appendix-B
architecture scaled down) on the package's built-in procedural stories with a BPE tokenizer
trained on them at run time, measures each model (``hf_collapse.collect``), then runs the analysis
(``hf_collapse.analysis``: runs.csv, fits against validation loss, permutation tests, figures,
report.md). ``--train-file`` / ``--dataset-name`` run the same grid on real text instead.

Departures from the paper, for the time budget: widths 32-128 instead of 64-1024, 4 heads of
size >= 8 instead of 16, sequences of 64 tokens, a vocabulary of 512 BPE tokens, epochs 1 and 3 of
a ~220K-token corpus, a larger learning rate (3e-3).
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import replace
from pathlib import Path

DEFAULT_SIZES = "1x32,2x64,2x128"
DEFAULT_EPOCHS = "1,3"
SUMMARY_KEYS = ("nc1_cdnv", "nc2_equinorm_cov", "gnc2_uniformity_cov", "nc3_duality_mean", "nc4_agreement")


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"1x32,2x64"`` -> ``[(1, 32), (2, 64)]`` as (depth L, width d), the paper's ``LxD`` naming."""
    out = []
    for item in text.split(","):
        try:
            depth, width = (int(v) for v in item.strip().lower().split("x"))
        except ValueError:
            raise ValueError(f"model sizes are DEPTHxWIDTH separated by commas (e.g. 1x32,2x64), got {item!r}")
        if depth < 1 or width < 1:
            raise ValueError(f"model size {item!r} must have positive depth and width")
        out.append((depth, width))
    return out


def _epochs(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--epochs takes numbers separated by commas (e.g. 1,3), got {text!r}")
    if any(v <= 0 for v in vals):
        raise ValueError(f"--epochs must be positive, got {text!r}")
    return vals


def _heads(width: int) -> int:
    # 16 heads as in the paper where the width allows heads of >= 8 dimensions, else fewer
    for h in (16, 8, 4, 2, 1):
        if width % h == 0 and width // h >= 8:
            return h
    return 1


def expected_direction(rows) -> dict:
    """Does validation loss fall with size (at each training length) and with training (at each size)?"""
    by = {(r["depth"], r["width"], r["epochs"]): r["val_loss"] for r in rows}
    sizes = sorted({(r["num_parameters"], r["depth"], r["width"]) for r in rows})
    epochs = sorted({r["epochs"] for r in rows})
    size_ok = all(by[(a[1], a[2], e)] > by[(b[1], b[2], e)] for e in epochs for a, b in zip(sizes, sizes[1:]))
    train_ok = all(by[(s[1], s[2], a)] > by[(s[1], s[2], b)] for s in sizes for a, b in zip(epochs, epochs[1:]))
    return {"loss_falls_with_size": size_ok, "loss_falls_with_epochs": train_ok}


def run_demo(output_dir="hf_collapse_demo", sizes=DEFAULT_SIZES, epochs=DEFAULT_EPOCHS, *, stories: int = 3000,
             train_file=None, validation_file=None, dataset_name=None, tokenizer="EleutherAI/gpt-neo-125M",
             max_train_stories=None, block_size: int = 64, batch_size: int = 32, learning_rate: float = 3e-3,
             weight_decay: float = 0.1, seed: int = 0, permutations: int = 10_000, measure_max_tokens=None,
             max_eval_blocks=None, progress: bool = False) -> dict:
    """Train, measure and analyse the grid; returns the analysis dict plus ``direction`` and ``seconds``."""
    from .analysis import analyze
    from .study import StudyArguments, prepare_data, train_one

    start = time.perf_counter()
    grid, lengths = parse_sizes(sizes), _epochs(epochs)
    out = Path(output_dir)
    base = StudyArguments(
        block_size=block_size, batch_size=batch_size, learning_rate=learning_rate, weight_decay=weight_decay,
        seed=seed, builtin_stories=0 if (train_file or dataset_name) else stories, train_file=train_file,
        validation_file=validation_file, dataset_name=dataset_name or "roneneldan/TinyStories", tokenizer=tokenizer,
        max_train_stories=max_train_stories, max_eval_stories=None if not dataset_name else max(1, (max_train_stories or 10_000) // 10),
        max_eval_blocks=max_eval_blocks, measure_max_tokens=measure_max_tokens, output_dir=str(out / "runs"),
        logging_steps=10_000, eval_strategy="no", progress=progress,
    )
    data = prepare_data(base)
    print(f"data: {data.source}: {data.train.numel():,} training tokens, {data.validation.numel():,} validation "
          f"tokens, vocabulary {len(data.tokenizer)}")
    rows = []
    for depth, width in grid:
        for e in lengths:
            args = replace(base, width=width, depth=depth, epochs=e, num_heads=_heads(width))
            t = time.perf_counter()
            row = train_one(args, data)
            rows.append(row)
            print(f"  {row['name']:<24} {row['num_parameters']:>9,} params  val loss {row['val_loss']:.4f}  "
                  f"CDNV {row['nc1_cdnv']:.4g}  ({time.perf_counter() - t:.1f} s)")
    direction = expected_direction(rows)
    notes = (f"Grid of {len(rows)} GPT-Neo models ({sizes} as LxD, epochs {epochs}) trained on {data.source}. "
             f"Validation loss falls with model size at every training length: "
             f"**{'yes' if direction['loss_falls_with_size'] else 'no'}**; with training at every size: "
             f"**{'yes' if direction['loss_falls_with_epochs'] else 'no'}**.")
    # fewer than 3 runs (e.g. --sizes 1x32): the report lists them with the fits marked not available
    result = analyze(rows, out, num_permutations=permutations, seed=seed,
                     title="hf-collapse demo: neural collapse vs validation loss", notes=notes, allow_few_runs=True)
    result.update(direction=direction | result["direction"], seconds=time.perf_counter() - start)
    return result


def _summary(result) -> str:
    from .analysis import markdown_table

    rows = sorted(result["rows"], key=lambda r: (r["num_parameters"], r["epochs"]))
    return markdown_table(rows, ["name", "num_parameters", "epochs", "val_loss",
                                 *[k for k in SUMMARY_KEYS if k in result["metrics"]]])


def run(args) -> int:
    if not args.verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        logging.getLogger("hf_collapse").setLevel(logging.WARNING)
    result = run_demo(args.output_dir, args.sizes, args.epochs, stories=args.stories, train_file=args.train_file,
                      validation_file=args.validation_file, dataset_name=args.dataset_name, tokenizer=args.tokenizer,
                      max_train_stories=args.max_train_stories, block_size=args.block_size,
                      batch_size=args.batch_size, learning_rate=args.learning_rate, weight_decay=args.weight_decay,
                      seed=args.seed, permutations=args.permutations, measure_max_tokens=args.measure_max_tokens,
                      max_eval_blocks=args.max_eval_blocks, progress=args.verbose)
    d = result["direction"]
    print()
    print(_summary(result))
    print()
    n_dir = len(d["agree"]) + len(d["disagree"])
    print(f"validation loss falls with model size: {'yes' if d['loss_falls_with_size'] else 'NO'}; "
          f"with training: {'yes' if d['loss_falls_with_epochs'] else 'NO'}")
    if "fits_not_available" in d:
        print(d["fits_not_available"])
    else:
        holds = "expected direction holds" if d["holds"] else "expected direction does NOT hold on most measures"
        print(f"lower validation loss goes with more collapse on {len(d['agree'])} of {n_dir} directional "
              f"measures ({holds}); against: {', '.join(d['disagree']) or 'none'}")
    print(f"wrote {result['report']}, runs.csv and {len(result['figures'])} figures in "
          f"{Path(args.output_dir).resolve()} ({result['seconds']:.0f} s)")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train, measure and analyse a small grid of causal LMs (offline, minutes)",
                       description=__doc__.split("\n\n")[1])
    p.add_argument("--output-dir", default="hf_collapse_demo", help="folder for report.md, runs.csv, figures, runs/")
    p.add_argument("--sizes", default=DEFAULT_SIZES, help="model sizes as DEPTHxWIDTH, comma separated")
    p.add_argument("--epochs", default=DEFAULT_EPOCHS, help="training lengths in epochs, comma separated")
    p.add_argument("--stories", type=int, default=3000, help="built-in stories to generate (training)")
    p.add_argument("--train-file", help="real text instead: TinyStories-format file (<|endoftext|> between stories)")
    p.add_argument("--validation-file", help="validation text for --train-file (default: last 10%% of it)")
    p.add_argument("--dataset-name", help="real text from a Hub dataset instead (e.g. roneneldan/TinyStories)")
    p.add_argument("--tokenizer", default="EleutherAI/gpt-neo-125M", help="tokenizer for real text (name or folder)")
    p.add_argument("--max-train-stories", type=int, help="use only the first N real stories")
    p.add_argument("--max-eval-blocks", type=int, help="cap on validation sequences")
    p.add_argument("--measure-max-tokens", type=int, help="token budget of each statistics pass")
    p.add_argument("--block-size", type=int, default=64, help="tokens per training sequence")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=0.1, help="(paper: 0.0005 or 0.1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--permutations", type=int, default=10_000, help="permutations per test")
    p.add_argument("--verbose", action="store_true", help="progress bars and library logs")
    p.set_defaults(func=run)
