"""The one settings dataclass of a collapse measurement, shared by the Python API, the CLI and the Trainer.

``CollapseArguments`` is ``HfArgumentParser``-ready (every field is a ``--collapse_*`` flag beside
``TrainingArguments``); ``collect_statistics``/``measure_model`` take it as ``settings`` and
``hf-collapse measure`` builds one from its flags. :meth:`CollapseArguments.override` maps the short
keyword names of the first release (``modules=``, ``task=``, ``k=``, ...) onto its fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import torch

from ..core.registry import MEASURE_KEYS

TASKS = ("causal_lm", "token_classification", "sequence_classification")

# short keyword (first-release function argument) -> field
SHORT_NAMES = {
    "modules": "collapse_modules", "task": "collapse_task", "k": "collapse_k", "tile_size": "collapse_tile_size",
    "dtype": "collapse_dtype", "max_tokens": "collapse_max_tokens", "nc4_max_tokens": "collapse_nc4_max_tokens",
    "per_class": "collapse_per_class", "covariance": "collapse_covariance", "pooling": "collapse_pooling",
    "measures": "collapse_measures",
}


@dataclass
class CollapseArguments:
    """Settings of the collapse measurement (``HfArgumentParser``-ready: every field is a flag)."""

    collapse: bool = field(default=True, metadata={"help": "Measure neural collapse at every evaluation."})
    collapse_measures: Optional[list[str]] = field(
        default=None, metadata={"help": "Measure keys to log (default: all), e.g. nc1_cdnv nc4_agreement."})
    collapse_modules: Optional[list[str]] = field(
        default=None, metadata={"help": "Modules whose input is measured (default: the output embeddings). "
                                        "Several give layer-wise NC with keys like eval_<layer>_nc1_cdnv."})
    collapse_task: str = field(default="causal_lm", metadata={
        "help": "How labels align with features: causal_lm, token_classification or sequence_classification."})
    collapse_k: float = field(default=2.0, metadata={"help": "CDNV power k (paper: 2)."})
    collapse_tile_size: int = field(default=1024, metadata={"help": "Tile edge of the pairwise sweep."})
    collapse_dtype: str = field(default="float32", metadata={"help": "float32 or float64 for tiles and NC4."})
    collapse_max_tokens: Optional[int] = field(
        default=None, metadata={"help": "Token budget of the statistics pass (a dedicated pass, not the eval loop)."})
    collapse_nc4: bool = field(default=True, metadata={
        "help": "Run the NC4 pass (on nc4_dataset, else the eval data) for nc4_agreement and ncc_accuracy."})
    collapse_nc4_max_tokens: Optional[int] = field(default=None, metadata={"help": "Token budget of the NC4 pass."})
    collapse_save_statistics: bool = field(
        default=True, metadata={"help": "Save the latest statistics into each checkpoint under collapse/."})
    collapse_per_class: bool = field(default=False, metadata={"help": "Keep per-class outputs in the report."})
    collapse_covariance: bool = field(default=False, metadata={"help": "Accumulate the d x d covariance too."})
    collapse_pooling: str = field(default="last", metadata={
        "help": "sequence_classification with a per-token head: 'last' non-pad token or 'first' token."})

    def __post_init__(self):
        if self.collapse_dtype not in ("float32", "float64"):
            raise ValueError(f"collapse_dtype must be 'float32' or 'float64', got {self.collapse_dtype!r}")
        if self.collapse_task not in TASKS:
            raise ValueError(f"collapse_task must be causal_lm, token_classification or sequence_classification, "
                             f"got {self.collapse_task!r}")
        if isinstance(self.collapse_modules, str):
            self.collapse_modules = [self.collapse_modules]
        if isinstance(self.collapse_measures, str):
            self.collapse_measures = [self.collapse_measures]
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
        return {"task": self.collapse_task, "k": float(self.collapse_k), "max_tokens": self.collapse_max_tokens,
                "nc4_max_tokens": self.collapse_nc4_max_tokens, "tile_size": self.collapse_tile_size,
                "dtype": self.collapse_dtype, "covariance": self.collapse_covariance}


def as_settings(settings: Optional[CollapseArguments], **short) -> CollapseArguments:
    """``settings`` (default ``CollapseArguments()``) with the short-name keywords applied."""
    if settings is not None and not isinstance(settings, CollapseArguments):
        raise TypeError(f"settings must be CollapseArguments, got {type(settings).__name__}")
    return (settings or CollapseArguments()).override(**short)


__all__ = ["CollapseArguments", "SHORT_NAMES", "TASKS", "as_settings"]
