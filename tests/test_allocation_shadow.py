"""The regional plan's shadow prices are what re-solving says they are, and the plans explain themselves.

Each price is checked against the LP itself: move the resource by a small step up and down,
re-solve (same scenarios: the seed is fixed and the draws do not depend on capacities), and the
price must lie between the two one-sided savings — the subgradient inequality of a convex
piecewise-linear cost, which holds for every optimal dual, degenerate or not — and, where the
cost is smooth at that point, equal the central difference.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
from scipy.special import ndtri

from medalloc_core.allocation.explain_plans import hospital_plan_reasons, regional_reasons
from medalloc_core.allocation.newsvendor import PlanConfig, UnitCosts, plan_hospital, quantile_basis
from medalloc_core.allocation.regional import RegionalConfig, RegionalPlan, plan_region
from tests.allocation_fixtures import forecast_frame

STEP = 0.05  # beds; small against the demand spread, large against HiGHS' tolerances
TOL = 0.02  # cost units per bed


def _region(n: int = 5, days: int = 5, seed: int = 1) -> tuple[pd.DataFrame, dict[str, float]]:
    rng = np.random.default_rng(seed)
    rows = []
    for h in range(n):
        level = rng.uniform(40, 120)
        for d in pd.date_range("2026-01-05", periods=days):
            m = level * (1 + 0.08 * rng.standard_normal())
            rows += [
                {"hospital": f"H{h}", "date": d, "q": q, "value": max(m * (1 + z * 0.12), 0.0)}
                for q, z in ((0.1, -1.2816), (0.5, 0.0), (0.9, 1.2816))
            ]
    shared = pd.DataFrame(rows)
    capacity = {f"H{h}": float(shared[(shared.hospital == f"H{h}") & (shared.q == 0.5)].value.mean()) for h in range(n)}
    return shared, capacity


CONFIG = RegionalConfig(surge_pool=12.0, scenarios=15, neighbours=2, transfer_limit=2.0, max_surge=6.0, seed=3)


def _cost(plan: RegionalPlan) -> float:
    return plan.costs["total"]


def _bracket(solve: Callable[[float], RegionalPlan], price: float) -> tuple[float, float, float]:
    """(saving of a step down, the price, saving of a step up): the price must lie in between."""
    base, up, down = _cost(solve(0.0)), _cost(solve(STEP)), _cost(solve(-STEP))
    return (base - up) / STEP, price, (down - base) / STEP


def _assert_bracketed(low: float, price: float, high: float) -> None:
    assert low - TOL <= price <= high + TOL, (low, price, high)


@pytest.fixture(scope="module")
def solved() -> tuple[pd.DataFrame, dict[str, float], RegionalPlan]:
    shared, capacity = _region()
    return shared, capacity, plan_region(shared, capacity, CONFIG)


def test_the_plan_has_binding_pool_surge_caps_and_corridors(solved) -> None:  # type: ignore[no-untyped-def]
    # The other tests would prove little on a plan where nothing binds.
    shadow = solved[2].shadow
    binding = shadow.binding()
    assert {"surge pool", "surge room", "transfer slot"} <= set(binding["constraint"])
    assert (shadow.pool_price > 0).sum() >= 2
    assert (binding["shadow_price"] > 0).all()


def test_pool_price_matches_a_resolve_with_a_bigger_and_smaller_pool(solved) -> None:  # type: ignore[no-untyped-def]
    shared, capacity, plan = solved

    def solve(delta: float) -> RegionalPlan:
        return plan_region(shared, capacity, _replace(CONFIG, surge_pool=CONFIG.surge_pool + delta))

    low, price, high = _bracket(solve, float(plan.shadow.pool_price.sum()))
    _assert_bracketed(low, price, high)
    assert price > 1.0  # the pool is scarce here: the check above is not 0 <= 0 <= 0


@pytest.mark.parametrize("hospital", ["H0", "H2", "H4"])
def test_bed_value_matches_a_resolve_with_one_more_staffed_bed(solved, hospital: str) -> None:  # type: ignore[no-untyped-def]
    shared, capacity, plan = solved
    h = plan.shadow.hospitals.index(hospital)

    def solve(delta: float) -> RegionalPlan:
        return plan_region(shared, capacity | {hospital: capacity[hospital] + delta}, CONFIG)

    _assert_bracketed(*_bracket(solve, float(plan.shadow.bed_value[h].sum())))


def test_bed_value_per_day_matches_a_resolve_on_that_day(solved) -> None:  # type: ignore[no-untyped-def]
    shared, capacity, plan = solved
    shadow = plan.shadow
    h, d = np.unravel_index(int(np.argmax(shadow.bed_value)), shadow.bed_value.shape)
    grid = pd.DataFrame(
        [
            {"hospital": name, "date": date, "capacity": capacity[name]}
            for name in shadow.hospitals
            for date in shadow.dates
        ]
    )

    def solve(delta: float) -> RegionalPlan:
        frame = grid.copy()
        frame.loc[(frame.hospital == shadow.hospitals[h]) & (frame.date == shadow.dates[d]), "capacity"] += delta
        return plan_region(shared, frame, CONFIG)

    low, price, high = _bracket(solve, float(shadow.bed_value[h, d]))
    _assert_bracketed(low, price, high)
    assert price > 0.5


def test_surge_room_price_matches_a_resolve_with_a_higher_cap(solved) -> None:  # type: ignore[no-untyped-def]
    shared, capacity, plan = solved
    shadow = plan.shadow
    h = int(np.argmax(shadow.surge_room.sum(axis=1)))
    hospital = shadow.hospitals[h]
    assert shadow.surge_room[h].sum() > 0.1

    def solve(delta: float) -> RegionalPlan:
        caps = {name: 6.0 for name in shadow.hospitals} | {hospital: 6.0 + delta}
        return plan_region(shared, capacity, _replace(CONFIG, max_surge=caps))

    _assert_bracketed(*_bracket(solve, float(shadow.surge_room[h].sum())))


def test_transfer_slot_price_matches_a_resolve_with_a_wider_corridor(solved) -> None:  # type: ignore[no-untyped-def]
    shared, capacity, plan = solved
    corridors = plan.shadow.corridor_totals()
    row = corridors.iloc[0]
    pair = (row.from_hospital, row.to_hospital)
    assert row.saving_one_more_slot_every_day > 0.1

    def solve(delta: float) -> RegionalPlan:
        return plan_region(shared, capacity, _replace(CONFIG, pair_limits={pair: CONFIG.transfer_limit + delta}))

    low, price, high = _bracket(solve, float(row.saving_one_more_slot_every_day))
    _assert_bracketed(low, price, high)
    # smooth here: the central difference is the price
    assert price == pytest.approx((low + high) / 2, abs=0.05)


def test_unbound_resources_have_no_price(solved) -> None:  # type: ignore[no-untyped-def]
    shared, capacity, _ = solved
    plan = plan_region(shared, capacity, _replace(CONFIG, surge_pool=10_000.0, max_surge=None, transfer_limit=math.inf))
    shadow = plan.shadow
    assert shadow.pool_price.max() == pytest.approx(0.0, abs=1e-9)
    assert shadow.surge_room.max() == pytest.approx(0.0, abs=1e-9)
    assert shadow.binding().empty
    assert shadow.corridor_totals().empty
    # with an unlimited pool every hospital-day with surge has a bed worth exactly a surge bed
    used = shadow.surge > 1e-6
    assert used.any()
    assert np.allclose(shadow.bed_value[used], CONFIG.surge_cost, atol=1e-6)


def test_reduced_costs_explain_who_receives_surge(solved) -> None:  # type: ignore[no-untyped-def]
    # Where a hospital receives surge below its cap, one more bed there is worth exactly a surge bed plus
    # the pool's price that day; where it receives none, at most that. This is the sentence the CLI prints.
    shadow = solved[2].shadow
    threshold = shadow.surge_cost + shadow.pool_price[None, :]
    interior = (shadow.surge > 1e-6) & (shadow.surge < shadow.surge_limit[:, None] - 1e-6)
    assert interior.any()
    assert np.allclose(shadow.bed_value[interior], threshold.repeat(len(shadow.hospitals), 0)[interior], atol=1e-6)
    none = shadow.surge <= 1e-9
    assert (shadow.bed_value[none] <= threshold.repeat(len(shadow.hospitals), 0)[none] + 1e-6).all()
    text = "\n".join(regional_reasons(solved[2]))
    assert "surge pool (12 beds a day) is used up" in text
    assert "reach their limit (2 patient-days a day)" in text


def _replace(config: RegionalConfig, **changes: object) -> RegionalConfig:
    from dataclasses import replace

    return replace(config, **changes)  # type: ignore[arg-type]


# ------------------------------------------------------------------ the hospital plan
@pytest.mark.parametrize(
    ("under", "over", "basis"),
    [
        (1.0, 1.0, "the forecast P50"),
        (3.0, 1.0, "interpolated between the forecast P50 and P90"),
        (10.0, 1.0, "beyond the forecast P90: normal tail fitted to P10-P90"),
        (1.0, 19.0, "below the forecast P10: normal tail fitted to P10-P90"),
    ],
)
def test_newsvendor_plan_states_its_critical_ratio_and_quantile(under: float, over: float, basis: str) -> None:
    frame = forecast_frame({("H", "ICU"): [(8.0, 10.0, 14.0)] * 2})
    capacity = pd.DataFrame({"unit": ["ICU"], "beds": [40]})
    config = PlanConfig(costs=UnitCosts(under, over))
    plan = plan_hospital(frame, capacity, config)
    ratio = under / (under + over)
    assert set(plan["quantile_basis"]) == {basis}
    sigma = 6.0 / (2 * ndtri(0.9))  # the normal tail fitted to P10 = 8 and P90 = 14
    expected = {0.5: 10.0, 0.75: 10 + 0.25 / 0.4 * 4, 10 / 11: 14 + sigma * (ndtri(10 / 11) - ndtri(0.9))}
    expected[0.05] = 8 - sigma * (ndtri(0.95) - ndtri(0.9))
    assert plan["demand_at_critical_ratio"].iloc[0] == pytest.approx(expected[ratio], abs=1e-6)
    assert plan["reason"].iloc[0].startswith(f"{plan['newsvendor_beds'].iloc[0]} = P{100 * ratio:.3g} of demand")
    words = hospital_plan_reasons(plan, config)[0]
    assert f"critical ratio is {under:g}/({under:g}+{over:g}) = {ratio:.3f}" in words
    assert basis in words


def test_capped_plan_says_so() -> None:
    frame = forecast_frame({("H", "ICU"): [(8.0, 10.0, 14.0)]})
    plan = plan_hospital(frame, pd.DataFrame({"unit": ["ICU"], "beds": [12]}))
    assert plan["reason"].iloc[0] == "capped at 12 physical beds (the P90.9 of demand, 14.1, needs 15)"
    assert "capped at the 12 physical beds on 1 day(s)" in hospital_plan_reasons(plan)[0]


def test_quantile_basis_clamp_tail() -> None:
    assert (
        quantile_basis(np.array([0.1, 0.5, 0.9]), 0.95, "clamp")
        == "beyond the forecast P90: clamped to it (--tail clamp)"
    )


# ------------------------------------------------------------------ the commands
def test_allocate_prints_and_writes_why(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from medalloc.cli import app
    from medalloc_core.allocation.forecast_io import write_forecast

    forecast = write_forecast(forecast_frame({("H000", "ICU"): [(8.0, 10.0, 14.0)] * 2}), tmp_path / "f.csv")
    (tmp_path / "cap.csv").write_text("unit,beds\nICU,12\n")
    args = [
        "allocate",
        "--forecast",
        str(forecast),
        "--capacity",
        str(tmp_path / "cap.csv"),
        "--out",
        str(tmp_path / "p"),
    ]
    result = CliRunner().invoke(app, [*args, "--under-cost", "3", "--over-cost", "1"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "the critical ratio is 3/(3+1) = 0.750: staff to the P75 of census demand" in said
    assert "interpolated between the forecast P50 and P90" in said
    text = (tmp_path / "p" / "plan_explanation.txt").read_text()
    assert "critical ratio is 3/(3+1) = 0.750" in text
    plan = pd.read_csv(tmp_path / "p" / "plan.csv")
    assert plan["reason"].tolist() == ["capped at 12 physical beds (the P75 of demand, 12.5, needs 13)"] * 2


def test_allocate_region_reports_binding_constraints_and_shadow_prices(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from medalloc.cli import app
    from medalloc_core.allocation.regional import write_shared

    shared, capacity = _region()
    capacity = {h: float(round(c)) for h, c in capacity.items()}  # a capacity table holds whole beds
    path = write_shared(shared, tmp_path / "shared.csv")
    (tmp_path / "cap.csv").write_text(
        "hospital,beds,staffed\n" + "".join(f"{h},{c + 6:.0f},{c:.0f}\n" for h, c in capacity.items())
    )
    args = ["allocate-region", "--forecast", str(path), "--capacity", str(tmp_path / "cap.csv"), "--out"]
    options = ["--pool", "12", "--scenarios", "15", "--neighbours", "2", "--transfer-limit", "2", "--seed", "3"]
    result = CliRunner().invoke(app, [*args, str(tmp_path / "r"), *options])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "Binding constraints" in said and "surge pool" in said and "transfer slot" in said
    assert "one more slot every day would save" in said
    binding = pd.read_csv(tmp_path / "r" / "binding_constraints.csv")
    # the same LP as the fixture (same shares, staffed capacities, caps of 6 beds, seed): the same prices
    plan = plan_region(shared, capacity, CONFIG)
    expected = plan.shadow.binding()
    assert len(binding) == len(expected)
    assert binding["shadow_price"].to_numpy() == pytest.approx(expected["shadow_price"].to_numpy(), abs=1e-4)
    corridors = pd.read_csv(tmp_path / "r" / "corridors.csv")
    assert corridors["saving_one_more_slot_every_day"].iloc[0] == pytest.approx(
        plan.shadow.corridor_totals()["saving_one_more_slot_every_day"].iloc[0], abs=1e-4
    )
    days = pd.read_csv(tmp_path / "r" / "hospital_days.csv")
    assert {"value_of_one_more_bed", "surge_at_cap", "value_of_more_surge_room"} <= set(days.columns)
    assert (tmp_path / "r" / "explanation.txt").read_text().startswith("Expected cost")
    bad = CliRunner().invoke(app, [*args, str(tmp_path / "r2"), "--transfer-limit", "-1"])
    assert bad.exit_code == 2 and "--transfer-limit must be" in bad.output
