"""The bands a hospital gets, and the bands the evaluation scores: one calibration of a model trained on releases.

A model trained on a node's *released* counts ``y + e`` (``e ~ N(0, s^2)``, the source release's
noise) may have learned bands of ``y + e``, too wide for ``y`` — or, when it barely moved from
public weights calibrated on true-like data, bands of ``y`` already. A fixed deflation by ``s``
(``privacy.release.deflate_bands``) narrows both alike. Instead, the node measures what its model
learned on its *validation* days (held out from training): the model's forecasts from the node's
own true recent counts (as at forecast time) against its released validation targets. Their
squared error is ``E[(y - m)^2] + s^2``, so ``E[(y - m)^2]`` is known without a true target leaving
the node, and each target's band is scaled by ``k = sqrt((mean r^2 - s^2) / mean t^2)`` where
``t`` is the band's spread (Gaussian units, from the outermost quantiles), ``k`` within
``[K_MIN, K_MAX]``. Everything is computed on the node (true inputs never leave it) and only
from released targets and the release's own public noise level.

``medalloc forecast --release`` (``predict.forecast_records``) and ``medalloc simulate``'s scoring
(``tasks.forecasting.comparisons.run_method``) both call :func:`node_band_factors` and
:func:`scale_bands`, so what a hospital gets is what was scored (``tests/test_forecast_calibration.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from medalloc_core.contract import UnitRecords
from medalloc_core.forecast.features import HospitalDataset, WindowSet, WindowSpec, prepare_hospital
from medalloc_core.forecast.models import ForecasterNet
from medalloc_core.forecast.training import predict

logger = logging.getLogger(__name__)

__all__ = [
    "K_MAX",
    "K_MIN",
    "MIN_VALIDATION_WINDOWS",
    "node_band_factors",
    "release_band_factors",
    "scale_bands",
]

K_MIN, K_MAX = 0.3, 3.0  # a band is narrowed at most to 0.3x (as deflate_bands) and widened at most 3x
MIN_VALIDATION_WINDOWS = 4  # fewer validation windows than this: the bands are left as learned (factor 1)
CONFIDENCE = 2.0  # standard errors: a band moves only when the validation days show it is off by more than this


def _spread(q: np.ndarray, quantiles: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Median ``(..., )`` and Gaussian-unit spread ``(..., )`` of ``(..., Q)`` quantile forecasts."""
    from scipy.stats import norm

    levels = np.asarray(quantiles, dtype=float)
    mid = int(np.argmin(np.abs(levels - 0.5)))
    width = norm.ppf(levels[-1]) - norm.ppf(levels[0])
    return q[..., mid], (q[..., -1] - q[..., 0]) / width


def scale_bands(values: np.ndarray, factors: np.ndarray, quantiles: Sequence[float]) -> np.ndarray:
    """``(N, H, T, Q)`` quantile forecasts with each target's band scaled by ``factors[t]`` around its median.

    The median is unchanged and the quantile order kept (factors are positive).
    """
    if len(quantiles) < 2:
        return values
    levels = np.asarray(quantiles, dtype=float)
    mid = int(np.argmin(np.abs(levels - 0.5)))
    m = values[..., mid : mid + 1]
    k = np.asarray(factors, dtype=float).reshape((1,) * (values.ndim - 2) + (-1, 1))
    return m + (values - m) * k


def _align(truth: WindowSet, released: WindowSet) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``truth`` and ``released`` that are the same window (unit, first target day)."""
    keys = {(str(u), np.datetime64(d, "ns")): i for i, (u, d) in enumerate(zip(released.units, released.target_start))}
    pairs = [
        (i, keys[(str(u), np.datetime64(d, "ns"))])
        for i, (u, d) in enumerate(zip(truth.units, truth.target_start))
        if (str(u), np.datetime64(d, "ns")) in keys
    ]
    if not pairs:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    a, b = zip(*pairs)
    return np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)


def release_band_factors(
    model: ForecasterNet,
    truth: HospitalDataset,
    released: HospitalDataset,
    noise_sd: Mapping[str, float],
) -> np.ndarray:
    """Per target ``(T,)``: the factor that makes the model's bands those of the true counts (see the module).

    ``truth``: the node's true records windowed with the model's spec (inputs as at forecast time);
    ``released``: its released counts windowed the same way (the validation targets). A target whose
    validation has fewer than ``MIN_VALIDATION_WINDOWS`` windows keeps factor 1 (bands as learned).
    """
    targets = tuple(truth.spec.targets)
    quantiles = tuple(model.config.quantiles)
    factors = np.ones(len(targets))
    rows_t, rows_r = _align(truth.val, released.val)
    if len(rows_t) < MIN_VALIDATION_WINDOWS:
        logger.info("%d validation windows: the bands are left as learned", len(rows_t))
        return factors
    inputs = truth.val.select(rows_t)
    pred = truth.to_original(predict(model, inputs.X), inputs)  # (N, H, T, Q) from the true recent counts
    targets_rel = released.val.select(rows_r)
    y = released.to_original(targets_rel.y.numpy(), targets_rel)  # (N, H, T) released validation targets
    median, spread = _spread(pred, quantiles)
    horizon = pred.shape[1]
    independent = max(1.0, len(rows_t) / horizon)  # windows overlap by H - 1 days: about N / H independent ones
    for t, name in enumerate(targets):
        s2 = float(noise_sd.get(name, 0.0)) ** 2
        per_window = np.nanmean((y[..., t] - median[..., t]) ** 2, axis=1)  # (N,) squared error, released targets
        t2 = float(np.mean(spread[..., t] ** 2))
        if not (np.isfinite(per_window).all() and t2 > 0):
            continue
        r2 = float(per_window.mean())
        margin = CONFIDENCE * float(per_window.std()) / np.sqrt(independent)
        # the band's true-count spread lies in [low, high] (about 95 %); within it the bands stay as learned,
        # outside it they move only to the nearest end (the release noise often dominates: then nothing moves)
        low = np.sqrt(max(r2 - margin - s2, 0.0) / t2)
        high = np.sqrt(max(r2 + margin - s2, 0.0) / t2)
        k = 1.0 if low <= 1.0 <= high else (high if high < 1.0 else low)
        factors[t] = float(np.clip(k, K_MIN, K_MAX))
    return factors


def node_band_factors(
    model: ForecasterNet,
    spec: WindowSpec,
    records: UnitRecords,
    released: UnitRecords,
    noise_sd: Mapping[str, float],
) -> np.ndarray:
    """:func:`release_band_factors` from a node's true ``records`` and its ``released`` counts under ``spec``.

    Under series scaling both are scaled with the scaler of the released counts (what the model was
    trained with); under window scaling each window scales itself.
    """
    released_ds = prepare_hospital(released, spec)
    truth_ds = (
        prepare_hospital(records, spec)
        if released_ds.scaler is None
        else prepare_hospital(records, spec, scaler=released_ds.scaler)
    )
    return release_band_factors(model, truth_ds, released_ds, noise_sd)
