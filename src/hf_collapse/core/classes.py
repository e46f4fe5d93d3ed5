"""Which classes are measured, and their moments: present ones (N_c > 0), at least ``min_count`` samples,
within ``classes`` when given, less coincident groups on request; and the global mean mu_G they are
centred at.

Classes left out here are absent everywhere: in every measure, in the NCC rule of NC4 and in mu_G.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Optional

import torch

from .errors import UserTypeError, UserValueError
from .statistics import CollapseStatistics

logger = logging.getLogger(__name__)

GLOBAL_MEANS = ("unweighted", "weighted")


def check_selection(num_classes: int, min_count=1, classes=None, global_mean: str = "unweighted"):
    """Validate the class options; returns ``(min_count, classes as a sorted id tensor or None)``."""
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise UserValueError(f"min_count must be an int >= 1, got {min_count!r}")
    if global_mean not in GLOBAL_MEANS:
        raise UserValueError(f"global_mean must be 'unweighted' or 'weighted', got {global_mean!r}")
    if classes is None:
        return min_count, None
    if isinstance(classes, torch.Tensor):
        if classes.is_floating_point() or classes.is_complex():
            raise UserTypeError(f"classes must hold integer class ids, got dtype {classes.dtype}")
        classes = classes.reshape(-1).tolist()
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence):
        raise UserTypeError(f"classes must be a list of integer class ids, got {type(classes).__name__}")
    bad = [c for c in classes if isinstance(c, bool) or not isinstance(c, int)]
    if bad:
        raise UserTypeError(f"classes must be integer class ids, got {bad[:5]}")
    out = [c for c in classes if not 0 <= c < num_classes]
    if out:
        raise UserValueError(f"classes {out[:5]} lie outside [0, {num_classes})")
    if not classes:
        raise UserValueError("classes is empty: give at least 2 class ids (or None for all)")
    return min_count, torch.tensor(sorted(set(classes)), dtype=torch.long)


def selected_ids(stats: CollapseStatistics, min_count: int = 1, classes=None) -> torch.Tensor:
    """(K,) ids of the classes present with at least ``min_count`` samples, within ``classes``."""
    min_count, classes = check_selection(stats.num_classes, min_count, classes)
    keep = stats.counts >= min_count if min_count > 1 else stats.present.clone()  # (C,) bool
    if classes is not None:
        chosen = torch.zeros_like(keep)
        chosen[classes.to(keep.device)] = True
        keep &= chosen
    return keep.nonzero().squeeze(1)


def global_mean(mu: torch.Tensor, counts: torch.Tensor, how: str = "unweighted") -> torch.Tensor:
    """mu_G (d,) of class means ``mu`` (K, d): their plain average (the paper's mu_bar) or, with
    ``how="weighted"``, weighted by the sample counts (K,) (the mean of every measured sample)."""
    if how == "weighted":
        return counts.to(mu.dtype) @ mu / counts.sum()
    return mu.mean(0)


def coincident(mu, rtol: float = 1e-10) -> list[int]:
    """Positions (rows of ``mu``) of classes whose mean equals another class's mean up to float64
    round-off (max abs difference <= rtol * max |mu|; classes fed identical features end up ~1e-15
    apart, not bit-equal, because of the shifted sums). O(K d + K log K): sort a random projection
    and compare only runs of near-equal projections."""
    g = torch.Generator().manual_seed(0)
    v = torch.randn(mu.shape[1], generator=g, dtype=torch.float64).to(mu.device)
    atol = rtol * float(torch.linalg.vector_norm(mu, float("inf"))) + 1e-300  # max |mu|, no temporary
    proj = mu @ v  # (K,)
    order = proj.argsort()
    sp = proj[order]
    near = ((sp[1:] - sp[:-1]).abs() <= atol * float(v.abs().sum())).tolist()
    found, run = set(), [int(order[0])]
    for i, close in enumerate(near + [False]):
        if close:
            run.append(int(order[i + 1]))
            continue
        for x in range(len(run)):  # runs are tiny in practice (2 for a duplicated mean)
            for y in range(x + 1, len(run) if len(run) <= 64 else min(x + 2, len(run))):  # long: neighbours
                if float((mu[run[x]] - mu[run[y]]).abs().max()) <= atol:
                    found.update((run[x], run[y]))
        if i + 1 < len(order):
            run = [int(order[i + 1])]
    return sorted(found)


def class_moments(
    stats: CollapseStatistics, dev, coincident_mode: str, min_count: int = 1, classes: Optional[torch.Tensor] = None
):
    """Ids, counts, means and variances of the classes measured: the selected ones, less coincident
    groups when ``coincident_mode="exclude"``. Returns ``(idx (K,), counts (K,), mu (K, d), sig (K,),
    n_excluded)``."""
    idx = selected_ids(stats, min_count, classes).to(dev)  # (K,) class ids measured
    if idx.numel() < 2:
        how = (
            ""
            if min_count == 1 and classes is None
            else f" (min_count={min_count}, classes={'given' if classes is not None else None})"
        )
        raise UserValueError(f"neural collapse needs at least 2 classes with samples, got {idx.numel()}{how}")
    counts, mu, sig = (t.to(dev) for t in stats.moments(idx.to(stats.device)))  # (K,), (K, d), (K,) float64
    same = coincident(mu)
    if not same:
        return idx, counts, mu, sig, 0
    ids = idx[same].tolist()
    if coincident_mode == "raise":
        raise UserValueError(
            f"classes {ids[:6]} have means identical to another class's, so their CDNV is infinite; "
            f"pass coincident='exclude' to leave them out (or remove duplicate classes)"
        )
    logger.warning(
        "leaving out %d classes whose means coincide with another class's (up to round-off): %s", len(ids), ids[:10]
    )
    keep = torch.ones(idx.numel(), dtype=torch.bool, device=dev)
    keep[same] = False
    if int(keep.sum()) < 2:
        raise UserValueError(f"neural collapse needs at least 2 classes with distinct means, got {int(keep.sum())}")
    return idx[keep], counts[keep], mu[keep], sig[keep], len(same)
