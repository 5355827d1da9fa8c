"""The allocation benchmark's scoring on cases worked out by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medalloc.simulations.benchmarks.allocation import (
    BenchmarkCosts,
    evaluate_plans,
    forecast_diagnostics,
    oracle_forecast,
    pooled_plans,
    seasonal_naive_forecast,
)


def _truth(days: int = 3) -> pd.DataFrame:
    dates = pd.date_range("2026-03-02", periods=days)
    rows = [
        {"hospital": h, "unit": u, "date": d, "census": c}
        for h, units in {"A": {"ICU": 8, "ward": 30}, "B": {"ward": 20}}.items()
        for u, c in units.items()
        for d in dates
    ]
    return pd.DataFrame(rows)


CAPACITY = pd.DataFrame({"hospital": ["A", "A", "B"], "unit": ["ICU", "ward", "ward"], "beds": [12, 40, 30]})
COSTS = BenchmarkCosts(scenarios=3, neighbours=1, surge_pool=5)


def test_oracle_costs_nothing_and_a_two_bed_buffer_costs_its_idle_beds() -> None:
    truth = _truth()
    buffered = oracle_forecast(truth.assign(census=truth["census"] + 2))
    table = evaluate_plans(truth, {"oracle": oracle_forecast(truth), "buffer": buffered}, CAPACITY, COSTS).set_index(
        "method"
    )
    assert table.loc["oracle", "total_cost"] == pytest.approx(0.0)
    assert table.loc["oracle", "cost_ratio"] == pytest.approx(1.0)
    # 3 units x 3 days x 2 idle beds = 18 idle bed-days at cost 1; nothing overflows, no surge needed
    assert table.loc["buffer", "idle_bd"] == 18.0
    assert table.loc["buffer", "total_cost"] == pytest.approx(18.0)
    # running cost adds c_o per true patient-day: 3 days x 58 patients = 174
    assert table.loc["buffer", "cost_ratio"] == pytest.approx((18.0 + 174.0) / 174.0)


def test_overflow_beyond_physical_beds_is_surged_or_unserved() -> None:
    truth = _truth()
    truth.loc[(truth["hospital"] == "B"), "census"] = 33  # 3 above B's 30 physical beds each day
    table = evaluate_plans(truth, {"oracle": oracle_forecast(truth)}, CAPACITY, COSTS).set_index("method")
    assert table.loc["oracle", "overflow_pd"] == 9.0  # the unit plan cannot staff beyond 30
    # the pool (5/day) covers B's 3 extra patients each day: surge 1 each, nothing unserved
    assert table.loc["oracle", "surge_bd"] == 9.0
    assert table.loc["oracle", "unserved_pd"] == pytest.approx(0.0, abs=1e-7)


def test_seasonal_naive_is_exact_on_a_weekly_periodic_history() -> None:
    dates = pd.date_range("2025-01-01", periods=70)
    pattern = np.array([10, 12, 14, 13, 11, 7, 6])
    history = pd.DataFrame({"hospital": "A", "unit": "ward", "date": dates, "census": pattern[np.arange(70) % 7]})
    forecast = seasonal_naive_forecast(history, dates[-1], horizon=10)
    future = pattern[(np.arange(70, 80)) % 7]
    medians = forecast[forecast["q"] == 0.5].sort_values("date")["value"].to_numpy()
    np.testing.assert_allclose(medians, future)
    assert (forecast.groupby("date")["value"].agg(lambda v: v.max() - v.min()) == 0).all()  # no error, no spread


def test_origins_pool_as_sums_and_the_ratio_is_of_the_sums() -> None:
    """Several origins make one table: costs summed per method, cost / oracle the ratio of the summed running costs
    (an origin with more patient-days weighs more), not the mean of the per-origin ratios."""
    small, large = _truth(), _truth(days=3)
    large["census"] = large["census"] * 3
    tables = []
    for truth in (small, large):
        buffered = oracle_forecast(truth.assign(census=truth["census"] + 2))
        tables.append(evaluate_plans(truth, {"oracle": oracle_forecast(truth), "buffer": buffered}, CAPACITY, COSTS))
    pooled = pooled_plans(tables).set_index("method")
    assert pooled.loc["buffer", "idle_bd"] == sum(float(t.set_index("method").loc["buffer", "idle_bd"]) for t in tables)
    running = {
        m: sum(float(t.set_index("method").loc[m, "running_cost"]) for t in tables) for m in ("oracle", "buffer")
    }
    assert pooled.loc["buffer", "cost_ratio"] == pytest.approx(running["buffer"] / running["oracle"])
    assert pooled.loc["oracle", "cost_ratio"] == pytest.approx(1.0)
    mean_of_ratios = np.mean([float(t.set_index("method").loc["buffer", "cost_ratio"]) for t in tables])
    assert pooled.loc["buffer", "cost_ratio"] != pytest.approx(mean_of_ratios)


def test_diagnostics_tell_a_biased_median_from_a_wide_band() -> None:
    truth = _truth()
    y = truth["census"].to_numpy(dtype=float)
    keys = truth[["hospital", "unit", "date"]]

    def frame(median: np.ndarray, half_width: float) -> pd.DataFrame:
        return pd.concat(
            [
                keys.assign(target="census", q=q, value=median + z * half_width)
                for q, z in ((0.1, -1), (0.5, 0), (0.9, 1))
            ]
        )

    table = forecast_diagnostics(truth, {"biased": frame(y + 3, 1.0), "wide": frame(y, 5.0)}).set_index("method")
    assert table.loc["biased", "bias"] == pytest.approx(3.0) and table.loc["wide", "bias"] == pytest.approx(0.0)
    assert table.loc["biased", "width"] == pytest.approx(2.0) and table.loc["wide", "width"] == pytest.approx(10.0)
    assert table.loc["biased", "coverage"] == 0.0 and table.loc["wide", "coverage"] == 1.0
    assert table.loc["biased", "above_p90"] == 0.0
