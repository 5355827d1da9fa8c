"""Newsvendor plan: hand-computed quantiles, CDF consistency, capping, nurses and flags."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medalloc_core.allocation.newsvendor import PlanConfig, UnitCosts, plan_hospital
from medalloc_core.allocation.quantiles import cdf_at, expected_shortfall_and_idle, quantile_at, sample
from tests.allocation_fixtures import LEVELS, forecast_frame

L = np.array(LEVELS)
V = np.array([[8.0, 10.0, 14.0]])  # P10 = 8, P50 = 10, P90 = 14


def _plan(costs: UnitCosts, beds: int = 50, unit: str = "medical", **kw: object) -> pd.DataFrame:
    frame = forecast_frame({("H000", unit): [(8.0, 10.0, 14.0)]})
    return plan_hospital(frame, pd.DataFrame({"unit": [unit], "beds": [beds]}), PlanConfig(costs=costs, **kw))


@pytest.mark.parametrize(
    ("under", "over", "beds"),
    [
        (1.0, 1.0, 10),  # ratio 0.5 -> the median, 10
        (9.0, 1.0, 14),  # ratio 0.9 -> P90, 14
        (7.0, 3.0, 12),  # ratio 0.7: 10 + (0.7-0.5)/(0.9-0.5) * (14-10) = 12
        (3.0, 2.0, 11),  # ratio 0.6: 10 + 0.25 * 4 = 11
        (13.0, 7.0, 12),  # ratio 0.65: 10 + 0.375 * 4 = 11.5 -> rounded up to 12
        (1.0, 3.0, 9),  # ratio 0.25: 8 + (0.15/0.4) * 2 = 8.75 -> 9
    ],
)
def test_staffed_beds_is_the_critical_ratio_quantile_rounded_up(under: float, over: float, beds: int) -> None:
    plan = _plan(UnitCosts(under, over))
    assert plan["critical_ratio"].iloc[0] == pytest.approx(under / (under + over))
    assert plan["staffed_beds"].iloc[0] == beds


def test_interpolated_cdf_by_hand() -> None:
    # F(12) = 0.5 + (12-10)/(14-10) * 0.4 = 0.7 ; F(9) = 0.1 + (9-8)/(10-8) * 0.4 = 0.3
    assert cdf_at(L, V, 12.0)[0] == pytest.approx(0.7)
    assert cdf_at(L, V, 9.0)[0] == pytest.approx(0.3)
    plan = _plan(UnitCosts(7.0, 3.0))  # staffs 12
    assert plan["p_overflow"].iloc[0] == pytest.approx(0.3)


def test_normal_tail_by_hand() -> None:
    # sigma = (14 - 8) / (z0.9 - z0.1) = 6 / (2 * 1.281552) = 2.340912
    # Q(0.95) = 14 + 2.340912 * (1.644854 - 1.281552) = 14.850458
    # F(16) = Phi(1.281552 + 2 / 2.340912) = Phi(2.135920) = 0.983657
    assert quantile_at(L, V, 0.95)[0] == pytest.approx(14.850458, abs=1e-5)
    assert cdf_at(L, V, 16.0)[0] == pytest.approx(0.983657, abs=1e-5)
    # ratio 20/21 = 0.952 -> Q = 14 + 2.340912 * (1.668391 - 1.281552) = 14.9055 -> 15 beds
    assert _plan(UnitCosts(20.0, 1.0))["staffed_beds"].iloc[0] == 15


def test_clamp_tail_stays_at_outer_quantiles() -> None:
    assert quantile_at(L, V, 0.99, tail="clamp")[0] == 14.0
    assert quantile_at(L, V, 0.01, tail="clamp")[0] == 8.0
    assert cdf_at(L, V, 14.0, tail="clamp")[0] == 1.0
    assert cdf_at(L, V, 7.9, tail="clamp")[0] == 0.0


def test_degenerate_forecast_is_a_point_mass() -> None:
    v = np.array([[5.0, 5.0, 5.0]])
    assert quantile_at(L, v, 0.97)[0] == 5.0
    assert cdf_at(L, v, 4.999)[0] == 0.0
    assert cdf_at(L, v, 5.0)[0] == 1.0
    unserved, idle = expected_shortfall_and_idle(L, v, np.array([3.0]))
    assert unserved[0] == pytest.approx(2.0) and idle[0] == pytest.approx(0.0)


def test_plan_is_capped_at_physical_beds_and_flags_the_risk() -> None:
    plan = _plan(UnitCosts(7.0, 3.0), beds=11)  # wants 12, only 11 exist
    row = plan.iloc[0]
    assert row["newsvendor_beds"] == 12 and row["staffed_beds"] == 11 and bool(row["capped"])
    # P(D > 11) = 1 - (0.5 + 0.25 * 0.4) = 0.4, both as overflow and as risk over physical beds
    assert row["p_overflow"] == pytest.approx(0.4)
    assert row["p_exceed_physical"] == pytest.approx(0.4)
    assert bool(row["flag_physical"])
    # 30 beds: P(D > 30) under the normal tail is ~0: no flag
    assert not bool(_plan(UnitCosts(7.0, 3.0), beds=30)["flag_physical"].iloc[0])


def test_flag_threshold_is_configurable() -> None:
    # P(D > 14) = 0.1: flagged at the default 5 %, not at 15 %
    assert bool(_plan(UnitCosts(1.0, 1.0), beds=14)["flag_physical"].iloc[0])
    assert not bool(_plan(UnitCosts(1.0, 1.0), beds=14, physical_risk_threshold=0.15)["flag_physical"].iloc[0])


def test_nurses_per_shift_round_up_by_unit_ratio() -> None:
    ward = _plan(UnitCosts(7.0, 3.0), unit="medical")  # 12 beds / 5 -> 3 nurses, 9 nurse-shifts
    icu = _plan(UnitCosts(7.0, 3.0), unit="ICU")  # 12 beds / 2 -> 6 nurses
    assert (ward["nurses_per_shift"].iloc[0], ward["nurse_shifts"].iloc[0]) == (3, 9)
    assert icu["nurses_per_shift"].iloc[0] == 6
    other = _plan(UnitCosts(7.0, 3.0), unit="oncology", default_nurse_ratio=4.0)  # 12 / 4 = 3 exactly
    assert other["nurses_per_shift"].iloc[0] == 3


def test_per_unit_costs_override_the_default() -> None:
    frame = forecast_frame({("H000", "ICU"): [(8.0, 10.0, 14.0)], ("H000", "medical"): [(8.0, 10.0, 14.0)]})
    config = PlanConfig(costs=UnitCosts(1.0, 1.0), unit_costs={"icu": UnitCosts(9.0, 1.0)})
    plan = plan_hospital(frame, pd.DataFrame({"unit": ["ICU", "medical"], "beds": [40, 40]}), config)
    assert dict(zip(plan["unit"], plan["staffed_beds"], strict=True)) == {"ICU": 14, "medical": 10}


def test_missing_capacity_and_missing_census_are_clear_errors() -> None:
    frame = forecast_frame({("H000", "ICU"): [(8.0, 10.0, 14.0)]})
    with pytest.raises(ValueError, match="no capacity for .*ICU"):
        plan_hospital(frame, pd.DataFrame({"unit": ["medical"], "beds": [10]}))
    with pytest.raises(ValueError, match="no 'census' rows"):
        plan_hospital(frame.assign(target="admissions"), pd.DataFrame({"unit": ["ICU"], "beds": [10]}))


def test_expected_cost_is_minimised_at_the_plan_among_whole_bed_counts() -> None:
    costs = UnitCosts(7.0, 3.0)
    plan = _plan(costs)
    staffed = int(plan["staffed_beds"].iloc[0])
    candidates = np.arange(0, 30, dtype=float)
    unserved, idle = expected_shortfall_and_idle(L, np.repeat(V, candidates.size, axis=0), candidates)
    cost = costs.under_cost * unserved + costs.over_cost * idle
    # the expected cost is convex: the whole-bed optimum is floor or ceil of Q(ratio); we take ceil
    best = int(candidates[np.argmin(cost)])
    assert best in (staffed - 1, staffed)
    assert cost[staffed] <= cost[staffed + 1]
    assert plan["expected_cost"].iloc[0] == pytest.approx(cost[staffed])


@settings(max_examples=60, deadline=None)
@given(
    base=st.floats(0.0, 100.0),
    steps=st.lists(st.floats(0.01, 20.0), min_size=2, max_size=2),
    p=st.floats(0.01, 0.99),
)
def test_cdf_inverts_the_quantile_function(base: float, steps: list[float], p: float) -> None:
    values = np.array([[base, base + steps[0], base + steps[0] + steps[1]]])
    x = quantile_at(L, values, p)[0]
    if x > 0:  # below 0 the clip puts mass at 0
        assert cdf_at(L, values, x)[0] == pytest.approx(p, abs=1e-9)


def test_overflow_probability_matches_sampling_from_the_same_distribution() -> None:
    uniforms = np.random.default_rng(7).uniform(size=(1, 200_000))
    draws = sample(L, V, uniforms)[0]
    for staffed in (9.0, 12.0, 15.0):
        assert np.mean(draws > staffed) == pytest.approx(1 - cdf_at(L, V, staffed)[0], abs=0.005)
    unserved, _ = expected_shortfall_and_idle(L, V, np.array([12.0]))
    assert unserved[0] == pytest.approx(np.maximum(draws - 12.0, 0).mean(), rel=0.02)


def test_invalid_costs_and_ratios_are_refused() -> None:
    with pytest.raises(ValueError, match="under_cost must be a number from"):
        UnitCosts(0.0, 1.0)
    # A cost ratio of 1e300 made the critical ratio exactly 1: an infinite quantile, no whole bed.
    with pytest.raises(ValueError, match="under_cost must be a number from"):
        UnitCosts(1e300, 1.0)
    with pytest.raises(ValueError, match="over_cost must be a number from"):
        UnitCosts(1.0, math.nan)
    with pytest.raises(ValueError, match="nurse ratios"):
        PlanConfig(nurse_ratios={"ICU": 0.0})
    with pytest.raises(ValueError, match="nurse ratios"):
        PlanConfig(default_nurse_ratio=1e-300)  # staffed / ratio overflowed the nurse count
    assert math.isclose(UnitCosts(3.0, 1.0).critical_ratio, 0.75)


def test_change_from_the_staffed_baseline() -> None:
    frame = forecast_frame({("H000", "ward"): [(8.0, 10.0, 14.0)]})
    capacity = pd.DataFrame({"unit": ["ward"], "beds": [20], "staffed": [9]})
    plan = plan_hospital(frame, capacity, PlanConfig(costs=UnitCosts(7.0, 3.0)))  # staffs 12
    assert (plan["baseline_staffed"].iloc[0], plan["change_from_baseline"].iloc[0]) == (9, 3)


@settings(max_examples=40, deadline=None)
@given(
    mids=st.lists(st.floats(0.0, 80.0), min_size=1, max_size=5),
    spread=st.floats(0.0, 30.0),
    beds=st.integers(0, 60),
    under=st.floats(0.1, 50.0),
)
def test_plan_never_exceeds_physical_beds(mids: list[float], spread: float, beds: int, under: float) -> None:
    frame = forecast_frame({("H", "ward"): [(max(m - spread, 0.0), m, m + spread) for m in mids]})
    plan = plan_hospital(
        frame, pd.DataFrame({"unit": ["ward"], "beds": [beds]}), PlanConfig(costs=UnitCosts(under, 1.0))
    )
    assert (plan["staffed_beds"] <= beds).all() and (plan["staffed_beds"] >= 0).all()
    assert ((plan["p_overflow"] >= -1e-12) & (plan["p_overflow"] <= 1 + 1e-12)).all()
    uncapped = ~plan["capped"]
    assert (plan.loc[uncapped, "p_overflow"] <= 1 - plan.loc[uncapped, "critical_ratio"] + 1e-9).all()
