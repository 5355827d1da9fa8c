"""Device-day features, risk metrics, the risk model's device-level DP-SGD and its model files."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medalloc_core.equipment.contract import Fleet
from medalloc_core.equipment.features import (
    NUMERIC_FEATURES,
    SnapshotSpec,
    device_days,
    failure_within,
    feature_matrix,
    hashed_onehot,
    snapshots,
)
from medalloc_core.equipment.local import evaluate_risk, prepare_fleet
from medalloc_core.equipment.metrics import auroc, brier, calibration_error, reliability
from medalloc_core.equipment.model import (
    DeviceBatches,
    DeviceDP,
    RiskModelConfig,
    RiskTrainConfig,
    build_risk_model,
    load_risk_model,
    predict_proba,
    privatise,
    risk_plan,
    save_risk_model,
    train_risk,
)
from medalloc_core.forecast.features import federation_window_spec
from medalloc_core.forecast.models import ForecasterConfig, build_model
from medalloc_core.model_io import ModelFileError, load_model, save_model
from tests.equipment_fixtures import medium_region, small_region

SPEC = SnapshotSpec()


def fleet(index: int = 0) -> Fleet:
    h = small_region().hospitals[index]
    return Fleet(h.devices, h.events, Path(h.hospital_id))


# ----------------------------------------------------------------------------- features
def test_features_of_a_day_never_see_later_events() -> None:
    full = fleet()
    cut = full.start + pd.Timedelta(days=250)
    earlier = Fleet(full.devices, full.events[full.events["time"] < cut + pd.Timedelta(days=1)], full.source)
    # same day grid: pad the shortened log with the full log's last day
    a = feature_matrix(device_days(full), full.devices, SPEC)[:, 250]
    dd = device_days(earlier)
    b = feature_matrix(dd, earlier.devices, SPEC)[:, 250]
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_a_snapshot_is_positive_exactly_when_its_device_fails_within_the_horizon() -> None:
    dd = device_days(fleet())
    y, observed = failure_within(dd, 30)
    for device, day in np.argwhere(dd.failure > 0):
        if (
            day >= 31
            and dd.failure[device, day - 31 : day].sum() == 0
            and dd.failure[device, day + 1 : day + 31].sum() == 0
        ):
            break
    assert y[device, day - 30 : day].all()  # the 30 days before the failure see it coming
    assert not y[device, day - 31] and not y[device, day]  # one day too early, and the failure day itself
    assert not observed[:, -30:].any() and observed[:, :-30].all()
    snaps = snapshots(fleet(), SPEC)
    assert not dd.down[snaps.device, snaps.day].any()  # a device that is down is not a candidate
    assert set(np.diff(np.unique(snaps.day))) == {SPEC.stride_days}


def test_the_serviced_counterfactual_restarts_only_the_service_clocks() -> None:
    dd = device_days(fleet())
    now = feature_matrix(dd, fleet().devices, SPEC)[:, 300]
    serviced = feature_matrix(dd, fleet().devices, SPEC, serviced=True)[:, 300]
    clocks = [
        NUMERIC_FEATURES.index(n) for n in ("log_days_since_service", "usage_since_service", "log_errors_since_service")
    ]
    assert (serviced[:, clocks] == 0).all()
    others = [i for i in range(SPEC.n_features) if i not in clocks and i != NUMERIC_FEATURES.index("no_service_in_log")]
    np.testing.assert_array_equal(now[:, others], serviced[:, others])


def test_device_types_hash_to_two_buckets_whatever_the_spelling() -> None:
    codes = hashed_onehot(np.array(["Infusion Pump", "infusion-pump", "ventilator"]), 16)
    assert codes.shape == (3, 32) and (codes.sum(axis=1) == 2).all()
    np.testing.assert_array_equal(codes[0], codes[1])
    assert not np.array_equal(codes[0], codes[2])


def test_snapshot_spec_round_trips_and_rejects_unknown_keys() -> None:
    assert SnapshotSpec.from_dict(SPEC.to_dict()) == SPEC
    with pytest.raises(ValueError, match="keys must be exactly"):
        SnapshotSpec.from_dict(SPEC.to_dict() | {"extra": 1})


# ----------------------------------------------------------------------------- metrics
def test_auroc_is_the_pairwise_ranking_probability_with_ties_half() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(60) < 0.3
    p = np.round(rng.random(60), 1)  # many ties
    pairs = [(a, b) for a, b in itertools.product(np.flatnonzero(y), np.flatnonzero(~y))]
    expected = np.mean([1.0 if p[a] > p[b] else 0.5 if p[a] == p[b] else 0.0 for a, b in pairs])
    assert auroc(y, p) == pytest.approx(expected)
    assert np.isnan(auroc(np.zeros(5), np.arange(5)))


def test_brier_and_calibration_error_of_known_predictions() -> None:
    y = np.array([0, 0, 1, 1.0])
    assert brier(y, np.array([0, 0, 1, 1.0])) == 0.0
    assert brier(y, np.full(4, 0.5)) == 0.25
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 0.2, 200_000)
    calibrated = rng.random(len(p)) < p
    assert calibration_error(calibrated, p) < 0.003
    assert calibration_error(calibrated, p * 2) > 0.09
    rel = reliability(calibrated, p, bins=10)
    assert (rel.count == 20_000).all() and np.all(np.diff(rel.predicted) > 0)


# ----------------------------------------------------------------------------- device-level DP-SGD
def test_privatise_clips_each_device_and_adds_noise_of_sigma_c_over_the_expected_batch() -> None:
    grads = {"w": torch.tensor([[3.0, 4.0], [0.03, 0.04]]), "b": torch.tensor([[0.0], [0.0]])}
    dp = DeviceDP(noise_multiplier=1e-9, max_grad_norm=0.1)
    out = privatise(grads, dp=dp, expected_batch=2, rng=np.random.default_rng(0))
    # device 1 (norm 5) clipped to 0.1, device 2 (norm 0.05) untouched
    np.testing.assert_allclose(out["w"].numpy(), (np.array([0.06, 0.08]) + np.array([0.03, 0.04])) / 2, atol=1e-6)
    noisy = DeviceDP(noise_multiplier=2.0, max_grad_norm=0.5)
    zero = {"w": torch.zeros((0, 50_000))}
    draw = privatise(zero, dp=noisy, expected_batch=4, rng=np.random.default_rng(1))["w"].numpy()
    assert draw.std() == pytest.approx(2.0 * 0.5 / 4, rel=0.02)  # an empty Poisson batch still gets its noise


def test_dp_training_samples_devices_at_the_plans_rate_and_differs_by_noise_draw() -> None:
    local = prepare_fleet(fleet(), SPEC)
    config = RiskModelConfig(n_features=SPEC.n_features)
    train = RiskTrainConfig(epochs=2, batch_size=8)
    plan = risk_plan(local.batches.n_devices, train)
    assert plan.sample_rate == pytest.approx(1 / np.ceil(local.batches.n_devices / 8))
    dp = DeviceDP(noise_multiplier=1.0)
    runs = []
    for seed in (0, 0, 1):
        model = build_risk_model(config)
        result = train_risk(model, local.batches, config=train, dp=dp, rng=np.random.default_rng(seed))
        assert result.steps == plan.steps and result.plan == plan and result.n_devices == local.batches.n_devices
        runs.append(torch.cat([p.flatten() for p in model.parameters()]))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_device_batches_group_every_snapshot_of_a_device_together() -> None:
    local = prepare_fleet(fleet(), SPEC)
    train = local.dataset.train
    batches = DeviceBatches.from_snapshots(train)
    assert batches.n_devices == len(np.unique(train.device))
    assert int(batches.mask.sum()) == len(train)
    assert float(batches.y.sum()) == float(train.y.sum())


def test_training_learns_more_than_the_untrained_model() -> None:
    h = medium_region().hospitals[0]
    local = prepare_fleet(Fleet(h.devices, h.events, Path(h.hospital_id)), SPEC)
    config = RiskModelConfig(n_features=SPEC.n_features)
    untrained = evaluate_risk(build_risk_model(config), local)
    model = build_risk_model(config)
    train_risk(model, local.batches, config=RiskTrainConfig(epochs=20), dp=None, rng=np.random.default_rng(0))
    trained = evaluate_risk(model, local)
    assert trained["loss"] < untrained["loss"] and trained["brier"] <= untrained["brier"]
    assert auroc(local.dataset.test.y, predict_proba(model, local.dataset.test.X)) > 0.6


# ----------------------------------------------------------------------------- model files
def test_risk_model_files_round_trip_and_are_not_confused_with_forecasters(tmp_path: Path) -> None:
    model = build_risk_model(RiskModelConfig(n_features=SPEC.n_features, hidden=4), seed=3)
    save_risk_model(tmp_path / "risk" / "final_model.safetensors", model, spec=SPEC, extra={"rounds": 2})
    loaded = load_risk_model(tmp_path / "risk")
    assert loaded.spec == SPEC and loaded.config == model.config and loaded.metadata["rounds"] == 2
    x = torch.randn(5, SPEC.n_features)
    torch.testing.assert_close(loaded.model(x), model(x))
    with pytest.raises(ModelFileError, match="is a 'equipment' model, not a demand forecaster"):
        load_model(tmp_path / "risk")
    spec = federation_window_spec(history=14, horizon=7, targets=("census",))
    save_model(
        tmp_path / "fc.safetensors", build_model(ForecasterConfig.for_spec(spec, model="mlp", hidden=8)), spec=spec
    )
    with pytest.raises(ModelFileError, match="not an equipment risk model"):
        load_risk_model(tmp_path / "fc.safetensors")


def test_the_ledger_key_of_a_fleet_ignores_format_and_row_order_but_not_values(tmp_path: Path) -> None:
    from medalloc_core.equipment.local import fleet_fingerprint
    from medalloc_core.equipment.validation import load_fleet
    from tests.equipment_fixtures import fleet_copy

    csv = fleet_copy(tmp_path, "csv") / "H000"
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    pd.read_csv(csv / "devices.csv", dtype=str).iloc[::-1].to_parquet(shuffled / "devices.parquet")
    events = pd.read_csv(csv / "events.csv", dtype=str, keep_default_na=False)
    events.sample(frac=1.0, random_state=1).to_parquet(shuffled / "events.parquet")
    assert fleet_fingerprint(load_fleet(csv)) == fleet_fingerprint(load_fleet(shuffled))
    events.loc[5, "value"] = "23.5" if events.loc[5, "event"] == "usage" else events.loc[5, "value"] + "X"
    events.to_csv(csv / "events.csv", index=False)
    assert fleet_fingerprint(load_fleet(csv)) != fleet_fingerprint(load_fleet(shuffled))
