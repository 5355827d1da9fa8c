"""The simulation's PNG plots: forecast vs actual with the P10-P90 band, metrics per round, per-hospital comparison."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt
import numpy as np

from medalloc_core.forecast.forecasters import Origins
from medalloc_core.rounds import RoundRecord


def forecast_plot(
    path: Path,
    hospital: str,
    origins: Origins,
    y: np.ndarray,
    q: np.ndarray,
    quantiles: Sequence[float],
    targets: Sequence[str],
) -> None:
    """For each target, the busiest unit's held-out weeks: actuals and the H-day forecast from every
    rolling origin with its P10-P90 band."""
    H = y.shape[1]
    levels = list(quantiles)
    lo, mid, hi = (
        levels.index(min(levels)),
        min(range(len(levels)), key=lambda i: abs(levels[i] - 0.5)),
        levels.index(max(levels)),
    )
    units = np.asarray(origins.units)
    fig, axes = plt.subplots(len(targets), 1, figsize=(9, 3.2 * len(targets)), squeeze=False)
    for t, target in enumerate(targets):
        ax = axes[t, 0]
        volumes = {u: np.nansum(np.abs(y[units == u, :, t])) for u in np.unique(units)}
        unit = max(volumes, key=volumes.get)  # type: ignore[arg-type]
        rows = np.flatnonzero(units == unit)
        rows = rows[np.argsort(origins.target_start[rows])]
        actual: dict[np.datetime64, float] = {}
        for k, r in enumerate(rows):
            days = origins.target_start[r] + np.arange(H) * np.timedelta64(1, "D")
            actual.update({d: float(v) for d, v in zip(days, y[r, :, t], strict=True)})
            ax.fill_between(
                days, q[r, :, t, lo], q[r, :, t, hi], color="tab:blue", alpha=0.25, label="P10-P90" if k == 0 else None
            )
            ax.plot(
                days, q[r, :, t, mid], color="tab:blue", lw=1.4, label=f"{H}-day forecast (median)" if k == 0 else None
            )
        days_all = sorted(actual)
        ax.plot(days_all, [actual[d] for d in days_all], color="black", lw=1.0, marker=".", ms=3, label="actual")
        ax.set_title(f"{hospital}, unit {unit}: {target} ({len(rows)} rolling origins)")
        ax.set_ylabel("patients" if target != "census" else "occupied beds")
        ax.legend(loc="best", fontsize=8, framealpha=0.6)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def rounds_plot(path: Path, rounds: Sequence[RoundRecord]) -> None:
    """Federated evaluation MAE/WAPE and training loss per round (round 0 = the initial model)."""
    ev = [(r.round, r.evaluate) for r in rounds if r.evaluate]
    tr = [(r.round, r.train) for r in rounds if r.train]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, key, title in zip(
        axes[:2], ("eval-mae", "eval-wape"), ("test MAE (patients/beds)", "test WAPE"), strict=True
    ):
        ax.plot([r for r, m in ev if key in m], [m[key] for r, m in ev if key in m], marker="o")
        ax.set_title(title)
        ax.set_xlabel("round")
    axes[2].plot(
        [r for r, m in tr if "train-loss" in m],
        [m["train-loss"] for r, m in tr if "train-loss" in m],
        marker="o",
        color="tab:orange",
    )
    axes[2].set_title("train pinball loss (scaled)")
    axes[2].set_xlabel("round")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def comparison_plot(
    path: Path, per_method: Mapping[str, Mapping[str, Mapping[str, float]]], metric: str = "wape"
) -> None:
    """Grouped bars: ``metric`` per hospital for every method."""
    methods = list(per_method)
    hospitals = sorted({h for m in per_method.values() for h in m})
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(max(8, 1.3 * len(hospitals) * max(1, len(methods) / 4)), 4))
    x = np.arange(len(hospitals))
    for i, method in enumerate(methods):
        values = [per_method[method].get(h, {}).get(metric, np.nan) for h in hospitals]
        ax.bar(x + i * width - 0.4 + width / 2, values, width, label=method)
    ax.set_xticks(x, hospitals)
    ax.set_ylabel(metric.upper())
    ax.set_title(f"test {metric.upper()} per hospital (lower is better)")
    ax.legend(fontsize=8, ncols=min(len(methods), 4), loc="upper center", bbox_to_anchor=(0.5, -0.1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def privacy_rounds_plot(path: Path, rounds: Sequence[RoundRecord]) -> None:
    """Per round: the nodes' epsilon (max and mean) and the least budget left; the nodes accepted and refused."""
    train = [r for r in rounds if r.round > 0]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    xs = [r.round for r in train]
    left.plot(xs, [r.epsilon_max if r.epsilon_max is not None else np.nan for r in train], marker="o", label="max")
    left.plot(xs, [r.epsilon_mean if r.epsilon_mean is not None else np.nan for r in train], marker=".", label="mean")
    left.plot(
        xs, [r.train.get("epsilon-budget-left-min", np.nan) for r in train], linestyle=":", label="budget left (min)"
    )
    left.set_title("nodes' cumulative epsilon")
    left.set_xlabel("round")
    left.legend(fontsize=8)
    right.bar(xs, [r.nodes.get("accepted", 0) for r in train], label="accepted")
    right.bar(
        xs,
        [r.nodes.get("refused", 0) for r in train],
        bottom=[r.nodes.get("accepted", 0) for r in train],
        label="refused",
        color="tab:red",
    )
    right.set_title("nodes per round")
    right.set_xlabel("round")
    right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
