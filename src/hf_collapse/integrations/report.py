"""A measurement's result: statistics and measures of every hooked module (:class:`CollapseReport`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.measures import CollapseResult
from ..core.statistics import CollapseStatistics
from .folder import layer_key


@dataclass
class CollapseReport:
    """Statistics and measures of one measurement.

    ``statistics`` / ``result`` belong to the first (primary) module; ``all_statistics`` /
    ``results`` hold every module by name. ``metrics(prefix)`` flattens them for logging: primary
    keys as is (``nc1_cdnv``), other modules as ``<layer>_<key>`` (``transformer_h_1_nc1_cdnv``).
    """

    all_statistics: dict[str, CollapseStatistics]
    results: dict[str, CollapseResult]
    settings: dict = field(default_factory=dict)

    @property
    def primary(self) -> str:
        return next(iter(self.results))

    @property
    def statistics(self) -> CollapseStatistics:
        return self.all_statistics[self.primary]

    @property
    def result(self) -> CollapseResult:
        return self.results[self.primary]

    def metrics(self, prefix: str = "") -> dict[str, float]:
        pre = f"{prefix}_" if prefix else ""
        out = {f"{pre}{k}": v for k, v in self.result.items()}
        for name, res in self.results.items():
            if name != self.primary:
                out.update({f"{pre}{layer_key(name)}_{k}": v for k, v in res.items()})
        return out

    def table(self) -> str:
        lines = []
        for name, res in self.results.items():
            lines.append(
                f"[{name}]  tokens={self.all_statistics[name].num_tokens}  "
                f"classes present={int(self.all_statistics[name].present.sum())}"
            )
            lines.append(res.table())
        return "\n".join(lines)
