"""``hf-collapse demo``: the paper's study in miniature, offline, in a few minutes on a CPU.

Trains a grid of GPT-Neo causal LMs (default 3 sizes x 2 training lengths, appendix-B
architecture scaled down) on the package's built-in procedural stories with a BPE tokenizer
trained on them at run time, measures each model (:mod:`hf_collapse.integrations.passes`), then runs the analysis
(:mod:`hf_collapse.study.analysis`: runs.csv, fits against validation loss, permutation tests, figures,
report.md). ``--train-file`` / ``--dataset-name`` run the same grid on real text instead.

Departures from the paper, for the time budget: widths 32-128 instead of 64-1024, 4 heads of
size >= 8 instead of 16, sequences of 64 tokens, a vocabulary of 512 BPE tokens, epochs 1 and 3 of
a ~220K-token corpus, a larger learning rate (3e-3).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from ..core.registry import HEADLINE_KEYS

DEFAULT_SIZES = "1x32,2x64,2x128"
DEFAULT_EPOCHS = "1,3"
SUMMARY_KEYS = HEADLINE_KEYS


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"1x32,2x64"`` -> ``[(1, 32), (2, 64)]`` as (depth L, width d), the paper's ``LxD`` naming."""
    out = []
    for item in text.split(","):
        try:
            depth, width = (int(v) for v in item.strip().lower().split("x"))
        except ValueError:
            raise ValueError(f"model sizes are DEPTHxWIDTH separated by commas (e.g. 1x32,2x64), got {item!r}") from None
        if depth < 1 or width < 1:
            raise ValueError(f"model size {item!r} must have positive depth and width")
        out.append((depth, width))
    return out


def _epochs(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--epochs takes numbers separated by commas (e.g. 1,3), got {text!r}") from None
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
    from .train import StudyArguments, prepare_data, train_one

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
                  f"CDNV {row[HEADLINE_KEYS[0]]:.4g}  ({time.perf_counter() - t:.1f} s)")
    direction = expected_direction(rows)
    notes = (f"Grid of {len(rows)} GPT-Neo models ({sizes} as LxD, epochs {epochs}) trained on {data.source}. "
             f"Validation loss falls with model size at every training length: "
             f"**{'yes' if direction['loss_falls_with_size'] else 'no'}**; with training at every size: "
             f"**{'yes' if direction['loss_falls_with_epochs'] else 'no'}**.")
    result = analyze(rows, out, num_permutations=permutations, seed=seed,
                     title="hf-collapse demo: neural collapse vs validation loss", notes=notes)
    result.update(direction=direction | result["direction"], seconds=time.perf_counter() - start)
    return result


def _summary(result) -> str:
    from .analysis import markdown_table

    rows = sorted(result["rows"], key=lambda r: (r["num_parameters"], r["epochs"]))
    return markdown_table(rows, ["name", "num_parameters", "epochs", "val_loss",
                                 *[k for k in SUMMARY_KEYS if k in result["metrics"]]])
