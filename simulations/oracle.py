"""The oracle: a forecaster that reads a synthetic region's hidden truth, for the noise floor (research only).

``Oracle(region)`` knows what no forecaster can (``Hospital.truth`` from the generator): every
unit's expected admissions on each future day, its count dispersion and length-of-stay law, and
when each patient in a bed at the origin was admitted. Having strictly more information than
any model, it scores a floor no model can beat on the same origins
(``simulations.benchmarks.noise_floor``, ``privacy_frontier``'s goals table). Never a model a
node could run: it needs the generator's internals.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from medalloc_core.contract import ADMISSIONS, CENSUS
from medalloc_core.forecast.forecasters import Forecaster, HospitalData, Origins
from medalloc_core.synthetic import Region, UnitTruth
from medalloc_core.synthetic.simulate import simulate_stays

__all__ = ["QUANTILES", "SAMPLES", "Oracle", "oracle_forecast", "remaining_discharges"]

QUANTILES = (0.1, 0.5, 0.9)
SAMPLES = 400  # Monte Carlo draws per origin: quantile error well under the origin-to-origin spread


def oracle_forecast(
    truth: UnitTruth,
    day: int,
    *,
    horizon: int,
    targets: tuple[str, ...],
    rng: np.random.Generator,
    samples: int = SAMPLES,
) -> np.ndarray:
    """``(horizon, T, Q)`` quantiles of the unit's next ``horizon`` days from region day ``day`` on, knowing its truth.

    Admissions: negative-binomial draws around the expected rate. Census: the patients in a bed
    at the origin stay as the generator's law says given how long they have been in
    (``remaining_discharges``); each draw's new patients stay as the generator draws stays.
    All ``samples`` draws are simulated as one run of ``samples * horizon`` days (``horizon``
    a whole number of weeks keeps every day's weekday).
    """
    assert horizon % 7 == 0, "the draws are laid end to end: the horizon must be whole weeks"
    g = day + truth.warmup  # grid index of the first forecast day
    rate = truth.rate[g : g + horizon]
    if rate.size != horizon:
        raise ValueError(f"day {day} + {horizon} runs past the unit's simulated days")
    frailty = rng.gamma(shape=truth.dispersion, scale=1.0 / truth.dispersion, size=(samples, horizon))
    counts = rng.poisson(rate * frailty)  # (S, H) admissions per draw and day
    out = np.empty((horizon, len(targets), len(QUANTILES)))
    levels = np.asarray(QUANTILES)
    for t, target in enumerate(targets):
        if target == ADMISSIONS:
            draws = counts.astype(float)
        elif target == CENSUS:
            stays = simulate_stays(
                counts.reshape(-1),
                0,
                weekday_of_first=int(truth.weekday[g]),
                los_mean=truth.los_mean,
                los_sigma=truth.los_sigma,
                max_los=truth.warmup,
                admit_hour=truth.admit_hour,
                admit_hour_sd=truth.admit_hour_sd,
                weekend_discharge_delay=truth.weekend_discharge_delay,
                rng=rng,
            )
            draw = stays.admit_day // horizon
            start = stays.admit_day - draw * horizon
            stop = np.minimum(stays.discharge_day - draw * horizon, horizon)  # present on days start .. stop-1
            diff = np.zeros((samples, horizon + 1))
            keep = stop > start
            np.add.at(diff, (draw[keep], start[keep]), 1)
            np.add.at(diff, (draw[keep], stop[keep]), -1)
            new = np.cumsum(diff, axis=1)[:, :horizon]
            leave = remaining_discharges(truth, day, samples=samples, rng=rng)  # (S, n) in a bed at the origin
            present = (leave[:, :, None] > day + np.arange(horizon)).sum(axis=1)  # (S, H)
            draws = new + present
        else:
            raise ValueError(f"the oracle forecasts admissions and census, not {target!r}")
        out[:, t, :] = np.quantile(draws, levels, axis=0).T
    return out


def remaining_discharges(truth: UnitTruth, day: int, *, samples: int, rng: np.random.Generator) -> np.ndarray:
    """``(samples, n)`` discharge days of the ``n`` patients in a bed at the midnight before ``day``.

    The oracle knows when each of them was admitted, not when they will leave: each draw is
    the generator's stay law (lognormal length, weekend delay) conditioned on the patient
    still being in at that midnight (rejection sampling; a patient whose stay is so long that
    no draw in 40 tries is that long keeps the true day, which only helps the oracle).
    """
    stays = truth.stays
    inside = np.flatnonzero((stays.admit_day <= day - 1) & (stays.discharge_day > day - 1))
    admit = stays.admit_day[inside]
    minute = stays.admit_minute[inside] / 1440.0
    mu = np.log(truth.los_mean) - truth.los_sigma**2 / 2.0
    out = np.full((samples, inside.size), -1, dtype=np.int64)
    for _ in range(40):
        todo = out < 0
        if not todo.any():
            break
        los = np.minimum(rng.lognormal(mu, truth.los_sigma, size=out.shape), float(truth.warmup))
        offset = np.floor(minute + los).astype(np.int64)
        leave = admit + offset
        weekday = truth.weekday[np.clip(leave + truth.warmup, 0, truth.weekday.size - 1)]
        delay = (weekday >= 5) & (offset >= 1) & (rng.random(out.shape) < truth.weekend_discharge_delay)
        leave = leave + np.where(delay, 7 - weekday, 0)
        ok = todo & (leave > day - 1)
        out[ok] = leave[ok]
    return np.where(out < 0, stays.discharge_day[inside], out)


class Oracle(Forecaster):
    """The noise-floor forecaster: reads the generator's hidden truth (research only, never a model)."""

    def __init__(self, region: Region | None = None, samples: int = SAMPLES, seed: int = 0) -> None:
        self.region = region
        self.samples = samples
        self.seed = seed
        self.quantiles = QUANTILES

    def _fit(self, hospitals: Any) -> None:
        assert self.region is not None
        self.truth_ = {h.hospital_id: h.truth for h in self.region.hospitals}

    def _predict(self, hospital: HospitalData, origins: Origins) -> np.ndarray:
        assert self.region is not None
        spec = hospital.spec.resolved(hospital.records.frequency)
        assert spec.horizon is not None
        start = pd.Timestamp(self.region.config.start_date)
        truth = self.truth_[hospital.name]
        rng = np.random.default_rng([self.seed, int(hospital.name.lstrip("H") or 0)])
        out = np.empty((len(origins), spec.horizon, len(spec.targets), len(QUANTILES)))
        for row, (unit, first) in enumerate(zip(origins.units, origins.target_start)):
            day = int((pd.Timestamp(first) - start).days)
            out[row] = oracle_forecast(
                truth[str(unit)],
                day,
                horizon=spec.horizon,
                targets=tuple(spec.targets),
                rng=rng,
                samples=self.samples,
            )
        return out
