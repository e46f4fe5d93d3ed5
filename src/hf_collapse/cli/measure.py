"""``hf-collapse measure MODEL``: measure a causal LM on text and write a measured model folder.

Example (one machine):

  hf-collapse measure ./my-model --train-file train.txt --validation-file val.txt \\
      --max-tokens 200000 --output-dir my-model-measured

The statistics pass reads --train-file (or --dataset/--split), the NC4 pass --validation-file (or
--validation-split); --max-tokens counts labelled tokens. Several processes: the same command under
`accelerate launch -m hf_collapse.cli measure ...`. Data pipeline, caching, resuming and multi-node
runs: docs/measuring.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import sys
from typing import Optional

import torch

from ..core.distributed import all_true, scope_for
from ..core.errors import UserValueError
from ..core.lockfile import OutputLock
from ..core.options import MeasureOptions
from ..integrations.folder import list_measurements
from ..integrations.measurement_data import DataSpec
from ..integrations.model_source import ModelSpec, check_model_source
from ..integrations.record import MeasurementRecord
from ..integrations.settings import CollapseArguments
from .arguments import add_dataclass_arguments, dataclass_from_args

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- command
def run(args) -> int:
    import torch.distributed as dist
    from accelerate import Accelerator

    data = dataclass_from_args(args, DataSpec)
    options = dataclass_from_args(args, MeasureOptions)  # validated before any model is loaded
    spec = dataclass_from_args(args, ModelSpec)
    spec.check()
    check_model_source(args.model, "model folder")  # a mistyped path: one line, before any loading
    data.check()
    check_output_dir(args.output_dir, args.overwrite or args.resume)
    if args.layers:
        check_layers(args.model, args.layers, spec)  # a mistyped name: one line before any data or weights are read
    if args.no_progress:  # no progress bars at all: transformers' loading bars included
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        import datasets

        datasets.disable_progress_bars()
    owns_group = not (dist.is_available() and dist.is_initialized())
    # on a machine without CUDA, cpu=True makes Accelerate use gloo (MULTI_CPU) under a launcher
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    lock = None
    try:
        with scope_for(accelerator.num_processes, "hf-collapse measure"):
            lock = _lock_output(args.output_dir, accelerator.is_main_process)
            return _measure(args, data, options, accelerator, spec)
    finally:
        if lock is not None:
            lock.release()
        if owns_group:
            _shutdown()


def check_output_dir(folder, overwrite: bool) -> None:
    """An output folder that already holds a measurement is refused unless ``overwrite``: one line
    naming the folder and the way out."""
    if folder and not overwrite and list_measurements(folder):
        raise UserValueError(
            f"{folder!r} already holds a measurement: pass --overwrite to replace it, or choose another --output-dir"
        )


def check_layers(source: str, layers, spec: Optional[ModelSpec] = None) -> None:
    """ValueError (with near matches) for a ``--layers`` name the model does not have, from the model's
    skeleton on the meta device (its config only: no weights are read)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..integrations.hooks import resolve_modules

    with init_empty_weights():
        spec = spec or ModelSpec()
        config = spec.load(source, "model", auto_class=AutoConfig)
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=spec.trust_remote_code)
    resolve_modules(skeleton, list(layers))


def _lock_output(folder, main):
    """The main process locks ``--output-dir`` (core.lockfile.OutputLock) so a second ``hf-collapse
    measure`` on the same folder refuses instead of interleaving files; every process learns the outcome."""
    if not folder:
        return None
    lock, error = None, None
    if main:
        try:
            lock = OutputLock(folder, "hf-collapse measure").acquire()
        except ValueError as e:
            error = e
    if not all_true(error is None):
        if lock is not None:
            lock.release()
        if error is not None:
            raise error
        raise UserValueError(f"{folder!r} is being written by another hf-collapse measure")
    return lock


def model_name(source: str) -> str:
    """A Hub id as given; a local folder by its name (no machine paths are published)."""
    return os.path.basename(os.path.normpath(source)) if os.path.isdir(source) else source


def command_record(args, data: DataSpec, options: MeasureOptions, has_nc4: bool, **fields) -> MeasurementRecord:
    """The record of a ``measure`` or ``sweep`` command: its data (each file hashed once), budgets,
    block and batch size, options, model dtype and command line, with ``fields`` (model, weights, ...)."""
    return MeasurementRecord(
        data=data.describe("train"),
        nc4_data=data.describe("validation"),
        max_tokens=data.max_tokens,
        nc4_max_tokens=data.budget("validation") if has_nc4 else None,
        block_size=data.block_size,
        batch_size=data.batch_size,
        covariance=args.covariance,
        options=options,
        torch_dtype=args.torch_dtype,
        command=command_line(args),
        **fields,
    )


def command_line(args) -> str:
    """The command as typed (recorded in measured folders)."""
    return "hf-collapse " + " ".join(shlex.quote(a) for a in getattr(args, "argv", []))


def _measure(args, data: DataSpec, options: MeasureOptions, accelerator, spec: ModelSpec) -> int:
    from ..integrations.hub import save_measured
    from ..integrations.model_source import check_model_fits, resolved_commit
    from ..integrations.passes import CollapseReport, measure_model

    main = accelerator.is_main_process
    tokenizer = spec.load(args.model, "tokenizer")

    def loader(which):
        # the main process of each node tokenizes into the cache first; the others read the cached files
        error = None
        with accelerator.local_main_process_first():
            try:  # raise after the barrier: the other processes must not wait for the main one forever
                blocks = data.blocks(tokenizer, which)
            except (ValueError, FileNotFoundError) as e:
                error = e
        if error is not None:
            raise error
        note = data.shortfall(blocks, which)
        if note and main:
            print(f"hf-collapse measure: note: {note}", file=sys.stderr)
        return blocks, data.loader(blocks, accelerator.prepare_data_loader)

    (train_blocks, train_dl), (nc4_blocks, nc4_dl) = loader("train"), loader("validation")
    # the model after the data: bad data fail fast, and tokenizing never overlaps the model in memory
    model = spec.load(args.model, "model", dtype=getattr(torch, args.torch_dtype))
    spec.place(model, accelerator.device).eval()  # a model placed by --device-map stays where it is
    # before any forward: context and vocabulary, one line naming both numbers
    check_model_fits(model, data.block_size, tokenizer, (train_blocks, nc4_blocks))
    record = command_record(
        args,
        data,
        options,
        nc4_dl is not None,
        model_name=model_name(args.model),
        revision=spec.revision,
        commit=resolved_commit(model),
        weights_sha256=_weights_digest(model, args.model),  # once per run: the reuse check and every measurement use it
    )
    report = None
    if not args.no_reuse and not args.layers:
        found = _stored_measurement(args.model, record)
        if found is not None:  # the model folder or Hub repo already holds these statistics
            if main:
                print(
                    f"{args.model} already holds statistics of these weights, data, budgets and options "
                    f"({found.path}): skipping the collection pass (--no-reuse to measure again)"
                )
            head = next(iter(_default_modules(model)))
            report = CollapseReport({head: found.statistics}, {head: found.result}, found.record)
    ckpt = None
    if report is None:
        if args.output_dir and args.checkpoint_every:
            ckpt = os.path.join(args.output_dir, "collapse", ".checkpoint")
            if not args.resume and main and os.path.isdir(ckpt):
                shutil.rmtree(ckpt)
            accelerator.wait_for_everyone()
        modules = None if not args.layers else [*_default_modules(model), *args.layers]
        cfg = CollapseArguments.from_options(
            options,
            collapse_modules=modules,
            collapse_max_tokens=record.max_tokens,
            collapse_nc4_max_tokens=record.nc4_max_tokens,
            collapse_per_class=True,
            collapse_covariance=args.covariance,
            collapse_statistics_device=args.statistics_device,
        )
        report = measure_model(
            model,
            train_dl,
            nc4_dl,
            cfg,
            record=record,
            progress=main and not args.no_progress,
            checkpoint_path=ckpt,
            checkpoint_every=args.checkpoint_every if ckpt else None,
            data_fingerprint=f"{record.data}|{record.max_tokens}|{record.block_size}|{record.batch_size}",
            before_pass=memory_plan(options, args, main, nc4=nc4_dl is not None),
        )
    if main:
        print(report.table())
        if args.output_dir:
            save_measured(
                args.output_dir,
                report,
                model=model,
                tokenizer=tokenizer,
                save_model=not args.no_save_model,
                card_info={"model_name": record.model_name},
            )
            if ckpt and os.path.isdir(ckpt):
                shutil.rmtree(ckpt)
            print(f"wrote {args.output_dir}")
    accelerator.wait_for_everyone()
    return 0


def add_data_arguments(p) -> None:
    """The data flags (shared with ``hf-collapse sweep``): the fields of ``DataSpec``."""
    add_dataclass_arguments(p.add_argument_group("data"), DataSpec)


def add_model_arguments(p) -> None:
    """The model-loading flags (shared with ``hf-collapse sweep``): the fields of ``ModelSpec``."""
    add_dataclass_arguments(p.add_argument_group("model loading"), ModelSpec)


def add_measure_arguments(p):
    """The measure flags (shared with ``hf-collapse sweep``): the fields of ``MeasureOptions``, then
    --covariance and --torch-dtype; returns the group for more."""
    m = p.add_argument_group("measures")
    add_dataclass_arguments(m, MeasureOptions)
    m.add_argument("--covariance", action="store_true", help="also accumulate the d x d covariance (nc1_trace_ratio)")
    m.add_argument(
        "--statistics-device",
        metavar="DEVICE",
        default=None,
        help="where the statistics live (default: where the features are computed); 'cpu' keeps them in host "
        "memory when the GPU cannot hold them (see the memory plan printed before the pass)",
    )
    m.add_argument(
        "--torch-dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="dtype to load the model in (default: float32)",
    )
    return m


def _weights_digest(model, source):
    """``weights_sha256`` of the model in memory; of its folder when a device map offloaded weights (on
    'meta' outside forward; the two hashes are equal by design); None when neither can be read."""
    from ..integrations.weights_hash import weights_sha256

    if not any(t.device.type == "meta" for t in model.state_dict().values()):
        return weights_sha256(model)
    if os.path.isdir(source):
        return weights_sha256(source)
    return None


def memory_plan(options, args, main, nc4: bool = True):
    """A callable for measure_model: prints the memory plan (with an NC4 pass when ``nc4``) with the
    progress header and refuses, before any forward, a plan larger than the statistics' device has free."""
    from ..integrations.memory import available_bytes, plan_for, statistics_device

    def before(hooks):
        device = args.statistics_device or statistics_device(hooks.model, next(iter(hooks.modules.values())))
        plan = plan_for(
            hooks.model, hooks.modules, hooks.num_classes, device, covariance=args.covariance, options=options, nc4=nc4
        )
        if main and not args.no_progress:
            print("\n".join(plan.lines()), file=sys.stderr)
        plan.check(
            available_bytes(device),
            "measure fewer modules (--layers), keep the statistics in host memory (--statistics-device cpu) or "
            "use a device with more free memory; a class subset (--classes, --min-count) only shrinks the "
            "measures' working set",
        )

    return before


def _stored_measurement(source: str, record: MeasurementRecord):
    """A measurement stored with the model (local measured folder or Hub repo) whose record answers this
    one (same weights hash, data, budgets, block size, task and options); else None."""
    from ..integrations.hub import find_measurement

    try:
        return find_measurement(source, record)
    except OSError as e:  # an unreachable Hub: just measure
        logger.info("no reusable measurement in %s: %s", source, e)
        return None


def _default_modules(model):
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
    add_model_arguments(p)
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
    o.add_argument("--overwrite", action="store_true", help="replace the measurement an existing --output-dir holds")
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
