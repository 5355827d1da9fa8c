"""A Gymnasium environment of one hospital's daily bed staffing, and policies that run in it.

Needs the optional extra ``rl`` (gymnasium); ``import medalloc_core.allocation`` works without it.

Each step is one day. Before day t the agent sees yesterday's census per unit, the last 7 days
of admissions and census, the forecast quantiles for the next days (if given) and the weekday;
it chooses staffed beds per unit (at most the physical beds). Then day t's demand — the census
the hospital would have had, an exogenous path from data or the synthetic generator — arrives:
``served = min(demand, staffed)``, the rest is unserved (overflow/diversion), empty staffed beds
are idle. Reward = -(c_u · unserved + c_o · idle + c_change · |staffing change|).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

try:
    import gymnasium as gym
    from gymnasium import spaces
except ModuleNotFoundError as exc:  # pragma: no cover - exercised only without the extra
    raise ModuleNotFoundError(
        "medalloc_core.allocation.env needs gymnasium: install the 'rl' extra (python -m pip install -e '.[rl]')",
        name=exc.name,
    ) from exc

from medalloc_core.allocation.newsvendor import BED_TOLERANCE
from medalloc_core.allocation.quantiles import Tail, quantile_at
from medalloc_core.contract import ADMISSIONS, CAPACITY, CENSUS, DATE, UNIT

HISTORY_DAYS = 7  # days of admissions/census the agent sees (one week: the weekly cycle)


@dataclass(frozen=True)
class EnvCosts:
    """Per-day costs: unserved patient-day, idle staffed bed-day, and each bed of staffing change."""

    under_cost: float = 10.0
    over_cost: float = 1.0
    change_cost: float = 0.0  # e.g. agency/rostering friction per bed added or removed

    def __post_init__(self) -> None:
        if min(self.under_cost, self.over_cost, self.change_cost) < 0:
            raise ValueError("costs must be >= 0")


class HospitalBedEnv(gym.Env[dict[str, Any], np.ndarray]):
    """One hospital, U units, daily staffing decisions against an exogenous demand path.

    Parameters
    ----------
    demand : np.ndarray
        (T, U) census per day and unit that would occur with unlimited beds (the demand).
    capacity : np.ndarray
        (U,) physical beds per unit; actions are clipped to it.
    admissions : np.ndarray, optional
        (T, U) admissions per day (shown to the agent); zeros when absent.
    forecasts : np.ndarray, optional
        (T, U, H, L) quantile forecasts known *before* day t for days t..t+H-1, levels
        ``quantile_levels``; zeros when absent.
    quantile_levels : sequence of float, optional
        The L levels of ``forecasts``.
    costs : EnvCosts
    start_weekday : int
        Weekday (0 = Monday) of demand[0].
    episode_days : int, optional
        Days per episode; default all days after the first week. Shorter episodes start at a
        seeded random day.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        demand: np.ndarray,
        capacity: np.ndarray,
        *,
        admissions: np.ndarray | None = None,
        forecasts: np.ndarray | None = None,
        quantile_levels: tuple[float, ...] | list[float] | None = None,
        costs: EnvCosts = EnvCosts(),
        start_weekday: int = 0,
        episode_days: int | None = None,
    ) -> None:
        super().__init__()
        demand = np.asarray(demand, dtype=float)
        if demand.ndim != 2 or demand.shape[0] <= HISTORY_DAYS:
            raise ValueError(f"demand must be (T, U) with T > {HISTORY_DAYS}, got shape {demand.shape}")
        if not np.isfinite(demand).all() or (demand < 0).any():
            raise ValueError("demand must be finite and >= 0")
        n_days, n_units = demand.shape
        capacity = np.asarray(capacity, dtype=np.int64).reshape(-1)
        if capacity.shape != (n_units,) or (capacity < 0).any():
            raise ValueError(f"capacity must be {n_units} non-negative bed counts, got {capacity}")
        self.demand = demand
        self.capacity = capacity
        self.units: list[str] = [f"unit{i}" for i in range(n_units)]  # names, set by from_daily
        self.admissions = np.zeros_like(demand) if admissions is None else np.asarray(admissions, dtype=float)
        if self.admissions.shape != demand.shape:
            raise ValueError(f"admissions must have the demand's shape {demand.shape}")
        if forecasts is not None:
            forecasts = np.asarray(forecasts, dtype=float)
            if forecasts.ndim != 4 or forecasts.shape[:2] != demand.shape or quantile_levels is None:
                raise ValueError("forecasts must be (T, U, H, L) aligned with demand, with quantile_levels given")
            if len(quantile_levels) != forecasts.shape[3]:
                raise ValueError("quantile_levels must list one level per forecast column")
        self.forecasts = forecasts
        self.quantile_levels = tuple(float(q) for q in quantile_levels) if quantile_levels is not None else ()
        self.costs = costs
        self.start_weekday = int(start_weekday)
        available = n_days - HISTORY_DAYS
        self.episode_days = available if episode_days is None else int(episode_days)
        if not 1 <= self.episode_days <= available:
            raise ValueError(f"episode_days must be in [1, {available}], got {episode_days}")
        horizon, n_levels = (forecasts.shape[2], forecasts.shape[3]) if forecasts is not None else (1, 1)
        ceiling = float(max(demand.max(), self.admissions.max(), capacity.max(), 1.0)) * 10
        # Kept typed: gymnasium declares observation_space as a plain Space, which has no items.
        self._forecast_space = spaces.Box(0.0, ceiling, shape=(n_units, horizon, n_levels), dtype=np.float32)
        self.observation_space = spaces.Dict(
            {
                "census": spaces.Box(0.0, ceiling, shape=(n_units,), dtype=np.float32),
                "recent_census": spaces.Box(0.0, ceiling, shape=(n_units, HISTORY_DAYS), dtype=np.float32),
                "recent_admissions": spaces.Box(0.0, ceiling, shape=(n_units, HISTORY_DAYS), dtype=np.float32),
                "forecast": self._forecast_space,
                "day_of_week": spaces.Discrete(7),
            }
        )
        self.action_space = spaces.MultiDiscrete(capacity + 1)
        self._t = HISTORY_DAYS
        self._end = HISTORY_DAYS + self.episode_days
        self._previous = capacity.copy()

    @classmethod
    def from_daily(
        cls, daily: pd.DataFrame, *, capacity: Mapping[str, int] | None = None, **kwargs: Any
    ) -> HospitalBedEnv:
        """Build from one hospital's daily records (contract columns ``date, unit, census``
        [, ``admissions``, ``capacity``]), e.g. ``Hospital.daily`` from the synthetic generator.

        Units are in sorted order (``env.units``); physical beds default to the largest
        ``capacity`` (else census) seen per unit. Missing days are forward-filled.
        """
        frame = daily.assign(**{DATE: pd.to_datetime(daily[DATE])})
        census = frame.pivot_table(index=DATE, columns=UNIT, values=CENSUS, aggfunc="sum").asfreq("D").ffill()
        units = [str(u) for u in census.columns]
        admissions = None
        if ADMISSIONS in frame.columns:
            admissions = (
                frame.pivot_table(index=DATE, columns=UNIT, values=ADMISSIONS, aggfunc="sum")
                .reindex(index=census.index, columns=census.columns)
                .fillna(0.0)
                .to_numpy()
            )
        if capacity is None:
            source = CAPACITY if CAPACITY in frame.columns else CENSUS
            largest = frame.groupby(UNIT)[source].max()
            capacity = {u: int(largest[u]) for u in units}
        missing = [u for u in units if u not in capacity]
        if missing:
            raise ValueError(f"no physical beds given for unit(s) {missing}")
        env = cls(
            census.to_numpy(dtype=float),
            np.array([capacity[u] for u in units]),
            admissions=admissions,
            start_weekday=int(census.index[0].day_of_week),
            **kwargs,
        )
        env.units = units
        return env

    # --- gymnasium API ------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        latest = self.demand.shape[0] - self.episode_days
        self._t = int(self.np_random.integers(HISTORY_DAYS, latest + 1)) if latest > HISTORY_DAYS else HISTORY_DAYS
        self._end = self._t + self.episode_days
        # Staffing before the episode: what yesterday's census needed (no change cost on day 1 for a sensible policy).
        self._previous = np.minimum(np.ceil(self.demand[self._t - 1]), self.capacity).astype(np.int64)
        return self._observation(), {"day": self._t}

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        staffed = np.clip(np.asarray(action, dtype=np.int64).reshape(-1), 0, self.capacity)
        demand = self.demand[self._t]
        served = np.minimum(demand, staffed)
        unserved = demand - served
        idle = staffed - served
        change = np.abs(staffed - self._previous)
        cost = (
            self.costs.under_cost * unserved.sum()
            + self.costs.over_cost * idle.sum()
            + self.costs.change_cost * change.sum()
        )
        info = {
            "day": self._t,
            "staffed": staffed,
            "demand": demand,
            "unserved": unserved,
            "idle": idle,
            "change": change,
            "cost": float(cost),
        }
        self._previous = staffed
        self._t += 1
        terminated = self._t >= self._end
        obs = self._observation() if not terminated else self._observation(clamp=True)
        return obs, -float(cost), terminated, False, info

    # --- internals ----------------------------------------------------------------------
    def _observation(self, clamp: bool = False) -> dict[str, Any]:
        t = min(self._t, self.demand.shape[0] - 1) if clamp else self._t
        window = slice(t - HISTORY_DAYS, t)
        if self.forecasts is not None:
            forecast = self.forecasts[t]
        else:
            forecast = np.zeros(self._forecast_space.shape)
        return {
            "census": self.demand[t - 1].astype(np.float32),
            "recent_census": self.demand[window].T.astype(np.float32),
            "recent_admissions": self.admissions[window].T.astype(np.float32),
            "forecast": np.clip(forecast, 0.0, self._forecast_space.high).astype(np.float32),
            "day_of_week": int((self.start_weekday + t) % 7),
        }


# ------------------------------------------------------------------ policies
@runtime_checkable
class Policy(Protocol):
    """Anything that maps an observation to staffed beds per unit; learned policies fit here too."""

    def __call__(self, observation: dict[str, Any]) -> np.ndarray: ...


@dataclass(frozen=True)
class NewsvendorPolicy:
    """Forecast-then-optimise: staff the critical-ratio quantile of tomorrow's forecast, capped."""

    quantile_levels: tuple[float, ...]
    capacity: tuple[int, ...]
    under_cost: float = 10.0
    over_cost: float = 1.0
    tail: Tail = "normal"

    def __call__(self, observation: dict[str, Any]) -> np.ndarray:
        quantiles = np.asarray(observation["forecast"], dtype=float)[:, 0, :]  # (U, L): tomorrow
        ratio = self.under_cost / (self.under_cost + self.over_cost)
        beds = np.ceil(quantile_at(np.array(self.quantile_levels), quantiles, ratio, tail=self.tail) - BED_TOLERANCE)
        return np.minimum(beds, np.array(self.capacity)).astype(np.int64)


@dataclass(frozen=True)
class LastWeekPolicy:
    """Seasonal heuristic: staff what the same weekday needed last week, plus a fixed buffer."""

    buffer: int = 0

    def __call__(self, observation: dict[str, Any]) -> np.ndarray:
        return np.ceil(np.asarray(observation["recent_census"])[:, 0] - 1e-9).astype(np.int64) + self.buffer


@dataclass(frozen=True)
class CapacityPolicy:
    """Staff every physical bed every day: never overflows below capacity, maximal idle cost."""

    capacity: tuple[int, ...]

    def __call__(self, observation: dict[str, Any]) -> np.ndarray:
        return np.array(self.capacity, dtype=np.int64)


@dataclass(frozen=True)
class EpisodeResult:
    """Totals of one episode; ``overflow_days`` counts unserved patient-days."""

    total_cost: float
    overflow_days: float
    idle_bed_days: float
    staffing_changes: float
    days: int
    daily_cost: tuple[float, ...]
    demand_days: float = 0.0  # patient-days of demand in the episode (served + unserved)
    overflow_unit_days: int = 0  # unit-days on which at least one patient found no staffed bed


def run_episode(env: HospitalBedEnv, policy: Policy, seed: int) -> EpisodeResult:
    """Run ``policy`` for one episode from ``env.reset(seed=seed)`` and add up the costs."""
    observation, _ = env.reset(seed=seed)
    unserved = idle = changes = demand = 0.0
    overflowing = 0
    daily: list[float] = []
    while True:
        observation, reward, terminated, truncated, info = env.step(policy(observation))
        unserved += float(info["unserved"].sum())
        overflowing += int((info["unserved"] > 1e-9).sum())
        idle += float(info["idle"].sum())
        changes += float(info["change"].sum())
        demand += float(info["demand"].sum())
        daily.append(-reward)
        if terminated or truncated:
            break
    return EpisodeResult(
        total_cost=float(math.fsum(daily)),
        overflow_days=unserved,
        idle_bed_days=idle,
        staffing_changes=changes,
        days=len(daily),
        daily_cost=tuple(daily),
        demand_days=demand,
        overflow_unit_days=overflowing,
    )
