"""Compatibility path of the first release: the collection passes now live in
:mod:`hf_collapse.integrations.passes` and :mod:`hf_collapse.integrations.hooks`."""

from .integrations.hooks import FeatureCollector, align_labels, resolve_modules, unwrap_model
from .integrations.passes import CollapseReport, collect_nc4, collect_statistics, measure_model, measure_statistics

__all__ = [
    "CollapseReport",
    "FeatureCollector",
    "align_labels",
    "collect_nc4",
    "collect_statistics",
    "measure_model",
    "measure_statistics",
    "resolve_modules",
    "unwrap_model",
]
