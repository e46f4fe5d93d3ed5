"""Axis conventions shared by every figure (the sweep's trajectory, the model card, the study): a y label
naming the measure, its kind of number and which way is more collapsed (from the measure registry), a
log axis for values spanning decades, no matplotlib offset labels."""

from __future__ import annotations

import math

import numpy as np

from ..core.registry import MEASURES

LOSS_LABEL = "validation loss (nats/token)"
_HINTS = {
    "lower": "↓ lower = more collapsed",
    "higher": "↑ higher = more collapsed",
    "target": "→ nearer -1/(K-1) = more collapsed",
    "none": "a scale: no collapse direction",
}
LOG_SPAN = 20.0  # a panel's y axis is logarithmic where its positive values span more than this factor


def axis_label(key: str) -> str:
    """Y label of a panel: what is plotted, its kind of number, and which way is more collapsed."""
    if key in ("val_loss", "eval_loss"):
        return f"{LOSS_LABEL}\nlower = better"
    if key not in MEASURES:
        return key
    m = MEASURES[key]
    unit = m.unit
    return f"{key}{f' ({unit})' if unit else ''}\n{_HINTS[m.direction]}"


def spans_decades(values) -> bool:
    """Whether values are all positive and span more than ``LOG_SPAN`` x (then plotted on a log axis)."""
    v = np.asarray([float(x) for x in values], dtype=np.float64)
    v = v[np.isfinite(v)]
    return v.size > 1 and v.min() > 0 and v.max() / v.min() > LOG_SPAN


def scale_y(ax, values) -> None:
    """A log y axis where ``values`` span decades (:func:`spans_decades`), labelled plainly at powers of
    ten (unlabelled minor ticks), else a linear one."""
    if spans_decades(values):
        from matplotlib.ticker import FuncFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 0.01, 1, 100: no 10^-2

        def minor(v, _):  # under two decades in view one power of ten says little: label 2x and 5x too
            lo, hi = ax.get_ylim()
            mantissa = v / 10 ** math.floor(math.log10(v))
            return f"{v:g}" if hi / lo < 100 and min(abs(mantissa - 2), abs(mantissa - 5)) < 1e-6 else ""

        ax.yaxis.set_minor_formatter(FuncFormatter(minor))


def no_offsets(ax) -> None:
    """Plain tick labels: no offset ("+1.284") and no multiplier ("1e-5") above a linear axis."""
    from matplotlib.ticker import ScalarFormatter

    for axis in (ax.xaxis, ax.yaxis):
        if type(axis.get_major_formatter()) is ScalarFormatter:
            fmt = ScalarFormatter(useOffset=False)
            fmt.set_scientific(False)
            axis.set_major_formatter(fmt)
