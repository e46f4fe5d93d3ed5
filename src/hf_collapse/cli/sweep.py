"""``hf-collapse sweep RUN_DIR``: neural collapse over a model's training checkpoints.

Measures every ``checkpoint-<step>`` folder of a Trainer output directory in step order (and the run
folder itself, as ``final``, when it holds weights), or with ``--revisions R ...`` those revisions
(branches, tags, commits) of the Hub repo RUN_DIR, on the same data and with the same flags as
``hf-collapse measure``. The text is tokenized once (with ``--tokenizer``, else the first checkpoint's
or the run folder's tokenizer) and every checkpoint sees the same token blocks. Writes to
``--output-dir``: ``trajectory.csv``, ``trajectory.png`` and ``checkpoints/<label>/`` (statistics and
metrics.json of each measured checkpoint); see :mod:`hf_collapse.integrations.trajectory`. Running it again
measures only what is new; checkpoints with byte-identical weights are measured once.
One process (no ``accelerate launch``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ..core.errors import UserValueError
from ..core.io import fmt
from ..core.lockfile import OutputLock
from ..core.options import MeasureOptions
from ..core.registry import HEADLINE_KEYS
from ..integrations.measurement_data import DataSpec
from ..integrations.model_source import ModelSpec, check_model_fits
from ..integrations.settings import CollapseArguments
from .arguments import dataclass_from_args
from .measure import (
    add_data_arguments,
    add_measure_arguments,
    add_model_arguments,
    command_record,
    memory_plan,
    model_name,
)
from .push import network_reason

logger = logging.getLogger(__name__)


def _tokenizer(args, first_folder: Path, spec: ModelSpec):
    from ..integrations.model_source import check_tokenizer

    candidates = (
        [args.tokenizer] if args.tokenizer else [str(first_folder)] + ([args.run] if os.path.isdir(args.run) else [])
    )
    errors = []
    for c in candidates:
        try:
            tok = spec.load(c, "tokenizer") if c == args.tokenizer else _local_tokenizer(c)
            check_tokenizer(tok, c)  # a folder without tokenizer files loads an empty tokenizer
            return tok
        except (OSError, ValueError, TypeError) as e:
            if c == args.tokenizer:
                raise
            errors.append(f"{c}: {e}")
    raise UserValueError(
        "no tokenizer found (Trainer checkpoints often have none): pass --tokenizer NAME_OR_PATH; " + "; ".join(errors)
    )


def _local_tokenizer(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def run(args) -> int:
    import torch

    from ..integrations.passes import measure_model
    from ..integrations.trajectory import (
        TRAJECTORY_CSV,
        TRAJECTORY_PNG,
        discover_revisions,
        hub_checkpoints,
        is_revision_pattern,
        push_sweep,
        resolve,
        run_checkpoints,
        sweep,
    )

    data = dataclass_from_args(args, DataSpec)
    options = dataclass_from_args(args, MeasureOptions)
    spec = dataclass_from_args(args, ModelSpec)
    spec.check()
    data.check()
    if (args.index or args.collection) and not args.push_to:
        raise UserValueError("--index and --collection publish what --push-to MEASURED_REPO pushes: give --push-to too")
    if args.revisions:
        revisions = args.revisions
        if is_revision_pattern(revisions):
            revisions = discover_revisions(args.run, revisions, token=args.token)
            print(f"{len(revisions)} revisions of {args.run}: {' '.join(revisions)}", flush=True)
        checkpoints = hub_checkpoints(args.run, revisions)
    else:
        checkpoints = run_checkpoints(args.run)
    tok = _tokenizer(args, resolve(checkpoints[0]), spec)
    train_blocks = data.blocks(tok, "train")
    nc4_blocks = data.blocks(tok, "validation")
    record = command_record(
        args,
        data,
        options,
        nc4_blocks is not None,
        model_name=model_name(args.run),
        tokenizer=f"{type(tok).__name__}:{len(tok)}",
    )
    cfg = CollapseArguments.from_options(
        options,
        collapse_max_tokens=record.max_tokens,
        collapse_nc4_max_tokens=record.nc4_max_tokens,
        collapse_per_class=True,
        collapse_covariance=args.covariance,
        collapse_statistics_device=args.statistics_device,
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"

    def measure(folder):
        model = spec.load(folder, "model", dtype=getattr(torch, args.torch_dtype))
        spec.place(model, device).eval()  # a model placed by --device-map stays where it is
        check_model_fits(model, data.block_size, tok, (train_blocks, nc4_blocks))  # before any forward
        return measure_model(
            model,
            data.loader(train_blocks),
            data.loader(nc4_blocks),
            cfg,
            record=record,
            progress=not args.no_progress,
            before_pass=memory_plan(options, args, main=True, nc4=nc4_blocks is not None),
        )

    created = not os.path.exists(args.output_dir)
    lock = OutputLock(args.output_dir, "hf-collapse sweep").acquire()  # two sweeps never interleave files
    try:
        rows = sweep(checkpoints, args.output_dir, measure, record)
    except BaseException:
        lock.release()
        _remove_if_empty(args.output_dir, created)  # a failed sweep leaves no empty output folder
        raise
    lock.release()
    shown = [k for k in HEADLINE_KEYS if any(k in r for r in rows)]
    print("  ".join(["checkpoint", "step", *shown, "eval_loss", "duplicate_of"]))
    for r in rows:
        print(
            "  ".join(
                [
                    r["checkpoint"],
                    str(r["step"]),
                    *(fmt(r.get(k), 4) for k in shown),
                    fmt(r.get("eval_loss"), 4),
                    r.get("duplicate_of") or "-",
                ]
            )
        )
    print(f"wrote {Path(args.output_dir) / TRAJECTORY_CSV}, {TRAJECTORY_PNG} and checkpoints/")
    if args.push_to:
        try:
            pushed = push_sweep(checkpoints, rows, args.output_dir, args.push_to, index=args.index, token=args.token)
        except Exception as e:  # the Hub went away: one line; the measurements stay, a rerun pushes the rest
            why = network_reason(e, getattr(args, "debug", False))
            if why is None:
                raise
            print(
                f"hf-collapse sweep: could not push to {args.push_to}: {why}; the measurements are in "
                f"{args.output_dir}: run the same command again to push what is missing",
                file=sys.stderr,
            )
            return 1
        for p in pushed:
            print(f"{args.push_to}@{p['branch']}: {'pushed' if p['pushed'] else 'up to date'} ({p['commit'][:10]})")
        if args.collection:
            from ..integrations.measurements import add_to_collection

            note = f"neural collapse over {len(rows)} revisions of {args.run} (branches {pushed[0]['branch']} ...)"
            print(add_to_collection(args.collection, args.push_to, args.index, note=note[:500], token=args.token))
    return 0


def _remove_if_empty(folder, created: bool) -> None:
    """Remove ``folder`` (and empty folders inside it) when this run created it and wrote no file."""
    if not created or not os.path.isdir(folder):
        return
    from ..core.lockfile import LOCK_NAME

    if any(f != LOCK_NAME for _, _, files in os.walk(folder) for f in files):
        return
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="measure neural collapse over a run's checkpoints (trajectory.csv/.png)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "run",
        metavar="RUN_DIR",
        help="Trainer output directory (checkpoint-* folders), or a Hub repo id with --revisions",
    )
    p.add_argument(
        "--revisions",
        nargs="+",
        default=None,
        metavar="R",
        help="measure these revisions (branches, tags, commits) of the Hub repo RUN_DIR; 'all' or glob patterns "
        "such as 'step*' list its branches and tags (list_repo_refs) and order them by step, else commit date",
    )
    p.add_argument(
        "--tokenizer", default=None, help="tokenizer name or folder (default: the first checkpoint's, else RUN_DIR's)"
    )
    add_model_arguments(p)
    add_data_arguments(p)
    add_measure_arguments(p)
    o = p.add_argument_group("output")
    o.add_argument("--output-dir", required=True, help="where trajectory.csv, trajectory.png and checkpoints/ go")
    o.add_argument("--no-progress", action="store_true", help="no progress bars")
    h = p.add_argument_group("publishing (see docs/family.md)")
    h.add_argument(
        "--push-to",
        default=None,
        metavar="MEASURED_REPO",
        help="push each revision's measured folder to the branch of the same name in this model repo "
        "(one commit each; a branch already holding these statistics is skipped)",
    )
    h.add_argument(
        "--index", default=None, metavar="DATASET_REPO", help="also write the rows to this measurements dataset"
    )
    h.add_argument(
        "--collection",
        default=None,
        metavar="NAMESPACE/TITLE",
        help="add MEASURED_REPO and the index to this collection",
    )
    p.set_defaults(func=run)


if __name__ == "__main__":  # pragma: no cover
    from . import main as _main

    sys.exit(_main(["sweep", *sys.argv[1:]]))
