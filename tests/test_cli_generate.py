"""`medalloc generate`: files, summary table, refusal to overwrite, exit status 2 on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from medalloc.cli import app
from medalloc_core import contract as c

runner = CliRunner()


def _run(*args: str):  # noqa: ANN202 - click's Result
    return runner.invoke(app, ["generate", *args])


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_generate_writes_one_file_per_hospital_and_prints_the_summary(tmp_path: Path) -> None:
    out = tmp_path / "region"
    result = _run("--hospitals", "3", "--days", "60", "--seed", "4", "--out", str(out), "--start", "2024-03-01")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["H000.csv", "H001.csv", "H002.csv", "region.json"]
    for hid in ("H000", "H001", "H002"):
        assert hid in result.output
    assert "adm/day" in result.output and "overflow" in result.output
    meta = json.loads((out / "region.json").read_text())
    assert meta["config"]["seed"] == 4 and meta["start"] == "2024-03-01"
    frame = pd.read_csv(out / "H000.csv")
    assert list(frame.columns) == [c.DATE, c.UNIT, *c.COUNT_COLUMNS]
    assert frame[c.DATE].max() == "2024-04-29"


def test_generate_is_byte_reproducible_from_the_command_line(tmp_path: Path) -> None:
    args = ("--hospitals", "2", "--days", "40", "--seed", "8")
    assert _run(*args, "--out", str(tmp_path / "a")).exit_code == 0
    assert _run(*args, "--out", str(tmp_path / "b")).exit_code == 0
    assert _snapshot(tmp_path / "a") == _snapshot(tmp_path / "b")


def test_generate_refuses_an_earlier_region_unless_forced(tmp_path: Path) -> None:
    assert _run("--hospitals", "3", "--days", "40", "--out", str(tmp_path)).exit_code == 0
    before = _snapshot(tmp_path)
    result = _run("--hospitals", "2", "--days", "40", "--seed", "1", "--out", str(tmp_path))
    assert result.exit_code == 2
    assert "already holds a region" in result.output and "--force" in result.output
    assert "Traceback" not in result.output
    assert _snapshot(tmp_path) == before
    forced = _run("--hospitals", "2", "--days", "40", "--seed", "1", "--out", str(tmp_path), "--force")
    assert forced.exit_code == 0, forced.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["H000.csv", "H001.csv", "region.json"]


def test_generate_writes_into_a_folder_with_unrelated_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    assert _run("--hospitals", "1", "--days", "30", "--out", str(tmp_path)).exit_code == 0
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_generate_encounters_as_parquet(tmp_path: Path) -> None:
    result = _run("-n", "2", "-d", "30", "--shape", "encounters", "--format", "parquet", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    enc = pd.read_parquet(tmp_path / "H000.parquet")
    assert list(enc.columns) == list(c.ENCOUNTER_COLUMNS)
    assert enc[c.ADMIT_TIME].notna().all() and enc[c.DISCHARGE_TIME].isna().any()
    assert json.loads((tmp_path / "region.json").read_text())["files"] == {"shape": "encounters", "format": "parquet"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--hospitals", "0"), "hospitals must be from 1 to 1000"),
        (("--days", "3"), "days must be from 28"),
        (("--start", "01/02/2023"), "ISO date"),
        (("--shape", "weekly"), "--shape must be one of"),
        (("--format", "xlsx"), "--format must be one of"),
    ],
)
def test_bad_options_exit_2_with_a_clear_message(args: tuple[str, ...], message: str, tmp_path: Path) -> None:
    result = _run(*args, "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_out_that_is_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "region.csv"
    target.write_text("x")
    result = _run("--out", str(target))
    assert result.exit_code == 2 and "is a file" in result.output
    assert target.read_text() == "x"
