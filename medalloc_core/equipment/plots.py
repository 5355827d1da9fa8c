"""Equipment figures: the reliability diagram of risk models and the week's service plan."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from medalloc_core.equipment.metrics import brier, calibration_error, reliability  # noqa: E402
from medalloc_core.equipment.plan import Plan, PlanInputs  # noqa: E402


def reliability_plot(path: Path, outcomes: Mapping[str, tuple[np.ndarray, np.ndarray]], *, title: str = "") -> Path:
    """Observed failure frequency against predicted probability (equal-mass bins), one line per method.

    ``outcomes`` maps a method to ``(y, p)``. A calibrated model lies on the diagonal; the legend
    carries each method's Brier score and expected calibration error.
    """
    fig, ax = plt.subplots(figsize=(6.0, 5.5))
    top = 0.0
    for name, (y, p) in outcomes.items():
        rel = reliability(y, p)
        top = max(top, float(np.max(rel.predicted, initial=0)), float(np.max(rel.observed, initial=0)))
        ax.plot(
            rel.predicted,
            rel.observed,
            marker="o",
            label=f"{name} (Brier {brier(y, p):.4f}, ECE {calibration_error(y, p):.4f})",
        )
    top = max(top * 1.05, 0.01)
    ax.plot([0, top], [0, top], color="grey", linestyle="--", linewidth=1, label="perfectly calibrated")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("predicted probability of failure within the horizon")
    ax.set_ylabel("observed frequency")
    ax.set_title(title or "Reliability of failure-risk predictions (test period)")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plan_plot(path: Path, inputs: PlanInputs, plans: Mapping[str, Plan], *, title: str = "", top: int = 25) -> Path:
    """Left: the selected devices' risk now and after service. Right: expected prevented vs technician hours per plan.

    The right panel accumulates each plan's devices in its own order (the model's plan by
    benefit per hour), so the curves show how fast each spends its hours on prevention,
    judged by ``inputs``' risks.
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=(12.0, 5.0))
    first = next(iter(plans.values()))
    chosen = np.flatnonzero(first.selected)
    chosen = chosen[np.argsort(-inputs.benefit[chosen])][:top]
    y = np.arange(len(chosen))
    left.barh(y, inputs.risk_now[chosen], color="#d62728", label="risk if left alone")
    left.barh(y, inputs.risk_serviced[chosen], color="#2ca02c", label="risk if serviced this week")
    left.set_yticks(y, [f"{inputs.device_id[i]} ({inputs.device_type[i]})" for i in chosen], fontsize=7)
    left.invert_yaxis()
    left.set_xlabel("probability of failure within the horizon")
    left.set_title(f"{first.method}: top {len(chosen)} of {int(first.selected.sum())} devices to service")
    left.legend(fontsize=8, loc="lower right")
    benefit = inputs.benefit
    for name, plan in plans.items():
        idx = np.flatnonzero(plan.selected)
        idx = idx[np.argsort(-(benefit[idx] / inputs.service_hours[idx]))]
        hours = np.concatenate([[0.0], np.cumsum(inputs.service_hours[idx])])
        gain = np.concatenate([[0.0], np.cumsum(benefit[idx])])
        right.step(hours, gain, where="post", label=f"{name}: {gain[-1]:.2f} in {hours[-1]:.0f} h")
    right.axvline(first.hours_available, color="grey", linestyle=":", linewidth=1, label="hours available")
    right.set_xlabel("technician hours")
    right.set_ylabel("expected failures prevented")
    right.set_title("Prevention bought per technician hour")
    right.legend(fontsize=8, loc="lower right")
    fig.suptitle(title or "Preventive service plan for the week")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
