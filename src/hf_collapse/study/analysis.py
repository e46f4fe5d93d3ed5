"""Analysis of a study: many measured runs -> one table, fits against validation loss, permutation tests, figures.

A *run* is a measured model folder (as ``scripts/train_clm.py``, ``hf-collapse demo`` or
``hf-collapse measure`` write them). From each the table takes

- the measures: ``collapse/metrics.json`` (keys of ``hf_collapse.measures.MEASURE_KEYS``);
- the validation loss ``val_loss``, first found of: key ``eval_loss`` in ``collapse/metrics.json``,
  in ``run.json``, in ``eval_results.json`` / ``all_results.json``, or the last ``eval_loss``
  logged in ``trainer_state.json``;
- the configuration: ``run.json`` (``width``, ``depth``, ``epochs``, ``weight_decay``, ``seed``,
  ``data_seed``, ``num_parameters``) written by the study, else ``config.json`` (``hidden_size``,
  ``num_layers``/``num_hidden_layers``).

Statistics, per measure m over the n runs (paper Figure 1 and Table 1):

- least-squares line ``m = a + b * val_loss`` and ``R^2 = r^2`` (Pearson r; ``scipy.stats.linregress``);
- a two-sided permutation test of no association (``scipy.stats.permutation_test`` on ``|r|``):
  ``p = (1 + #{|r_perm| >= |r_obs|}) / (1 + B)`` over B random permutations of the losses (seeded,
  vectorised in batches of permutations), or the exact share of all n! orderings when n! <= B;
- the p-values adjusted for testing all the measures at once (one family per analysis): Holm's
  step-down (family-wise error, :func:`holm`) in ``p_holm`` and Benjamini-Hochberg (false discovery
  rate, ``scipy.stats.false_discovery_control``) in ``p_bh``. Significance marks (``*``, bold)
  follow ``p_holm < 0.05``.

The design matters (paper section 5.1): Table 1 tests seed-only replicas of one architecture, where
scale cannot drive the association; over a grid of sizes and training lengths the association is
pooled and confounded by scale. :func:`study_design` tells the two apart from the runs' configuration
and the report (with a Table 1 layout beside the paper's values) is labelled accordingly.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np

from ..core.errors import UserValueError
from ..core.io import atomic_write_text, fmt
from ..core.registry import MEASURES
from .design import PAPER_TABLE1, confounded_factors, study_design, table1  # noqa: F401  (public here too)
from .runs import (  # noqa: F401  (public here too)
    CONFIG_COLUMNS,
    check_rows,
    check_same_data,
    collect_runs,
    metric_columns,
    read_csv_rows,
    read_run,
    write_csv,
)

logger = logging.getLogger(__name__)


# +1: a larger value means more collapse; -1: a smaller value does; 0: no direction (nc2_norm_mean).
# From the registry: variability, non-uniformity and misalignment shrink with collapse; duality and
# agreement grow; interference and the log kernel fall towards their minima.
COLLAPSE_DIRECTION = {key: m.sign for key, m in MEASURES.items()}
CORRELATION_COLUMNS = (
    "metric",
    "n",
    "r2",
    "r",
    "slope",
    "intercept",
    "p_value",
    "p_holm",
    "p_bh",
    "num_permutations",
    "exact",
)


# ---------------------------------------------------------------------------------------------
# statistics


def _as_xy(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise UserValueError(f"x and y must be 1-D of equal length, got shapes {x.shape} and {y.shape}")
    if x.size < 3:
        raise UserValueError(f"a fit needs at least 3 runs, got {x.size}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise UserValueError("x and y must be finite (a run lacks a validation loss or a measure?)")
    return x, y


def linear_fit(x, y) -> dict:
    """Least squares ``y = intercept + slope * x`` (``scipy.stats.linregress``); slope, intercept, r, r2, n.

    A constant ``y`` gives slope 0 and r = R^2 = 0 (no association) instead of linregress's NaN r.
    """
    from scipy.stats import linregress

    x, y = _as_xy(x, y)
    if np.ptp(x) == 0.0:
        raise UserValueError("x is constant: no line can be fitted")
    if np.ptp(y) == 0.0:
        return {"slope": 0.0, "intercept": float(y[0]), "r": 0.0, "r2": 0.0, "n": int(x.size)}
    fit = linregress(x, y)
    r = float(fit.rvalue)
    return {"slope": float(fit.slope), "intercept": float(fit.intercept), "r": r, "r2": r * r, "n": int(x.size)}


def permutation_is_exact(n: int, num_permutations: int) -> bool:
    """Whether :func:`permutation_test` enumerates all ``n!`` orderings instead of sampling."""
    return math.factorial(n) <= num_permutations


def permutation_test(x, y, num_permutations: int = 10_000, seed: int = 0, chunk: int = 2048) -> float:
    """Two-sided permutation p-value of Pearson's r between x and y (permuting y); ``scipy.stats.permutation_test``.

    The statistic is ``|r|`` with ``alternative="greater"``, so with B random permutations (seeded:
    ``numpy.random.default_rng(seed)``, ``chunk`` permutations per vectorised batch)

        ``p = (1 + #{|r_perm| >= |r_obs|}) / (1 + B)``

    (scipy counts ties within a relative ``100 * eps * |r_obs|`` as ``>=``). When ``n! <= B`` scipy
    enumerates all n! orderings instead (an exact test): ``p = #{|r_perm| >= |r_obs|} / n!``, the
    identity ordering included. scipy's own ``alternative="two-sided"`` on r would double the smaller
    one-sided p instead, which differs when the null distribution of r is not symmetric.
    1.0 when either variable is constant.
    """
    from scipy.stats import permutation_test as scipy_permutation_test

    x, y = _as_xy(x, y)
    if num_permutations < 1:
        raise UserValueError(f"num_permutations must be >= 1, got {num_permutations}")
    if np.ptp(x) == 0.0 or np.ptp(y) == 0.0:
        return 1.0
    xc = (x - x.mean()) / np.linalg.norm(x - x.mean())  # (n,) unit, centred

    def abs_r(yb, axis=-1):  # yb: (..., n) orderings of y -> (...,) |Pearson r| with x
        yb = yb - yb.mean(axis=-1, keepdims=True)
        return np.abs(yb @ xc) / np.linalg.norm(yb, axis=-1)

    res = scipy_permutation_test(
        (y,),
        abs_r,
        permutation_type="pairings",
        vectorized=True,
        n_resamples=num_permutations,
        batch=chunk,
        alternative="greater",
        rng=np.random.default_rng(seed),
    )
    return float(res.pvalue)


SIGNIFICANCE = 0.05


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error rate) of one family of tests.

    With the m p-values sorted ascending, ``p_(i)`` adjusted is ``max_{j <= i} min(1, (m - j + 1) p_(j))``
    (Holm 1979), returned in the input order. scipy has Benjamini-Hochberg
    (``scipy.stats.false_discovery_control``) but not Holm, hence these few lines.
    """
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1 or not np.all((p >= 0) & (p <= 1)):
        raise UserValueError(f"p-values must be a 1-D array in [0, 1], got {p_values!r}")
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (p.size - np.arange(p.size)) * p[order])
    out = np.empty_like(p)
    out[order] = np.maximum.accumulate(scaled)
    return out


def benjamini_hochberg(p_values) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (false discovery rate): ``scipy.stats.false_discovery_control``."""
    from scipy.stats import false_discovery_control

    p = np.asarray(p_values, dtype=np.float64)
    return np.asarray(false_discovery_control(p, method="bh"), dtype=np.float64) if p.size else p


def correlations(
    rows: Sequence[dict], metrics: Optional[Sequence[str]] = None, num_permutations: int = 10_000, seed: int = 0
) -> list[dict]:
    """Per measure: fit vs ``val_loss``, R^2, permutation p-value and its Holm / Benjamini-Hochberg
    adjustments over all the measures tested (``p_holm``, ``p_bh``); one row per measure."""
    if any(r.get("val_loss") is None for r in rows):
        missing = [r.get("name") for r in rows if r.get("val_loss") is None]
        raise UserValueError(f"runs without a validation loss (eval_loss): {missing}")
    metrics = metric_columns(rows) if metrics is None else list(metrics)
    loss = [float(r["val_loss"]) for r in rows]
    out = []
    exact = permutation_is_exact(len(rows), num_permutations)
    for key in metrics:
        vals = [float(r[key]) for r in rows]
        fit = linear_fit(loss, vals)
        p = permutation_test(loss, vals, num_permutations, seed=seed)
        out.append(
            {
                "metric": key,
                **fit,
                "p_value": p,
                "num_permutations": math.factorial(len(rows)) if exact else num_permutations,
                "exact": exact,
            }
        )
    if out:
        raw = [f["p_value"] for f in out]
        for f, ph, pb in zip(out, holm(raw), benjamini_hochberg(raw)):
            f["p_holm"], f["p_bh"] = float(ph), float(pb)
    return out


def star(fit: dict) -> str:
    """``" *"`` when the measure's Holm-adjusted p-value is below 0.05, else ``""``."""
    return " *" if fit["p_holm"] < SIGNIFICANCE else ""


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
    return {"agree": agree, "disagree": disagree, "holds": len(agree) > len(disagree)}


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """``rows`` as a Markdown table of ``columns`` (numbers with 4 significant digits)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c), 4) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def analyze(
    rows: Sequence[dict],
    output_dir: str | os.PathLike,
    num_permutations: int = 10_000,
    seed: int = 0,
    title: str = "Neural collapse vs validation loss",
    notes: str = "",
    allow_few_runs: bool = False,
) -> dict:
    """Write ``runs.csv``, ``correlations.csv``, figures and ``report.md`` into ``output_dir``.

    Returns ``{"rows", "metrics", "fits", "direction", "design", "figures", "report"}``. The report
    says whether the runs are seed replicas of one configuration (the paper's Table 1 design) or
    pooled over sizes / training lengths, and which grid factors are confounded. Fits need at least
    3 runs: fewer raise ValueError, or with ``allow_few_runs`` (the demo, whose trained runs must not
    be lost) write ``runs.csv`` and a ``report.md`` with the runs and the fits marked not available.
    """
    from .figures import plot_scaling, plot_scatter

    rows = list(rows)
    if not rows:
        raise UserValueError("no runs to analyse")
    if len(rows) < 3 and not allow_few_runs:
        raise UserValueError(
            f"the analysis needs at least 3 runs, got {len(rows)}: train more (e.g. scripts/train_clm.py with "
            f"other --data_seed, --width or --epochs values into the same --output_dir) and pass them all, "
            f"or run `hf-collapse demo`, which trains and analyses a grid of 6"
        )
    check_same_data(rows)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = metric_columns(rows)
    if not metrics:
        raise UserValueError("no measure is present in every run")
    design = study_design(rows)
    check_rows(rows, metrics)
    if len(rows) < 3:
        return _report_without_fits(rows, metrics, out, title, notes, design)
    fits = correlations(rows, metrics, num_permutations=num_permutations, seed=seed)
    write_csv(rows, out / "runs.csv")
    write_csv(fits, out / "correlations.csv", CORRELATION_COLUMNS)
    confounded = confounded_factors(rows)
    short = "seed replicas of one configuration" if design["seed_replicas"] else design["label"].split(":")[0]
    figures = [plot_scatter(rows, metrics, fits, out / "nc_vs_val_loss.png", subtitle=f"design: {short}")]
    for factor in ("width", "depth", "epochs"):
        vals = {r.get(factor) for r in rows}
        if None not in vals and len(vals) > 1:
            partners = [g for f, g in confounded if f == factor]
            figures.append(plot_scaling(rows, metrics, factor, out / f"scaling_{factor}.png", partners))
    _remove_stale(out, {p.name for p in figures} | {"correlations.csv"})
    direction = direction_summary(rows, fits)
    exact = fits[0]["exact"]
    test = (
        f"exact: all {len(rows)}! = {math.factorial(len(rows))} orderings, since n! <= {num_permutations}"
        if exact
        else f"{num_permutations} random permutations, seed {seed}"
    )
    text = [
        f"# {title}",
        "",
        notes,
        "" if notes else None,
        f"**Design: {design['label']}.**",
        "",
        *_design_notes(design, confounded),
        f"{len(rows)} runs; two-sided permutation tests of Pearson's r ({test}). {len(fits)} measures are "
        f"tested at once, so beside each raw p-value the report gives it adjusted for the {len(fits)} tests: "
        f"Holm (family-wise error) and Benjamini-Hochberg (false discovery rate). Marks of significance "
        f"(bold, *) follow Holm's adjusted p < 0.05.",
        "",
        "## Table 1 layout",
        "",
        "Each measure against validation loss as in the paper's Table 1 (Holm-adjusted p < 0.05 in bold), "
        "beside the paper's own values (21 seed replicas of a 2x768 model, 1 epoch, weight decay 0.0005, "
        "TinyStories; the paper's p are unadjusted, bold when p < 0.05).",
        "",
        table1(fits, design["seed_replicas"]),
        "",
        *_runs_section(rows, metrics),
        "Least-squares line `measure = intercept + slope * val_loss` (`scipy.stats.linregress`), R² = r², "
        "and the two-sided permutation p-value of Pearson's r: p = (1 + #{|r_perm| >= |r_obs|}) / (1 + B) "
        "over B random permutations of the losses, or the exact share of all n! orderings when n! <= B "
        "(`scipy.stats.permutation_test` on |r|); `p_holm` and `p_bh` adjust it for the "
        f"{len(fits)} measures tested (Holm's step-down; Benjamini-Hochberg, `scipy.stats.false_discovery_control`).",
        "",
        markdown_table(fits, ["metric", "r2", "r", "slope", "intercept", "p_value", "p_holm", "p_bh"]),
        "",
        "## Direction",
        "",
        f"Lower validation loss goes with more collapse on {len(direction['agree'])} of "
        f"{len(direction['agree']) + len(direction['disagree'])} directional measures "
        f"({', '.join(direction['agree']) or 'none'}); against: {', '.join(direction['disagree']) or 'none'}.",
        "",
        "## Figures",
        "",
    ]
    text += [f"![{p.stem}]({p.name})\n" for p in figures]
    report = out / "report.md"
    atomic_write_text(report, "\n".join(t for t in text if t is not None) + "\n")
    return {
        "rows": rows,
        "metrics": metrics,
        "fits": fits,
        "direction": direction,
        "design": design,
        "figures": figures,
        "report": report,
    }


# what analyze writes besides runs.csv and report.md: an earlier analysis's files not written again go
ANALYSIS_OUTPUTS = (
    "correlations.csv",
    "nc_vs_val_loss.png",
    "scaling_width.png",
    "scaling_depth.png",
    "scaling_epochs.png",
)


def _remove_stale(out: Path, written: set) -> None:
    for name in ANALYSIS_OUTPUTS:
        if name not in written and (out / name).is_file():
            logger.info("removing %s of an earlier analysis", out / name)
            (out / name).unlink()


def _runs_section(rows, metrics) -> list[str]:
    """The report's table of runs (sorted by validation loss), then the heading of the fits."""
    table = markdown_table(sorted(rows, key=lambda r: r["val_loss"]), _run_columns(rows, metrics))
    return ["## Runs", "", table, "", "## Each measure against validation loss", ""]


def _run_columns(rows, metrics) -> list[str]:
    return [c for c in CONFIG_COLUMNS if any(r.get(c) is not None for r in rows)] + list(metrics)


def _design_notes(design: dict, confounded) -> list:
    notes = []
    if design["duplicates"]:
        notes += [f"Warning: {design['duplicates']} run(s) repeat another run's seeds.", ""]
    for f, g in confounded:
        notes += [
            f"Confounded: {f} never varies at a fixed {g} in this grid, so an association with {f} "
            f"cannot be told apart from one with {g} (scaling_{f}.png says so too).",
            "",
        ]
    return notes


def _report_without_fits(rows, metrics, out: Path, title: str, notes: str, design: dict) -> dict:
    """runs.csv and a report.md with the runs' table; the fits need at least 3 runs."""
    write_csv(rows, out / "runs.csv")
    _remove_stale(out, set())
    reason = f"fits not available: a fit against validation loss needs at least 3 runs, got {len(rows)}"
    text = [
        f"# {title}",
        "",
        notes,
        "" if notes else None,
        f"{len(rows)} runs.",
        "",
        *_runs_section(rows, metrics),
        reason + ".",
        "",
    ]
    report = out / "report.md"
    atomic_write_text(report, "\n".join(t for t in text if t is not None) + "\n")
    return {
        "rows": rows,
        "metrics": metrics,
        "fits": [],
        "figures": [],
        "report": report,
        "design": design,
        "direction": {"agree": [], "disagree": [], "holds": False, "fits_not_available": reason},
    }
