"""The node's forecast log: every `medalloc forecast --node-config` run is kept, with its model version,
atomically, within its bounds; a damaged log is refused and left as it is."""

from __future__ import annotations

import hashlib
import json
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from medalloc.cli import app
from medalloc_core.forecast.features import WindowSpec, prepare_hospital
from medalloc_core.forecast.history import (
    ForecastLogError,
    ForecastRun,
    append_run,
    bounded,
    log_path_for_ledger,
    model_version,
    read_log,
    run_bytes,
)
from medalloc_core.forecast.models import ForecasterConfig, build_model
from medalloc_core.forecast.training import TrainConfig, train_local
from medalloc_core.model_io import save_model
from medalloc_core.synthetic import RegionConfig, generate_region, write_region
from medalloc_core.validation import load_unit_records
from tests.allocation_fixtures import forecast_frame

runner = CliRunner()


def frame(shift: float = 0.0, start: str = "2026-03-02") -> pd.DataFrame:
    days = [(8 + shift + d, 10 + shift + d, 14 + shift + d) for d in range(14)]
    return forecast_frame(
        {("H000", "ICU"): days, ("H000", "medical"): [(a * 3, b * 3, c * 3) for a, b, c in days]}, start
    )


def a_run(shift: float = 0.0, origin: date = date(2026, 3, 1), version: str = "0123456789ab") -> ForecastRun:
    return ForecastRun.from_frame(frame(shift), origin=origin, model_version=version)


def test_a_run_keeps_every_quantile_of_every_unit_and_day(tmp_path: Path) -> None:
    log = tmp_path / "ledger.json.forecasts.json"
    run = a_run()
    assert run.values.shape == (2, 1, 14, 3)  # units x targets x days x levels
    append_run(log, run)
    [back] = read_log(log)
    assert back.units == ("ICU", "medical") and back.targets == ("census",) and back.levels == (0.1, 0.5, 0.9)
    assert back.origin == date(2026, 3, 1) and back.dates[0] == date(2026, 3, 2) and len(back.dates) == 14
    assert back.model_version == "0123456789ab" and back.hospital == "H000"
    source = frame()
    for u, unit in enumerate(back.units):
        for d, day in enumerate(back.dates):
            for k, q in enumerate(back.levels):
                expected = source[(source.unit == unit) & (source.date == pd.Timestamp(day)) & (source.q == q)]["value"]
                assert back.values[u, 0, d, k] == pytest.approx(float(expected.iloc[0]))
    assert list(tmp_path.iterdir()) == [log]  # written through a temp file that is gone


def test_appends_keep_order_and_the_bound_drops_the_oldest(tmp_path: Path) -> None:
    log = tmp_path / "log.json"
    for i in range(5):
        append_run(log, a_run(shift=i, origin=date(2026, 3, 1 + i)), max_runs=3)
    runs = read_log(log)
    assert [r.origin.day for r in runs] == [3, 4, 5]
    size = run_bytes(runs[0])
    kept = bounded(runs, max_bytes=2 * size + 200)  # room for two runs and the envelope
    assert [r.origin.day for r in kept] == [4, 5]
    with pytest.raises(ForecastLogError, match="larger than the log's bound"):
        append_run(log, a_run(), max_bytes=100)
    assert [r.origin.day for r in read_log(log)] == [3, 4, 5]  # refused: the log is as it was


@pytest.mark.parametrize(
    "content, message",
    [
        (b"{not json", "not a readable forecast log"),
        (b'{"format": "something-else"}', "not a MedAlloc forecast log"),
        (b'{"format": "medalloc-forecast-log", "version": 9, "runs": []}', "version 9"),
        (None, "run 1, field 'values': shape"),
        (None, "run 1, field 'origin'"),
    ],
)
def test_a_damaged_log_is_refused_and_left_alone(tmp_path: Path, content: bytes | None, message: str) -> None:
    log = tmp_path / "log.json"
    append_run(log, a_run())
    if content is None:
        body = json.loads(log.read_text())
        if "values" in message:
            body["runs"][0]["values"] = body["runs"][0]["values"][:1]
        else:
            body["runs"][0]["origin"] = "yesterday"
        content = json.dumps(body).encode()
    log.write_bytes(content)
    with pytest.raises(ForecastLogError, match=message.replace("(", r"\(")) as info:
        read_log(log)
    assert str(log) in str(info.value)
    with pytest.raises(ForecastLogError):
        append_run(log, a_run(shift=1))
    assert log.read_bytes() == content


def test_model_version_is_the_first_12_hex_of_the_file_sha256() -> None:
    digest = hashlib.sha256(b"weights").hexdigest()
    assert model_version(digest) == digest[:12]
    with pytest.raises(ValueError, match="not a SHA-256"):
        model_version("xyz")


# ------------------------------------------------------------------ the command
SPEC = WindowSpec(history=14, horizon=14, val_periods=14, test_periods=14)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("node")
    config = RegionConfig(
        hospitals=1,
        days=150,
        seed=4,
        min_beds=40,
        max_beds=80,
        short_history_fraction=0.0,
        specialty_centres=0,
        warmup_days=30,
    )
    data = next(p for p in write_region(generate_region(config), folder / "data") if p.suffix == ".csv")
    dataset = prepare_hospital(load_unit_records(data), SPEC)
    model = build_model(
        ForecasterConfig(history=14, horizon=14, n_features=dataset.n_features, n_targets=2, hidden=8), seed=0
    )
    train_local(model, dataset.train, config=TrainConfig(epochs=1, batch_size=64, lr=0.01))
    save_model(folder / "model" / "final_model.safetensors", model, spec=dataset.spec)
    ledger = folder / "state" / "privacy-ledger.json"
    toml = folder / "node.toml"
    toml.write_text(
        f'hospital-id = "St <Mary>"\ndata-path = "{data}"\nledger-path = "{ledger}"\n'
        "privacy-epsilon-budget = 1.5\nprivacy-delta = 1e-6\nmax-stay-days = 14\n",
        encoding="utf-8",
    )
    return {"data": data, "model": folder / "model" / "final_model.safetensors", "toml": toml, "ledger": ledger}


def test_forecast_with_node_config_logs_the_run_and_its_model_version(node: dict[str, Path], tmp_path: Path) -> None:
    log = log_path_for_ledger(node["ledger"])
    before = len(read_log(log))
    args = ["forecast", "--model", str(node["model"]), "--data", str(node["data"]), "--node-config", str(node["toml"])]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    runs = read_log(log)
    assert len(runs) == before + 1
    run = runs[-1]
    assert run.model_version == hashlib.sha256(node["model"].read_bytes()).hexdigest()[:12]
    assert run.model_version in " ".join(result.output.split())
    assert run.hospital == "St <Mary>"  # the node's hospital-id
    source = pd.read_csv(node["data"], parse_dates=["date"])
    assert run.origin == source["date"].max().date()
    written = pd.read_csv(tmp_path / "a" / "forecast.csv", parse_dates=["date"])
    census = written[(written.target == "census") & (written.q == 0.5)].sort_values(["unit", "date"])
    t = run.targets.index("census")
    k = run.levels.index(0.5)
    assert np.allclose(run.values[:, t, :, k].ravel(), census["value"].to_numpy(), atol=1e-3)
    # a second run appends
    assert runner.invoke(app, [*args, "--out", str(tmp_path / "b")]).exit_code == 0
    assert len(read_log(log)) == before + 2


def test_a_damaged_log_stops_the_forecast_before_it_writes(node: dict[str, Path], tmp_path: Path) -> None:
    log = tmp_path / "broken.json"
    log.write_text("{broken")
    result = runner.invoke(
        app,
        [
            "forecast",
            "--model",
            str(node["model"]),
            "--data",
            str(node["data"]),
            "--forecast-log",
            str(log),
            "--out",
            str(tmp_path / "fc"),
        ],
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "not a readable forecast log" in " ".join(result.output.split())
    assert not (tmp_path / "fc" / "forecast.csv").exists() and log.read_text() == "{broken"
