"""Issue 19: what a hospital gets is what was scored. `medalloc forecast --release` and `medalloc simulate`'s scoring
calibrate a release-trained model's bands with one function, from the node's validation days."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from medalloc.cli import app
from medalloc_core.forecast.calibration import node_band_factors, release_band_factors, scale_bands
from medalloc_core.forecast.features import WindowSpec, prepare_hospital
from medalloc_core.forecast.models import ForecasterConfig, build_model, state_arrays
from medalloc_core.forecast.training import TrainConfig, train_local
from medalloc_core.model_io import save_model
from medalloc_core.privacy.release import ReleasePlan, ReleaseStore, release_records
from medalloc_core.synthetic import RegionConfig, generate_region, write_region
from medalloc_core.tasks.forecasting import comparisons as cmp
from medalloc_core.validation import load_unit_records

runner = CliRunner()
SPEC = WindowSpec(history=14, horizon=7, val_periods=28, test_periods=14)
QUANTILES = (0.1, 0.5, 0.9)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One hospital, its source release (low epsilon: loud noise) and a model trained on the release only."""
    folder = tmp_path_factory.mktemp("node")
    config = RegionConfig(hospitals=1, days=200, seed=9, min_beds=60, max_beds=120, short_history_fraction=0.0)
    data = next(p for p in write_region(generate_region(config), folder) if p.suffix == ".csv")
    records = load_unit_records(data)
    plan = ReleasePlan.calibrate(epsilon=0.3, delta=1e-6, max_stay_days=14, columns=("admissions", "census"))
    ledger = folder / "ledgers" / "H000.json"
    ledger.parent.mkdir()
    store = ReleaseStore.open(ledger.with_name("H000.json.released.csv"))
    store.add(release_records(records, plan, rng=np.random.default_rng(1)), plan)
    released = prepare_hospital(store.records(), SPEC)
    model = build_model(
        ForecasterConfig(history=14, horizon=7, n_features=released.n_features, n_targets=2, hidden=16), seed=0
    )
    train_local(model, released.train, config=TrainConfig(epochs=30, batch_size=32, lr=0.01, seed=0))
    path = save_model(folder / "model" / "final_model.safetensors", model, spec=released.spec)
    return {"data": data, "records": records, "store": store, "plan": plan, "model": model, "path": path}


def test_the_bands_learned_on_loud_releases_are_narrowed_and_the_median_kept(node: dict):
    factors = node_band_factors(
        node["model"], SPEC, node["records"], node["store"].records(), node["plan"].noise_sd
    )  # (T,)
    assert factors.shape == (2,) and (factors < 0.99).all(), factors  # trained on y + noise: too wide for y
    values = np.random.default_rng(0).normal(size=(3, 7, 2, 3)).cumsum(axis=-1)
    scaled = scale_bands(values, factors, QUANTILES)
    np.testing.assert_array_equal(scaled[..., 1], values[..., 1])
    np.testing.assert_allclose(scaled[..., 2] - scaled[..., 0], (values[..., 2] - values[..., 0]) * factors)
    # no noise, no validation windows: the bands as learned
    no_noise = release_band_factors(
        node["model"],
        prepare_hospital(node["records"], SPEC, scaler=prepare_hospital(node["store"].records(), SPEC).scaler),
        prepare_hospital(node["store"].records(), SPEC),
        {},
    )
    assert (no_noise > factors).all()


def test_medalloc_forecast_gives_the_bands_the_evaluation_scores(node: dict, tmp_path: Path):
    """The same model and data: the node's forecast and the simulation's scoring scale each target's band by the
    same factor, measured on the same validation days."""
    data, store, model = node["data"], node["store"], node["model"]

    def forecast(*extra: str) -> pd.DataFrame:
        out = tmp_path / f"fc{len(extra)}"
        result = runner.invoke(
            app, ["forecast", "--model", str(node["path"]), "--data", str(data), "--out", str(out), *extra]
        )
        assert result.exit_code == 0, result.output
        return pd.read_csv(out / "forecast.csv").set_index(["unit", "target", "date", "q"])["value"].unstack("q")

    learned, given = forecast(), forecast("--release", str(store.path))
    # the simulation's scoring of the same model (the federated method: trained on the release, 0 more epochs)
    evaluation = cmp.evaluation_data({"H000": data}, {"H000": store.path.with_name("H000.json")}, SPEC, n_origins=2)
    method = cmp.methods(
        model="mlp",
        hidden=16,
        init="none",
        epochs=0,
        batch_size=32,
        lr=0.01,
        seed=0,
        final=state_arrays(model),
        initial=state_arrays(model),
        local_only=False,
        local_only_dp=False,
        centralized=False,
        baselines=(),
        quantiles=QUANTILES,
    )["federated"]
    scored = cmp.run_method(method, evaluation)["H000"]  # (N, H, T, Q) calibrated
    raw = method.forecaster.fit(evaluation.released).predict(evaluation.truth["H000"], evaluation.origins["H000"])
    targets = SPEC.targets
    for t, name in enumerate(targets):
        rows = (learned.index.get_level_values("target") == name) & (learned[0.1] > 0).to_numpy()
        node_ratio = (given[0.9] - given[0.1])[rows] / (learned[0.9] - learned[0.1])[rows]
        scored_ratio = (scored[..., t, 2] - scored[..., t, 0]) / (raw[..., t, 2] - raw[..., t, 0])
        assert rows.sum() > 5
        np.testing.assert_allclose(node_ratio.to_numpy(), node_ratio.iloc[0], rtol=1e-4)
        np.testing.assert_allclose(scored_ratio, node_ratio.iloc[0], rtol=1e-4)
        assert node_ratio.iloc[0] < 0.99  # not the identity: the band was calibrated
        np.testing.assert_allclose(given[0.5][rows], learned[0.5][rows], rtol=1e-6)  # the median is kept
