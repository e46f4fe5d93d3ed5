"""Which processes a measurement reduces over (torch only).

Every collective of hf_collapse (statistics all-reduce, NC4 counts, token budget, dimension
agreement, checkpoint barriers) asks :func:`reducing` / :func:`dist_info` instead of
``torch.distributed`` directly. Normally they answer with the default process group. Inside
:func:`local_only` they answer "one process": nothing is reduced and each process measures what it
saw itself.

Why: a process group can be initialised without the data being sharded over it. Under
``accelerate launch --multi_gpu --num_processes 2`` on a CPU machine without ``use_cpu=True``,
transformers warns "process group is initialized, but parallel_mode != ParallelMode.DISTRIBUTED"
and every process trains and evaluates a full copy on all the data. Summing those statistics over
the group counts every eval token twice (and mixes the copies' features). :func:`scope_for` compares
the number of processes that really share the data (the Trainer's / Accelerator's
``num_processes``) with the process group and measures locally, with one warning, when they differ.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging

logger = logging.getLogger(__name__)

_LOCAL = contextvars.ContextVar("hf_collapse_local_only", default=False)
_warned: set[str] = set()


@contextlib.contextmanager
def local_only():
    """Inside: hf_collapse runs no collective and each process measures only its own data."""
    token = _LOCAL.set(True)
    try:
        yield
    finally:
        _LOCAL.reset(token)


def group_size() -> int:
    """Size of torch.distributed's default process group (1 without one), ignoring :func:`local_only`."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def dist_info() -> tuple[int, int]:
    """(rank, world size) that hf_collapse reduces over: (0, 1) without a process group or inside
    :func:`local_only`."""
    import torch.distributed as dist

    if not _LOCAL.get() and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def reducing() -> bool:
    """Whether hf_collapse's collectives run (a process group of more than one process, not local)."""
    return dist_info()[1] > 1


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
            who, world, who, int(num_processes))
    return local_only()


def all_true(flag: bool) -> bool:
    """Whether ``flag`` holds on every process hf_collapse reduces over (one collective; every
    process must call it)."""
    if not reducing():
        return bool(flag)
    import torch
    import torch.distributed as dist

    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() > 0)
