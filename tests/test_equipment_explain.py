"""Per-device risk attributions: exact occlusion, and faithful (deleting the top factors moves the risk most)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from medalloc.cli import app
from medalloc_core.equipment.contract import Fleet
from medalloc_core.equipment.explain import deletion_curve, factor_columns, risk_attributions
from medalloc_core.equipment.features import NUMERIC_FEATURES, SnapshotSpec
from medalloc_core.equipment.local import prepare_fleet
from medalloc_core.equipment.model import (
    RiskModelConfig,
    RiskTrainConfig,
    build_risk_model,
    predict_proba,
    save_risk_model,
    train_risk,
)
from tests.equipment_fixtures import fleet_copy, medium_region

SPEC = SnapshotSpec()


def _trained() -> tuple[object, np.ndarray]:
    h = medium_region().hospitals[0]
    local = prepare_fleet(Fleet(h.devices, h.events, Path(h.hospital_id)), SPEC)
    model = build_risk_model(RiskModelConfig(n_features=SPEC.n_features), seed=0)
    train_risk(model, local.batches, config=RiskTrainConfig(epochs=10), dp=None, rng=np.random.default_rng(0))
    return model, local.dataset.test.X[:400]


def test_factors_cover_every_feature_once() -> None:
    columns = np.concatenate(list(factor_columns(SPEC).values()))
    assert sorted(columns.tolist()) == list(range(SPEC.n_features))
    assert len(factor_columns(SPEC)) == len(NUMERIC_FEATURES) + 2


def test_an_attribution_is_the_risk_change_when_that_factor_is_set_to_the_fleet_average() -> None:
    model, X = _trained()
    result = risk_attributions(model, X, SPEC)
    g = result.factors.index("age_years")
    masked = X.copy()
    masked[:, 0] = X[:, 0].mean()
    expected = predict_proba(model, X) - predict_proba(model, masked)
    np.testing.assert_allclose(result.values[:, g], expected, atol=1e-6)
    assert np.allclose(result.risk, predict_proba(model, X), atol=1e-6)
    top = result.top(np.arange(len(X)), k=3)
    first = top["raises_by_1"].to_numpy()
    assert (first >= top["raises_by_2"].to_numpy()).all() and np.allclose(first, result.values.max(axis=1))


def test_deleting_the_top_factors_moves_the_risk_more_than_deleting_random_ones() -> None:
    model, X = _trained()
    values = risk_attributions(model, X, SPEC).values
    k = 4
    top = np.argsort(-np.abs(values), axis=1)[:, :k]
    rng = np.random.default_rng(0)
    random = np.stack([rng.permutation(values.shape[1])[:k] for _ in range(len(X))])
    top_curve, random_curve = deletion_curve(model, X, SPEC, top), deletion_curve(model, X, SPEC, random)
    assert top_curve.sum() > 1.5 * random_curve.sum(), (top_curve, random_curve)


def test_maintenance_plan_explain_writes_each_devices_factors(tmp_path: Path) -> None:
    model = build_risk_model(RiskModelConfig(n_features=SPEC.n_features), seed=1)
    save_risk_model(tmp_path / "model" / "final_model.safetensors", model, spec=SPEC)
    fleet = fleet_copy(tmp_path) / "H000"
    out = tmp_path / "plan.csv"
    args = ["maintenance-plan", "--model", str(tmp_path / "model"), "--fleet", str(fleet), "--hours", "6"]
    result = CliRunner().invoke(
        app, [*args, "--default-service-hours", "1", "--out", str(out), "--date", "2023-11-01", "--explain"]
    )
    assert result.exit_code == 0, result.output
    factors = pd.read_csv(tmp_path / "plan_factors.csv")
    plan = pd.read_csv(out)
    assert set(factors["device_id"]) == set(plan["device_id"])
    known = set(factor_columns(SPEC))
    assert set(factors["factor_1"]) <= known and (factors["raises_by_1"] >= factors["raises_by_3"]).all()
    assert "plan_factors.csv" in "".join(result.output.split())  # named in the output, however it wraps
