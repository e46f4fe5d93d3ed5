"""The measure options: one frozen dataclass, the only place an option is named, defaulted, validated
and explained.

Every surface is generated from (or tested against) :class:`MeasureOptions`' fields:
``measure_collapse(stats, options=...)``, the ``collapse_*`` fields of ``CollapseArguments`` (the
Trainer and ``HfArgumentParser``), the flags of ``hf-collapse measure`` / ``sweep``
(:func:`add_option_arguments`), the evaluate module's ``_compute`` arguments and what a measured folder
records (:meth:`MeasureOptions.to_record`). Adding an option is one field here plus the code that
computes with it.

The options change the *measures*, not the statistics: the same statistics measured with other options
give other numbers, so a stored measurement is reused only when its options are equal.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from .classes import GLOBAL_MEANS, check_selection
from .errors import UserTypeError, UserValueError

DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class MeasureOptions:
    """How statistics become measures (defaults: the paper's).

    ``classes`` is kept as a sorted tuple of distinct ids (the order of a selection carries no meaning).
    ``dtype`` is the working precision of the tiled sweep, the d x d Gram matrices and the NC4 matmuls;
    the statistics themselves are always float64.

    Examples:
        >>> MeasureOptions(k=1, classes=[5, 3, 5]).classes
        (3, 5)
        >>> MeasureOptions(dtype="float16")
        Traceback (most recent call last):
        ...
        ValueError: dtype must be one of ('float32', 'float64'), got 'float16'
    """

    k: float = field(default=2.0, metadata={"help": "CDNV power k (paper: 2)."})
    tile_size: int = field(default=1024, metadata={"help": "Tile edge of the pairwise sweep (memory ~ tile_size^2)."})
    dtype: str = field(
        default="float32",
        metadata={"help": "Precision of the sweep tiles, Gram matrices and NC4 matmuls.", "choices": list(DTYPES)},
    )
    min_count: int = field(
        default=1, metadata={"help": "Classes with fewer samples are treated as absent in every measure and in NC4."}
    )
    classes: Optional[list[int]] = field(
        default=None,
        metadata={
            "help": "Measure only these class ids (e.g. frequent tokens); all others are treated as absent.",
            "metavar": "ID",
        },
    )
    global_mean: str = field(
        default="unweighted",
        metadata={
            "help": "Centre of the class means: 'unweighted' (the paper's mean of class means) or 'weighted' "
            "(by sample counts).",
            "choices": list(GLOBAL_MEANS),
        },
    )
    riesz_s: Optional[float] = field(
        default=None,
        metadata={
            "help": "s > 0 adds gnc2_riesz_mean / gnc2_riesz_cov, the Riesz s-kernel ||u_c - u_c'||^-s.",
            "metavar": "S",
        },
    )

    def __post_init__(self) -> None:
        k = self.k
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k) or k < 0:
            raise UserValueError(f"k must be a finite number >= 0, got {k!r}")
        object.__setattr__(self, "k", float(k))
        if isinstance(self.tile_size, bool) or not isinstance(self.tile_size, int) or self.tile_size < 1:
            raise UserValueError(f"tile_size must be a positive int, got {self.tile_size!r}")
        dtype = self.dtype
        if isinstance(dtype, torch.dtype):
            dtype = str(dtype).replace("torch.", "")
        if dtype not in DTYPES:
            raise UserValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        object.__setattr__(self, "dtype", dtype)
        _, ids = check_selection(2**62, self.min_count, self.classes, self.global_mean)
        object.__setattr__(self, "classes", None if ids is None else tuple(ids.tolist()))
        s = self.riesz_s
        if s is not None:
            if isinstance(s, bool) or not isinstance(s, (int, float)):
                raise UserTypeError(f"riesz_s must be a number, got {type(s).__name__}")
            if not (math.isfinite(s) and s > 0):
                raise UserValueError(f"riesz_s must be a finite number > 0, got {s}")
            object.__setattr__(self, "riesz_s", float(s))

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.float64 if self.dtype == "float64" else torch.float32

    def replace(self, **changes: Any) -> MeasureOptions:
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)

    def classes_record(self) -> Optional[str]:
        """``classes`` as recorded: a count and a hash (the list can be vocabulary-sized)."""
        if self.classes is None:
            return None
        digest = hashlib.sha256(",".join(map(str, self.classes)).encode()).hexdigest()[:16]
        return f"{len(self.classes)} ids sha256:{digest}"

    def to_record(self) -> dict[str, Any]:
        """The options as a measured folder records them (``metrics.json``): every field by its name,
        ``classes`` as :meth:`classes_record`."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["classes"] = self.classes_record()
        return out

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))


__all__ = ["MeasureOptions", "DTYPES"]
