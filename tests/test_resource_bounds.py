"""Bounds on the files a node reads: size, columns and line length are capped with a message naming the limit."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from medalloc.cli import app
from medalloc_core import io as medalloc_io
from medalloc_core.contract import DataContractError
from medalloc_core.io import _repeated, read_table

GOOD = "date,unit,admissions,census\n2024-01-01,ICU,2,10\n2024-01-02,ICU,3,11\n"


def _problem(path: Path) -> str:
    with pytest.raises(DataContractError) as caught:
        read_table(path)
    return str(caught.value.problems[0])


def test_two_hundred_thousand_columns_are_refused_at_the_header(tmp_path: Path) -> None:
    """The 1.9 MB file that ran for minutes (a quadratic repeated-column check) is refused by the column cap."""
    path = tmp_path / "wide.csv"
    path.write_text(",".join(_base36(i) for i in range(200_000)) + "\n" + ",".join("1" for _ in range(200_000)) + "\n")
    assert path.stat().st_size < 2 * 2**20
    message = _problem(path)
    assert f"{path}" in message and "row 1" in message
    assert "200,000 columns, over the limit of 1,000 (MAX_COLUMNS)" in message


def _base36(i: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        i, r = divmod(i, 36)
        out = digits[r] + out
        if not i:
            return out


def test_the_repeated_column_check_is_linear() -> None:
    """200,000 names with one repeat: found in one pass (Counter), not 200,000 list.count scans."""
    names = [f"c{i}" for i in range(200_000)] + [" c7 "]
    assert _repeated(names) == ["c7"]


def test_a_file_over_the_size_cap_is_refused_before_it_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(medalloc_io, "MAX_FILE_BYTES", 1000)
    path = tmp_path / "big.csv"
    path.write_text(GOOD + "2024-01-03,ICU,3,11\n" * 60)
    message = _problem(path)
    assert "over the 1,000-byte limit for one file (MAX_FILE_BYTES)" in message and str(path) in message


def test_a_line_over_the_record_cap_is_named_with_its_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(medalloc_io, "MAX_LINE_BYTES", 100)
    path = tmp_path / "long.csv"
    path.write_text(GOOD + "2024-01-03,ICU," + "9" * 200 + ",1\n")
    message = _problem(path)
    assert "row 4" in message and "over the 100-byte limit for one record (MAX_LINE_BYTES)" in message


def test_validate_exits_2_on_a_wide_file(tmp_path: Path) -> None:
    path = tmp_path / "wide.csv"
    path.write_text(",".join(f"c{i}" for i in range(5_000)) + "\n" + ",".join("1" for _ in range(5_000)) + "\n")
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "MAX_COLUMNS" in result.output and "Traceback" not in result.output
