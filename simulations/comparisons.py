"""The methods a federation is compared with, all scored on each hospital's same test windows.

local-only (each hospital alone, with and without DP), centralized (pooled windows, no
privacy: the upper bound) and the classical baselines (seasonal naive, Holt-Winters). Every
method returns quantile forecasts ``(N, H, T, Q)`` in patients/beds for a hospital's test
windows, and ``score`` turns them into ``forecast_metrics``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from medalloc.client.task import LocalData, test_forecasts
from medalloc_core.features import WindowSet
from medalloc_core.forecasters import Classical, HospitalData, Origins
from medalloc_core.metrics import aggregate_over_hospitals, forecast_metrics
from medalloc_core.models import Forecaster, ForecasterConfig, build_model
from medalloc_core.privacy.accounting import epsilon_for
from medalloc_core.training import DPConfig, TrainConfig, adaptive_batch_size, train_local

logger = logging.getLogger(__name__)

SCALAR_KEYS = ("mae", "rmse", "wape", "pinball", "coverage", "width")


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
    init: str = "none",
) -> Forecaster:
    if init == "pretrained":  # the same public start as the federation (run config ``init``)
        from medalloc_core.pretrained import load_pretrained

        model = load_pretrained(config)
    else:
        model = build_model(config, seed=seed)
    train_local(model, data, config=TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed), dp=dp)
    return model


def local_only(
    config: ForecasterConfig,
    data: LocalData,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    init: str = "none",
) -> tuple[np.ndarray, np.ndarray]:
    """Each hospital alone, no privacy: the same model and optimiser, as many epochs as the whole federation ran."""
    model = _train(config, data.dataset.train, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, init=init)
    return test_forecasts(model, data.dataset)


def local_only_dp(
    config: ForecasterConfig,
    data: LocalData,
    *,
    history: list[tuple[float, float, int]],
    batch_size: int,
    lr: float,
    seed: int,
    max_grad_norm: float,
    delta: float,
    init: str = "none",
) -> tuple[np.ndarray, np.ndarray, float] | None:
    """Each hospital alone with DP-SGD spending exactly what its federated participation spent.

    ``history`` is the node's ledger history for the federation run (``(sigma, q, steps)``
    per round). Training replays it: the same noise, sampling rate and total steps, hence the
    same epsilon. Returns ``None`` when the node spent nothing (it refused every round).
    Not charged to the node's ledger: it is a counterfactual for the comparison.
    """
    if not history:
        return None
    sigmas = {round(h[0], 12) for h in history}
    rates = {round(h[1], 12) for h in history}
    if len(sigmas) != 1 or len(rates) != 1:
        logger.warning("local-only DP: the node's rounds used different noise or sampling; replaying the first")
    sigma, rate = history[0][0], history[0][1]
    steps = sum(int(h[2]) for h in history)
    batches = max(1, round(1 / rate))
    epochs = max(1, round(steps / batches))
    dp = DPConfig(noise_multiplier=sigma, max_grad_norm=max_grad_norm, delta=delta, accountant="prv")
    train = data.dataset.train
    batch_size = adaptive_batch_size(len(train), batch_size, warn=False)  # the batch the node itself used
    model = _train(config, train, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, dp=dp, init=init)
    y, q = test_forecasts(model, data.dataset)
    return y, q, float(epsilon_for([(sigma, rate, epochs * batches)], delta=delta))


def centralized(
    config: ForecasterConfig,
    hospitals: Mapping[str, LocalData],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    init: str = "none",
) -> Forecaster:
    """One model on every hospital's training windows pooled (each scaled by its own scaler):
    the no-privacy upper bound."""
    pooled = WindowSet(
        torch.cat([d.dataset.train.X for d in hospitals.values()]),
        torch.cat([d.dataset.train.y for d in hospitals.values()]),
        np.concatenate([d.dataset.train.units for d in hospitals.values()]),
        np.concatenate([d.dataset.train.target_start for d in hospitals.values()]),
    )
    return _train(config, pooled, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, init=init)


def baseline_forecasts(name: str, data: LocalData, quantiles: tuple[float, ...]) -> np.ndarray:
    """A classical baseline's forecasts for exactly the test windows of ``data`` (same origins, same horizon).

    Through the one forecaster interface (``medalloc_core.forecasters.Classical``): each
    (unit, target) series on a complete daily calendar (gaps interpolated, as the features do),
    fitted once on the data up to the first test origin and conditioned on newer data at later
    origins (``refit_every`` = all origins).
    """
    test = data.dataset.test
    if len(test) == 0:
        return np.empty((0, *test.y.shape[1:], len(quantiles)))
    hospital = HospitalData(str(data.records.source), data.records, data.dataset.spec)
    forecaster = Classical(name, season=7, refit_every=len(test), quantiles=quantiles)
    return forecaster.fit({hospital.name: hospital}).predict(hospital, Origins.of(test))
