"""The source release a node makes before training, for benchmarks: every daily count plus Gaussian noise.

Until the privacy engineer's ``medalloc_core.privacy.release`` lands on main this module
computes the same mechanism as docs/notes describe it: one Gaussian release per (unit, day)
count, noise standard deviations in the public ratio census : admissions = 2 : 1, calibrated
with the analytic Gaussian mechanism (Balle & Wang 2018) to the per-stay L2 sensitivity
(a stay of at most ``max_stay_days`` nights adds <= 2 admissions, <= 2 discharges and <= N
census nights). Once ``release_records`` exists it is used instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from scipy.optimize import brentq
from scipy.stats import norm

from medalloc_core.contract import ADMISSIONS, CENSUS, DISCHARGES, UnitRecords
from medalloc_core.forecasters import HospitalData

__all__ = ["noise_sd", "release_for_benchmark"]

_WEIGHT = {ADMISSIONS: 1.0, DISCHARGES: 1.0, CENSUS: 2.0}  # noise sd ratio between columns (public)


def _gaussian_z(epsilon: float, delta: float) -> float:
    """Noise multiplier (sd / L2 sensitivity) of the analytic Gaussian mechanism at (epsilon, delta)."""

    def excess(z: float) -> float:
        return float(norm.cdf(0.5 / z - epsilon * z) - math.exp(epsilon) * norm.cdf(-0.5 / z - epsilon * z) - delta)

    return float(brentq(excess, 1e-3, 1e4))


def noise_sd(*, epsilon: float, delta: float, max_stay_days: int, columns: tuple[str, ...]) -> dict[str, float]:
    """Per released column, the noise sd that makes one release (epsilon, delta)-DP per stay."""
    contributions = {ADMISSIONS: 2.0, DISCHARGES: 2.0, CENSUS: float(max_stay_days)}
    z = _gaussian_z(epsilon, delta)
    base = z * math.sqrt(sum(contributions[c] / _WEIGHT[c] ** 2 for c in columns))
    return {c: base * _WEIGHT[c] for c in columns}


def release_for_benchmark(
    hospitals: Mapping[str, HospitalData], *, epsilon: float, delta: float, max_stay_days: int, seed: int
) -> dict[str, HospitalData]:
    """Each hospital's target columns released once at ``epsilon`` (seeded noise: a research run)."""
    out = {}
    for i, (name, hospital) in enumerate(hospitals.items()):
        rng = np.random.default_rng([seed, i, int(epsilon * 1000)])
        columns = tuple(hospital.spec.targets)
        sd = noise_sd(epsilon=epsilon, delta=delta, max_stay_days=max_stay_days, columns=columns)
        frame = hospital.records.frame.copy()
        for column in columns:
            frame[column] = frame[column].astype(float) + rng.normal(0.0, sd[column], len(frame))
        records = UnitRecords(frame, hospital.records.frequency, hospital.records.source, hospital.records.shape)
        out[name] = HospitalData(name, records, hospital.spec)
    return out
