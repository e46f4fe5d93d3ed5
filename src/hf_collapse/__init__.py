"""hf_collapse: neural collapse (NC1-NC4) for Hugging Face models at vocabulary scale."""

__version__ = "0.1.0"

from .statistics import CollapseStatistics  # noqa: E402
from .measures import CollapseResult, measure_collapse  # noqa: E402

__all__ = ["CollapseStatistics", "CollapseResult", "measure_collapse", "__version__"]
