"""The week's preventive-service plan: which devices to service within the technician hours, as an integer programme.

For each device in service the model gives two probabilities of failing within the horizon:
``risk_now`` (left alone) and ``risk_serviced`` (serviced this week: its service clocks
restart). Servicing device i is worth ``benefit_i = (risk_now_i - risk_serviced_i) * w_i``
expected failures (``w_i = 1``) or expected downtime days (``w_i`` = mean downtime of a
failure of its type). The plan solves, with HiGHS through ``scipy.optimize.milp``:

    maximise    sum_i benefit_i x_i
    subject to  sum_i hours_i x_i                 <= technician hours this week
                sum_{i in unit u, type t} x_i     <= max(1, floor(share * n_ut))   for every (u, t)
                x_i in {0, 1};  x_i = 0 where benefit_i <= 0 or the device is down

The second constraint keeps a unit equipped: never more than ``share`` of its devices of one
type away for service in the same week. The age rule (oldest first) and an oracle that
knows each device's true benefit use the same hours and the same constraints.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, milp

logger = logging.getLogger(__name__)

PLAN_COLUMNS: tuple[str, ...] = (
    "device_id",
    "device_type",
    "unit",
    "service_hours",
    "risk_now",
    "risk_serviced",
    "benefit",
    "selected",
)


class PlanError(RuntimeError):
    """HiGHS did not return an optimal plan; the message carries its status."""


@dataclass(frozen=True)
class PlanInputs:
    """One row per candidate device (all arrays of length N).

    ``available`` is False for a device that is down (failed, awaiting repair): it cannot be
    serviced this week. ``weight`` turns a prevented failure into the objective's unit (1 for
    failures, mean downtime days for downtime).
    """

    device_id: np.ndarray
    device_type: np.ndarray
    unit: np.ndarray
    service_hours: np.ndarray
    risk_now: np.ndarray
    risk_serviced: np.ndarray
    available: np.ndarray
    weight: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.device_id)
        for name in ("device_type", "unit", "service_hours", "risk_now", "risk_serviced", "available", "weight"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"PlanInputs.{name} has {len(getattr(self, name))} entries, expected {n}")
        if np.any(~np.isfinite(self.service_hours)) or np.any(self.service_hours <= 0):
            raise ValueError("every device needs service_hours > 0 (the hours one preventive service takes)")

    @property
    def benefit(self) -> np.ndarray:
        """Expected failures (or downtime days) prevented by servicing each device this week."""
        return (self.risk_now - self.risk_serviced) * self.weight


@dataclass(frozen=True)
class Plan:
    """Which devices to service, and what the plan expects to achieve by its own model."""

    selected: np.ndarray  # bool (N,)
    hours_available: float
    hours_used: float
    expected_prevented: float  # sum of benefit over the selected devices
    expected_without: float  # sum of risk_now * weight over available devices: the week left alone
    method: str

    @property
    def prevented_per_hour(self) -> float:
        """Expected prevented failures (or downtime days) per technician hour used."""
        return self.expected_prevented / self.hours_used if self.hours_used > 0 else 0.0


def _group_limits(inputs: PlanInputs, share: float) -> tuple[sp.csr_matrix, np.ndarray]:
    """One row per (unit, type): which devices belong to it and how many may be away at once."""
    keys = pd.Series([f"{u}\x00{t}" for u, t in zip(inputs.unit, inputs.device_type)])
    codes, uniques = pd.factorize(keys)
    n = len(keys)
    matrix = sp.csr_matrix((np.ones(n), (codes, np.arange(n))), shape=(len(uniques), n))
    sizes = np.bincount(codes, minlength=len(uniques))
    return matrix, np.maximum(1, np.floor(share * sizes))


def plan_week(inputs: PlanInputs, *, hours: float, max_share_away: float = 0.5, method: str = "model") -> Plan:
    """Choose the devices to service this week (the integer programme above).

    Parameters
    ----------
    inputs
        The candidate devices with their risks.
    hours
        Technician hours available for preventive service this week (>= 0).
    max_share_away
        The most of a unit's devices of one type that may be away for service at once (default
        0.5; at least one is always allowed).
    method
        A label stored with the plan.

    Raises
    ------
    PlanError
        When HiGHS does not report an optimum (its status and message are included).
    """
    if not (math.isfinite(hours) and hours >= 0):
        raise ValueError(f"hours must be a finite number >= 0, got {hours}")
    if not 0 < max_share_away <= 1:
        raise ValueError(f"max_share_away must be in (0, 1], got {max_share_away}")
    benefit = inputs.benefit
    n = len(benefit)
    candidate = inputs.available & (benefit > 0) & (inputs.service_hours <= hours)
    without = float(np.sum((inputs.risk_now * inputs.weight)[inputs.available]))
    if n == 0 or not candidate.any():
        return Plan(np.zeros(n, dtype=bool), hours, 0.0, 0.0, without, method)
    # Only the candidates enter HiGHS: the rest are fixed at 0 anyway, and a small problem solves
    # in milliseconds (the oracle solves one per simulated world).
    # The group limits count every device of the unit and type (in service or not).
    index = np.flatnonzero(candidate)
    groups, limits = _group_limits(inputs, max_share_away)
    constraints = [
        LinearConstraint(sp.csr_matrix(inputs.service_hours[index].reshape(1, -1)), -np.inf, hours),
        LinearConstraint(groups[:, index], -np.inf, limits),
    ]
    result = milp(
        c=-benefit[index],
        constraints=constraints,
        integrality=np.ones(len(index)),
        bounds=Bounds(np.zeros(len(index)), np.ones(len(index))),
        options={"disp": False, "mip_rel_gap": 1e-6},
    )
    if result.status != 0 or result.x is None:
        raise PlanError(f"HiGHS did not find an optimal service plan (status {result.status}): {result.message}")
    selected = np.zeros(n, dtype=bool)
    selected[index[result.x > 0.5]] = True
    used = float(inputs.service_hours[selected].sum())
    logger.info("%s plan: %d devices, %.1f of %.1f hours", method, int(selected.sum()), used, hours)
    return Plan(selected, hours, used, float(benefit[selected].sum()), without, method)


def rule_plan(
    inputs: PlanInputs, priority: np.ndarray, *, hours: float, max_share_away: float = 0.5, method: str = "age rule"
) -> Plan:
    """A rule's plan: devices in descending ``priority`` (e.g. age), each taken if it fits the hours and its group.

    The same constraints as :func:`plan_week`; the rule does not look at risks, but the plan
    reports the expected benefit of its choice by ``inputs`` (the model's, or the truth's).
    """
    n = len(priority)
    groups, limits = _group_limits(inputs, max_share_away)
    group_of = np.asarray(groups.argmax(axis=0)).ravel() if n else np.zeros(0, dtype=int)
    taken = np.zeros(len(limits))
    selected = np.zeros(n, dtype=bool)
    left = hours
    for i in np.argsort(-np.asarray(priority, dtype=float), kind="stable"):
        if not inputs.available[i] or inputs.service_hours[i] > left or taken[group_of[i]] >= limits[group_of[i]]:
            continue
        selected[i] = True
        left -= inputs.service_hours[i]
        taken[group_of[i]] += 1
    benefit = inputs.benefit
    without = float(np.sum((inputs.risk_now * inputs.weight)[inputs.available]))
    return Plan(selected, hours, float(hours - left), float(benefit[selected].sum()), without, method)


def plan_frame(inputs: PlanInputs, plan: Plan) -> pd.DataFrame:
    """The plan as a table (``PLAN_COLUMNS``), selected devices first by benefit."""
    frame = pd.DataFrame(
        {
            "device_id": inputs.device_id,
            "device_type": inputs.device_type,
            "unit": inputs.unit,
            "service_hours": inputs.service_hours,
            "risk_now": inputs.risk_now,
            "risk_serviced": inputs.risk_serviced,
            "benefit": inputs.benefit,
            "selected": plan.selected,
        }
    )
    return frame.sort_values(["selected", "benefit"], ascending=[False, False], kind="stable").reset_index(drop=True)
