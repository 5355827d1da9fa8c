"""The fan chart a bed manager reads after `medalloc forecast`: recent history and the forecast quantiles per unit."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never opens a window on a server
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from medalloc_core.allocation.forecast_io import TARGET, VALUE, Q  # noqa: E402
from medalloc_core.atomic import atomic_savefig  # noqa: E402
from medalloc_core.contract import CENSUS, DATE, UNIT  # noqa: E402


def plot_forecast(history: pd.DataFrame, forecast: pd.DataFrame, path: Path, *, history_periods: int = 56) -> Path:
    """One panel per unit: the last ``history_periods`` observed values and the forecast fan.

    The fan shades the band between each symmetric pair of quantile levels (outermost
    lightest) and draws the level nearest 0.5 as a line. Census is plotted when forecast,
    otherwise the first target.
    """
    targets = forecast[TARGET].unique().tolist()
    target = CENSUS if CENSUS in targets else targets[0]
    fc = forecast[forecast[TARGET] == target]
    units = sorted(fc[UNIT].unique().tolist())
    cols = 2 if len(units) > 1 else 1
    rows = math.ceil(len(units) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 3.2 * rows), squeeze=False)
    levels = sorted(fc[Q].unique().tolist())
    median = min(levels, key=lambda q: abs(q - 0.5))
    pairs = [(lo, hi) for lo, hi in zip(levels, reversed(levels)) if lo < hi]
    for ax, unit in zip(axes.ravel(), units, strict=False):
        past = history[history[UNIT] == unit].sort_values(DATE).tail(history_periods)
        if target in past.columns:
            ax.plot(pd.to_datetime(past[DATE]), past[target], color="black", lw=1.2, label=f"observed {target}")
        wide = fc[fc[UNIT] == unit].pivot_table(index=DATE, columns=Q, values=VALUE).sort_index()
        x = pd.to_datetime(wide.index)
        for i, (lo, hi) in enumerate(pairs):
            ax.fill_between(
                x,
                wide[lo],
                wide[hi],
                color="tab:blue",
                alpha=0.15 + 0.15 * i,
                lw=0,
                label=f"P{lo * 100:g}–P{hi * 100:g}",
            )
        ax.plot(x, wide[median], color="tab:blue", lw=1.8, label=f"P{median * 100:g}")
        ax.set_title(f"{unit} · {target}")
        ax.grid(alpha=0.3)
        ax.tick_params(axis="x", labelrotation=30)
    for ax in axes.ravel()[len(units) :]:
        ax.axis("off")
    axes.ravel()[0].legend(loc="best", fontsize=8, framealpha=0.6)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
    return path
