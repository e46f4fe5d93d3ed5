"""Measured runs as table rows: read run folders (``collapse/metrics.json`` + ``run.json``), ``runs.csv`` and
``trajectory.csv`` tables, and write CSVs. The analysis (:mod:`hf_collapse.study.analysis`) works on these rows."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Optional

from ..core.errors import UserFileNotFoundError, UserValueError
from ..core.io import write_csv_rows
from ..core.registry import MEASURE_KEYS
from ..integrations.folder import eval_loss

logger = logging.getLogger(__name__)

CONFIG_COLUMNS = ("name", "width", "depth", "epochs", "weight_decay", "seed", "data_seed", "num_parameters", "val_loss")
# what the runs must share to be analysed together: the text they were trained and validated on and the
# vocabulary (a loss in nats/token over another vocabulary or corpus is another quantity); model_type names them
DATA_COLUMNS = ("data", "vocab_size", "model_type")
MUST_AGREE = ("data", "vocab_size")

# ---------------------------------------------------------------------------------------------
# collecting runs


def _read_json(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise UserValueError(f"{path} is not valid JSON: {e}") from e


def _is_run(folder: Path) -> bool:
    return (folder / "collapse" / "metrics.json").is_file()


def _find_loss(folder: Path, metrics: dict, run: dict) -> Optional[float]:
    for src in (
        metrics,
        run,
        _read_json(folder / "eval_results.json") or {},
        _read_json(folder / "all_results.json") or {},
    ):
        if "eval_loss" in src:
            return float(src["eval_loss"])
    return eval_loss(folder)


def read_run(folder: str | os.PathLike) -> dict:
    """One row: configuration columns, ``val_loss`` and every measure found in ``collapse/metrics.json``."""
    folder = Path(folder)
    metrics = _read_json(folder / "collapse" / "metrics.json")
    if metrics is None:
        raise UserFileNotFoundError(f"{folder} is not a measured run: no collapse/metrics.json")
    run = _read_json(folder / "run.json") or {}
    config = _read_json(folder / "config.json") or {}
    row = {
        "name": run.get("name", folder.name),
        "path": str(folder),
        "width": run.get("width", config.get("hidden_size")),
        "depth": run.get("depth", config.get("num_layers", config.get("num_hidden_layers"))),
        "epochs": run.get("epochs"),
        "weight_decay": run.get("weight_decay"),
        "seed": run.get("seed"),
        "data_seed": run.get("data_seed"),
        "num_parameters": run.get("num_parameters"),
        "val_loss": _find_loss(folder, metrics, run),
        "data": run.get("data"),
        "vocab_size": config.get("vocab_size"),
        "model_type": config.get("model_type"),
    }
    for key in MEASURE_KEYS:
        if key in metrics and metrics[key] is not None:
            row[key] = float(metrics[key])
    return row


def collect_runs(paths: Iterable[str | os.PathLike]) -> list[dict]:
    """Rows of every run under ``paths``: a run folder itself, or a folder whose sub-folders are runs."""
    rows = []
    for p in paths:
        p = Path(p)
        if _is_run(p):
            rows.append(read_run(p))
        elif p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_dir() and _is_run(q))
            if not found:
                raise UserFileNotFoundError(f"{p} holds no measured runs (folders with collapse/metrics.json)")
            rows.extend(read_run(q) for q in found)
        else:
            raise UserFileNotFoundError(f"no run folder at {p}")
    return rows


def read_measurements_dataset(path_or_repo: str | os.PathLike) -> list[dict]:
    """Rows of a measurements dataset (:mod:`hf_collapse.integrations.measurements`: a Hub dataset id or a
    local folder of its Parquet files) as run rows: the default measurement of each (model, revision)
    (named / layer-wise ones are other quantities and are left out), ``val_loss`` from the row's
    ``eval_loss``, named ``model`` (``model@revision`` off ``main``), ``vocab_size`` from ``num_classes``."""
    from ..integrations.measurements import read_measurement_table

    rows = []
    for r in read_measurement_table(path_or_repo).to_pylist():
        if r.get("measurement"):
            continue
        rev = r.get("revision") or "main"
        row = {
            "name": r["model"] if rev == "main" else f"{r['model']}@{rev}",
            "path": f"{r['model']}@{rev}",
            "val_loss": r.get("eval_loss"),
            "data": r.get("data"),
            "vocab_size": r.get("num_classes"),
            "step": r.get("step"),
        }
        row.update({k: float(r[k]) for k in MEASURE_KEYS if r.get(k) is not None})
        rows.append(row)
    if not rows:
        raise UserValueError(f"measurements dataset {str(path_or_repo)!r} holds no default measurements to analyse")
    rows.sort(key=lambda r: r["name"])
    return rows


def is_measurements_source(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a measurements dataset: a local folder (or file) of Parquet files that is not
    a run folder, or something that is no local path (a Hub dataset id)."""
    p = Path(path)
    if p.is_file():
        return p.suffix == ".parquet"
    if p.is_dir():
        return not _is_run(p) and not any(q.is_dir() and _is_run(q) for q in p.iterdir()) and any(p.rglob("*.parquet"))
    return not str(path).endswith(".csv")


def metric_columns(rows: Sequence[dict]) -> list[str]:
    """Measures present (finite) in every row, in ``MEASURE_KEYS`` order."""
    keys = []
    for key in MEASURE_KEYS:
        vals = [r.get(key) for r in rows]
        if rows and all(v is not None and math.isfinite(float(v)) for v in vals):
            keys.append(key)
    return keys


def write_csv(rows: Sequence[dict], path: str | os.PathLike, columns: Optional[Sequence[str]] = None) -> None:
    """The rows as CSV (columns: ``columns`` or every key seen, config first), written atomically."""
    if columns is None:
        columns = [c for c in (*CONFIG_COLUMNS, "path", *DATA_COLUMNS) if any(c in r for r in rows)]
        columns += [k for k in MEASURE_KEYS if any(k in r for r in rows)]
        columns += sorted({k for r in rows for k in r} - set(columns))
    write_csv_rows(rows, path, columns)


def read_csv_rows(path: str | os.PathLike) -> list[dict]:
    """Rows of a ``runs.csv`` or a ``trajectory.csv`` (numbers parsed back to float/int); FileNotFoundError /
    ValueError name the file when it is missing or not a UTF-8 CSV table. A trajectory's rows (``hf-collapse
    sweep``) are named by ``checkpoint`` and fitted against their ``eval_loss``; rows of duplicated weights
    (``duplicate_of``) are left out, since they repeat a measured row."""
    if not os.path.isfile(path):
        raise UserFileNotFoundError(f"no runs table at {os.fspath(path)!r}")
    rows = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                row = {}
                for k, v in r.items():
                    if k is None or v is None:  # more / fewer cells than the header names
                        raise UserValueError(
                            f"{os.fspath(path)!r}: a row does not match the header {[k for k in r if k is not None]}"
                        )
                    if v == "":
                        row[k] = None
                        continue
                    try:
                        row[k] = int(v) if v.lstrip("-").isdigit() else float(v)
                    except ValueError:
                        row[k] = v
                if "checkpoint" in row and "weights_sha256" in row:  # a trajectory.csv
                    if row.get("duplicate_of"):
                        continue
                    row.setdefault("name", row["checkpoint"])
                    if row.get("val_loss") is None:
                        row["val_loss"] = row.get("eval_loss")
                rows.append(row)
    except (UnicodeDecodeError, csv.Error) as e:
        raise UserValueError(f"{os.fspath(path)!r} is not a UTF-8 CSV table: {e}") from e
    return rows


def check_rows(rows: Sequence[dict], metrics: Sequence[str]) -> None:
    """Every run has a numeric ``val_loss`` and numeric measures (a malformed runs.csv names the cell)."""
    missing = [r.get("name") for r in rows if r.get("val_loss") is None]
    if missing:
        raise UserValueError(f"runs without a validation loss (eval_loss): {missing}")
    for r in rows:
        for key in ("val_loss", *metrics):
            v = r.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise UserValueError(f"run {r.get('name')!r}: {key} is {v!r}, expected a number")


def check_same_data(rows: Sequence[dict]) -> None:
    """ValueError (one line) when runs were trained on different data or vocabularies (``MUST_AGREE``
    columns; runs that do not record one are not checked): their losses are not comparable."""
    for field in MUST_AGREE:
        groups: dict = {}
        for r in rows:
            if r.get(field) is not None:
                groups.setdefault(r[field], []).append(str(r.get("name")))
        if len(groups) > 1:
            parts = "; ".join(f"{_few(names)}: {value!r}" for value, names in groups.items())
            raise UserValueError(
                f"the runs differ in {field} ({parts}): their validation losses are not comparable; "
                f"analyse each group of runs separately"
            )


def _few(names: Sequence[str], limit: int = 3) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
