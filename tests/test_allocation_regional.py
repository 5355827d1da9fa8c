"""Regional LP: small instances solved by hand, input checks, DP sharing and the release hook."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from medalloc_core.allocation.regional import (
    RegionalConfig,
    RegionalSolveError,
    draw_scenarios,
    gaussian_sigma,
    hospital_totals,
    laplace_scale,
    plan_region,
    share_forecast,
    write_regional_plan,
)
from tests.allocation_fixtures import LEVELS, forecast_frame

NEAR = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])  # every pair allowed


def shared(demand: dict[str, list[float]], start: str = "2026-03-02") -> pd.DataFrame:
    """Degenerate (known) demand: every quantile equals the value, so each scenario is the truth."""
    rows = []
    for hospital, days in demand.items():
        for i, d in enumerate(days):
            for q in LEVELS:
                rows.append(
                    {"hospital": hospital, "date": pd.Timestamp(start) + pd.Timedelta(days=i), "q": q, "value": d}
                )
    return pd.DataFrame(rows)


def config(**kw: object) -> RegionalConfig:
    base = dict(under_cost=10.0, surge_cost=1.0, transfer_cost=2.0, transfer_cost_per_km=0.0, scenarios=1, neighbours=2)
    base.update(kw)
    return RegionalConfig(**base)  # type: ignore[arg-type]


def test_two_hospitals_transfer_when_there_is_no_pool() -> None:
    # A needs 12 with 10 beds, B needs 5 with 10. No pool: moving 2 patient-days costs 2*2 = 4,
    # leaving them unserved 2*10 = 20. Optimum: transfer 2, cost 4.
    plan = plan_region(shared({"A": [12], "B": [5]}), {"A": 10, "B": 10}, config(surge_pool=0), distances=NEAR[:2, :2])
    assert plan.costs["total"] == pytest.approx(4.0)
    assert plan.costs["unserved"] == pytest.approx(0.0)
    t = plan.transfers
    assert len(t) == 1 and (t["from_hospital"].iloc[0], t["to_hospital"].iloc[0]) == ("A", "B")
    assert t["expected_patients"].iloc[0] == pytest.approx(2.0)


def test_two_hospitals_prefer_surge_when_cheaper_than_transfer() -> None:
    # Same, with a pool of 3: a surge bed-day (1) beats a transfer (2): surge 2 to A, cost 2.
    plan = plan_region(shared({"A": [12], "B": [5]}), {"A": 10, "B": 10}, config(surge_pool=3), distances=NEAR[:2, :2])
    assert plan.costs["total"] == pytest.approx(2.0)
    surge = plan.surge.set_index("hospital")["surge_beds"]
    assert surge["A"] == pytest.approx(2.0) and surge["B"] == pytest.approx(0.0)
    assert plan.transfers.empty


def test_three_hospitals_pool_then_transfers() -> None:
    # A: 15 on 10 beds (+5), B: 13 on 10 (+3), C: 6 on 10 (4 free). Pool 4.
    # Unserved (10) is dearer than either remedy, so all 8 extra patient-days are covered:
    # 4 by surge (4 * 1) and 4 by transfers into C (4 * 2): total 12, nothing unserved.
    plan = plan_region(
        shared({"A": [15], "B": [13], "C": [6]}), {"A": 10, "B": 10, "C": 10}, config(surge_pool=4), distances=NEAR
    )
    assert plan.costs["total"] == pytest.approx(12.0)
    assert plan.costs["surge"] == pytest.approx(4.0) and plan.costs["transfer"] == pytest.approx(8.0)
    assert plan.hospital_days["expected_unserved"].sum() == pytest.approx(0.0, abs=1e-7)
    assert plan.transfers.groupby("to_hospital")["expected_patients"].sum().to_dict() == pytest.approx({"C": 4.0})


def test_pool_is_per_day_and_moves_between_hospitals() -> None:
    # Day 1: A needs 3 extra; day 2: B needs 3 extra; pool 3 per day, no transfers allowed.
    # Surge goes to A on day 1 and to B on day 2: cost 6, nothing unserved.
    plan = plan_region(
        shared({"A": [13, 8], "B": [8, 13]}),
        {"A": 10, "B": 10},
        config(surge_pool=3, neighbours=0),
        distances=NEAR[:2, :2],
    )
    s = plan.surge.pivot(index="date", columns="hospital", values="surge_beds").to_numpy()
    np.testing.assert_allclose(s, [[3.0, 0.0], [0.0, 3.0]], atol=1e-7)
    assert plan.costs["total"] == pytest.approx(6.0)


def test_unserved_when_remedies_run_out_and_per_hospital_surge_cap() -> None:
    # A needs 20 on 10 beds; pool 6 but A may take at most 4 and B none; B (10 beds, 9 patients)
    # can take 1 transfer. Surge 4 (4) + transfer 1 (2) + unserved 5 (50) = 56.
    capped = config(surge_pool=6, max_surge={"A": 4.0, "B": 0.0})
    plan = plan_region(shared({"A": [20], "B": [9]}), {"A": 10, "B": 10}, capped, distances=NEAR[:2, :2])
    assert plan.costs["total"] == pytest.approx(56.0)
    assert plan.hospital_days.set_index("hospital")["expected_unserved"]["A"] == pytest.approx(5.0)
    # Let B take surge too: the 2 pool beds A cannot use go to B, which then takes 3 transfers
    # (surge + transfer = 3 < 10 per patient-day): 4 + 2 surge, 3 * 2 transfers, 3 * 10 unserved = 42.
    open_b = config(surge_pool=6, max_surge={"A": 4.0})
    plan = plan_region(shared({"A": [20], "B": [9]}), {"A": 10, "B": 10}, open_b, distances=NEAR[:2, :2])
    assert plan.costs["total"] == pytest.approx(42.0)
    assert plan.surge.set_index("hospital")["surge_beds"].to_dict() == pytest.approx({"A": 4.0, "B": 2.0})


def test_stochastic_surge_is_the_sample_newsvendor_order_statistic() -> None:
    # One hospital, uncertain demand, K = 25 scenarios, surge 1 vs unserved 10. The LP minimises
    # s + (10/25) * sum_k (D_k - C - s)+; its slope is 1 - 0.4 * #{D_k > C + s}, which turns
    # non-negative once at most 2 scenarios lie above: C + s* = the 23rd smallest draw.
    frame = pd.concat([forecast_frame({("A", "ward"): [(30.0, 40.0, 55.0)]})], ignore_index=True)
    share = hospital_totals(frame)
    cfg = RegionalConfig(surge_pool=100, under_cost=10, surge_cost=1, scenarios=25, seed=3, neighbours=0)
    plan = plan_region(share, {"A": 20}, cfg)
    draws = draw_scenarios(np.array(LEVELS), np.array([[[30.0, 40.0, 55.0]]]), scenarios=25, correlation=0.5, seed=3)
    assert 20 + plan.surge["surge_beds"].iloc[0] == pytest.approx(np.sort(draws.ravel())[22])


def test_load_never_exceeds_capacity_plus_surge() -> None:
    rng = np.random.default_rng(1)
    frames = []
    for h in range(6):
        mid = rng.uniform(20, 40, size=3)
        frames.append(forecast_frame({(f"H{h}", "ward"): [(m * 0.8, m, m * 1.3) for m in mid]}))
    share = hospital_totals(pd.concat(frames, ignore_index=True))
    plan = plan_region(share, {f"H{h}": 28 for h in range(6)}, RegionalConfig(surge_pool=10, scenarios=8, neighbours=2))
    assert (plan.load <= plan.capacity_with_surge[None] + 1e-6).all()
    assert (plan.load >= -1e-6).all()
    assert (plan.surge.groupby("date")["surge_beds"].sum() <= 10 + 1e-6).all()
    assert (plan.surge.groupby("date")["surge_beds_whole"].sum() <= 10).all()
    again = plan_region(
        share, {f"H{h}": 28 for h in range(6)}, RegionalConfig(surge_pool=10, scenarios=8, neighbours=2)
    )
    assert again.costs == plan.costs  # same seed, same numbers


@pytest.mark.parametrize(
    ("frame", "capacity", "message"),
    [
        (shared({"A": [5]}).iloc[0:0], {"A": 10}, "no hospitals"),
        (shared({"A": [5]}).assign(value=np.nan), {"A": 10}, "NaN"),
        (shared({"A": [5]}), {"A": -1}, "capacities must be finite and >= 0"),
        (shared({"A": [5]}), {"B": 3}, r"no capacity for hospital\(s\) \['A'\]"),
        (shared({"A": [5]}).assign(value=[7.0, 5.0, 6.0]), {"A": 10}, "quantiles cross"),
        (shared({"A": [5, 6], "B": [5]}), {"A": 10, "B": 10}, "lacks quantile levels"),
    ],
)
def test_bad_inputs_are_refused_before_solving(frame: pd.DataFrame, capacity: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_region(frame, capacity, config())


def test_solver_failure_reports_highs_status() -> None:
    # A negative per-hospital cap makes the bounds infeasible: HiGHS, not our checks, refuses.
    with pytest.raises(RegionalSolveError, match=r"status 2.*[Ii]nfeasible"):
        plan_region(shared({"A": [5]}), {"A": 10}, config(max_surge=-1.0))


def test_writer_refuses_to_overwrite(tmp_path) -> None:  # type: ignore[no-untyped-def]
    plan = plan_region(shared({"A": [12], "B": [5]}), {"A": 10, "B": 10}, config(surge_pool=0), distances=NEAR[:2, :2])
    paths = write_regional_plan(plan, tmp_path)
    assert {p.name for p in paths} == {"surge.csv", "transfers.csv", "hospital_days.csv", "costs.csv"}
    assert pd.read_csv(tmp_path / "costs.csv")["total"].iloc[0] == pytest.approx(4.0)
    with pytest.raises(FileExistsError):
        write_regional_plan(plan, tmp_path)


# ------------------------------------------------------------------ what is shared, with DP
def test_hospital_shares_only_census_quantiles_per_day() -> None:
    frame = forecast_frame({("A", "ICU"): [(1.0, 2.0, 3.0)], ("A", "ward"): [(10.0, 20.0, 30.0)]})
    frame = pd.concat([frame, frame.assign(target="admissions", value=99.0)], ignore_index=True)
    out = share_forecast(frame, epsilon=None, seed=0)
    assert list(out.columns) == ["hospital", "date", "q", "value"]
    assert out["value"].tolist() == [11.0, 22.0, 33.0]  # summed over units, census only


def test_release_hook_is_told_epsilon_before_release_and_can_stop_it() -> None:
    frame = forecast_frame({("A", "ward"): [(10.0, 20.0, 30.0)] * 5})
    spent: list[float] = []
    noisy = share_forecast(frame, epsilon=0.5, seed=1, on_release=spent.append)
    assert spent == [0.5]
    assert (np.diff(noisy["value"].to_numpy().reshape(5, 3), axis=1) >= 0).all()  # re-sorted
    assert (noisy["value"] >= 0).all()
    pd.testing.assert_frame_equal(noisy, share_forecast(frame, epsilon=0.5, seed=1))

    def refuse(epsilon: float) -> None:
        raise RuntimeError(f"budget exceeded by {epsilon}")

    with pytest.raises(RuntimeError, match="budget exceeded"):
        share_forecast(frame, epsilon=0.5, seed=1, on_release=refuse)
    assert share_forecast(frame, epsilon=None, seed=1, on_release=refuse) is not None  # no noise, no spend


def test_laplace_noise_has_the_stated_scale() -> None:
    # 2000 days x 1 level, sensitivity 1 per value: L1 sensitivity 2000, epsilon 2000 -> scale 1.
    # For Laplace(b), E|noise| = b.
    rows = [
        {
            "hospital": "A",
            "unit": "ward",
            "date": pd.Timestamp("2026-01-01") + pd.Timedelta(days=i),
            "target": "census",
            "q": 0.5,
            "value": 500.0,
        }
        for i in range(2000)
    ]
    noisy = share_forecast(pd.DataFrame(rows), epsilon=2000.0, seed=5)
    assert laplace_scale(epsilon=2000.0, n_values=2000) == 1.0
    assert np.mean(np.abs(noisy["value"] - 500.0)) == pytest.approx(1.0, rel=0.08)


def test_analytic_gaussian_sigma_reference_and_bound() -> None:
    # Balle & Wang (2018): epsilon = 1, delta = 1e-5, sensitivity 1 -> sigma ~= 3.73, below the
    # classic sqrt(2 ln(1.25/delta)) = 4.84.
    sigma = gaussian_sigma(epsilon=1.0, delta=1e-5, n_values=1)
    assert sigma == pytest.approx(3.7306, abs=1e-3)
    assert sigma < math.sqrt(2 * math.log(1.25 / 1e-5))
    assert gaussian_sigma(epsilon=1.0, delta=1e-5, n_values=4) == pytest.approx(2 * sigma, rel=1e-6)


def test_allowed_pairs_pair_limits_and_distance_restrict_transfers() -> None:
    # A needs 14 on 10 beds; B and C have 5 free each. Only A->C is allowed, at most 3 a day:
    # 3 transfers (6) + 1 unserved (10) = 16.
    demand = shared({"A": [14], "B": [5], "C": [5]})
    caps = {"A": 10, "B": 10, "C": 10}
    only_c = config(surge_pool=0, allowed_pairs=(("A", "C"),), pair_limits={("A", "C"): 3.0})
    plan = plan_region(demand, caps, only_c, distances=NEAR)
    assert plan.costs["total"] == pytest.approx(16.0)
    assert set(plan.transfers["to_hospital"]) == {"C"}
    # Everyone 50 km apart, transfers capped at 40 km: nothing can move, 4 unserved = 40.
    far = np.full((3, 3), 50.0) - 50.0 * np.eye(3)
    plan = plan_region(demand, caps, config(surge_pool=0, max_transfer_km=40.0), distances=far)
    assert plan.costs["total"] == pytest.approx(40.0) and plan.transfers.empty
    with pytest.raises(ValueError, match=r"allowed_pairs name hospital\(s\) \['Z'\]"):
        plan_region(demand, caps, config(allowed_pairs=(("A", "Z"),)), distances=NEAR)


def test_capacity_can_change_by_day() -> None:
    # A has 10 beds on day 1 and 12 on day 2, demand 12 both days, pool 5: surge 2 then 0.
    by_day = pd.DataFrame(
        {"hospital": ["A", "A"], "date": pd.to_datetime(["2026-03-02", "2026-03-03"]), "capacity": [10, 12]}
    )
    plan = plan_region(shared({"A": [12, 12]}), by_day, config(surge_pool=5, neighbours=0))
    np.testing.assert_allclose(plan.surge["surge_beds"], [2.0, 0.0], atol=1e-7)


def test_unseeded_release_differs_each_time() -> None:
    frame = forecast_frame({("A", "ward"): [(10.0, 20.0, 30.0)] * 5})
    a = share_forecast(frame, epsilon=1.0, seed=None)
    b = share_forecast(frame, epsilon=1.0, seed=None)
    assert not np.allclose(a["value"], b["value"])


def _smooth_shared(hospital: str, base: float, days: int = 14) -> pd.DataFrame:
    rows = []
    for d in range(days):
        median = base + 5 * np.sin(d / 2)
        for q, z in ((0.1, -1.28), (0.5, 0.0), (0.9, 1.28)):
            rows.append({"hospital": hospital, "date": pd.Timestamp("2026-03-02") + pd.Timedelta(days=d), "q": q,
                         "value": median + 8 * z})  # fmt: skip
    return pd.DataFrame(rows)


def test_denoising_the_shares_brings_them_closer_to_the_truth_and_widens_the_band() -> None:
    from medalloc_core.allocation.regional import denoise_shared

    truth = _smooth_shared("H003", 150.0)
    rng = np.random.default_rng(7)
    noisy = truth.assign(value=truth["value"] + rng.normal(0, 40.0, len(truth)))
    adjusted, info = denoise_shared(noisy, {"H003": 40.0})
    key = ["hospital", "date", "q"]
    t = truth.sort_values(key)["value"].to_numpy()
    n = noisy.sort_values(key)["value"].to_numpy()
    a = adjusted.sort_values(key)
    medians = a[a["q"] == 0.5]["value"].to_numpy()
    true_medians = truth.sort_values(key)[truth.sort_values(key)["q"] == 0.5]["value"].to_numpy()
    noisy_medians = n[1::3]
    assert np.abs(medians - true_medians).mean() < 0.5 * np.abs(noisy_medians - true_medians).mean()
    width = a[a["q"] == 0.9]["value"].to_numpy() - a[a["q"] == 0.1]["value"].to_numpy()
    assert (width >= 2 * 1.28 * info["H003"]["sd_left"] - 1e-9).all()  # the noise left is in the band
    assert info["H003"]["shrink_weight"] < 0.1  # sd 40 against a day-to-day signal of about 4
    assert len(t) == len(a)
    # a hospital without noise is untouched
    same, _ = denoise_shared(truth, {"H999": 40.0})
    pd.testing.assert_frame_equal(
        same.sort_values(key).reset_index(drop=True), truth.sort_values(key).reset_index(drop=True)
    )


def test_the_plan_warns_when_the_noise_is_larger_than_a_hospitals_margin() -> None:
    shared = pd.concat([_smooth_shared("A", 150.0), _smooth_shared("B", 60.0)], ignore_index=True)
    capacity = {"A": 160.0, "B": 120.0}  # A's margin ~10 beds, B's ~60
    config = RegionalConfig(surge_pool=10, scenarios=5, noise_sd={"A": 30.0, "B": 30.0})
    plan = plan_region(shared, capacity, config)
    assert len(plan.warnings) == 1 and plan.warnings[0].startswith("A:") and "noise sd 30" in plan.warnings[0]
    quiet = plan_region(shared, capacity, RegionalConfig(surge_pool=10, scenarios=5, noise_sd={"A": 2.0, "B": 2.0}))
    assert quiet.warnings == ()
    assert plan_region(shared, capacity, RegionalConfig(surge_pool=10, scenarios=5)).warnings == ()
