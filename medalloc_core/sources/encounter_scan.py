"""Encounter files (the contract's shape 2, CSV or Parquet) at hospital scale: scanned by DuckDB.

A five-year export of a large hospital is millions of stays. The engine reads the file once
in bounded memory (``[engine] memory-limit``), checks every stay as the contract says (ids
and unit present, ISO times in range, discharge not before admission, one row per
``encounter_id``) and hands Python only the typed stays. A file it flags is explained by the
contract's own validator (:func:`medalloc_core.validation.inspect_file`), in the same
words, when that validator can hold it; a bigger flagged file is explained here, by row,
record and column, the first few problems of each kind listed and the rest counted.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from medalloc_core.contract import (
    ADMIT_TIME,
    DISCHARGE_TIME,
    ENCOUNTER_COLUMNS,
    ENCOUNTER_ID,
    PATIENT_ID,
    UNIT,
    Frequency,
    Problem,
    UnitRecords,
)
from medalloc_core.encounters import DATE_DTYPE
from medalloc_core.io import MAX_FILE_BYTES, MAX_LINE_BYTES, PARQUET_MAGIC
from medalloc_core.sources.engine import (
    connect,
    daily_counts,
    first_overlap,
    hand_over,
    handoff,
    lines_of_ordinals,
    quote,
    take_over,
)
from medalloc_core.sources.mapping import EngineSettings
from medalloc_core.validation import (
    BACKWARDS,
    BAD_ADMIT,
    BAD_DISCHARGE,
    DATE_EXPECTED,
    DATE_PATTERN,
    FIRST_DATE,
    LAST_DATE,
    LEFT_OUT_REASONS,
    NO_PATIENT,
    NO_UNIT,
    PROBLEMS_PER_CHECK,
    ValidationReport,
    detect_shape,
    show_value,
)

logger = logging.getLogger(__name__)

_CHECKS: tuple[tuple[str, str], ...] = (
    ("no_id", ENCOUNTER_ID),
    ("no_patient", PATIENT_ID),
    ("no_unit", UNIT),
    ("no_admit", ADMIT_TIME),
    ("bad_admit", ADMIT_TIME),
    ("bad_discharge", DISCHARGE_TIME),
    ("backwards", DISCHARGE_TIME),
    ("duplicate", ENCOUNTER_ID),
)

#: A node's reading (issue 20): the engine's checks that leave a stay out, under the validator's reasons
#: (``validation.LEFT_OUT_REASONS``, in their order). An empty or repeated ``encounter_id`` leaves nothing out:
#: a node does not count by it.
_LEFT_OUT_CHECKS: dict[str, tuple[str, ...]] = {
    NO_PATIENT: ("no_patient",),
    NO_UNIT: ("no_unit",),
    BAD_ADMIT: ("no_admit", "bad_admit"),
    BAD_DISCHARGE: ("bad_discharge",),
    BACKWARDS: ("backwards",),
}
assert tuple(_LEFT_OUT_CHECKS) == LEFT_OUT_REASONS


def _header(path: Path) -> tuple[str, list[str]] | None:
    """(format, column names) of a CSV or Parquet file, read without reading its records; None if odd."""
    try:
        with path.open("rb") as handle:
            head = handle.read(4)
            if head == PARQUET_MAGIC:
                return "parquet", [str(n) for n in pq.read_schema(path).names]
            handle.seek(0)
            line = handle.readline(MAX_LINE_BYTES + 1)
    except Exception:  # noqa: BLE001 - unreadable or corrupt: the contract's reader names the problem
        return None
    if len(line) > MAX_LINE_BYTES or b'"' in line or b"\0" in line:
        return None
    try:
        text = line.decode("utf-8-sig").strip()
    except UnicodeDecodeError:
        return None
    return ("csv", [c.strip() for c in text.split(",")]) if text else None


def scan_encounter_file(
    path: Path, settings: EngineSettings, *, lenient: bool = False
) -> tuple[ValidationReport, UnitRecords | None, pd.DataFrame | None] | None:
    """Validate and load an encounter file with the engine.

    Returns (report, daily records, stays) like the contract's reader does, or None when the
    file is not an encounter file the engine should read (unit records, a header the
    contract's reader must explain) or when the contract's reader should explain its
    problems (the file is small enough for it).

    ``lenient`` is a node's reading (issue 20), as ``validation.load_node_records`` reads a
    smaller file: a stay that breaks a per-record rule is left out before counting, in the
    engine (a ``WHERE`` on the scanned table, its reasons counted by one ``GROUP BY``), never
    a reason to refuse; ``report.summary["left_out"]`` counts them by reason.
    """
    found = _header(path)
    if found is None:
        return None
    fmt, columns = found
    lowered = [c.lower() for c in columns]
    if len(set(lowered)) != len(lowered) or detect_shape(lowered) != "encounters":
        return None
    if any(c not in lowered for c in ENCOUNTER_COLUMNS):
        return None
    actual = {c: columns[lowered.index(c)] for c in ENCOUNTER_COLUMNS}
    if fmt == "csv":
        reader = (
            f"read_csv({quote(str(path))}, header = true, all_varchar = true, delim = ',', quote = '\"', "
            f"escape = '\"', strict_mode = true, max_line_size = {MAX_LINE_BYTES})"
        )
    else:
        reader = f"read_parquet({quote(str(path))})"
    import duckdb

    def text(column: str) -> str:
        return f"nullif(trim(CAST({_ident(actual[column])} AS VARCHAR)), '')"

    with handoff() as handed:  # the stays are read after the engine is closed: its memory, then theirs
        try:
            with connect(settings) as connection:
                names = [r[0] for r in connection.execute(f"DESCRIBE SELECT * FROM {reader}").fetchall()]
                if [n.lower() for n in names] != lowered:
                    return None
                connection.execute(
                    f"""
                    CREATE TEMP TABLE t AS
                    WITH raw AS (
                        SELECT ordinality AS ord, {text(ENCOUNTER_ID)} AS encounter_id,
                               {text(PATIENT_ID)} AS patient_id, {text(UNIT)} AS unit,
                               {text(ADMIT_TIME)} AS a_text, {text(DISCHARGE_TIME)} AS d_text
                        FROM {reader} WITH ORDINALITY
                    ), parsed AS (
                        SELECT *,
                            CASE WHEN regexp_full_match(a_text, '{DATE_PATTERN}') THEN TRY_CAST(a_text AS TIMESTAMP) END
                                AS admit,
                            CASE WHEN regexp_full_match(d_text, '{DATE_PATTERN}') THEN TRY_CAST(d_text AS TIMESTAMP) END
                                AS discharge
                        FROM raw
                    )
                    SELECT * FROM parsed
                    """
                )
                in_range = f"BETWEEN TIMESTAMP '{FIRST_DATE}' AND TIMESTAMP '{LAST_DATE}'"
                conditions = {
                    "no_id": "encounter_id IS NULL",
                    "no_patient": "patient_id IS NULL",
                    "no_unit": "unit IS NULL",
                    "no_admit": "a_text IS NULL",
                    "bad_admit": f"a_text IS NOT NULL AND (admit IS NULL OR NOT admit {in_range})",
                    "bad_discharge": f"d_text IS NOT NULL AND (discharge IS NULL OR NOT discharge {in_range})",
                    "backwards": "discharge < admit",
                    # A later row of an id seen before (the first row of each id is never flagged).
                    "duplicate": "ord > (SELECT min(ord) FROM t AS f WHERE f.encounter_id = t.encounter_id)",
                }
                # One pass for the row checks; duplicates counted by a hash of the ids (no window over the file).
                counts = connection.execute(
                    "SELECT "
                    + ", ".join(f"count(*) FILTER (WHERE {c})" for k, c in conditions.items() if k != "duplicate")
                    + ", count(encounter_id) - count(DISTINCT encounter_id) FROM t"
                ).fetchall()[0]
                flagged = dict(zip(conditions, map(int, counts), strict=True))
                kept, left_out = "t", dict[str, int]()
                if lenient:  # a node: the stays that break a per-record rule are left out, counted by reason
                    kept, left_out = _leave_out(connection, conditions, flagged)
                    flagged = dict.fromkeys(flagged, 0)  # nothing is explained: nothing refuses
                encounters, open_stays = connection.execute(
                    f"SELECT count(*), count(*) FILTER (WHERE d_text IS NULL) FROM {kept}"
                ).fetchall()[0]
                rows = encounters + sum(left_out.values())  # every record read, those left out too
                name = str(path)
                summary: dict[str, Any] = {
                    "file": name,
                    "format": fmt,
                    "shape": "encounters",
                    "rows": int(rows),
                    "columns_ignored": [
                        c for c, low in zip(columns, lowered, strict=True) if low not in ENCOUNTER_COLUMNS
                    ],
                }
                if lenient:
                    summary["left_out"] = left_out
                if any(flagged.values()):
                    if path.stat().st_size <= MAX_FILE_BYTES:
                        return None  # the contract's reader explains it, in its words
                    problems = _explain(connection, path, fmt, conditions, flagged)
                    summary.update(encounters=int(rows), open_stays=int(open_stays))
                    return ValidationReport(path, problems, summary), None, None
                daily = daily_counts(connection, f"SELECT unit, admit, discharge FROM {kept}")
                overlaps, first = first_overlap(
                    connection, f"SELECT patient_id, admit, discharge, ord FROM {kept}", "ord"
                )
                problems = []
                if overlaps:
                    ordinal = int(first[0])
                    patient = connection.execute("SELECT patient_id FROM t WHERE ord = ?", [ordinal]).fetchall()[0][0]
                    problems.append(_overlap_warning(path, fmt, overlaps, ordinal, patient))
                hand_over(
                    connection,
                    "SELECT encounter_id, patient_id, unit, admit AS admit_time, discharge AS discharge_time "
                    f"FROM {kept} ORDER BY ord",
                    handed,
                )
        except (duckdb.IOException, duckdb.InvalidInputException, duckdb.ConversionException) as exc:
            logger.debug("the engine cannot read %s (%s); the contract's reader explains", path, exc)
            return None
        stays = take_over(handed)
    for column in (ADMIT_TIME, DISCHARGE_TIME):
        stays[column] = stays[column].astype(DATE_DTYPE)
    summary.update(encounters=int(encounters), open_stays=int(open_stays))
    summary.update(frequency=Frequency.DAILY.value, gaps=0, daily_rows=len(daily))
    summary["units"] = sorted(daily[UNIT].unique().tolist())
    if len(daily):
        summary["date_start"] = f"{daily['date'].min():%Y-%m-%d}"
        summary["date_end"] = f"{daily['date'].max():%Y-%m-%d}"
    records = UnitRecords(frame=daily, frequency=Frequency.DAILY, source=path, shape="encounters")
    return ValidationReport(path, problems, summary), records, stays


def _leave_out(connection: Any, conditions: dict[str, str], counts: dict[str, int]) -> tuple[str, dict[str, int]]:
    """The relation of the stays a node counts, and how many it left out by reason (each under its first).

    Nothing to leave out (the usual case) costs nothing more than the strict path's one counting pass;
    otherwise one more pass counts the reasons, and the kept stays are ``t`` filtered in the engine.
    """
    if not any(counts[check] for checks in _LEFT_OUT_CHECKS.values() for check in checks):
        return "t", {}
    reason = (
        "CASE "
        + " ".join(
            f"WHEN {' OR '.join(f'({conditions[c]})' for c in checks)} THEN {quote(name)}"
            for name, checks in _LEFT_OUT_CHECKS.items()
        )
        + " END"
    )
    found = dict(
        connection.execute(
            f"SELECT r, count(*) FROM (SELECT {reason} AS r FROM t) WHERE r IS NOT NULL GROUP BY r"
        ).fetchall()
    )
    left_out = {name: int(found[name]) for name in LEFT_OUT_REASONS if found.get(name)}
    return f"(SELECT * FROM t WHERE ({reason}) IS NULL)", left_out


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _rows(path: Path, fmt: str, ordinals: list[int]) -> dict[int, int]:
    """Spreadsheet rows (header = row 1) of the engine's record ordinals."""
    if fmt == "parquet":
        return {o: o + 1 for o in ordinals}
    lines = lines_of_ordinals(path, [o + 1 for o in ordinals])  # the header is the first non-blank line
    return {o: lines.get(o + 1, o + 1) for o in ordinals}


def _overlap_warning(path: Path, fmt: str, count: int, ordinal: int, patient: Any) -> Problem:
    """The contract's warning: stays that start while the same patient's previous stay is open."""
    return Problem(
        str(path),
        f"{count} stay(s) start while the same patient's previous stay is still open; first here "
        f"(patient {show_value(patient)}); "
        "both are counted in the census until the first is discharged",
        row=_rows(path, fmt, [ordinal])[ordinal],
        column=ADMIT_TIME,
        severity="warning",
    )


def _explain(
    connection: Any, path: Path, fmt: str, conditions: dict[str, str], flagged: dict[str, int]
) -> list[Problem]:
    """The first problems of each kind, in the contract's words, and a count of the rest."""
    examples: dict[str, list[tuple[Any, ...]]] = {}
    for kind, condition in conditions.items():
        if flagged[kind]:
            examples[kind] = connection.execute(
                "SELECT ord, encounter_id, a_text, d_text, admit, discharge, "
                "(SELECT min(ord) FROM t AS f WHERE f.encounter_id = t.encounter_id) AS first_ord "
                f"FROM t WHERE {condition} ORDER BY ord LIMIT {PROBLEMS_PER_CHECK}"
            ).fetchall()
    ordinals = sorted(
        {r[0] for rows in examples.values() for r in rows} | {r[6] for r in examples.get("duplicate", [])}
    )
    row_of = _rows(path, fmt, ordinals)
    messages = {
        "no_id": lambda r: "empty encounter_id; expected an identifier unique to the stay",
        "no_patient": lambda r: "empty patient_id; expected the (pseudonymised) patient identifier",
        "no_unit": lambda r: "empty unit; expected the unit's name or code (e.g. ICU, WARD-3)",
        "no_admit": lambda r: f"empty admit_time; {DATE_EXPECTED}",
        "bad_admit": lambda r: f"{show_value(r[2])} is not a valid date; {DATE_EXPECTED}",
        "bad_discharge": lambda r: f"{show_value(r[3])} is not a valid date; {DATE_EXPECTED}",
        "backwards": lambda r: (
            f"discharge {r[5]:%Y-%m-%d %H:%M} is before admission {r[4]:%Y-%m-%d %H:%M}; "
            "expected discharge at or after admit_time"
        ),
        "duplicate": lambda r: (
            f"duplicate encounter_id {show_value(r[1])}, first at row {row_of[r[6]]}; expected one row per stay"
        ),
    }
    columns = dict(_CHECKS)
    problems: list[Problem] = []
    for kind, rows in examples.items():
        for r in rows:
            problems.append(Problem(str(path), messages[kind](r), row=row_of[r[0]], column=columns[kind]))
        if flagged[kind] > len(rows):
            problems.append(
                Problem(
                    str(path),
                    f"... and {flagged[kind] - len(rows):,} more row(s) with the same problem (not listed)",
                    column=columns[kind],
                )
            )
    return problems
