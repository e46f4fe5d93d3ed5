"""The measured-model folder: the one owner of its format (names, layout, reading, writing).

A *measured model folder* (what ``hf-collapse measure --output-dir`` and the CollapseTrainer write)::

    config.json, model.safetensors (or shards), tokenizer files   # save_pretrained
    README.md                                                     # model card (model_card.write_model_card)
    collapse/statistics.safetensors    # CollapseStatistics.save; per-class outputs as per_class.<name>
    collapse/metrics.json              # flat JSON object: measure keys + num_tokens, num_classes, settings
    collapse/collapse.png              # figure embedded in the card (optional)
    collapse/<name>/...                # further measurements side by side: layer-wise (collapse/transformer_h_1/),
                                       # per epoch, per dataset; load_measured(..., name=...)

The statistics header records ``k``, the data, the token budget, ``weights_sha256``
(:func:`hf_collapse.integrations.weights_hash.weights_sha256`) and the library version, so a
published folder says exactly what was measured on what. Nothing here unpickles.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import torch

from ..core.errors import UserFileNotFoundError, UserTypeError, UserValueError
from ..core.io import atomic_write_text
from ..core.measures import CollapseResult
from ..core.registry import MEASURE_KEYS
from ..core.statistics import CollapseStatistics
from .record import MeasurementRecord
from .weights_hash import weights_sha256

logger = logging.getLogger(__name__)

COLLAPSE_DIR = "collapse"
STATISTICS_FILE = "statistics.safetensors"
METRICS_FILE = "metrics.json"
FIGURE_FILE = "collapse.png"
PER_CLASS_PREFIX = "per_class."
REPO_ID_PLACEHOLDER = "REPO_ID"  # what the card says where the repo id was not known when it was written
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# files never pushed: hidden ones (.git, .cache/huggingface of local_dir downloads), temp files, caches
SKIP_PARTS = ("__pycache__",)


# ---------------------------------------------------------------------------------------- layout
def measurement_subdir(name: Optional[str] = None) -> str:
    """Path inside the folder of measurement ``name``: ``collapse`` for the default (None),
    ``collapse/<name>`` otherwise (``name`` of letters, digits, ``.``, ``_``, ``-``)."""
    if name is None or name == "":
        return COLLAPSE_DIR
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
        raise UserValueError(f"measurement name {name!r} is invalid: use letters, digits, '.', '_' and '-'")
    return f"{COLLAPSE_DIR}/{name}"


def list_measurements(folder: str | os.PathLike) -> list[Optional[str]]:
    """Names of the measurements in ``folder``: ``None`` for ``collapse/`` itself, then the
    sub-folder names holding a statistics file, sorted."""
    root = Path(folder) / COLLAPSE_DIR
    found: list[Optional[str]] = [None] if (root / STATISTICS_FILE).is_file() else []
    if root.is_dir():
        found += sorted(p.name for p in root.iterdir() if (p / STATISTICS_FILE).is_file() and _NAME.match(p.name))
    return found


# ---------------------------------------------------------------------------------------- reading
def read_metrics(path: str | os.PathLike) -> dict:
    """Read ``metrics.json``; FileNotFoundError / ValueError name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise UserFileNotFoundError(f"no metrics file at {str(path)!r}")
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserValueError(f"{str(path)!r} is not valid JSON: {e}") from e
    if not isinstance(metrics, dict):
        raise UserValueError(f"{str(path)!r} holds a JSON {type(metrics).__name__}, expected an object of measures")
    for key in MEASURE_KEYS:
        if metrics.get(key) in ("inf", "-inf", "nan"):  # how save_measured writes non-finite values
            metrics[key] = float(metrics[key])
        elif key in metrics and not isinstance(metrics[key], (int, float)):
            raise UserValueError(f"{str(path)!r}: measure {key!r} is {metrics[key]!r}, expected a number")
    return metrics


def read_measurement(
    folder: str | os.PathLike, name: Optional[str] = None
) -> tuple[CollapseStatistics, dict, dict, CollapseResult, MeasurementRecord]:
    """Read one measurement of a folder: ``(statistics, per_class, metrics, result, record)``.

    Raises FileNotFoundError naming the missing file (and the measurements that do exist) and
    ValueError for corrupt, foreign or inconsistent files.
    """
    folder = Path(folder)
    sub = folder / measurement_subdir(name)
    stats_path = sub / STATISTICS_FILE
    if not stats_path.is_file():
        have = list_measurements(folder)
        listed = ", ".join("default" if n is None else repr(n) for n in have) or "none"
        raise UserFileNotFoundError(
            f"no collapse statistics at {str(stats_path)!r} (measurements in this folder: {listed})"
        )
    stats, extras = CollapseStatistics.load_with_extras(stats_path)
    per_class = {k[len(PER_CLASS_PREFIX) :]: v for k, v in extras.items() if k.startswith(PER_CLASS_PREFIX)}
    metrics = read_metrics(sub / METRICS_FILE)
    for key, actual in (("num_tokens", stats.num_tokens), ("num_classes", stats.num_classes)):
        if key in metrics and int(metrics[key]) != int(actual):
            raise UserValueError(
                f"{str(sub / METRICS_FILE)!r} says {key}={metrics[key]} but {str(stats_path)!r} holds "
                f"{actual}: the two files come from different measurements"
            )
    result = CollapseResult(
        {k: float(metrics[k]) for k in MEASURE_KEYS if k in metrics},
        per_class=per_class or None,
        info={"source": str(sub)},
    )
    return stats, per_class, metrics, result, MeasurementRecord.from_files(stats.metadata, metrics)


def verify_weights(folder: str | os.PathLike, stats: CollapseStatistics, stats_path: str) -> Optional[str]:
    """Compare ``weights_sha256`` recorded in the statistics with the weights in ``folder``.

    Returns the hash when it matches, None when the file records none (logged); raises ValueError on
    a mismatch."""
    recorded = stats.metadata.get("weights_sha256")
    if not recorded:
        logger.warning("%s records no weights_sha256: cannot check that it belongs to these weights", stats_path)
        return None
    actual = weights_sha256(folder)
    if actual != recorded:
        raise UserValueError(
            f"{stats_path!r} was measured on weights with sha256 {recorded[:16]}..., but the weights in "
            f"{str(folder)!r} hash to {actual[:16]}...: the statistics do not belong to this model "
            "(pass check_weights=False to load anyway)"
        )
    return actual


def trainer_state(folder) -> dict:
    """The folder's ``trainer_state.json`` (``{}`` when absent); ValueError when it is not JSON."""
    path = Path(folder) / "trainer_state.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise UserValueError(f"{path} is not valid JSON: {e}") from e


def eval_loss(folder) -> Optional[float]:
    """The last ``eval_loss`` logged in the folder's ``trainer_state.json`` (None when absent)."""
    losses = [e["eval_loss"] for e in trainer_state(folder).get("log_history", []) if "eval_loss" in e]
    return float(losses[-1]) if losses else None


# ---------------------------------------------------------------------------------------- writing
def _json_value(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no inf/nan
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


def build_metrics(statistics: CollapseStatistics, result, settings: Optional[Mapping] = None) -> dict:
    """The flat ``metrics.json`` object: measure values, counts, then the settings used."""
    out = {k: _json_value(float(v)) for k, v in result.items()}
    out.update(
        num_tokens=statistics.num_tokens,
        num_classes=statistics.num_classes,
        num_classes_present=int(statistics.present.sum()),
        dim=statistics.dim,
    )
    info = getattr(result, "info", None) or {}
    if "num_classes_coincident" in info:  # left out of the measures (identical means)
        out["num_classes_coincident"] = int(info["num_classes_coincident"])
    if info.get("min_count", 1) > 1 or info.get("num_classes_selected") is not None:  # min_count / classes
        out["num_classes_measured"] = int(info["num_classes_present"])
    for k, v in (settings or {}).items():
        if k not in out:
            out[k] = _json_value(v)
    return out


def layer_key(name: str) -> str:
    """Measurement / metric-key form of a module name: ``transformer.h.1`` -> ``transformer_h_1``."""
    return name.replace(".", "_").replace("/", "_")


def write_measurement(
    folder: str | os.PathLike,
    statistics: CollapseStatistics,
    result: CollapseResult,
    record: MeasurementRecord,
    *,
    name: Optional[str] = None,
    extra_metrics: Optional[Mapping] = None,
) -> Path:
    """Write one measurement (``collapse[/<name>]/statistics.safetensors`` + ``metrics.json``) into
    ``folder``: the statistics header is ``record.to_header()``, ``metrics.json`` holds the measures,
    the counts, ``record.to_metrics()`` and ``extra_metrics`` (results beside the measures, such as
    ``eval_loss``). Returns the measurement folder. Under several processes call it on the main
    process only.
    """
    if not isinstance(statistics, CollapseStatistics):
        raise UserTypeError(f"statistics must be a CollapseStatistics, got {type(statistics).__name__}")
    if not isinstance(record, MeasurementRecord):
        raise UserTypeError(f"record must be a MeasurementRecord, got {type(record).__name__}")
    sub = Path(folder) / measurement_subdir(name)
    extra = {}
    if getattr(result, "per_class", None):
        extra = {
            PER_CLASS_PREFIX + k: v.detach().cpu().to(torch.float64 if v.is_floating_point() else torch.int64)
            for k, v in result.per_class.items()
        }
    statistics.save(sub / STATISTICS_FILE, extra_tensors=extra, metadata=record.to_header())
    metrics = build_metrics(statistics, result, {**record.to_metrics(), **dict(extra_metrics or {})})
    atomic_write_text(sub / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
    return sub


def write_report(
    folder: str | os.PathLike,
    report: Any,
    *,
    model: Optional[torch.nn.Module] = None,
    extra_metrics: Optional[Mapping] = None,
) -> MeasurementRecord:
    """Write every measurement of a ``CollapseReport``: the primary module as the default measurement,
    each further module (layer-wise NC) as ``collapse/<layer_key>/``, all with ``report.record``; the
    default one's ``metrics.json`` also holds the other modules' measures as ``<layer_key>_<key>``. With
    ``model`` and a record without ``weights_sha256`` the weights are hashed here, once for all
    measurements. Returns the record written."""
    if not all(hasattr(report, a) for a in ("all_statistics", "results", "record")):
        raise UserTypeError(f"report must be a CollapseReport (measure_model's result), got {type(report).__name__}")
    record = report.record
    if model is not None and record.weights_sha256 is None:
        record = record.replace(weights_sha256=weights_sha256(model))
    # the default measurement's metrics.json also carries the other modules' keys (<layer>_<key>)
    layers = {k: v for k, v in report.metrics().items() if k not in report.result}
    for mod, stats in report.all_statistics.items():
        name = None if mod == report.primary else layer_key(mod)
        extra = {**(layers if name is None else {}), **dict(extra_metrics or {})}
        write_measurement(folder, stats, report.results[mod], record, name=name, extra_metrics=extra)
    return record
