"""The measurement pipeline: statistics pass -> NC4 pass -> measures, and its result :class:`CollapseReport`.

The hooks (:mod:`hf_collapse.integrations.hooks`) fold each batch into float64 sums; a pass ends with
:func:`hf_collapse.core.distributed.finish_pass` (one all-reduce, then every process holds the same
statistics) and the measures are computed on every process from them (cheap next to the pass, no
broadcast). :func:`measure_model` is the one composition of the passes that every caller (the
``measure`` and ``sweep`` commands, the Trainer, the study) uses; :func:`finish_measurement` is its tail
for statistics collected elsewhere (the Trainer's evaluation loop). Settings come from one dataclass,
:class:`~hf_collapse.integrations.settings.CollapseArguments`; what was measured travels as a
:class:`~hf_collapse.integrations.record.MeasurementRecord`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from ..core.distributed import all_reduce_sum, finish_pass, rank_and_world
from ..core.errors import UserTypeError, UserValueError
from ..core.measures import CollapseResult, measure_collapse
from ..core.nc4 import NC4Counter
from ..core.registry import MEASURE_KEYS
from ..core.statistics import CollapseStatistics
from .folder import layer_key
from .hooks import FeatureHooks, NC4Sink, StatisticsSink, head_weights, is_sharded, resolve_modules, unwrap_model
from .record import MeasurementRecord
from .resume import fingerprint, read_checkpoint, write_checkpoint
from .settings import CollapseArguments, as_settings

logger = logging.getLogger(__name__)


@dataclass
class CollapseReport:
    """Statistics and measures of one measurement, with the record of what was measured.

    ``statistics`` / ``result`` belong to the first (primary) module; ``all_statistics`` /
    ``results`` hold every module by name. ``metrics(prefix)`` flattens them for logging: primary
    keys as is (``nc1_cdnv``), other modules as ``<layer>_<key>`` (``transformer_h_1_nc1_cdnv``).
    """

    all_statistics: dict[str, CollapseStatistics]
    results: dict[str, CollapseResult]
    record: MeasurementRecord = field(default_factory=MeasurementRecord)

    @property
    def primary(self) -> str:
        return next(iter(self.results))

    @property
    def statistics(self) -> CollapseStatistics:
        return self.all_statistics[self.primary]

    @property
    def result(self) -> CollapseResult:
        return self.results[self.primary]

    def metrics(self, prefix: str = "") -> dict[str, float]:
        pre = f"{prefix}_" if prefix else ""
        out = {f"{pre}{k}": v for k, v in self.result.items()}
        for name, res in self.results.items():
            if name != self.primary:
                out.update({f"{pre}{layer_key(name)}_{k}": v for k, v in res.items()})
        return out

    def table(self) -> str:
        lines = []
        for name, res in self.results.items():
            lines.append(
                f"[{name}]  tokens={self.all_statistics[name].num_tokens}  "
                f"classes present={int(self.all_statistics[name].present.sum())}"
            )
            lines.append(res.table())
        return "\n".join(lines)


# ---------------------------------------------------------------------------- passes
def _move(batch, device):
    if isinstance(batch, Mapping):
        return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    raise UserTypeError(
        f"batches must be dicts of tensors (input_ids, attention_mask, labels), got {type(batch).__name__}"
    )


def _model_device(model) -> torch.device:
    """Where batches go: the input embeddings' execution device (accelerate's hook under a device map or
    offload, where the parameters may sit on 'meta'), else the first real parameter's device."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if isinstance(emb, torch.nn.Module):
        hook = getattr(emb, "_hf_hook", None)
        device = getattr(hook, "execution_device", None)
        if device is not None:
            return torch.device(device if not isinstance(device, int) else f"cuda:{device}")
        w = getattr(emb, "weight", None)
        if isinstance(w, torch.Tensor) and w.device.type != "meta":
            return w.device
    for p in model.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


def _forward_keywords(model) -> dict:
    """``use_cache=False`` when the forward takes it: without the KV cache, packed documents (position ids
    restarting per document) stay separate, and no cache is built."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {}
    if "use_cache" in params:
        return {"use_cache": False}
    return {}


_END = object()


def _masked(batch, task="causal_lm"):
    """A copy of ``batch`` whose every position is ignored (the dummy forward of a process that ran out)."""
    if batch is None:  # this process had no batch at all: one sequence of two tokens, nothing labelled
        shape = (1,) if task == "sequence_classification" else (1, 2)
        return {"input_ids": torch.zeros(1, 2, dtype=torch.long), "labels": torch.full(shape, -100)}
    out = dict(batch)
    ref = batch.get("labels") if batch.get("labels") is not None else batch.get("input_ids")
    out["labels"] = torch.full_like(ref, -100)
    return out


SYNC_EVERY = 32  # batches between the host's reads of the token count and the deferred checks


def _batch_numel(batch) -> float:
    """Upper bound of a batch's labelled tokens from its shapes alone (no device read)."""
    ref = batch.get("labels") if batch.get("labels") is not None else batch.get("input_ids")
    return float(ref.numel()) if isinstance(ref, torch.Tensor) else float("inf")


def _run_pass(
    model,
    dataloader,
    hooks: FeatureHooks,
    *,
    max_tokens,
    max_batches,
    progress,
    desc,
    skip_batches=0,
    on_batch=None,
    tokens0=0,
    sync_every: Optional[int] = None,
    group=None,
):
    """Drive ``model`` over ``dataloader`` under no_grad + eval mode; hooks do the accumulating.

    No host synchronisation per batch: the labelled-token count stays on the device. In one process
    the budget cuts the last batch exactly through a device-side remaining count; in several, a whole
    batch counts while the global count (one all-reduce per batch, asynchronous on NCCL) is below the
    budget, and later batches are masked out. The host reads the count and the deferred label checks
    every ``sync_every`` batches, and (one process) at every batch once the batches' shapes allow the
    budget to be reached, to leave the loop. Returns (batches, tokens).
    """
    sync_every = sync_every or SYNC_EVERY  # read at call time: a changed SYNC_EVERY applies
    inner = hooks.model
    was_training = inner.training
    device = _model_device(inner)
    forward_kwargs = _forward_keywords(inner)
    rank, world = rank_and_world(group)  # the data-parallel processes (a token budget is over them)
    tokens = torch.tensor(tokens0, dtype=torch.long, device=device)  # labelled tokens so far, all processes
    bound = float(tokens0)  # host-side upper bound of ``tokens``
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        total = None
        try:
            total = len(dataloader)
        except TypeError:
            pass
        if max_batches is not None:
            total = min(total, max_batches) if total is not None else max_batches
        bar = tqdm(total=total, desc=desc, unit="batch", initial=skip_batches)
    inner.eval()
    hooks.install()
    batches = steps = 0
    # Sharded models (FSDP, tensor parallel, ZeRO-3): a forward is a collective, so every process runs the
    # same number. Before each forward the processes all-reduce "I have a batch" (one 1-element
    # all-reduce per batch, on the whole world); one that ran out runs a dummy forward of its last batch
    # with every label masked (no token counted) until all have run out. With a token budget in several
    # processes the per-batch token all-reduce needs the same agreement.
    agree = rank_and_world()[1] > 1 and (max_tokens is not None or is_sharded(model, inner))
    last = None
    it = iter(dataloader)
    try:
        with torch.no_grad():
            while True:
                batch = _END
                if max_batches is None or batches < max_batches:
                    batch = next(it, _END)
                if batch is not _END and batches < skip_batches:
                    batches += 1
                    continue
                dummy = False
                if agree:
                    more = all_reduce_sum(torch.tensor([0.0 if batch is _END else 1.0], dtype=torch.float64), op="max")
                    if float(more[0]) == 0.0:
                        break
                    if batch is _END:
                        batch, dummy = _masked(last, hooks.task), True
                elif batch is _END:
                    break
                last = batch
                if max_tokens is not None:  # device tensors: masking instead of a branch on the host
                    hooks.remaining = (
                        max_tokens - tokens
                        if world == 1
                        else torch.where(tokens < max_tokens, torch.iinfo(torch.long).max, 0)
                    )
                hooks.batch_tokens = 0
                try:
                    model(**{**forward_kwargs, **_move(batch, device)})
                except Exception:
                    hooks.check()  # a bad label the hooks saw explains the model's own error best
                    raise
                steps += 1
                batch_tokens = hooks.batch_tokens
                if max_tokens is not None and world > 1:
                    batch_tokens = all_reduce_sum(torch.as_tensor(batch_tokens, device=device).reshape(1), group=group)[
                        0
                    ]
                tokens = tokens + batch_tokens
                if not dummy:
                    batches += 1
                    bound += _batch_numel(batch) * world
                    if bar is not None:
                        bar.update(1)
                    if on_batch is not None:
                        on_batch(batches, tokens)
                near_end = max_tokens is not None and world == 1 and bound >= max_tokens
                if steps % sync_every == 0 or near_end:
                    hooks.check()  # raises the deferred label / finiteness errors
                    seen = int(tokens)  # the one host sync of these batches
                    if bar is not None:
                        bar.set_postfix_str(f"tokens={seen}")  # tqdm would print an int as 2e+4
                    if max_tokens is not None and seen >= max_tokens:
                        break
    finally:
        hooks.remove()
        hooks.remaining = None
        if bar is not None:
            bar.close()
        inner.train(was_training)
        if hasattr(dataloader, "gradient_state") and hasattr(dataloader, "end"):
            # an Accelerate dataloader left early (budget) stays registered as the active one
            dataloader.end()
    hooks.check()
    return batches, int(tokens)


# ---------------------------------------------------------------------------- public API
def collect_statistics(
    model: torch.nn.Module,
    dataloader: Iterable[Mapping],
    settings: Optional[CollapseArguments] = None,
    *,
    num_classes: Optional[int] = None,
    max_batches: Optional[int] = None,
    accelerator: Any = None,
    progress: bool = True,
    checkpoint_path: Optional[str | os.PathLike] = None,
    checkpoint_every: Optional[int] = None,
    ignore_index: int = -100,
    reduce: bool = True,
    data_fingerprint: Optional[str] = None,
    weights_sha256: Optional[str] = None,
    group=None,
    before_pass: Optional[Callable[[FeatureHooks], None]] = None,
) -> CollapseStatistics | dict[str, CollapseStatistics]:
    """Pass 1: accumulate per-class statistics of the classifier inputs over ``dataloader``.

    Args:
        model: a transformers model (or any module whose forward takes the batch as keywords);
            DDP/FSDP/compiled wrappers are unwrapped. Run in eval mode under ``torch.no_grad``.
        dataloader: yields dicts with ``input_ids`` and/or ``labels`` (+ ``attention_mask``). Under
            Accelerate pass the prepared dataloader (each process sees its shard).
        settings: ``CollapseArguments`` (modules, task, token budget ``collapse_max_tokens``, covariance,
            pooling). The budget counts labelled tokens summed over processes; in one process the last
            batch is cut exactly, with several whole last batches count.
        max_batches: stop after this many batches (per process).
        accelerator: optional ``accelerate.Accelerator`` whose model wrapper is removed.
        checkpoint_path: folder to save the state into and resume from; a finished run gives the
            same numbers as an uninterrupted one.
        checkpoint_every: save the state every this many batches.
        reduce: all-reduce over processes at the end (one collective).
        data_fingerprint: identifies the data for checkpoint validation (default: hash of the
            dataloader's length and first batch).
        weights_sha256: the weights' hash when known (checkpoint validation does not hash them again).
        group: the data-parallel process group the statistics are reduced over (default: the world).
            Under tensor parallelism pass the data-parallel group: TP ranks see the same tokens.
        before_pass: called with the ``FeatureHooks`` before the first forward (the ``measure`` command's
            memory plan: it may raise).

    Returns:
        ``CollapseStatistics`` for one module, or a dict name -> statistics for several.
    """
    cfg = as_settings(settings)
    max_tokens = cfg.collapse_max_tokens
    if max_batches is not None and (not isinstance(max_batches, int) or max_batches < 1):
        raise UserValueError(f"max_batches must be a positive int or None, got {max_batches!r}")
    if checkpoint_every is not None and checkpoint_path is None:
        raise UserValueError("checkpoint_every needs checkpoint_path")
    if accelerator is not None:
        model = accelerator.unwrap_model(model)
    hooks = FeatureHooks(
        model, cfg.modules, task=cfg.collapse_task, pooling=cfg.collapse_pooling, num_classes=num_classes
    )
    sink = hooks.sink = StatisticsSink(
        hooks.num_classes,
        covariance=cfg.collapse_covariance,
        ignore_index=ignore_index,
        device=cfg.collapse_statistics_device,
    )
    names = list(hooks.modules)
    if before_pass is not None:
        before_pass(hooks)
    skip, tokens0, fp = 0, 0, None
    if checkpoint_path is not None:
        checkpoint_path = os.fspath(checkpoint_path)
        os.makedirs(checkpoint_path, exist_ok=True)
        extra = {
            "task": cfg.collapse_task,
            "modules": names,
            "max_tokens": max_tokens,
            "max_batches": max_batches,
            "data": data_fingerprint,
            "world": rank_and_world()[1],
        }
        fp = fingerprint(
            hooks.model, dataloader if data_fingerprint is None else None, extra=extra, weights_sha256=weights_sha256
        )
        found = read_checkpoint(checkpoint_path, fp, names, hooks.num_classes)
        if found is not None:
            sink.statistics, skip, tokens0 = found
            logger.info("resuming collection from %s at batch %d (%d tokens)", checkpoint_path, skip, tokens0)

    def on_batch(batches, tokens):
        if batches % checkpoint_every == 0:
            write_checkpoint(checkpoint_path, sink.statistics, batches, int(tokens), fp)

    if max_tokens is None or tokens0 < max_tokens:
        _run_pass(
            model,
            dataloader,
            hooks,
            max_tokens=max_tokens,
            max_batches=max_batches,
            progress=progress,
            desc="NC statistics",
            skip_batches=skip,
            tokens0=tokens0,
            on_batch=on_batch if checkpoint_every else None,
            group=group,
        )
    stats = finish_pass(
        sink.statistics,
        names,
        hooks.num_classes,
        covariance=cfg.collapse_covariance,
        ignore_index=ignore_index,
        reduce=reduce,
        group=group,
    )
    return stats[names[0]] if len(names) == 1 else stats


def collect_nc4(
    model: torch.nn.Module,
    dataloader: Iterable[Mapping],
    statistics: CollapseStatistics | Mapping[str, CollapseStatistics],
    settings: Optional[CollapseArguments] = None,
    *,
    max_batches: Optional[int] = None,
    progress: bool = True,
    reduce: bool = True,
    group=None,
) -> dict[str, dict[str, float]]:
    """Pass 2: NC4 agreement and nearest-centre accuracy on held-out data against ``statistics``.

    ``statistics`` is what ``collect_statistics`` returned (one or a dict). Settings: modules, task,
    pooling, the measure options (``dtype``, ``min_count``, ``classes``) and the token budget
    ``collapse_nc4_max_tokens``. Returns name -> ``{"nc4_agreement", "ncc_accuracy"}`` (agreement only
    for a linear head), reduced over processes. Costs one extra (tokens x K x d) matmul per batch on
    top of a forward pass.
    """
    cfg = as_settings(settings)
    options = cfg.options
    hooks = FeatureHooks(
        model,
        cfg.modules,
        task=cfg.collapse_task,
        pooling=cfg.collapse_pooling,
        num_classes=_first(statistics).num_classes,
    )
    stats = _as_dict(statistics, list(hooks.modules))
    counters = {}
    sharded = is_sharded(model, hooks.model)
    for name, mod in hooks.modules.items():
        w = b = None
        seq = cfg.collapse_task == "sequence_classification"
        if seq or not sharded:  # checks the head against the statistics; gathers only when W predicts
            w, b = head_weights(hooks.model, name, mod, stats[name], wrapped=model)
        if not seq:
            w = b = None  # the head's own logits give the linear prediction: no copy of W needed
        elif w is not None:  # pooled after a per-token head: predict with a copy of W
            w, b = w.clone(), (None if b is None else b.clone())
        counters[name] = NC4Counter.from_statistics(
            stats[name], w, b, dtype=options.torch_dtype, min_count=options.min_count, classes=options.classes
        )
    hooks.sink = NC4Sink(counters)
    hooks.sink.ignore_index = _first(statistics).ignore_index
    _run_pass(
        model,
        dataloader,
        hooks,
        max_tokens=cfg.collapse_nc4_max_tokens,
        max_batches=max_batches,
        progress=progress,
        desc="NC4",
        group=group,
    )
    out = {}
    for name, counter in counters.items():
        if reduce:
            counter.reduce(group=group)
        out[name] = counter.values()
    return out


def _first(statistics):
    return statistics if isinstance(statistics, CollapseStatistics) else next(iter(statistics.values()))


def _as_dict(statistics, names) -> dict[str, CollapseStatistics]:
    if isinstance(statistics, CollapseStatistics):
        if len(names) != 1:
            raise UserValueError(f"one statistics object given for {len(names)} modules")
        return {names[0]: statistics}
    missing = [n for n in names if n not in statistics]
    if missing:
        raise UserValueError(f"no statistics for module(s) {missing}")
    return dict(statistics)


def measure_statistics(
    model: torch.nn.Module,
    statistics: CollapseStatistics | Mapping[str, CollapseStatistics],
    settings: Optional[CollapseArguments] = None,
    *,
    nc4: Optional[Mapping[str, Mapping[str, float]]] = None,
    progress: bool = False,
    record: Optional[MeasurementRecord] = None,
) -> CollapseReport:
    """Measures from collected statistics, with NC3 weights read from each hooked linear head.

    ``nc4`` is what ``collect_nc4`` returned. Real text has coincident class means (tokens seen once in
    one context): an evaluation in the middle of training must not crash on them, so they are left out
    and counted (``num_classes_coincident``).
    """
    cfg = as_settings(settings)
    inner = unwrap_model(model)
    mods = resolve_modules(inner, cfg.modules)
    stats = _as_dict(statistics, list(mods))
    results = {}
    for name, mod in mods.items():
        w, b = head_weights(inner, name, mod, stats[name], wrapped=model)  # a collective when sharded
        res = measure_collapse(
            stats[name],
            weights=w,
            bias=b,
            options=cfg.options,
            per_class=cfg.collapse_per_class,
            progress=progress,
            coincident="exclude",
        )
        if nc4 is not None and name in nc4:
            vals = {**res, **nc4[name]}
            res = CollapseResult(
                {key: float(vals[key]) for key in MEASURE_KEYS if key in vals}, per_class=res.per_class, info=res.info
            )
        results[name] = res
    if record is None:
        record = settings_record(cfg)
    return CollapseReport(stats, results, record)


def settings_record(cfg: CollapseArguments, **fields: Any) -> MeasurementRecord:
    """The record of a measurement with these settings (task, budgets, covariance, options) and ``fields``."""
    return MeasurementRecord(
        task=cfg.collapse_task,
        max_tokens=cfg.collapse_max_tokens,
        nc4_max_tokens=cfg.collapse_nc4_max_tokens if cfg.collapse_nc4 else None,
        covariance=cfg.collapse_covariance,
        options=cfg.options,
        **fields,
    )


def finish_measurement(
    model: torch.nn.Module,
    statistics: CollapseStatistics | Mapping[str, CollapseStatistics],
    settings: Optional[CollapseArguments] = None,
    nc4_dataloader: Optional[Iterable[Mapping]] = None,
    *,
    record: Optional[MeasurementRecord] = None,
    progress: bool = False,
    group=None,
) -> CollapseReport:
    """The tail of the pipeline for reduced pass-1 statistics: the NC4 pass on ``nc4_dataloader`` (when
    given and ``collapse_nc4``), then the measures."""
    cfg = as_settings(settings)
    nc4 = None
    if nc4_dataloader is not None and cfg.collapse_nc4:
        nc4 = collect_nc4(model, nc4_dataloader, statistics, cfg, progress=progress, group=group)
    return measure_statistics(model, statistics, cfg, nc4=nc4, progress=progress, record=record)


def measure_model(
    model: torch.nn.Module,
    dataloader: Iterable[Mapping],
    nc4_dataloader: Optional[Iterable[Mapping]] = None,
    settings: Optional[CollapseArguments] = None,
    *,
    record: Optional[MeasurementRecord] = None,
    num_classes: Optional[int] = None,
    max_batches: Optional[int] = None,
    accelerator: Any = None,
    progress: bool = True,
    checkpoint_path: Optional[str | os.PathLike] = None,
    checkpoint_every: Optional[int] = None,
    data_fingerprint: Optional[str] = None,
    group=None,
    before_pass: Optional[Callable[[FeatureHooks], None]] = None,
) -> CollapseReport:
    """The whole pipeline: statistics on ``dataloader``, NC4 on ``nc4_dataloader``, the measures.

    ``settings`` (``CollapseArguments``) say what to measure; ``record`` (a ``MeasurementRecord``) what
    is being measured, for the report and the folder it is written to (default: the settings' part
    of it). Returns a ``CollapseReport`` (``.statistics``, ``.result``, ``.metrics()``, ``.record``),
    the same on every process.

    Sharded models (FSDP1/2, tensor parallel, DeepSpeed ZeRO-3): pass the model as the launch wraps it
    (FSDP1's wrapper included); the head is gathered on every process for NC3 (:func:`~hf_collapse.
    integrations.hooks.read_head`) and the processes agree on the number of forwards, so uneven shards
    do not hang (one 1-element all-reduce per batch). ``group``: the data-parallel process group the
    statistics are reduced over (default: the world; under tensor parallelism the data-parallel group).
    """
    cfg = as_settings(settings)
    stats = collect_statistics(
        model,
        dataloader,
        cfg,
        num_classes=num_classes,
        max_batches=max_batches,
        accelerator=accelerator,
        progress=progress,
        checkpoint_path=checkpoint_path,
        checkpoint_every=checkpoint_every,
        data_fingerprint=data_fingerprint,
        weights_sha256=record.weights_sha256 if record is not None else None,
        group=group,
        before_pass=before_pass,
    )
    return finish_measurement(model, stats, cfg, nc4_dataloader, record=record, progress=progress, group=group)
