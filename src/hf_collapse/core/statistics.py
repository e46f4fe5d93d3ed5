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

The paper computes sigma_c^2 in a second pass over the data with the means fixed; the shifted one-pass
sums give the same numbers to round-off (tests: a 1e3 offset on unit noise agrees to 1e-6), in one pass.

Everything is accumulated in float64 whatever the input dtype.

The state is declared once, in ``STATE`` (one ``StateSpec`` per tensor: shape, reduction, when it
exists); allocation, ``to``, ``clone``, ``merge``, ``reduce``, ``state_dict``, ``load`` and the file's
schema check all loop over it. The statistics file (safetensors) is described here too: ``SCHEMA``,
``HEADER`` and ``read_statistics_file``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Optional

import torch

from .._version import __version__
from .checks import BatchChecks, check_batch_shapes
from .errors import UserFileNotFoundError, UserTypeError, UserValueError
from .io import SAFETENSORS_DTYPES, Chunked, atomic_write, write_safetensors
from .rows import row_slices, row_sq_norms
from .scope import comm_device, is_local


# ---------------------------------------------------------------------- the state, declared once
@dataclass(frozen=True)
class StateSpec:
    """One float64 tensor of the state of :class:`CollapseStatistics`.

    Attributes:
        name: the attribute of the statistics and the tensor's name in the statistics file.
        shape: its shape as a function of (C, d).
        reduction: how the states of two parts of the data combine. ``"sum"``: added, once both are
            expressed around the same shift (``_recentre``); ``"shift"``: the reference point itself,
            agreed on before the sums are added (``merge`` takes the first part's, ``reduce`` the global
            mean), never added.
        optional: the flag (constructor argument, attribute and header entry ``"1"``/``"0"``) under which
            the tensor exists; ``None``: always. Absent tensors are ``None`` on the object and not in the file.
    """

    name: str
    shape: Callable[[int, int], tuple[int, ...]]
    reduction: str = "sum"
    optional: Optional[str] = None


STATE: tuple[StateSpec, ...] = (
    StateSpec("counts", lambda C, d: (C,)),  # N_c
    StateSpec("sums", lambda C, d: (C, d)),  # S_c = sum (h - s), shifted
    StateSpec("sq_sums", lambda C, d: (C,)),  # Q_c = sum ||h - s||^2, shifted
    StateSpec("shift", lambda C, d: (d,), reduction="shift"),  # s
    StateSpec("second_moment", lambda C, d: (d, d), optional="covariance"),  # M = sum (h - s)(h - s)^T, shifted
)

# ---------------------------------------------------------------------- the statistics file
SCHEMA = "hf_collapse.statistics"
SCHEMA_VERSION = 1
# tensors the file holds beside the state, derived from it for readers (``load`` recomputes them)
DERIVED_TENSORS: dict[str, Callable[[int, int], tuple[int, ...]]] = {
    "means": lambda C, d: (C, d),  # mu_c
    "variances": lambda C, d: (C,),  # sigma_c^2
}
# written by hf_collapse <= 0.1.0 after the removed exact second pass (``begin_second_pass``); ignored by
# ``load``, and reserved: no extra tensor may take these names
LEGACY_TENSORS = frozenset({"frozen_means", "pass2_counts", "pass2_sq_sums"})
# tensor names of a statistics file that belong to the statistics, not to the extras
STATE_TENSORS = frozenset({spec.name for spec in STATE} | set(DERIVED_TENSORS) | LEGACY_TENSORS)
# the header entries ``save`` writes, each a string function of the statistics; any other entry is user metadata
HEADER: dict[str, Callable[[CollapseStatistics], str]] = {
    "schema": lambda s: SCHEMA,
    "schema_version": lambda s: str(SCHEMA_VERSION),
    "num_classes": lambda s: str(s.num_classes),
    "dim": lambda s: str(s.dim),
    "num_tokens": lambda s: str(s.num_tokens),
    "dtype": lambda s: "float64",
    "covariance": lambda s: str(int(s.covariance)),
    "has_shift": lambda s: str(int(s.has_shift)),
    "ignore_index": lambda s: str(s.ignore_index),
    "library_version": lambda s: __version__,
}
HEADER_KEYS = frozenset(HEADER)


def _exists(spec: StateSpec, flags) -> bool:
    """Whether ``spec`` is part of a state whose optional flags are ``flags`` (a mapping or an object)."""
    if spec.optional is None:
        return True
    return bool(flags.get(spec.optional) if isinstance(flags, Mapping) else getattr(flags, spec.optional))


_SAFETENSORS_NAMES = {code: str(dtype)[6:] for dtype, code in SAFETENSORS_DTYPES.items()}  # "F64" -> "float64"


def read_statistics_file(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """Open a statistics safetensors file and check its header: ``(metadata, tensors)``.

    Checks the schema name and version, then the shape and dtype (float64) of every state tensor of
    ``STATE`` the header's flags call for and of the derived ``means``/``variances``. Raises
    FileNotFoundError for a missing file and ValueError naming the file and the problem for an
    unreadable, foreign, too new or malformed one. Never unpickles.
    """
    from safetensors import safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserFileNotFoundError(f"no statistics file at {path!r}")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            # the derived tensors (the (C, d) means) are recomputed by load: read their shape, not their bytes
            derived = {k: f.get_slice(k) for k in f.keys() if k in DERIVED_TENSORS or k in LEGACY_TENSORS}
            tensors = {k: f.get_tensor(k) for k in f.keys() if k not in derived}
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise UserValueError(f"{path!r} is not a readable safetensors file: {e}") from e
    if meta.get("schema") != SCHEMA:
        raise UserValueError(
            f"{path!r} is not an hf_collapse statistics file (schema {meta.get('schema')!r}, expected {SCHEMA!r})"
        )
    try:
        version = int(meta.get("schema_version", ""))
        int(meta["num_classes"]), int(meta["dim"])
    except (KeyError, ValueError) as e:
        raise UserValueError(f"{path!r} has a malformed statistics header: {e}") from e
    if version > SCHEMA_VERSION:
        raise UserValueError(
            f"{path!r} uses statistics schema version {version}, newer than this hf_collapse "
            f"supports ({SCHEMA_VERSION}); upgrade hf_collapse"
        )
    C, d = int(meta["num_classes"]), int(meta["dim"])
    flags = {spec.optional: meta.get(spec.optional) == "1" for spec in STATE if spec.optional}
    expected = {spec.name: spec.shape(C, d) for spec in STATE if _exists(spec, flags)}
    expected.update({name: shape(C, d) for name, shape in DERIVED_TENSORS.items()})
    for name, shape in expected.items():
        if name in tensors:
            got, dtype = tuple(tensors[name].shape), str(tensors[name].dtype)[6:]
        elif name in derived:
            got, dtype = tuple(derived[name].get_shape()), _SAFETENSORS_NAMES.get(derived[name].get_dtype(), "?")
        else:
            raise UserValueError(f"{path!r} lacks the tensor {name!r}")
        if got != shape or dtype != "float64":
            raise UserValueError(f"{path!r}: tensor {name!r} has shape {got} dtype {dtype}, expected {shape} float64")
    return meta, tensors


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

    # the state (see ``STATE``): float64, shifted by ``shift``; ``second_moment`` is None without covariance
    counts: torch.Tensor  # (C,)
    sums: torch.Tensor  # (C, d)
    sq_sums: torch.Tensor  # (C,)
    shift: torch.Tensor  # (d,)
    second_moment: Optional[torch.Tensor]  # (d, d)

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
            raise UserValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise UserValueError(f"dim must be a positive int, got {dim!r}")
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
    def _specs(self, reduction: Optional[str] = None) -> list[StateSpec]:
        """The specs of ``STATE`` this statistics has (its optional flags set), of one ``reduction`` if given."""
        return [s for s in STATE if _exists(s, self) and reduction in (None, s.reduction)]

    def _allocate(self, device: torch.device) -> None:
        C, d = self.num_classes, self.dim
        for spec in STATE:
            zeros = torch.zeros(spec.shape(C, d), dtype=torch.float64, device=device)
            setattr(self, spec.name, zeros if _exists(spec, self) else None)
        self.has_shift = False

    @property
    def device(self) -> torch.device:
        return self.counts.device

    def to(self, device) -> CollapseStatistics:
        """Move the state to ``device`` in place and return ``self``."""
        for spec in self._specs():
            setattr(self, spec.name, getattr(self, spec.name).to(device))
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
    def _check_batch(self, features, labels) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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

    # ------------------------------------------------------------------ combination
    def _recentre(self, new_shift: torch.Tensor) -> None:
        """Express the shifted sums around ``new_shift`` instead of ``self.shift`` (exact algebra).

        With delta = s_old - s_new, h - s_new = (h - s_old) + delta, so for every class c and T = sum_c S_c:

            S_c' = S_c + N_c delta
            Q_c' = Q_c + 2 <S_c, delta> + N_c ||delta||^2
            M'   = M + T delta^T + delta T^T + N delta delta^T

        (Q_c' and M' use the old S_c, so S_c is updated last.)
        """
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
            raise UserTypeError(f"can only merge CollapseStatistics, got {type(other).__name__}")
        if (other.num_classes, other.dim) != (self.num_classes, self.dim):
            raise UserValueError(
                f"cannot merge statistics of shape (C={other.num_classes}, d={other.dim}) into "
                f"(C={self.num_classes}, d={self.dim})"
            )
        if other.covariance != self.covariance:
            raise UserValueError("cannot merge statistics with and without covariance")

    def merge(self, other: CollapseStatistics) -> CollapseStatistics:
        """Add ``other``'s samples to ``self`` (in place) and return ``self``.

        A copy of ``other`` is re-centred on ``self``'s shift (exact), then every ``"sum"`` state is added.
        """
        self._check_compatible(other)
        if other.num_tokens == 0:
            return self
        other = other.clone().to(self.device)
        if not self.has_shift:
            self.shift, self.has_shift = other.shift.clone(), True
        other._recentre(self.shift)
        for spec in self._specs("sum"):
            getattr(self, spec.name).add_(getattr(other, spec.name))
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
        for spec in self._specs():
            setattr(new, spec.name, getattr(self, spec.name).clone())
        new.has_shift, new._follow_input = self.has_shift, self._follow_input
        new.metadata = dict(self.metadata)
        return new

    def reduce(self, group=None) -> CollapseStatistics:
        """All-reduce (SUM) the state over the processes of ``torch.distributed`` (in place).

        First a (d+1)-vector ``[sum_i h_i, N]`` agrees on a common shift (the global mean) that every
        process re-centres on; then each ``"sum"`` state is all-reduced in place (one collective per
        tensor, no copy of the (C, d) sums unless the backend needs the buffer on another device: NCCL
        with a CPU state). A no-op when torch.distributed is not initialised (single process), for a
        group of one, and inside ``core.scope.local_only()`` for the default group. Every process ends
        with the same, complete statistics. ``group``: the data-parallel process group to reduce over
        (default: the whole world); under tensor parallelism pass the data-parallel group, so that TP
        replicas are counted once.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
            return self
        if group is None and is_local():  # inside core.scope.local_only(): measure locally
            return self
        where = comm_device(group)
        # 1) common shift = global mean of all samples; processes without data contribute zeros
        head = torch.cat([self.sums.sum(0) + self.counts.sum() * self.shift, self.counts.sum()[None]])  # (d+1,)
        head = head.to(where)
        dist.all_reduce(head, group=group)
        head = head.to(self.device)
        n = head[-1]
        common = head[:-1] / n if n > 0 else torch.zeros_like(self.shift)  # (d,)
        self._recentre(common)
        self.has_shift = bool(n > 0)
        # 2) the sums, in place
        for spec in self._specs("sum"):
            t = getattr(self, spec.name)
            if t.device == where:
                dist.all_reduce(t, group=group)
            else:
                buf = t.to(where)
                dist.all_reduce(buf, group=group)
                t.copy_(buf)
                del buf
        return self

    # ------------------------------------------------------------------ derived
    def _require_data(self) -> None:
        if self.num_tokens == 0:
            raise UserValueError("no labelled sample has been accumulated: call update(features, labels) first")

    def moments(self, index: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(counts, means, variances)`` of the classes in ``index`` (default: all), float64.

        means mu_c = S_c / N_c + s; variances sigma_c^2 = Q_c / N_c - ||S_c / N_c||^2 (shifted one-pass,
        clamped at 0 against round-off). Absent classes get zeros. Indexing first keeps the cost at the size of ``index``.
        """
        sel = (lambda t: t) if index is None else (lambda t: t.index_select(0, index))
        n = sel(self.counts)
        safe = n.clamp(min=1)
        # (., d) shifted means: one new K x d tensor, worked on in place (the statistics' size at scale)
        means = self.sums / safe[:, None] if index is None else sel(self.sums).div_(safe[:, None])
        variances = (sel(self.sq_sums) / safe - row_sq_norms(means)).clamp(min=0)  # (.,)
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
            raise UserValueError("the within-class covariance needs CollapseStatistics(..., covariance=True)")
        self._require_data()
        centred_means = self.sums / self.counts.clamp(min=1)[:, None]  # (C, d), shifted
        between = centred_means.T @ (self.counts[:, None] * centred_means)  # (d, d)
        return (self.second_moment - between) / self.counts.sum()

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors of the statistics file: the state of ``STATE`` and the derived ``DERIVED_TENSORS``
        (means, variances), float64 on the CPU."""
        state = {spec.name: getattr(self, spec.name) for spec in self._specs()}
        _, state["means"], state["variances"] = self.moments()  # DERIVED_TENSORS
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
        self.check()
        tensors: dict = {spec.name: getattr(self, spec.name).to(torch.float64) for spec in self._specs()}
        # the derived means are written a chunk of rows at a time (a (C, d) array is the state's size);
        # the variances, filled on the way, follow them in the file
        variances = torch.empty(self.num_classes, dtype=torch.float64)

        def means():
            for sl in row_slices(self.num_classes, self.dim):
                _, mu, var = self.moments(torch.arange(sl.start, sl.stop, device=self.device))
                variances[sl] = var.cpu()
                yield mu

        tensors["means"] = Chunked(torch.float64, (self.num_classes, self.dim), means)
        tensors["variances"] = variances
        for k, v in (extra_tensors or {}).items():
            if k in STATE_TENSORS:
                raise UserValueError(f"extra tensor name {k!r} clashes with a statistics tensor")
            tensors[k] = v.detach()
        meta = {str(k): str(v) for k, v in {**self.metadata, **(metadata or {})}.items()}
        meta.update({key: value(self) for key, value in HEADER.items()})
        atomic_write(path, lambda tmp: write_safetensors(tmp, tensors, metadata=meta))

    @classmethod
    def load(cls, path: str | os.PathLike, device=None) -> CollapseStatistics:
        """Read a file written by ``save``; validates the schema, shapes and dtypes.

        Files of hf_collapse <= 0.1.0 written after the removed ``begin_second_pass`` load too: their
        second-pass tensors are ignored, and the variances are the one-pass ones of the sums.

        Raises FileNotFoundError for a missing file and ValueError naming the file and the problem
        for a corrupt, foreign or inconsistent one. Never unpickles.
        """
        stats, _ = cls.load_with_extras(path, device=device)
        return stats

    @classmethod
    def load_with_extras(cls, path, device=None) -> tuple[CollapseStatistics, dict[str, torch.Tensor]]:
        """Like ``load`` but also return the extra tensors saved beside the statistics."""
        meta, tensors = read_statistics_file(path)
        flags = {spec.optional: meta.get(spec.optional) == "1" for spec in STATE if spec.optional}
        C, d = int(meta["num_classes"]), int(meta["dim"])
        stats = cls(C, d, ignore_index=int(meta.get("ignore_index", -100)), **flags)
        for spec in stats._specs():
            setattr(stats, spec.name, tensors[spec.name])
        stats.has_shift = meta.get("has_shift", "1") == "1"
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
