"""Sufficient statistics of top-layer features grouped by class.

``CollapseStatistics`` is the accumulator every measure is computed from. Its state is sums and
counts, so any split of the data over batches or processes reduces by addition (torchmetrics
style: sum, reduce across processes, then divide). For features ``h`` (N, d) with labels ``y`` (N,):

    N_c        = #{i : y_i = c}                                   counts     (C,)
    S_c        = sum_{y_i = c} (h_i - s)                          sums       (C, d)
    Q_c        = sum_{y_i = c} ||h_i - s||^2                      sq_sums    (C,)
    M          = sum_i (h_i - s)(h_i - s)^T          (optional)   second_moment (d, d)

where ``s`` (d,) is a *shift*: the mean of the first batch seen. Shifting is the classic cure for
the cancellation in the one-pass variance ``E||h||^2 - ||E h||^2``: features of real models share a
large common offset, and the shift removes it before squaring. States with different shifts are
re-centred exactly before they are added (``merge``/``reduce``).

Derived quantities follow the paper (Wu & Papyan 2024, eqs. 2-3):

    mu_c      = S_c / N_c + s                     class means
    mu_bar    = (1/K) sum_{c present} mu_c         unweighted mean of the K classes with N_c > 0
    sigma_c^2 = Q_c / N_c - ||S_c / N_c||^2        biased variance E||h - mu_c||^2

The paper computes sigma_c^2 in a second pass over the data with the means fixed. That exact mode is
``begin_second_pass()`` + ``update_second_pass()``; once a second pass has covered every sample its
variances replace the one-pass ones.

Everything is accumulated in float64 whatever the input dtype.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Optional

import torch

from .._version import __version__
from .checks import BatchChecks, check_batch_shapes
from .io import HEADER_KEYS, SCHEMA, SCHEMA_VERSION, STATE_TENSORS, atomic_write, read_statistics_file
from .scope import comm_device, is_local


class CollapseStatistics:
    """Streaming per-class sufficient statistics of features ``(N, d)`` and labels ``(N,)``.

    Args:
        num_classes: C, the number of classes (for a language model: the vocabulary size).
        dim: d, the feature dimension.
        covariance: also accumulate the (d, d) second moment needed for the pooled within-class
            covariance Sigma_W and the original NC1 ``tr(Sigma_W Sigma_B^+) / K``. Off by default.
        device: where the state lives. ``None`` follows the first batch's device.
        ignore_index: label value that marks positions without a class (default -100, as in
            ``transformers``).
        defer_checks: check labels and finiteness on the device and raise only in ``check()``
            (no host sync per batch; the collection hooks use this), instead of in every ``update``.

    Examples:
        >>> import torch
        >>> stats = CollapseStatistics(num_classes=3, dim=2)
        >>> stats.update(torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 0, 2]))
        >>> stats.counts.tolist(), stats.means[0].tolist(), stats.variances[0].item()
        ([2.0, 0.0, 1.0], [2.0, 0.0], 1.0)
    """

    # the state tensors (None when unused): what ``to`` moves and ``clone`` copies
    _STATE = ("counts", "sums", "sq_sums", "shift", "second_moment", "frozen_means", "pass2_counts", "pass2_sq_sums")

    def __init__(
        self,
        num_classes: int,
        dim: int,
        *,
        covariance: bool = False,
        device: Optional[torch.device | str] = None,
        ignore_index: int = -100,
        defer_checks: bool = False,
    ) -> None:
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        self.num_classes = num_classes
        self.dim = dim
        self.covariance = bool(covariance)
        self.ignore_index = ignore_index
        self._follow_input = device is None
        self.metadata: dict[str, str] = {}
        self.defer_checks = defer_checks
        self._checks = BatchChecks(num_classes, ignore_index)
        self._allocate(torch.device(device) if device is not None else torch.device("cpu"))

    # ------------------------------------------------------------------ state
    def _allocate(self, device: torch.device) -> None:
        C, d, f64 = self.num_classes, self.dim, torch.float64
        self.counts = torch.zeros(C, dtype=f64, device=device)  # (C,)
        self.sums = torch.zeros(C, d, dtype=f64, device=device)  # (C, d), shifted
        self.sq_sums = torch.zeros(C, dtype=f64, device=device)  # (C,), shifted
        self.shift = torch.zeros(d, dtype=f64, device=device)  # (d,)
        self.has_shift = False
        self.second_moment = torch.zeros(d, d, dtype=f64, device=device) if self.covariance else None
        # exact second pass (paper eq. 3): sum ||h - mu_c||^2 with frozen means
        self.frozen_means: Optional[torch.Tensor] = None
        self.pass2_counts: Optional[torch.Tensor] = None
        self.pass2_sq_sums: Optional[torch.Tensor] = None

    @property
    def device(self) -> torch.device:
        return self.counts.device

    def to(self, device) -> CollapseStatistics:
        """Move the state to ``device`` in place and return ``self``."""
        for name in self._STATE:
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.to(device))
        return self

    @property
    def num_tokens(self) -> int:
        """Number of labelled samples accumulated."""
        return int(self.counts.sum().item())

    @property
    def present(self) -> torch.Tensor:
        """Boolean mask (C,) of classes with at least one sample."""
        return self.counts > 0

    def reset(self) -> None:
        self._allocate(self.device)

    # ------------------------------------------------------------------ input checks
    def _check_batch(self, features, labels) -> tuple[torch.Tensor, torch.Tensor]:
        features, labels = check_batch_shapes(features, labels, self.dim)
        features = features.reshape(-1, self.dim)  # (N, d)
        labels = labels.reshape(-1).to(features.device)  # (N,)
        if self._follow_input and features.device != self.device and not self.has_shift:
            self.to(features.device)
        # rows are masked, not dropped: boolean indexing and int(labels.min()) would sync with the device
        keep = self._checks.observe(features, labels)  # (N,) bool
        if not self.defer_checks:
            self.check()
        keep = keep.to(self.device)
        h = torch.where(keep[:, None], features.to(self.device, torch.float64), 0.0)  # (N, d), NaN rows zeroed
        y = torch.where(keep, labels.to(self.device, torch.long), 0)  # (N,), any valid index for dropped rows
        return h, y, keep.to(torch.float64)

    def check(self) -> None:
        """Raise the ValueError of a bad label or non-finite feature seen since the last check (one
        host sync). ``update`` calls it itself unless ``defer_checks``."""
        self._checks.raise_pending()

    # ------------------------------------------------------------------ accumulation
    def update(self, features, labels) -> None:
        """Add a batch: features (N, d) or (..., d), integer labels of the leading shape.

        Rows labelled ``ignore_index`` are skipped. Raises ValueError/TypeError on wrong shapes,
        dtypes, labels outside [0, C) or non-finite features (the last two in ``check()`` with
        ``defer_checks``; no host sync happens here then).
        """
        if self.frozen_means is not None:
            raise RuntimeError("update() after begin_second_pass(): use update_second_pass() for the second pass")
        h, y, w = self._check_batch(features, labels)  # (N, d) float64, (N,), (N,) 1.0 = kept
        if y.numel() == 0:
            return
        if not self.has_shift:  # mean of the first batch's kept rows (0 if none: any shift is exact)
            self.shift = h.sum(0) / w.sum().clamp(min=1)
            self.has_shift = True
        h = (h - self.shift) * w[:, None]  # (N, d), dropped rows 0
        # index_add_, not bincount: bincount on CUDA reads the max label back to the host
        self.counts.index_add_(0, y, w)
        self.sums.index_add_(0, y, h)
        self.sq_sums.index_add_(0, y, h.pow(2).sum(1))
        if self.second_moment is not None:
            self.second_moment.addmm_(h.T, h)

    def begin_second_pass(self) -> None:
        """Freeze the current means; subsequent ``update_second_pass`` calls accumulate the exact
        variances ``sum ||h - mu_c||^2`` of the paper's eq. 3."""
        if self.num_tokens == 0:
            raise ValueError("begin_second_pass() needs a first pass: no labelled sample was accumulated")
        self.frozen_means = self.means.clone()
        self.pass2_counts = torch.zeros_like(self.counts)
        self.pass2_sq_sums = torch.zeros_like(self.sq_sums)

    def update_second_pass(self, features, labels) -> None:
        """Accumulate exact squared deviations from the frozen means (same data as pass 1)."""
        if self.frozen_means is None:
            raise RuntimeError("call begin_second_pass() before update_second_pass()")
        h, y, w = self._check_batch(features, labels)
        if y.numel() == 0:
            return
        dev = (h - self.frozen_means[y]).pow(2).sum(1) * w  # (N,)
        self.pass2_counts.index_add_(0, y, w)
        self.pass2_sq_sums.index_add_(0, y, dev)

    # ------------------------------------------------------------------ combination
    def _recentre(self, new_shift: torch.Tensor) -> None:
        """Express the shifted sums around ``new_shift`` instead of ``self.shift`` (exact algebra)."""
        delta = self.shift - new_shift  # (d,)  h - new = (h - old) + delta
        if self.second_moment is not None:
            total = self.sums.sum(0)  # (d,)
            self.second_moment += torch.outer(total, delta) + torch.outer(delta, total)
            self.second_moment += self.counts.sum() * torch.outer(delta, delta)
        self.sq_sums += 2 * (self.sums @ delta) + self.counts * delta.dot(delta)
        self.sums += self.counts[:, None] * delta
        self.shift = new_shift.clone()

    def _check_compatible(self, other: CollapseStatistics) -> None:
        if not isinstance(other, CollapseStatistics):
            raise TypeError(f"can only merge CollapseStatistics, got {type(other).__name__}")
        if (other.num_classes, other.dim) != (self.num_classes, self.dim):
            raise ValueError(
                f"cannot merge statistics of shape (C={other.num_classes}, d={other.dim}) into "
                f"(C={self.num_classes}, d={self.dim})"
            )
        if other.covariance != self.covariance:
            raise ValueError("cannot merge statistics with and without covariance")
        if self.frozen_means is not None or other.frozen_means is not None:
            raise ValueError("merge the first-pass statistics before begin_second_pass()")

    def merge(self, other: CollapseStatistics) -> CollapseStatistics:
        """Add ``other``'s samples to ``self`` (in place) and return ``self``."""
        self._check_compatible(other)
        if other.num_tokens == 0:
            return self
        other = other.clone().to(self.device)
        if not self.has_shift:
            self.shift, self.has_shift = other.shift.clone(), True
        other._recentre(self.shift)
        self.counts += other.counts
        self.sums += other.sums
        self.sq_sums += other.sq_sums
        if self.second_moment is not None:
            self.second_moment += other.second_moment
        return self

    def clone(self) -> CollapseStatistics:
        new = CollapseStatistics(
            self.num_classes,
            self.dim,
            covariance=self.covariance,
            device=self.device,
            ignore_index=self.ignore_index,
            defer_checks=self.defer_checks,
        )
        for name in self._STATE:
            t = getattr(self, name)
            setattr(new, name, None if t is None else t.clone())
        new.has_shift, new._follow_input = self.has_shift, self._follow_input
        new.metadata = dict(self.metadata)
        return new

    def reduce(self, group=None) -> CollapseStatistics:
        """All-reduce (SUM) the state over the processes of ``torch.distributed`` (in place).

        A (d+1)-vector all-reduce to agree on a common shift (the global mean), then one in-place
        all-reduce per sum tensor (3 to 6; no flat copy of the C x d state). ``group``: the
        data-parallel process group to reduce over (default: the whole world); under tensor
        parallelism pass the data-parallel group, so that TP replicas are counted once. A no-op when torch.distributed is not initialised (single process). Every process
        ends with the same, complete statistics. The second-pass sums are reduced too.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
            return self
        if group is None and is_local():  # inside core.scope.local_only(): measure locally
            return self
        # 1) common shift = global mean of all samples; processes without data contribute zeros
        head = torch.cat([self.sums.sum(0) + self.counts.sum() * self.shift, self.counts.sum()[None]])
        head = head.to(comm_device(group))
        dist.all_reduce(head, group=group)
        head = head.to(self.device)
        n = head[-1]
        common = head[:-1] / n if n > 0 else torch.zeros_like(self.shift)
        self._recentre(common)
        self.has_shift = bool(n > 0)
        # 2) the sums, reduced in place: no copy of a C x d float64 tensor when the state lives where the
        # collective runs (gloo on CPU, NCCL on the GPU); else each part goes through one buffer there
        names = ["counts", "sums", "sq_sums"]
        if self.second_moment is not None:
            names.append("second_moment")
        if self.frozen_means is not None:
            names += ["pass2_counts", "pass2_sq_sums"]
        where = comm_device(group)
        for name in names:
            p = getattr(self, name)
            if p.device == where and p.is_contiguous():
                dist.all_reduce(p, group=group)
            else:
                buf = p.to(where)
                dist.all_reduce(buf, group=group)
                p.copy_(buf)
                del buf
        return self

    # ------------------------------------------------------------------ derived
    def _require_data(self) -> None:
        if self.num_tokens == 0:
            raise ValueError("no labelled sample has been accumulated: call update(features, labels) first")

    def moments(self, index: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(counts, means, variances)`` of the classes in ``index`` (default: all), float64.

        means mu_c = S_c / N_c + s; variances sigma_c^2 = Q_c / N_c - ||S_c / N_c||^2 (shifted one-pass,
        clamped at 0 against round-off), or the exact second-pass sums once they cover every sample.
        Absent classes get zeros. Indexing first keeps the cost at the size of ``index``.
        """
        sel = (lambda t: t) if index is None else (lambda t: t[index])
        n = sel(self.counts)
        safe = n.clamp(min=1)
        means = sel(self.sums) / safe[:, None]  # (., d) shifted means, a new tensor (worked on in place)
        if self.pass2_counts is not None and torch.equal(self.pass2_counts, self.counts):
            variances = sel(self.pass2_sq_sums) / safe
        else:
            variances = (sel(self.sq_sums) / safe - means.pow(2).sum(1)).clamp(min=0)
        means += self.shift
        empty = n == 0
        if bool(empty.any()):
            means[empty] = 0.0
        return n, means, variances

    @property
    def means(self) -> torch.Tensor:
        """Class means mu_c (C, d), float64; rows of absent classes are 0."""
        return self.moments()[1]

    @property
    def global_mean(self) -> torch.Tensor:
        """Unweighted mean of the present class means, mu_bar (d,) (paper eq. 2)."""
        self._require_data()
        return self.moments(self.present.nonzero().squeeze(1))[1].mean(0)

    @property
    def variances(self) -> torch.Tensor:
        """Biased within-class variances sigma_c^2 = E||h - mu_c||^2 (C,), float64; 0 for absent classes."""
        return self.moments()[2]

    def within_class_covariance(self) -> torch.Tensor:
        """Pooled within-class covariance Sigma_W = (1/N) sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T (d, d)."""
        if self.second_moment is None:
            raise ValueError("the within-class covariance needs CollapseStatistics(..., covariance=True)")
        self._require_data()
        centred_means = self.sums / self.counts.clamp(min=1)[:, None]  # (C, d), shifted
        between = centred_means.T @ (self.counts[:, None] * centred_means)  # (d, d)
        return (self.second_moment - between) / self.counts.sum()

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {
            "counts": self.counts,
            "sums": self.sums,
            "sq_sums": self.sq_sums,
            "shift": self.shift,
            "means": self.means,
            "variances": self.variances,
        }
        if self.second_moment is not None:
            state["second_moment"] = self.second_moment
        if self.frozen_means is not None:
            state.update(
                frozen_means=self.frozen_means, pass2_counts=self.pass2_counts, pass2_sq_sums=self.pass2_sq_sums
            )
        return {k: v.detach().to("cpu", torch.float64).contiguous() for k, v in state.items()}

    def save(
        self,
        path: str | os.PathLike,
        *,
        extra_tensors: Optional[Mapping[str, torch.Tensor]] = None,
        metadata: Optional[Mapping[str, str]] = None,
    ) -> None:
        """Write the statistics to a safetensors file, atomically (temp file + rename).

        The file holds float64 ``counts`` (C,), ``means`` (C, d), ``variances`` (C,) plus the raw
        sums needed to resume or merge, and ``extra_tensors`` (e.g. per-class outputs, saved under
        their own names). The header records schema, version, C, d, token count and ``metadata``.
        """
        from safetensors.torch import save_file

        self.check()
        tensors = self.state_dict()
        for k, v in (extra_tensors or {}).items():
            if k in tensors:
                raise ValueError(f"extra tensor name {k!r} clashes with a statistics tensor")
            tensors[k] = v.detach().cpu().contiguous()
        meta = {str(k): str(v) for k, v in {**self.metadata, **(metadata or {})}.items()}
        meta.update(
            schema=SCHEMA,
            schema_version=str(SCHEMA_VERSION),
            num_classes=str(self.num_classes),
            dim=str(self.dim),
            num_tokens=str(self.num_tokens),
            dtype="float64",
            covariance=str(int(self.covariance)),
            has_shift=str(int(self.has_shift)),
            ignore_index=str(self.ignore_index),
            library_version=__version__,
        )
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))

    @classmethod
    def load(cls, path: str | os.PathLike, device=None) -> CollapseStatistics:
        """Read a file written by ``save``; validates the schema, shapes and dtypes.

        Raises FileNotFoundError for a missing file and ValueError naming the file and the problem
        for a corrupt, foreign or inconsistent one. Never unpickles.
        """
        stats, _ = cls.load_with_extras(path, device=device)
        return stats

    @classmethod
    def load_with_extras(cls, path, device=None) -> tuple[CollapseStatistics, dict[str, torch.Tensor]]:
        """Like ``load`` but also return the extra tensors saved beside the statistics."""
        meta, tensors = read_statistics_file(path)
        C, d, covariance = int(meta["num_classes"]), int(meta["dim"]), meta.get("covariance") == "1"
        stats = cls(C, d, covariance=covariance, ignore_index=int(meta.get("ignore_index", -100)))
        stats.counts, stats.sums, stats.sq_sums = tensors["counts"], tensors["sums"], tensors["sq_sums"]
        stats.shift, stats.has_shift = tensors["shift"], meta.get("has_shift", "1") == "1"
        if covariance:
            stats.second_moment = tensors["second_moment"]
        if "frozen_means" in tensors:
            stats.frozen_means = tensors["frozen_means"]
            stats.pass2_counts, stats.pass2_sq_sums = tensors["pass2_counts"], tensors["pass2_sq_sums"]
        stats.metadata = {k: v for k, v in meta.items() if k not in HEADER_KEYS}
        if device is not None:
            stats.to(device)
        return stats, {k: v for k, v in tensors.items() if k not in STATE_TENSORS}

    def __repr__(self) -> str:
        return (
            f"CollapseStatistics(num_classes={self.num_classes}, dim={self.dim}, "
            f"present={int(self.present.sum())}, tokens={self.num_tokens}, "
            f"covariance={self.covariance}, device={self.device})"
        )
