"""NC4: agreement of the linear classifier with the nearest-class-centre (NCC) rule (paper eqs. 9-10).

``NC4Counter`` is the only implementation: ``measure_collapse`` feeds it held-out tensors in batches,
the collection pass feeds it the features its hooks see. Its state is three sums (agreements, NCC
hits, samples) kept on the device, so a batch never forces a host synchronisation; label checks
accumulate into a device flag that is read once, in :meth:`NC4Counter.values`.

NCC(h) = argmin_c ||h - mu_c|| over the classes given, computed as argmax_c <h - mu_bar, M_c> -
||M_c||^2 / 2 with M_c = mu_c - mu_bar (eq. 12 after centring by mu_bar: the same argmin, less
cancellation). The linear prediction is argmax_c <w_c, h> + b_c, or the argmax of logits the model
computed itself when they are given (then it is exactly what the model predicts).
"""

from __future__ import annotations

from typing import Optional

import torch

from .classes import selected_ids
from .errors import UserValueError
from .rows import row_slices, row_sq_norms

SCORE_BYTES = 256 * 2**20  # the NCC / linear scores of one block of tokens: at most 256 MiB


class NC4Counter:
    """Streaming counts of (linear == NCC), (NCC == label) and labelled samples.

    Args:
        class_ids: (K,) ids of the classes NCC chooses among (the present, non-excluded classes).
        means: (K, d) their means (float64).
        num_classes: C, the label range.
        weights: classifier rows (C, d); optional when logits are passed to ``update``.
        bias: classifier bias (C,), optional.
        dtype: float32 (fast) or float64 for the distance and logit matmuls.
        ignore_index: label value of samples to skip.
    """

    def __init__(
        self,
        class_ids: torch.Tensor,
        means: torch.Tensor,
        num_classes: int,
        weights=None,
        bias=None,
        dtype: torch.dtype = torch.float32,
        ignore_index: int = -100,
    ):
        dev = means.device
        self.idx = class_ids.to(dev)  # (K,)
        self.mu_bar = means.mean(0)  # (d,)
        self.dtype = dtype
        self.Mc = torch.empty(means.shape, dtype=dtype, device=dev)  # (K, d), filled a chunk at a time
        for sl in row_slices(*means.shape):
            self.Mc[sl] = means[sl] - self.mu_bar
        self.half_sq = 0.5 * row_sq_norms(self.Mc)  # (K,)
        self.W = None if weights is None else weights.detach().to(dev, dtype)  # (C, d)
        self.b = None if bias is None else bias.detach().to(dev, dtype)  # (C,)
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.counts = torch.zeros(3, dtype=torch.float64, device=dev)  # agree, correct, n
        self._bad = torch.zeros((), dtype=torch.bool, device=dev)  # a label out of range / non-finite h
        self.saw_logits = False

    @classmethod
    def from_statistics(
        cls, stats, weights=None, bias=None, dtype=torch.float32, min_count: int = 1, classes=None
    ) -> NC4Counter:
        """A counter over the classes present in a ``CollapseStatistics`` (with at least ``min_count``
        samples, within ``classes`` when given: the classes ``measure_collapse`` measures)."""
        idx = selected_ids(stats, min_count, classes)
        if idx.numel() < 1:
            raise UserValueError(f"NC4 needs at least one class with samples (min_count={min_count}), got none")
        return cls(idx, stats.moments(idx)[1], stats.num_classes, weights, bias, dtype, stats.ignore_index)

    @property
    def has_linear(self) -> bool:
        return self.W is not None or self.saw_logits

    @torch.no_grad()
    def update(self, h: torch.Tensor, y: torch.Tensor, logits: Optional[torch.Tensor] = None) -> None:
        """Count one batch: features (..., d), labels (...), optional logits (..., C)."""
        h, y = h.reshape(-1, h.shape[-1]), y.reshape(-1)  # (N, d), (N,)
        dev = self.Mc.device
        y = y.to(dev)
        keep = y != self.ignore_index  # (N,)
        h64 = h.to(dev, torch.float64)
        self._bad |= (keep & ((y < 0) | (y >= self.num_classes))).any()
        self._bad |= (keep & ~torch.isfinite(h64).all(1)).any()  # not h64[keep]: a bool index syncs
        hc = (h64 - self.mu_bar).to(self.dtype)  # (N, d)
        # scores come a block of tokens at a time: an (N, K) matrix is 8 GiB at N = 16k, K = 128k
        step = max(1, SCORE_BYTES // (hc.element_size() * max(self.Mc.shape[0], 1)))
        blocks = range(0, max(hc.shape[0], 1), step)  # one (empty) block for an empty batch
        ncc = torch.cat(
            [self.idx[torch.addmm(self.half_sq, hc[i : i + step], self.Mc.T, alpha=-1.0).argmin(1)] for i in blocks]
        )  # (N,)
        if logits is not None:
            self.saw_logits = True
            lin = logits.reshape(-1, logits.shape[-1]).argmax(-1).to(dev)
        elif self.W is not None:
            lin = torch.cat([self._linear(h64[i : i + step]) for i in blocks])  # (N,)
        else:
            lin = None
        agree = ((lin == ncc) & keep).sum() if lin is not None else torch.zeros((), device=dev)
        batch = torch.stack(
            [agree.to(torch.float64), ((ncc == y) & keep).sum().to(torch.float64), keep.sum().to(torch.float64)]
        )
        self.counts += batch

    def _linear(self, h64: torch.Tensor) -> torch.Tensor:
        """argmax_c (W h + b) (n,) of a block of features (n, d)."""
        z = h64.to(self.dtype) @ self.W.T  # (n, C)
        if self.b is not None:
            z += self.b
        return z.argmax(1)

    def merge(self, other: NC4Counter) -> NC4Counter:
        self.counts += other.counts.to(self.counts.device)
        self._bad |= other._bad.to(self._bad.device)
        self.saw_logits |= other.saw_logits
        return self

    def reduce(self, group=None) -> NC4Counter:
        """All-reduce the counts (and flags) over torch.distributed processes (of the data-parallel
        ``group``, default the world); a no-op in one process."""
        from .distributed import all_reduce_sum, rank_and_world

        if rank_and_world(group)[1] > 1:
            flags = torch.tensor([float(self._bad), float(self.saw_logits)], dtype=torch.float64)
            total = all_reduce_sum(torch.cat([self.counts.cpu(), flags]), group=group)
            self.counts = total[:3].to(self.counts.device)
            self._bad = torch.tensor(bool(total[3] > 0), device=self.counts.device)
            self.saw_logits = bool(total[4] > 0)
        return self

    def values(self) -> dict[str, float]:
        """``ncc_accuracy`` and, with a linear classifier, ``nc4_agreement`` (one host sync)."""
        if bool(self._bad):
            raise UserValueError(
                f"NC4 data hold labels outside [0, {self.num_classes}) (other than "
                f"{self.ignore_index}) or NaN/infinite features"
            )
        agree, correct, n = self.counts.tolist()
        if n == 0:
            raise UserValueError("the NC4 data hold no labelled sample (all labels are ignore_index)")
        out = {"nc4_agreement": agree / n} if self.has_linear else {}
        out["ncc_accuracy"] = correct / n
        return out

    @property
    def num_samples(self) -> int:
        return int(self.counts[2])
