"""The learned staffing policy: tiny seeded PPO runs that must learn something and repeat exactly under a seed."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

pytest.importorskip("stable_baselines3")
from gymnasium.utils.env_checker import check_env  # noqa: E402

from medalloc_core.allocation.env import EnvCosts, HospitalBedEnv, NewsvendorPolicy, Policy, run_episode  # noqa: E402
from medalloc_core.allocation.learned import (  # noqa: E402
    PolicyView,
    PPOSettings,
    RandomPolicy,
    StaffingEnv,
    continue_training,
    train_policy,
)
from tests.allocation_fixtures import LEVELS, seasonal_poisson_census  # noqa: E402

SMALL = PPOSettings(n_steps=512, batch_size=64, n_epochs=5)
CAPACITY = np.array([14, 45])


def _segments(days: int = 260) -> tuple[Callable[[], HospitalBedEnv], Callable[[], HospitalBedEnv]]:
    """Training days and later, held-out days of one hospital with an honest (noisy, calibrated) forecast."""
    demand = seasonal_poisson_census(days, {"ICU": 8.0, "medical": 30.0}, seed=5)
    rng = np.random.default_rng(6)
    sd = np.sqrt(np.maximum(demand, 1.0))
    median = demand + 0.5 * sd * rng.standard_normal(demand.shape)  # a forecast that is off, as real ones are
    z = np.array([-1.2816, 0.0, 1.2816])
    forecasts = np.maximum(median[..., None] + 0.9 * sd[..., None] * z, 0.0)[:, :, None, :]  # (T, U, 1, 3)
    split = int(0.6 * days)

    def segment(lo: int, hi: int) -> Callable[[], HospitalBedEnv]:
        return lambda: HospitalBedEnv(
            demand[lo:hi],
            CAPACITY,
            forecasts=forecasts[lo:hi],
            quantile_levels=LEVELS,
            costs=EnvCosts(10.0, 1.0),
            episode_days=21,
        )

    return segment(0, split), segment(split, days)


def _mean_cost(env: HospitalBedEnv, policy: Policy, seeds: range) -> float:
    return float(np.mean([run_episode(env, policy, s).total_cost for s in seeds]))


def test_trained_policy_beats_random_and_its_untrained_self_on_held_out_days() -> None:
    train, test = _segments()
    held_out = range(900, 912)  # evaluation seeds and days training never saw
    trained = train_policy(train, mode="residual", steps=6144, seed=0, settings=SMALL)
    untrained = train_policy(train, mode="residual", steps=0, seed=0, settings=SMALL)
    env = test()
    costs = {
        "trained": _mean_cost(env, trained, held_out),
        "untrained": _mean_cost(env, untrained, held_out),
        "random": _mean_cost(env, RandomPolicy(tuple(CAPACITY.tolist()), seed=1), held_out),
        "newsvendor": _mean_cost(env, NewsvendorPolicy(LEVELS, tuple(CAPACITY.tolist())), held_out),
    }
    assert isinstance(trained, Policy)
    assert costs["trained"] < 0.5 * costs["random"], costs
    assert costs["trained"] < 0.5 * costs["untrained"], costs
    # a few thousand days of experience already bring it near the newsvendor rule on days it never saw
    assert costs["trained"] < 1.3 * costs["newsvendor"], costs


def test_training_is_deterministic_under_a_seed() -> None:
    train, test = _segments()
    runs = [train_policy(train, mode="absolute", steps=1024, seed=s, settings=SMALL) for s in (3, 3, 4)]
    first, again, other = (r.parameters() for r in runs)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert any(not np.array_equal(first[k], other[k]) for k in first)
    env = test()
    assert run_episode(env, runs[0], 7) == run_episode(env, runs[1], 7)
    # training in chunks of whole rollouts gives the same policy (the benchmark's learning curve relies on it)
    chunked = continue_training(train_policy(train, mode="absolute", steps=512, seed=3, settings=SMALL), 512)
    assert chunked.steps == 1024
    assert all(np.array_equal(first[k], v) for k, v in chunked.parameters().items())


def test_actions_map_to_beds_as_documented() -> None:
    observation = {
        "census": np.array([9.0, 30.0]),
        "recent_census": np.zeros((2, 7)),
        "recent_admissions": np.zeros((2, 7)),
        "forecast": np.array([[[8.0, 10.0, 12.0]], [[28.0, 31.0, 35.0]]]),
        "day_of_week": 2,
    }
    residual = PolicyView(CAPACITY, LEVELS, "residual")
    assert residual.action_space.nvec.tolist() == [21, 21]
    assert residual.beds(np.array([10, 10]), observation).tolist() == [10, 31]  # offset 0: the median
    # median + a × 2 × (P90 - P10): choice 12 -> a = 0.2: 10 + 0.2 × 2 × 4 = 11.6 -> 12;
    # choice 5 -> a = -0.5: 31 - 0.5 × 2 × 7 = 24
    assert residual.beds(np.array([12, 5]), observation).tolist() == [12, 24]
    assert residual.beds(np.array([20, 20]), observation).tolist() == [14, 45]  # never above physical beds
    assert residual.beds(np.array([0, 0]), observation).tolist() == [2, 17]  # a = -1: median - 2 spreads
    assert residual.beds(np.array([0]), {**observation, "forecast": np.array([[[1.0, 2.0, 3.0]]])})[0] == 0  # not < 0
    absolute = PolicyView(CAPACITY, LEVELS, "absolute")
    assert absolute.action_space.nvec.tolist() == [15, 46]  # the environment's own action: 0..beds
    assert absolute.beds(np.array([7, 22]), observation).tolist() == [7, 22]
    vector = residual.vector(observation)
    assert vector.shape == (residual.size,) and vector[-7:].tolist() == [0, 0, 1, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="residual action needs forecast quantiles"):
        PolicyView(CAPACITY, (), "residual")


def test_the_training_environment_passes_check_env() -> None:
    train, _ = _segments(120)
    check_env(StaffingEnv(train(), "residual"), skip_render_check=True)
