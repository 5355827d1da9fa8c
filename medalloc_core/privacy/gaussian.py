"""The exact privacy profile of the Gaussian mechanism: epsilon for a noise multiplier and back.

For a query of L2 sensitivity 1 released with ``N(0, z^2)`` noise, the tight ``delta(epsilon)``
is (Balle & Wang 2018, Theorem 8)::

    delta(eps) = Phi(-eps z + 1 / (2 z)) - e^eps Phi(-eps z - 1 / (2 z))

and k such releases of sensitivities and noises composed are one Gaussian with
``1 / z^2 = sum_i 1 / z_i^2`` (mu-GDP composes in quadrature, Dong, Roth & Su 2022). No
discretisation or accountant error: this is the exact curve, so it is what the ledger uses for
histories made only of unsubsampled Gaussian releases (the source release, shares, DP metrics).
``simulations/benchmarks/accountant.py`` checks it against Google's ``dp-accounting``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from scipy.optimize import brentq
from scipy.special import log_ndtr

__all__ = ["compose_noise_multipliers", "gaussian_delta", "gaussian_epsilon", "gaussian_noise_multiplier"]

_Z_MIN, _Z_MAX = 1e-3, 1e6


def gaussian_delta(epsilon: float, *, noise_multiplier: float) -> float:
    """Tight delta of the Gaussian mechanism (sensitivity 1, noise std ``noise_multiplier``) at ``epsilon``."""
    z = noise_multiplier
    if not z > 0:
        raise ValueError(f"noise_multiplier must be > 0, got {z!r}")
    # Both terms in log space: e^eps * Phi(-...) overflows/underflows naively for large eps.
    a = log_ndtr(-epsilon * z + 1 / (2 * z))
    b = epsilon + log_ndtr(-epsilon * z - 1 / (2 * z))
    return max(0.0, math.exp(a) - math.exp(b)) if a > b else 0.0


def gaussian_epsilon(*, noise_multiplier: float, delta: float) -> float:
    """Smallest epsilon with ``gaussian_delta(epsilon) <= delta`` (0 when even epsilon 0 meets it).

    Returned as the upper end of a bisection bracket of width 1e-9: a guarantee, never below
    the true value.
    """
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    if gaussian_delta(0.0, noise_multiplier=noise_multiplier) <= delta:
        return 0.0
    hi = 1.0
    while gaussian_delta(hi, noise_multiplier=noise_multiplier) > delta:
        hi *= 2
        if hi > 1e6:
            return math.inf
    lo = hi / 2 if hi > 1.0 else 0.0
    while hi - lo > 1e-9 * max(1.0, hi):
        mid = (lo + hi) / 2
        if gaussian_delta(mid, noise_multiplier=noise_multiplier) > delta:
            lo = mid
        else:
            hi = mid
    return hi


def gaussian_noise_multiplier(*, epsilon: float, delta: float) -> float:
    """Smallest noise multiplier (to 1e-9 relative) whose Gaussian mechanism is (epsilon, delta)-DP."""
    if not epsilon > 0 or not math.isfinite(epsilon):
        raise ValueError(f"epsilon must be a finite number > 0, got {epsilon!r}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    z = brentq(lambda v: gaussian_delta(epsilon, noise_multiplier=v) - delta, _Z_MIN, _Z_MAX, xtol=1e-12, rtol=1e-12)
    # Nudge up until the guarantee holds as the ledger will compute it (brentq, and the
    # bisection of gaussian_epsilon, may each land a hair on the wrong side).
    while (
        gaussian_delta(epsilon, noise_multiplier=z) > delta
        or gaussian_epsilon(noise_multiplier=z, delta=delta) > epsilon
    ):
        z *= 1 + 1e-8
    return float(z)


def compose_noise_multipliers(noise_multipliers: Iterable[float]) -> float:
    """The single noise multiplier equivalent to composing Gaussians: ``(sum 1 / z_i^2)^(-1/2)``; inf for none."""
    total = 0.0
    for z in noise_multipliers:
        if not z > 0:
            raise ValueError(f"noise multipliers must be > 0, got {z!r}")
        total += 1.0 / (z * z)
    return math.inf if total == 0 else 1.0 / math.sqrt(total)
