"""The bed-management environment: cost accounting by hand, check_env, policies on common ground."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("gymnasium")
from gymnasium.utils.env_checker import check_env  # noqa: E402

from medalloc_core.allocation.env import (  # noqa: E402
    CapacityPolicy,
    EnvCosts,
    HospitalBedEnv,
    LastWeekPolicy,
    NewsvendorPolicy,
    Policy,
    run_episode,
)
from medalloc_core.allocation.newsvendor import PlanConfig, UnitCosts, plan_hospital  # noqa: E402
from tests.allocation_fixtures import LEVELS, forecast_frame, seasonal_poisson_census  # noqa: E402


@dataclass
class Scripted:
    """Plays a fixed list of actions: the policy of a hand-worked example."""

    actions: list[list[int]]
    i: int = 0

    def __call__(self, observation: dict) -> np.ndarray:  # type: ignore[type-arg]
        action = np.array(self.actions[self.i])
        self.i += 1
        return action


def test_scripted_episode_costs_match_a_hand_computation() -> None:
    # One unit, 6 physical beds; 7 history days (last one: census 4), then demand 5, 8, 3.
    demand = np.array([[3, 3, 4, 4, 3, 4, 4, 5, 8, 3]], dtype=float).T
    env = HospitalBedEnv(
        demand, np.array([6]), costs=EnvCosts(under_cost=10, over_cost=1, change_cost=0.5), episode_days=3
    )
    # Actions 6, 9 (clipped to 6), 2. Staffing before the episode = yesterday's census 4.
    # day 1: D=5, s=6 -> idle 1 -> 1;  change |6-4|=2 -> 1.0   => 2.0
    # day 2: D=8, s=6 -> unserved 2 -> 20; change 0             => 20.0
    # day 3: D=3, s=2 -> unserved 1 -> 10; change |2-6|=4 -> 2.0 => 12.0
    result = run_episode(env, Scripted([[6], [9], [2]]), seed=0)
    assert result.daily_cost == (2.0, 20.0, 12.0)
    assert result.total_cost == 34.0
    assert (result.overflow_days, result.idle_bed_days, result.staffing_changes, result.days) == (3.0, 1.0, 6.0, 3)


def test_episode_cost_matches_an_independent_numpy_computation() -> None:
    demand = seasonal_poisson_census(60, {"ICU": 9.0, "medical": 35.0}, seed=2)
    capacity = np.array([12, 44])
    costs = EnvCosts(under_cost=8, over_cost=1.5, change_cost=0.25)
    env = HospitalBedEnv(demand, capacity, costs=costs)
    result = run_episode(env, LastWeekPolicy(buffer=1), seed=0)
    days = np.arange(7, 60)
    staffed = np.minimum(np.ceil(demand[days - 7]) + 1, capacity)
    d = demand[days]
    previous = np.vstack([np.minimum(np.ceil(demand[6]), capacity), staffed[:-1]])
    expected = (
        costs.under_cost * np.maximum(d - staffed, 0).sum()
        + costs.over_cost * np.maximum(staffed - d, 0).sum()
        + costs.change_cost * np.abs(staffed - previous).sum()
    )
    assert result.total_cost == pytest.approx(expected)
    assert result.overflow_days == pytest.approx(np.maximum(d - staffed, 0).sum())


def _forecast_env(days: int = 50, episode_days: int | None = 20) -> tuple[HospitalBedEnv, np.ndarray]:
    demand = seasonal_poisson_census(days, {"ICU": 8.0, "medical": 30.0}, seed=0)
    spread = np.sqrt(np.maximum(demand, 1.0)) * 1.2816
    forecasts = np.stack([demand - spread, demand, demand + spread], axis=-1)[:, :, None, :]  # (T, U, 1, 3)
    capacity = np.array([12, 40])
    env = HospitalBedEnv(
        demand, capacity, forecasts=np.maximum(forecasts, 0), quantile_levels=LEVELS, episode_days=episode_days
    )
    return env, capacity


def test_passes_gymnasium_check_env_with_and_without_forecasts() -> None:
    env, _ = _forecast_env()
    check_env(env, skip_render_check=True)
    check_env(
        HospitalBedEnv(seasonal_poisson_census(20, {"ward": 10.0}, seed=1), np.array([15])), skip_render_check=True
    )


def test_same_seed_same_episode_and_policies_share_the_protocol() -> None:
    env, capacity = _forecast_env()
    policies: dict[str, Policy] = {
        "newsvendor": NewsvendorPolicy(LEVELS, tuple(capacity.tolist()), under_cost=10, over_cost=1),
        "last_week": LastWeekPolicy(),
        "capacity": CapacityPolicy(tuple(capacity.tolist())),
    }
    results = {name: run_episode(env, p, seed=4) for name, p in policies.items()}
    assert all(isinstance(p, Policy) for p in policies.values())
    assert results["newsvendor"] == run_episode(env, policies["newsvendor"], seed=4)
    # an informative forecast beats both heuristics on the same days
    assert results["newsvendor"].total_cost < results["last_week"].total_cost
    assert results["newsvendor"].total_cost < results["capacity"].total_cost
    assert results["capacity"].overflow_days <= results["last_week"].overflow_days


def test_newsvendor_policy_agrees_with_the_hospital_plan() -> None:
    env, capacity = _forecast_env(episode_days=None)
    obs, _ = env.reset(seed=0)
    tomorrow = obs["forecast"][:, 0, :].astype(float)
    frame = forecast_frame({("H", "ICU"): [tuple(tomorrow[0])], ("H", "medical"): [tuple(tomorrow[1])]})
    plan = plan_hospital(
        frame, pd.DataFrame({"unit": ["ICU", "medical"], "beds": capacity}), PlanConfig(costs=UnitCosts(10, 1))
    )
    policy = NewsvendorPolicy(LEVELS, tuple(capacity.tolist()), under_cost=10, over_cost=1)
    np.testing.assert_array_equal(policy(obs), plan["staffed_beds"].to_numpy())


def test_bad_environment_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="T > 7"):
        HospitalBedEnv(np.ones((5, 1)), np.array([3]))
    with pytest.raises(ValueError, match="capacity"):
        HospitalBedEnv(np.ones((10, 2)), np.array([3]))
    with pytest.raises(ValueError, match="finite"):
        HospitalBedEnv(np.full((10, 1), np.nan), np.array([3]))


def test_from_daily_records() -> None:
    census = seasonal_poisson_census(21, {"ICU": 8.0, "medical": 30.0}, seed=3)
    dates = pd.date_range("2026-01-05", periods=21)  # a Monday
    daily = pd.concat(
        [
            pd.DataFrame(
                {"date": dates, "unit": u, "census": census[:, i].astype(int), "admissions": 2, "capacity": cap}
            )
            for i, (u, cap) in enumerate((("ICU", 12), ("medical", 40)))
        ],
        ignore_index=True,
    ).sample(frac=1.0, random_state=0)  # row order must not matter
    env = HospitalBedEnv.from_daily(daily)
    assert env.units == ["ICU", "medical"]
    np.testing.assert_array_equal(env.capacity, [12, 40])
    np.testing.assert_array_equal(env.demand, census)
    obs, _ = env.reset(seed=0)
    assert obs["day_of_week"] == 0  # day 7 after a Monday is a Monday
    assert obs["recent_admissions"].shape == (2, 7) and (obs["recent_admissions"] == 2).all()


def test_episode_reports_its_demand() -> None:
    demand = np.array([[3, 3, 4, 4, 3, 4, 4, 5, 8, 3]], dtype=float).T
    env = HospitalBedEnv(demand, np.array([6]), episode_days=3)
    assert run_episode(env, CapacityPolicy((6,)), seed=0).demand_days == 16.0
