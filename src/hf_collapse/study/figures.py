"""Figures of a study (written by :func:`hf_collapse.study.analysis.analyze`).

- ``nc_vs_val_loss.png`` (paper Figure 1 style): each measure against the validation loss, one point
  per run, coloured by model size, marked by training length, with the least-squares line.
- ``scaling_<factor>.png``: each measure (and the loss) against width, depth or epochs, one line per
  combination of the other factors, so a 1-epoch and a 3-epoch model are never averaged together.

Every panel's y label names the measure, its kind of number and which way is "more collapsed" (from
the measure registry); measures whose values span more than 20x get a log axis; no axis carries a
matplotlib offset ("+1.284") or multiplier. The suptitle names the models and the data (from the runs'
``config.json`` / ``run.json``) and says when the plotted factor is confounded with another one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..core.registry import MEASURES
from ..integrations.plots import LOSS_LABEL, axis_label, no_offsets, scale_y

FACTOR_LABELS = {"width": "width d (hidden size)", "depth": "depth L (layers)", "epochs": "training epochs"}
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _short(values: Sequence[str], limit: int = 3) -> str:
    values = list(dict.fromkeys(str(v) for v in values))
    return "; ".join(values[:limit]) + (f"; and {len(values) - limit} more" if len(values) > limit else "")


def study_context(rows: Sequence[dict]) -> str:
    """``"models: gpt_neo 1x32, 2x64 (LxD), vocabulary 512; data: built-in procedural stories (...)"``
    from the runs' columns; says "not recorded" for what the runs do not say."""
    types = [r.get("model_type") for r in rows if r.get("model_type")]
    sizes = sorted({(r["depth"], r["width"]) for r in rows if r.get("depth") and r.get("width")})
    model = " ".join(
        t
        for t in (_short(types) if types else "", ", ".join(f"{d}x{w}" for d, w in sizes) + " (LxD)" if sizes else "")
        if t
    )
    vocab = sorted({int(r["vocab_size"]) for r in rows if r.get("vocab_size")})
    if vocab:
        model += f", vocabulary {', '.join(map(str, vocab))}"
    data = [r.get("data") for r in rows if r.get("data")]
    return f"models: {model or 'not recorded'}; data: {_short(data) if data else 'not recorded'}"


def _title(key: str) -> str:
    return "validation loss" if key == "val_loss" else MEASURES[key].name


def factor_value(factor: str, v) -> str:
    """``width 64``, ``depth 2``, ``1 epoch`` / ``3 epochs``."""
    if factor == "epochs":
        return f"{v:g} epoch{'' if float(v) == 1 else 's'}"
    return f"{factor} {v:g}" if isinstance(v, float) else f"{factor} {v}"


def _grid(n: int, title: str):
    import matplotlib.pyplot as plt

    cols = min(4, n)
    nrows = -(-n // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.0 * cols, 3.3 * nrows + 0.9), squeeze=False, layout="constrained")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=11)
    return fig, list(axes.flat[:n])


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _integer_ticks(ax, values, log2: bool = False) -> None:
    """Ticks exactly at the grid's values, printed plainly (32, 64, 128 rather than 2^5; 1, 3 not 1.5)."""
    from matplotlib.ticker import NullLocator

    ux = np.unique(values)
    if log2 and ux.min() > 0:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(ux, [f"{v:g}" for v in ux])
    if ux.size == 1:  # a lone value: give the axis some room
        pad = 0.5 if not log2 else ux[0] * 0.3
        ax.set_xlim(ux[0] - pad, ux[0] + pad)


def plot_scatter(
    rows: Sequence[dict], metrics: Sequence[str], fits: Sequence[dict], path, subtitle: str = "", context: str = ""
) -> Path:
    """Figure 1 style: each measure against validation loss, coloured by model size, marked by epochs.

    Each panel's title gives R², r, the raw permutation p and its Holm / Benjamini-Hochberg
    adjustments; ``*`` marks Holm-adjusted p < 0.05. ``context``: models and data (default
    :func:`study_context` of the rows), under the title."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    from matplotlib.colors import LogNorm
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    loss = np.array([float(r["val_loss"]) for r in rows])
    size = np.array([float(r.get("num_parameters") or r.get("width") or 0) for r in rows])
    several_sizes = size.min() > 0 and size.max() > size.min()
    epochs = [r.get("epochs") for r in rows]
    levels = sorted({e for e in epochs if e is not None})
    marker = {e: _MARKERS[i % len(_MARKERS)] for i, e in enumerate(levels)}
    by_metric = {f["metric"]: f for f in fits}
    context = context or study_context(rows)
    title = f"Neural collapse vs validation loss ({len(rows)} runs)\n{context}" + (f"\n{subtitle}" if subtitle else "")
    fig, axes = _grid(len(metrics), title)
    sc = None
    for ax, key in zip(axes, metrics):
        y = np.array([float(r[key]) for r in rows])
        for e in levels or [None]:
            sel = np.array([ep == e for ep in epochs]) if levels else np.ones(len(rows), bool)
            kw = (
                dict(c=size[sel], cmap="viridis", norm=LogNorm(size.min(), size.max()))
                if several_sizes
                else dict(color="tab:blue")
            )
            sc = (
                ax.scatter(loss[sel], y[sel], marker=marker.get(e, "o"), s=28, edgecolors="k", linewidths=0.4, **kw)
                if sel.any()
                else sc
            )
        f = by_metric.get(key)
        head = _title(key)
        scale_y(ax, y)
        if f is not None:
            xs = np.linspace(loss.min(), loss.max(), 50)
            line = f["intercept"] + f["slope"] * xs
            if ax.get_yscale() == "log":  # the line's non-positive part has no place on a log axis
                line = np.where(line > 0, line, np.nan)
            ax.plot(xs, line, "r-", lw=1.2)
            p_holm = f.get("p_holm", f["p_value"])
            star = " *" if p_holm < 0.05 else ""
            head += f"\nR² = {f['r2']:.2f}, r = {f['r']:+.2f}\np = {f['p_value']:.3g}, Holm {p_holm:.3g}"
            head += f", BH {f['p_bh']:.3g}{star}" if "p_bh" in f else star
        ax.set_title(head, fontsize=9)
        ax.set_xlabel(LOSS_LABEL, fontsize=8)
        ax.set_ylabel(axis_label(key), fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(4))  # replicas' losses span ~0.01: long labels would overlap
        no_offsets(ax)
        ax.tick_params(labelsize=7)
    handles = [
        Line2D(
            [],
            [],
            color="r",
            lw=1.2,
            label=f"least-squares fit; p: two-sided permutation test, Holm / BH adjusted over {len(fits)} "
            "measures; * Holm p < 0.05",
        )
    ]
    if len(levels) > 1:
        handles += [
            Line2D([], [], ls="", marker=marker[e], mfc="lightgray", mec="k", label=factor_value("epochs", e))
            for e in levels
        ]
    elif not several_sizes:
        handles.append(
            Line2D(
                [],
                [],
                ls="",
                marker=marker.get(levels[0] if levels else None, "o"),
                mfc="tab:blue",
                mec="k",
                label="one run (a seed replica)" if len(levels) == 1 else "one run",
            )
        )
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    if several_sizes and sc is not None:
        cb = fig.colorbar(sc, ax=axes, label="model size (parameters, log scale)", shrink=0.8)
        # ticks at the grid's sizes, named as the paper names models (LxD) rather than 3x10^4
        names = {}
        for r, v in zip(rows, size):
            names[v] = f"{r['depth']}x{r['width']}" if r.get("depth") and r.get("width") else f"{v:,.0f}"
        cb.ax.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        cb.set_ticks(sorted(names), labels=[f"{names[v]} ({v:,.0f})" for v in sorted(names)])
    return _save(fig, path)


def plot_scaling(
    rows: Sequence[dict],
    metrics: Sequence[str],
    factor: str,
    path,
    confounded_with: Sequence[str] = (),
    context: str = "",
) -> Path:
    """Each measure (and the loss) against ``factor``: one line per combination of the other factors.

    ``confounded_with``: factors that never vary at a fixed value of ``factor``'s partner (see
    :func:`hf_collapse.study.analysis.confounded_factors`); they are named in the title and not used
    for the lines (each of their lines would be a single point).
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.lines import Line2D

    keys = ["val_loss", *metrics]
    others = [
        g
        for g in FACTOR_LABELS
        if g != factor
        and g not in confounded_with
        and all(r.get(g) is not None for r in rows)
        and len({r[g] for r in rows}) > 1
    ]
    groups = sorted({tuple(r[g] for g in others) for r in rows})
    x = np.array([float(r[factor]) for r in rows])
    title = f"Each measure against {FACTOR_LABELS[factor]} ({len(rows)} runs)\n{context or study_context(rows)}"
    if confounded_with:
        title += (
            f"\n{factor} is confounded with {', '.join(confounded_with)} in this grid: "
            f"an effect seen here is as much {' / '.join(confounded_with)} as {factor}"
        )
    fig, axes = _grid(len(keys), title)
    colours = matplotlib.colormaps["tab10"]
    handles = []
    for gi, g in enumerate(groups):
        label = ", ".join(factor_value(f, v) for f, v in zip(others, g)) or "all runs"
        handles.append(Line2D([], [], color=colours(gi % 10), marker=_MARKERS[gi % len(_MARKERS)], label=label))
    for ax, key in zip(axes, keys):
        y = np.array([float(r[key]) for r in rows])
        for gi, g in enumerate(groups):
            sel = np.array([tuple(r[o] for o in others) == g for r in rows])
            ux = np.unique(x[sel])
            style = dict(color=colours(gi % 10), marker=_MARKERS[gi % len(_MARKERS)])
            ax.scatter(x[sel], y[sel], s=18, alpha=0.6, **style)
            ax.plot(ux, [y[sel][x[sel] == v].mean() for v in ux], lw=1.2, ms=0, **style)  # mean over replicas
        _integer_ticks(ax, x, log2=factor == "width")
        scale_y(ax, y)
        no_offsets(ax)
        ax.set_title(_title(key), fontsize=9)
        ax.set_xlabel(FACTOR_LABELS[factor], fontsize=8)
        ax.set_ylabel(axis_label(key), fontsize=8)
        ax.tick_params(labelsize=7)
    legend_title = (
        f"one line per {' and '.join(others)}; " if others else ""
    ) + f"line: mean of the runs at each {factor} value"
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncol=min(len(handles), 6),
        fontsize=8,
        frameon=False,
        title=legend_title,
        title_fontsize=8,
    )
    return _save(fig, path)
