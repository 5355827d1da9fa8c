"""`medalloc explain`: attributions that add up, name the right inputs, pass the deletion check, stay on the node."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("captum")

from medalloc.cli import app  # noqa: E402
from medalloc.cli.explain import _png_name  # noqa: E402
from medalloc_core.contract import Frequency  # noqa: E402
from medalloc_core.forecast.explain import (  # noqa: E402
    ForecastFunction,
    attribute,
    deletion_curve,
    explain_forecast,
    group_attributions,
)
from medalloc_core.forecast.features import federation_window_spec, prepare_hospital  # noqa: E402
from medalloc_core.forecast.models import ForecasterConfig, MLPForecaster, build_model  # noqa: E402
from medalloc_core.forecast.predict import forecast_records  # noqa: E402
from medalloc_core.forecast.training import TrainConfig, train_local  # noqa: E402
from medalloc_core.model_io import load_model, save_model  # noqa: E402
from medalloc_core.synthetic import RegionConfig, generate_region, write_region  # noqa: E402
from medalloc_core.validation import load_unit_records  # noqa: E402

runner = CliRunner()
SPEC = federation_window_spec(history=28, horizon=14, targets=("admissions", "census"))


@pytest.fixture(scope="module")
def hospital(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One generated hospital (CSV, 300 days) and an MLP trained on it, saved as `medalloc forecast` reads it."""
    folder = tmp_path_factory.mktemp("region")
    config = RegionConfig(
        hospitals=1, days=300, seed=4, min_beds=60, max_beds=200, short_history_fraction=0.0, specialty_centres=0
    )
    data = next(p for p in write_region(generate_region(config), folder) if p.suffix == ".csv")
    dataset = prepare_hospital(load_unit_records(data), SPEC)
    model = build_model(ForecasterConfig.for_spec(SPEC, model="mlp", hidden=32), seed=0)
    train_local(model, dataset.train, config=TrainConfig(epochs=15, batch_size=32, lr=0.01, seed=0))
    return data, save_model(folder / "model" / "final_model.safetensors", model, spec=dataset.spec)


def _p90_mean(frame: pd.DataFrame, unit: str) -> float:
    rows = frame[(frame["unit"] == unit) & (frame["target"] == "census") & (frame["q"] == 0.9)]
    return float(rows["value"].mean())


def test_integrated_gradients_add_up_to_the_forecast_medalloc_forecast_makes(hospital: tuple[Path, Path]) -> None:
    data, model_path = hospital
    saved = load_model(model_path)
    records = load_unit_records(data)
    explanations = explain_forecast(saved.model, saved.spec, records, hospital="H000")
    forecast = forecast_records(saved.model, saved.spec, records, hospital="H000")
    assert [ex.unit for ex in explanations] == records.units
    for ex in explanations:
        assert ex.attribution.output == pytest.approx(_p90_mean(forecast, ex.unit), abs=1e-3)
        # completeness: the cells add up to (forecast - forecast of the average window)
        assert ex.attribution.completeness_gap < 1e-3
        assert abs(ex.attribution.output - ex.attribution.baseline_output) > 0.05  # not a trivial 0 = 0
        assert ex.input_dates[-1] == records.frame["date"].max()
        assert ex.attribution.values.shape == (28, len(ex.feature_names))


def test_a_model_that_reads_only_last_weeks_census_is_explained_by_it() -> None:
    # A hand-built MLP whose first layer sees nothing but census over the last 7 days: the
    # explanation must say exactly that, with 100 % of the attribution.
    torch.manual_seed(0)
    config = ForecasterConfig.for_spec(SPEC, model="mlp", hidden=16)
    model = MLPForecaster(config)
    names = SPEC.feature_names(Frequency.DAILY)
    census = names.index("census_scaled")
    first = model.body[0]
    with torch.no_grad():
        first.weight.zero_()
        for lag in range(config.history - 7, config.history):
            first.weight[:, lag * config.n_features + census] = torch.rand(config.hidden) + 0.5
    function = ForecastFunction(model, target_index=1, quantile_index=2, mean=50.0, scale=10.0)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((config.history, config.n_features)).astype(np.float32)
    baseline = np.zeros_like(x)
    attribution = attribute(function, x, baseline)
    assert np.abs(attribution.values[: config.history - 7]).max() == 0.0
    assert np.abs(np.delete(attribution.values, census, axis=1)).max() == 0.0
    groups = group_attributions(attribution.values, names)
    assert (groups[0].channels, groups[0].block, round(groups[0].share, 6)) == ("census", "the last 7 days", 1.0)
    # deleting those 7 cells first moves the forecast all the way at 7/196 of the cells
    curve = deletion_curve(function, x, baseline, attribution.values)
    full = abs(attribution.output - attribution.baseline_output)
    assert curve.attributed[1] == pytest.approx(full, rel=1e-5)  # first step deletes 10 cells >= the 7
    assert curve.passed and curve.area_reversed < curve.area_random


def test_grouping_sums_blocks_counted_back_from_the_origin() -> None:
    values = np.zeros((14, 2))
    values[-1, 0] = 3.0  # the origin day, channel 0
    values[0, 1] = -1.0  # 14 days back, channel 1
    groups = {(g.channels, g.block): g for g in group_attributions(values, ["census_scaled", "dow_sin"])}
    assert groups[("census", "the last 7 days")].contribution == 3.0
    assert groups[("day of week", "days 8–14 back")].contribution == -1.0
    assert groups[("census", "the last 7 days")].share == pytest.approx(0.75)


@pytest.mark.parametrize("method", ["integrated-gradients", "occlusion"])
def test_attributions_pass_the_deletion_check_and_noise_does_not(hospital: tuple[Path, Path], method: str) -> None:
    data, model_path = hospital
    saved = load_model(model_path)
    dataset = prepare_hospital(load_unit_records(data), saved.spec)
    rng = np.random.default_rng(0)
    tallies: dict[str, list[tuple[float, float]]] = {"attributions": [], "random map": []}
    test = dataset.test
    for unit in np.unique(test.units):
        rows = np.flatnonzero(test.units == unit)[::3]
        baseline = dataset.train.X[dataset.train.units == unit].mean(dim=0).numpy()
        function = ForecastFunction(
            saved.model,
            target_index=1,
            quantile_index=2,
            mean=float(dataset.scaler.mean[unit][1]),
            scale=float(dataset.scaler.scale[unit][1]),
        )
        for row in rows:
            x = test.X[row].numpy()
            scores = {"attributions": attribute(function, x, baseline, method=method).values}
            scores["random map"] = rng.standard_normal(x.shape)
            for name, s in scores.items():
                curve = deletion_curve(function, x, baseline, s, seed=int(row))
                tallies[name].append((curve.area_attributed, curve.area_random))
    ours = np.array(tallies["attributions"])
    noise = np.array(tallies["random map"])
    assert len(ours) >= 12
    assert ours[:, 0].mean() > 1.2 * ours[:, 1].mean()  # top-attributed deletion moves the P90 more
    assert (ours[:, 0] > ours[:, 1]).mean() >= 0.7
    # the same check does not pass a meaningless map: it is a check that can fail
    assert noise[:, 0].mean() < 1.1 * noise[:, 1].mean()


def test_cli_writes_picture_json_and_words_without_touching_the_network(
    hospital: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, model_path = hospital

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("medalloc explain tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    out = tmp_path / "ex"
    result = runner.invoke(
        app, ["explain", "-m", str(model_path), "-d", str(data), "--unit", "medical", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "drive" in result.output and "Faithfulness check passes" in result.output
    assert (out / "explain_medical.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    payload = json.loads((out / "explanation.json").read_text())
    (ex,) = payload["explanations"]
    assert (ex["unit"], ex["target"], ex["level"], ex["png"]) == ("medical", "census", 0.9, "explain_medical.png")
    records = load_unit_records(data)
    saved = load_model(model_path)
    assert ex["output"] == pytest.approx(
        _p90_mean(forecast_records(saved.model, saved.spec, records, hospital="H"), "medical"), abs=1e-3
    )
    assert np.array(ex["attributions"]).sum() == pytest.approx(ex["output"] - ex["baseline_output"], abs=1e-3)
    assert ex["deletion"]["passed"] is True
    assert ex["words"][0].endswith("against an average window).")


def test_cli_date_explains_the_forecast_made_from_that_day(hospital: tuple[Path, Path], tmp_path: Path) -> None:
    data, model_path = hospital
    day = "2023-09-15"
    result = runner.invoke(
        app,
        ["explain", "-m", str(model_path), "-d", str(data), "--unit", "icu", "--date", day, "-o", str(tmp_path / "e")],
    )
    assert result.exit_code == 0, result.output
    (ex,) = json.loads((tmp_path / "e" / "explanation.json").read_text())["explanations"]
    assert ex["origin"] == day and ex["input_dates"][-1] == day
    # the same as `medalloc forecast` on the file cut at that day
    frame = pd.read_csv(data)
    cut = tmp_path / "H000.csv"
    frame[frame["date"] <= day].to_csv(cut, index=False)
    result = runner.invoke(app, ["forecast", "-m", str(model_path), "-d", str(cut), "-o", str(tmp_path / "fc")])
    assert result.exit_code == 0, result.output
    forecast = pd.read_csv(tmp_path / "fc" / "forecast.csv")
    assert forecast["date"].min() == "2023-09-16"
    assert ex["output"] == pytest.approx(_p90_mean(forecast, "icu"), abs=1e-3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--unit", "maternity"], "no unit ['maternity'] in the records"),
        (["--date", "2031-01-01"], "is outside the records"),
        (["--date", "15/09/2023"], "is not a date YYYY-MM-DD"),
        (["--date", "2023-01-20"], "cannot forecast from 2023-01-20"),
        (["--level", "0.75"], "P75 is not one of them"),
        (["--level", "1.5"], "--level must be a quantile level in (0, 1)"),
        (["--target", "discharges"], "it has no 'discharges' to explain"),
        (["--method", "shap"], "--method must be one of"),
    ],
)
def test_cli_bad_requests_are_clear_errors_and_write_nothing(
    hospital: tuple[Path, Path], tmp_path: Path, args: list[str], message: str
) -> None:
    data, model_path = hospital
    out = tmp_path / "ex"
    result = runner.invoke(app, ["explain", "-m", str(model_path), "-d", str(data), "-o", str(out), *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert not out.exists()


def test_cli_keeps_an_existing_explanation_unless_forced(hospital: tuple[Path, Path], tmp_path: Path) -> None:
    data, model_path = hospital
    out = tmp_path / "ex"
    args = ["explain", "-m", str(model_path), "-d", str(data), "--unit", "icu", "-o", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    before = (out / "explanation.json").read_bytes()
    result = runner.invoke(app, [*args, "--method", "occlusion"])
    assert result.exit_code == 2 and "already exists" in result.output
    assert (out / "explanation.json").read_bytes() == before
    assert runner.invoke(app, [*args, "--method", "occlusion", "--force"]).exit_code == 0
    assert json.loads((out / "explanation.json").read_text())["explanations"][0]["method"] == "occlusion"


def test_unit_names_become_safe_distinct_file_names() -> None:
    taken: set[str] = set()
    assert _png_name("ICU/step down", taken) == "explain_ICU_step_down.png"
    assert _png_name("ICU step:down", taken) == "explain_ICU_step_down_2.png"
    assert _png_name("../..", taken) == "explain_unit.png"


def test_a_window_scaled_hybrid_is_explained_in_beds_as_medalloc_forecast_makes_it(
    hospital: tuple[Path, Path], tmp_path: Path
) -> None:
    """The hybrid scales each window by its own loc/scale (no series scaler): the explained number is still the
    forecast `medalloc forecast` writes, and the attributions add up."""
    from medalloc_core.forecast.pretrained import load_pretrained

    data, _ = hospital
    spec = federation_window_spec(history=28, horizon=14, targets=("admissions", "census"), model="hybrid")
    records = load_unit_records(data)
    dataset = prepare_hospital(records, spec)
    assert dataset.scaler is None  # window scaling: the case this test is about
    model = load_pretrained(ForecasterConfig.for_spec(spec, model="hybrid", hidden=64))
    saved = load_model(save_model(tmp_path / "final_model.safetensors", model, spec=dataset.spec))
    explanations = explain_forecast(saved.model, saved.spec, records, hospital="H000")
    forecast = forecast_records(saved.model, saved.spec, records, hospital="H000")
    for ex in explanations:
        assert ex.attribution.output == pytest.approx(_p90_mean(forecast, ex.unit), rel=1e-4, abs=1e-3)
        # within 0.1 % of the forecast number: the smoothed level's softmin curves the path (64 Gauss-Legendre steps)
        assert ex.attribution.completeness_gap < 1e-3 * abs(ex.attribution.output) + 1e-3
