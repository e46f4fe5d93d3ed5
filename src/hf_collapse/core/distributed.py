"""torch.distributed helpers and the one way a collection pass ends (:func:`finish_pass`).

Statistics are sums, so a multi-process pass is: every process accumulates its shard, one all-reduce
(SUM) per pass, then every process divides. Everything here is a no-op without an initialised process
group of more than one process. ``reduce=False`` keeps each process's local sums (used when the
caller's processes are not one distributed job, e.g. a Trainer that is not itself distributed).

Which processes are reduced over: every helper here (and ``CollapseStatistics.reduce``,
``NC4Counter.reduce``, the checkpoint barriers) answers "one process" inside :func:`local_only`:
nothing is reduced and each process measures what it saw itself. Why: a process group can exist
without the data being sharded over it. Under ``accelerate launch --multi_gpu --num_processes 2`` on
a CPU machine without ``use_cpu=True``, transformers warns "process group is initialized, but
parallel_mode != ParallelMode.DISTRIBUTED" and every process trains and evaluates a full copy on all
the data; summing those statistics over the group counted each eval token twice. :func:`scope_for`
compares the number of processes that really share the data (the Trainer's / Accelerator's
``num_processes``) with the group and measures locally, with one warning, when they differ.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Optional

import torch

from .errors import UserValueError
from .scope import comm_device, is_local, local_only
from .statistics import CollapseStatistics

__all__ = [
    "agree_dim",
    "all_reduce_sum",
    "all_true",
    "finish_pass",
    "group_size",
    "local_only",
    "rank_and_world",
    "reducing",
    "scope_for",
    "world_size",
]

logger = logging.getLogger(__name__)

_warned: set[str] = set()


def group_size() -> int:
    """Size of torch.distributed's default process group (1 without one), ignoring :func:`local_only`."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def scope_for(num_processes: int, who: str):
    """The context to measure in when ``num_processes`` processes share the data.

    Equal to the process group's size (or no group): reduce over the group (a null context).
    Different: the group is not the one the data are sharded over, so measure locally
    (:func:`local_only`) and warn once per ``who``.
    """
    world = group_size()
    if world <= 1 or int(num_processes) == world:
        return contextlib.nullcontext()
    if who not in _warned:
        _warned.add(who)
        logger.warning(
            "%s: torch.distributed has a process group of %d processes, but %s distributes over %d; "
            "each process measures its own data without reducing (for data-parallel training on CPU "
            "pass use_cpu=True to TrainingArguments; on GPUs launch with accelerate launch/torchrun)",
            who,
            world,
            who,
            int(num_processes),
        )
    return local_only()


def _dist():
    """torch.distributed when hf_collapse reduces over its default group, else None."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() and not is_local() else None


def reducing() -> bool:
    """Whether hf_collapse's collectives run (a group of more than one process, not :func:`local_only`)."""
    return rank_and_world()[1] > 1


def rank_and_world(group=None) -> tuple[int, int]:
    """(rank, world size) of torch.distributed (in ``group``, default the world), (0, 1) without a process group."""
    dist = _dist()
    return (dist.get_rank(group), dist.get_world_size(group)) if dist else (0, 1)


def world_size() -> int:
    """The number of processes (1 without torch.distributed)."""
    return rank_and_world()[1]


def all_reduce_sum(t: torch.Tensor, op: str = "sum", group=None) -> torch.Tensor:
    """Sum (or ``op="max"``) a tensor over all processes (of ``group``); returns a tensor on ``t``'s device.
    In place (``t`` itself returned) when ``t`` already lives where the collective runs."""
    dist = _dist()
    if dist is None or dist.get_world_size(group) == 1:
        return t
    buf = t.to(comm_device(group))
    dist.all_reduce(buf, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM, group=group)
    return buf.to(t.device)


def all_true(flag: bool) -> bool:
    """Whether ``flag`` holds on every process (one collective; every process must call it)."""
    return bool(all_reduce_sum(torch.tensor([0.0 if flag else 1.0], dtype=torch.float64), op="max").item() == 0)


def agree_dim(dim: Optional[int], group=None) -> int:
    """All processes learn the feature dimension (a process that saw no batch does not know it)."""
    local = torch.tensor([-1.0 if dim is None else float(dim)], dtype=torch.float64)
    agreed = int(all_reduce_sum(local, op="max", group=group).item())
    if agreed < 1:
        raise UserValueError("no labelled token was collected: the data are empty or the budget yields nothing")
    return agreed


def finish_pass(
    statistics: Mapping[str, CollapseStatistics],
    names: Sequence[str],
    num_classes: int,
    *,
    covariance: bool = False,
    ignore_index: int = -100,
    reduce: bool = True,
    what: str = "the data",
    group=None,
) -> dict[str, CollapseStatistics]:
    """End a statistics pass: agree on dims, all-reduce, reject empty results; returns ``{name: stats}``
    in ``names`` order.

    Every process must call it (collectives): a process whose shard never reached a module still
    joins with an empty accumulator of the agreed dimension. ``group``: the data-parallel process
    group (default: the world). Under tensor parallelism every TP rank sees the same features, so
    pass the data-parallel group (e.g. ``device_mesh["dp"].get_group()``): reducing over the world
    would count each token once per TP rank. Reduced in place (no copy of the C x d sums).
    """
    stats = dict(statistics)
    for st in stats.values():  # the label / finiteness checks the hooks deferred (one sync each)
        st.check()
        st.defer_checks = False
    for name in names:
        if reduce:
            dim = agree_dim(stats[name].dim if name in stats else None, group=group)
            if name not in stats:
                stats[name] = CollapseStatistics(num_classes, dim, covariance=covariance, ignore_index=ignore_index)
            stats[name].reduce(group=group)
        if name not in stats or stats[name].num_tokens == 0:
            raise UserValueError(
                f"no labelled token was collected at {name!r} from {what}: the data are empty, the budget is too "
                f"small, or every label is {ignore_index}/padding"
            )
    return {n: stats[n] for n in names}
