"""The regional plan: a two-stage stochastic LP that places a shared surge pool and plans transfers.

First stage (decided now, the same in every scenario): surge beds-with-staff ``s[h, d]`` for
each hospital and day from a pool of ``S`` per day. Second stage (per demand scenario):
patient-days transferred between neighbouring hospitals and unserved patient-days. The
objective is surge cost + the scenario average of unserved and transfer costs. Scenarios are
drawn from each hospital's forecast quantiles (see docs/allocation.md for the formulation).

What a hospital shares for this plan: its census forecast quantiles per day (summed over its
units) and one capacity number. Never records. :func:`share_forecast` adds DP noise to the
shared quantiles and reports the epsilon it spends through a callback.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.optimize import linprog
from scipy.special import ndtr

from medalloc_core.allocation.forecast_io import HOSPITAL, TARGET, VALUE, Q, write_dated_csv
from medalloc_core.allocation.quantiles import Tail, quantile_at
from medalloc_core.allocation.shadow import ShadowPrices
from medalloc_core.atomic import atomic_write_bytes
from medalloc_core.contract import CENSUS, DATE

logger = logging.getLogger(__name__)

SHARED_COLUMNS: tuple[str, ...] = (HOSPITAL, DATE, Q, VALUE)
# The per-value noise sd (beds) a shared table was released with; public (a function of epsilon,
# delta, the sensitivity and the number of values), written beside the values by `medalloc share`.
NOISE_SD = "noise_sd"
_Z90 = 1.2815515655446004  # the standard normal's 0.9 quantile


@dataclass(frozen=True)
class RegionalConfig:
    """Costs, pool size and scenario settings of the regional LP.

    Costs are in the same unit as the hospital plan (an idle staffed bed-day = 1 by default).
    """

    surge_pool: float = 20.0  # beds with staff that can be moved, per day, across the region
    under_cost: float = 10.0  # an unserved patient-day (overflow, diversion)
    surge_cost: float = 1.0  # a deployed surge bed-day, paid whether a patient fills it or not
    transfer_cost: float = 2.0  # fixed cost of moving one patient-day to another hospital
    transfer_cost_per_km: float = 0.02  # plus this per km of (synthetic or given) distance
    transfer_limit: float = math.inf  # max patient-days per (from, to, day)
    max_surge: float | Mapping[str, float] | None = None  # per hospital-day cap (e.g. free physical beds)
    neighbours: int = 5  # transfers only to the k nearest hospitals (and back): keeps the LP sparse
    max_transfer_km: float = math.inf  # and only between hospitals at most this far apart
    allowed_pairs: tuple[tuple[str, str], ...] | None = None  # explicit (from, to) list; replaces neighbours
    pair_limits: Mapping[tuple[str, str], float] = field(default_factory=dict)  # per (from, to) daily cap
    scenarios: int = 20  # K demand scenarios
    correlation: float = 0.5  # Gaussian-copula correlation of demand across hospitals on a day
    seed: int = 0
    tail: Tail = "normal"
    # per hospital, the sd (beds) of the DP noise on each shared number: the plan shrinks the noisy
    # quantiles towards the hospital's own mean over the horizon and widens their band by what
    # the noise leaves unknown, instead of planning on the noise (None: the numbers are exact)
    noise_sd: Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        for name in ("surge_pool", "under_cost", "surge_cost", "transfer_cost", "transfer_cost_per_km"):
            value = getattr(self, name)
            if not 0 <= value <= MAX_COST:  # also refuses NaN
                raise ValueError(f"{name} must be a number from 0 to {MAX_COST:g}, got {value}")
        if not self.transfer_limit >= 0:
            raise ValueError(f"transfer_limit must be >= 0, got {self.transfer_limit}")
        if self.under_cost <= 0:
            raise ValueError("under_cost must be > 0: otherwise no plan is better than another")
        if not 1 <= self.scenarios <= MAX_SCENARIOS or self.neighbours < 0:
            raise ValueError(
                f"scenarios must be from 1 to {MAX_SCENARIOS} and neighbours >= 0, "
                f"got {self.scenarios}, {self.neighbours}"
            )
        if not 0.0 <= self.correlation <= 1.0:
            raise ValueError(f"correlation must be in [0, 1], got {self.correlation}")


@dataclass(frozen=True)
class RegionalPlan:
    """The solved regional plan.

    ``surge``: hospital, date, surge_beds (LP value), surge_beds_whole (rounded, Σ ≤ pool).
    ``transfers``: from_hospital, to_hospital, date, expected_patients (mean over scenarios), cost_per_patient.
    ``hospital_days``: hospital, date, capacity, surge_beds, expected_demand, expected_unserved,
    expected_transfers_out, expected_transfers_in, expected_idle_surge, and from the shadow
    prices value_of_one_more_bed, surge_at_cap, value_of_more_surge_room.
    ``costs``: surge, unserved, transfer, total (expected, per the objective).
    """

    surge: pd.DataFrame
    transfers: pd.DataFrame
    hospital_days: pd.DataFrame
    costs: dict[str, float]
    scenarios: int
    solver_message: str
    load: np.ndarray = field(repr=False)  # (K, H, D) patients cared for in each scenario
    capacity_with_surge: np.ndarray = field(repr=False)  # (H, D)
    shadow: ShadowPrices | None = field(default=None, repr=False)  # what one more unit of each resource saves
    warnings: tuple[str, ...] = ()  # e.g. a hospital whose sharing noise is larger than its margin


# Bounds on the regional LP's inputs: costs, surge beds and the scenario grid. The LP has about
# scenarios x hospitals x days variables; MAX_LP_CELLS keeps it to seconds and a few hundred MB.
MAX_COST = 1e6
MAX_SCENARIOS = 1_000
MAX_LP_CELLS = 2_000_000


class RegionalSolveError(RuntimeError):
    """HiGHS did not return an optimal plan; the message carries its status."""


# ------------------------------------------------------------------ what hospitals share
def hospital_totals(forecast: pd.DataFrame) -> pd.DataFrame:
    """Census quantiles per hospital-day, summed over units: the only forecast a hospital shares.

    Summing quantiles level by level is exact when units move together (comonotone) and
    overstates the spread otherwise, which errs towards more surge, not less.
    """
    sub = forecast[forecast[TARGET] == CENSUS] if TARGET in forecast.columns else forecast
    if sub.empty:
        raise ValueError("the forecast has no census rows to share")
    by = [HOSPITAL, DATE, Q]
    return sub.groupby(by, as_index=False)[VALUE].sum().loc[:, list(SHARED_COLUMNS)]


def laplace_scale(*, epsilon: float, n_values: int, sensitivity: float = 1.0) -> float:
    """Laplace scale for releasing ``n_values`` counts each moved by at most ``sensitivity`` by one patient.

    L1 sensitivity of the vector is n_values * sensitivity, so scale = n_values * sensitivity / epsilon.
    """
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    return n_values * sensitivity / epsilon


def gaussian_sigma(*, epsilon: float, delta: float, n_values: int, sensitivity: float = 1.0) -> float:
    """Smallest sigma of the analytic Gaussian mechanism (Balle & Wang 2018) for L2 sensitivity sqrt(n)·Δ.

    Solves Φ(Δ/2σ - εσ/Δ) - e^ε Φ(-Δ/2σ - εσ/Δ) ≤ δ by bisection; exact for every ε > 0,
    unlike the classic sqrt(2 ln(1.25/δ)) bound that holds only for ε < 1.
    """
    if not epsilon > 0 or not 0 < delta < 1:
        raise ValueError(f"need epsilon > 0 and 0 < delta < 1, got {epsilon}, {delta}")
    l2 = math.sqrt(n_values) * sensitivity

    def delta_of(sigma: float) -> float:
        a, b = l2 / (2 * sigma), epsilon * sigma / l2
        return float(ndtr(a - b) - math.exp(epsilon) * ndtr(-a - b))

    lo, hi = 1e-6 * l2, l2
    while delta_of(hi) > delta:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if delta_of(mid) <= delta else (mid, hi)
    return hi  # the upper end: a guarantee, not an estimate


def share_forecast(
    forecast: pd.DataFrame,
    *,
    epsilon: float | None,
    delta: float | None = None,
    mechanism: Literal["laplace", "gaussian"] = "laplace",
    sensitivity: float = 1.0,
    seed: int | None,
    on_release: Callable[[float], None] | None = None,
    noise_scale: float | None = None,
) -> pd.DataFrame:
    """What one hospital sends the coordinator: census quantiles per day, optionally with DP noise.

    The release is the table ``hospital, date, q, value`` from :func:`hospital_totals` — D days
    × Q levels numbers and nothing else. With ``epsilon`` set, each number gets independent
    Laplace (or Gaussian) noise calibrated to the assumption that **one patient changes each
    released number by at most ``sensitivity``** (1 = one occupied bed). That is true of the
    census counts themselves (a patient occupies at most one bed per day, and may be present on
    every day) but only an assumption for model forecasts, whose output can move by more; the
    epsilon is per release and composes over releases. Noisy quantiles are re-sorted and
    clipped at 0 (post-processing: no privacy cost).

    ``on_release(epsilon)`` is called *before* any noise is drawn or anything returned, so a
    ledger that refuses by raising stops the release. With ``epsilon=None`` nothing is noised
    and nothing is reported.

    ``noise_scale`` replaces the calibrated per-value scale (Laplace scale or Gaussian sigma)
    with a larger one, e.g. the sigma a privacy ledger's accountant calibrated (see
    ``medalloc_core.allocation.sharing``); a smaller one raises ``ValueError``.

    ``seed`` is required so that the choice is explicit: a fixed seed makes the noise
    reproducible (for experiments) — and removable by anyone who knows the seed, so a real
    release must pass ``seed=None`` (fresh OS entropy). numpy's generator is not a
    cryptographic one and floating-point Laplace sampling has known side channels; this is a
    research-grade mechanism.
    """
    shared = hospital_totals(forecast)
    if shared[HOSPITAL].nunique() != 1:
        raise ValueError("share_forecast releases one hospital's forecast; pass one hospital's frame")
    if epsilon is None:
        return shared
    if mechanism not in ("laplace", "gaussian"):
        raise ValueError(f"mechanism must be 'laplace' or 'gaussian', got {mechanism!r}")
    n = len(shared)
    if mechanism == "laplace":
        scale = laplace_scale(epsilon=epsilon, n_values=n, sensitivity=sensitivity)
    else:
        if delta is None:
            raise ValueError("the Gaussian mechanism needs delta")
        scale = gaussian_sigma(epsilon=epsilon, delta=delta, n_values=n, sensitivity=sensitivity)
    if noise_scale is not None:
        if not noise_scale >= scale * (1 - 1e-9):
            raise ValueError(
                f"noise_scale={noise_scale:.6g} is below the {mechanism} scale {scale:.6g} that epsilon={epsilon} needs"
            )
        scale = float(noise_scale)
    if on_release is not None:
        on_release(epsilon)
    rng = np.random.default_rng(seed)
    noise = rng.laplace(0.0, scale, n) if mechanism == "laplace" else rng.normal(0.0, scale, n)
    logger.info("sharing %d values with %s noise of scale %.3g (epsilon=%s)", n, mechanism, scale, epsilon)
    noisy = shared.assign(value=np.maximum(shared[VALUE].to_numpy() + noise, 0.0))
    noisy = noisy.sort_values([HOSPITAL, DATE, Q]).reset_index(drop=True)
    noisy[VALUE] = noisy.groupby([HOSPITAL, DATE])[VALUE].transform(lambda v: np.sort(v.to_numpy()))
    return noisy


def write_shared(shared: pd.DataFrame, path: Path, *, overwrite: bool = False) -> Path:
    """Write a shared table (``hospital, date, q, value``) as the CSV `medalloc allocate-region` reads."""
    columns = (*SHARED_COLUMNS, NOISE_SD) if NOISE_SD in shared.columns else SHARED_COLUMNS
    return write_dated_csv(shared, path, columns=columns, what="shared table", overwrite=overwrite)


# ------------------------------------------------------------------ inputs to the LP
def synthetic_distances(hospitals: list[str], *, seed: int, extent_km: float = 100.0) -> np.ndarray:
    """Euclidean km between hospitals placed uniformly in a square region (seeded); (H, H)."""
    xy = np.random.default_rng(seed).uniform(0, extent_km, size=(len(hospitals), 2))
    return np.sqrt(((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1))


def neighbour_pairs(distances: np.ndarray, k: int) -> np.ndarray:
    """Directed (from, to) pairs: each hospital's k nearest, made symmetric; (P, 2) int."""
    h = distances.shape[0]
    if k == 0 or h < 2:
        return np.zeros((0, 2), dtype=int)
    d = distances.astype(float).copy()
    np.fill_diagonal(d, np.inf)
    near = np.argsort(d, axis=1, kind="stable")[:, : min(k, h - 1)]
    allowed = np.zeros((h, h), dtype=bool)
    allowed[np.repeat(np.arange(h), near.shape[1]), near.ravel()] = True
    allowed |= allowed.T
    allowed &= np.isfinite(distances)
    return np.argwhere(allowed)


def _validate_inputs(
    shared: pd.DataFrame, capacity: Mapping[str, float] | pd.DataFrame
) -> tuple[list[str], list[pd.Timestamp], np.ndarray, np.ndarray, np.ndarray]:
    """Pivot shared quantiles to (H, D, K) and check everything a solver would choke on."""
    missing = [c for c in SHARED_COLUMNS if c not in shared.columns]
    if missing:
        raise ValueError(f"shared forecast lacks column(s) {missing}; expected {list(SHARED_COLUMNS)}")
    if shared.empty:
        raise ValueError("no hospitals: the shared forecast is empty")
    dates_parsed = pd.to_datetime(shared[DATE], errors="coerce")
    if dates_parsed.isna().any():
        raise ValueError(
            f"unparsable date '{shared[DATE].iloc[int(dates_parsed.isna().to_numpy().argmax())]}' "
            "in the shared forecast"
        )
    shared = shared.assign(**{DATE: dates_parsed.dt.normalize(), HOSPITAL: shared[HOSPITAL].astype(str)})
    if shared[VALUE].isna().any() or not np.isfinite(shared[VALUE].to_numpy(dtype=float)).all():
        bad = shared.loc[~np.isfinite(shared[VALUE].to_numpy(dtype=float)), [HOSPITAL, DATE, Q]].iloc[0].to_dict()
        raise ValueError(f"forecast value is NaN or infinite at {bad}")
    if (shared[VALUE] < 0).any():
        raise ValueError("forecast values must be >= 0 (occupied beds)")
    hospitals = sorted(shared[HOSPITAL].astype(str).unique().tolist())
    dates = sorted(pd.to_datetime(shared[DATE]).unique().tolist())
    levels = np.sort(shared[Q].astype(float).unique())
    if levels[0] <= 0 or levels[-1] >= 1:
        raise ValueError(f"quantile levels must lie in (0, 1), got {levels.tolist()}")
    cube = shared.pivot_table(index=[HOSPITAL, DATE], columns=Q, values=VALUE, aggfunc="first")
    full = pd.MultiIndex.from_product([hospitals, dates], names=[HOSPITAL, DATE])
    cube = cube.reindex(full)
    if cube.isna().any().any():
        bad = cube.index[cube.isna().any(axis=1)][0]
        raise ValueError(f"hospital-day {bad} lacks quantile levels; every hospital needs every day and level")
    values = cube.to_numpy(dtype=float)
    crossing = np.diff(values, axis=1) < -1e-9
    if crossing.any():
        bad = cube.index[crossing.any(axis=1)][0]
        raise ValueError(f"quantiles cross at hospital-day {bad}: values must not decrease with q")
    if isinstance(capacity, pd.DataFrame):
        need = [c for c in (HOSPITAL, DATE, "capacity") if c not in capacity.columns]
        if need:
            raise ValueError(f"capacity frame lacks column(s) {need}; expected hospital, date, capacity")
        by_day = capacity.assign(**{DATE: pd.to_datetime(capacity[DATE]), HOSPITAL: capacity[HOSPITAL].astype(str)})
        grid = by_day.set_index([HOSPITAL, DATE])["capacity"].astype(float).reindex(full)
        if grid.isna().any():
            raise ValueError(f"no capacity for hospital-day {grid.index[grid.isna().to_numpy()][0]}")
        cap = grid.to_numpy().reshape(len(hospitals), len(dates))
    else:
        absent = [h for h in hospitals if h not in capacity]
        if absent:
            raise ValueError(f"no capacity for hospital(s) {absent}")
        cap = np.repeat(np.array([float(capacity[h]) for h in hospitals])[:, None], len(dates), axis=1)
    if not np.isfinite(cap).all() or (cap < 0).any():
        raise ValueError("capacities must be finite and >= 0")
    return hospitals, dates, levels, values.reshape(len(hospitals), len(dates), levels.size), cap


def draw_scenarios(
    levels: np.ndarray, values: np.ndarray, *, scenarios: int, correlation: float, seed: int, tail: Tail = "normal"
) -> np.ndarray:
    """Demand scenarios (K, H, D) from quantiles (H, D, L) under a one-factor Gaussian copula.

    On each scenario-day, hospital h's uniform is Φ(√ρ·Z_day + √(1-ρ)·ε_h): ρ = 1 is
    comonotone (every hospital at the same quantile: the hardest case for a shared pool),
    ρ = 0 independent (pooling looks easiest). Days are independent given the forecast.
    """
    h, d, _ = values.shape
    rng = np.random.default_rng(seed)
    common = rng.standard_normal((scenarios, 1, d))
    own = rng.standard_normal((scenarios, h, d))
    u = ndtr(math.sqrt(correlation) * common + math.sqrt(1.0 - correlation) * own)  # (K, H, D)
    u = np.clip(u, 1e-9, 1 - 1e-9)
    rows = values.reshape(h * d, -1)
    draws = quantile_at(levels, rows, u.reshape(scenarios, h * d).T, tail=tail)  # (H*D, K)
    return draws.T.reshape(scenarios, h, d)


def _max_surge(config: RegionalConfig, hospitals: list[str]) -> np.ndarray:
    if config.max_surge is None:
        return np.full(len(hospitals), np.inf)
    if isinstance(config.max_surge, Mapping):
        return np.array([float(config.max_surge.get(h, np.inf)) for h in hospitals])
    return np.full(len(hospitals), float(config.max_surge))


def _whole_surge(surge: np.ndarray, pool: float) -> np.ndarray:
    """Round (H, D) surge to whole beds per day by largest remainders: each day's total is the
    LP total rounded, never above floor(pool)."""
    out = np.floor(surge + 1e-9)
    for d in range(surge.shape[1]):
        target = min(math.floor(pool + 1e-9), round(float(surge[:, d].sum())))
        room = int(target - out[:, d].sum())
        frac = surge[:, d] - out[:, d]
        for h in np.argsort(-frac, kind="stable")[: max(room, 0)]:
            out[h, d] += 1
    return out


PRIOR_SD_FRACTION = 0.25  # the public prior's sd: a hospital's census is its staffed beds give or take a quarter


def denoise_shared(
    shared: pd.DataFrame, noise_sd: Mapping[str, float], prior: Mapping[str, float] | None = None
) -> tuple[pd.DataFrame, dict[str, dict[str, float]]]:
    """Plan on what the noisy numbers say, not on the noise: per hospital and quantile level, shrink
    the days' values towards their mean over the horizon, then widen the band by the sd left.

    Each shared number is ``true + N(0, s²)``, independent across days and levels, with ``s``
    public. The days of one level vary by ``var_signal + s²``; the estimate of a day is
    ``m + w·(v − m)`` with ``w = var_signal / (var_signal + s²)`` (``var_signal`` = the days'
    variance less ``s²``, at least 0): with noise far above the day-to-day signal every day gets
    the horizon's mean, whose own noise is ``s/√D``. What remains unknown, ``sd_left =
    s·√(w + 1/D)``, widens the band: each level moves away from the median by ``z_q·sd_left``
    (normal quantiles), so the plan sees a wider, not a shifted, distribution. Post-processing of
    the release: no privacy cost.

    ``prior`` (per hospital, public: its staffed beds) is where the horizon's median is pulled when
    the noise swamps even the mean over the horizon: the median's mean ``m`` (noise ``s²/D``)
    and the prior (sd ``PRIOR_SD_FRACTION`` of it) are combined by their precisions, and every
    level moves by the same amount.

    Returns the adjusted table and, per hospital, ``{"noise_sd", "shrink_weight", "sd_left"}``.
    """
    from scipy.stats import norm

    out = shared.copy()
    info: dict[str, dict[str, float]] = {}
    for hospital, s in noise_sd.items():
        s = float(s)
        rows = out[HOSPITAL] == hospital
        if not s > 0 or not rows.any():
            continue
        block = out.loc[rows]
        n_days = block[DATE].nunique()
        weights = []
        for _q, level in block.groupby(Q):
            v = level[VALUE].to_numpy(dtype=float)
            m = float(v.mean())
            var_signal = max(float(v.var()) - s * s, 0.0) if len(v) > 1 else 0.0
            w = var_signal / (var_signal + s * s)
            weights.append(w)
            out.loc[level.index, VALUE] = m + w * (v - m)
        w_mean = float(np.mean(weights)) if weights else 0.0
        mean_var = s * s / max(n_days, 1)  # the noise left on the horizon's mean
        if prior is not None and hospital in prior and prior[hospital] > 0:
            tau2 = (PRIOR_SD_FRACTION * float(prior[hospital])) ** 2
            block = out.loc[rows]
            m50 = float(block.loc[np.isclose(block[Q].to_numpy(dtype=float), 0.5), VALUE].mean())
            if math.isfinite(m50):
                pull = mean_var / (mean_var + tau2)
                out.loc[rows, VALUE] = block[VALUE].to_numpy(dtype=float) + pull * (float(prior[hospital]) - m50)
                mean_var = mean_var * tau2 / (mean_var + tau2)
        sd_left = math.sqrt(s * s * w_mean + mean_var)
        widen = norm.ppf(out.loc[rows, Q].to_numpy(dtype=float)) * sd_left
        out.loc[rows, VALUE] = out.loc[rows, VALUE].to_numpy(dtype=float) + widen
        info[str(hospital)] = {"noise_sd": s, "shrink_weight": w_mean, "sd_left": sd_left}
    # quantiles stay ordered and non-negative (post-processing)
    out = out.sort_values([HOSPITAL, DATE, Q]).reset_index(drop=True)
    out[VALUE] = np.maximum(out.groupby([HOSPITAL, DATE])[VALUE].cummax().to_numpy(), 0.0)
    return out, info


def noise_warnings(
    shared: pd.DataFrame, capacity: np.ndarray, hospitals: list[str], noise_sd: Mapping[str, float]
) -> list[str]:
    """One line per hospital whose sharing noise is at least its margin, the distance between its
    (noisy) median census and its staffed beds: the plan cannot tell if it needs surge or has room."""
    lines = []
    medians = shared[np.isclose(shared[Q].to_numpy(dtype=float), 0.5)].groupby(HOSPITAL)[VALUE].mean()
    for i, hospital in enumerate(hospitals):
        s = float(noise_sd.get(hospital, 0.0))
        if not s > 0 or hospital not in medians.index:
            continue
        margin = abs(float(capacity[i].mean()) - float(medians[hospital]))
        if s >= margin:
            lines.append(
                f"{hospital}: the shared numbers carry noise sd {s:.0f} beds, at least its margin of {margin:.0f} "
                f"beds between median census and staffed beds: the plan cannot tell whether {hospital} needs surge; "
                "ask for a share at a higher epsilon or plan it from its own capacity"
            )
    return lines


# ------------------------------------------------------------------ the LP
def plan_region(
    shared: pd.DataFrame,
    capacity: Mapping[str, float] | pd.DataFrame,
    config: RegionalConfig = RegionalConfig(),
    *,
    distances: np.ndarray | None = None,
) -> RegionalPlan:
    """Solve the regional surge-and-transfer plan from what hospitals shared.

    Parameters
    ----------
    shared : pd.DataFrame
        Each hospital's census forecast quantiles per day: columns ``hospital, date, q, value``
        (the output of :func:`share_forecast` / :func:`hospital_totals`, concatenated). This and
        ``capacity`` are all a hospital shares: no records, no unit detail, no patients.
    capacity : Mapping[str, float] or pd.DataFrame
        Beds each hospital staffs itself (before any surge): one number per hospital, or a
        frame ``hospital, date, capacity`` when it changes by day.
    config : RegionalConfig
        Pool size, costs, limits, scenarios, copula correlation and seed.
    distances : np.ndarray, optional
        (H, H) km between hospitals in sorted hospital order (inf = no transfers); synthetic
        coordinates seeded by ``config.seed`` when omitted.

    Returns
    -------
    RegionalPlan

    Raises
    ------
    ValueError
        Before solving, for empty input, NaN or negative forecasts, crossing quantiles,
        missing or negative capacities, a distance matrix of the wrong shape.
    RegionalSolveError
        When HiGHS does not report an optimum (its status and message are included).
    """
    warnings: list[str] = []
    if config.noise_sd:
        _validate_inputs(shared, capacity)  # refuse bad input before adjusting it
        noisy = shared
        hospitals_, _, _, _, cap_ = _validate_inputs(noisy, capacity)
        staffed = {h: float(cap_[i].mean()) for i, h in enumerate(hospitals_)}  # public: the prior
        shared, adjusted = denoise_shared(shared, config.noise_sd, prior=staffed)
        warnings = noise_warnings(noisy, cap_, hospitals_, config.noise_sd)
        for line in warnings:
            logger.warning("%s", line)
        for hospital, row in adjusted.items():
            logger.info("%s: noise sd %.3g beds; shrink weight %.2f, sd left %.3g", hospital, *row.values())
    hospitals, dates, levels, values, cap = _validate_inputs(shared, capacity)
    n_h, n_d, k = len(hospitals), len(dates), config.scenarios
    if n_h * n_d * k > MAX_LP_CELLS:
        raise ValueError(
            f"{n_h} hospitals x {n_d} days x {k} scenarios is over the {MAX_LP_CELLS:,} the regional LP is sized for "
            "(MAX_LP_CELLS); plan fewer days at a time or use fewer scenarios"
        )
    if distances is None:
        distances = synthetic_distances(hospitals, seed=config.seed)
    distances = np.asarray(distances, dtype=float)
    if distances.shape != (n_h, n_h):
        raise ValueError(f"distances must be ({n_h}, {n_h}) for {n_h} hospitals, got {distances.shape}")
    if config.allowed_pairs is not None:
        index = {h: i for i, h in enumerate(hospitals)}
        unknown = sorted({h for pair in config.allowed_pairs for h in pair if h not in index})
        if unknown:
            raise ValueError(f"allowed_pairs name hospital(s) {unknown} that shared no forecast")
        pairs = np.array([(index[a], index[b]) for a, b in config.allowed_pairs if a != b], dtype=int).reshape(-1, 2)
    else:
        pairs = neighbour_pairs(distances, config.neighbours)
    if len(pairs):
        pairs = pairs[distances[pairs[:, 0], pairs[:, 1]] <= config.max_transfer_km]
    n_p = len(pairs)
    pair_limit = np.array(
        [float(config.pair_limits.get((hospitals[a], hospitals[b]), config.transfer_limit)) for a, b in pairs]
    )
    pair_cost = (
        config.transfer_cost + config.transfer_cost_per_km * distances[pairs[:, 0], pairs[:, 1]] if n_p else np.zeros(0)
    )
    demand = draw_scenarios(
        levels, values, scenarios=k, correlation=config.correlation, seed=config.seed, tail=config.tail
    )

    # Variable layout: s[h, d] | u[k, h, d] | x[k, p, d]
    hd = n_h * n_d
    n_s, n_u, n_x = hd, k * hd, k * n_p * n_d
    off_u, off_x = n_s, n_s + n_u
    c = np.concatenate(
        [
            np.full(n_s, config.surge_cost),
            np.full(n_u, config.under_cost / k),
            np.tile(np.repeat(pair_cost, n_d), k) / k,
        ]
    )
    # Capacity rows r = k*hd + h*n_d + d:  -s[h,d] - u[k,h,d] - Σ_out x + Σ_in x <= cap_h - D[k,h,d]
    r_all = np.arange(n_u)
    s_col = r_all % hd
    kk, pp, dd = np.meshgrid(np.arange(k), np.arange(n_p), np.arange(n_d), indexing="ij")
    x_col = off_x + (kk * n_p * n_d + pp * n_d + dd).ravel()
    row_from = (kk * hd + pairs[pp.ravel(), 0].reshape(kk.shape) * n_d + dd).ravel() if n_p else np.zeros(0, int)
    row_to = (kk * hd + pairs[pp.ravel(), 1].reshape(kk.shape) * n_d + dd).ravel() if n_p else np.zeros(0, int)
    rows = np.concatenate([r_all, r_all, row_from, row_to])
    cols = np.concatenate([s_col, off_u + r_all, x_col, x_col])
    data = np.concatenate([-np.ones(n_u), -np.ones(n_u), -np.ones(row_from.size), np.ones(row_to.size)])
    cap_rows = sp.csr_array((data, (rows, cols)), shape=(n_u, n_s + n_u + n_x))
    b_cap = (cap.reshape(1, hd) - demand.reshape(k, hd)).ravel()
    # Pool rows: Σ_h s[h, d] <= S
    pool_rows = sp.csr_array((np.ones(hd), (np.tile(np.arange(n_d), n_h), np.arange(hd))), shape=(n_d, n_s + n_u + n_x))
    a_ub = sp.vstack([cap_rows, pool_rows], format="csr")
    b_ub = np.concatenate([b_cap, np.full(n_d, config.surge_pool)])
    bounds = np.column_stack(
        [
            np.zeros(n_s + n_u + n_x),
            np.concatenate(
                [np.repeat(_max_surge(config, hospitals), n_d), demand.ravel(), np.tile(np.repeat(pair_limit, n_d), k)]
            ),
        ]
    )
    logger.info(
        "regional LP: %d hospitals, %d days, %d scenarios, %d pairs -> %d vars, %d rows",
        n_h,
        n_d,
        k,
        n_p,
        c.size,
        a_ub.shape[0],
    )
    result = linprog(c, A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs")
    if result.status != 0 or result.x is None:
        raise RegionalSolveError(
            f"HiGHS did not find an optimal regional plan (status {result.status}): {result.message}"
        )

    z = result.x
    shadow = ShadowPrices.from_solution(
        hospitals=hospitals,
        dates=dates,
        pairs=pairs,
        pool_size=config.surge_pool,
        surge_cost=config.surge_cost,
        surge_limit=_max_surge(config, hospitals),
        pair_limit=pair_limit,
        x_opt=z,
        ineq_marginals=result.ineqlin.marginals,
        upper_marginals=result.upper.marginals,
        scenarios=k,
    )
    surge = z[:n_s].reshape(n_h, n_d)
    unserved = z[off_u:off_x].reshape(k, n_h, n_d)
    x = z[off_x:].reshape(k, n_p, n_d)
    out = np.zeros((k, n_h, n_d))
    inn = np.zeros((k, n_h, n_d))
    if n_p:
        # numpy's stub types ufunc.at's indices as an integer array only; a tuple of index
        # objects (slices, arrays) is documented and accepted at runtime.
        np.add.at(out, (slice(None), pairs[:, 0]), x)  # type: ignore[arg-type]
        np.add.at(inn, (slice(None), pairs[:, 1]), x)  # type: ignore[arg-type]
    load = demand - unserved - out + inn
    cap_with_surge = cap + surge
    idle_surge = np.clip(cap_with_surge[None] - np.maximum(load, cap[None]), 0.0, None)
    date_index = pd.DatetimeIndex(dates)
    hd_frame = pd.DataFrame(
        {
            HOSPITAL: np.repeat(hospitals, n_d),
            DATE: np.tile(date_index, n_h),
            "capacity": cap.ravel(),
            "surge_beds": surge.ravel(),
            "expected_demand": demand.mean(0).ravel(),
            "expected_unserved": unserved.mean(0).ravel(),
            "expected_transfers_out": out.mean(0).ravel(),
            "expected_transfers_in": inn.mean(0).ravel(),
            "expected_idle_surge": idle_surge.mean(0).ravel(),
        }
    )
    # Why each hospital gets what it gets: the shadow prices (medalloc_core.allocation.shadow).
    priced = shadow.hospital_day_columns()
    for column in ("value_of_one_more_bed", "surge_at_cap", "value_of_more_surge_room"):
        hd_frame[column] = priced[column].to_numpy()
    surge_frame = hd_frame[[HOSPITAL, DATE, "surge_beds"]].assign(
        surge_beds_whole=_whole_surge(surge, config.surge_pool).ravel().astype("int64")
    )
    mean_x = x.mean(0)  # (P, D)
    pi, di = np.nonzero(mean_x > 1e-6) if n_p else (np.zeros(0, int), np.zeros(0, int))
    transfers = pd.DataFrame(
        {
            "from_hospital": [hospitals[pairs[p, 0]] for p in pi],
            "to_hospital": [hospitals[pairs[p, 1]] for p in pi],
            DATE: date_index[di],
            "expected_patients": mean_x[pi, di],
            "cost_per_patient": pair_cost[pi] if n_p else np.zeros(0),
        }
    )
    costs = {
        "surge": float(config.surge_cost * surge.sum()),
        "unserved": float(config.under_cost * unserved.sum() / k),
        "transfer": float((pair_cost[None, :, None] * x).sum() / k) if n_p else 0.0,
    }
    costs["total"] = costs["surge"] + costs["unserved"] + costs["transfer"]
    if not math.isclose(costs["total"], float(result.fun), rel_tol=1e-6, abs_tol=1e-6):
        logger.warning("cost breakdown %.6g differs from the LP objective %.6g", costs["total"], result.fun)
    return RegionalPlan(
        surge=surge_frame,
        transfers=transfers,
        hospital_days=hd_frame,
        costs=costs,
        scenarios=k,
        solver_message=str(result.message),
        load=load,
        capacity_with_surge=cap_with_surge,
        shadow=shadow,
        warnings=tuple(warnings),
    )


def write_regional_plan(plan: RegionalPlan, out_dir: Path, *, overwrite: bool = False) -> list[Path]:
    """Write surge.csv, transfers.csv, hospital_days.csv and costs.csv; refuses to overwrite unless asked."""
    out_dir = Path(out_dir)
    names = {
        "surge.csv": plan.surge,
        "transfers.csv": plan.transfers,
        "hospital_days.csv": plan.hospital_days,
        "costs.csv": pd.DataFrame([plan.costs]),
    }
    existing = [out_dir / n for n in names if (out_dir / n).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists; pass overwrite=True to replace the regional plan")
    paths = []
    for name, frame in names.items():
        frame = frame.copy()
        if DATE in frame.columns:
            frame[DATE] = pd.to_datetime(frame[DATE]).dt.strftime("%Y-%m-%d")
        atomic_write_bytes(out_dir / name, frame.to_csv(index=False).encode("utf-8"))  # each file whole or absent
        paths.append(out_dir / name)
    return paths
