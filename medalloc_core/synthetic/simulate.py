"""Patient-level simulation of one hospital unit, vectorised with numpy.

Admission counts per day are drawn first, then one length of stay per patient; discharges
are a bincount of discharge days and the census a running sum, so
``census[d] = census[d-1] + admissions[d] - discharges[d]`` holds exactly by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_MINUTES_PER_DAY = 24 * 60


@dataclass(frozen=True)
class UnitStays:
    """Every simulated stay of one unit; days are offsets from the first output day.

    ``admit_minute``/``discharge_minute`` are minutes after midnight of the admit/discharge
    day. A discharge day at or after the horizon means the stay is still open at the end.
    """

    admit_day: np.ndarray  # (P,) int64, sorted ascending
    admit_minute: np.ndarray  # (P,) int64 in [0, 1440)
    discharge_day: np.ndarray  # (P,) int64 >= admit_day
    discharge_minute: np.ndarray  # (P,) int64 in [0, 1440), after admit_minute on same-day stays


@dataclass(frozen=True)
class UnitSeries:
    """Daily counts of one unit on the output days ``0 .. days - 1``."""

    admissions: np.ndarray  # (D,) int64
    discharges: np.ndarray  # (D,) int64
    census: np.ndarray  # (D,) int64, occupied beds at the midnight closing the day


def sample_counts(rate: np.ndarray, dispersion: float, rng: np.random.Generator) -> np.ndarray:
    """Negative-binomial daily counts with mean ``rate`` and variance ``rate + rate**2 / dispersion``.

    Drawn as a gamma-Poisson mixture, which is the same distribution and vectorises.
    """
    frailty = rng.gamma(shape=dispersion, scale=1.0 / dispersion, size=rate.shape)
    return rng.poisson(rate * frailty).astype(np.int64)


def simulate_stays(
    counts: np.ndarray,
    first_day: int,
    *,
    weekday_of_first: int,
    los_mean: float,
    los_sigma: float,
    max_los: int,
    admit_hour: float,
    admit_hour_sd: float,
    weekend_discharge_delay: float,
    rng: np.random.Generator,
) -> UnitStays:
    """Turn daily admission counts into individual stays.

    ``counts[t]`` patients are admitted on day ``first_day + t``; ``weekday_of_first`` is the
    weekday (0 = Monday) of that first day. Lengths of stay are lognormal with mean
    ``los_mean`` (capped at ``max_los`` days so a warm-up of that length reaches steady
    state); the stay ends on the day ``floor(admit time + LOS)``. A share
    ``weekend_discharge_delay`` of discharges falling on a Saturday or Sunday waits until
    Monday, as on wards where consultants round less at weekends.
    """
    admit_day = np.repeat(np.arange(first_day, first_day + counts.size, dtype=np.int64), counts)  # (P,)
    n = admit_day.size
    hours = rng.normal(admit_hour, admit_hour_sd, size=n) % 24.0
    admit_minute = np.minimum((hours * 60.0).astype(np.int64), _MINUTES_PER_DAY - 1)

    mu = np.log(los_mean) - los_sigma**2 / 2.0  # lognormal with the requested mean
    los = np.minimum(rng.lognormal(mu, los_sigma, size=n), float(max_los))
    offset = np.floor(admit_minute / _MINUTES_PER_DAY + los).astype(np.int64)
    discharge_day = admit_day + offset

    weekday = (discharge_day - first_day + weekday_of_first) % 7
    delay = (weekday >= 5) & (offset >= 1) & (rng.random(n) < weekend_discharge_delay)
    discharge_day = discharge_day + np.where(delay, 7 - weekday, 0)

    # Discharge hour: late morning to afternoon; same-day stays leave after they arrived.
    usual = np.clip(rng.normal(13.0, 2.5, size=n), 7.0, 22.0) * 60.0
    same_day = discharge_day == admit_day
    remaining = _MINUTES_PER_DAY - 1 - admit_minute
    after_admit = admit_minute + 1 + np.floor(rng.beta(2.0, 2.0, size=n) * remaining)
    discharge_minute = np.where(same_day, np.minimum(after_admit, _MINUTES_PER_DAY - 1), usual).astype(np.int64)
    # A same-day stay admitted at 23:59 cannot leave later that day: keep it until 00:00 next day.
    stuck = same_day & (discharge_minute <= admit_minute)
    discharge_day = discharge_day + stuck
    discharge_minute = np.where(stuck, 0, discharge_minute)
    return UnitStays(admit_day, admit_minute, discharge_day, discharge_minute)


def daily_series(stays: UnitStays, first_day: int, days: int) -> UnitSeries:
    """Admissions, discharges and census on output days ``0 .. days - 1``.

    The census counts every simulated stay (warm-up included) present at the midnight
    closing the day: admitted on or before it and not yet discharged.
    """
    span = days - first_day  # grid days from first_day to the horizon
    adm = np.bincount(stays.admit_day - first_day, minlength=span)[:span]
    dis_idx = stays.discharge_day - first_day
    dis = np.bincount(dis_idx[dis_idx < span], minlength=span)[:span]
    census = np.cumsum(adm) - np.cumsum(dis)  # (span,)
    cut = -first_day  # grid index of output day 0
    return UnitSeries(adm[cut:].astype(np.int64), dis[cut:].astype(np.int64), census[cut:].astype(np.int64))
