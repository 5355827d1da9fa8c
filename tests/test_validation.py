"""validate_file / load_unit_records: one test per error class, happy paths, frequency, warnings."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from medalloc.cli import app
from medalloc_core.contract import DataContractError, Frequency, Problem
from medalloc_core.validation import PROBLEMS_PER_CHECK, load_unit_records, validate_file

runner = CliRunner()

ENCOUNTER_HEADER = "encounter_id,patient_id,unit,admit_time,discharge_time\n"


def daily_frame(days: int = 1096, units: int = 6, seed: int = 0, start: str = "2022-01-01") -> pd.DataFrame:
    """Consistent daily records: census(t) = census(t-1) + admissions(t) - discharges(t)."""
    rng = np.random.default_rng(seed)
    frames = []
    for u in range(units):
        admissions = rng.poisson(5 + u, size=days)
        census = np.empty(days, dtype=np.int64)
        discharges = np.empty(days, dtype=np.int64)
        level = 20 + 3 * u
        for t in range(days):
            discharges[t] = min(rng.poisson(5 + u), level + admissions[t])
            level = level + admissions[t] - discharges[t]
            census[t] = level
        frames.append(
            pd.DataFrame(
                {
                    "date": pd.date_range(start, periods=days, freq="D").strftime("%Y-%m-%d"),
                    "unit": f"U{u}",
                    "admissions": admissions,
                    "discharges": discharges,
                    "census": census,
                    "capacity": census.max() + 5,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def write(tmp_path: Path, text: str | bytes, name: str = "hospital.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


# ------------------------------------------------------------------ one test per error class
# Each case: file content, then the (row, column, words) the error must carry. Every case is
# checked through validate_file AND the CLI (exit 2, the same line printed), and the file's
# bytes must be identical afterwards.
ERROR_CASES: dict[str, tuple[str | bytes, int | None, str | None, str]] = {
    "missing-required-column": ("unit,census\nICU,3\n", 1, "date", "missing required column 'date'"),
    "missing-encounter-column": (
        "encounter_id,patient_id,unit,admit_time\nE1,P1,ICU,2024-01-01 10:00\n",
        1,
        "discharge_time",
        "missing required column 'discharge_time'",
    ),
    "no-count-column": ("date,unit,note\n2024-01-01,ICU,x\n", 1, None, "no count column"),
    "unparseable-date": (
        "date,unit,census\n2024-01-01,ICU,3\n2024-02-30,ICU,4\n",
        3,
        "date",
        "'2024-02-30' is not a valid date",
    ),
    "day-first-date": ("date,unit,census\n01/02/2024,ICU,3\n", 2, "date", "expected an ISO date YYYY-MM-DD"),
    "empty-date": ("date,unit,census\n2024-01-01,ICU,3\n,ICU,4\n", 3, "date", "empty date"),
    "empty-unit": ("date,unit,census\n2024-01-01, ,3\n", 2, "unit", "empty unit"),
    "huge-negative-count": ("date,unit,census\n2024-01-01,ICU,-1e300\n", 2, "census", "'-1e300' is negative"),
    "infinite-count": ("date,unit,census\n2024-01-01,ICU,inf\n", 2, "census", "'inf' is implausibly large"),
    "negative-count": ("date,unit,census\n2024-01-01,ICU,3\n2024-01-02,ICU,-2\n", 3, "census", "'-2' is negative"),
    "non-integer-count": ("date,unit,admissions\n2024-01-01,ICU,2.5\n", 2, "admissions", "'2.5' is not a whole number"),
    "non-numeric-count": ("date,unit,admissions\n2024-01-01,ICU,three\n", 2, "admissions", "'three' is not a number"),
    "empty-count": ("date,unit,admissions,census\n2024-01-01,ICU,,4\n", 2, "admissions", "empty admissions"),
    "huge-float-count": ("date,unit,census\n2024-01-01,ICU,1e30\n", 2, "census", "'1e30' is implausibly large"),
    "huge-integer-count": (
        "date,unit,census\n2024-01-01,ICU,3\n2024-01-02,ICU,99999999999999999999\n",
        3,
        "census",
        "'99999999999999999999' is implausibly large; expected a whole number from 0 to 100,000",
    ),
    "duplicate-date-unit": (
        "date,unit,census\n2024-01-01,ICU,3\n2024-01-02,ICU,4\n2024-01-01,WARD,5\n2024-01-02,ICU,6\n",
        5,
        "date",
        "duplicate (date, unit) = (2024-01-02, ICU), first at row 3",
    ),
    "discharge-before-admission": (
        ENCOUNTER_HEADER + "E1,P1,ICU,2024-01-01 10:00,2024-01-02 09:00\nE2,P2,ICU,2024-01-03 10:00,2024-01-02 09:00\n",
        3,
        "discharge_time",
        "discharge 2024-01-02 09:00 is before admission 2024-01-03 10:00",
    ),
    "unparseable-admit-time": (
        ENCOUNTER_HEADER + "E1,P1,ICU,yesterday,\n",
        2,
        "admit_time",
        "'yesterday' is not a valid date",
    ),
    "utc-offset-admit-time": (
        ENCOUNTER_HEADER + "E1,P1,ICU,2024-01-01T10:00+01:00,\n",
        2,
        "admit_time",
        "no UTC offset",
    ),
    "duplicate-encounter-id": (
        ENCOUNTER_HEADER + "E1,P1,ICU,2024-01-01 10:00,\nE1,P2,ICU,2024-01-01 11:00,\n",
        3,
        "encounter_id",
        "duplicate encounter_id 'E1', first at row 2",
    ),
    "empty-file": (b"", None, None, "file is empty"),
    "header-only": ("date,unit,census\n", None, None, "header but no records"),
    "not-utf8": (
        "date,unit,census\n2024-01-01,ICU,1\n2024-01-02,Réanimation,2\n".encode("cp1252"),
        3,
        None,
        "not UTF-8 text: byte 0xe9 at byte offset 46",
    ),
    "mixed-frequency-in-a-unit": (
        "date,unit,census\n2024-01-01,ICU,1\n2024-01-02,ICU,1\n2024-01-03,ICU,1\n"
        "2024-01-10,ICU,1\n2024-01-17,ICU,1\n2024-01-24,ICU,1\n",
        6,
        "date",
        "unit ICU mixes daily and weekly rows",
    ),
    "mixed-frequency-across-units": (
        "date,unit,census\n2024-01-01,ICU,1\n2024-01-02,ICU,1\n2024-01-03,ICU,1\n"
        "2024-01-01,WARD,1\n2024-01-08,WARD,1\n",
        6,
        "date",
        "unit WARD is weekly while other units are daily",
    ),
    "binary-garbage": (bytes(range(256)) * 4, None, None, "looks like binary data"),
    "excel-workbook": (b"PK\x03\x04\x14\x00\x06\x00" + b"\x00" * 64, None, None, "Excel"),
    "ragged-row": ("date,unit,census\n2024-01-01,ICU,1\n2024-01-02,ICU,1,9\n", 3, None, "has 4 fields"),
    "semicolon-separated": ("date;unit;census\n2024-01-01;ICU;1\n", 1, None, "separated by semicolons"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES), ids=list(ERROR_CASES))
def test_each_error_class_names_row_and_column_and_exits_2(tmp_path: Path, case: str) -> None:
    content, row, column, words = ERROR_CASES[case]
    path = write(tmp_path, content)
    before = path.read_bytes()

    report = validate_file(path)
    assert not report.ok
    matching = [p for p in report.errors if words in p.message]
    assert matching, [str(p) for p in report.problems]
    problem = matching[0]
    assert (problem.row, problem.column, problem.file) == (row, column, str(path))
    if row is not None:
        assert f"row {row}" in str(problem)
    if column is not None:
        assert f"column '{column}'" in str(problem)

    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert str(problem) in result.output.splitlines()
    assert "Traceback" not in result.output
    assert path.read_bytes() == before

    with pytest.raises(DataContractError) as info:
        load_unit_records(path)
    assert problem in info.value.problems


def test_nonexistent_path_is_an_error_not_a_crash(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_hospital.csv"
    report = validate_file(missing)
    assert [str(p) for p in report.problems] == [f"error: {missing}: no such file"]
    result = runner.invoke(app, ["validate", str(missing)])
    assert result.exit_code == 2 and f"error: {missing}: no such file" in result.output


def test_all_errors_are_reported_not_just_the_first(tmp_path: Path) -> None:
    path = write(tmp_path, "date,unit,admissions,census\n2024-01-01,ICU,-1,3\nbad,ICU,2,x\n2024-01-03,,1,2\n")
    where = {(p.row, p.column) for p in validate_file(path).errors}
    assert where == {(2, "admissions"), (3, "date"), (3, "census"), (4, "unit")}


def test_row_numbers_count_blank_lines_like_a_spreadsheet(tmp_path: Path) -> None:
    path = write(tmp_path, "date,unit,census\n2024-01-01,ICU,1\n\n\n2024-01-04,ICU,-1\n")
    assert [(p.row, p.column) for p in validate_file(path).errors] == [(5, "census")]


def test_problems_per_check_are_capped_with_a_count(tmp_path: Path) -> None:
    rows = "".join(f"{day:%Y-%m-%d},ICU,-1\n" for day in pd.date_range("2020-01-01", periods=5000))
    path = write(tmp_path, "date,unit,census\n" + rows)
    errors = validate_file(path).errors
    assert len(errors) == PROBLEMS_PER_CHECK + 1
    assert errors[-1].message.startswith(f"... and {5000 - PROBLEMS_PER_CHECK:,} more row(s)")


# ------------------------------------------------------------------ happy paths


def test_daily_csv_three_years_six_units(tmp_path: Path) -> None:
    frame = daily_frame()
    frame["ward_manager"] = "someone"  # extra columns are kept in the raw table and ignored
    path = tmp_path / "h.csv"
    frame.to_csv(path, index=False)
    report = validate_file(path)
    assert report.ok and report.problems == []
    assert report.summary == {
        "file": str(path),
        "format": "csv",
        "shape": "daily",
        "rows": 6 * 1096,
        "columns_ignored": ["ward_manager"],
        "frequency": "daily",
        "units": [f"U{u}" for u in range(6)],
        "date_start": "2022-01-01",
        "date_end": "2024-12-31",
        "gaps": 0,
    }
    records = load_unit_records(path)
    assert records.frequency is Frequency.DAILY and records.shape == "daily"
    assert list(records.frame.columns) == ["date", "unit", "admissions", "discharges", "census", "capacity"]
    assert str(records.frame["date"].dtype) == "datetime64[ns]"
    assert all(records.frame[c].dtype == np.int64 for c in records.count_columns)
    assert records.units == [f"U{u}" for u in range(6)]
    icu = records.frame[records.frame["unit"] == "U3"]
    expected = frame[frame["unit"] == "U3"]
    assert icu["census"].tolist() == expected["census"].tolist()
    assert icu["date"].is_monotonic_increasing


def test_daily_parquet_loads_the_same_records_as_csv(tmp_path: Path) -> None:
    frame = daily_frame(days=60, units=2)
    csv_path = tmp_path / "h.csv"
    frame.to_csv(csv_path, index=False)
    typed = frame.assign(date=pd.to_datetime(frame["date"]).dt.date)
    parquet_path = tmp_path / "h.parquet"
    pq.write_table(pa.Table.from_pandas(typed, preserve_index=False), parquet_path)
    report = validate_file(parquet_path)
    assert report.ok and report.summary["format"] == "parquet"
    from_parquet = load_unit_records(parquet_path)
    pd.testing.assert_frame_equal(from_parquet.frame, load_unit_records(csv_path).frame)


def test_unsorted_rows_come_back_sorted_by_unit_then_date(tmp_path: Path) -> None:
    path = write(tmp_path, "date,unit,census\n2024-01-02,B,5\n2024-01-01,B,4\n2024-01-02,A,2\n2024-01-01,A,1\n")
    frame = load_unit_records(path).frame
    assert frame["unit"].tolist() == ["A", "A", "B", "B"]
    assert frame["census"].tolist() == [1, 2, 4, 5]


def test_headers_match_case_insensitively(tmp_path: Path) -> None:
    path = write(tmp_path, "Date,Unit,Census\n2024-01-01,ICU,1\n")
    assert load_unit_records(path).frame["census"].tolist() == [1]


def test_encounter_file_is_derived_to_daily_records(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        ENCOUNTER_HEADER
        + "E1,P1,ED,2024-03-01 10:00,2024-03-02 14:00\n"
        + "E2,P1,ICU,2024-03-02 14:00,2024-03-03 09:00\n"
        + "E3,P2,ED,2024-03-02 23:00,\n",
    )
    report = validate_file(path)
    assert report.ok, [str(p) for p in report.problems]
    assert report.summary["shape"] == "encounters"
    assert (report.summary["encounters"], report.summary["open_stays"]) == (3, 1)
    assert (report.summary["date_start"], report.summary["date_end"]) == ("2024-03-01", "2024-03-03")
    records = load_unit_records(path)
    assert records.shape == "encounters" and records.frequency is Frequency.DAILY
    rows = records.frame.assign(date=records.frame["date"].dt.strftime("%d")).values.tolist()
    assert rows == [
        ["01", "ED", 1, 0, 1],
        ["02", "ED", 1, 1, 1],
        ["03", "ED", 0, 0, 1],
        ["02", "ICU", 1, 0, 1],
        ["03", "ICU", 0, 1, 0],
    ]


def test_encounter_parquet_with_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "stays.parquet"
    table = pa.table(
        {
            "encounter_id": ["E1", "E2"],
            "patient_id": ["P1", "P2"],
            "unit": ["ICU", "ICU"],
            "admit_time": pa.array([dt.datetime(2024, 3, 1, 22), dt.datetime(2024, 3, 2, 8)]),
            "discharge_time": pa.array([dt.datetime(2024, 3, 2, 7), None], pa.timestamp("us")),
            "diagnosis": ["I21", "J18"],
        }
    )
    pq.write_table(table, path)
    records = load_unit_records(path)
    assert records.frame["census"].tolist() == [1, 1]
    assert records.frame["admissions"].tolist() == [1, 1]
    assert records.frame["discharges"].tolist() == [0, 1]


def test_weekly_frequency_is_inferred_and_dates_moved_to_the_iso_monday(tmp_path: Path) -> None:
    # Week-ending Sundays, as many reporting systems export them.
    sundays = pd.date_range("2024-01-07", periods=8, freq="7D")
    rows = "".join(f"{d:%Y-%m-%d},{unit},{n},{n}\n" for unit in ("ICU", "WARD") for n, d in enumerate(sundays))
    path = write(tmp_path, "date,unit,admissions,discharges\n" + rows)
    report = validate_file(path)
    assert report.ok and report.summary["frequency"] == "weekly"
    assert (report.summary["date_start"], report.summary["date_end"]) == ("2024-01-01", "2024-02-19")
    records = load_unit_records(path)
    assert records.frequency is Frequency.WEEKLY
    assert (records.frame["date"].dt.day_of_week == 0).all()
    assert records.frame["date"].iloc[0] == pd.Timestamp("2024-01-01")


def test_a_missing_week_is_a_gap_in_weekly_data(tmp_path: Path) -> None:
    path = write(tmp_path, "date,unit,census\n2024-01-01,ICU,1\n2024-01-08,ICU,1\n2024-01-22,ICU,1\n")
    report = validate_file(path)
    assert report.ok and report.summary["frequency"] == "weekly" and report.summary["gaps"] == 1
    (warning,) = report.warnings
    assert (warning.row, warning.column) == (4, "date") and "1 missing week(s)" in warning.message


def test_one_missing_week_in_daily_data_is_a_gap_not_mixed_frequency(tmp_path: Path) -> None:
    days = [*pd.date_range("2024-01-01", "2024-01-10"), *pd.date_range("2024-01-17", "2024-01-20")]
    path = write(tmp_path, "date,unit,census\n" + "".join(f"{d:%Y-%m-%d},ICU,3\n" for d in days))
    report = validate_file(path)
    assert report.ok and report.summary["frequency"] == "daily" and report.summary["gaps"] == 6
    (warning,) = report.warnings
    assert warning.row == 12 and "first 2024-01-11" in warning.message


def test_warnings_do_not_fail_and_are_logged_by_the_loader(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # ICU: day 3 is missing (gap); WARD: census jumps by 10 with no admissions (inconsistent).
    path = write(
        tmp_path,
        "date,unit,admissions,discharges,census\n"
        "2024-01-01,ICU,1,0,5\n2024-01-02,ICU,1,1,5\n2024-01-04,ICU,0,0,5\n"
        "2024-01-01,WARD,2,2,20\n2024-01-02,WARD,0,0,30\n2024-01-03,WARD,1,0,31\n",
    )
    report = validate_file(path)
    assert report.ok and report.errors == []
    assert {(w.row, w.column) for w in report.warnings} == {(4, "date"), (6, "census")}
    census = next(w for w in report.warnings if w.column == "census")
    assert "expected 20" in census.message and "found 30" in census.message and "1 row(s)" in census.message

    with caplog.at_level(logging.WARNING, logger="medalloc_core.validation"):
        records = load_unit_records(path)
    assert len(records.frame) == 6
    assert sum("warning:" in r.getMessage() for r in caplog.records) == 2

    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert str(census) in result.output.splitlines()


def test_census_within_tolerance_is_not_flagged(tmp_path: Path) -> None:
    # Off by 2 beds (the tolerance) on a census of 20: fine; off by 3: a warning.
    within = write(
        tmp_path, "date,unit,admissions,discharges,census\n2024-01-01,W,0,0,20\n2024-01-02,W,0,0,22\n", "a.csv"
    )
    beyond = write(
        tmp_path, "date,unit,admissions,discharges,census\n2024-01-01,W,0,0,20\n2024-01-02,W,0,0,23\n", "b.csv"
    )
    assert validate_file(within).warnings == []
    assert [w.row for w in validate_file(beyond).warnings] == [3]


def test_overlapping_stays_of_one_patient_are_a_warning(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        ENCOUNTER_HEADER + "E1,P1,ED,2024-03-01 10:00,\nE2,P1,ICU,2024-03-01 12:00,2024-03-02 09:00\n",
    )
    report = validate_file(path)
    assert report.ok
    (warning,) = report.warnings
    assert (warning.row, warning.column) == (3, "admit_time")


def test_problem_str_is_the_documented_line() -> None:
    problem = Problem("h.csv", "'-1' is negative", row=3, column="census")
    assert str(problem) == "error: h.csv, row 3, column 'census': '-1' is negative"


def test_the_examples_in_docs_data_md_behave_as_documented(tmp_path: Path) -> None:
    docs = (Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text()
    daily_csv, stays_csv = [block.split("```", 1)[0] for block in docs.split("```csv\n")[1:3]]
    daily = write(tmp_path, daily_csv, "st-marys-daily.csv")
    report = validate_file(daily)
    assert report.ok and report.summary["columns_ignored"] == ["ward_manager"]
    assert sorted((w.row, w.column) for w in report.warnings) == [(7, "census"), (7, "date")]
    for warning in report.warnings:
        assert str(warning).replace(str(tmp_path), "/data/medalloc") in docs
    records = load_unit_records(write(tmp_path, stays_csv, "st-marys-stays.csv"))
    documented = docs.split("The example above gives:")[1].split("\n\n")[1].splitlines()[2:]
    table = [[cell.strip() for cell in line.strip("|").split("|")] for line in documented]
    derived = records.frame.assign(date=records.frame["date"].dt.strftime("%Y-%m-%d")).astype(str)
    assert derived.values.tolist() == table
