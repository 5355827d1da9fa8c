"""``medalloc validate``: summaries, exit codes, capped output, a real subprocess, files left untouched."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from medalloc.cli import app
from medalloc.cli.validate import SHOWN_PER_FILE

runner = CliRunner()
REPO_ROOT = Path(__file__).resolve().parents[1]

GOOD = "date,unit,admissions,discharges,census,capacity\n" + "".join(
    f"{d:%Y-%m-%d},{u},2,2,10,12\n" for u in ("ICU", "WARD") for d in pd.date_range("2024-01-01", periods=10)
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_valid_csv_prints_a_summary_and_exits_0(tmp_path: Path) -> None:
    path = write(tmp_path, "good.csv", GOOD)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    lines = [" ".join(line.split()) for line in result.output.splitlines()]
    assert f"OK {path}" in lines
    for expected in (
        "shape daily",
        "frequency daily",
        "units 2: ICU, WARD",
        "date range 2024-01-01 .. 2024-01-10",
        "rows 20",
        "gaps 0",
    ):
        assert expected in lines, result.output


def test_valid_parquet_and_encounter_files(tmp_path: Path) -> None:
    daily = tmp_path / "daily.parquet"
    frame = pd.read_csv(io.StringIO(GOOD))
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), daily)
    stays = write(
        tmp_path,
        "stays.csv",
        "encounter_id,patient_id,unit,admit_time,discharge_time\nE1,P1,ICU,2024-01-01 10:00,2024-01-03 09:00\n",
    )
    result = runner.invoke(app, ["validate", str(daily), str(stays)])
    assert result.exit_code == 0, result.output
    lines = [" ".join(line.split()) for line in result.output.splitlines()]
    assert "shape encounters" in lines and "stays (open) 1 (0 open)" in lines
    assert "date range 2024-01-01 .. 2024-01-03" in lines
    assert "2 of 2 file(s) valid" in lines


def test_several_files_exit_2_if_any_has_errors_and_each_is_reported(tmp_path: Path) -> None:
    good = write(tmp_path, "good.csv", GOOD)
    bad = write(tmp_path, "bad.csv", "date,unit,census\n2024-01-01,ICU,-4\n")
    result = runner.invoke(app, ["validate", str(good), str(bad)])
    assert result.exit_code == 2
    assert f"OK {good}" in result.output
    assert f"error: {bad}, row 2, column 'census': '-4' is negative" in result.output
    assert "1 of 2 file(s) valid" in result.output


def test_output_is_capped_for_a_badly_broken_file(tmp_path: Path) -> None:
    rows = "".join(f"not-a-date,ICU,{i}.5\n" for i in range(3000))
    path = write(tmp_path, "broken.csv", "date,unit,census\n" + rows)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    problem_lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    # 50 row lines, then each check's count line: 3000 bad dates and 3000 fractions, 50 listed of each.
    assert len(problem_lines) == SHOWN_PER_FILE + 2
    assert problem_lines[-2:] == [
        f"error: {path}, column 'census': ... and 2,950 more row(s) with the same problem (not listed)",
        f"error: {path}, column 'date': ... and 2,950 more row(s) with the same problem (not listed)",
    ]
    assert f"... and 50 more problem(s) in {path}" in result.output  # 2 x 50 listed rows - 50 shown


def test_validation_never_modifies_the_files(tmp_path: Path) -> None:
    good = write(tmp_path, "good.csv", GOOD)
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"date,unit,census\r\n2024-01-01,ICU,\xff\r\n")
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (good, bad)}
    runner.invoke(app, ["validate", str(good), str(bad)])
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (good, bad)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "good.csv"]


def test_real_subprocess_reports_errors_without_a_traceback(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.csv"
    garbage.write_bytes(bytes(range(256)) * 8)
    huge = write(tmp_path, "huge.csv", "date,unit,census\n2024-01-01,ICU,99999999999999999999\n")
    missing = tmp_path / "missing.parquet"
    before = garbage.read_bytes(), huge.read_bytes()
    completed = subprocess.run(
        [sys.executable, "-m", "medalloc.cli", "validate", str(garbage), str(huge), str(missing)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 2, completed.stdout + completed.stderr
    assert "Traceback" not in completed.stderr and "Traceback" not in completed.stdout
    assert "looks like binary data" in completed.stdout
    assert f"error: {huge}, row 2, column 'census': '99999999999999999999' is implausibly large" in completed.stdout
    assert f"error: {missing}: no such file" in completed.stdout
    assert (garbage.read_bytes(), huge.read_bytes()) == before


def test_an_unexpected_failure_is_one_line_and_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing real fails this way today; this pins the safety net a future bug would hit.
    def broken(source: object) -> None:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr("medalloc.cli.validate.inspect_source", broken)
    path = write(tmp_path, "good.csv", GOOD)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert f"error: {path}: could not be validated (RuntimeError: simulated bug)" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
