"""Compatibility path of the first release: see :mod:`hf_collapse.integrations.trainer`."""

from .integrations.settings import CollapseArguments
from .integrations.trainer import CollapseCallback, CollapseTrainer

__all__ = ["CollapseArguments", "CollapseCallback", "CollapseTrainer"]
