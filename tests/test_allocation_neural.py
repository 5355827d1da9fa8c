"""The allocation benchmark's neural hook: a real (tiny) DP federation and local-only DP at the same spend."""

from __future__ import annotations

import pandas as pd
import pytest

from medalloc.simulations.benchmarks.allocation import (
    FEDERATED_MIX,
    ZERO_SHOT,
    BenchmarkCosts,
    NeuralSettings,
    _synthetic_region,
    evaluate_plans,
    neural_forecasts,
    oracle_forecast,
)
from medalloc_core.contract import CAPACITY, CENSUS, DATE, UNIT
from medalloc_core.forecast.forecasters.zeroshot import Fracast


@pytest.mark.slow
def test_neural_hook_forecasts_every_unit_day_at_equal_privacy_and_is_scored() -> None:
    horizon = 7
    daily = _synthetic_region(2, 130 + horizon, seed=1)
    daily[DATE] = pd.to_datetime(daily[DATE])
    origin = daily[DATE].max() - pd.Timedelta(days=horizon)
    history = daily[daily[DATE] <= origin]
    truth = daily[daily[DATE] > origin][["hospital", UNIT, DATE, CENSUS]].reset_index(drop=True)
    report: dict[str, object] = {}
    settings = NeuralSettings(rounds=1, model="mlp", init="none", history=14, hidden=8)
    frames = neural_forecasts(history, origin, horizon, seed=0, settings=settings, report=report)
    zero_shot = {ZERO_SHOT, FEDERATED_MIX} if Fracast.available() else set()
    assert set(frames) == {"federated-dp", "local-only-dp"} | zero_shot
    if zero_shot:  # the node's mix lies between the federated model's and fracast's quantiles, level by level
        key = ["hospital", UNIT, DATE, "target", "q"]
        fed, zs, mix = (frames[n].set_index(key)["value"] for n in ("federated-dp", ZERO_SHOT, FEDERATED_MIX))
        low, high = pd.concat([fed, zs], axis=1).min(axis=1), pd.concat([fed, zs], axis=1).max(axis=1)
        assert ((mix >= low - 1e-6) & (mix <= high + 1e-6)).all() and (fed - zs).abs().max() > 0.1
    keys = truth[["hospital", UNIT, DATE]].drop_duplicates()
    for name, frame in frames.items():
        census = frame[frame["target"] == CENSUS]
        covered = census[["hospital", UNIT, DATE]].drop_duplicates()
        assert len(covered.merge(keys)) == len(keys) == len(covered), name
        assert census.groupby(["hospital", UNIT, DATE]).size().eq(3).all()  # P10, P50, P90
    eps = report["epsilon"]
    assert 0 < eps["federated-dp"] < settings.epsilon_budget  # type: ignore[index]
    assert eps["local-only-dp"] == pytest.approx(eps["federated-dp"], rel=1e-6)  # type: ignore[index]
    # same seed, same numbers
    again = neural_forecasts(history, origin, horizon, seed=0, settings=settings)
    pd.testing.assert_frame_equal(again["federated-dp"], frames["federated-dp"])
    capacity = daily.groupby(["hospital", UNIT], as_index=False)[CAPACITY].max().rename(columns={CAPACITY: "beds"})
    table = evaluate_plans(truth, {"oracle": oracle_forecast(truth), **frames}, capacity, BenchmarkCosts(scenarios=3))
    assert (table.set_index("method").loc[["federated-dp", "local-only-dp"], "cost_ratio"] >= 1.0 - 1e-9).all()
