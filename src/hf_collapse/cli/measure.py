"""``hf-collapse measure MODEL``: measure a causal LM on text and write a measured model folder.

Data: local text files (``--train-file`` for the statistics, ``--validation-file`` for NC4) or a
dataset (``--dataset`` + ``--split`` / ``--validation-split``, ``--text-column``), through the one
pipeline of :mod:`hf_collapse.integrations.data`: documents split on ``<|endoftext|>`` lines (else on
blank lines), tokenized with a BOS token in front when the tokenizer has one by ``Dataset.map``
(``--num-proc`` workers) into the Arrow cache (``--cache-dir``; a second run on the same data and
tokenizer reuses it), concatenated and cut into blocks of ``--block-size`` tokens read back
memory-mapped (``--streaming``: an ``IterableDataset``, nothing materialised). The budget
``--max-tokens`` counts *labelled* tokens (positions with a next token); the blocks end exactly at it
before any batching, so 1 and N processes measure the same tokens. Data with fewer labelled tokens
than the budget are measured whole (a warning says so); data shorter than one block form one shorter
block.

Under ``accelerate launch`` / ``torchrun`` each process measures its shard (Accelerate's prepared
dataloader), the statistics are all-reduced over the processes the Accelerator shards over (a process
group it does not use is ignored with a warning), and the main process writes the folder. A process
group that this command initialised (through its Accelerator) is destroyed before it returns.
Several machines need nothing beyond one: the same command on every node, e.g.
``accelerate launch --multi_gpu --num_machines 2 --machine_rank R --main_process_ip HOST
--main_process_port 29500 --num_processes 16 -m hf_collapse.cli measure MODEL --dataset
roneneldan/TinyStories --torch-dtype bfloat16 --output-dir OUT`` (R = 0, 1); the reduction is one
all-reduce, and the main process of each node fills its own ``--cache-dir`` before the others read it.
``--output-dir`` is locked while the command writes it (``core.lockfile``): a second ``measure`` on
the same folder refuses with one line instead of interleaving files.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import sys

import torch

from ..core.distributed import all_true, scope_for
from ..core.errors import UserValueError
from ..core.lockfile import OutputLock
from ..integrations.measurement_data import (
    blocks_loader,
    budget_shortfall,
    check_measurement_data,
    check_measurement_files,
    describe_measurement_data,
    measurement_blocks,
    nc4_budget,
)
from ..integrations.model_source import check_model_source, from_pretrained_or_explain
from ..integrations.settings import CollapseArguments

logger = logging.getLogger(__name__)


def describe_data(args, which) -> str:
    """How the ``train`` or ``validation`` data were given, for the statistics header (file sha256 or dataset/split)."""
    return describe_measurement_data(args, which)


# ---------------------------------------------------------------------------- command
def run(args) -> int:
    import torch.distributed as dist
    from accelerate import Accelerator

    check_measurement_data(args)
    args.measure_options = measure_options(args)  # validates the measure flags before any model is loaded
    check_model_source(args.model, "model folder")  # a mistyped path: one line, before any loading
    check_measurement_files(args)
    if args.no_progress:  # no progress bars at all: transformers' loading bars included
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        import datasets

        datasets.disable_progress_bars()
    owns_group = not (dist.is_available() and dist.is_initialized())
    # on a machine without CUDA, cpu=True makes Accelerate use gloo (MULTI_CPU) under a launcher
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    main = accelerator.is_main_process
    progress = main and not args.no_progress
    lock = None
    try:
        with scope_for(accelerator.num_processes, "hf-collapse measure"):
            lock = _lock_output(args, main)
            return _measure(args, accelerator, main, progress)
    finally:
        if lock is not None:
            lock.release()
        if owns_group:
            _shutdown()


def _lock_output(args, main):
    """The main process locks ``--output-dir`` (core.lockfile.OutputLock) so a second ``hf-collapse
    measure`` on the same folder refuses instead of interleaving files; every process learns the outcome."""
    if not args.output_dir:
        return None
    lock, error = None, None
    if main:
        try:
            lock = OutputLock(args.output_dir, "hf-collapse measure").acquire()
        except ValueError as e:
            error = e
    if not all_true(error is None):
        if lock is not None:
            lock.release()
        if error is not None:
            raise error
        raise UserValueError(f"{args.output_dir!r} is being written by another hf-collapse measure")
    return lock


def _measure(args, accelerator, main, progress) -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..integrations.folder import layer_key, write_measurement
    from ..integrations.hub import save_measured
    from ..integrations.model_card import write_model_card
    from ..integrations.passes import collect_nc4, collect_statistics, measure_statistics

    tokenizer = from_pretrained_or_explain(AutoTokenizer.from_pretrained, args.model, "tokenizer")
    nc4_max = nc4_budget(args)

    def loader(which, budget):
        # the main process of each node tokenizes into the cache first; the others read the cached files
        error = None
        with accelerator.local_main_process_first():
            try:  # raise after the barrier: the other processes must not wait for the main one forever
                blocks = measurement_blocks(args, tokenizer, which)
            except (ValueError, FileNotFoundError) as e:
                error = e
        if error is not None:
            raise error
        note = budget_shortfall(blocks, which, budget)
        if note and main:
            print(f"hf-collapse measure: note: {note}", file=sys.stderr)
        return blocks_loader(blocks, args.batch_size, accelerator.prepare_data_loader)

    train_dl = loader("train", args.max_tokens)
    nc4_dl = loader("validation", nc4_max)
    # the model after the data: bad data fail fast, and tokenizing never overlaps the model in memory
    model = from_pretrained_or_explain(
        AutoModelForCausalLM.from_pretrained, args.model, "model", dtype=getattr(torch, args.torch_dtype)
    )
    model.to(accelerator.device).eval()
    data = describe_data(args, "train")
    # a stored measurement is reused only for the default measure options (it holds their values)
    default_measures = args.measure_options == CollapseArguments().measure_options()
    if not args.no_reuse and not args.layers and not args.covariance and default_measures:
        found = _matching_measurement(args, model, data)
        if found is not None:  # the model folder or Hub repo already holds these statistics
            if main:
                print(
                    f"{args.model} already holds statistics of these weights on this data, budget and k "
                    f"({found.path}): skipping the collection pass (--no-reuse to measure again)"
                )
                print(found.result.table())
                if args.output_dir:
                    extra = {k: v for k, v in found.metrics.items() if k not in found.result}
                    save_measured(
                        args.output_dir,
                        model=model,
                        tokenizer=tokenizer,
                        statistics=found.statistics,
                        result=found.result,
                        metrics_extra=extra,
                        metadata=dict(found.statistics.metadata),
                        save_model=not args.no_save_model,
                    )
                    print(f"wrote {args.output_dir}")
            accelerator.wait_for_everyone()
            return 0
    ckpt = None
    if args.output_dir and args.checkpoint_every:
        ckpt = os.path.join(args.output_dir, "collapse", ".checkpoint")
        if not args.resume and main and os.path.isdir(ckpt):
            shutil.rmtree(ckpt)
        accelerator.wait_for_everyone()
    modules = None if not args.layers else [*resolve_head_name(model), *args.layers]
    cfg = settings_from_args(args, args.measure_options, nc4_max if nc4_dl else None, modules)
    stats = collect_statistics(
        model,
        train_dl,
        cfg,
        progress=progress,
        checkpoint_path=ckpt,
        checkpoint_every=args.checkpoint_every if ckpt else None,
        data_fingerprint=f"{data}|{args.max_tokens}|{args.block_size}|{args.batch_size}",
    )
    nc4 = None
    if nc4_dl is not None:
        nc4 = collect_nc4(model, nc4_dl, stats, cfg, progress=progress)
    settings = {
        "task": "causal_lm",
        "max_tokens": args.max_tokens,
        "nc4_max_tokens": nc4_max if nc4_dl else None,
        "block_size": args.block_size,
        "tile_size": args.tile_size,
        "dtype": args.dtype,
        "data": data,
        "nc4_data": describe_data(args, "validation") or None,
        "model": args.model,
        **cfg.measure_record(),
    }
    report = measure_statistics(model, stats, cfg, nc4=nc4, extra_settings=settings)
    if main:
        print(report.table())
        if args.output_dir:
            metadata = {
                "data": data,
                "nc4_data": settings["nc4_data"] or "",
                "max_tokens": str(args.max_tokens),
                "block_size": str(args.block_size),
                "k": str(float(args.k)),
                # a Hub id as given; a local folder by its name (no machine paths published)
                "model_name": os.path.basename(os.path.normpath(args.model))
                if os.path.isdir(args.model)
                else args.model,
                "command": "hf-collapse " + " ".join(shlex.quote(a) for a in getattr(args, "argv", [])),
            }
            if args.dataset:  # a Hub dataset: the card links it and names the split
                metadata.update(dataset=args.dataset, split=args.split or "", dataset_config=args.dataset_config or "")
            else:
                metadata["data_sha256"] = data.rsplit("sha256:", 1)[-1]
            extra = {k: v for k, v in settings.items() if k not in ("model",)}
            extra.update({key: v for key, v in report.metrics().items() if key not in report.result})
            save_measured(
                args.output_dir,
                model=model,
                tokenizer=tokenizer,
                statistics=report.statistics,
                result=report.result,
                metrics_extra=extra,
                metadata=metadata,
                card=False,
                save_model=not args.no_save_model,
            )
            for name, st in report.all_statistics.items():  # --layers: one named measurement each
                if name != report.primary:
                    write_measurement(
                        args.output_dir,
                        st,
                        report.results[name],
                        name=layer_key(name),
                        model=model,
                        metadata=metadata,
                        metrics_extra=extra,
                    )
            write_model_card(args.output_dir, model_name=metadata["model_name"])
            if ckpt and os.path.isdir(ckpt):
                shutil.rmtree(ckpt)
            print(f"wrote {args.output_dir}")
    accelerator.wait_for_everyone()
    return 0


def add_data_arguments(p) -> None:
    """The data flags (shared with ``hf-collapse sweep``)."""
    d = p.add_argument_group("data")
    d.add_argument("--train-file", help="text file for the statistics (pass 1)")
    d.add_argument("--validation-file", help="text file for NC4 (pass 2)")
    d.add_argument("--dataset", help="Hub dataset id (instead of --train-file)")
    d.add_argument("--dataset-config", default=None, help="dataset configuration name")
    d.add_argument("--split", default="train", help="split for the statistics (default: train)")
    d.add_argument("--validation-split", default=None, help="split for NC4, e.g. validation")
    d.add_argument("--text-column", default="text", help="column holding the text (default: text)")
    d.add_argument(
        "--streaming",
        action="store_true",
        help="stream the data (an IterableDataset: nothing downloaded or cached, tokenized on the fly)",
    )
    d.add_argument(
        "--num-proc",
        type=int,
        default=None,
        help="tokenization workers (default: the cores available, one per 1,000 documents at most)",
    )
    d.add_argument(
        "--cache-dir",
        default=None,
        help="datasets cache for the tokenized data (default: HF_DATASETS_CACHE, ~/.cache/huggingface/datasets)",
    )
    d.add_argument("--max-tokens", type=int, default=None, help="budget of labelled tokens for the statistics")
    d.add_argument("--nc4-max-tokens", type=int, default=None, help="budget for NC4 (default: --max-tokens)")
    d.add_argument("--block-size", type=int, default=256, help="tokens per sequence (default: 256)")
    d.add_argument("--batch-size", type=int, default=8, help="sequences per batch and process (default: 8)")


def add_measure_arguments(p):
    """The measure flags (shared with ``hf-collapse sweep``); returns the group for more."""
    m = p.add_argument_group("measures")
    m.add_argument("--k", type=float, default=2.0, help="CDNV power k (default: 2, as in the paper)")
    m.add_argument("--tile-size", type=int, default=1024, help="tile edge of the pairwise sweep")
    m.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="dtype of the measure tiles")
    m.add_argument("--covariance", action="store_true", help="also accumulate the d x d covariance (nc1_trace_ratio)")
    m.add_argument(
        "--min-count", type=int, default=1, help="treat classes with fewer samples as absent everywhere (default 1)"
    )
    m.add_argument(
        "--classes",
        type=int,
        nargs="+",
        default=None,
        metavar="ID",
        help="measure only these class (token) ids; all others are treated as absent",
    )
    m.add_argument(
        "--global-mean",
        choices=["unweighted", "weighted"],
        default="unweighted",
        help="centre of the class means: unweighted mean of the means (default, the paper) or weighted by counts",
    )
    m.add_argument(
        "--riesz-s",
        type=float,
        default=None,
        metavar="S",
        help="also measure the Riesz s-kernel (gnc2_riesz_mean, gnc2_riesz_cov)",
    )
    m.add_argument(
        "--torch-dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="dtype to load the model in",
    )
    return m


def measure_options(args) -> dict:
    """``measure_collapse`` keywords of the measure flags, validated (ValueError on bad values)."""
    opts = {
        "min_count": args.min_count,
        "classes": args.classes,
        "global_mean": args.global_mean,
        "riesz_s": args.riesz_s,
    }
    CollapseArguments(**{f"collapse_{k}": v for k, v in opts.items()})  # validation only
    return opts


def settings_from_args(args, opts: dict, nc4_max_tokens, modules=None) -> CollapseArguments:
    """The ``CollapseArguments`` of the measure flags (``measure`` and ``sweep``): per-class outputs kept."""
    return CollapseArguments(
        collapse_modules=modules,
        collapse_k=args.k,
        collapse_tile_size=args.tile_size,
        collapse_dtype=args.dtype,
        collapse_max_tokens=args.max_tokens,
        collapse_nc4_max_tokens=nc4_max_tokens,
        collapse_per_class=True,
        collapse_covariance=args.covariance,
        **{f"collapse_{k}": v for k, v in opts.items()},
    )


def _matching_measurement(args, model, data):
    """A measurement stored with the model (local measured folder or Hub repo) that answers this
    request exactly: same weights hash, data, NC4 data, token budget, block size and k; else None."""
    from ..integrations.hub import find_measurement
    from ..integrations.weights_hash import weights_sha256

    try:
        return find_measurement(
            args.model,
            weights_sha256=weights_sha256(model),
            data=data,
            nc4_data=describe_data(args, "validation"),
            max_tokens=str(args.max_tokens),
            block_size=str(args.block_size),
            k=float(args.k),
        )
    except (OSError, ValueError) as e:  # unreachable Hub, unreadable files: just measure
        logger.info("no reusable measurement in %s: %s", args.model, e)
        return None


def resolve_head_name(model):
    """Names of the modules measured by default (the output embeddings)."""
    from ..integrations.hooks import resolve_modules

    return list(resolve_modules(model, None))


def _shutdown():
    """Destroy the process group (one this command initialised) so no rank hangs or aborts at exit."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "measure",
        help="measure neural collapse of a causal LM and write a measured model folder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="Hub id or local folder with model and tokenizer")
    add_data_arguments(p)
    m = add_measure_arguments(p)
    m.add_argument(
        "--layers",
        nargs="*",
        default=None,
        help="also measure at these modules' inputs (layer-wise NC), e.g. model.layers.2",
    )
    o = p.add_argument_group("output")
    o.add_argument(
        "--output-dir",
        help="write the measured model folder here: weights, tokenizer, "
        "collapse/statistics.safetensors, collapse/metrics.json, README.md card (without it nothing is "
        "written: the measures are only printed)",
    )
    o.add_argument("--no-save-model", action="store_true", help="write only collapse/ and README.md")
    o.add_argument(
        "--checkpoint-every",
        type=int,
        default=200,
        help="checkpoint the statistics every N batches into OUTPUT/collapse/.checkpoint (0: never)",
    )
    o.add_argument(
        "--no-reuse",
        action="store_true",
        help="measure even when MODEL already holds statistics of the same weights, data, budget and k",
    )
    o.add_argument("--resume", action="store_true", help="continue from the checkpoint of an interrupted run")
    o.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


if __name__ == "__main__":  # pragma: no cover
    from . import main as _main

    sys.exit(_main(["measure", *sys.argv[1:]]))
