"""hf_collapse: neural collapse (NC1-NC4) for Hugging Face models at vocabulary scale."""

__version__ = "0.1.0"

from .statistics import CollapseStatistics  # noqa: E402
from .measures import CollapseResult, measure_collapse  # noqa: E402

__all__ = ["CollapseStatistics", "CollapseResult", "measure_collapse", "__version__"]

# make evaluate.load("neural_collapse") work offline (cheap, idempotent, never raises; see metric_registry)
from .metric_registry import register_on_import as _register_metric  # noqa: E402

_register_metric()


_LAZY = {  # heavier modules (transformers, huggingface_hub) load on first use
    "load_measured": "hub", "push_measured": "hub", "MeasuredModel": "hub",
    "collect_statistics": "collect", "measure_model": "collect", "CollapseReport": "collect",
    "CollapseTrainer": "trainer", "CollapseArguments": "trainer", "CollapseCallback": "trainer",
    "save_measured": "measured", "load_metric": "metric_registry",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
