"""Seeded malformed OMOP CDMs and FHIR exports, each with what validating it must name.

The bases are one small generated hospital written as an OMOP CDM (an SQLite database whose
tables hold text, as a careless ETL leaves them, and a CSV export folder) and as a FHIR R4
export (a Bulk Data folder and a Bundle). A mutation class breaks one record of a base in a
known way and returns a :class:`SourceMutant`: the files to write and the words an error must
contain, taken from docs/data.md rather than from the validator: the file, the NDJSON line or
Bundle entry, the record's id, the field. Only records the validator reads are broken (an
inpatient visit's dates, an inpatient encounter's period): a broken outpatient record is left
out unread, and a file that stays valid by accident is reported as a fuzz failure.
"""

from __future__ import annotations

import copy
import json
import random
import sqlite3
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd

from medalloc_core.sources.synthetic import fhir_resources, omop_tables
from medalloc_core.synthetic import RegionConfig, generate_region

OMOP_KINDS: tuple[str, ...] = ("omop-sqlite", "omop-csv")
FHIR_KINDS: tuple[str, ...] = ("fhir-ndjson", "fhir-bundle")
SOURCE = "source"  # the mutant's source inside its folder: source/ (a folder) or source.sqlite / source.json
_TABLES = ("care_site", "visit_occurrence", "visit_detail")


@dataclass(frozen=True)
class SourceMutant:
    """One malformed source: its files (relative path -> bytes), which path to validate, and what the error names.

    ``names`` are substrings one error line must all contain (``{root}`` stands for the
    folder the files are written into): the file, the row/line/entry, the record and the field.
    """

    mutation: str
    kind: str
    detail: str
    files: dict[str, bytes]
    location: str
    names: tuple[str, ...]


@dataclass(frozen=True)
class _Bases:
    tables: dict[str, pd.DataFrame]
    resources: dict[str, list[dict[str, Any]]]


@cache
def _bases(seed: int = 11) -> _Bases:
    config = RegionConfig(hospitals=1, days=28, seed=seed, shape="encounters", min_beds=40, max_beds=60, warmup_days=30)
    hospital = generate_region(config).hospitals[0]
    assert hospital.encounters is not None
    return _Bases(
        omop_tables(hospital.encounters, hospital_id="H000", seed=seed),
        fhir_resources(hospital.encounters, hospital_id="H000", seed=seed),
    )


# ---------------------------------------------------------------------- writing bases
def _omop_files(tables: dict[str, pd.DataFrame], kind: str) -> tuple[dict[str, bytes], str]:
    """Text tables (see ``_as_text``) as an SQLite file of text columns, or a CSV export folder."""
    text = tables
    if kind == "omop-csv":
        files = {
            f"{SOURCE}/{name}.csv": frame.to_csv(index=False, lineterminator="\n").encode()
            for name, frame in text.items()
        }
        return files, SOURCE
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cdm.sqlite"
        with sqlite3.connect(path) as conn:
            for name, frame in text.items():
                frame.to_sql(name, conn, index=False)
        conn.close()
        return {f"{SOURCE}.sqlite": path.read_bytes()}, f"{SOURCE}.sqlite"


def _as_text(frame: pd.DataFrame) -> pd.DataFrame:
    """Every value as the text an export would hold (datetimes ``YYYY-MM-DD HH:MM:SS``), missing as None."""
    out = pd.DataFrame(index=frame.index)
    for column in frame.columns:
        values = frame[column]
        if column.endswith("_datetime"):
            stamps = pd.to_datetime(values)
            out[column] = stamps.dt.strftime("%Y-%m-%d %H:%M:%S").where(stamps.notna(), None)
        else:
            out[column] = values.astype(object).where(values.notna(), None).map(lambda v: v if v is None else str(v))
    return out


def _fhir_files(resources: dict[str, list[dict[str, Any]]], kind: str) -> tuple[dict[str, bytes], str]:
    if kind == "fhir-ndjson":
        files = {
            f"{SOURCE}/{name}.ndjson": ("".join(json.dumps(r) + "\n" for r in items)).encode()
            for name, items in resources.items()
        }
        return files, SOURCE
    entries = [{"resource": r} for items in resources.values() for r in items]
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": entries}
    return {f"{SOURCE}.json": json.dumps(bundle, indent=1).encode()}, f"{SOURCE}.json"


def _fhir_where(resources: dict[str, list[dict[str, Any]]], kind: str, ident: str) -> tuple[str, str]:
    """(file, "line N" / "entry N") of Encounter ``ident`` in the written files."""
    if kind == "fhir-ndjson":
        index = next(i for i, r in enumerate(resources["Encounter"]) if r.get("id") == ident)
        return f"{SOURCE}/Encounter.ndjson", f"line {index + 1}"
    everything = [r for items in resources.values() for r in items]
    index = next(i for i, r in enumerate(everything) if r.get("resourceType") == "Encounter" and r.get("id") == ident)
    return f"{SOURCE}.json", f"entry {index + 1}"


# ---------------------------------------------------------------------- FHIR mutations
def _inpatient(resources: dict[str, list[dict[str, Any]]], rnd: random.Random) -> dict[str, Any]:
    used = [
        r
        for r in resources["Encounter"]
        if r["class"]["code"] == "IMP" and r["status"] in ("finished", "in-progress") and "end" in r["period"]
    ]
    return rnd.choice(used)


def _fhir(mutation: str, kind: str, rnd: random.Random) -> SourceMutant:
    resources = copy.deepcopy(_bases().resources)
    encounter = _inpatient(resources, rnd)
    ident = encounter["id"]
    record = f"Encounter/{ident}"
    names: tuple[str, ...]
    if mutation == "fhir_bad_datetime":
        value = rnd.choice(["2024-13-01T10:00:00+00:00", "yesterday", "2024-01-05T10:00:00", "2024-02-30", "10:00"])
        encounter["location"][0]["period"]["start"] = value
        detail, names = f"location[0].period.start = {value!r}", (record, "'location[0].period.start'")
    elif mutation == "fhir_partial_date":
        value = rnd.choice(["2024", "2024-01"])
        encounter["location"][0].pop("period")
        encounter["period"]["start"] = value
        detail, names = f"period.start = {value!r}", (record, "'period.start'", "not a full date")
    elif mutation == "fhir_number_for_date":
        encounter["period"]["end"] = rnd.randint(1, 2**31)
        detail, names = "period.end is a JSON number", (record, "'period.end'", "is a JSON int")
    elif mutation == "fhir_wrong_shape":
        shapes: list[tuple[str, Any]] = [("class", [{"code": "IMP"}]), ("subject", "Patient/1"), ("location", {"x": 1})]
        field, value = rnd.choice(shapes)
        encounter[field] = value
        detail, names = f"{field} = {value!r}", (record, f"'{field}")
    elif mutation == "fhir_unknown_element":
        name = rnd.choice(["patient", "ward", "admitDate"])
        encounter[name] = "x"
        detail, names = f"unknown element {name}", (record, f"'{name}'", "Extra inputs are not permitted")
    elif mutation == "fhir_missing_subject":
        encounter.pop("subject")
        detail, names = "no subject", (record, "'subject.reference'")
    elif mutation == "fhir_no_location":
        encounter.pop("location")
        detail, names = "no location history", (record, "'location'")
    elif mutation == "fhir_end_before_start":
        period = encounter["location"][0]["period"]
        period["start"], period["end"] = period["end"], period["start"]
        detail, names = "location[0] ends before it begins", (record, "'location[0].period.end'", "before it begins")
    elif mutation == "fhir_finished_without_end":
        encounter["status"] = "finished"
        encounter["period"].pop("end")
        encounter["location"][0]["period"].pop("end")
        detail, names = "finished, no end", (record, "is finished but this stay has no end")
    elif mutation == "fhir_duplicate_id":
        other = rnd.choice([r for r in resources["Encounter"] if r is not encounter and r["class"]["code"] == "IMP"])
        other["id"] = ident
        detail, names = f"two Encounters {ident}", (record, "'id'", "appears more than once")
    else:
        raise KeyError(mutation)
    files, location = _fhir_files(resources, kind)
    if mutation == "fhir_duplicate_id":  # the second one is reported, wherever it is
        return SourceMutant(mutation, kind, detail, files, location, names)
    file, row = _fhir_where(resources, kind, ident)
    return SourceMutant(mutation, kind, detail, files, location, (f"{{root}}/{file}, {row}", *names))


def _fhir_bytes(mutation: str, kind: str, rnd: random.Random) -> SourceMutant:
    """Byte-level damage: a line cut short, garbage, an empty file."""
    files, location = _fhir_files(copy.deepcopy(_bases().resources), kind)
    name = next(iter(files)) if kind == "fhir-bundle" else f"{SOURCE}/Encounter.ndjson"
    data = files[name]
    lines = data.split(b"\n")
    if mutation == "fhir_cut_line":
        if kind == "fhir-bundle":
            cut = rnd.randrange(1, len(data) - 2)
            files[name] = data[:cut]
            return SourceMutant(mutation, kind, f"cut at byte {cut}", files, location, (f"{{root}}/{name}", "not JSON"))
        k = rnd.randrange(len(lines) - 1)
        line = lines[k]
        lines[k] = line[: rnd.randrange(1, len(line) - 1)]
        files[name] = b"\n".join(lines)
        return SourceMutant(
            mutation, kind, f"line {k + 1} cut", files, location, (f"{{root}}/{name}, line {k + 1}", "not JSON")
        )
    if mutation == "fhir_garbage":
        junk = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 200)))
        if kind == "fhir-bundle":
            files[name] = junk if junk.strip() else b"\x00"
            return SourceMutant(mutation, kind, "garbage file", files, location, (f"{{root}}/{name}",))
        junk = junk.replace(b"\n", b" ").strip() or b"\xff"
        k = rnd.randrange(len(lines) - 1)
        lines.insert(k, junk)
        files[name] = b"\n".join(lines)
        return SourceMutant(
            mutation, kind, f"garbage at line {k + 1}", files, location, (f"{{root}}/{name}, line {k + 1}",)
        )
    raise KeyError(mutation)


# ---------------------------------------------------------------------- OMOP mutations
def _omop(mutation: str, kind: str, rnd: random.Random) -> SourceMutant:
    tables = {name: _as_text(frame) for name, frame in _bases().tables.items()}
    visits, details = tables["visit_occurrence"], tables["visit_detail"]
    row = rnd.randrange(len(details))
    detail_id = details.at[row, "visit_detail_id"]
    where_row = (
        f"row {row + 2}, visit_detail_id {detail_id}"
        if kind == "omop-csv"
        else f"table visit_detail, visit_detail_id {detail_id}"
    )
    file = f"{{root}}/{SOURCE}/visit_detail.csv" if kind == "omop-csv" else f"{{root}}/{SOURCE}.sqlite"
    names: tuple[str, ...]
    if mutation == "omop_bad_datetime":
        column = rnd.choice(["visit_detail_start_datetime", "visit_detail_end_datetime"])
        if pd.isna(details.at[row, column]):
            column = "visit_detail_start_datetime"
        value = rnd.choice(
            ["2024-02-30 10:00:00", "05/01/2024 10:00", "2024-01-01T10:00:00+01:00", "tomorrow", "9999-99-99"]
        )
        details.at[row, column] = value
        summary, names = f"{column} = {value!r}", (f"{file}, {where_row}, column '{column}'", "is not a valid date")
    elif mutation == "omop_bad_id":
        column = rnd.choice(["person_id", "visit_occurrence_id", "care_site_id"])
        value = rnd.choice(["P-12", "1.5", "x", "99999999999999999999999"])
        details.at[row, column] = value
        summary, names = f"{column} = {value!r}", (f"{file}, {where_row}, column '{column}'", "is not a whole number")
    elif mutation == "omop_unknown_care_site":
        details.at[row, "care_site_id"] = "9999"
        summary, names = "care_site_id 9999", (f"{file}, {where_row}, column 'care_site_id'", "not in care_site")
    elif mutation == "omop_orphan_detail":
        details.at[row, "visit_occurrence_id"] = "999999"
        summary, names = (
            "visit_occurrence_id 999999",
            (f"{file}, {where_row}, column 'visit_occurrence_id'", "not in visit_occurrence"),
        )
    elif mutation == "omop_end_before_start":
        details.at[row, "visit_detail_start_datetime"] = "2100-01-01 00:00:00"
        details.at[row, "visit_detail_start_date"] = "2100-01-01"
        if pd.isna(details.at[row, "visit_detail_end_datetime"]):  # an open stay: give it an end
            details.at[row, "visit_detail_end_datetime"] = "2000-01-01 00:00:00"
        summary, names = "start after end", (f"{file}, {where_row}", "before it begins")
    elif mutation == "omop_empty_start":
        details.at[row, "visit_detail_start_datetime"] = None
        details.at[row, "visit_detail_start_date"] = None
        summary, names = (
            "no start",
            (f"{file}, {where_row}", "empty visit_detail_start_datetime and visit_detail_start_date"),
        )
    elif mutation == "omop_missing_column":
        column = rnd.choice(["visit_occurrence_id", "person_id", "visit_detail_id", "visit_detail_start_date"])
        tables["visit_detail"] = details.drop(columns=[column])
        table_file = (
            f"{{root}}/{SOURCE}/visit_detail.csv, row 1"
            if kind == "omop-csv"
            else f"{{root}}/{SOURCE}.sqlite, table visit_detail"
        )
        summary, names = f"no {column}", (table_file, f"column '{column}'", "visit_detail has no column")
    elif mutation == "omop_duplicate_visit":
        vrow = rnd.randrange(1, len(visits))
        visits.at[vrow, "visit_occurrence_id"] = visits.at[vrow - 1, "visit_occurrence_id"]
        summary, names = "repeated visit_occurrence_id", ("appears more than once", "column 'visit_occurrence_id'")
    elif mutation == "omop_missing_table":
        tables.pop("visit_occurrence")
        summary, names = "no visit_occurrence", ("no visit_occurrence table",)
    else:
        raise KeyError(mutation)
    files, location = _omop_files(tables, kind)
    return SourceMutant(mutation, kind, summary, files, location, names)


def _omop_bytes(mutation: str, kind: str, rnd: random.Random) -> SourceMutant:
    files, location = _omop_files({n: _as_text(f) for n, f in _bases().tables.items()}, kind)
    name = next(n for n in files if n.endswith(("visit_detail.csv", ".sqlite")))
    data = files[name]
    if mutation == "omop_truncated":  # SQLite only: a CSV cut at a line end is a valid, shorter table
        cut = rnd.randrange(1, len(data) // 2)
        files[name] = data[:cut]
        return SourceMutant(mutation, kind, f"cut at byte {cut}", files, location, (f"{{root}}/{name.split('/')[0]}",))
    if mutation == "omop_garbage":
        files[name] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 4096))) or b"\x00"
        return SourceMutant(mutation, kind, "garbage", files, location, (f"{{root}}/{name.split('/')[0]}",))
    raise KeyError(mutation)


SourceMutator = Callable[[str, str, random.Random], SourceMutant]
SOURCE_MUTATIONS: dict[str, tuple[SourceMutator, tuple[str, ...]]] = {
    "fhir_bad_datetime": (_fhir, FHIR_KINDS),
    "fhir_partial_date": (_fhir, FHIR_KINDS),
    "fhir_number_for_date": (_fhir, FHIR_KINDS),
    "fhir_wrong_shape": (_fhir, FHIR_KINDS),
    "fhir_unknown_element": (_fhir, FHIR_KINDS),
    "fhir_missing_subject": (_fhir, FHIR_KINDS),
    "fhir_no_location": (_fhir, FHIR_KINDS),
    "fhir_end_before_start": (_fhir, FHIR_KINDS),
    "fhir_finished_without_end": (_fhir, FHIR_KINDS),
    "fhir_duplicate_id": (_fhir, FHIR_KINDS),
    "fhir_cut_line": (_fhir_bytes, FHIR_KINDS),
    "fhir_garbage": (_fhir_bytes, FHIR_KINDS),
    "omop_bad_datetime": (_omop, OMOP_KINDS),
    "omop_bad_id": (_omop, OMOP_KINDS),
    "omop_unknown_care_site": (_omop, OMOP_KINDS),
    "omop_orphan_detail": (_omop, OMOP_KINDS),
    "omop_end_before_start": (_omop, OMOP_KINDS),
    "omop_empty_start": (_omop, OMOP_KINDS),
    "omop_missing_column": (_omop, OMOP_KINDS),
    "omop_duplicate_visit": (_omop, OMOP_KINDS),
    "omop_missing_table": (_omop, OMOP_KINDS),
    "omop_truncated": (_omop_bytes, ("omop-sqlite",)),
    "omop_garbage": (_omop_bytes, OMOP_KINDS),
}


def mutate_source(mutation: str, rnd: random.Random) -> SourceMutant:
    """Apply one source mutation class to a base kind that ``rnd`` picks."""
    mutator, kinds = SOURCE_MUTATIONS[mutation]
    return mutator(mutation, rnd.choice(kinds), rnd)


def write_source(mutant: SourceMutant, root: Path) -> Path:
    """Write the mutant's files under ``root``; returns the path to validate."""
    for name, data in mutant.files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root / mutant.location
