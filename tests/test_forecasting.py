"""Forecasting from a saved model: the model file round trip, the frame's shape and units, mismatches."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medalloc_core import model_io
from medalloc_core.allocation.forecast_io import read_forecast, write_forecast
from medalloc_core.contract import CENSUS, DATE, UNIT, UnitRecords
from medalloc_core.forecast.features import WindowSpec, prepare_hospital
from medalloc_core.forecast.models import ForecasterConfig, build_model
from medalloc_core.forecast.predict import ModelDataMismatch, forecast_records, holdout_forecasts
from medalloc_core.forecast.training import predict
from medalloc_core.model_io import ModelFileError, load_model, save_model
from tests.forecast_fixtures import records

SPEC = WindowSpec(history=14, horizon=7, val_periods=14, test_periods=14)
CONFIG = ForecasterConfig(history=14, horizon=7, n_features=7, n_targets=2, hidden=8)


def _saved(tmp_path: Path, seed: int = 0) -> Path:
    return save_model(tmp_path / "m.safetensors", build_model(CONFIG, seed=seed), spec=SPEC)


def test_save_and_load_give_identical_predictions(tmp_path: Path) -> None:
    model = build_model(CONFIG, seed=3)
    path = save_model(tmp_path / "m.safetensors", model, spec=SPEC, extra={"rounds": 2})
    loaded = load_model(path)
    assert loaded.config == CONFIG and loaded.spec == SPEC and loaded.metadata["rounds"] == 2
    x = torch.randn(5, 14, 7)
    np.testing.assert_array_equal(predict(model, x), predict(loaded.model, x))
    # the JSON sidecar, a folder holding a checkpoints/ folder, and the json path all resolve
    assert load_model(path.with_suffix(".json")).path == path
    with pytest.raises(FileExistsError):
        save_model(path, model, spec=SPEC)


def test_a_tampered_or_foreign_file_is_refused(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="SHA-256"):
        load_model(path)
    junk = tmp_path / "notes.safetensors"
    junk.write_text("hello")
    meta = {
        "model-config": CONFIG.to_dict(),
        "window-spec": {
            "history": 14,
            "horizon": 7,
            "targets": ["admissions", "census"],
            "val_periods": 14,
            "test_periods": 14,
        },
    }
    junk.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="format-version"):  # a sidecar of no known format
        load_model(junk)
    meta |= {"format-version": model_io.FORMAT_VERSION, "sha256": hashlib.sha256(b"hello").hexdigest()}
    meta["digest"] = model_io.sidecar_digest(meta, meta["sha256"])  # consistent hashes over bytes that are no model
    junk.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="not a safetensors file"):
        load_model(junk)
    csv = tmp_path / "data.csv"
    csv.write_text("date,unit,census\n")
    with pytest.raises(ModelFileError, match="not a model file"):
        load_model(csv)


def test_checkpoint_folder_loads_latest_round_with_its_window_spec(tmp_path: Path) -> None:
    from medalloc.server.checkpoint import Checkpoint, save_checkpoint
    from medalloc.server.config import RunConfig
    from medalloc_core.forecast.features import federation_window_spec
    from medalloc_core.forecast.models import state_arrays

    run = RunConfig.from_mapping({"history": 14, "horizon": 7, "targets": "census", "hidden": 8})
    config = ForecasterConfig(history=14, horizon=7, n_features=7, n_targets=1, hidden=8)
    for r in (1, 2):  # written by the coordinator's own checkpoint code
        save_checkpoint(
            tmp_path / "results" / "checkpoints",
            Checkpoint(
                round=r,
                arrays=state_arrays(build_model(config, seed=r)),
                strategy="fedavg",
                model_config=config,
                window_spec=federation_window_spec(history=14, horizon=7, targets=("census",)),
                run_config=run.to_dict(),
            ),
        )
    loaded = load_model(tmp_path / "results")
    assert loaded.path.name == "round-0002.safetensors"
    assert loaded.spec == federation_window_spec(
        history=14, horizon=7, targets=("census",)
    )  # what the nodes trained with
    x = torch.randn(2, 14, 7)
    np.testing.assert_array_equal(predict(loaded.model, x), predict(build_model(config, seed=2), x))


def test_forecast_covers_every_unit_target_day_and_level_after_the_data_end() -> None:
    recs = records(days=120)
    model = build_model(CONFIG, seed=0)
    frame = forecast_records(model, SPEC, recs, hospital="H7")
    last = recs.frame[DATE].max()
    assert set(frame[UNIT]) == {"icu", "ward"} and set(frame["target"]) == {"admissions", "census"}
    assert sorted(frame[DATE].unique()) == list(pd.date_range(last + pd.Timedelta(days=1), periods=7))
    assert len(frame) == 2 * 2 * 7 * 3 and (frame["hospital"] == "H7").all()
    # hand check one value: the model's scaled output, times the unit's training std, plus its mean
    ds = prepare_hospital(recs, SPEC)
    ward = recs.frame[recs.frame[UNIT] == "ward"]
    train = ward.iloc[: len(ward) - 28]
    mean, std = train[CENSUS].mean(), max(train[CENSUS].std(ddof=0), 1.0)
    assert ds.scaler.mean["ward"][1] == pytest.approx(mean)
    from medalloc_core.forecast.features import forecast_inputs

    x = forecast_inputs(recs, ds).X[[1]]  # units sorted: icu, ward
    scaled = predict(model, x)[0, 2, 1, 1]  # third day, census, median
    got = (
        frame[(frame[UNIT] == "ward") & (frame["target"] == CENSUS) & (frame["q"] == 0.5)]
        .sort_values(DATE)["value"]
        .iloc[2]
    )
    assert got == pytest.approx(max(scaled * std + mean, 0.0), rel=1e-5)


def test_forecast_frame_round_trips_through_the_allocation_reader(tmp_path: Path) -> None:
    frame = forecast_records(build_model(CONFIG, seed=1), SPEC, records(days=120), hospital="H0")
    back = read_forecast(write_forecast(frame, tmp_path / "f.csv"))
    assert len(back) == len(frame)
    assert (back.groupby(["unit", "target", "date"])["value"].apply(lambda v: v.is_monotonic_increasing)).all()


def test_mismatched_model_and_data_are_named() -> None:
    recs = records(days=120)
    census_only = UnitRecords(recs.frame.drop(columns=["admissions"]), recs.frequency, recs.source, recs.shape)
    with pytest.raises(ModelDataMismatch, match=r"no \['admissions'\] column"):
        forecast_records(build_model(CONFIG), SPEC, census_only, hospital="H")
    weekly_config = ForecasterConfig(history=14, horizon=7, n_features=5, n_targets=2, hidden=8)
    with pytest.raises(ModelDataMismatch, match="trained on weekly data and this file is daily"):
        forecast_records(build_model(weekly_config), SPEC, recs, hospital="H")
    with pytest.raises(ModelDataMismatch, match="needs at least"):
        forecast_records(build_model(CONFIG), SPEC, records(days=40), hospital="H")


def test_holdout_forecasts_match_the_test_windows() -> None:
    recs = records(days=120)
    ds = prepare_hospital(recs, SPEC)
    forecast, actual = holdout_forecasts(build_model(CONFIG, seed=0), ds, hospital="H")
    n = len(ds.test)
    assert len(forecast) == n * 7 * 2 * 3 and len(actual) == n * 7 * 2
    row = actual[(actual[UNIT] == "ward") & (actual["target"] == CENSUS)].sort_values(["origin", DATE]).iloc[0]
    truth = recs.frame[(recs.frame[UNIT] == "ward") & (recs.frame[DATE] == row[DATE])][CENSUS].iloc[0]
    assert row["value"] == pytest.approx(truth, abs=1e-3)
    assert row["origin"] == row[DATE] - pd.Timedelta(days=1)
