"""hf_collapse: neural collapse (NC1-NC4) for Hugging Face models at vocabulary scale."""

__version__ = "0.1.0"

from .statistics import CollapseStatistics  # noqa: E402
from .measures import CollapseResult, measure_collapse  # noqa: E402

__all__ = ["CollapseStatistics", "CollapseResult", "measure_collapse", "__version__"]

# make evaluate.load("neural_collapse") work offline (cheap, idempotent, never raises; see metric_registry)
from .metric_registry import register_on_import as _register_metric  # noqa: E402

_register_metric()


def __getattr__(name):  # lazy: loading measured models pulls in transformers and huggingface_hub
    if name in ("load_measured", "push_measured", "MeasuredModel"):
        from . import hub

        return getattr(hub, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
