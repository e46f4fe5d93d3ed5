"""torch.distributed helpers and the one way a collection pass ends (:func:`finish_pass`).

Statistics are sums, so a multi-process pass is: every process accumulates its shard, one all-reduce
(SUM) per pass, then every process divides. Everything here is a no-op without an initialised process
group of more than one process. ``reduce=False`` keeps each process's local sums (used when the
caller's processes are not one distributed job, e.g. a Trainer that is not itself distributed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Optional

import torch

from .statistics import CollapseStatistics, comm_device


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of torch.distributed, (0, 1) without a process group."""
    dist = _dist()
    return (dist.get_rank(), dist.get_world_size()) if dist else (0, 1)


def world_size() -> int:
    """The number of processes (1 without torch.distributed)."""
    return rank_and_world()[1]


def all_reduce_sum(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Sum (or ``op="max"``) a tensor over all processes; returns a tensor on ``t``'s device."""
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return t
    buf = t.to(comm_device())
    dist.all_reduce(buf, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return buf.to(t.device)


def global_sum(x: int) -> int:
    """An integer summed over processes."""
    return int(all_reduce_sum(torch.tensor([float(x)], dtype=torch.float64)).item())


def agree_dim(dim: Optional[int]) -> int:
    """All processes learn the feature dimension (a process that saw no batch does not know it)."""
    local = torch.tensor([-1.0 if dim is None else float(dim)], dtype=torch.float64)
    agreed = int(all_reduce_sum(local, op="max").item())
    if agreed < 1:
        raise ValueError("no labelled token was collected: the data are empty or the budget yields nothing")
    return agreed


def finish_pass(statistics: Mapping[str, CollapseStatistics], names: Sequence[str], num_classes: int, *,
                covariance: bool = False, ignore_index: int = -100, reduce: bool = True,
                what: str = "the data") -> dict[str, CollapseStatistics]:
    """End a statistics pass: agree on dims, all-reduce, reject empty results; returns ``{name: stats}``
    in ``names`` order.

    Every process must call it (collectives): a process whose shard never reached a module still
    joins with an empty accumulator of the agreed dimension.
    """
    stats = dict(statistics)
    for name in names:
        if reduce:
            dim = agree_dim(stats[name].dim if name in stats else None)
            if name not in stats:
                stats[name] = CollapseStatistics(num_classes, dim, covariance=covariance, ignore_index=ignore_index)
            stats[name].reduce()
        if name not in stats or stats[name].num_tokens == 0:
            raise ValueError(
                f"no labelled token was collected at {name!r} from {what}: the data are empty, the budget is too "
                f"small, or every label is {ignore_index}/padding"
            )
    return {n: stats[n] for n in names}
