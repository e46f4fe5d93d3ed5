"""Compatibility path of the first release: see :mod:`hf_collapse.integrations.hub`."""

from .integrations.folder import list_measurements, read_measurement, read_metrics
from .integrations.hub import (
    MeasuredModel,
    find_measurement,
    load_measured,
    measurement_mismatches,
    push_measured,
    save_measured,
)
from .integrations.model_card import render_model_card, write_model_card
from .integrations.weights_hash import weights_sha256

__all__ = [
    "MeasuredModel",
    "find_measurement",
    "list_measurements",
    "load_measured",
    "measurement_mismatches",
    "push_measured",
    "read_measurement",
    "read_metrics",
    "render_model_card",
    "save_measured",
    "weights_sha256",
    "write_model_card",
]
