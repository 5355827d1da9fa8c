"""`forecast`, `allocate --capacity-from`, `share` and `explain` read a node's source where it lives.

One generated hospital is written three ways (an OMOP CDM in SQLite, a FHIR Bulk Data folder,
an encounter CSV); each command reads each through the node's own reader (``load_source``)
and gets the records the node trains on, so the forecasts agree. Bad sources (a missing
database, a server that never answers, a broken record) end in exit 2 with one clear line.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from medalloc.cli import app
from medalloc_core.forecast.features import WindowSpec, prepare_hospital
from medalloc_core.forecast.models import ForecasterConfig, build_model
from medalloc_core.model_io import save_model
from medalloc_core.sources import DataSource, load_source
from medalloc_core.sources.synthetic import fhir_resources, omop_tables, write_fhir, write_omop
from medalloc_core.synthetic import RegionConfig, generate_region

runner = CliRunner()
SPEC = WindowSpec(history=14, horizon=7, val_periods=14, test_periods=14)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One hospital's stays as an SQLite CDM, a FHIR folder and an encounter CSV; a model fitted to its records."""
    folder = tmp_path_factory.mktemp("sources")
    config = RegionConfig(
        hospitals=1, days=120, seed=5, shape="encounters", min_beds=30, max_beds=40, short_history_fraction=0.0
    )
    hospital = generate_region(config).hospitals[0]
    stays = hospital.encounters
    omop = write_omop(omop_tables(stays, hospital_id=hospital.hospital_id, seed=1), folder / "cdm.sqlite", "sqlite")
    fhir = write_fhir(fhir_resources(stays, hospital_id=hospital.hospital_id, seed=1), folder / "fhir", "ndjson")
    csv = folder / "stays.csv"
    written = stays[["encounter_id", "patient_id", "unit", "admit_time", "discharge_time"]].copy()
    for column in ("admit_time", "discharge_time"):
        written[column] = written[column].dt.strftime("%Y-%m-%d %H:%M:%S")
    written.to_csv(csv, index=False)
    records = load_source(DataSource(str(omop))).records
    dataset = prepare_hospital(records, SPEC)
    model = build_model(
        ForecasterConfig(history=14, horizon=7, n_features=dataset.n_features, n_targets=2, hidden=8), seed=0
    )
    saved = save_model(folder / "model" / "final_model.safetensors", model, spec=dataset.spec)
    return {"omop": omop, "fhir": fhir, "csv": csv, "model": saved}


def _forecast(sources: dict[str, Path], data: str, out: Path, *extra: str) -> pd.DataFrame:
    result = runner.invoke(
        app, ["forecast", "--model", str(sources["model"]), "--data", data, "--out", str(out), *extra]
    )
    assert result.exit_code == 0, result.output
    return pd.read_csv(out / "forecast.csv", parse_dates=["date"])


def test_forecast_reads_an_omop_database_a_fhir_folder_and_an_encounter_file_alike(
    sources: dict[str, Path], tmp_path: Path
) -> None:
    url = f"sqlite:///{sources['omop']}"
    frames = {
        "omop-url": _forecast(sources, url, tmp_path / "a", "--hospital", "H"),
        "omop-file": _forecast(sources, str(sources["omop"]), tmp_path / "b", "--hospital", "H"),
        "fhir": _forecast(sources, str(sources["fhir"]), tmp_path / "c", "--hospital", "H"),
    }
    records = load_source(DataSource(url)).records.frame
    reference = frames["omop-url"]
    assert set(reference["unit"]) == set(records["unit"])
    assert reference["date"].min() == records["date"].max() + pd.Timedelta(days=1)
    for name, frame in frames.items():
        pd.testing.assert_frame_equal(frame, reference, obj=name)
    # the default hospital name is the source's own (a database file's stem), not a path fragment
    default = _forecast(sources, url, tmp_path / "d")
    assert set(default["hospital"]) == {"cdm"}


def test_allocate_capacity_from_an_omop_database(sources: dict[str, Path], tmp_path: Path) -> None:
    url = f"sqlite:///{sources['omop']}"
    forecast = _forecast(sources, url, tmp_path / "fc")
    plan_dir = tmp_path / "plan"
    result = runner.invoke(
        app,
        [
            "allocate",
            "--forecast",
            str(tmp_path / "fc" / "forecast.csv"),
            "--capacity-from",
            url,
            "--out",
            str(plan_dir),
        ],
    )
    assert result.exit_code == 0, result.output
    plan = pd.read_csv(plan_dir / "plan.csv")
    assert len(plan) == 7 * forecast["unit"].nunique()
    # physical beds come from the largest census the node counted from its CDM
    census = load_source(DataSource(url)).records.frame.groupby("unit")["census"].max()
    beds = plan.groupby("unit")["physical_beds"].first()
    assert beds.to_dict() == census.astype(int).to_dict()


def test_share_fingerprints_the_records_of_a_fhir_folder(sources: dict[str, Path], tmp_path: Path) -> None:
    _forecast(sources, str(sources["fhir"]), tmp_path / "fc")
    out = tmp_path / "shared.csv"
    result = runner.invoke(
        app,
        [
            "share",
            "--forecast",
            str(tmp_path / "fc" / "forecast.csv"),
            "--data",
            str(sources["fhir"]),
            "--ledger",
            str(tmp_path / "ledger.json"),
            "--epsilon-budget",
            "10",
            "--epsilon",
            "1",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(out)) > 0


def test_explain_reads_an_omop_database(sources: dict[str, Path], tmp_path: Path) -> None:
    url = f"sqlite:///{sources['omop']}"
    out = tmp_path / "ex"
    result = runner.invoke(
        app, ["explain", "--model", str(sources["model"]), "--data", url, "--out", str(out), "--method", "occlusion"]
    )
    assert result.exit_code == 0, result.output
    payload = json.loads((out / "explanation.json").read_text())
    assert payload["data"] == url and payload["explanations"]


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP listener on a free loopback port that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    server.close()


def _one_error_line(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    return lines[0]


def test_a_database_that_never_answers_is_one_line_and_exit_2(
    sources: dict[str, Path], silent_server: int, tmp_path: Path
) -> None:
    pytest.importorskip("psycopg")
    url = f"postgresql://reader@127.0.0.1:{silent_server}/omop"
    result = runner.invoke(
        app, ["forecast", "--model", str(sources["model"]), "--data", url, "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2
    line = _one_error_line(result.output)
    assert f"127.0.0.1:{silent_server}/omop" in line and ("did not answer" in line or "timeout" in line.lower())
    assert not (tmp_path / "o" / "forecast.csv").exists()


@pytest.mark.parametrize("command", ["forecast", "explain", "allocate", "share"])
def test_a_missing_database_file_is_one_line_and_exit_2(sources: dict[str, Path], tmp_path: Path, command: str) -> None:
    url = f"sqlite:///{tmp_path / 'nowhere.sqlite'}"
    args = {
        "forecast": ["forecast", "--model", str(sources["model"]), "--data", url, "--out", str(tmp_path / "o")],
        "explain": ["explain", "--model", str(sources["model"]), "--data", url, "--out", str(tmp_path / "o")],
        "allocate": ["allocate", "--forecast", str(tmp_path / "f.csv"), "--capacity-from", url, "--out", str(tmp_path)],
        "share": [
            "share", "--forecast", str(tmp_path / "f.csv"), "--data", url, "--ledger", str(tmp_path / "l.json"),
            "--epsilon", "1", "--epsilon-budget", "5", "--out", str(tmp_path / "s.csv"),
        ],
    }[command]  # fmt: skip
    if command in ("allocate", "share"):  # a forecast to go with it, so the source is what fails
        _forecast(sources, str(sources["csv"]), tmp_path / "fc")
        (tmp_path / "fc" / "forecast.csv").rename(tmp_path / "f.csv")
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    line = _one_error_line(result.output)
    assert "nowhere.sqlite" in line and "no such SQLite database file" in line
    assert not (tmp_path / "s.csv").exists() and not (tmp_path / "l.json").exists()


def test_a_broken_fhir_record_names_its_line_and_field(sources: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "fhir"
    folder.mkdir()
    for path in sources["fhir"].iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    encounters = (folder / "Encounter.ndjson").read_text().splitlines()
    record = json.loads(encounters[2])
    record["location"][0]["period"]["start"] = "yesterday"
    encounters[2] = json.dumps(record)
    (folder / "Encounter.ndjson").write_text("\n".join(encounters) + "\n")
    result = runner.invoke(
        app, ["forecast", "--model", str(sources["model"]), "--data", str(folder), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "Encounter.ndjson" in result.output and "line 3" in result.output
    assert "location[0].period.start" in result.output


def test_a_bad_mapping_file_is_one_line_and_exit_2(sources: dict[str, Path], tmp_path: Path) -> None:
    mapping = tmp_path / "mapping.toml"
    mapping.write_text("[omop]\nno-such-key = 1\n")
    result = runner.invoke(
        app,
        [
            "forecast", "--model", str(sources["model"]), "--data", str(sources["omop"]), "--mapping", str(mapping),
            "--out", str(tmp_path / "o"),
        ],
    )  # fmt: skip
    assert result.exit_code == 2
    line = _one_error_line(result.output)
    assert "mapping.toml" in line and "no-such-key" in line
