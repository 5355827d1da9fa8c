"""Regional epidemic waves: a sum of SIR outbreaks with random timing and strength."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medalloc_core.synthetic.config import RegionConfig

_INITIAL_INFECTED = 1e-4  # share of the population infectious when a wave is seeded
_WAVE_LENGTH = 240  # days simulated per wave; an SIR wave with R0 >= 1.5 is long over by then


@dataclass(frozen=True)
class Wave:
    """One outbreak; days are offsets from the first output day (negative = warm-up)."""

    start: int
    peak: int
    r0: float
    intensity: float


def sir_incidence(r0: float, infectious_days: float, days: int) -> np.ndarray:
    """Daily new infections (share of population) of a closed SIR model started at S = 1 - I0.

    Integrated with 10 Euler sub-steps per day so the curve does not depend on the step.
    """
    gamma = 1.0 / infectious_days
    beta = r0 * gamma
    s, i = 1.0 - _INITIAL_INFECTED, _INITIAL_INFECTED
    steps = 10
    dt = 1.0 / steps
    incidence = np.zeros(days)
    for day in range(days):
        new_today = 0.0
        for _ in range(steps):
            new = beta * s * i * dt
            s -= new
            i += new - gamma * i * dt
            new_today += new
        incidence[day] = new_today
    return incidence


def regional_curve(config: RegionConfig, rng: np.random.Generator, first: int, n: int) -> tuple[np.ndarray, list[Wave]]:
    """The regional epidemic curve on days ``first .. first + n - 1`` and the waves in it.

    Each wave is an independent SIR outbreak (a new strain: no immunity carried over)
    normalised so its peak equals its intensity. The first wave starts between 60 days
    before and 120 days after the first output day, and later ones follow at gaps drawn
    from ``wave_gap_days``, so every year of output sees one or two waves.
    """
    curve = np.zeros(n)  # (n,) curve[t] is day first + t
    waves: list[Wave] = []
    start = int(rng.integers(-60, 121))
    while start < first + n:
        r0 = float(rng.uniform(*config.wave_r0))
        intensity = float(rng.uniform(*config.wave_intensity))
        shape = sir_incidence(r0, config.infectious_days, _WAVE_LENGTH)
        shape = intensity * shape / shape.max()
        peak = start + int(np.argmax(shape))
        lo, hi = max(start, first), min(start + _WAVE_LENGTH, first + n)
        if lo < hi:
            curve[lo - first : hi - first] += shape[lo - start : hi - start]
        waves.append(Wave(start=start, peak=peak, r0=round(r0, 4), intensity=round(intensity, 4)))
        start += int(rng.integers(config.wave_gap_days[0], config.wave_gap_days[1] + 1))
    return curve, waves
