"""hf_collapse: neural collapse (NC1-NC4) for Hugging Face models at vocabulary scale.

Layers (see CONTRIBUTING.md): ``core`` (torch only: statistics, measures, registry), ``integrations``
(hooks and passes, Trainer, measured folders, model card, Hub, evaluate), ``study`` (data, training,
analysis, demo) and ``cli``. Importing the package writes nothing.
"""

from ._version import __version__
from .core.measures import CollapseResult, measure_collapse
from .core.options import MeasureOptions
from .core.registry import MEASURES, is_collapse_key
from .core.statistics import CollapseStatistics

__all__ = [
    "CollapseStatistics",
    "CollapseResult",
    "measure_collapse",
    "MeasureOptions",
    "MEASURES",
    "is_collapse_key",
    "__version__",
    "load_measured",
    "push_measured",
    "push_measurements",
    "load_measurements",
    "save_measured",
    "MeasuredModel",
    "collect_statistics",
    "measure_model",
    "CollapseReport",
    "CollapseTrainer",
    "CollapseArguments",
    "CollapseCallback",
    "MeasurementRecord",
    "load_metric",
]

# Exports that import transformers / huggingface_hub load on first use (PEP 562), so that
# ``import hf_collapse`` stays fast and torch-only; this hides no import cycle.
_LAZY = {
    "load_measured": "integrations.hub",
    "push_measured": "integrations.hub",
    "push_measurements": "integrations.measurements",
    "load_measurements": "integrations.measurements",
    "MeasuredModel": "integrations.hub",
    "save_measured": "integrations.hub",
    "collect_statistics": "integrations.passes",
    "measure_model": "integrations.passes",
    "CollapseReport": "integrations.passes",
    "MeasurementRecord": "integrations.record",
    "CollapseTrainer": "integrations.trainer",
    "CollapseCallback": "integrations.trainer",
    "CollapseArguments": "integrations.settings",
    "load_metric": "integrations.metric",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
