"""The equipment data contract: inventories, event logs and fleet folders, problem by problem, files untouched."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from medalloc.cli import app
from medalloc_core.contract import DataContractError
from medalloc_core.equipment.contract import EVENT_KINDS
from medalloc_core.equipment.validation import (
    detect_equipment_shape,
    load_fleet,
    validate_equipment_file,
    validate_fleet,
)
from tests.equipment_fixtures import fleet_copy

runner = CliRunner()
REPO_ROOT = Path(__file__).resolve().parents[1]

INVENTORY = (
    "device_id,device_type,unit,install_date,manufacturer\n"
    "VE-1,ventilator,ICU,2020-03-01,Medix\n"
    "IP-1,infusion_pump,MED,2021-06-15,Vitalon\n"
)
EVENTS = (
    "device_id,time,event,value\n"
    "VE-1,2024-01-01,usage,10.5\n"
    "VE-1,2024-01-01 13:20,error,E-VALVE\n"
    "VE-1,2024-01-03 08:00,failure,\n"
    "VE-1,2024-01-05 15:00,repair,\n"
    "IP-1,2024-01-02 09:30,preventive,\n"
    "IP-1,2024-01-02,usage,7\n"
)


def fleet(tmp_path: Path, inventory: str = INVENTORY, events: str = EVENTS) -> Path:
    folder = tmp_path / "H000"
    folder.mkdir(exist_ok=True)
    (folder / "devices.csv").write_text(inventory)
    (folder / "events.csv").write_text(events)
    return folder


def errors(folder: Path) -> list[str]:
    return [str(p) for r in validate_fleet(folder) for p in r.errors]


def test_a_valid_fleet_loads_typed_and_sorted(tmp_path: Path) -> None:
    loaded = load_fleet(fleet(tmp_path))
    assert list(loaded.devices["device_id"]) == ["IP-1", "VE-1"]
    assert str(loaded.devices["install_date"].dtype).startswith("datetime64")
    ev = loaded.events
    assert list(ev.columns) == ["device_id", "time", "event", "hours", "code"]
    assert ev.loc[(ev.device_id == "VE-1") & (ev.event == "usage"), "hours"].item() == 10.5
    assert ev.loc[ev.event == "error", "code"].item() == "E-VALVE"
    assert set(ev["event"]) <= set(EVENT_KINDS)
    assert loaded.start == pd.Timestamp("2024-01-01") and loaded.end == pd.Timestamp("2024-01-05")


def test_the_generated_fleets_are_valid_in_csv_and_parquet_and_load_the_same(tmp_path: Path) -> None:
    csv, parquet = fleet_copy(tmp_path, "csv") / "H000", fleet_copy(tmp_path, "parquet") / "H000"
    for folder in (csv, parquet):
        reports = validate_fleet(folder)
        assert [r.ok for r in reports] == [True, True], [str(p) for r in reports for p in r.problems]
    a, b = load_fleet(csv), load_fleet(parquet)
    pd.testing.assert_frame_equal(a.devices, b.devices)
    pd.testing.assert_frame_equal(a.events, b.events)


def test_detects_the_shape_from_the_header_case_insensitively() -> None:
    assert detect_equipment_shape(["Device_ID", "Device_Type", "Unit", "Install_Date", "Manufacturer"]) == "inventory"
    assert detect_equipment_shape(["device_id", "TIME", "Event"]) == "events"
    assert detect_equipment_shape(["date", "unit", "admissions"]) is None


@pytest.mark.parametrize(
    ("inventory", "events", "expected"),
    [
        (
            INVENTORY.replace("IP-1,infusion_pump", ",infusion_pump"),
            EVENTS,
            "devices.csv, row 3, column 'device_id': empty device_id",
        ),
        (
            INVENTORY + "VE-1,ventilator,ED,2022-01-01,Medix\n",
            EVENTS,
            "devices.csv, row 4, column 'device_id': duplicate device_id 'VE-1', first at row 2",
        ),
        (
            INVENTORY.replace("2021-06-15", "15/06/2021"),
            EVENTS,
            "devices.csv, row 3, column 'install_date': '15/06/2021' is not a valid date; expected an ISO date",
        ),
        (
            INVENTORY.replace("Vitalon", ""),
            EVENTS,
            "devices.csv, row 3, column 'manufacturer': empty manufacturer; expected the manufacturer ('unknown'",
        ),
        (
            INVENTORY.replace(",manufacturer", "").replace(",Medix", "").replace(",Vitalon", ""),
            EVENTS,
            "devices.csv, row 1, column 'manufacturer': missing required column 'manufacturer'",
        ),
        (
            INVENTORY,
            EVENTS.replace("IP-1,2024-01-02,usage,7", "IP-1,2024-01-02,usage,seven"),
            "events.csv, row 7, column 'value': 'seven' is not a number of hours from 0 to 24",
        ),
        (
            INVENTORY,
            EVENTS.replace("IP-1,2024-01-02,usage,7", "IP-1,2024-01-02,usage,-1"),
            "events.csv, row 7, column 'value': '-1' is not a number of hours from 0 to 24",
        ),
        (
            INVENTORY,
            EVENTS.replace("error,E-VALVE", "error,"),
            "events.csv, row 3, column 'value': empty value of an error event; expected the error code",
        ),
        (
            INVENTORY,
            EVENTS.replace("failure", "breakdown"),
            "events.csv, row 4, column 'event': 'breakdown' is not an event kind; expected one of usage, error",
        ),
        (
            INVENTORY,
            EVENTS.replace("2024-01-05 15:00", "2024-13-05 15:00"),
            "events.csv, row 5, column 'time': '2024-13-05 15:00' is not a valid date",
        ),
        (
            INVENTORY,
            EVENTS + "VE-1,2024-01-01 18:00,usage,14\n",
            "events.csv, row 8, column 'value': device 'VE-1' logs 24.5 hours of use on 2024-01-01 (this row takes it "
            "past 24); expected at most 24 hours per day",
        ),
        (
            INVENTORY,
            EVENTS + "VE-1,2024-01-03 08:00,failure,\n",
            "events.csv, row 8, column 'time': duplicate event (VE-1, 2024-01-03 08:00, failure), first at row 4",
        ),
        (
            INVENTORY,
            EVENTS + "XX-9,2024-01-02,preventive,\n",
            "events.csv, row 8, column 'device_id': device 'XX-9' is not in the inventory (devices.csv)",
        ),
        (
            INVENTORY,
            EVENTS + "IP-1,2021-06-14,preventive,\n",
            "events.csv, row 8, column 'time': event on 2021-06-14 is before device 'IP-1' was installed (2021-06-15",
        ),
        (
            INVENTORY,
            EVENTS.replace(",value", "")
            .replace(",10.5", "")
            .replace(",E-VALVE", "")
            .replace(",7\n", "\n")
            .replace("failure,", "failure")
            .replace("repair,", "repair")
            .replace("preventive,", "preventive"),
            "events.csv, row 1, column 'value': missing column 'value': usage events need it",
        ),
    ],
)
def test_each_problem_names_file_row_column_and_what_was_expected(
    tmp_path: Path, inventory: str, events: str, expected: str
) -> None:
    folder = fleet(tmp_path, inventory, events)
    found = errors(folder)
    assert any(expected in e for e in found), found
    with pytest.raises(DataContractError):
        load_fleet(folder)


def test_a_failure_without_a_repair_before_the_next_is_a_warning_not_an_error(tmp_path: Path) -> None:
    folder = fleet(tmp_path, events=EVENTS + "VE-1,2024-01-04 10:00,failure,\n")
    reports = validate_fleet(folder)
    assert all(r.ok for r in reports)
    warnings = [str(p) for r in reports for p in r.warnings]
    assert any("follow another failure of the same device with no repair between" in w for w in warnings), warnings
    load_fleet(folder)


def test_a_folder_without_its_event_log_or_with_two_inventories_says_which_file(tmp_path: Path) -> None:
    folder = fleet(tmp_path)
    (folder / "events.csv").unlink()
    assert any("no events.csv or events.parquet" in e for e in errors(folder))
    folder = fleet(tmp_path)
    pd.read_csv(folder / "devices.csv").to_parquet(folder / "devices.parquet")
    assert any("both devices.csv and devices.parquet" in e for e in errors(folder))


def test_a_single_event_log_is_checked_on_its_own(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text(EVENTS + "XX-9,2024-01-02,preventive,\n")
    report = validate_equipment_file(path)
    assert report.ok and report.summary["shape"] == "events"  # without an inventory nothing is cross-checked


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_cli_validates_a_fleet_folder_exit_2_with_the_row_and_leaves_the_files_untouched(tmp_path: Path) -> None:
    folder = fleet(tmp_path, events=EVENTS.replace("failure", "breakdown"))
    before = digest(folder)
    result = runner.invoke(app, ["validate", str(folder)])
    assert result.exit_code == 2, result.output
    assert f"error: {folder / 'events.csv'}, row 4, column 'event'" in " ".join(result.output.split())
    assert f"OK {folder / 'devices.csv'}" in result.output
    assert "1 of 2 file(s) valid" in result.output
    assert "Traceback" not in result.output
    assert digest(folder) == before


def test_cli_in_a_real_process_accepts_the_generated_fleets(tmp_path: Path) -> None:
    root = fleet_copy(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "medalloc.cli", "validate", str(root / "H000"), str(root / "H001" / "events.csv")],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = " ".join(result.stdout.split())
    assert "3 of 3 file(s) valid" in out
    assert "shape inventory" in out and "shape events" in out
