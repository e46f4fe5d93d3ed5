"""The one settings dataclass of a collapse measurement, shared by the Python API, the CLI and the Trainer.

``CollapseArguments`` is ``HfArgumentParser``-ready (every field is a ``--collapse_*`` flag beside
``TrainingArguments``). Its measure options are not written here: every field of
:class:`~hf_collapse.core.options.MeasureOptions` becomes a field ``collapse_<name>`` (same default,
help and choices; :func:`_embed_options`), and :attr:`CollapseArguments.options` gives them back as one
``MeasureOptions``. The ``collapse_`` prefix is mapped here and nowhere else.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional  # noqa: F401  (Optional: the embedded fields' annotations name it)

import torch

from ..core.errors import UserTypeError, UserValueError
from ..core.options import MeasureOptions
from ..core.registry import MEASURE_KEYS
from .hooks import POOLINGS, TASKS

PREFIX = "collapse_"


def _embed_options(cls):
    """Add one field ``collapse_<name>`` per ``MeasureOptions`` field (before ``@dataclass`` runs)."""
    annotations = cls.__dict__.get("__annotations__", {})
    for f in dataclasses.fields(MeasureOptions):
        annotations[PREFIX + f.name] = f.type
        setattr(cls, PREFIX + f.name, field(default=f.default, metadata=dict(f.metadata)))
    cls.__annotations__ = annotations
    return cls


@dataclass
@_embed_options
class CollapseArguments:
    """Settings of the collapse measurement (``HfArgumentParser``-ready: every field is a flag).

    Beside the fields below, ``collapse_k``, ``collapse_tile_size``, ``collapse_dtype``,
    ``collapse_min_count``, ``collapse_classes``, ``collapse_global_mean`` and ``collapse_riesz_s``
    are the fields of :class:`~hf_collapse.core.options.MeasureOptions` (see there), read together as
    :attr:`options`.
    """

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
        default="causal_lm", metadata={"help": "How labels align with features.", "choices": list(TASKS)}
    )
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
    collapse_statistics_device: Optional[str] = field(
        default=None,
        metadata={
            "help": "Where the statistics (C x d float64 sums per module) live: default, the device the features "
            "are computed on; 'cpu' keeps them in host memory (each batch's features are copied there) when "
            "the accelerator cannot hold them."
        },
    )
    collapse_pooling: str = field(
        default="last",
        metadata={
            "help": "sequence_classification with a per-token head: 'last' non-pad token or 'first' token.",
            "choices": list(POOLINGS),
        },
    )

    def __post_init__(self):
        if self.collapse_task not in TASKS:
            raise UserValueError(f"collapse_task must be one of {TASKS}, got {self.collapse_task!r}")
        if self.collapse_pooling not in POOLINGS:
            raise UserValueError(f"collapse_pooling must be one of {POOLINGS}, got {self.collapse_pooling!r}")
        if isinstance(self.collapse_modules, str):
            self.collapse_modules = [self.collapse_modules]
        if isinstance(self.collapse_measures, str):
            self.collapse_measures = [self.collapse_measures]
        for name in ("collapse_max_tokens", "collapse_nc4_max_tokens"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise UserValueError(f"{name} must be a positive int or None, got {value!r}")
        if self.collapse_statistics_device is not None:
            try:
                torch.device(self.collapse_statistics_device)
            except (RuntimeError, TypeError) as e:
                raise UserValueError(
                    f"collapse_statistics_device must name a torch device such as 'cpu' or 'cuda:0', "
                    f"got {self.collapse_statistics_device!r}"
                ) from e
        if self.collapse_measures:
            bad = [m for m in self.collapse_measures if m not in MEASURE_KEYS]
            if bad:
                raise UserValueError(f"unknown collapse_measures {bad}; expected keys of {list(MEASURE_KEYS)}")
        options = self.options  # validates the measure options
        for f in dataclasses.fields(MeasureOptions):  # normalised (classes sorted, dtype a string)
            setattr(self, PREFIX + f.name, getattr(options, f.name))

    @property
    def options(self) -> MeasureOptions:
        """The measure options (``collapse_k``, ``collapse_tile_size``, ...) as one ``MeasureOptions``."""
        return MeasureOptions(**{f.name: getattr(self, PREFIX + f.name) for f in dataclasses.fields(MeasureOptions)})

    @classmethod
    def from_options(cls, options: MeasureOptions, **fields: Any) -> CollapseArguments:
        """``CollapseArguments`` with ``options`` and the other ``fields`` (by their full names)."""
        if not isinstance(options, MeasureOptions):
            raise UserTypeError(f"options must be a MeasureOptions, got {type(options).__name__}")
        return cls(**{PREFIX + k: v for k, v in dataclasses.asdict(options).items()}, **fields)

    def replace(self, **changes: Any) -> CollapseArguments:
        """A copy with ``changes`` (full field names), validated again."""
        return dataclasses.replace(self, **changes)

    def select(self, metrics: dict) -> dict:
        """Keep the chosen measures (all when ``collapse_measures`` is empty)."""
        if not self.collapse_measures:
            return metrics
        return {k: v for k, v in metrics.items() if any(k.endswith(m) for m in self.collapse_measures)}

    @property
    def modules(self):
        return self.collapse_modules or None


def as_settings(settings: Optional[CollapseArguments]) -> CollapseArguments:
    """``settings``, default ``CollapseArguments()``; TypeError for anything else."""
    if settings is None:
        return CollapseArguments()
    if not isinstance(settings, CollapseArguments):
        raise UserTypeError(f"settings must be CollapseArguments, got {type(settings).__name__}")
    return settings


__all__ = ["CollapseArguments", "PREFIX", "as_settings"]
