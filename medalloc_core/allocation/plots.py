"""Plots a bed manager and a coordinator read at a glance: the unit fan chart plan and the regional plan."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never opens a window on a server
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from medalloc_core.allocation.forecast_io import HOSPITAL  # noqa: E402
from medalloc_core.allocation.regional import RegionalPlan  # noqa: E402
from medalloc_core.atomic import atomic_savefig  # noqa: E402
from medalloc_core.contract import DATE, UNIT  # noqa: E402


def plot_plan(plan: pd.DataFrame, path: Path) -> Path:
    """One panel per (hospital, unit): P10–P90 demand band, median, staffed beds as steps,
    physical beds as a line, and flagged days (P(demand > physical beds) over threshold) marked."""
    groups = list(plan.groupby([HOSPITAL, UNIT], sort=True))
    cols = 2 if len(groups) > 1 else 1
    rows = math.ceil(len(groups) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 3.2 * rows), squeeze=False, sharex=True)
    for ax, ((hospital, unit), g) in zip(axes.ravel(), groups, strict=False):
        g = g.sort_values(DATE)
        x = pd.to_datetime(g[DATE])
        ax.fill_between(x, g["demand_p10"], g["demand_p90"], color="tab:blue", alpha=0.25, label="demand P10–P90")
        ax.plot(x, g["demand_p50"], color="tab:blue", lw=1.5, label="demand median")
        ax.step(x, g["staffed_beds"], where="mid", color="tab:green", lw=2, label="staffed beds (plan)")
        ax.plot(x, g["physical_beds"], color="black", ls="--", lw=1, label="physical beds")
        flagged = g[g["flag_physical"]]
        if not flagged.empty:
            ax.scatter(
                pd.to_datetime(flagged[DATE]),
                flagged["physical_beds"],
                marker="v",
                s=60,
                color="tab:red",
                zorder=5,
                label="risk above physical beds",
            )
        ax.set_title(f"{hospital} · {unit}")
        ax.set_ylabel("beds")
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(groups) :]:
        ax.set_visible(False)
    handles, labels = axes.ravel()[0].get_legend_handles_labels()
    for ax in axes.ravel()[1 : len(groups)]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8, frameon=False)
    fig.autofmt_xdate()
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    path = Path(path)
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
    return path


def plot_regional(plan: RegionalPlan, path: Path) -> Path:
    """Per hospital over the horizon: surge bed-days received, expected unserved and net transfers."""
    hd = plan.hospital_days
    per = hd.groupby(HOSPITAL)[
        ["surge_beds", "expected_unserved", "expected_transfers_in", "expected_transfers_out"]
    ].sum()
    per["net_transfers_in"] = per["expected_transfers_in"] - per["expected_transfers_out"]
    fig, axes = plt.subplots(3, 1, figsize=(max(7, 0.25 * len(per)), 8), sharex=True)
    axes[0].bar(per.index, per["surge_beds"], color="tab:green")
    axes[0].set_ylabel("surge bed-days")
    axes[1].bar(per.index, per["expected_unserved"], color="tab:red")
    axes[1].set_ylabel("expected unserved\npatient-days")
    axes[2].bar(per.index, per["net_transfers_in"], color="tab:purple")
    axes[2].axhline(0, color="black", lw=0.8)
    axes[2].set_ylabel("net transfers in\n(patient-days)")
    axes[2].tick_params(axis="x", rotation=90)
    costs = plan.costs
    fig.suptitle(
        f"Regional plan ({plan.scenarios} scenarios): expected cost {costs['total']:.0f} = surge {costs['surge']:.0f}"
        f" + unserved {costs['unserved']:.0f} + transfers {costs['transfer']:.0f}",
        fontsize=10,
    )
    for ax in axes:
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path = Path(path)
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
    return path
