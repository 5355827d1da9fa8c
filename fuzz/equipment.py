"""Equipment files in the malformed-file campaign: a device inventory or an event log broken in a known way.

The bases are one small generated fleet (``devices`` and ``events``, CSV and Parquet). A
mutant replaces one of the two files of a fleet folder; the other stays valid, so the
cross-file rules (every event's device in the inventory, no event before commissioning) are
fuzzed too. What each class must produce is stated by an independent reading of
docs/equipment.md, as for the unit records (:mod:`fuzz.mutations`), whose generic
byte-level classes (garbage, empty files, repeated or ragged columns, Parquet byte flips) run
here on the equipment bases unchanged.
"""

from __future__ import annotations

import csv
import io
import random
import tempfile
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from medalloc_core.equipment import contract as ec
from medalloc_core.equipment.synthetic import FleetConfig, generate_fleets, write_fleets

from .mutations import (
    _BAD_DATES,
    FORMATS,
    Base,
    Expect,
    Mutant,
    _Edit,
    _pick_row,
    _row,
    binary_garbage,
    duplicate_column,
    empty,
    parquet_byte_flip,
    ragged_rows,
)

EQUIPMENT_KINDS: tuple[str, ...] = ("inventory", "events")
_STEM = {"inventory": ec.INVENTORY_STEM, "events": ec.EVENTS_STEM}


@cache
def equipment_bases(seed: int = 7) -> dict[str, Base]:
    """One small generated fleet (about 30 devices, 60 days) as inventory and event log, both formats."""
    config = FleetConfig(hospitals=1, days=60, seed=seed, device_scale=0.15, min_beds=200, max_beds=200, warmup_days=60)
    out: dict[str, Base] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in FORMATS:
            write_fleets(generate_fleets(config), Path(tmp) / fmt, fmt=fmt)
        for kind in EQUIPMENT_KINDS:
            data = {fmt: (Path(tmp) / fmt / "H000" / f"{_STEM[kind]}.{fmt}").read_bytes() for fmt in FORMATS}
            header, *rows = list(csv.reader(io.StringIO(data["csv"].decode("utf-8"))))
            table = pq.read_table(io.BytesIO(data["parquet"]))
            out[kind] = Base(kind, tuple(header), tuple(map(tuple, rows)), data["csv"], data["parquet"], table)
    return out


def partner(kind: str) -> str:
    """The other file of the fleet folder."""
    return "events" if kind == "inventory" else "inventory"


def file_name(kind: str, fmt: str) -> str:
    """The mutant's name inside its fleet folder."""
    return f"{_STEM[kind]}.{fmt}"


def _mutant(name: str, base: Base, fmt: str, detail: str, edit: _Edit, expect: Expect) -> Mutant:
    return Mutant(name, base.kind, fmt, detail, edit.to_bytes(fmt), expect)


def _install_dates() -> dict[str, str]:
    inventory = equipment_bases()["inventory"]
    at = inventory.header.index(ec.DEVICE_ID), inventory.header.index(ec.INSTALL_DATE)
    return {row[at[0]]: row[at[1]] for row in inventory.rows}


# ----------------------------------------------------------------------------- classes
def eq_truncated(base: Base, fmt: str, rnd: random.Random) -> Mutant:
    """Cut the file at a random byte: Parquet must fail ("truncated"); a CSV cut may leave a valid file
    (fewer events) or not (a cut value, a lost device), so library and CLI must only agree."""
    data = base.csv if fmt == "csv" else base.parquet
    cut = rnd.randrange(len(data))
    if fmt == "parquet":
        expect = Expect(False, keywords=("truncated", "empty", "no records"))
    elif not data[:cut].strip() or b"\n" not in data[:cut]:
        expect = Expect(False, keywords=("empty", "no records", "missing required column"))
    else:
        expect = Expect(None)
    return Mutant("eq_truncated", base.kind, fmt, f"cut at byte {cut} of {len(data)}", data[:cut], expect)


_BAD_KINDS = ("breakdown", "fail", "PM", "service", "repair/failure", "usage;error", "0", "failures", "u sage")


def eq_bad_event(base: Base, fmt: str, rnd: random.Random) -> Mutant:
    """An event kind outside the contract's five (or an empty one)."""
    edit = _Edit.of(base)
    i = _pick_row(edit, rnd)
    value = rnd.choice([*_BAD_KINDS, ""])
    edit.set(i, ec.EVENT, value)
    keywords = ("empty event",) if not value else ("is not an event kind",)
    return _mutant(
        "eq_bad_event", base, fmt, f"row {_row(i)} event {value!r}", edit, Expect(False, _row(i), ec.EVENT, keywords)
    )


_BAD_HOURS = ("abc", "-1", "-0.5", "25", "24.01", "1e30", "nan", "inf", "-inf", "1,5", "twelve", "", " ", "0x10")


def eq_bad_hours(base: Base, fmt: str, rnd: random.Random) -> Mutant:
    """A usage event whose hours are not a number from 0 to 24 (or are missing)."""
    edit = _Edit.of(base)
    usage = [k for k in range(len(edit.rows)) if edit.get(k, ec.EVENT) == "usage"]
    i = rnd.choice(usage)
    value = rnd.choice(_BAD_HOURS)
    edit.set(i, ec.VALUE, value)
    keywords = ("empty value of a usage event",) if not value.strip() else ("is not a number of hours",)
    return _mutant(
        "eq_bad_hours", base, fmt, f"row {_row(i)} hours {value!r}", edit, Expect(False, _row(i), ec.VALUE, keywords)
    )


def eq_over_day(base: Base, fmt: str, rnd: random.Random) -> Mutant:
    """One more usage row for a device and day that takes the day's total past 24 hours."""
    edit = _Edit.of(base)
    usage = [k for k in range(len(edit.rows)) if edit.get(k, ec.EVENT) == "usage"]
    i = rnd.choice(usage)
    total = sum(
        float(edit.get(k, ec.VALUE))
        for k in usage
        if edit.get(k, ec.DEVICE_ID) == edit.get(i, ec.DEVICE_ID)
        and edit.get(k, ec.TIME)[:10] == edit.get(i, ec.TIME)[:10]
    )
    extra = round(min(24.0, 24.0 - total + rnd.uniform(0.1, 10)), 1)
    row = list(edit.rows[i])
    row[edit.header.index(ec.VALUE)] = f"{extra:g}"
    row[edit.header.index(ec.TIME)] = f"{edit.get(i, ec.TIME)[:10]} 23:{rnd.randint(10, 59)}"
    edit.rows.append(row)
    edit.source.append(edit.source[i])
    edit.changed.update({ec.VALUE, ec.TIME})
    j = len(edit.rows) - 1
    return _mutant(
        "eq_over_day", base, fmt, f"row {_row(j)} adds {extra:g} h to {total:g} h", edit,
        Expect(False, _row(j), ec.VALUE, ("hours of use on", "expected at most 24 hours per day")),
    )  # fmt: skip


def eq_unknown_device(base: Base, fmt: str, rnd: random.Random) -> Mutant:
    """An event of a device the inventory does not list."""
    edit = _Edit.of(base)
    i = _pick_row(edit, rnd)
    value = rnd.choice(["ZZ-9999", "IP-00001", "ip-0001 ", "VE-0001-OLD", "0"])
    if value.strip() in _install_dates():
        value = "ZZ-9999"
    edit.set(i, ec.DEVICE_ID, value)
    return _mutant(
        "eq_unknown_device", base, fmt, f"row {_row(i)} device {value!r}", edit,
        Expect(False, _row(i), ec.DEVICE_ID, ("is not in the inventory",)),
    )  # fmt: skip


def eq_before_install(base: Base, fmt: str, rnd: random.Random) -> Mutant:
    """An event dated before its device was commissioned."""
    edit = _Edit.of(base)
    installed = _install_dates()
    i = _pick_row(edit, rnd)
    since = datetime.fromisoformat(installed[edit.get(i, ec.DEVICE_ID)])
    when = since - timedelta(days=rnd.randint(1, 3000), minutes=rnd.choice([0, 75]))
    edit.set(i, ec.TIME, f"{when:%Y-%m-%d %H:%M}" if when.minute else f"{when:%Y-%m-%d}")
    return _mutant(
        "eq_before_install", base, fmt, f"row {_row(i)} dated {when:%Y-%m-%d}", edit,
        Expect(False, _row(i), ec.TIME, ("before device",)),
    )  # fmt: skip


def eq_duplicate_device(base: Base, fmt: str, rnd: random.Random) -> Mutant:
    """An inventory row repeated later (the same asset tag twice)."""
    edit = _Edit.of(base)
    i = _pick_row(edit, rnd)
    j = rnd.randrange(i + 1, len(edit.rows) + 1)
    edit.rows.insert(j, list(edit.rows[i]))
    edit.source.insert(j, edit.source[i])
    if rnd.random() < 0.5:
        edit.set(j, ec.UNIT, "ED")
    return _mutant(
        "eq_duplicate_device", base, fmt, f"row {_row(i)} repeated as row {_row(j)}", edit,
        Expect(False, _row(j), ec.DEVICE_ID, (f"first at row {_row(i)}",)),
    )  # fmt: skip


def eq_bad_date(base: Base, fmt: str, rnd: random.Random) -> Mutant:
    """An impossible, non-ISO, zoned or empty install date or event time."""
    edit = _Edit.of(base)
    column = ec.INSTALL_DATE if base.kind == "inventory" else ec.TIME
    i = _pick_row(edit, rnd)
    value = rnd.choice(_BAD_DATES)
    edit.set(i, column, value)
    keywords = ("empty",) if not value.strip() else ("not a valid date", "outside the dates")
    return _mutant(
        "eq_bad_date", base, fmt, f"row {_row(i)} {column} {value!r}", edit, Expect(False, _row(i), column, keywords)
    )


def eq_empty_field(base: Base, fmt: str, rnd: random.Random) -> Mutant:
    """A required text field left empty: an asset tag, type, unit or manufacturer, or an error's code."""
    edit = _Edit.of(base)
    if base.kind == "inventory":
        column = rnd.choice([ec.DEVICE_ID, ec.DEVICE_TYPE, ec.UNIT, ec.MANUFACTURER])
        i = _pick_row(edit, rnd)
        keywords: tuple[str, ...] = (f"empty {column}",)
    elif rnd.random() < 0.5:
        column = ec.DEVICE_ID
        i = _pick_row(edit, rnd)
        keywords = ("empty device_id",)
    else:
        column = ec.VALUE
        errors = [k for k in range(len(edit.rows)) if edit.get(k, ec.EVENT) == "error"]
        i = rnd.choice(errors)
        keywords = ("empty value of an error event",)
    edit.set(i, column, rnd.choice(["", "  "]))
    return _mutant(
        "eq_empty_field", base, fmt, f"row {_row(i)} {column} emptied", edit, Expect(False, _row(i), column, keywords)
    )


def eq_missing_column(base: Base, fmt: str, rnd: random.Random) -> Mutant:
    """A required column dropped (the event log's value column too: usage and error events need it)."""
    edit = _Edit.of(base)
    required = list(ec.INVENTORY_COLUMNS) if base.kind == "inventory" else [*ec.EVENT_COLUMNS, ec.VALUE]
    drop = rnd.choice(required)
    edit.drop_columns([drop])
    keywords = ("missing column 'value'",) if drop == ec.VALUE else (f"missing required column '{drop}'",)
    return _mutant("eq_missing_column", base, fmt, f"dropped {drop}", edit, Expect(False, 1, drop, keywords))


def eq_wrong_encoding(base: Base, fmt: str, rnd: random.Random) -> Mutant:
    """A unit, manufacturer or error code in latin-1/cp1252 bytes, or the whole file in UTF-16 (CSV)."""
    if rnd.random() < 0.3:
        codec = rnd.choice(["utf-16", "utf-16-le", "utf-16-be"])
        data = base.csv.decode("utf-8").encode(codec)
        return Mutant(
            "eq_wrong_encoding", base.kind, fmt, f"whole file as {codec}", data, Expect(False, keywords=("UTF-16",))
        )
    edit = _Edit.of(base)
    if base.kind == "inventory":
        column, i = rnd.choice([ec.UNIT, ec.MANUFACTURER]), _pick_row(edit, rnd)
    else:
        column = ec.VALUE
        i = rnd.choice([k for k in range(len(edit.rows)) if edit.get(k, ec.EVENT) == "error"])
    name, codec = rnd.choice([("Réanimation", "latin-1"), ("Dräger", "cp1252"), ("E–PUMP", "cp1252")])
    marker = "\x01MARK\x01"
    edit.set(i, column, marker)
    data = edit.to_bytes("csv").replace(marker.encode(), name.encode(codec))
    return Mutant(
        "eq_wrong_encoding", base.kind, fmt, f"row {_row(i)} {column} {name!r} in {codec}", data,
        Expect(False, _row(i), None, ("not UTF-8",)),
    )  # fmt: skip


def eq_parquet_types(base: Base, fmt: str, rnd: random.Random) -> Mutant:
    """A required Parquet column as a list, struct, non-UTF-8 binary, all-null or time-zoned in an unknown zone."""
    edit = _Edit.of(base)
    required = list(ec.INVENTORY_COLUMNS) if base.kind == "inventory" else list(ec.EVENT_COLUMNS)
    column = rnd.choice(required)
    kind = rnd.choice(["list", "struct", "binary", "null", "unknown-zone"])
    n = len(edit.rows)
    text = [edit.get(i, column) for i in range(n)]
    arrays: dict[str, Callable[[], pa.Array]] = {
        "list": lambda: pa.array([[v] for v in text]),
        "struct": lambda: pa.array([{"value": v} for v in text]),
        "binary": lambda: pa.array([b"\xff" + v.encode() for v in text], pa.binary()),
        "null": lambda: pa.nulls(n),
        "unknown-zone": lambda: pa.array([86_400 * i for i in range(n)], pa.timestamp("s", tz="Mars/Olympus_Mons")),
    }
    edit.typed[column] = arrays[kind]()
    keywords = {"null": ("empty",), "unknown-zone": ("not a known zone",)}.get(kind, ("cannot be read as text",))
    return _mutant("eq_parquet_types", base, fmt, f"{column} as {kind}", edit, Expect(False, None, column, keywords))


def _generic(
    name: str, mutator: Callable[[Base, str, random.Random], Mutant]
) -> Callable[[Base, str, random.Random], Mutant]:
    """A byte-level class of the unit-record campaign, run on an equipment base under its own name."""

    def run(base: Base, fmt: str, rnd: random.Random) -> Mutant:
        m = mutator(base, fmt, rnd)
        return Mutant(name, m.kind, m.fmt, m.detail, m.data, m.expect)

    run.__doc__ = mutator.__doc__
    return run


Mutator = Callable[[Base, str, random.Random], Mutant]
_EVENTS, _INVENTORY, _BOTH = ("events",), ("inventory",), EQUIPMENT_KINDS

#: Every equipment class with the bases it applies to, in the same shape as ``mutations.MUTATIONS``.
EQUIPMENT_MUTATIONS: dict[str, tuple[Mutator, tuple[str, ...], tuple[str, ...]]] = {
    "eq_truncated": (eq_truncated, _BOTH, FORMATS),
    "eq_bad_event": (eq_bad_event, _EVENTS, FORMATS),
    "eq_bad_hours": (eq_bad_hours, _EVENTS, FORMATS),
    "eq_over_day": (eq_over_day, _EVENTS, FORMATS),
    "eq_unknown_device": (eq_unknown_device, _EVENTS, FORMATS),
    "eq_before_install": (eq_before_install, _EVENTS, FORMATS),
    "eq_duplicate_device": (eq_duplicate_device, _INVENTORY, FORMATS),
    "eq_bad_date": (eq_bad_date, _BOTH, FORMATS),
    "eq_empty_field": (eq_empty_field, _BOTH, FORMATS),
    "eq_missing_column": (eq_missing_column, _BOTH, FORMATS),
    "eq_wrong_encoding": (eq_wrong_encoding, _BOTH, ("csv",)),
    "eq_parquet_types": (eq_parquet_types, _BOTH, ("parquet",)),
    "eq_binary_garbage": (_generic("eq_binary_garbage", binary_garbage), _BOTH, FORMATS),
    "eq_empty": (_generic("eq_empty", empty), _BOTH, FORMATS),
    "eq_duplicate_column": (_generic("eq_duplicate_column", duplicate_column), _BOTH, FORMATS),
    "eq_ragged_rows": (_generic("eq_ragged_rows", ragged_rows), _BOTH, ("csv",)),
    "eq_parquet_byte_flip": (_generic("eq_parquet_byte_flip", parquet_byte_flip), _BOTH, ("parquet",)),
}


def mutate_equipment(mutation: str, rnd: random.Random) -> Mutant:
    """Apply one equipment class to a base (inventory or event log, CSV or Parquet) that ``rnd`` picks."""
    mutator, kinds, formats = EQUIPMENT_MUTATIONS[mutation]
    kind, fmt = rnd.choice(kinds), rnd.choice(formats)
    return mutator(equipment_bases()[kind], fmt, rnd)


def write_fleet_mutant(mutant: Mutant, directory: Path, stem: str) -> tuple[Path, Path]:
    """A fleet folder ``directory/stem`` holding the mutant and its valid partner; returns (folder, mutant file)."""
    folder = directory / stem
    folder.mkdir()
    other = partner(mutant.kind)
    other_fmt = mutant.fmt
    base = equipment_bases()[other]
    (folder / file_name(other, other_fmt)).write_bytes(base.csv if other_fmt == "csv" else base.parquet)
    path = folder / file_name(mutant.kind, mutant.fmt)
    path.write_bytes(mutant.data)
    return folder, path
