"""Seeded mutations that turn valid hospital files into malformed ones, each with what validation must say.

Valid daily and encounter files (CSV and Parquet) come from the synthetic generator; a
mutation class (``truncated``, ``bad_date``, ...) breaks one in a known way and returns a
:class:`Mutant`: the bytes to write and the :class:`Expect` -ation an independent reading
of docs/data.md gives (must the file fail, and which row, column and words must an error
name). A few mutations can leave a file valid by accident (a CSV cut exactly at a line
end, a Parquet byte flip inside metadata nobody reads); those are classified by an
oracle that does not call the validator, never by loosening the check for everyone.
"""

from __future__ import annotations

import csv
import gzip
import io
import random
import re
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from functools import cache
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from medalloc_core import contract as c
from medalloc_core.synthetic import RegionConfig, generate_region, write_region

FORMATS: tuple[str, ...] = ("csv", "parquet")
KINDS: tuple[c.RecordShape, ...] = ("daily", "encounters")
# The contract's date pattern and bound, restated from docs/data.md so the oracles do not
# depend on the validator they judge.
_ISO = re.compile(r"\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?")
_MAX_COUNT = 100_000


@dataclass(frozen=True)
class Expect:
    """What validating a mutant must give.

    ``valid`` is True (must pass, exit 0), False (must fail, exit 2) or None (the oracle
    cannot tell, e.g. a Parquet flip that changes a value: the outcome may be either, but
    the library and the CLI must agree). For a failing file, some error must name ``row``
    and ``column`` (when not None) and contain one of ``keywords`` (when any).
    """

    valid: bool | None = False
    row: int | None = None
    column: str | None = None
    keywords: tuple[str, ...] = ()


@dataclass(frozen=True)
class Mutant:
    """One malformed (or accidentally valid) file and what validating it must give."""

    mutation: str
    kind: str  # the base file: "daily" or "encounters"
    fmt: str  # the base format: "csv" or "parquet"
    detail: str  # what exactly was done, for failure reports
    data: bytes
    expect: Expect

    @property
    def suffix(self) -> str:
        return f".{self.fmt}"


@dataclass(frozen=True)
class Base:
    """A valid file in both formats, its rows as text and its typed Parquet table."""

    kind: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    csv: bytes
    parquet: bytes
    table: pa.Table


@cache
def bases(seed: int = 7) -> dict[str, Base]:
    """One small generated hospital as daily and as encounter files (4 units, 28 days), both formats."""
    out: dict[str, Base] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in KINDS:
            config = RegionConfig(
                hospitals=1, days=28, seed=seed, shape=kind, min_beds=150, max_beds=200, warmup_days=30
            )
            region = generate_region(config)
            data = {}
            for fmt in FORMATS:
                path = write_region(region, Path(tmp) / f"{kind}-{fmt}", shape=kind, fmt=fmt)[0]
                data[fmt] = path.read_bytes()
            reader = csv.reader(io.StringIO(data["csv"].decode("utf-8")))
            header, *rows = list(reader)
            table = pq.read_table(io.BytesIO(data["parquet"]))
            out[kind] = Base(kind, tuple(header), tuple(map(tuple, rows)), data["csv"], data["parquet"], table)
    return out


# ----------------------------------------------------------------------------- editing


@dataclass
class _Edit:
    """A working copy of a base: rows as text, each remembering its base row for Parquet."""

    base: Base
    header: list[str]
    rows: list[list[str]]
    source: list[int]
    changed: set[str] = field(default_factory=set)  # columns whose text replaces the typed base column
    typed: dict[str, pa.Array] = field(default_factory=dict)  # Parquet-only replacement columns

    @classmethod
    def of(cls, base: Base) -> _Edit:
        return cls(base, list(base.header), [list(r) for r in base.rows], list(range(len(base.rows))))

    def set(self, index: int, column: str, value: str) -> None:
        self.rows[index][self.header.index(column)] = value
        self.changed.add(column)

    def get(self, index: int, column: str) -> str:
        return self.rows[index][self.header.index(column)]

    def drop_columns(self, columns: list[str]) -> None:
        keep = [i for i, name in enumerate(self.header) if name not in columns]
        self.header = [self.header[i] for i in keep]
        self.rows = [[row[i] for i in keep] for row in self.rows]

    def to_bytes(self, fmt: str) -> bytes:
        if fmt == "csv":
            text = io.StringIO()
            writer = csv.writer(text, lineterminator="\n")
            writer.writerow(self.header)
            writer.writerows(self.rows)
            return text.getvalue().encode("utf-8")
        columns = []  # a list, not a dict: a mutant may repeat a column name
        for i, name in enumerate(self.header):
            if name in self.typed:
                columns.append(self.typed[name])
            elif name in self.changed or name not in self.base.table.column_names:
                columns.append(pa.array([row[i] or None for row in self.rows], pa.string()))
            else:
                columns.append(self.base.table.column(name).take(pa.array(self.source, pa.int64())))
        return _parquet_bytes(pa.Table.from_arrays(columns, names=self.header))


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def _row(index: int) -> int:
    """Spreadsheet row of record ``index`` (header = row 1)."""
    return index + 2


def _pick_row(edit: _Edit, rnd: random.Random) -> int:
    return rnd.randrange(len(edit.rows))


# ----------------------------------------------------------------------------- mutations


def truncated(base: Base, fmt: str, rnd: random.Random) -> Mutant:
    """Cut the file at a random byte; a CSV cut can leave a valid file (see :func:`truncation_oracle`)."""
    data = base.csv if fmt == "csv" else base.parquet
    cut = rnd.randrange(len(data))
    if fmt == "csv":
        expect = truncation_oracle(base, data[:cut])
    elif cut < len(b"PAR1"):  # "PAR" is not yet Parquet: it reads as a CSV header without records
        expect = Expect(False, keywords=("empty", "no records"))
    else:
        expect = Expect(False, keywords=("truncated",))
    return Mutant("truncated", base.kind, fmt, f"cut at byte {cut} of {len(data)}", data[:cut], expect)


def truncation_oracle(base: Base, data: bytes) -> Expect:
    """Is a prefix of a valid CSV still valid?

    Only when it ends at a record boundary or inside a last field that stays valid.
    """
    if not data.strip():
        return Expect(False, keywords=("empty",))
    lines = data.split(b"\n")
    if len(lines) == 1 or (len(lines) == 2 and not lines[1]):
        return Expect(False, keywords=("no records", "missing required column", "no count column"))
    complete, partial = lines[1:-1], lines[-1].decode("utf-8")
    if not partial:
        return Expect(True)  # cut at a line end: the first records of a valid file
    fields = next(csv.reader([partial]))
    row = _row(len(complete))
    if len(fields) != len(base.header):
        return Expect(False, row=row, keywords=("fields; expected",))
    last_column, last = base.header[-1], fields[-1].strip()
    if base.kind == "daily":  # the cut left a prefix of the capacity: digits, or nothing
        return Expect(True) if last else Expect(False, row=row, column=last_column, keywords=("empty",))
    if not last:
        return Expect(True)  # an empty discharge_time is an open stay
    if not _ISO.fullmatch(last):
        return Expect(False, row=row, column=last_column, keywords=("not a valid date",))
    admit = datetime.fromisoformat(fields[base.header.index(c.ADMIT_TIME)].strip())
    if datetime.fromisoformat(last) < admit:
        return Expect(False, row=row, column=last_column, keywords=("before admission",))
    return Expect(True)


_WRONG_TYPES = ("abc", "1.5", "0.25", "true", "FALSE", "12 beds", "1,5", "0x10", "½", "NaN", "n/a", "--", "3e-1", " ")


def wrong_type(base: Base, fmt: str, rnd: random.Random) -> Mutant:
    """Text, fractions, booleans or blanks in a count column (encounters: an id or unit left empty)."""
    edit = _Edit.of(base)
    if base.kind == "encounters":
        column = rnd.choice([c.ENCOUNTER_ID, c.PATIENT_ID, c.UNIT])
        i = _pick_row(edit, rnd)
        edit.set(i, column, rnd.choice(["", "  "]))
        return Mutant(
            "wrong_type",
            base.kind,
            fmt,
            f"{column} row {_row(i)} emptied",
            edit.to_bytes(fmt),
            Expect(False, _row(i), column, ("empty",)),
        )
    column = rnd.choice(c.COUNT_COLUMNS)
    if fmt == "parquet" and rnd.random() < 0.4:
        # A whole column of the wrong Parquet type: every row is wrong, so row 2 is named.
        kind = rnd.choice(["float", "bool"])
        n = len(edit.rows)
        edit.typed[column] = (
            pa.array([i + 0.5 for i in range(n)]) if kind == "float" else pa.array([i % 2 == 0 for i in range(n)])
        )
        keyword = "not a whole number" if kind == "float" else "not a number"
        return Mutant(
            "wrong_type",
            base.kind,
            fmt,
            f"{column} as a {kind} column",
            edit.to_bytes(fmt),
            Expect(False, 2, column, (keyword,)),
        )
    i = _pick_row(edit, rnd)
    value = rnd.choice(_WRONG_TYPES)
    edit.set(i, column, value)
    return Mutant(
        "wrong_type",
        base.kind,
        fmt,
        f"{column} row {_row(i)} = {value!r}",
        edit.to_bytes(fmt),
        Expect(False, _row(i), column, ("not a number", "not a whole number", "empty")),
    )


_BAD_DATES = (
    "2023-02-30",
    "2023-02-29",
    "2023-13-01",
    "yesterday",
    "31/12/2023",
    "12/31/2023",
    "2023-1-5",
    "20230105",
    "2023-01-05T25:00",
    "2023-01-05 10:00+01:00",
    "2023-01-05Z",
    "0000-00-00",
    "",
    "  ",
    "2023-01-05 10:61",
    "１２３４-01-01",
    "2023–01–05",
    "9999-12-31",
    "0001-01-01",
    "2262-04-12 00:00",
)


def bad_date(base: Base, fmt: str, rnd: random.Random) -> Mutant:
    """An impossible, non-ISO, zoned or empty date (encounters: admit_time, or discharge_time when not empty)."""
    edit = _Edit.of(base)
    if base.kind == "daily":
        column = c.DATE
    else:
        column = rnd.choice([c.ADMIT_TIME, c.DISCHARGE_TIME])
    choices = [d for d in _BAD_DATES if column != c.DISCHARGE_TIME or d.strip()]
    if fmt == "parquet" and base.kind == "encounters" and rnd.random() < 0.25:
        # Epoch seconds stored as integers: a number, not a date.
        edit.typed[column] = pa.array([1_672_531_200 + 3600 * i for i in range(len(edit.rows))], pa.int64())
        return Mutant(
            "bad_date",
            base.kind,
            fmt,
            f"{column} as epoch integers",
            edit.to_bytes(fmt),
            Expect(False, 2, column, ("not a valid date",)),
        )
    i = _pick_row(edit, rnd)
    value = rnd.choice(choices)
    edit.set(i, column, value)
    keywords = ("empty",) if not value.strip() else ("not a valid date", "outside the dates")
    return Mutant(
        "bad_date",
        base.kind,
        fmt,
        f"{column} row {_row(i)} = {value!r}",
        edit.to_bytes(fmt),
        Expect(False, _row(i), column, keywords),
    )


_HUGE = (
    "1e30",
    str(2**70),
    "99999999999999999999",
    "100001",
    "1e400",
    "inf",
    "Infinity",
    "1E+300",
    str(2**63),
    str(2**64 + 1),
    "9" * 400,
)


def huge_number(base: Base, fmt: str, rnd: random.Random) -> Mutant:
    """A count beyond the contract's 100,000: exponents, 2**70, overflowing int64, infinity."""
    edit = _Edit.of(base)
    column = rnd.choice(c.COUNT_COLUMNS)
    i = _pick_row(edit, rnd)
    if fmt == "parquet" and rnd.random() < 0.4:
        kind = rnd.choice(["float64", "decimal128", "uint64", "int64"])
        values = [int(v) for v in edit.base.table.column(column).to_pylist()]
        big = {"float64": 1e30, "decimal128": Decimal(2**70), "uint64": 2**64 - 1, "int64": 2**63 - 1}[kind]
        arrays = {
            "float64": lambda: pa.array([float(v) for v in values[:i]] + [big] + [float(v) for v in values[i + 1 :]]),
            "decimal128": lambda: pa.array(
                [Decimal(v) for v in values[:i]] + [big] + [Decimal(v) for v in values[i + 1 :]], pa.decimal128(38, 0)
            ),
            "uint64": lambda: pa.array(values[:i] + [big] + values[i + 1 :], pa.uint64()),
            "int64": lambda: pa.array(values[:i] + [big] + values[i + 1 :], pa.int64()),
        }
        edit.typed[column] = arrays[kind]()
        return Mutant(
            "huge_number",
            base.kind,
            fmt,
            f"{column} row {_row(i)} = {big} as {kind}",
            edit.to_bytes(fmt),
            Expect(False, _row(i), column, ("implausibly large",)),
        )
    value = rnd.choice(_HUGE)
    edit.set(i, column, value)
    return Mutant(
        "huge_number",
        base.kind,
        fmt,
        f"{column} row {_row(i)} = {value[:30]!r}",
        edit.to_bytes(fmt),
        Expect(False, _row(i), column, ("implausibly large",)),
    )


_NEGATIVE = ("-1", "-100", "-0.5", "-1e30", str(-(2**70)), "-inf", "-99999999999999999999", " -3 ")


def negative_count(base: Base, fmt: str, rnd: random.Random) -> Mutant:
    """A negative count, as text or as a Parquet int64."""
    edit = _Edit.of(base)
    column = rnd.choice(c.COUNT_COLUMNS)
    i = _pick_row(edit, rnd)
    if fmt == "parquet" and rnd.random() < 0.3:
        values = [int(v) for v in edit.base.table.column(column).to_pylist()]
        values[i] = -rnd.randint(1, 2**63 - 1)
        edit.typed[column] = pa.array(values, pa.int64())
        return Mutant(
            "negative_count",
            base.kind,
            fmt,
            f"{column} row {_row(i)} = {values[i]} as int64",
            edit.to_bytes(fmt),
            Expect(False, _row(i), column, ("negative",)),
        )
    value = rnd.choice(_NEGATIVE)
    edit.set(i, column, value)
    return Mutant(
        "negative_count",
        base.kind,
        fmt,
        f"{column} row {_row(i)} = {value!r}",
        edit.to_bytes(fmt),
        Expect(False, _row(i), column, ("negative",)),
    )


def duplicate_rows(base: Base, fmt: str, rnd: random.Random) -> Mutant:
    """Repeat a record later in the file, sometimes with different counts; the repeat's row must be named."""
    edit = _Edit.of(base)
    i = _pick_row(edit, rnd)
    j = rnd.randrange(i + 1, len(edit.rows) + 1)
    edit.rows.insert(j, list(edit.rows[i]))
    edit.source.insert(j, edit.source[i])
    if base.kind == "daily":
        if rnd.random() < 0.5:
            column = rnd.choice(c.COUNT_COLUMNS)
            edit.set(j, column, str(rnd.randint(0, 50)))
        expect = Expect(False, _row(j), c.DATE, ("duplicate (date, unit)", f"first at row {_row(i)}"))
    else:
        expect = Expect(False, _row(j), c.ENCOUNTER_ID, (f"first at row {_row(i)}",))
    return Mutant(
        "duplicate_rows", base.kind, fmt, f"row {_row(i)} repeated as row {_row(j)}", edit.to_bytes(fmt), expect
    )


def mixed_frequency(base: Base, fmt: str, rnd: random.Random) -> Mutant:
    """Daily and weekly rows in one file: one unit thinned to weekly, or weekly after up to two daily weeks."""
    edit = _Edit.of(base)
    date_at, unit_at = edit.header.index(c.DATE), edit.header.index(c.UNIT)
    unit = rnd.choice(sorted({row[unit_at] for row in edit.rows}))
    dates = sorted({row[date_at] for row in edit.rows})
    across = rnd.random() < 0.5
    if across:  # this unit weekly, the others daily
        kept = set(dates[rnd.randrange(7) :: 7])
        keyword = f"unit {unit} is weekly while other units are daily"
    else:  # daily for two weeks, then weekly
        start = rnd.randrange(2, 14)
        kept = set(dates[:start]) | set(dates[start + 6 :: 7])
        keyword = f"unit {unit} mixes daily and weekly rows"
    keep = [k for k, row in enumerate(edit.rows) if row[unit_at] != unit or row[date_at] in kept]
    edit.rows = [edit.rows[k] for k in keep]
    edit.source = [edit.source[k] for k in keep]
    how = "weekly unit among daily ones" if across else "daily then weekly"
    return Mutant(
        "mixed_frequency", base.kind, fmt, f"{unit}: {how}", edit.to_bytes(fmt), Expect(False, None, c.DATE, (keyword,))
    )


def binary_garbage(base: Base, fmt: str, rnd: random.Random) -> Mutant:
    """Random bytes (bare, after a PAR1 header, between PAR1 header and footer), the file
    zipped/gzipped, or a CSV with a NUL byte."""
    choice = rnd.choice(["random", "par1-head", "par1-both", "gzip", "zip", "nul-in-text"])
    size = rnd.randint(1, 4096)
    noise = rnd.randbytes(size)
    original = base.csv if fmt == "csv" else base.parquet
    if choice == "random":
        data = noise
    elif choice == "par1-head":
        data = b"PAR1" + noise
    elif choice == "par1-both":
        data = b"PAR1" + noise + b"PAR1"
    elif choice == "gzip":
        data = gzip.compress(original, mtime=0)
    elif choice == "zip":
        sink = io.BytesIO()
        with zipfile.ZipFile(sink, "w") as archive:
            archive.writestr(zipfile.ZipInfo("H000.csv", (2024, 1, 1, 0, 0, 0)), original)
        data = sink.getvalue()
    else:  # a text file with one NUL byte anywhere: still not text
        at = rnd.randrange(len(base.csv))
        data = base.csv[:at] + b"\x00" + base.csv[at:]
        fmt = "csv"
    return Mutant("binary_garbage", base.kind, fmt, f"{choice} ({len(data)} bytes)", data, Expect(False))


_FOREIGN_NAMES = (
    ("Réanimation", "latin-1"),
    ("Säuglinge", "latin-1"),
    ("Ward–3", "cp1252"),
    ("Ärzte", "cp1252"),
    ("Intensiv-Süd", "cp1252"),
    ("ICU ±", "latin-1"),
)


def wrong_encoding(base: Base, fmt: str, rnd: random.Random) -> Mutant:
    """A unit (or patient) name in latin-1/cp1252 bytes, or the whole file in UTF-16 with or
    without BOM (CSV only: Parquet strings are UTF-8 by definition)."""
    edit = _Edit.of(base)
    whole = rnd.random() < 0.3
    if whole:
        codec = rnd.choice(["utf-16", "utf-16-le", "utf-16-be"])
        data = base.csv.decode("utf-8").encode(codec)
        return Mutant(
            "wrong_encoding", base.kind, fmt, f"whole file as {codec}", data, Expect(False, keywords=("UTF-16",))
        )
    name, codec = rnd.choice(_FOREIGN_NAMES)
    column = c.UNIT if base.kind == "daily" else rnd.choice([c.UNIT, c.PATIENT_ID])
    i = _pick_row(edit, rnd)
    marker = "\x01MARK\x01"
    edit.set(i, column, marker)
    data = edit.to_bytes("csv").replace(marker.encode(), name.encode(codec))
    return Mutant(
        "wrong_encoding",
        base.kind,
        fmt,
        f"{column} row {_row(i)} = {name!r} in {codec}",
        data,
        Expect(False, _row(i), None, ("not UTF-8",)),
    )


def empty(base: Base, fmt: str, rnd: random.Random) -> Mutant:
    """Nothing, whitespace, a BOM, a header alone, or a Parquet file with zero rows."""
    header = ",".join(base.header).encode()
    if fmt == "parquet":
        choice = rnd.choice(["zero-rows", "zero-rows-no-columns", "nothing"])
        if choice == "zero-rows":
            data = _parquet_bytes(base.table.slice(0, 0))
        elif choice == "zero-rows-no-columns":
            data = _parquet_bytes(pa.table({}))
        else:
            data = b""
    else:
        choice = rnd.choice(["nothing", "newlines", "spaces", "bom", "header", "header+blank", "header+commas"])
        data = {
            "nothing": b"",
            "newlines": b"\n\n\r\n",
            "spaces": b"   \t \n  ",
            "bom": b"\xef\xbb\xbf",
            "header": header + b"\n",
            "header+blank": header + b"\n\n\n   \n",
            "header+commas": header + b"\n" + b"," * (len(base.header) - 1) + b"\n",
        }[choice]
    return Mutant(
        "empty", base.kind, fmt, choice, data, Expect(False, keywords=("empty", "no records", "no count column"))
    )


def missing_column(base: Base, fmt: str, rnd: random.Random) -> Mutant:
    """Drop a required column (daily: date, unit or every count; encounters: any of the five)."""
    edit = _Edit.of(base)
    if base.kind == "daily":
        drop = rnd.choice([[c.DATE], [c.UNIT], list(c.COUNT_COLUMNS), [c.DATE, c.UNIT]])
    else:
        drop = [rnd.choice(c.ENCOUNTER_COLUMNS)]
    edit.drop_columns(drop)
    if drop == list(c.COUNT_COLUMNS):
        expect = Expect(False, 1, None, ("no count column",))
    else:
        expect = Expect(False, 1, drop[0], (f"missing required column '{drop[0]}'",))
    return Mutant("missing_column", base.kind, fmt, f"dropped {', '.join(drop)}", edit.to_bytes(fmt), expect)


def duplicate_column(base: Base, fmt: str, rnd: random.Random) -> Mutant:
    """Two columns with one name: a column renamed to another's name, with or without surrounding spaces."""
    edit = _Edit.of(base)
    target, renamed = rnd.sample(range(len(edit.header)), 2)
    name = edit.header[target]
    spelled = rnd.choice([name, f" {name}", f"{name} "])
    edit.header[renamed] = spelled  # Parquet: an exact repeat copies the column, a spaced one holds text
    return Mutant(
        "duplicate_column",
        base.kind,
        fmt,
        f"column {renamed + 1} renamed {spelled!r}",
        edit.to_bytes(fmt),
        Expect(False, 1, name, ("appears more than once",)),
    )


def discharge_before_admit(base: Base, fmt: str, rnd: random.Random) -> Mutant:
    """A stay discharged 1 minute to 3 days before its admission."""
    edit = _Edit.of(base)
    i = _closed_stay(edit, rnd)
    admit = datetime.fromisoformat(edit.get(i, c.ADMIT_TIME))
    minutes = rnd.randint(1, 3 * 24 * 60)
    discharge = admit - timedelta(minutes=minutes)
    edit.set(i, c.DISCHARGE_TIME, f"{discharge:%Y-%m-%d %H:%M:%S}")
    return Mutant(
        "discharge_before_admit",
        base.kind,
        fmt,
        f"row {_row(i)} discharged {minutes} min before admission",
        edit.to_bytes(fmt),
        Expect(False, _row(i), c.DISCHARGE_TIME, ("before admission",)),
    )


def ragged_rows(base: Base, fmt: str, rnd: random.Random) -> Mutant:
    """A record with a field too many or too few (an unquoted comma, a lost cell)."""
    edit = _Edit.of(base)
    i = _pick_row(edit, rnd)
    if rnd.random() < 0.5:
        edit.rows[i].insert(rnd.randrange(len(edit.rows[i]) + 1), "x")
    else:
        del edit.rows[i][rnd.randrange(len(edit.rows[i]))]
    return Mutant(
        "ragged_rows",
        base.kind,
        fmt,
        f"row {_row(i)} has {len(edit.rows[i])} fields",
        edit.to_bytes("csv"),
        Expect(False, _row(i), None, ("fields; expected",)),
    )


def parquet_types(base: Base, fmt: str, rnd: random.Random) -> Mutant:
    """A required Parquet column of a type that is no plain value: list, struct, non-UTF-8
    binary, null, time of day, unknown time zone."""
    edit = _Edit.of(base)
    required = (
        [c.DATE, c.UNIT, *c.COUNT_COLUMNS]
        if base.kind == "daily"
        else [c.ENCOUNTER_ID, c.PATIENT_ID, c.UNIT, c.ADMIT_TIME]
    )
    column = rnd.choice(required)
    kinds = ["list", "struct", "binary", "null", "unknown-zone"] + (
        ["time"] if column != c.UNIT and base.kind == "daily" else []
    )
    kind = rnd.choice(kinds)
    n = len(edit.rows)
    text = [edit.get(i, column) for i in range(n)]
    arrays = {
        "list": lambda: pa.array([[v] for v in text]),
        "struct": lambda: pa.array([{"value": v} for v in text]),
        "binary": lambda: pa.array([b"\xff" + v.encode() for v in text], pa.binary()),
        "null": lambda: pa.nulls(n),
        "time": lambda: pa.array([60 * i for i in range(n)], pa.time32("s")),
        "unknown-zone": lambda: pa.array([86_400 * i for i in range(n)], pa.timestamp("s", tz="Mars/Olympus_Mons")),
    }
    edit.typed[column] = arrays[kind]()
    keywords = {"null": ("empty",), "time": ("not a valid date", "not a number"), "unknown-zone": ("not a known zone",)}
    return Mutant(
        "parquet_types",
        base.kind,
        fmt,
        f"{column} as {kind}",
        edit.to_bytes(fmt),
        Expect(False, None, column, keywords.get(kind, ("cannot be read as text",))),
    )


def parquet_byte_flip(base: Base, fmt: str, rnd: random.Random) -> Mutant:
    """Flip 1-8 random bytes of the Parquet file; the oracle decides what must happen."""
    data = bytearray(base.parquet)
    positions = sorted(rnd.sample(range(len(data)), rnd.randint(1, 8)))
    for p in positions:
        data[p] ^= rnd.randint(1, 255)
    flipped = bytes(data)
    return Mutant(
        "parquet_byte_flip", base.kind, fmt, f"flipped bytes at {positions}", flipped, flip_oracle(base, flipped)
    )


def flip_oracle(base: Base, data: bytes) -> Expect:
    """Unreadable by pyarrow -> must fail; reads back the same table -> must pass; reads other values -> either."""
    if data[:4] != b"PAR1" or data[-4:] != b"PAR1":
        return Expect(False)
    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - any failure to read means the validator must fail too
        return Expect(False)
    try:
        same = table.equals(base.table)
    except Exception:  # noqa: BLE001 - incomparable schemas are simply different data
        same = False
    return Expect(True) if same else Expect(None)


def _closed_stay(edit: _Edit, rnd: random.Random) -> int:
    closed = [k for k in range(len(edit.rows)) if edit.get(k, c.DISCHARGE_TIME)]
    return rnd.choice(closed)


Mutator = Callable[[Base, str, random.Random], Mutant]
CSV_ONLY = ("csv",)

#: Every mutation class by name, in the order reports list them, with the bases (kind and
#: format) it applies to: counts exist only in daily files, times only in stays; a wrong
#: text encoding or a ragged row only in CSV, a byte flip is the Parquet analogue.
MUTATIONS: dict[str, tuple[Mutator, tuple[str, ...], tuple[str, ...]]] = {
    "truncated": (truncated, KINDS, FORMATS),
    "wrong_type": (wrong_type, KINDS, FORMATS),
    "bad_date": (bad_date, KINDS, FORMATS),
    "huge_number": (huge_number, ("daily",), FORMATS),
    "negative_count": (negative_count, ("daily",), FORMATS),
    "duplicate_rows": (duplicate_rows, KINDS, FORMATS),
    "mixed_frequency": (mixed_frequency, ("daily",), FORMATS),
    "binary_garbage": (binary_garbage, KINDS, FORMATS),
    "wrong_encoding": (wrong_encoding, KINDS, CSV_ONLY),
    "empty": (empty, KINDS, FORMATS),
    "duplicate_column": (duplicate_column, KINDS, FORMATS),
    "missing_column": (missing_column, KINDS, FORMATS),
    "discharge_before_admit": (discharge_before_admit, ("encounters",), FORMATS),
    "ragged_rows": (ragged_rows, KINDS, CSV_ONLY),
    "parquet_types": (parquet_types, KINDS, ("parquet",)),
    "parquet_byte_flip": (parquet_byte_flip, KINDS, ("parquet",)),
}


def mutate(mutation: str, rnd: random.Random) -> Mutant:
    """Apply one mutation class to a base (daily or encounters, CSV or Parquet, as the class
    allows) that ``rnd`` picks."""
    mutator, kinds, formats = MUTATIONS[mutation]
    kind, fmt = rnd.choice(kinds), rnd.choice(formats)
    return mutator(bases()[kind], fmt, rnd)
