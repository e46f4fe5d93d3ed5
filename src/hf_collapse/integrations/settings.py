"""The one settings dataclass of a collapse measurement, shared by the Python API, the CLI and the Trainer.

``CollapseArguments`` is ``HfArgumentParser``-ready (every field is a ``--collapse_*`` flag beside
``TrainingArguments``); ``collect_statistics``/``measure_model`` take it as ``settings`` and
``hf-collapse measure`` builds one from its flags. :meth:`CollapseArguments.override` maps the short
keyword names of the first release (``modules=``, ``task=``, ``k=``, ...) onto its fields.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, replace
from typing import Optional

import torch

from ..core.classes import check_selection
from ..core.registry import MEASURE_KEYS

TASKS = ("causal_lm", "token_classification", "sequence_classification")

# short keyword (first-release function argument) -> field
SHORT_NAMES = {
    "modules": "collapse_modules",
    "task": "collapse_task",
    "k": "collapse_k",
    "tile_size": "collapse_tile_size",
    "dtype": "collapse_dtype",
    "max_tokens": "collapse_max_tokens",
    "nc4_max_tokens": "collapse_nc4_max_tokens",
    "per_class": "collapse_per_class",
    "covariance": "collapse_covariance",
    "pooling": "collapse_pooling",
    "measures": "collapse_measures",
    "min_count": "collapse_min_count",
    "classes": "collapse_classes",
    "global_mean": "collapse_global_mean",
    "riesz_s": "collapse_riesz_s",
}


@dataclass
class CollapseArguments:
    """Settings of the collapse measurement (``HfArgumentParser``-ready: every field is a flag)."""

    collapse: bool = field(default=True, metadata={"help": "Measure neural collapse at every evaluation."})
    collapse_measures: Optional[list[str]] = field(
        default=None, metadata={"help": "Measure keys to log (default: all), e.g. nc1_cdnv nc4_agreement."}
    )
    collapse_modules: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "Modules whose input is measured (default: the output embeddings). "
            "Several give layer-wise NC with keys like eval_<layer>_nc1_cdnv."
        },
    )
    collapse_task: str = field(
        default="causal_lm",
        metadata={
            "help": "How labels align with features: causal_lm, token_classification or sequence_classification."
        },
    )
    collapse_k: float = field(default=2.0, metadata={"help": "CDNV power k (paper: 2)."})
    collapse_tile_size: int = field(default=1024, metadata={"help": "Tile edge of the pairwise sweep."})
    collapse_dtype: str = field(default="float32", metadata={"help": "float32 or float64 for tiles and NC4."})
    collapse_max_tokens: Optional[int] = field(
        default=None, metadata={"help": "Token budget of the statistics pass (a dedicated pass, not the eval loop)."}
    )
    collapse_nc4: bool = field(
        default=True,
        metadata={"help": "Run the NC4 pass (on nc4_dataset, else the eval data) for nc4_agreement and ncc_accuracy."},
    )
    collapse_nc4_max_tokens: Optional[int] = field(default=None, metadata={"help": "Token budget of the NC4 pass."})
    collapse_save_statistics: bool = field(
        default=True, metadata={"help": "Save the latest statistics into each checkpoint under collapse/."}
    )
    collapse_per_class: bool = field(default=False, metadata={"help": "Keep per-class outputs in the report."})
    collapse_covariance: bool = field(default=False, metadata={"help": "Accumulate the d x d covariance too."})
    collapse_pooling: str = field(
        default="last",
        metadata={"help": "sequence_classification with a per-token head: 'last' non-pad token or 'first' token."},
    )
    collapse_min_count: int = field(
        default=1, metadata={"help": "Classes with fewer samples are treated as absent in every measure and in NC4."}
    )
    collapse_classes: Optional[list[int]] = field(
        default=None,
        metadata={"help": "Measure only these class ids (e.g. frequent tokens); all others are treated as absent."},
    )
    collapse_global_mean: str = field(
        default="unweighted",
        metadata={
            "help": "Centre of the class means: 'unweighted' (the paper's mean of class means) or 'weighted' "
            "(by sample counts)."
        },
    )
    collapse_riesz_s: Optional[float] = field(
        default=None,
        metadata={"help": "s > 0 adds gnc2_riesz_mean / gnc2_riesz_cov, the Riesz s-kernel ||u_c - u_c'||^-s."},
    )

    def __post_init__(self):
        if self.collapse_dtype not in ("float32", "float64"):
            raise ValueError(f"collapse_dtype must be 'float32' or 'float64', got {self.collapse_dtype!r}")
        if self.collapse_task not in TASKS:
            raise ValueError(
                f"collapse_task must be causal_lm, token_classification or sequence_classification, "
                f"got {self.collapse_task!r}"
            )
        if isinstance(self.collapse_modules, str):
            self.collapse_modules = [self.collapse_modules]
        if isinstance(self.collapse_measures, str):
            self.collapse_measures = [self.collapse_measures]
        if self.collapse_classes is not None:
            self.collapse_classes = [int(c) for c in self.collapse_classes]
        check_selection(2**62, self.collapse_min_count, self.collapse_classes, self.collapse_global_mean)
        if self.collapse_riesz_s is not None and not (
            math.isfinite(self.collapse_riesz_s) and self.collapse_riesz_s > 0
        ):
            raise ValueError(f"collapse_riesz_s must be a finite number > 0, got {self.collapse_riesz_s}")
        if self.collapse_measures:
            bad = [m for m in self.collapse_measures if m not in MEASURE_KEYS]
            if bad:
                raise ValueError(f"unknown collapse_measures {bad}; expected keys of {list(MEASURE_KEYS)}")

    def select(self, metrics: dict) -> dict:
        """Keep the chosen measures (all when ``collapse_measures`` is empty)."""
        if not self.collapse_measures:
            return metrics
        return {k: v for k, v in metrics.items() if any(k.endswith(m) for m in self.collapse_measures)}

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.float64 if self.collapse_dtype == "float64" else torch.float32

    @property
    def modules(self):
        return self.collapse_modules or None

    def override(self, **short) -> CollapseArguments:
        """A copy with fields set by their short names (``modules=``, ``task=``, ``k=``, ``dtype=`` as a
        string or ``torch.dtype``, ...); ``None`` values keep the field. Unknown names raise TypeError."""
        unknown = sorted(set(short) - set(SHORT_NAMES))
        if unknown:
            raise TypeError(f"unknown setting(s) {unknown}; expected {sorted(SHORT_NAMES)} or a CollapseArguments")
        changes = {SHORT_NAMES[k]: v for k, v in short.items() if v is not None}
        if isinstance(changes.get("collapse_dtype"), torch.dtype):
            changes["collapse_dtype"] = str(changes["collapse_dtype"]).replace("torch.", "")
        return replace(self, **changes)

    def record(self) -> dict:
        """The settings a measurement records in ``metrics.json`` (short names)."""
        return {
            "task": self.collapse_task,
            "k": float(self.collapse_k),
            "max_tokens": self.collapse_max_tokens,
            "nc4_max_tokens": self.collapse_nc4_max_tokens,
            "tile_size": self.collapse_tile_size,
            "dtype": self.collapse_dtype,
            "covariance": self.collapse_covariance,
            **self.measure_record(),
        }

    def measure_record(self) -> dict:
        """The options that change the measures (not the statistics): min_count, classes (as a count
        and a hash: the list can be vocabulary-sized), global_mean, riesz_s."""
        classes = None
        if self.collapse_classes is not None:
            ids = sorted(set(self.collapse_classes))
            digest = hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()[:16]
            classes = f"{len(ids)} ids sha256:{digest}"
        return {
            "min_count": self.collapse_min_count,
            "classes": classes,
            "global_mean": self.collapse_global_mean,
            "riesz_s": self.collapse_riesz_s,
        }

    def measure_options(self) -> dict:
        """Keyword arguments of ``measure_collapse`` for these settings."""
        return {
            "min_count": self.collapse_min_count,
            "classes": self.collapse_classes,
            "global_mean": self.collapse_global_mean,
            "riesz_s": self.collapse_riesz_s,
        }


def as_settings(settings: Optional[CollapseArguments], **short) -> CollapseArguments:
    """``settings`` (default ``CollapseArguments()``) with the short-name keywords applied."""
    if settings is not None and not isinstance(settings, CollapseArguments):
        raise TypeError(f"settings must be CollapseArguments, got {type(settings).__name__}")
    return (settings or CollapseArguments()).override(**short)


__all__ = ["CollapseArguments", "SHORT_NAMES", "TASKS", "as_settings"]
