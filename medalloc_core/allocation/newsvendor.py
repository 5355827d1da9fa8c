"""The hospital plan: staffed beds per unit and day as the newsvendor quantile of forecast census.

Staffing one more bed costs ``over_cost`` if it stays empty and saves ``under_cost`` if a
patient would otherwise overflow; the expected-cost minimum is the demand quantile at the
critical ratio ``under_cost / (under_cost + over_cost)`` (see docs/allocation.md).
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from medalloc_core.allocation.forecast_io import BEDS, HOSPITAL, STAFFED, TARGET, VALUE, Q
from medalloc_core.allocation.quantiles import Tail, cdf_at, expected_shortfall_and_idle, quantile_at
from medalloc_core.contract import CENSUS, DATE, UNIT

logger = logging.getLogger(__name__)

# Fractions of a bed below this are floating-point noise: demand up to s + TOL counts as fitting s beds,
# both when rounding the quantile up and when reading P(demand > s), so the two always agree.
BED_TOLERANCE = 1e-6

# Patients per nurse per shift; typical safe-staffing ratios (ICU 1:2, wards 1:4-1:5).
DEFAULT_NURSE_RATIOS: Mapping[str, float] = {
    "icu": 2.0,
    "medical": 5.0,
    "surgical": 5.0,
    "paediatric": 4.0,
    "pediatric": 4.0,
}

PLAN_COLUMNS: tuple[str, ...] = (
    HOSPITAL,
    UNIT,
    DATE,
    "demand_p10",
    "demand_p50",
    "demand_p90",
    "critical_ratio",
    "newsvendor_beds",
    "staffed_beds",
    "physical_beds",
    "capped",
    "nurses_per_shift",
    "nurse_shifts",
    "p_overflow",
    "p_exceed_physical",
    "flag_physical",
    "expected_unserved",
    "expected_idle",
    "expected_cost",
    "baseline_staffed",
    "change_from_baseline",
    "demand_at_critical_ratio",
    "quantile_basis",
    "reason",
)


# Bounds on the plan's parameters: any real cost ratio and staffing ratio fits well inside them.
MIN_COST, MAX_COST = 1e-6, 1e6
MIN_NURSE_RATIO, MAX_NURSE_RATIO = 0.01, 1000.0


@dataclass(frozen=True)
class UnitCosts:
    """Cost of an unserved patient-day (overflow, diversion) and of an idle staffed bed-day."""

    under_cost: float = 10.0  # an overflow/diversion patient-day, in nurse-bed-day units
    over_cost: float = 1.0  # one staffed bed-day nobody uses (the nurse time paid for it)

    def __post_init__(self) -> None:
        # Bounded on both sides (NaN fails every comparison): a ratio of 1e300 puts the critical
        # ratio at exactly 1, whose quantile is infinite and no whole number of beds.
        for name in ("under_cost", "over_cost"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, numbers.Real)
                or not MIN_COST <= float(value) <= MAX_COST
            ):
                raise ValueError(f"{name} must be a number from {MIN_COST:g} to {MAX_COST:g}, got {value!r}")

    @property
    def critical_ratio(self) -> float:
        """c_u / (c_u + c_o): the service level the plan staffs to."""
        return self.under_cost / (self.under_cost + self.over_cost)


@dataclass(frozen=True)
class PlanConfig:
    """Everything the hospital plan depends on besides the forecast and the beds.

    ``unit_costs`` overrides ``costs`` per unit; ``nurse_ratios`` maps unit name
    (case-insensitive) to patients per nurse per shift, ``default_nurse_ratio`` for the rest.
    """

    costs: UnitCosts = UnitCosts()
    unit_costs: Mapping[str, UnitCosts] = field(default_factory=dict)
    nurse_ratios: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_NURSE_RATIOS))
    default_nurse_ratio: float = 4.0  # a general ward when the unit is not named
    shifts_per_day: int = 3  # three 8-hour shifts
    physical_risk_threshold: float = 0.05  # flag a day when P(demand > physical beds) exceeds this
    tail: Tail = "normal"  # beyond the outer forecast quantiles: normal tail fitted to them

    def __post_init__(self) -> None:
        ratios = [self.default_nurse_ratio, *self.nurse_ratios.values()]
        if any(not MIN_NURSE_RATIO <= r <= MAX_NURSE_RATIO for r in ratios):
            raise ValueError(
                f"nurse ratios must be from {MIN_NURSE_RATIO:g} to {MAX_NURSE_RATIO:g} patients per nurse, got {ratios}"
            )
        if not 1 <= self.shifts_per_day <= 24:
            raise ValueError(f"shifts_per_day must be from 1 to 24, got {self.shifts_per_day}")
        if not 0 < self.physical_risk_threshold < 1:
            raise ValueError(f"physical_risk_threshold must be in (0, 1), got {self.physical_risk_threshold}")

    def costs_for(self, unit: str) -> UnitCosts:
        lowered = {k.lower(): v for k, v in self.unit_costs.items()}
        return lowered.get(unit.lower(), self.costs)

    def nurse_ratio_for(self, unit: str) -> float:
        lowered = {k.lower(): v for k, v in self.nurse_ratios.items()}
        return float(lowered.get(unit.lower(), self.default_nurse_ratio))


def quantile_basis(levels: np.ndarray, ratio: float, tail: Tail = "normal") -> str:
    """Where the critical-ratio quantile comes from, in words: a forecast level, an interpolation, or a tail.

    >>> quantile_basis(np.array([0.1, 0.5, 0.9]), 10 / 11)
    'beyond the forecast P90: normal tail fitted to P10-P90'
    """
    names = [f"P{100 * q:.3g}" for q in levels]
    close = np.flatnonzero(np.isclose(levels, ratio, rtol=0.0, atol=1e-9))
    if close.size:
        return f"the forecast {names[int(close[0])]}"
    if levels.size == 1:
        return f"the forecast's only level {names[0]} (demand treated as certain)"
    if levels[0] < ratio < levels[-1]:
        k = int(np.searchsorted(levels, ratio)) - 1
        return f"interpolated between the forecast {names[k]} and {names[k + 1]}"
    side, outer = ("beyond", names[-1]) if ratio > levels[-1] else ("below", names[0])
    if tail == "clamp":
        return f"{side} the forecast {outer}: clamped to it (--tail clamp)"
    return f"{side} the forecast {outer}: normal tail fitted to {names[0]}-{names[-1]}"


def quantile_matrix(forecast: pd.DataFrame, target: str = CENSUS) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Pivot one target of a forecast frame to (keys, levels, values).

    Returns the (hospital, unit, date) keys as a frame, the sorted quantile levels (K,) and the
    values (N, K). Raises ValueError when a series-day lacks a level the others have.
    """
    sub = forecast[forecast[TARGET] == target]
    if sub.empty:
        targets = sorted(forecast[TARGET].unique().tolist())
        raise ValueError(
            f"the forecast has no '{target}' rows (targets present: {targets}); beds are planned on census"
        )
    wide = sub.pivot_table(index=[HOSPITAL, UNIT, DATE], columns=Q, values=VALUE, aggfunc="first")
    if wide.isna().any().any():
        bad = wide[wide.isna().any(axis=1)].index[0]
        raise ValueError(
            f"series-day {bad} lacks some quantile levels; every day needs the same levels {list(wide.columns)}"
        )
    wide = wide.sort_index(axis=1)
    return wide.index.to_frame(index=False), wide.columns.to_numpy(dtype=float), wide.to_numpy(dtype=float)


def _capacity_lookup(capacity: pd.DataFrame, keys: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Physical beds and staffed baseline per key row; ValueError naming the unit when one is missing."""
    on = [HOSPITAL, UNIT] if HOSPITAL in capacity.columns else [UNIT]
    if on == [UNIT] and keys[HOSPITAL].nunique() > 1:
        raise ValueError("the forecast covers several hospitals; the capacity table needs a 'hospital' column")
    table = capacity.assign(**{STAFFED: capacity[STAFFED] if STAFFED in capacity.columns else capacity[BEDS]})
    merged = keys.merge(table[[*on, BEDS, STAFFED]], on=on, how="left")
    if merged[BEDS].isna().any():
        missing = merged.loc[merged[BEDS].isna(), on].drop_duplicates().to_dict("records")
        raise ValueError(f"no capacity for {missing}; add these units to the capacity table")
    if (merged[BEDS] < 0).any():
        raise ValueError("physical beds must be >= 0")
    return merged[BEDS].to_numpy(dtype=float), merged[STAFFED].to_numpy(dtype=float)


def plan_hospital(forecast: pd.DataFrame, capacity: pd.DataFrame, config: PlanConfig = PlanConfig()) -> pd.DataFrame:
    """Staffed beds, nurses and overflow risk per unit and day from a census forecast.

    Parameters
    ----------
    forecast : pd.DataFrame
        A forecast frame (see :func:`~medalloc_core.allocation.forecast_io.read_forecast`);
        only ``target == "census"`` rows are used.
    capacity : pd.DataFrame
        Columns ``unit, beds`` (+ ``hospital`` when the forecast has several hospitals).
    config : PlanConfig
        Costs, nurse ratios, tail assumption and flag threshold.

    Returns
    -------
    pd.DataFrame
        One row per (hospital, unit, date) with the columns in ``PLAN_COLUMNS``:
        ``newsvendor_beds`` = ceil(Q(c_u/(c_u+c_o))), ``staffed_beds`` = that capped at
        ``physical_beds``; ``p_overflow`` = P(D > staffed_beds) = 1 - F(staffed_beds);
        ``p_exceed_physical`` = 1 - F(physical_beds), ``flag_physical`` when it exceeds the
        threshold; ``nurses_per_shift`` = ceil(staffed_beds / ratio), ``nurse_shifts`` per
        day; expected unserved patient-days, idle bed-days and their cost; the staffed
        baseline from the capacity table (``staffed``, else ``beds``) and the change from it.
    """
    keys, levels, values = quantile_matrix(forecast)
    physical, baseline = _capacity_lookup(capacity, keys)
    units = keys[UNIT].astype(str).tolist()
    unit_costs = [config.costs_for(u) for u in units]
    cr = np.array([c.critical_ratio for c in unit_costs])
    c_u = np.array([c.under_cost for c in unit_costs])
    c_o = np.array([c.over_cost for c in unit_costs])
    if levels.size == 1:
        logger.warning(
            "the forecast has a single quantile level (%s): treated as certain demand, no risk shown", levels[0]
        )
    outside = (cr < levels[0]) | (cr > levels[-1])
    if outside.any():
        logger.warning(
            "critical ratio %s lies outside the forecast's levels [%s, %s]; using the %s tail beyond them",
            sorted(set(np.round(cr[outside], 4).tolist())),
            levels[0],
            levels[-1],
            config.tail,
        )
    demand_at_cr = quantile_at(levels, values, cr, tail=config.tail)
    newsvendor = np.ceil(demand_at_cr - BED_TOLERANCE)  # whole beds; keeps 12.0000000001 at 12
    staffed = np.minimum(newsvendor, physical)
    ratio = np.array([config.nurse_ratio_for(u) for u in units])
    nurses = np.ceil(staffed / ratio - BED_TOLERANCE)
    p_exceed_phys = 1.0 - cdf_at(levels, values, physical + BED_TOLERANCE, tail=config.tail)
    unserved, idle = expected_shortfall_and_idle(levels, values, staffed, tail=config.tail)
    plan = keys.copy()
    for name, level in (("demand_p10", 0.1), ("demand_p50", 0.5), ("demand_p90", 0.9)):
        plan[name] = quantile_at(levels, values, level, tail=config.tail)
    plan["critical_ratio"] = cr
    plan["newsvendor_beds"] = newsvendor.astype("int64")
    plan["staffed_beds"] = staffed.astype("int64")
    plan["physical_beds"] = physical.astype("int64")
    plan["capped"] = newsvendor > physical
    plan["nurses_per_shift"] = nurses.astype("int64")
    plan["nurse_shifts"] = (nurses * config.shifts_per_day).astype("int64")
    plan["p_overflow"] = 1.0 - cdf_at(levels, values, staffed + BED_TOLERANCE, tail=config.tail)
    plan["p_exceed_physical"] = p_exceed_phys
    plan["flag_physical"] = p_exceed_phys > config.physical_risk_threshold
    plan["expected_unserved"] = unserved
    plan["expected_idle"] = idle
    plan["expected_cost"] = c_u * unserved + c_o * idle
    plan["baseline_staffed"] = baseline.astype("int64")
    plan["change_from_baseline"] = plan["staffed_beds"] - plan["baseline_staffed"]  # beds to open (+) or close (-)
    # The plan explains itself: which quantile it read, from where, and why this many beds.
    plan["demand_at_critical_ratio"] = demand_at_cr
    plan["quantile_basis"] = [quantile_basis(levels, float(r), config.tail) for r in cr]
    plan["reason"] = [
        f"capped at {int(p)} physical beds (the P{100 * r:.3g} of demand, {q:.1f}, needs {int(n)})"
        if n > p
        else f"{int(n)} = P{100 * r:.3g} of demand ({q:.2f}) rounded up"
        for r, q, n, p in zip(cr, demand_at_cr, newsvendor, physical)
    ]
    if plan["capped"].any():
        logger.warning(
            "%d unit-days need more beds than physically exist; capped and flagged", int(plan["capped"].sum())
        )
    return plan.loc[:, list(PLAN_COLUMNS)]
