"""read_table: format from the bytes, strings only, row positions kept, unreadable files named precisely."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medalloc_core.contract import DataContractError
from medalloc_core.io import read_table

DAILY_CSV = "date,unit,admissions,census,note\n2024-01-01,ICU,3,10,first\n2024-01-02,ICU,1,,\n"


def write_parquet(path: Path) -> None:
    table = pa.table(
        {
            "date": pa.array([dt.date(2024, 1, 1), dt.date(2024, 1, 2)]),
            "unit": ["ICU", "ICU"],
            "admissions": pa.array([3, None], pa.int64()),
            "census": pa.array([10.0, 11.0]),
            "seen": pa.array([dt.datetime(2024, 1, 1, 23, 0), dt.datetime(2024, 1, 2, 1, 30)]),
        }
    )
    pq.write_table(table, path)


def errors_of(path: Path) -> list[str]:
    with pytest.raises(DataContractError) as info:
        read_table(path)
    return [str(p) for p in info.value.problems]


def test_csv_is_read_as_strings_with_empty_cells_missing(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text(DAILY_CSV)
    frame = read_table(path)
    assert list(frame.columns) == ["date", "unit", "admissions", "census", "note"]
    assert frame.loc[0].tolist() == ["2024-01-01", "ICU", "3", "10", "first"]
    assert frame["census"].isna().tolist() == [False, True]
    assert all(pd.api.types.is_string_dtype(frame[c]) for c in frame.columns)


def test_parquet_is_detected_from_the_bytes_whatever_the_name(tmp_path: Path) -> None:
    path = tmp_path / "looks_like.csv"
    write_parquet(path)
    frame = read_table(path)
    assert frame.attrs["format"] == "parquet"
    assert frame["date"].tolist() == ["2024-01-01", "2024-01-02"]
    assert frame["admissions"].tolist()[0] == "3" and frame["admissions"].isna().tolist() == [False, True]
    assert frame["census"].tolist() == ["10", "11"]
    assert frame["seen"].tolist()[1].startswith("2024-01-02 01:30:00")


def test_csv_named_parquet_is_read_as_csv(tmp_path: Path) -> None:
    path = tmp_path / "looks_like.parquet"
    path.write_text(DAILY_CSV)
    frame = read_table(path)
    assert frame.attrs["format"] == "csv" and frame["unit"].tolist() == ["ICU", "ICU"]


def test_timezone_aware_parquet_times_keep_their_local_wall_clock(tmp_path: Path) -> None:
    path = tmp_path / "tz.parquet"
    paris = pa.array([dt.datetime(2024, 1, 1, 23, 30)], pa.timestamp("us")).cast(pa.timestamp("us", tz="UTC"))
    pq.write_table(pa.table({"t": paris.cast(pa.timestamp("us", tz="Europe/Paris"))}), path)
    # 23:30 UTC is 00:30 the next day in Paris: the hospital's day is the local one.
    assert read_table(path)["t"].tolist()[0].startswith("2024-01-02 00:30")


def test_blank_lines_are_dropped_but_rows_keep_their_spreadsheet_position(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text("date,unit,census\n2024-01-01,ICU,1\n\n2024-01-03,ICU,3\n")
    frame = read_table(path)
    assert (frame.index + 2).tolist() == [2, 4]


def test_bom_and_header_whitespace_are_stripped(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_bytes("\ufeffdate , unit,census\n2024-01-01,ICU,1\n".encode())
    assert list(read_table(path).columns) == ["date", "unit", "census"]


def test_reading_does_not_modify_the_file(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text(DAILY_CSV)
    before = path.read_bytes()
    read_table(path)
    assert path.read_bytes() == before


def test_missing_path_and_directory(tmp_path: Path) -> None:
    assert errors_of(tmp_path / "nope.csv") == [f"error: {tmp_path / 'nope.csv'}: no such file"]
    assert "not a regular file" in errors_of(tmp_path)[0]


def test_empty_and_header_only_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    assert "file is empty" in errors_of(empty)[0]
    header = tmp_path / "header.csv"
    header.write_text("date,unit,census\n")
    assert "header but no records" in errors_of(header)[0]


def test_not_utf8_names_the_byte_offset_and_row(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("date,unit,census\n2024-01-01,ICU,1\n2024-01-02,Réa,2\n".encode("latin-1"))
    offset = len(b"date,unit,census\n2024-01-01,ICU,1\n2024-01-02,R")
    (message,) = errors_of(path)
    assert f"byte offset {offset}" in message and "row 3" in message and "0xe9" in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\x00\x01\x02\x89garbage\xff\xfe" * 10, "binary data"),
        (b"PK\x03\x04" + b"\x00" * 40, "Excel"),
        ("date,unit,census\n2024-01-01,ICU,1\n".encode("utf-16"), "UTF-16 text"),
        (b"PAR1" + b"\x13" * 40, "truncated or corrupt"),
        (b"PAR1" + b"\x13" * 40 + b"PAR1", "Parquet file could not be read"),
    ],
    ids=["nul-bytes", "xlsx", "utf-16", "parquet-no-footer", "parquet-corrupt"],
)
def test_binary_garbage_is_named_not_parsed(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "h.csv"
    path.write_bytes(content)
    assert expected in errors_of(path)[0]


def test_row_with_too_many_fields_names_the_row(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text("date,unit,census\n2024-01-01,ICU,1\n2024-01-02,ICU,2,7\n")
    (message,) = errors_of(path)
    assert "row 3" in message and "4 fields" in message


def test_every_row_with_the_wrong_number_of_fields_is_named(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text("date,unit,census\n2024-01-01,ICU\n2024-01-02,ICU,2\n2024-01-03,ICU,3,x,y\n")
    assert errors_of(path) == [
        f"error: {path}, row 2: has 2 fields; expected 3, one per header column",
        f"error: {path}, row 4: has 5 fields; expected 3, one per header column",
    ]


def test_whitespace_only_lines_count_as_rows(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text("date,unit,census\n   \n2024-01-02,ICU,2\n\n2024-01-04,ICU,4\n")
    frame = read_table(path)
    assert (frame.index + 2).tolist() == [3, 5]
    assert frame["census"].tolist() == ["2", "4"]


def test_quoted_values_may_hold_commas_and_newlines(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text('date,unit,census,note\n2024-01-01,"ICU, north",2,"two\nlines"\n')
    frame = read_table(path)
    assert frame.loc[0].tolist() == ["2024-01-01", "ICU, north", "2", "two\nlines"]


def test_a_repeated_header_name_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text("date,unit,census,census\n2024-01-01,ICU,2,3\n")
    assert errors_of(path) == [
        f"error: {path}, row 1, column 'census': column 'census' appears more than once in the header; "
        "expected unique column names"
    ]


def test_parquet_text_that_is_not_utf8_is_a_contract_error_not_a_crash(tmp_path: Path) -> None:
    """Found by the equipment fuzz class eq_parquet_byte_flip: a flipped byte inside a string column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "events.parquet"
    pq.write_table(pa.table({"device_id": ["IP-1", "IP-2"], "time": ["2024-01-01", "2024-01-02"]}), path)
    data = bytearray(path.read_bytes())
    at = data.find(b"IP-2")
    data[at + 1] = 0xFF  # 'I\xff-2': no longer UTF-8, same length, the file still parses
    path.write_bytes(bytes(data))
    with pytest.raises(DataContractError, match="Parquet file could not be read"):
        read_table(path)
