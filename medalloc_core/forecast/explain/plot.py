"""The picture a planner reads: the forecast fan chart, and under it the attribution heatmap over the input days."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never opens a window on a server
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402

from medalloc_core.allocation.forecast_io import TARGET, VALUE, Q  # noqa: E402
from medalloc_core.atomic import atomic_savefig  # noqa: E402
from medalloc_core.contract import DATE  # noqa: E402
from medalloc_core.forecast.explain.forecast import ForecastExplanation, level_name  # noqa: E402
from medalloc_core.forecast.explain.words import channel_group  # noqa: E402


def _fan(ax: plt.Axes, ex: ForecastExplanation) -> None:
    past = ex.history.sort_values(DATE).tail(2 * len(ex.input_dates))
    if ex.target in past.columns:
        ax.plot(pd.to_datetime(past[DATE]), past[ex.target], color="black", lw=1.2, label=f"observed {ex.target}")
    fc = ex.forecast[ex.forecast[TARGET] == ex.target]
    wide = fc.pivot_table(index=DATE, columns=Q, values=VALUE).sort_index()
    x = pd.to_datetime(wide.index)
    levels = sorted(wide.columns)
    for i, (lo, hi) in enumerate((lo, hi) for lo, hi in zip(levels, reversed(levels)) if lo < hi):
        ax.fill_between(
            x,
            wide[lo],
            wide[hi],
            color="tab:blue",
            alpha=0.15 + 0.15 * i,
            lw=0,
            label=f"{level_name(lo)}–{level_name(hi)}",
        )
    median = min(levels, key=lambda q: abs(q - 0.5))
    ax.plot(x, wide[median], color="tab:blue", lw=1.6, label=level_name(median))
    ax.plot(x, wide[ex.level], color="tab:red", lw=1.6, ls="--", label=f"{ex.level_name} (explained)")
    first, last = ex.input_dates[0], ex.input_dates[-1]
    ax.axvspan(first - pd.Timedelta(hours=12), last + pd.Timedelta(hours=12), color="tab:orange", alpha=0.08, lw=0)
    ax.axvline(last, color="tab:orange", lw=1.0)
    ax.set_ylabel("occupied beds" if ex.target == "census" else "patients")
    ax.set_title(
        f"{ex.hospital} · {ex.unit}: {ex.target} forecast from {ex.origin.date()} "
        f"(shaded: the {len(ex.input_dates)} input days the model read)",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=7, framealpha=0.7, ncols=2)


def _heatmap(ax: plt.Axes, fig: plt.Figure, cax: plt.Axes, ex: ForecastExplanation) -> None:
    values = ex.attribution.values.T  # (F, L)
    names = [
        channel_group(n) + (f" ({n.split('_')[-1]})" if n.startswith(("dow_", "year_")) else "")
        for n in ex.feature_names
    ]
    edges = np.append(
        mdates.date2num(ex.input_dates - pd.Timedelta(hours=12)),
        mdates.date2num(ex.input_dates[-1] + pd.Timedelta(hours=12)),
    )
    bound = float(np.abs(values).max()) or 1.0
    mesh = ax.pcolormesh(
        edges, np.arange(len(names) + 1), values, cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -bound, bound), shading="flat"
    )
    ax.set_yticks(np.arange(len(names)) + 0.5, names, fontsize=8)
    ax.invert_yaxis()
    ax.xaxis_date()
    ax.set_title(
        f"What drives the {ex.level_name}: {ex.attribution.method} per input day and series — red raises it, "
        f"blue lowers it;\nall cells add up to {ex.attribution.output - ex.attribution.baseline_output:+.1f} "
        f"{ex.unit_of_measure} against an average window of this unit",
        fontsize=9,
    )
    bar = fig.colorbar(mesh, cax=cax)
    bar.set_label(f"{ex.unit_of_measure} of the {ex.level_name}", fontsize=8)


def _deletion(ax: plt.Axes, ex: ForecastExplanation) -> None:
    d = ex.deletion
    pct = 100 * d.fractions
    ax.plot(pct, d.attributed, color="tab:red", lw=1.6, label="top-attributed first")
    ax.plot(pct, d.random, color="grey", lw=1.4, label=f"random ({d.random_orders} orders)")
    ax.fill_between(pct, d.random - d.random_spread, d.random + d.random_spread, color="grey", alpha=0.2, lw=0)
    ax.plot(pct, d.reversed, color="tab:blue", lw=1.0, ls=":", label="least-attributed first")
    ax.set_xlabel("% of input cells deleted", fontsize=8)
    ax.set_ylabel(f"|change| of the {ex.level_name} ({ex.unit_of_measure})", fontsize=8)
    ax.set_title(f"Faithfulness: {'passes' if d.passed else 'FAILS'}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def plot_explanation(ex: ForecastExplanation, path: Path, *, words: Sequence[str] | None = None) -> Path:
    """Write one PNG: fan chart over the attribution heatmap (shared dates), the deletion curve beside
    them, the explanation in words underneath."""
    lines = list(words if words is not None else ex.words)
    wrapped = [textwrap.fill(line, 150) for line in lines]
    n_text = sum(w.count("\n") + 1 for w in wrapped)
    fig = plt.figure(figsize=(13, 7.0 + 0.17 * n_text))
    grid = fig.add_gridspec(
        3,
        3,
        width_ratios=[5.0, 0.12, 1.9],
        height_ratios=[1.15, 1.0, 0.08 * n_text + 0.05],
        wspace=0.1,
        hspace=0.42,
    )
    fan = fig.add_subplot(grid[0, 0])
    heat = fig.add_subplot(grid[1, 0], sharex=fan)
    _fan(fan, ex)
    _heatmap(heat, fig, fig.add_subplot(grid[1, 1]), ex)
    _deletion(fig.add_subplot(grid[0, 2]), ex)
    text = fig.add_subplot(grid[2, :])
    text.axis("off")
    text.text(0.0, 1.0, "\n".join(wrapped), va="top", fontsize=8.5, transform=text.transAxes, linespacing=1.5)
    heat.xaxis.set_major_formatter(mdates.DateFormatter("%d %b"))
    fan.tick_params(axis="x", labelbottom=False)
    fig.subplots_adjust(left=0.11, right=0.98, top=0.95, bottom=0.03)
    atomic_savefig(fig, Path(path), dpi=110)  # a reader never sees half a picture
    plt.close(fig)
    return Path(path)
