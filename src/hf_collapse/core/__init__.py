"""The core: torch only (never transformers, huggingface_hub or datasets).

Statistics (sums reduced by addition), the measure registry, the measures, the tiled pairwise
sweep, NC4 counting, process helpers and file I/O.
"""

from .measures import CollapseResult, measure_collapse
from .nc4 import NC4Counter
from .registry import MEASURE_KEYS, MEASURES, Measure
from .statistics import CollapseStatistics

__all__ = [
    "CollapseResult",
    "CollapseStatistics",
    "MEASURES",
    "MEASURE_KEYS",
    "Measure",
    "NC4Counter",
    "measure_collapse",
]
