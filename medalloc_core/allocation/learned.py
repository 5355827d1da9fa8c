"""A learned bed-staffing policy: PPO (stable-baselines3) trained in ``HospitalBedEnv``.

Needs the optional extra ``rl`` (gymnasium and stable-baselines3, which reuses the project's
pinned torch). The policy sees what the newsvendor rule sees and a little more: every unit's
current census, its last 7 days of census, the forecast quantiles for tomorrow and the weekday
(all divided by the unit's physical beds, so one network fits units of any size). It acts
through one of two parameterisations:

- ``"absolute"``: the environment's own action, a whole number of staffed beds per unit in
  ``[0, physical beds]`` — the policy must learn the whole mapping from observations to beds;
- ``"residual"``: per unit one of 21 offsets ``a ∈ {-1, -0.9, ..., 1}``; staffed beds = the
  forecast median plus ``a`` times twice the forecast's outer spread (e.g. P90 − P10), rounded
  and clipped to ``[0, beds]`` — the policy learns how far above or below the median to staff,
  which is the question the newsvendor rule answers with its critical ratio.

Both are discrete (categorical policies): staffing is counted in beds, and a Gaussian policy
clipped to a range lets its mean drift past the bound when one side is ten times dearer (seen in
this project's first attempt, where it learned to staff nearly every bed).

Rewards are divided by the hospital's physical beds (a fixed scale, the same for every policy
and seed) so that PPO's default step sizes suit hospitals of any size. A trained policy is a
:class:`~medalloc_core.allocation.env.Policy`: it maps the environment's own observation dict to
staffed beds, so ``run_episode`` compares it with the newsvendor and the heuristics on the same
episodes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

try:
    import gymnasium as gym
    from gymnasium import spaces
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv
except ModuleNotFoundError as exc:  # pragma: no cover - exercised only without the extra
    raise ModuleNotFoundError(
        "medalloc_core.allocation.learned needs gymnasium and stable-baselines3: install the 'rl' extra "
        "(python -m pip install -e '.[rl]')",
        name=exc.name,
    ) from exc

from medalloc_core.allocation.env import HISTORY_DAYS, HospitalBedEnv

logger = logging.getLogger(__name__)

ActionMode = Literal["absolute", "residual"]
ACTION_MODES: tuple[ActionMode, ...] = ("absolute", "residual")
RESIDUAL_SPREADS = 2.0  # a = ±1 staffs the median ± 2 × (outer spread): far past any sensible quantile
RESIDUAL_STEPS = 21  # a ∈ {-1, -0.9, ..., 1}: steps of 0.2 spreads, about half a standard deviation of demand


def _median_index(levels: tuple[float, ...]) -> int:
    return min(range(len(levels)), key=lambda i: abs(levels[i] - 0.5)) if levels else 0


class PolicyView:
    """The observation vector and the action -> beds map shared by training and deployment.

    Parameters
    ----------
    capacity : np.ndarray
        ``(U,)`` physical beds per unit.
    quantile_levels : tuple of float
        The forecast's levels (the environment's ``quantile_levels``); may be empty.
    mode : {"absolute", "residual"}
        How an action becomes staffed beds (see the module docstring).
    """

    def __init__(self, capacity: np.ndarray, quantile_levels: tuple[float, ...], mode: ActionMode) -> None:
        if mode not in ACTION_MODES:
            raise ValueError(f"unknown action mode {mode!r}; choose one of {list(ACTION_MODES)}")
        if mode == "residual" and not quantile_levels:
            raise ValueError("the residual action needs forecast quantiles in the environment")
        self.capacity = np.asarray(capacity, dtype=np.int64)
        self.scale = np.maximum(self.capacity, 1).astype(np.float32)  # (U,)
        self.levels = tuple(quantile_levels)
        self.mode = mode
        self.median = _median_index(self.levels)
        n_units, n_levels = len(self.capacity), max(len(self.levels), 1)
        self.size = n_units * (1 + HISTORY_DAYS + n_levels) + 7

    def vector(self, observation: dict[str, Any]) -> np.ndarray:
        """``(size,)`` float32: census, last 7 days of census and tomorrow's quantiles per unit (÷ beds), weekday."""
        scale = self.scale
        forecast = np.asarray(observation["forecast"], dtype=np.float32)[:, 0, :]  # (U, L): tomorrow
        weekday = np.zeros(7, dtype=np.float32)
        weekday[int(observation["day_of_week"])] = 1.0
        parts = [
            np.asarray(observation["census"], dtype=np.float32) / scale,
            (np.asarray(observation["recent_census"], dtype=np.float32) / scale[:, None]).ravel(),
            (forecast / scale[:, None]).ravel(),
            weekday,
        ]
        return np.concatenate(parts).astype(np.float32)

    @property
    def action_space(self) -> spaces.MultiDiscrete:
        """One discrete choice per unit: an offset step (residual) or a bed count (absolute)."""
        if self.mode == "absolute":
            return spaces.MultiDiscrete(self.capacity + 1)
        return spaces.MultiDiscrete(np.full(len(self.capacity), RESIDUAL_STEPS))

    def offset(self, action: np.ndarray) -> np.ndarray:
        """Residual choice -> ``a`` in [-1, 1] (steps of 0.1)."""
        return -1.0 + 2.0 * np.asarray(action, dtype=np.float64).reshape(-1) / (RESIDUAL_STEPS - 1)

    def beds(self, action: np.ndarray, observation: dict[str, Any]) -> np.ndarray:
        """Staffed beds ``(U,)`` for an action of ``action_space``, as the module docstring says."""
        if self.mode == "absolute":
            raw = np.asarray(action, dtype=np.float64).reshape(-1)
        else:
            forecast = np.asarray(observation["forecast"], dtype=np.float64)[:, 0, :]
            spread = np.maximum(forecast[:, -1] - forecast[:, 0], 1.0)
            raw = forecast[:, self.median] + self.offset(action) * RESIDUAL_SPREADS * spread
        return np.clip(np.rint(raw), 0, self.capacity).astype(np.int64)


class StaffingEnv(gym.Env[np.ndarray, np.ndarray]):
    """``HospitalBedEnv`` as PPO sees it: a flat observation, a discrete choice per unit, scaled reward."""

    metadata = {"render_modes": []}

    def __init__(self, env: HospitalBedEnv, mode: ActionMode) -> None:
        super().__init__()
        self.env = env
        self.view = PolicyView(env.capacity, env.quantile_levels, mode)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(self.view.size,), dtype=np.float32)
        self.action_space = self.view.action_space
        self.reward_scale = float(max(env.capacity.sum(), 1))
        self._last: dict[str, Any] = {}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        # The wrapped environment draws episode starts from its own generator: seed it from ours,
        # so one PPO seed fixes every episode the policy trains on.
        self._last, info = self.env.reset(seed=int(self.np_random.integers(2**31)))
        return self.view.vector(self._last), info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        beds = self.view.beds(action, self._last)
        self._last, reward, terminated, truncated, info = self.env.step(beds)
        return self.view.vector(self._last), reward / self.reward_scale, terminated, truncated, info


@dataclass
class LearnedPolicy:
    """A trained PPO policy as a ``Policy``: the environment's observation dict -> staffed beds (deterministic)."""

    model: PPO
    view: PolicyView
    steps: int
    seed: int

    def __call__(self, observation: dict[str, Any]) -> np.ndarray:
        action, _ = self.model.predict(self.view.vector(observation), deterministic=True)
        return self.view.beds(action, observation)

    def parameters(self) -> dict[str, np.ndarray]:
        """The policy network's weights (for comparing runs and saving without pickle)."""
        return {k: v.detach().cpu().numpy().copy() for k, v in self.model.policy.state_dict().items()}


@dataclass(frozen=True)
class PPOSettings:
    """PPO's hyperparameters: stable-baselines3's defaults, except where a small budget needs smaller batches.

    ``n_steps`` × ``n_envs`` transitions are collected per update (default 2048 × 1, sb3's);
    ``net_arch`` is sb3's default two layers of 64 for policy and value.
    """

    n_steps: int = 2048
    batch_size: int = 64
    n_epochs: int = 10
    learning_rate: float = 3e-4
    gamma: float = 0.99
    n_envs: int = 1
    net_arch: tuple[int, ...] = (64, 64)


def train_policy(
    make_env: Callable[[], HospitalBedEnv],
    *,
    mode: ActionMode = "residual",
    steps: int = 100_000,
    seed: int = 0,
    settings: PPOSettings = PPOSettings(),
) -> LearnedPolicy:
    """Train a PPO policy for ``steps`` environment steps (days) and return it as a ``Policy``.

    Parameters
    ----------
    make_env : callable
        Builds the *training* environment (e.g. the first part of a hospital's history).
        Called once per parallel environment; evaluate on other days and seeds.
    mode : {"absolute", "residual"}
        The action parameterisation.
    steps : int
        Environment steps of training (one step = one day of one hospital).
    seed : int
        Seeds PPO (network initialisation, action noise, minibatches) and the training
        episodes' start days: the same seed gives the same policy on the same machine.
    settings : PPOSettings
        PPO's hyperparameters.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0 (0: the untrained policy), got {steps}")
    torch.set_num_threads(1)  # small networks: more threads only contend, and results then vary by machine
    vec = DummyVecEnv([lambda: StaffingEnv(make_env(), mode) for _ in range(settings.n_envs)])
    vec.seed(seed)
    model = PPO(
        "MlpPolicy",
        vec,
        n_steps=settings.n_steps,
        batch_size=settings.batch_size,
        n_epochs=settings.n_epochs,
        learning_rate=settings.learning_rate,
        gamma=settings.gamma,
        policy_kwargs={"net_arch": list(settings.net_arch)},
        seed=seed,
        device="cpu",
        verbose=0,
    )
    logger.info("training PPO (%s actions) for %d steps, seed %d", mode, steps, seed)
    if steps:
        model.learn(total_timesteps=steps)
    view = vec.envs[0].view  # type: ignore[attr-defined]
    return LearnedPolicy(model=model, view=view, steps=steps, seed=seed)


def continue_training(policy: LearnedPolicy, steps: int) -> LearnedPolicy:
    """Train ``policy`` for ``steps`` more environment steps (in place; returned for chaining).

    Training in chunks gives the same policy as one call for the total (PPO's rollouts and
    minibatches continue from where they stopped), so a learning curve costs no extra training.
    """
    if steps > 0:
        policy.model.learn(total_timesteps=steps, reset_num_timesteps=False)
        policy.steps += steps
    return policy


@dataclass(frozen=True)
class RandomPolicy:
    """Staff a uniformly random number of beds in ``[0, physical beds]`` per unit: the floor any learner must clear."""

    capacity: tuple[int, ...]
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "_rng", np.random.default_rng(self.seed))

    def __call__(self, observation: dict[str, Any]) -> np.ndarray:
        rng: np.random.Generator = self._rng  # type: ignore[attr-defined]
        return rng.integers(0, np.asarray(self.capacity) + 1)
