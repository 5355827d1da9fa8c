"""A demand distribution from a few forecast quantiles: interpolated quantile function, CDF, expectations.

Between the forecast's quantile levels the quantile function is piecewise linear (so it is
monotone whenever the forecast's quantiles do not cross). Beyond the outer levels it follows a
normal tail whose scale is fitted to the two outer quantiles (``tail="normal"``), or stays
flat at the outer quantile (``tail="clamp"``). Demand is never negative: the quantile function
is clipped at 0, which puts any probability mass the normal tail would give below 0 at 0.

All functions are vectorised over rows: ``values`` has shape (N, K) for N series-days and K
levels; everything returned has shape (N,).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy.special import ndtr, ndtri

Tail = Literal["normal", "clamp"]

# Levels of the midpoint grid used for expectations: E[g(D)] = ∫_0^1 g(Q(p)) dp, midpoint rule.
_GRID = (np.arange(2000) + 0.5) / 2000


def _check(levels: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    levels = np.asarray(levels, dtype=float)
    values = np.atleast_2d(np.asarray(values, dtype=float))
    if levels.ndim != 1 or levels.size == 0:
        raise ValueError("levels must be a non-empty 1-D array of quantile levels")
    if values.shape[1] != levels.size:
        raise ValueError(f"values have {values.shape[1]} columns but there are {levels.size} levels")
    if np.any(np.diff(levels) <= 0) or levels[0] <= 0 or levels[-1] >= 1:
        raise ValueError(f"levels must be strictly increasing inside (0, 1), got {levels.tolist()}")
    if not np.all(np.isfinite(values)):
        raise ValueError("quantile values contain NaN or infinity")
    if np.any(np.diff(values, axis=1) < -1e-9):
        raise ValueError("quantile values cross (decrease with the level); fix the forecast first")
    return levels, np.maximum.accumulate(values, axis=1)


def tail_scale(levels: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Normal scale per row fitted to the outer quantiles: (q_hi - q_lo) / (z_hi - z_lo); 0 with one level."""
    levels, values = _check(levels, values)
    if levels.size == 1:
        return np.zeros(values.shape[0])
    z = ndtri(levels)
    return (values[:, -1] - values[:, 0]) / (z[-1] - z[0])


def quantile_at(levels: np.ndarray, values: np.ndarray, p: float | np.ndarray, *, tail: Tail = "normal") -> np.ndarray:
    """Interpolated quantile Q(p) per row.

    ``p`` is a scalar or an array broadcastable against (N,) — e.g. (N,) or (N, M) for M
    levels per row. Inside [levels[0], levels[-1]] linear interpolation between knots; outside,
    ``q_outer + sigma * (z(p) - z(level_outer))`` for the normal tail, ``q_outer`` for clamp.
    """
    levels, values = _check(levels, values)
    p = np.asarray(p, dtype=float)
    if np.any((p <= 0) | (p >= 1)):
        raise ValueError("probability levels must lie strictly inside (0, 1)")
    n = values.shape[0]
    extra = p.ndim >= 2 or (p.ndim == 1 and p.shape[0] != n)
    if p.ndim == 0:
        p_rows = np.broadcast_to(p, (n, 1))
    elif p.ndim == 1 and p.shape[0] == n:
        p_rows = p[:, None]
    elif p.ndim == 1:
        p_rows = np.broadcast_to(p[None, :], (n, p.size))
    else:
        p_rows = p
    # Locate segment k with levels[k] <= p < levels[k+1]; clip to inner segments.
    if levels.size == 1:
        out = np.broadcast_to(values[:, :1], p_rows.shape).copy()
    else:
        k = np.clip(np.searchsorted(levels, p_rows, side="right") - 1, 0, levels.size - 2)
        lo_l, hi_l = levels[k], levels[k + 1]
        rows = np.arange(n)[:, None]
        lo_v, hi_v = values[rows, k], values[rows, k + 1]
        w = np.clip((p_rows - lo_l) / (hi_l - lo_l), 0.0, 1.0)
        out = lo_v + w * (hi_v - lo_v)
    if tail == "normal":
        sigma = tail_scale(levels, values)[:, None]
        z = ndtri(p_rows)
        z_lo, z_hi = ndtri(levels[0]), ndtri(levels[-1])
        out = np.where(p_rows > levels[-1], values[:, -1:] + sigma * (z - z_hi), out)
        out = np.where(p_rows < levels[0], values[:, :1] + sigma * (z - z_lo), out)
    elif tail != "clamp":
        raise ValueError(f"tail must be 'normal' or 'clamp', got {tail!r}")
    out = np.maximum(out, 0.0)
    return out if extra else out[:, 0]


def cdf_at(levels: np.ndarray, values: np.ndarray, x: float | np.ndarray, *, tail: Tail = "normal") -> np.ndarray:
    """F(x) = P(D <= x) per row: the generalised inverse sup{p : Q(p) <= x} of :func:`quantile_at`.

    Point masses (tied quantiles, a degenerate forecast) are handled by the sup: for a forecast
    with every quantile equal to v, F(x) = 0 below v and 1 from v on.
    """
    levels, values = _check(levels, values)
    x = np.broadcast_to(np.asarray(x, dtype=float), (values.shape[0],))
    n = values.shape[0]
    best = np.zeros(n)
    # interior segments: the largest p in [l_k, l_{k+1}] with Q(p) <= x
    for k in range(levels.size - 1):
        lo_v, hi_v = values[:, k], values[:, k + 1]
        span = hi_v - lo_v
        with np.errstate(over="ignore"):  # a span of 1e-300 overflows to inf, which the clip turns into 1
            frac = np.where(span > 0, (x - lo_v) / np.where(span > 0, span, 1.0), 1.0)
        p = levels[k] + np.clip(frac, 0.0, 1.0) * (levels[k + 1] - levels[k])
        best = np.where(x >= lo_v, np.maximum(best, p), best)
    q_lo, q_hi = values[:, 0], values[:, -1]
    if tail == "normal":
        sigma = tail_scale(levels, values)
        safe = np.where(sigma > 0, sigma, 1.0)
        with np.errstate(over="ignore"):  # a tiny sigma sends z to ±inf, where ndtr is exact
            upper = ndtr(ndtri(levels[-1]) + (x - q_hi) / safe)
            lower = ndtr(ndtri(levels[0]) + (x - q_lo) / safe)
        degenerate = sigma <= 0
        best = np.where(x >= q_hi, np.where(degenerate, 1.0, upper), best)
        best = np.where(x < q_lo, np.where(degenerate, 0.0, lower), best)
    elif tail == "clamp":
        # Flat tails: all mass beyond the outer levels sits on the outer quantiles.
        best = np.where(x >= q_hi, 1.0, best)
        best = np.where(x < q_lo, 0.0, best)
    else:
        raise ValueError(f"tail must be 'normal' or 'clamp', got {tail!r}")
    return np.where(x < 0, 0.0, best)


def expected_shortfall_and_idle(
    levels: np.ndarray, values: np.ndarray, staffed: np.ndarray, *, tail: Tail = "normal"
) -> tuple[np.ndarray, np.ndarray]:
    """E[(D - s)+] (unserved patient-days) and E[(s - D)+] (idle staffed beds) per row.

    Computed as ∫_0^1 (Q(p) - s)+ dp by the midpoint rule on 2000 levels, so it agrees with
    the same interpolated distribution the plan is read from.
    """
    n = np.atleast_2d(np.asarray(values)).shape[0]
    q = quantile_at(levels, values, np.broadcast_to(_GRID, (n, _GRID.size)), tail=tail)  # (N, 2000)
    s = np.asarray(staffed, dtype=float)[:, None]
    return np.maximum(q - s, 0.0).mean(axis=1), np.maximum(s - q, 0.0).mean(axis=1)


def sample(levels: np.ndarray, values: np.ndarray, uniforms: np.ndarray, *, tail: Tail = "normal") -> np.ndarray:
    """Demand draws by inverse transform: Q(u) for uniforms of shape (N, M) -> (N, M)."""
    u = np.clip(np.asarray(uniforms, dtype=float), 1e-9, 1 - 1e-9)
    return quantile_at(levels, values, u, tail=tail)
