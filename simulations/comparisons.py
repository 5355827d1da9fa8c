"""The methods a federation is compared with, all scored on each hospital's same test windows.

local-only (each hospital alone, with and without DP), centralized (pooled windows, no
privacy: the upper bound) and the classical baselines (seasonal naive, Holt-Winters). Every
method returns quantile forecasts ``(N, H, T, Q)`` in patients/beds for a hospital's test
windows, and ``score`` turns them into ``forecast_metrics``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from medalloc.client.task import LocalData, test_forecasts
from medalloc_core.baselines import make_baseline, rolling_origin_forecasts
from medalloc_core.contract import DATE, UNIT
from medalloc_core.features import WindowSet, prepare_hospital
from medalloc_core.metrics import aggregate_over_hospitals, forecast_metrics
from medalloc_core.models import Forecaster, ForecasterConfig, build_model
from medalloc_core.privacy.release import ReleasePlan, ReleaseStore, deflate_bands
from medalloc_core.training import DPConfig, TrainConfig, train_local

logger = logging.getLogger(__name__)

SCALAR_KEYS = ("mae", "rmse", "wape", "pinball", "coverage", "width")
# The daily series' weekly period, under each baseline's own parameter name.
WEEKLY_PARAMS: dict[str, dict[str, int]] = {
    "seasonal_naive": {"season": 7},
    "moving_average": {"window": 7},
    "holt_winters": {"season": 7},
}


def score(y: np.ndarray, q: np.ndarray, quantiles: tuple[float, ...]) -> dict[str, Any]:
    """forecast_metrics without the per-horizon detail, plus the scored volume (for weighting)."""
    metrics = forecast_metrics(y, q, quantiles=quantiles)
    out: dict[str, Any] = {k: float(metrics[k]) for k in SCALAR_KEYS}
    out["per_horizon"] = {k: metrics["per_horizon"][k] for k in SCALAR_KEYS}
    out["volume"] = float(np.abs(y).sum())
    return out


def overall(per_hospital: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Volume-weighted and unweighted means over hospitals (``metrics.aggregate_over_hospitals``)."""
    cleaned = {
        h: {k: m[k] for k in SCALAR_KEYS}
        | {
            "per_horizon": m["per_horizon"] | {"mase": [float("nan")] * len(m["per_horizon"]["mae"])},
            "mase": float("nan"),
        }
        for h, m in per_hospital.items()
    }
    combined = aggregate_over_hospitals(cleaned, {h: m["volume"] for h, m in per_hospital.items()})
    return {
        kind: {k: v for k, v in values.items() if k not in ("per_horizon", "mase")} for kind, values in combined.items()
    }


def _train(
    config: ForecasterConfig,
    data: WindowSet,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    dp: DPConfig | None = None,
) -> Forecaster:
    model = build_model(config, seed=seed)
    train_local(model, data, config=TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed), dp=dp)
    return model


def local_only(
    config: ForecasterConfig, data: LocalData, *, epochs: int, batch_size: int, lr: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each hospital alone, no privacy: the same model and optimiser, as many epochs as the whole federation ran."""
    model = _train(config, data.dataset.train, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    return test_forecasts(model, data.dataset)


@dataclass(frozen=True)
class ReleasedHospital:
    """One hospital as a node sees it after its source release, and as the researcher scores it.

    ``released`` trains (its scaler fitted on released counts: post-processing); ``truth`` holds
    the TRUE windows scaled with that same scaler, so a model trained on the release is scored on
    what really happened, from true inputs (what a node feeds its model locally at forecast time).
    """

    released: LocalData
    truth: LocalData
    plan: ReleasePlan


def released_hospital(true: LocalData, store: ReleaseStore) -> ReleasedHospital:
    """Pair a hospital's true data with its node's stored release (``<ledger>.released.csv``)."""
    if store.plan is None:
        raise ValueError(f"nothing released at {store.path}: the node refused or never ran")
    records = store.records()
    released = LocalData(records, prepare_hospital(records, true.dataset.spec))
    truth = LocalData(true.records, prepare_hospital(true.records, true.dataset.spec, scaler=released.dataset.scaler))
    return ReleasedHospital(released, truth, store.plan)


def score_on_truth(model: Forecaster, hospital: ReleasedHospital) -> tuple[np.ndarray, np.ndarray]:
    """Test forecasts of a model trained on released counts, from true inputs, bands freed of the release noise."""
    y, q = test_forecasts(model, hospital.truth.dataset)
    sd = np.array([hospital.plan.noise_sd.get(t, 0.0) for t in hospital.truth.dataset.spec.targets])  # (T,)
    return y, deflate_bands(q, sd, tuple(model.config.quantiles))


def local_only_dp(
    config: ForecasterConfig, hospital: ReleasedHospital, *, epochs: int, batch_size: int, lr: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each hospital alone at the same patient-level epsilon: trained on its own release (post-processing).

    The release is the node's own, so federated and local-only spend the very same epsilon per
    patient; nothing more is charged.
    """
    model = _train(config, hospital.released.dataset.train, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    return score_on_truth(model, hospital)


def centralized(
    config: ForecasterConfig, hospitals: Mapping[str, LocalData], *, epochs: int, batch_size: int, lr: float, seed: int
) -> Forecaster:
    """One model on every hospital's training windows pooled (each scaled by its own scaler):
    the no-privacy upper bound."""
    pooled = WindowSet(
        torch.cat([d.dataset.train.X for d in hospitals.values()]),
        torch.cat([d.dataset.train.y for d in hospitals.values()]),
        np.concatenate([d.dataset.train.units for d in hospitals.values()]),
        np.concatenate([d.dataset.train.target_start for d in hospitals.values()]),
    )
    return _train(config, pooled, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)


def baseline_forecasts(name: str, data: LocalData, quantiles: tuple[float, ...]) -> np.ndarray:
    """A classical baseline's forecasts for exactly the test windows of ``data`` (same origins, same horizon).

    Each (unit, target) series is put on a complete daily calendar (gaps interpolated, as the
    forecaster's features do); the baseline is fitted once on the data up to the first test
    origin and conditioned on newer data at later origins (``refit_every`` = all origins).
    """
    ds = data.dataset
    H, T = ds.spec.horizon, len(ds.spec.targets)
    assert H is not None
    test = ds.test
    out = np.empty((len(test), H, T, len(quantiles)))
    frame = data.records.frame
    factory = functools.partial(make_baseline, name, quantiles=quantiles, **WEEKLY_PARAMS[name])
    for unit in np.unique(test.units):
        rows = np.flatnonzero(test.units == unit)
        unit_frame = frame[frame[UNIT] == unit].set_index(DATE).sort_index()
        dates = pd.date_range(unit_frame.index.min(), unit_frame.index.max(), freq="D")
        origins = dates.get_indexer(pd.DatetimeIndex(test.target_start[rows])) - 1
        for t, target in enumerate(ds.spec.targets):
            series = unit_frame[target].astype("float64").reindex(dates).interpolate(limit_direction="both").to_numpy()
            out[rows, :, t, :] = rolling_origin_forecasts(
                series, origins.tolist(), H, factory, refit_every=len(origins)
            )
    return out
