"""The methods a federation is compared with, all scored at the same rolling origins of every hospital.

``medalloc simulate`` scores every method through the one forecaster interface
(``medalloc_core.forecast.forecasters``) at the same origins (``medalloc_core.forecast.evaluation``): the
federated model as the federation left it, the model it started from, each hospital alone
(on its true counts; on its own source release, from the run's start and from scratch),
centralized training on pooled true counts (the no-privacy upper bound) and the classical
baselines refitted at every origin. Networks train on data before the held-out weeks only
(the nodes' window spec holds them out too) and forecast from the hospital's TRUE recent counts,
as a node does locally. ``released_hospital`` / ``score_on_truth`` / ``baseline_forecasts``
serve the patient-privacy benchmark's test-split scoring.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medalloc_core.forecast.calibration import node_band_factors, release_band_factors, scale_bands
from medalloc_core.forecast.evaluation import rolling_origins
from medalloc_core.forecast.features import WindowSpec, prepare_hospital
from medalloc_core.forecast.forecasters import Classical, Forecaster, HospitalData, LocalOnly, NeuralForecaster, Origins
from medalloc_core.forecast.metrics import aggregate_over_hospitals, forecast_metrics
from medalloc_core.forecast.models import ForecasterNet as Network
from medalloc_core.forecast.region import daily_totals, region_totals, with_region
from medalloc_core.privacy.release import ReleasePlan, ReleaseStore
from medalloc_core.tasks.forecasting.local import LocalData, test_forecasts
from medalloc_core.tasks.forecasting.task import default_release_path
from medalloc_core.validation import load_unit_records

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


def score_on_truth(model: Network, hospital: ReleasedHospital) -> tuple[np.ndarray, np.ndarray]:
    """Test forecasts of a model trained on released counts, from true inputs, bands calibrated as a node's
    (``forecast.calibration``: measured on its validation days against its released targets)."""
    y, q = test_forecasts(model, hospital.truth.dataset)
    factors = release_band_factors(model, hospital.truth.dataset, hospital.released.dataset, hospital.plan.noise_sd)
    return y, scale_bands(q, factors, tuple(model.config.quantiles))


def baseline_forecasts(name: str, data: LocalData, quantiles: tuple[float, ...]) -> np.ndarray:
    """A classical baseline's forecasts for exactly the test windows of ``data`` (same origins, same horizon).

    Through the one forecaster interface (``medalloc_core.forecast.forecasters.Classical``): each
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


# ----------------------------------------------------------------------------- rolling-origin comparison
@dataclass(frozen=True)
class Evaluation:
    """Every hospital as the methods see it, and the origins every method is scored at.

    ``truth``: the hospital's own files; ``released``: its node's stored source release (absent
    for a node that released nothing), what the private methods train on; ``origins``: the
    same rolling origins for every method; ``actuals``: the true values after each origin.
    """

    truth: dict[str, HospitalData]
    released: dict[str, HospitalData]
    plans: dict[str, ReleasePlan]
    origins: dict[str, Origins]
    actuals: dict[str, np.ndarray]


def evaluation_data(
    files: Mapping[str, Path], ledgers: Mapping[str, Path], spec: WindowSpec, *, n_origins: int
) -> Evaluation:
    """Load each hospital's file and its node's release (beside its ledger, ``ledgers[id]``), pick the origins.

    ``spec`` is the nodes' own window spec, so the held-out weeks are exactly the days no node
    trained on.
    """
    truth = {hid: HospitalData(hid, load_unit_records(path), spec) for hid, path in files.items()}
    released, plans = {}, {}
    for hid in truth:
        store = ReleaseStore.open(default_release_path(ledgers[hid]))
        if store.plan is not None:
            released[hid] = HospitalData(hid, store.records(), spec)
            plans[hid] = store.plan
    if "region" in spec.context:
        # What each node was sent: the others' released daily totals, summed per day (its truth and its
        # release both read that region, as a node's model does at forecast time).
        totals = {hid: daily_totals(h.records) for hid, h in released.items()}
        for group in (truth, released):
            for hid, h in group.items():
                group[hid] = HospitalData(hid, with_region(h.records, region_totals(totals, exclude=hid)), spec)
    origins = {hid: rolling_origins(h, n_origins=n_origins) for hid, h in truth.items()}
    actuals = {hid: h.actuals(origins[hid]) for hid, h in truth.items()}
    return Evaluation(truth, released, plans, origins, actuals)


@dataclass(frozen=True)
class Method:
    """One compared method: an unfitted forecaster and the data it learns from (``"truth"`` or ``"released"``).

    ``every_hospital``: a model that exists whether or not a node released (the federation's) is
    scored on every hospital, its inputs scaled from the node's release where there is one.
    """

    forecaster: Forecaster
    trains_on: str  # "truth": the hospitals' true files; "released": each node's own source release
    every_hospital: bool = False


def methods(
    *,
    model: str,
    hidden: int,
    init: str,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    final: Mapping[str, np.ndarray],
    initial: Mapping[str, np.ndarray],
    local_only: bool,
    local_only_dp: bool,
    centralized: bool,
    baselines: tuple[str, ...],
    quantiles: tuple[float, ...],
    context: tuple[str, ...] = (),
) -> dict[str, Method]:
    """The compared methods, in table order; ``final`` / ``initial`` are the federation's last and first weights.

    Every network learner has the federation's model, optimiser and as many epochs as the
    whole federation ran (``epochs`` = rounds x local epochs). "Local only DP" starts where the
    federation started (``init``); with ``init = "pretrained"`` it is also run from scratch, so
    that what federation adds over a hospital alone is measured against both.
    """

    def neural(start: str | Mapping[str, np.ndarray] | None, n_epochs: int) -> NeuralForecaster:
        return NeuralForecaster(
            model=model,
            hidden=hidden,
            init=start,
            epochs=n_epochs,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            quantiles=quantiles,
            context=context,
        )

    start = "pretrained" if init == "pretrained" else None
    out = {
        # Scaled (series scaling) with the scaler of the releases it learned from, as on the nodes.
        "federated": Method(neural(final, 0), "released", every_hospital=True),
        "initial model": Method(neural(initial, 0), "truth"),
    }
    if local_only:
        out["local only"] = Method(LocalOnly(neural(start, epochs)), "truth")
    if local_only_dp:
        out["local only DP"] = Method(LocalOnly(neural(start, epochs)), "released")
        if start is not None:
            out["local only DP (from scratch)"] = Method(LocalOnly(neural(None, epochs)), "released")
    if centralized:
        out["centralized"] = Method(neural(start, epochs), "truth")
    for name in baselines:
        out[name] = Method(Classical(name, season=7, quantiles=quantiles), "truth")
    return out


def run_method(method: Method, evaluation: Evaluation) -> dict[str, np.ndarray]:
    """Fit ``method`` on what it learns from, forecast every hospital at its origins from its true counts.

    A private method is scored on the hospitals whose node released its counts (a node that
    refused every round has no release to learn from); the rest on every hospital.
    """
    if method.trains_on == "released":
        fit_on = evaluation.released
        if isinstance(method.forecaster, NeuralForecaster) and not isinstance(
            method.forecaster.init, (str, type(None))
        ):
            # the federated model exists for every hospital; a node without a release is scored from its truth
            fit_on = {hid: evaluation.released.get(hid, h) for hid, h in evaluation.truth.items()}
    else:
        fit_on = evaluation.truth
    if not fit_on:
        return {}
    forecaster = method.forecaster.fit(fit_on)
    out = {hid: forecaster.predict(evaluation.truth[hid], evaluation.origins[hid]) for hid in fit_on}
    if method.trains_on == "released":
        # A model trained on a release: its bands as the node's `medalloc forecast --release` gives them.
        for hid in out:
            network = _network(forecaster, hid)
            if network is not None and hid in evaluation.plans:
                neural = forecaster.base if isinstance(forecaster, LocalOnly) else forecaster
                assert isinstance(neural, NeuralForecaster)
                spec = neural.model_spec(evaluation.truth[hid].spec)
                factors = node_band_factors(
                    network,
                    spec,
                    evaluation.truth[hid].records,
                    evaluation.released[hid].records,
                    evaluation.plans[hid].noise_sd,
                )
                out[hid] = scale_bands(out[hid], factors, tuple(network.config.quantiles))
    return out


def _network(forecaster: Forecaster, hospital: str) -> Network | None:
    """The network a fitted neural forecaster uses for ``hospital`` (its own under LocalOnly)."""
    if isinstance(forecaster, LocalOnly):
        alone = forecaster.models_.get(hospital)
        return alone.model_ if alone is not None else None
    return getattr(forecaster, "model_", None)
