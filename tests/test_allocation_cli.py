"""Forecast/capacity readers and the `medalloc allocate` / `allocate-region` commands end to end."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from medalloc.cli import app
from medalloc_core.allocation.forecast_io import capacity_from_records, read_capacity, read_forecast, write_forecast
from medalloc_core.allocation.regional import share_forecast, write_shared
from medalloc_core.contract import DataContractError
from tests.allocation_fixtures import forecast_frame

runner = CliRunner()


def _write_inputs(tmp_path: Path) -> tuple[Path, Path]:
    frame = forecast_frame(
        {
            ("H000", "ICU"): [(8.0, 10.0, 14.0), (9.0, 11.0, 13.0)],
            ("H000", "medical"): [(30.0, 35.0, 42.0), (31.0, 36.0, 44.0)],
        }
    )
    forecast = write_forecast(frame, tmp_path / "forecast.csv")
    capacity = tmp_path / "capacity.csv"
    pd.DataFrame({"unit": ["ICU", "medical"], "beds": [13, 60], "staffed": [10, 40]}).to_csv(capacity, index=False)
    return forecast, capacity


# ------------------------------------------------------------------ readers
def test_forecast_roundtrip(tmp_path: Path) -> None:
    frame = forecast_frame({("H000", "ICU"): [(8.0, 10.0, 14.0)] * 3})
    path = write_forecast(frame, tmp_path / "f.csv")
    back = read_forecast(path)
    assert back["value"].tolist() == frame.sort_values(["date", "q"])["value"].tolist()
    assert str(back["date"].dtype).startswith("datetime64")
    with pytest.raises(FileExistsError):
        write_forecast(frame, path)


def test_forecast_errors_name_file_row_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(
        "hospital,unit,date,target,q,value\n"
        "H0,ICU,2026-03-02,census,0.1,8\n"
        "H0,ICU,2026-03-02,census,0.5,ten\n"  # row 3: not a number
        "H0,ICU,not-a-date,census,0.9,14\n"  # row 4: bad date
        "H0,ICU,2026-03-03,census,1.5,3\n"  # row 5: q outside (0, 1)
        "H0,ICU,2026-03-03,beds,0.5,3\n"  # row 6: unknown target
        "H0,ICU,2026-03-03,census,0.9,-2\n"  # row 7: negative
    )
    with pytest.raises(DataContractError) as info:
        read_forecast(path)
    found = {(p.row, p.column) for p in info.value.problems}
    assert {(3, "value"), (4, "date"), (5, "q"), (6, "target"), (7, "value")} <= found
    assert all(p.file == str(path) for p in info.value.problems)


def test_crossing_quantiles_and_missing_columns(tmp_path: Path) -> None:
    path = tmp_path / "cross.csv"
    path.write_text(
        "hospital,unit,date,target,q,value\nH0,ICU,2026-03-02,census,0.1,8\nH0,ICU,2026-03-02,census,0.5,7\n"
    )
    with pytest.raises(DataContractError, match=r"row 3, column 'value': quantiles cross"):
        read_forecast(path)
    (tmp_path / "cols.csv").write_text("hospital,unit,date,value\nH0,ICU,2026-03-02,1\n")
    with pytest.raises(DataContractError, match=r"missing column\(s\) \['target', 'q'\]"):
        read_forecast(tmp_path / "cols.csv")


def test_capacity_readers(tmp_path: Path) -> None:
    (tmp_path / "cap.csv").write_text("unit,beds\nICU,12\nmedical,-3\nsurgical,2.5\n")
    with pytest.raises(DataContractError) as info:
        read_capacity(tmp_path / "cap.csv")
    assert {(p.row, p.column) for p in info.value.problems} == {(3, "beds"), (4, "beds")}
    (tmp_path / "daily.csv").write_text(
        "date,unit,census,capacity\n2026-01-01,ICU,8,12\n2026-01-02,ICU,9,14\n2026-01-01,ward,30,40\n"
    )
    derived = capacity_from_records(tmp_path / "daily.csv")
    assert dict(zip(derived["unit"], derived["beds"], strict=True)) == {"ICU": 14, "ward": 40}


# ------------------------------------------------------------------ allocate
def test_allocate_happy_path_writes_plan_and_plot(tmp_path: Path) -> None:
    forecast, capacity = _write_inputs(tmp_path)
    out = tmp_path / "plan"
    result = runner.invoke(
        app,
        [
            "allocate",
            "--forecast",
            str(forecast),
            "--capacity",
            str(capacity),
            "--out",
            str(out),
            "--under-cost",
            "7",
            "--over-cost",
            "3",
            "--nurse-ratio",
            "ICU=2,medical=5",
        ],
    )
    assert result.exit_code == 0, result.output
    plan = pd.read_csv(out / "plan.csv")
    icu = plan[plan["unit"] == "ICU"].sort_values("date")
    # ratio 0.7: day 1 -> 12 beds (hand-worked in test_allocation_newsvendor); day 2: 11 + 0.5 * 2 = 12
    assert icu["staffed_beds"].tolist() == [12, 12]
    assert icu["nurses_per_shift"].tolist() == [6, 6]
    assert (plan["staffed_beds"] <= plan["physical_beds"]).all()
    assert (out / "plan.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Bed and staff plan" in result.output
    before = (out / "plan.csv").read_bytes()
    again = runner.invoke(
        app, ["allocate", "--forecast", str(forecast), "--capacity", str(capacity), "--out", str(out)]
    )
    assert again.exit_code == 2 and "already exists" in again.output and "--force" in again.output
    assert (out / "plan.csv").read_bytes() == before  # untouched
    forced = runner.invoke(
        app, ["allocate", "--forecast", str(forecast), "--capacity", str(capacity), "--out", str(out), "--force"]
    )
    assert forced.exit_code == 0, forced.output


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda f, c: f.write_text(f.read_text().replace("census,0.5,10.0", "census,0.5,x", 1)),
            "row 3, column 'value'",
        ),
        (lambda f, c: c.write_text("unit,beds\nICU,13\n"), "no capacity for"),
        (lambda f, c: f.unlink(), "no such file"),
    ],
)
def test_allocate_bad_input_exits_2_without_traceback(tmp_path: Path, mutate, expected: str) -> None:  # type: ignore[no-untyped-def]
    forecast, capacity = _write_inputs(tmp_path)
    mutate(forecast, capacity)
    result = runner.invoke(
        app, ["allocate", "--forecast", str(forecast), "--capacity", str(capacity), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "o" / "plan.csv").exists()


def test_allocate_needs_exactly_one_capacity_source(tmp_path: Path) -> None:
    forecast, _ = _write_inputs(tmp_path)
    result = runner.invoke(app, ["allocate", "--forecast", str(forecast), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "exactly one of --capacity" in result.output


def test_allocate_region_happy_path(tmp_path: Path) -> None:
    frames = [
        forecast_frame({("A", "ward"): [(11.0, 12.0, 13.0)]}),
        forecast_frame({("B", "ward"): [(4.0, 5.0, 6.0)]}),
    ]
    paths = [write_forecast(f, tmp_path / f"{h}.csv") for f, h in zip(frames, "AB", strict=True)]
    (tmp_path / "cap.csv").write_text("hospital,unit,beds\nA,ward,10\nB,ward,10\n")
    args = [
        "allocate-region",
        "--capacity",
        str(tmp_path / "cap.csv"),
        "--out",
        str(tmp_path / "r"),
        "--pool",
        "1",
        "--scenarios",
        "5",
    ]
    for p in paths:
        args += ["--forecast", str(p)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    surge = pd.read_csv(tmp_path / "r" / "surge.csv").set_index("hospital")["surge_beds"]
    assert surge["A"] == pytest.approx(1.0) and surge["B"] == pytest.approx(0.0)
    assert (tmp_path / "r" / "regional.png").exists()
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "already exists" in again.output


def test_allocate_region_surge_only_fills_empty_physical_beds(tmp_path: Path) -> None:
    # A staffs 10 of its 11 physical beds: however busy it is, at most 1 surge bed fits there.
    path = write_forecast(
        forecast_frame({("A", "ward"): [(13.0, 14.0, 15.0)], ("B", "ward"): [(4.0, 5.0, 6.0)]}), tmp_path / "f.csv"
    )
    (tmp_path / "cap.csv").write_text("hospital,unit,beds,staffed\nA,ward,11,10\nB,ward,14,10\n")
    result = runner.invoke(
        app,
        [
            "allocate-region",
            "--forecast",
            str(path),
            "--capacity",
            str(tmp_path / "cap.csv"),
            "--out",
            str(tmp_path / "r"),
            "--pool",
            "3",
            "--scenarios",
            "4",
        ],
    )
    assert result.exit_code == 0, result.output
    days = pd.read_csv(tmp_path / "r" / "hospital_days.csv").set_index("hospital")
    assert days.loc["A", "surge_beds"] == pytest.approx(1.0)
    assert days.loc["A", "capacity"] == 10.0
    assert days.loc["A", "expected_transfers_out"] > 0  # the rest goes to B


def test_allocate_region_bad_number_exits_2(tmp_path: Path) -> None:
    (tmp_path / "s.csv").write_text("hospital,date,q,value\nA,2026-03-02,0.5,12\nA,2026-03-03,0.5,lots\n")
    (tmp_path / "cap.csv").write_text("hospital,beds\nA,10\n")
    result = runner.invoke(
        app,
        [
            "allocate-region",
            "--forecast",
            str(tmp_path / "s.csv"),
            "--capacity",
            str(tmp_path / "cap.csv"),
            "--out",
            str(tmp_path / "r"),
        ],
    )
    assert result.exit_code == 2
    assert "row 3, column 'value': 'lots' is not a number" in result.output


def test_shared_tables_written_by_hospitals_feed_allocate_region(tmp_path: Path) -> None:
    # Each hospital writes only its shared table (with DP noise: epsilon spent through the hook).
    spent: list[float] = []
    paths = []
    for hospital, triple in (("A", (11.0, 12.0, 13.0)), ("B", (4.0, 5.0, 6.0))):
        frame = forecast_frame({(hospital, "ICU"): [triple] * 3, (hospital, "ward"): [triple] * 3})
        shared = share_forecast(frame, epsilon=50.0, seed=0, on_release=spent.append)
        paths.append(write_shared(shared, tmp_path / f"{hospital}.csv"))
    assert spent == [50.0, 50.0]
    assert pd.read_csv(paths[0]).columns.tolist() == ["hospital", "date", "q", "value"]
    (tmp_path / "cap.csv").write_text("hospital,beds\nA,20\nB,20\n")
    args = ["allocate-region", "--capacity", str(tmp_path / "cap.csv"), "--out", str(tmp_path / "r"), "--pool", "6"]
    result = runner.invoke(app, [*args, "--forecast", str(paths[0]), "--forecast", str(paths[1])])
    assert result.exit_code == 0, result.output
    days = pd.read_csv(tmp_path / "r" / "hospital_days.csv")
    assert set(days["hospital"]) == {"A", "B"} and len(days) == 6
