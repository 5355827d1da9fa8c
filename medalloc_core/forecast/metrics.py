"""Forecast accuracy metrics (MAE, RMSE, WAPE, MASE, pinball, interval coverage/width), per horizon and overall.

Shapes used throughout (plain numpy, no pandas):

- actuals ``y``: ``(N, H)`` or ``(N, H, T)`` — N forecast origins, H horizon steps, optionally
  T targets (admissions, census, ...);
- point forecasts ``y_hat``: the same shape as ``y``;
- quantile forecasts ``q_forecast``: ``y.shape + (Q,)`` with levels ``quantiles`` (length Q,
  strictly increasing, e.g. ``(0.1, 0.5, 0.9)``).

Every metric reduces over all axes by default; ``per_horizon=True`` keeps axis 1 (the horizon
step) so a planner sees how accuracy decays from tomorrow to next week. See docs/metrics.md for
what each number means in planning terms.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

DEFAULT_QUANTILES: tuple[float, ...] = (0.1, 0.5, 0.9)
DEFAULT_INTERVAL: tuple[float, float] = (0.1, 0.9)  # the P10-P90 band: should hold ~80% of actuals

# Metrics where a hospital's share of the regional volume is the natural weight.
_SCALAR_METRICS: tuple[str, ...] = ("mae", "rmse", "wape", "mase", "pinball", "coverage", "width")


# ----------------------------------------------------------------------------- validation
def _as_actuals(y: np.ndarray, what: str = "actuals") -> np.ndarray:
    y = np.asarray(y, dtype=float)
    if y.ndim not in (2, 3):
        raise ValueError(f"{what} must have shape (N, H) or (N, H, T); got shape {y.shape}")
    if not np.all(np.isfinite(y)):
        raise ValueError(
            f"{what} contain {int(np.sum(~np.isfinite(y)))} non-finite value(s); "
            "drop those forecast origins before scoring"
        )
    return y


def _as_point(y: np.ndarray, y_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = _as_actuals(y)
    y_hat = np.asarray(y_hat, dtype=float)
    if y_hat.shape != y.shape:
        raise ValueError(f"point forecast shape {y_hat.shape} does not match actuals shape {y.shape}")
    if not np.all(np.isfinite(y_hat)):
        raise ValueError("point forecast contains non-finite values")
    return y, y_hat


def _as_quantiles(
    y: np.ndarray, q_forecast: np.ndarray, quantiles: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = _as_actuals(y)
    q_forecast = np.asarray(q_forecast, dtype=float)
    levels = np.asarray(quantiles, dtype=float)
    if levels.ndim != 1 or levels.size == 0:
        raise ValueError(f"quantiles must be a non-empty 1-D sequence; got {quantiles!r}")
    if np.any((levels <= 0) | (levels >= 1)) or np.any(np.diff(levels) <= 0):
        raise ValueError(f"quantiles must be strictly increasing levels in (0, 1); got {tuple(levels)}")
    if q_forecast.shape != y.shape + (levels.size,):
        raise ValueError(
            f"quantile forecast shape {q_forecast.shape} does not match actuals shape {y.shape} "
            f"plus {levels.size} quantile level(s): expected {y.shape + (levels.size,)}"
        )
    if not np.all(np.isfinite(q_forecast)):
        raise ValueError("quantile forecast contains non-finite values")
    return y, q_forecast, levels


def _level_index(quantiles: Sequence[float] | np.ndarray, level: float) -> int:
    """Index of ``level`` in ``quantiles`` (within 1e-9), or a ValueError naming the levels present."""
    hits = np.flatnonzero(np.isclose(np.asarray(quantiles, dtype=float), level, rtol=0.0, atol=1e-9))
    if hits.size == 0:
        raise ValueError(f"quantile level {level} is not among the forecast's levels {tuple(quantiles)}")
    return int(hits[0])


def _reduce_axes(ndim: int, per_horizon: bool) -> tuple[int, ...]:
    return tuple(a for a in range(ndim) if not (per_horizon and a == 1))


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray | float:
    """num / den with nan (not inf, not a warning) wherever den == 0."""
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return float(out) if out.ndim == 0 else out


def _result(value: np.ndarray | float) -> np.ndarray | float:
    value = np.asarray(value, dtype=float)
    return float(value) if value.ndim == 0 else value


# ----------------------------------------------------------------------------- point metrics
def mae(y: np.ndarray, y_hat: np.ndarray, *, per_horizon: bool = False) -> np.ndarray | float:
    """Mean absolute error, in the units of the series (patients, beds).

    Returns a float, or an array of length H when ``per_horizon`` is True.
    """
    y, y_hat = _as_point(y, y_hat)
    return _result(np.mean(np.abs(y - y_hat), axis=_reduce_axes(y.ndim, per_horizon)))


def rmse(y: np.ndarray, y_hat: np.ndarray, *, per_horizon: bool = False) -> np.ndarray | float:
    """Root mean squared error; punishes the occasional large miss more than MAE does."""
    y, y_hat = _as_point(y, y_hat)
    return _result(np.sqrt(np.mean((y - y_hat) ** 2, axis=_reduce_axes(y.ndim, per_horizon))))


def wape(y: np.ndarray, y_hat: np.ndarray, *, per_horizon: bool = False) -> np.ndarray | float:
    """Weighted absolute percentage error: ``sum|y - y_hat| / sum|y|``.

    The share of the total volume that was mis-planned. When ``sum|y| == 0`` (nothing happened
    in the scored window, e.g. a unit that was closed) the ratio is undefined and the result
    is ``nan`` — never ``inf`` and never a warning — so a caller can drop or flag it.
    """
    y, y_hat = _as_point(y, y_hat)
    axes = _reduce_axes(y.ndim, per_horizon)
    return _safe_ratio(np.sum(np.abs(y - y_hat), axis=axes), np.sum(np.abs(y), axis=axes))


def mase_scale(history: np.ndarray, season: int = 7) -> float | np.ndarray:
    """Scale for MASE: the in-sample MAE of the one-step seasonal-naive forecast.

    ``scale = mean_t |x[t] - x[t - season]|`` over the training history of the same series
    (season 7 for daily data, 52 for weekly). A model with MASE < 1 beats, out of sample, what
    "same day last week" achieved in sample.

    Parameters
    ----------
    history : array, shape (n,) or (n, T)
        Training-period values of one series (or of T targets, one column each).
    season : int, default 7
        Season length in periods.

    Returns
    -------
    float, or array of shape (T,) for 2-D history. Zero when the history repeats exactly
    every season (then MASE is undefined and :func:`mase` returns nan).
    """
    history = np.asarray(history, dtype=float)
    if history.ndim not in (1, 2):
        raise ValueError(f"history must have shape (n,) or (n, T); got {history.shape}")
    if season < 1:
        raise ValueError(f"season must be a positive number of periods; got {season}")
    if history.shape[0] <= season:
        raise ValueError(
            f"history has {history.shape[0]} periods; the MASE scale with season {season} needs at least {season + 1}"
        )
    if not np.all(np.isfinite(history)):
        raise ValueError("history contains non-finite values")
    return _result(np.mean(np.abs(history[season:] - history[:-season]), axis=0))


def mase(
    y: np.ndarray, y_hat: np.ndarray, *, scale: float | np.ndarray, per_horizon: bool = False
) -> np.ndarray | float:
    """Mean absolute scaled error: MAE divided by :func:`mase_scale` of the same series.

    ``scale`` is a float, or an array broadcastable against ``y`` (e.g. shape (T,) for one
    scale per target, or (N, 1) / (N, 1, T) when origins of several series are pooled). Errors
    are divided by their own series' scale before averaging. Where a scale is 0 the result is
    nan (a series that repeats exactly every season cannot be scaled).
    """
    y, y_hat = _as_point(y, y_hat)
    scale = np.asarray(scale, dtype=float)
    try:
        scale_b = np.broadcast_to(scale, y.shape)
    except ValueError:
        raise ValueError(f"MASE scale of shape {scale.shape} does not broadcast to actuals {y.shape}") from None
    if np.any(scale_b < 0) or not np.all(np.isfinite(scale_b)):
        raise ValueError("MASE scale must be finite and non-negative")
    if np.any(scale_b == 0):
        shape = (y.shape[1],) if per_horizon else ()
        return _result(np.full(shape, np.nan))
    return _result(np.mean(np.abs(y - y_hat) / scale_b, axis=_reduce_axes(y.ndim, per_horizon)))


# ----------------------------------------------------------------------------- probabilistic metrics
def pinball_loss(
    y: np.ndarray,
    q_forecast: np.ndarray,
    *,
    quantiles: Sequence[float],
    per_horizon: bool = False,
) -> np.ndarray | float:
    """Pinball (quantile) loss averaged over observations and over the quantile levels.

    For level ``tau`` and error ``e = y - q``: ``tau * e`` if ``e >= 0`` (under-forecast) else
    ``(tau - 1) * e`` (over-forecast). At ``tau = 0.5`` it is half the absolute error; a P90
    that is too low costs 9 times more than one equally too high — the asymmetry a bed plan
    built on P90 should have.
    """
    y, q_forecast, levels = _as_quantiles(y, q_forecast, quantiles)
    e = y[..., None] - q_forecast  # y.shape + (Q,)
    loss = np.maximum(levels * e, (levels - 1.0) * e)
    axes = _reduce_axes(loss.ndim, per_horizon)  # the quantile axis is the last one, reduced too
    return _result(np.mean(loss, axis=axes))


def interval_coverage(
    y: np.ndarray, lower: np.ndarray, upper: np.ndarray, *, per_horizon: bool = False
) -> np.ndarray | float:
    """Share of actuals inside ``[lower, upper]`` (both ends inclusive).

    For the P10–P90 band a calibrated forecast covers about 0.8: much less means the band is
    too narrow (surges will surprise the planner), much more means it is wastefully wide.
    """
    y, lower = _as_point(y, lower)
    _, upper = _as_point(y, upper)
    if np.any(lower > upper):
        raise ValueError("interval lower bound exceeds upper bound (crossing quantiles)")
    inside = (y >= lower) & (y <= upper)
    return _result(np.mean(inside, axis=_reduce_axes(y.ndim, per_horizon)))


def interval_width(lower: np.ndarray, upper: np.ndarray, *, per_horizon: bool = False) -> np.ndarray | float:
    """Mean width ``upper - lower`` of the prediction interval, in series units (beds, patients)."""
    lower = _as_actuals(lower, "interval lower bounds")
    upper = _as_actuals(upper, "interval upper bounds")
    if upper.shape != lower.shape:
        raise ValueError(f"upper bound shape {upper.shape} does not match lower bound shape {lower.shape}")
    if np.any(lower > upper):
        raise ValueError("interval lower bound exceeds upper bound (crossing quantiles)")
    return _result(np.mean(upper - lower, axis=_reduce_axes(lower.ndim, per_horizon)))


# ----------------------------------------------------------------------------- bundles
def forecast_metrics(
    y: np.ndarray,
    q_forecast: np.ndarray,
    *,
    quantiles: Sequence[float],
    level: float = 0.5,
    interval: tuple[float, float] = DEFAULT_INTERVAL,
    mase_scale: float | np.ndarray | None = None,
) -> dict[str, Any]:
    """All metrics for one set of quantile forecasts, overall and per horizon step.

    Parameters
    ----------
    y : array, shape (N, H) or (N, H, T)
        Actuals at each forecast origin and horizon step.
    q_forecast : array, shape y.shape + (Q,)
        Quantile forecasts at levels ``quantiles``.
    quantiles : sequence of float
        Strictly increasing levels of the last axis of ``q_forecast``.
    level : float, default 0.5
        Quantile used as the point forecast for MAE/RMSE/WAPE/MASE (the median).
    interval : (float, float), default (0.1, 0.9)
        Levels of the band scored by coverage and width; both must be in ``quantiles``.
    mase_scale : float or array, optional
        From :func:`mase_scale` on the training history; without it ``mase`` is nan.

    Returns
    -------
    dict with float entries ``mae, rmse, wape, mase, pinball, coverage, width``, ``n``
    (number of scored values), ``interval`` (the band's levels), ``nominal_coverage`` (what a
    calibrated band covers: ``interval[1] - interval[0]``) and ``per_horizon``: a dict of the
    same seven metrics, each a list of H floats (step 1 first). Plain Python types, so the
    dict serialises to JSON as is.
    """
    y, q_forecast, levels = _as_quantiles(y, q_forecast, quantiles)
    point = q_forecast[..., _level_index(levels, level)]
    lo, hi = interval
    lower = q_forecast[..., _level_index(levels, lo)]
    upper = q_forecast[..., _level_index(levels, hi)]
    # Quantile crossing would make coverage meaningless; baselines and models both sort, so
    # this only fires on a bug upstream.
    if np.any(lower > upper):
        raise ValueError(f"quantile forecasts cross: P{lo * 100:g} exceeds P{hi * 100:g} somewhere")

    def both(fn: Any, *args: Any, **kwargs: Any) -> tuple[float, list[float]]:
        overall = fn(*args, **kwargs)
        ph = fn(*args, per_horizon=True, **kwargs)
        return float(overall), [float(v) for v in np.atleast_1d(ph)]

    out: dict[str, Any] = {}
    per_h: dict[str, list[float]] = {}
    horizon = y.shape[1]
    computed = {
        "mae": both(mae, y, point),
        "rmse": both(rmse, y, point),
        "wape": both(wape, y, point),
        "mase": (
            both(mase, y, point, scale=mase_scale) if mase_scale is not None else (math.nan, [math.nan] * horizon)
        ),
        "pinball": both(pinball_loss, y, q_forecast, quantiles=levels),
        "coverage": both(interval_coverage, y, lower, upper),
        "width": both(interval_width, lower, upper),
    }
    for name, (overall, per_step) in computed.items():
        out[name] = overall
        per_h[name] = per_step
    out["n"] = int(y.size)
    out["interval"] = (float(lo), float(hi))
    out["nominal_coverage"] = float(hi - lo)
    out["per_horizon"] = per_h
    return out


def aggregate_over_hospitals(
    per_hospital: Mapping[str, Mapping[str, Any]], volumes: Mapping[str, float]
) -> dict[str, dict[str, Any]]:
    """Combine per-hospital :func:`forecast_metrics` results two ways.

    - ``"volume_weighted"``: each hospital weighted by its actual volume in the scored window
      (``sum|y|``, pass it in ``volumes``). This answers "how well is the region's demand
      planned": a large hospital's misses move more beds. For WAPE it equals the pooled WAPE of
      all hospitals together.
    - ``"unweighted"``: every hospital counts once. This answers "how well does the method
      serve a typical hospital", so small hospitals are not drowned out by large ones.

    Hospitals whose value is nan for a metric (e.g. WAPE of an all-zero window, MASE without a
    scale) are left out of that metric's average, weights renormalised over the rest; a metric
    that is nan everywhere stays nan. ``per_horizon`` lists are aggregated step by step.

    Parameters
    ----------
    per_hospital : mapping hospital id -> metrics dict from :func:`forecast_metrics`
    volumes : mapping hospital id -> actual volume (non-negative) over the scored window

    Returns
    -------
    ``{"volume_weighted": {...}, "unweighted": {...}}``, each with the seven scalar metrics,
    ``hospitals`` (count) and ``per_horizon``.
    """
    if not per_hospital:
        raise ValueError("no hospitals to aggregate")
    missing = sorted(set(per_hospital) - set(volumes))
    if missing:
        raise ValueError(f"no volume given for hospital(s) {missing}")
    ids = sorted(per_hospital)
    vol = np.array([float(volumes[h]) for h in ids])
    if np.any(vol < 0) or not np.all(np.isfinite(vol)):
        raise ValueError("hospital volumes must be finite and non-negative")

    def weighted(values: np.ndarray, weights: np.ndarray) -> float:
        ok = ~np.isnan(values)
        if not ok.any() or weights[ok].sum() == 0:
            return math.nan
        return float(np.sum(values[ok] * weights[ok]) / weights[ok].sum())

    result: dict[str, dict[str, Any]] = {}
    for label, w in (("volume_weighted", vol), ("unweighted", np.ones_like(vol))):
        agg: dict[str, Any] = {}
        per_h: dict[str, list[float]] = {}
        for name in _SCALAR_METRICS:
            agg[name] = weighted(np.array([float(per_hospital[h][name]) for h in ids]), w)
            steps = np.array([per_hospital[h]["per_horizon"][name] for h in ids], dtype=float)  # (hospitals, H)
            per_h[name] = [weighted(steps[:, k], w) for k in range(steps.shape[1])]
        agg["hospitals"] = len(ids)
        agg["per_horizon"] = per_h
        result[label] = agg
    return result
