"""Label and finiteness checks of a batch without a host synchronisation per batch.

Checking ``labels.min() >= 0`` or ``torch.isfinite(h).all()`` on the host (``int(...)``, ``bool(...)``)
makes the CPU wait for the GPU at every hooked batch. ``BatchChecks`` instead folds each batch's
findings into a small device tensor and returns the mask of rows that may be accumulated; ``raise_pending``
reads that tensor once (one sync) and raises the same clear errors. Callers check after every batch
(eager, the public ``CollapseStatistics.update``) or once per pass / every N batches (the hooks).
"""

from __future__ import annotations

from typing import Optional

import torch

from .errors import UserTypeError, UserValueError
from .io import as_tensor


class BatchChecks:
    """Device-side record of the smallest and largest labelled class id and of non-finite feature rows.

    ``state`` (3,) int64 on the batch's device: ``[min label, max label, rows with NaN/inf features]``
    over rows whose label is not ``ignore_index``; neutral values ``[0, C - 1, 0]``.
    """

    def __init__(self, num_classes: int, ignore_index: int = -100):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.state: Optional[torch.Tensor] = None

    def observe(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Record a batch (features (N, d), labels (N,)); returns the (N,) bool mask of rows to keep:
        labelled, label in [0, C), finite features. No host sync."""
        labels = labels.to(torch.long)
        labelled = labels != self.ignore_index  # (N,)
        in_range = (labels >= 0) & (labels < self.num_classes)
        finite = torch.isfinite(features).all(1)  # (N,)
        if labels.numel() == 0:
            return labelled
        safe = torch.where(labelled, labels, 0)  # unlabelled rows must not count as offenders
        nonfinite = (labelled & in_range & ~finite).sum()
        found = torch.stack([safe.min(), safe.max(), nonfinite])  # (3,)
        if self.state is None or self.state.device != found.device:
            self.state = torch.tensor([0, self.num_classes - 1, 0], dtype=torch.long, device=found.device)
        self.state = torch.stack(
            [torch.minimum(self.state[0], found[0]), torch.maximum(self.state[1], found[1]), self.state[2] + found[2]]
        )
        return labelled & in_range & finite

    def raise_pending(self) -> None:
        """One host sync: raise ValueError for what the batches since the last call recorded, and reset."""
        if self.state is None:
            return
        lo, hi, nonfinite = self.state.tolist()
        self.state = None
        if lo < 0 or hi >= self.num_classes:
            bad = lo if lo < 0 else hi
            raise UserValueError(
                f"label {bad} is outside [0, {self.num_classes}) (num_classes={self.num_classes}); "
                f"use {self.ignore_index} (ignore_index) for positions without a class"
            )
        if nonfinite:
            raise UserValueError("features contain NaN or infinite values (in rows with a valid label)")


def check_batch_shapes(features, labels, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Types and shapes of one batch (no device sync): features (..., dim) float, labels of the leading shape."""
    features = as_tensor(features, "features")
    labels = as_tensor(labels, "labels")
    if not features.is_floating_point():
        raise UserTypeError(f"features must be a floating-point tensor, got dtype {features.dtype}")
    if labels.is_floating_point() or labels.dtype == torch.bool or labels.is_complex():
        raise UserTypeError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if features.dim() < 2:
        raise UserValueError(f"features must have shape (N, {dim}) (or (..., {dim})), got {tuple(features.shape)}")
    if features.shape[-1] != dim:
        raise UserValueError(f"features have dimension {features.shape[-1]} but the statistics expect dim={dim}")
    if tuple(labels.shape) != tuple(features.shape[:-1]):
        raise UserValueError(
            f"labels shape {tuple(labels.shape)} does not match features shape "
            f"{tuple(features.shape)}: expected labels of shape {tuple(features.shape[:-1])}"
        )
    return features, labels
