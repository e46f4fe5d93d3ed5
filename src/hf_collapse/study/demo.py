"""``hf-collapse demo``: the paper's study in miniature, offline, in a few minutes on a CPU.

Trains a grid of GPT-Neo causal LMs (default 3 sizes x 2 training lengths, appendix-B
architecture scaled down) on the package's built-in procedural stories with a BPE tokenizer
trained on them at run time, measures each model (:mod:`hf_collapse.integrations.passes`), then runs the analysis
(:mod:`hf_collapse.study.analysis`: runs.csv, fits against validation loss, permutation tests, figures,
report.md). ``--train-file`` / ``--dataset-name`` run the same grid on real text instead.
``--seeds N`` runs the paper's Table 1 design instead: N replicas of one size differing only in
the data-order seed, tested measure by measure against validation loss.

Departures from the paper, for the time budget: widths 32-128 instead of 64-1024, 4 heads of
size >= 8 instead of 16, sequences of 64 tokens, a vocabulary of 512 BPE tokens, epochs 1 and 3 of
a ~220K-token corpus, a larger learning rate (3e-3).
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import replace
from pathlib import Path

from ..core.errors import UserValueError
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
            raise UserValueError(
                f"model sizes are LxD (L layers x width d) separated by commas (e.g. 1x32,2x64), got {item!r}"
            ) from None
        if depth < 1 or width < 1:
            raise UserValueError(f"model size {item!r} must have positive depth and width")
        out.append((depth, width))
    return out


def _epochs(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise UserValueError(f"--epochs takes numbers separated by commas (e.g. 1,3), got {text!r}") from None
    if any(v <= 0 for v in vals):
        raise UserValueError(f"--epochs must be positive, got {text!r}")
    return vals


def _heads(width: int) -> int:
    # 16 heads as in the paper where the width allows heads of >= 8 dimensions, else fewer
    for h in (16, 8, 4, 2, 1):
        if width % h == 0 and width // h >= 8:
            return h
    return 1


def expected_direction(rows) -> dict:
    """Does validation loss fall with size (at each training length) and with training (at each size)?

    Each answer is True / False, or None when it cannot be told: one size (or one training length) trained.
    """
    by = {(r["depth"], r["width"], r["epochs"]): r["val_loss"] for r in rows}
    sizes = sorted({(r["num_parameters"], r["depth"], r["width"]) for r in rows})
    epochs = sorted({r["epochs"] for r in rows})
    size_ok = all(by[(a[1], a[2], e)] > by[(b[1], b[2], e)] for e in epochs for a, b in zip(sizes, sizes[1:]))
    train_ok = all(by[(s[1], s[2], a)] > by[(s[1], s[2], b)] for s in sizes for a, b in zip(epochs, epochs[1:]))
    return {
        "loss_falls_with_size": size_ok if len(sizes) > 1 else None,
        "loss_falls_with_epochs": train_ok if len(epochs) > 1 else None,
    }


def answer(holds, what: str) -> str:
    """``yes`` / ``NO`` for an :func:`expected_direction` answer, or why it cannot be told."""
    return f"cannot be told (one {what} trained)" if holds is None else ("yes" if holds else "NO")


DESIGN_FILE = "demo.json"


def check_design(out: Path, design: dict) -> None:
    """Refuse an output folder that holds another demo design; record ``design`` in ``demo.json``.

    A folder whose ``demo.json`` differs, or that holds a demo's ``runs/`` or ``report.md`` without one
    (written before the record existed), raises ValueError naming the first differing field: runs of
    another corpus, vocabulary or grid would replace runs of the same name and leave stale ones beside
    them for ``hf-collapse analyze`` to pool. The same design again re-trains into the same folder.
    """
    import json

    from ..core.io import atomic_write_text

    record = out / DESIGN_FILE
    hint = f"pass another --output-dir (or remove {out})"
    if record.is_file():
        try:
            old = json.loads(record.read_text(encoding="utf-8"))
        except ValueError:
            old = {}
        for key in sorted(set(old) | set(design)):
            if old.get(key) != design.get(key):
                raise UserValueError(
                    f"{out} holds another demo design ({DESIGN_FILE}: {key} is {old.get(key)!r}, this run has "
                    f"{design.get(key)!r}): {hint}"
                )
    elif (out / "runs").is_dir() or (out / "report.md").is_file():
        raise UserValueError(f"{out} holds results of an earlier demo without a design record ({DESIGN_FILE}): {hint}")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(record, json.dumps(design, indent=2) + "\n")


def replica_seeds(seeds: int, seed: int = 0, seed_init: bool = False) -> list[tuple[int, int]]:
    """``(init seed, data seed)`` of each of ``seeds`` replicas: data seeds ``seed .. seed + N - 1``; the
    initialisation fixed at ``seed`` as in the paper's Table 1, or varied alike with ``seed_init``."""
    if not isinstance(seeds, int) or seeds < 3:
        raise UserValueError(f"--seeds needs at least 3 replicas for a fit and a permutation test, got {seeds!r}")
    return [(seed + i if seed_init else seed, seed + i) for i in range(seeds)]


def _plan(sizes: str, epochs: str, seeds, seed: int, seed_init: bool, say) -> list[tuple]:
    """The runs to train, ``(depth, width, epochs, init seed, data seed)``, checked before any training."""
    grid, lengths = parse_sizes(sizes), _epochs(epochs)
    if seeds is None:
        plan = [(d, w, e, seed, None) for d, w in grid for e in lengths]
        if len(plan) < 3:
            say(
                f"note: {len(plan)} run(s) ({sizes} x epochs {epochs}) are too few for the fits (at least 3); "
                f"the report will list the runs with the fits marked not available (add sizes or epochs, or "
                f"use --seeds N)"
            )
        return plan
    if len(grid) > 1 or len(lengths) > 1:
        d, w = grid[0]
        say(
            f"note: --seeds trains replicas of one configuration: the first size ({d}x{w}) and the first "
            f"epochs value ({lengths[0]:g}) are used"
        )
    (d, w), e = grid[0], lengths[0]
    return [(d, w, e, s_init, s_data) for s_init, s_data in replica_seeds(seeds, seed, seed_init)]


def run_demo(
    output_dir="hf_collapse_demo",
    sizes=DEFAULT_SIZES,
    epochs=DEFAULT_EPOCHS,
    *,
    stories: int = 3000,
    train_file=None,
    validation_file=None,
    dataset_name=None,
    tokenizer="EleutherAI/gpt-neo-125M",
    max_train_stories=None,
    block_size: int = 64,
    batch_size: int = 32,
    learning_rate: float = 3e-3,
    weight_decay=None,
    seed: int = 0,
    permutations: int = 10_000,
    measure_max_tokens=None,
    max_eval_blocks=None,
    progress: bool = False,
    seeds=None,
    seed_init: bool = False,
    quiet: bool = False,
) -> dict:
    """Train, measure and analyse the grid (or ``seeds`` replicas); returns the analysis plus ``direction``, ``seconds``.

    ``seeds=N``: the paper's Table 1 design, N replicas of the first size at the first epochs value
    differing only in the data-order seed (``seed_init``: the initialisation too). ``weight_decay``
    defaults to 0.1 for the grid and to Table 1's 0.0005 for replicas. ``quiet``: no per-model lines.
    """
    from .analysis import analyze
    from .train import StudyArguments, prepare_data, train_one

    # flushed: progress shows line by line also when stdout is a pipe or a file (block-buffered)
    say = (lambda *a, **k: None) if quiet else functools.partial(print, flush=True)
    start = time.perf_counter()
    plan = _plan(sizes, epochs, seeds, seed, seed_init, say)
    if weight_decay is None:
        weight_decay = 0.1 if seeds is None else 0.0005
    out = Path(output_dir)
    real = bool(train_file or dataset_name)
    check_design(
        out,
        {
            "runs": [list(p) for p in plan],  # (depth, width, epochs, init seed, data seed)
            "data": {
                "builtin_stories": None if real else stories,
                "train_file": os.path.abspath(train_file) if train_file else None,
                "validation_file": os.path.abspath(validation_file) if validation_file else None,
                "dataset_name": dataset_name,
                "tokenizer": tokenizer if real else None,
                "max_train_stories": max_train_stories,
                "max_eval_blocks": max_eval_blocks,
            },
            "block_size": block_size,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "weight_decay": weight_decay,
            "measure_max_tokens": measure_max_tokens,
        },
    )
    base = StudyArguments(
        block_size=block_size,
        batch_size=batch_size,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        seed=seed,
        builtin_stories=0 if (train_file or dataset_name) else stories,
        train_file=train_file,
        validation_file=validation_file,
        dataset_name=dataset_name or "roneneldan/TinyStories",
        tokenizer=tokenizer,
        max_train_stories=max_train_stories,
        max_eval_stories=None if not dataset_name else max(1, (max_train_stories or 10_000) // 10),
        max_eval_blocks=max_eval_blocks,
        measure_max_tokens=measure_max_tokens,
        output_dir=str(out / "runs"),
        logging_steps=10_000,
        eval_strategy="no",
        progress=progress,
    )
    data = prepare_data(base)
    say(
        f"data: {data.source}: {data.train.num_tokens:,} training tokens, {data.validation.num_tokens:,} validation "
        f"tokens, vocabulary {len(data.tokenizer)}"
    )
    rows, times = [], []
    for i, (depth, width, e, s_init, s_data) in enumerate(plan, 1):
        args = replace(base, width=width, depth=depth, epochs=e, num_heads=_heads(width), seed=s_init, data_seed=s_data)
        # a time left only for replicas (runs of one configuration take alike): over a grid of growing sizes
        # and lengths the runs so far say little about the rest (off by up to 20x), so none is given
        eta = f", about {sum(times) / len(times) * (len(plan) - i + 1):.0f} s left" if times and seeds else ""
        seeds_text = "" if s_data is None else f", init seed {s_init}, data seed {s_data}"
        say(
            f"model {i}/{len(plan)}: {depth}x{width}, {e:g} epoch{'' if e == 1 else 's'}{seeds_text} "
            f"(training + measuring{eta}) ...",
            flush=True,
        )
        t = time.perf_counter()
        # what the runs share, as read_run finds it in run.json / config.json: the figures' titles name it
        row = {
            "data": data.source,
            "vocab_size": len(data.tokenizer),
            "model_type": "gpt_neo",
            **train_one(args, data, progress_every=None),
        }
        times.append(time.perf_counter() - t)
        rows.append(row)
        say(
            f"  {row['name']:<24} {row['num_parameters']:>9,} params  val loss {row['val_loss']:.4f}  "
            f"CDNV {row[HEADLINE_KEYS[0]]:.4g}  ({times[-1]:.1f} s)"
        )
    if seeds is None:
        direction = expected_direction(rows)
        notes = (
            f"Grid of {len(rows)} GPT-Neo models ({sizes} as LxD: L layers x width d; epochs {epochs}) trained on "
            f"{data.source}. Run names are the paper's, TinyStories-LxD_<epochs><decay> with decay L (low, 0.0005) "
            f"or H (high, 0.1). "
            f"Validation loss falls with model size at every training length: "
            f"**{answer(direction['loss_falls_with_size'], 'size')}**; with training at every size: "
            f"**{answer(direction['loss_falls_with_epochs'], 'training length')}**."
        )
        title = "hf-collapse demo: neural collapse vs validation loss"
    else:
        depth, width, e = plan[0][:3]
        direction = {}
        varied = "initialisation and data-order seeds" if seed_init else "data-order seed (initialisation fixed)"
        notes = (
            f"{len(rows)} replicas of one GPT-Neo model ({depth}x{width}, {e:g} epoch(s), weight decay "
            f"{weight_decay:g}) trained on {data.source}, differing only in the {varied}: the paper's "
            f"Table 1 design at demo scale. Validation losses range {min(r['val_loss'] for r in rows):.4f} - "
            f"{max(r['val_loss'] for r in rows):.4f}."
        )
        title = f"hf-collapse demo --seeds {len(rows)}: Table 1 design (seed replicas)"
    result = analyze(rows, out, num_permutations=permutations, seed=seed, title=title, notes=notes, allow_few_runs=True)
    result.update(direction=direction | result["direction"], seconds=time.perf_counter() - start)
    return result


def _summary(result) -> str:
    from .analysis import markdown_table

    rows = sorted(result["rows"], key=lambda r: (r["num_parameters"], r["epochs"], r["val_loss"]))
    return markdown_table(
        rows, ["name", "num_parameters", "epochs", "val_loss", *[k for k in SUMMARY_KEYS if k in result["metrics"]]]
    )
