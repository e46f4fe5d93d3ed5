"""Analysis of a study: many measured runs -> one table, fits against validation loss, permutation tests, figures.

A *run* is a measured model folder (as ``scripts/train_clm.py``, ``hf-collapse demo`` or
``hf-collapse measure`` write them). From each the table takes

- the measures: ``collapse/metrics.json`` (keys of ``hf_collapse.measures.MEASURE_KEYS``);
- the validation loss ``val_loss``, first found of: key ``eval_loss`` in ``collapse/metrics.json``,
  in ``run.json``, in ``eval_results.json`` / ``all_results.json``, or the last ``eval_loss``
  logged in ``trainer_state.json``;
- the configuration: ``run.json`` (``width``, ``depth``, ``epochs``, ``weight_decay``, ``seed``,
  ``num_parameters``) written by the study, else ``config.json`` (``hidden_size``,
  ``num_layers``/``num_hidden_layers``).

Statistics, per measure m over the n runs (paper Figure 1 and Table 1):

- least-squares line ``m = a + b * val_loss`` and ``R^2 = r^2`` (Pearson r);
- a two-sided permutation test of no association: ``p = (1 + #{|r_perm| >= |r_obs|}) / (1 + B)``
  over B random permutations of the losses (seeded, vectorised in chunks of permutations).
  The paper runs it over seed-only replicas of one architecture (Table 1); pass just those runs
  to reproduce that design, or the whole grid to test the pooled association.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Optional

import numpy as np

from ..core.io import atomic_write_text, fmt
from ..core.registry import MEASURE_KEYS, MEASURES

logger = logging.getLogger(__name__)

CONFIG_COLUMNS = ("name", "width", "depth", "epochs", "weight_decay", "seed", "num_parameters", "val_loss")

# +1: a larger value means more collapse; -1: a smaller value does; 0: no direction (nc2_norm_mean).
# From the registry: variability, non-uniformity and misalignment shrink with collapse; duality and
# agreement grow; interference and the log kernel fall towards their minima.
COLLAPSE_DIRECTION = {key: m.sign for key, m in MEASURES.items()}


# ---------------------------------------------------------------------------------------------
# collecting runs


def _read_json(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


def _is_run(folder: Path) -> bool:
    return (folder / "collapse" / "metrics.json").is_file()


def _find_loss(folder: Path, metrics: dict, run: dict) -> Optional[float]:
    for src in (metrics, run, _read_json(folder / "eval_results.json") or {},
                _read_json(folder / "all_results.json") or {}):
        if "eval_loss" in src:
            return float(src["eval_loss"])
    state = _read_json(folder / "trainer_state.json") or {}
    losses = [e["eval_loss"] for e in state.get("log_history", []) if "eval_loss" in e]
    return float(losses[-1]) if losses else None


def read_run(folder: str | os.PathLike) -> dict:
    """One row: configuration columns, ``val_loss`` and every measure found in ``collapse/metrics.json``."""
    folder = Path(folder)
    metrics = _read_json(folder / "collapse" / "metrics.json")
    if metrics is None:
        raise FileNotFoundError(f"{folder} is not a measured run: no collapse/metrics.json")
    run = _read_json(folder / "run.json") or {}
    config = _read_json(folder / "config.json") or {}
    row = {
        "name": run.get("name", folder.name), "path": str(folder),
        "width": run.get("width", config.get("hidden_size")),
        "depth": run.get("depth", config.get("num_layers", config.get("num_hidden_layers"))),
        "epochs": run.get("epochs"), "weight_decay": run.get("weight_decay"), "seed": run.get("seed"),
        "num_parameters": run.get("num_parameters"), "val_loss": _find_loss(folder, metrics, run),
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
                raise FileNotFoundError(f"{p} holds no measured runs (folders with collapse/metrics.json)")
            rows.extend(read_run(q) for q in found)
        else:
            raise FileNotFoundError(f"no run folder at {p}")
    return rows


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
    import io

    if columns is None:
        columns = [c for c in (*CONFIG_COLUMNS, "path") if any(c in r for r in rows)]
        columns += [k for k in MEASURE_KEYS if any(k in r for r in rows)]
        columns += sorted({k for r in rows for k in r} - set(columns))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    atomic_write_text(path, buf.getvalue())


# ---------------------------------------------------------------------------------------------
# statistics


def _as_xy(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"x and y must be 1-D of equal length, got shapes {x.shape} and {y.shape}")
    if x.size < 3:
        raise ValueError(f"a fit needs at least 3 runs, got {x.size}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("x and y must be finite (a run lacks a validation loss or a measure?)")
    return x, y


def linear_fit(x, y) -> dict:
    """Least squares ``y = intercept + slope * x``; returns slope, intercept, r (Pearson), r2, n."""
    x, y = _as_xy(x, y)
    xc, yc = x - x.mean(), y - y.mean()
    sxx, syy = float(xc @ xc), float(yc @ yc)
    if sxx == 0.0:
        raise ValueError("x is constant: no line can be fitted")
    slope = float(xc @ yc) / sxx
    r = float(xc @ yc) / math.sqrt(sxx * syy) if syy > 0 else 0.0
    return {"slope": slope, "intercept": float(y.mean() - slope * x.mean()), "r": r, "r2": r * r, "n": int(x.size)}


def permutation_test(x, y, num_permutations: int = 10_000, seed: int = 0, chunk: int = 2048) -> float:
    """Two-sided permutation p-value of Pearson's r between x and y (permuting y), vectorised.

    ``p = (1 + #{|r_perm| >= |r_obs|}) / (1 + B)``; a chunk of permutations is one (chunk, n)
    matrix, so B = 10^4 over tens of runs takes milliseconds. 1.0 when either variable is constant.
    """
    x, y = _as_xy(x, y)
    if num_permutations < 1:
        raise ValueError(f"num_permutations must be >= 1, got {num_permutations}")
    if x.std() == 0 or y.std() == 0:
        return 1.0
    xs, ys = (x - x.mean()) / x.std(), (y - y.mean()) / y.std()
    n = x.size
    r_obs = abs(float(xs @ ys) / n)
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, num_permutations, chunk):
        b = min(chunk, num_permutations - start)
        perm = rng.permuted(np.broadcast_to(ys, (b, n)), axis=1)   # (b, n) independent shuffles
        r = np.abs(perm @ xs) / n                                   # (b,)
        hits += int((r >= r_obs - 1e-12).sum())                     # tolerance: ties in float round-off
    return (1 + hits) / (1 + num_permutations)


def correlations(rows: Sequence[dict], metrics: Optional[Sequence[str]] = None, num_permutations: int = 10_000,
                 seed: int = 0) -> list[dict]:
    """Per measure: fit vs ``val_loss``, R^2, permutation p-value (one row per measure)."""
    if any(r.get("val_loss") is None for r in rows):
        missing = [r.get("name") for r in rows if r.get("val_loss") is None]
        raise ValueError(f"runs without a validation loss (eval_loss): {missing}")
    metrics = metric_columns(rows) if metrics is None else list(metrics)
    loss = [float(r["val_loss"]) for r in rows]
    out = []
    for key in metrics:
        vals = [float(r[key]) for r in rows]
        if np.std(vals) == 0:
            fit = {"slope": 0.0, "intercept": float(vals[0]), "r": 0.0, "r2": 0.0, "n": len(vals)}
        else:
            fit = linear_fit(loss, vals)
        p = permutation_test(loss, vals, num_permutations, seed=seed)
        out.append({"metric": key, **fit, "p_value": p, "num_permutations": num_permutations})
    return out


# ---------------------------------------------------------------------------------------------
# figures


def _size(rows) -> tuple[np.ndarray, str]:
    if all(r.get("num_parameters") for r in rows):
        return np.array([float(r["num_parameters"]) for r in rows]), "parameters"
    if all(r.get("width") for r in rows):
        return np.array([float(r["width"]) for r in rows]), "width"
    return np.arange(len(rows), dtype=float), "run"


def _grid(n: int):
    import matplotlib.pyplot as plt

    cols = min(4, n)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 3.0 * nrows), squeeze=False, layout="constrained")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, path)


def plot_scatter(rows, metrics, fits, path) -> Path:
    """Figure 1 style: each measure against validation loss, coloured by model size, with the fitted line."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.colors import LogNorm, Normalize

    size, size_label = _size(rows)
    norm = LogNorm(size.min(), size.max()) if size.min() > 0 and size.max() > size.min() else Normalize()
    loss = np.array([float(r["val_loss"]) for r in rows])
    fig, axes = _grid(len(metrics))
    by_metric = {f["metric"]: f for f in fits}
    sc = None
    for ax, key in zip(axes, metrics):
        y = np.array([float(r[key]) for r in rows])
        sc = ax.scatter(loss, y, c=size, cmap="viridis", norm=norm, s=22, edgecolors="k", linewidths=0.3)
        f = by_metric.get(key)
        if f is not None:
            xs = np.linspace(loss.min(), loss.max(), 20)
            ax.plot(xs, f["intercept"] + f["slope"] * xs, "r-", lw=1)
            ax.set_title(f"{key}\nR²={f['r2']:.2f}  p={f['p_value']:.3g}", fontsize=8)
        ax.set_xlabel("validation loss", fontsize=8)
        ax.tick_params(labelsize=7)
    if sc is not None:
        fig.colorbar(sc, ax=axes, label=f"model size ({size_label})", shrink=0.8)
    path = Path(path)
    _save(fig, path)
    return path


def plot_scaling(rows, metrics, factor: str, path) -> Path:
    """Each measure (and the validation loss) against ``factor`` (width, depth or epochs), mean line per value."""
    import matplotlib

    matplotlib.use("Agg")
    keys = ["val_loss", *metrics]
    x = np.array([float(r[factor]) for r in rows])
    fig, axes = _grid(len(keys))
    for ax, key in zip(axes, keys):
        y = np.array([float(r[key]) for r in rows])
        ax.scatter(x, y, s=16, alpha=0.7)
        ux = np.unique(x)
        ax.plot(ux, [y[x == v].mean() for v in ux], "k-", lw=1)
        if factor == "width" and ux.min() > 0:
            ax.set_xscale("log", base=2)
        ax.set_title(key, fontsize=8)
        ax.set_xlabel(factor, fontsize=8)
        ax.tick_params(labelsize=7)
    path = Path(path)
    _save(fig, path)
    return path


# ---------------------------------------------------------------------------------------------
# the whole analysis


def direction_summary(rows: Sequence[dict], fits: Sequence[dict]) -> dict:
    """Does lower validation loss go with more collapse? Per directional measure, sign of the fit.

    A measure agrees when ``-direction * slope > 0`` (its value moves towards collapse as the loss
    falls). Returns counts and the list of agreeing / disagreeing measures.
    """
    agree, disagree = [], []
    for f in fits:
        d = COLLAPSE_DIRECTION.get(f["metric"], 0)
        if d == 0 or f["slope"] == 0:
            continue
        (agree if -d * f["slope"] > 0 else disagree).append(f["metric"])
    return {"agree": agree, "disagree": disagree,
            "holds": len(agree) > len(disagree)}


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c), 4) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def analyze(rows: Sequence[dict], output_dir: str | os.PathLike, num_permutations: int = 10_000, seed: int = 0,
            title: str = "Neural collapse vs validation loss", notes: str = "") -> dict:
    """Write ``runs.csv``, ``correlations.csv``, figures and ``report.md`` into ``output_dir``.

    Returns ``{"rows", "metrics", "fits", "direction", "figures", "report"}``.
    """
    rows = list(rows)
    if len(rows) < 3:
        raise ValueError(f"the analysis needs at least 3 runs, got {len(rows)}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = metric_columns(rows)
    if not metrics:
        raise ValueError("no measure is present in every run")
    fits = correlations(rows, metrics, num_permutations=num_permutations, seed=seed)
    write_csv(rows, out / "runs.csv")
    write_csv(fits, out / "correlations.csv", ["metric", "n", "r2", "r", "slope", "intercept", "p_value",
                                                 "num_permutations"])
    figures = [plot_scatter(rows, metrics, fits, out / "nc_vs_val_loss.png")]
    for factor in ("width", "depth", "epochs"):
        vals = {r.get(factor) for r in rows}
        if None not in vals and len(vals) > 1:
            figures.append(plot_scaling(rows, metrics, factor, out / f"scaling_{factor}.png"))
    direction = direction_summary(rows, fits)
    cols = [c for c in CONFIG_COLUMNS if any(r.get(c) is not None for r in rows)] + metrics
    text = [f"# {title}", "", notes, "" if notes else None,
            f"{len(rows)} runs; permutation tests with {num_permutations} permutations (seed {seed}).", "",
            "## Runs", "", markdown_table(sorted(rows, key=lambda r: r["val_loss"]), cols), "",
            "## Each measure against validation loss", "",
            "Least-squares line `measure = intercept + slope * val_loss`, R² and the two-sided permutation "
            "p-value of Pearson's r.", "",
            markdown_table(fits, ["metric", "r2", "slope", "intercept", "p_value"]), "",
            "## Direction", "",
            f"Lower validation loss goes with more collapse on {len(direction['agree'])} of "
            f"{len(direction['agree']) + len(direction['disagree'])} directional measures "
            f"({', '.join(direction['agree']) or 'none'}); against: {', '.join(direction['disagree']) or 'none'}.",
            "", "## Figures", ""]
    text += [f"![{p.stem}]({p.name})\n" for p in figures]
    report = out / "report.md"
    atomic_write_text(report, "\n".join(t for t in text if t is not None) + "\n")
    return {"rows": rows, "metrics": metrics, "fits": fits, "direction": direction, "figures": figures,
            "report": report}


def read_csv_rows(path: str | os.PathLike) -> list[dict]:
    """Rows of a ``runs.csv`` or a ``trajectory.csv`` (numbers parsed back to float/int). A trajectory's
    rows are named by ``checkpoint`` and fitted against their ``eval_loss``; rows of duplicated weights
    (``duplicate_of``) are left out, since they repeat a measured row."""
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            row = {}
            for k, v in r.items():
                if v == "":
                    row[k] = None
                    continue
                try:
                    row[k] = int(v) if v.lstrip("-").isdigit() else float(v)
                except ValueError:
                    row[k] = v
            if "checkpoint" in row and "weights_sha256" in row:  # trajectory.csv of hf-collapse sweep
                if row.get("duplicate_of"):
                    continue
                row.setdefault("name", row["checkpoint"])
                if row.get("val_loss") is None:
                    row["val_loss"] = row.get("eval_loss")
            rows.append(row)
    return rows
