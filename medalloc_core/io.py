"""Read a hospital's table, CSV or Parquet detected from the bytes, as strings, without touching the file."""

from __future__ import annotations

import csv
import io
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from medalloc_core.contract import DataContractError, Problem
from medalloc_core.paths import FileTooLarge, NotRegularFile, read_regular_bytes

logger = logging.getLogger(__name__)

PARQUET_MAGIC = b"PAR1"
UTF8_BOM = b"\xef\xbb\xbf"
# Formats people export by mistake; naming them turns "garbage" into a fix.
_KNOWN_BINARY_MAGIC: dict[bytes, str] = {
    b"PK\x03\x04": "a ZIP archive (an Excel .xlsx workbook is one): export the sheet as CSV",
    b"\xd0\xcf\x11\xe0": "an old Excel/Office document: export the sheet as CSV",
    b"\x1f\x8b": "a gzip archive: decompress it first",
    b"%PDF": "a PDF document, not a table",
    b"SQLite format 3": "a SQLite database: export the table as CSV",
    b"\xff\xfe": "UTF-16 text (Excel's 'Unicode Text'), not UTF-8: re-export as 'CSV UTF-8'",
    b"\xfe\xff": "UTF-16 text, not UTF-8: re-export as 'CSV UTF-8'",
}
_BINARY_SNIFF_BYTES = 8192
_RAGGED_SHOWN = 50  # rows with the wrong number of fields listed before giving up
# Resource bounds on a file a node reads (docs/data.md, "Limits"). Reading takes about 11x
# the file's size in memory, so 256 MiB is about 3 GB at the peak; ten years of encounters
# of a large hospital (a million stays of ~100 bytes) is 100 MB.
MAX_FILE_BYTES = 256 * 2**20
MAX_COLUMNS = 1_000  # the contract has at most a dozen columns; exports with many extras still fit
MAX_LINE_BYTES = 1 * 2**20  # one record; a longer line is not a record of this contract


def read_table(path: Path, *, allow_empty: bool = False) -> pd.DataFrame:
    """Read a CSV or Parquet table with every column as string.

    The format is decided from the file's bytes (Parquet starts and ends with ``PAR1``),
    never from its name, so a Parquet file called ``.csv`` still reads. The file is opened
    read-only and never written.

    Parameters
    ----------
    path
        The file to read.
    allow_empty : bool (default: False)
        Return a header without records as an empty table instead of refusing it (a node's
        encounter file with no stay is zero stays).

    Returns
    -------
    pd.DataFrame
        The raw table: column names stripped of surrounding whitespace, every value a
        string (empty cells are missing), extra columns kept. Fully blank CSV lines are
        dropped but the index keeps each record's position, so a record's spreadsheet row
        is ``index + 2`` (header = row 1), also after blank lines.
        ``frame.attrs["format"]`` says what was detected: ``"csv"`` or ``"parquet"``.

    Raises
    ------
    DataContractError
        If the path does not exist or is not a file, the file is empty (or, unless
        ``allow_empty``, has a header without records), is not UTF-8 text
        (the byte offset and row are named; UTF-16 is named with or without a BOM), holds
        a NUL byte anywhere, is some other binary format, repeats a column name, or cannot
        be parsed as CSV/Parquet.
    """
    name = str(path)
    path = Path(path)
    try:
        # What the path is is checked before it is opened (a FIFO never blocks, a device never
        # streams); the size limit counts the bytes actually read, not st_size (0 for a device).
        data = read_regular_bytes(path, limit=MAX_FILE_BYTES, what="a .csv or .parquet file")
    except FileNotFoundError:
        raise DataContractError([Problem(name, "no such file")]) from None
    except NotRegularFile as exc:
        raise DataContractError([Problem(name, exc.strerror or str(exc))]) from None
    except FileTooLarge:
        raise DataContractError(
            [
                Problem(
                    name,
                    f"is over the {MAX_FILE_BYTES:,}-byte limit for one file (MAX_FILE_BYTES); "
                    "split it by year or aggregate encounters to daily unit records (docs/data.md, Limits)",
                )
            ]
        ) from None
    except OSError as exc:
        raise DataContractError([Problem(name, f"cannot be read: {exc.strerror or exc}")]) from None
    if not data.removeprefix(UTF8_BOM).strip():
        raise DataContractError([Problem(name, "file is empty; expected a header row and at least one record")])
    file_format = "parquet" if data[:4] == PARQUET_MAGIC else "csv"
    frame = _read_parquet(name, data) if file_format == "parquet" else _read_csv(name, data)
    frame.attrs["format"] = file_format
    frame.columns = [str(c).strip() for c in frame.columns]
    if frame.empty and not allow_empty:  # a node's encounter file may hold no stay (allow_empty): zero counts
        raise DataContractError([Problem(name, "file has a header but no records; expected at least one record")])
    logger.debug("read %s: %d rows, columns %s", name, len(frame), list(frame.columns))
    return frame


def _read_parquet(name: str, data: bytes) -> pd.DataFrame:
    if data[-4:] != PARQUET_MAGIC:
        raise DataContractError(
            [Problem(name, "starts like Parquet but is truncated or corrupt (no PAR1 footer); re-export it")]
        )
    try:
        # Repeated column names make pyarrow fail with an internal dump: name them as for CSV.
        schema_names = pq.read_schema(io.BytesIO(data)).names
        if len(schema_names) > MAX_COLUMNS:
            raise _too_many_columns(name, len(schema_names))
        repeated = _repeated(schema_names)
        table = None if repeated else pq.read_table(io.BytesIO(data))
        if table is not None:
            # A damaged file can hold string columns that are not UTF-8; pyarrow reads them
            # unchecked and fails later, deep inside pandas. Check every value here instead.
            table.validate(full=True)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DataContractError([Problem(name, f"Parquet file could not be read ({exc}); re-export it")]) from None
    if table is None:
        raise DataContractError(_repeated_problems(name, repeated))
    columns: dict[str, pa.ChunkedArray] = {}
    for column_name, column in zip(table.column_names, table.columns):
        if pa.types.is_timestamp(column.type) and column.type.tz is not None:
            # Hospital days are local days: keep the wall-clock time the stay was recorded in.
            try:
                column = pc.local_timestamp(column)
            except (pa.ArrowException, ValueError):
                raise DataContractError(
                    [
                        Problem(
                            name,
                            f"has time zone {column.type.tz!r}, which is not a known zone; "
                            "expected timestamps without a time zone or with an IANA zone such as 'Europe/London'",
                            column=column_name,
                        )
                    ]
                ) from None
        try:
            as_text = pc.cast(column, pa.string())
        except (pa.ArrowException, ValueError):
            raise DataContractError(
                [
                    Problem(
                        name,
                        f"has type {column.type}, which cannot be read as text; expected plain values",
                        column=column_name,
                    )
                ]
            ) from None
        columns[column_name] = as_text
    return pa.table(columns).to_pandas()


def _read_csv(name: str, data: bytes) -> pd.DataFrame:
    head = data[:_BINARY_SNIFF_BYTES]
    for magic, what in _KNOWN_BINARY_MAGIC.items():
        if head.startswith(magic):
            raise DataContractError([Problem(name, f"is {what}; expected a CSV or Parquet file")])
    if _looks_utf16(head):
        raise DataContractError(
            [
                Problem(
                    name,
                    "is UTF-16 text without a byte-order mark, not UTF-8: re-export as 'CSV UTF-8'; "
                    "expected a CSV or Parquet file",
                )
            ]
        )
    # Text never holds a NUL byte: anywhere in the file, not only in the sniffed head, it
    # means binary data or a corrupt export (and would otherwise end up inside a value).
    offset = data.find(b"\x00")
    if offset >= 0:
        message = (
            f"looks like binary data (byte 0x00 at offset {offset}), not CSV or Parquet; "
            "expected UTF-8 CSV text or Parquet"
        )
        raise DataContractError([Problem(name, message, row=_text_row(data, offset))])
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        row = data.count(b"\n", 0, exc.start) + 1
        raise DataContractError(
            [
                Problem(
                    name,
                    f"not UTF-8 text: byte 0x{data[exc.start]:02x} at byte offset {exc.start} cannot be decoded; "
                    "re-export the file as UTF-8 CSV",
                    row=row,
                )
            ]
        ) from None
    longest, row = _longest_line(data)
    if longest > MAX_LINE_BYTES:
        raise DataContractError(
            [
                Problem(
                    name,
                    f"has a line of {longest:,} bytes, over the {MAX_LINE_BYTES:,}-byte limit for one record "
                    "(MAX_LINE_BYTES); expected one record per line (docs/data.md, Limits)",
                    row=row,
                )
            ]
        )
    return _parse_csv(name, text, data.removeprefix(UTF8_BOM))


def _repeated(names: list[str]) -> list[str]:
    """Column names that occur more than once (after stripping whitespace); one pass, linear."""
    counts = Counter(str(n).strip() for n in names)
    return sorted(n for n, k in counts.items() if k > 1)


def _too_many_columns(name: str, count: int) -> DataContractError:
    return DataContractError(
        [
            Problem(
                name,
                f"has {count:,} columns, over the limit of {MAX_COLUMNS:,} (MAX_COLUMNS); expected the contract's "
                "columns and a few extra (docs/data.md, Limits)",
                row=1,
            )
        ]
    )


def _longest_line(data: bytes) -> tuple[int, int]:
    """(length, 1-based row) of the longest line of ``data``; numpy over the bytes, linear."""
    ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 0x0A)
    bounds = np.concatenate(([-1], ends, [len(data)]))
    lengths = np.diff(bounds) - 1
    row = int(np.argmax(lengths))
    return int(lengths[row]), row + 1


def _repeated_problems(name: str, repeated: list[str]) -> list[Problem]:
    return [
        Problem(
            name, f"column '{n}' appears more than once in the header; expected unique column names", row=1, column=n
        )
        for n in repeated
    ]


def _text_row(data: bytes, offset: int) -> int | None:
    """The row holding ``offset`` when everything before it is UTF-8 text; None for binary data,
    where rows mean nothing."""
    try:
        data[:offset].decode("utf-8")
    except UnicodeDecodeError:
        return None
    return data.count(b"\n", 0, offset) + 1 if offset else None


def _looks_utf16(head: bytes) -> bool:
    """UTF-16 without a BOM: mostly-ASCII text puts a NUL in (nearly) every other byte, and only there."""
    if len(head) < 4:
        return False
    for nul_side, other in ((head[1::2], head[0::2]), (head[0::2], head[1::2])):
        if nul_side.count(0) >= 0.6 * len(nul_side) and other.count(0) <= 0.05 * len(other):
            return True
    return False


def _parse_csv(name: str, text: str, body: bytes) -> pd.DataFrame:
    """Parse CSV text with pyarrow (all columns as strings), keeping each record's row position."""
    header = next(csv.reader(io.StringIO(text)), [])
    if len(header) > MAX_COLUMNS:
        raise _too_many_columns(name, len(header))
    names = [column.strip() or f"unnamed_{i + 1}" for i, column in enumerate(header)]
    repeated = _repeated(names)
    if repeated:
        raise DataContractError(_repeated_problems(name, repeated))
    skipped: list[int] = []
    ragged: list[Problem] = []

    def on_invalid_row(row: pacsv.InvalidRow) -> str:
        skipped.append(row.number)
        if row.text.strip():
            ragged.append(
                Problem(
                    name,
                    f"has {row.actual_columns} fields; expected {row.expected_columns}, one per header column",
                    row=row.number,
                )
            )
        return "skip"

    try:
        table = pacsv.read_csv(
            io.BytesIO(body),
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=1, use_threads=False),
            parse_options=pacsv.ParseOptions(
                ignore_empty_lines=False, newlines_in_values=True, invalid_row_handler=on_invalid_row
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names}, strings_can_be_null=True, null_values=[""]
            ),
        )
    except (pa.ArrowException, ValueError) as exc:
        if len(text.strip().splitlines()) <= 1:
            # A header cut short without its line end: pyarrow cannot skip it and says so cryptically.
            raise DataContractError(
                [Problem(name, "file has a header but no records; expected at least one record")]
            ) from None
        raise DataContractError(
            [Problem(name, f"cannot be parsed as CSV ({exc}); expected comma-separated text")]
        ) from None
    if ragged:
        raise DataContractError(ragged[:_RAGGED_SHOWN])
    frame = table.to_pandas()
    if skipped:
        # Whitespace-only lines were skipped: keep the other records at their spreadsheet rows.
        rows = np.setdiff1d(np.arange(2, 2 + len(frame) + len(skipped)), skipped)
        frame.index = pd.Index(rows - 2)
    blank = frame.isna().all(axis=1)
    return frame.loc[~blank]
