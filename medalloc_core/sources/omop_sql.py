"""OMOP CDM counted in its database: checks and unit-day counts as SQL in SQLite or PostgreSQL.

The row reader (:mod:`medalloc_core.sources.omop`) pulls whole tables into pandas and checks
them record by record: right for an export folder and for explaining a broken CDM, far too
slow and memory-hungry for a hospital's ten million visits. Here the database does the work
it is built for: it picks the inpatient visits and their ``visit_detail`` rows, joins the
care sites, runs every check as one counting query per table, and aggregates admissions and
discharges per care site and day (``GROUP BY``). Python receives the counts, a few example
records per failed check, the (small) daily table, and the stays themselves, fetched in
batches as typed columns (the node keeps them for patient-level privacy).

It reads a CDM of :data:`SQL_MIN_VISITS` visits or more (below that the row reader is faster
and its memory small). A CDM with any problem is explained by the row reader when it is small enough to hold
(:data:`ROW_READER_MAX_VISITS`), in its words; a bigger one is explained here in the same
words, the first examples of each problem with their table, record id and field, the rest
counted.

The path is taken where the database types make the SQL exact: SQLite (values checked by
their storage class and ISO text) and PostgreSQL with integer ids and ``date``/``timestamp``
columns. Anything else (PostgreSQL text columns, SQLite times with a UTC offset under a site
time zone) is read by the row reader, which handles every case.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from medalloc_core.contract import ADMIT_TIME, DISCHARGE_TIME, ENCOUNTER_ID, PATIENT_ID, UNIT, Frequency, Problem
from medalloc_core.encounters import DATE_DTYPE
from medalloc_core.sources.mapping import OmopMapping
from medalloc_core.sources.stays import PROBLEMS_PER_CHECK, TIME_EXPECTED, show

logger = logging.getLogger(__name__)

VISIT, DETAIL, CARE_SITE = "visit_occurrence", "visit_detail", "care_site"
#: A CDM with a problem and at most this many visits is explained by the row reader (every check, its words).
ROW_READER_MAX_VISITS = 250_000
#: A CDM with at least this many visits is read here; below, the row reader is faster (pandas parses a
#: column of times in one vectorised call where SQLite evaluates an expression per row) and its memory small.
SQL_MIN_VISITS = 1_000_000
#: An SQLite or PostgreSQL CDM with at least this many visits is read first by the streamed scan (omop_scan.py: a
#: clean CDM in one read, faster than the row reader from about this size on: SQLite's 100,000 visits in 1.2 s
#: against 2.2 s); what it hands back goes on as before (this path from SQL_MIN_VISITS, the row reader below). Tiny
#: CDMs stay with the row reader, whose stays name their source rows.
SCAN_MIN_VISITS = 10_000
#: Stays fetched per batch from the database cursor.
FETCH_ROWS = 200_000
_STEM = {VISIT: "visit", DETAIL: "visit_detail"}
_ID = {VISIT: "visit_occurrence_id", DETAIL: "visit_detail_id", CARE_SITE: "care_site_id"}


class _Dialect:
    """How one database spells the few expressions the checks need."""

    name = ""

    def is_int(self, x: str) -> str:
        raise NotImplementedError

    def as_int(self, x: str) -> str:
        raise NotImplementedError

    def prepare(self, x: str, n: str) -> list[str]:
        """Select-list items computed once per row for time column ``x``: ``r{n}`` (raw), ``w{n}`` (parsed), ..."""
        raise NotImplementedError

    def valid(self, n: str) -> str:
        """Over :meth:`prepare`'s columns: a valid date/date-time in range."""
        raise NotImplementedError

    def bad(self, n: str) -> str:
        """Over :meth:`prepare`'s columns: present, not empty text, and not valid."""
        raise NotImplementedError

    def wall_of(self, n: str) -> str:
        """Over :meth:`prepare`'s columns and ``v{n}`` (:meth:`valid` as 1/0): the local wall clock (NULL when
        empty or invalid), sortable."""
        return f"CASE WHEN v{n} = 1 THEN w{n} END"

    def _one(self, x: str) -> str:
        prepared = f"SELECT {', '.join(self.prepare(x, '0'))}"
        return f"(SELECT *, CASE WHEN {self.valid('0')} THEN 1 ELSE 0 END AS v0 FROM ({prepared}) p0) p"

    def time_bad(self, x: str) -> str:
        """:meth:`bad` of one column, as one expression (for the few rows a problem is explained with)."""
        return f"(SELECT {self.bad('0')} FROM {self._one(x)})"

    def wall(self, x: str) -> str:
        """:meth:`wall_of` of one column, as one expression."""
        return f"(SELECT {self.wall_of('0')} FROM {self._one(x)})"

    def day(self, x: str) -> str:
        raise NotImplementedError

    def text(self, x: str) -> str:
        raise NotImplementedError

    def absent(self, x: str, table: str, column: str) -> str:
        """``x`` (qualified by its table's alias) is not among ``table``'s (non-NULL) ``column`` values (as ints)."""
        raise NotImplementedError

    def held(self, subquery: str) -> str:
        """A subquery the planner must compute once (and may index) rather than merge into a join on expressions."""
        return subquery


class _SQLite(_Dialect):
    name = "sqlite"
    _DATE = "'[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]'"

    def is_int(self, x: str) -> str:
        return (
            f"(typeof({x}) = 'integer' OR (typeof({x}) = 'real' AND {x} = CAST({x} AS INTEGER) "
            f"AND abs({x}) < 9e18) OR (typeof({x}) = 'text' AND length(trim({x})) BETWEEN 1 AND 18 "
            f"AND ltrim(trim({x}), '+-') <> '' AND substr(trim({x}), 2) NOT GLOB '*[^0-9]*' "
            f"AND substr(trim({x}), 1, 1) GLOB '[0-9+-]'))"
        )

    def as_int(self, x: str) -> str:
        return f"CASE WHEN {self.is_int(x)} THEN CAST(trim({x}) AS INTEGER) END"

    def _trim(self, x: str) -> str:
        return f"trim({x})"

    def _strip(self, t: str) -> str:
        """The text without a trailing Z or +HH:MM offset: the wall clock as written."""
        return (
            f"(CASE WHEN {t} LIKE '%Z' THEN substr({t}, 1, length({t}) - 1) "
            f"WHEN length({t}) > 16 AND substr({t}, -6, 1) IN ('+', '-') AND substr({t}, -3, 1) = ':' "
            f"THEN substr({t}, 1, length({t}) - 6) ELSE {t} END)"
        )

    def prepare(self, x: str, n: str) -> list[str]:
        # t: the trimmed text; w: its wall clock 'YYYY-MM-DD HH:MM:SS' cut from the text (no offset, whole
        # seconds), by string operations only: a parse per use would dominate the whole read
        text = f"CASE WHEN typeof({x}) = 'text' THEN trim({x}) END"
        return [f"{x} AS r{n}", f"{text} AS t{n}"]

    def wall_of(self, n: str) -> str:
        t = f"t{n}"
        cut = (
            f"CASE WHEN length({t}) = 10 THEN {t} || ' 00:00:00' "
            f"WHEN substr({t}, 17, 1) = ':' THEN replace(substr({t}, 1, 19), 'T', ' ') "
            f"ELSE replace(substr({t}, 1, 16), 'T', ' ') || ':00' END"
        )
        return f"CASE WHEN v{n} = 1 THEN {cut} END"

    def valid(self, n: str) -> str:
        # date(.., "+0 days") normalises 2025-02-30 to 03-02: the date it gives must be the date written; datetime()
        # parses the rest (seconds, fraction, Z or +HH:MM)
        t = f"t{n}"
        return (
            f"coalesce(substr({t}, 1, 10) GLOB {self._DATE} AND substr({t}, 1, 4) BETWEEN '1678' AND '2261' "
            f"AND date(substr({t}, 1, 10), '+0 days') = substr({t}, 1, 10) "
            f"AND (length({t}) = 10 OR (substr({t}, 11, 1) IN (' ', 'T') AND substr({t}, 12, 2) < '24' "
            f"AND substr({t}, 12, 5) GLOB '[0-2][0-9]:[0-5][0-9]' AND datetime({t}) IS NOT NULL)), 0)"
        )

    def bad(self, n: str) -> str:
        return f"(r{n} IS NOT NULL AND coalesce(t{n}, 'x') <> '' AND v{n} = 0)"

    def has_offset(self, x: str) -> str:
        t = self._trim(x)
        return f"(typeof({x}) = 'text' AND {self._strip(t)} <> {t})"

    def day(self, x: str) -> str:
        return f"substr({x}, 1, 10)"

    def text(self, x: str) -> str:
        return f"CAST({x} AS TEXT)"

    def held(self, subquery: str) -> str:
        # SQLite does not flatten a subquery with a LIMIT into its join: it materialises it and builds an
        # automatic index on the join column (a join on computed ids would otherwise be a nested loop)
        return f"{subquery} LIMIT -1"

    def absent(self, x: str, table: str, column: str) -> str:
        # SQLite builds a transient index for IN (subquery); NULLs are filtered so NOT IN means "not among"
        v = self.as_int(f"q.{column}")
        return f"{x} NOT IN (SELECT {v} FROM {table} q WHERE {v} IS NOT NULL)"


class _Postgres(_Dialect):
    name = "postgresql"

    def __init__(self, zone: str, aware: set[str]) -> None:
        self.zone = zone
        self.aware = aware  # columns of type timestamptz

    def is_int(self, x: str) -> str:
        return f"({x} IS NOT NULL)"

    def as_int(self, x: str) -> str:
        return x

    def _local(self, x: str) -> str:
        if x.rpartition(".")[2] in self.aware and self.zone:
            return f"({x} AT TIME ZONE '{self.zone}')"
        return f"CAST({x} AS timestamp)"

    def prepare(self, x: str, n: str) -> list[str]:
        return [f"{x} AS r{n}", f"{self._local(x)} AS w{n}"]

    def valid(self, n: str) -> str:
        return f"coalesce(w{n} BETWEEN '1678-01-01' AND '2261-12-31 23:59:59', false)"

    def bad(self, n: str) -> str:
        return f"(r{n} IS NOT NULL AND v{n} = 0)"

    def day(self, x: str) -> str:
        return f"CAST({x} AS date)"

    def text(self, x: str) -> str:
        return f"CAST({x} AS text)"

    def absent(self, x: str, table: str, column: str) -> str:
        # an anti-join (hash, spilling past work_mem); NOT IN (subquery) is quadratic once it outgrows work_mem
        return f"NOT EXISTS (SELECT 1 FROM {table} q WHERE q.{column} = {x})"


@dataclass
class _Check:
    """One check: the rows it flags (``condition`` over ``source``), how they are named and described."""

    table: str  # the table whose record a problem names
    column: str | Callable[[tuple[Any, ...]], str]
    source: str  # a FROM clause
    condition: str
    values: str  # SQL expressions: record id first, then what the message shows
    message: Callable[[tuple[Any, ...]], str]
    order: str = "1"
    flag: str = ""  # its counter in the one pass over the stays (empty: counted on its own table)


class _Unsupported(Exception):
    """This database is read by the row reader (column types the SQL path does not type exactly)."""


def visit_rows(database: Any) -> int:
    """How many visit_occurrence rows the database holds (0 without that table, or when it cannot say)."""
    if VISIT not in database.names():
        return 0
    from sqlalchemy import func, select
    from sqlalchemy import table as sql_table

    query = select(func.count()).select_from(sql_table(database._names[VISIT], schema=database.schema or None))
    try:
        with database.engine.connect() as connection:
            return int(connection.execute(query).scalar_one())
    except Exception:  # noqa: BLE001 - the reader that follows names the problem
        return 0


def read_omop_sql(
    database: Any, mapping: OmopMapping, *, lenient: bool = False, scan: bool = True, sql: bool = True
) -> tuple[pd.DataFrame | None, list[Problem], dict[str, Any]] | None:
    """Read a CDM database in SQL; None when the row reader should (see the module docstring).

    ``database`` is the opened :class:`medalloc_core.sources.omop._Database`. Returns
    (stays, problems, summary) like ``read_omop``; ``summary["daily"]`` holds the daily
    records counted in the database. ``lenient`` (a node's reading, issue 20): a stay flagged by a
    check on the stays themselves (an unreadable or missing start, an unreadable end, an end before
    its start, a missing, unknown or nameless care site) is left out in the database (a ``WHERE`` on
    the stays, counted in ``summary["left_out"]``), as the row reader's lenient reading leaves it
    out; a CDM whose ids are flagged (an empty, invalid or repeated id or person, a detail of another
    person's or of no visit) is left to that reader, whatever its size (its time and memory, not this
    path's, for that read; docs/privacy.md).

    A clean SQLite or PostgreSQL CDM is first read by one streamed scan (``scan``,
    :mod:`medalloc_core.sources.omop_scan`: the same result, a fraction of the time); what the scan hands back
    is read here (``sql``; False: None, for the row reader).
    """
    if scan:
        from medalloc_core.sources.omop_scan import scan_omop

        scanned = scan_omop(database, mapping, lenient=lenient)
        if scanned is not None or not sql:
            return scanned
    try:
        return _SqlReader(database, mapping, lenient=lenient).run()
    except _Unsupported as exc:
        logger.debug("OMOP %s read by the row reader: %s", database.display, exc)
        return None


class _SqlReader:
    def __init__(self, database: Any, mapping: OmopMapping, *, lenient: bool = False) -> None:
        self.db = database
        self.mapping = mapping
        self.lenient = lenient
        self.keep = ""  # a node's reading: the condition of the stays it leaves out (empty: none)
        self.problems: list[Problem] = []
        self.details: list[tuple[str, str]] = []
        self.summary: dict[str, Any] = {
            "file": database.display,
            "format": f"omop ({database.kind})",
            "shape": "encounters",
            "source": "omop",
            "details": self.details,
        }
        self.quote = database.engine.dialect.identifier_preparer.quote

    # ------------------------------------------------------------------ plumbing
    def _rows(self, sql: str) -> list[tuple[Any, ...]]:
        from medalloc_core.sources.omop import _db_errors_in_one_line

        with _db_errors_in_one_line(self.db.display), self.db.engine.connect() as connection:
            return [tuple(r) for r in connection.exec_driver_sql(sql)]

    def _table(self, name: str) -> str:
        actual = self.db._names[name]
        schema = self.db.schema
        return f"{self.quote(schema)}.{self.quote(actual)}" if schema else self.quote(actual)

    def _columns(self, name: str) -> dict[str, Any]:
        from medalloc_core.sources.omop import _db_errors_in_one_line

        with _db_errors_in_one_line(self.db.display):  # a lock or statement timeout here too
            columns = self.db._inspector.get_columns(self.db._names[name], schema=self.db.schema or None)
        return {str(c["name"]).lower(): c for c in columns}

    def _col(self, table: str, column: str, alias: str = "") -> str:
        quoted = self.quote(str(self.cols[table][column]["name"]))
        return f"{alias}.{quoted}" if alias else quoted

    def _add(
        self, message: str, *, record: str | None = None, column: str | None = None, severity: str = "error"
    ) -> None:
        self.problems.append(Problem(self.db.display, message, column=column, record=record, severity=severity))  # type: ignore[arg-type]

    @property
    def has_errors(self) -> bool:
        return any(p.severity == "error" for p in self.problems)

    # ------------------------------------------------------------------ steps
    def run(self) -> tuple[pd.DataFrame | None, list[Problem], dict[str, Any]] | None:
        from medalloc_core.sources.omop import OPTIONAL, REQUIRED

        names = self.db.names()
        if VISIT not in names:
            raise _Unsupported("no visit_occurrence table")
        level = self.mapping.level
        if level == "auto":
            level = "visit_detail" if DETAIL in names else "visit_occurrence"
        if level == "visit_detail" and DETAIL not in names:
            raise _Unsupported("no visit_detail table")
        tables = [VISIT] + ([DETAIL] if level == "visit_detail" else []) + ([CARE_SITE] if CARE_SITE in names else [])
        self.cols = {t: self._columns(t) for t in tables}
        for table in tables:
            if any(c not in self.cols[table] for c in REQUIRED[table]):
                raise _Unsupported(f"{table} lacks a required column")
        if self.mapping.unit_name != "care_site_id" and (
            CARE_SITE not in names or self.mapping.unit_name not in self.cols[CARE_SITE]
        ):
            raise _Unsupported("no care_site column to name units")
        self.dialect = self._dialect(tables)
        self.level = level
        self.summary["level"] = level
        self.tables = tables
        self.optional = {t: [c for c in OPTIONAL[t] if c in self.cols[t]] for t in tables}

        counts = self._table_counts()
        self.details.append(("tables", ", ".join(f"{t} {counts[t]:,}" for t in tables) + " rows"))
        concept_counts = self._concepts()
        if self._run_checks(counts[VISIT]) is None:
            return None
        if self.has_errors:
            return None, self.problems, self.summary
        if not self._inpatient_present(concept_counts):
            return None, self.problems, self.summary
        daily = self._daily()
        stays = self._fetch_stays()
        self.summary["encounters"] = len(stays)
        self.summary["open_stays"] = int(stays[DISCHARGE_TIME].isna().sum())
        if stays.empty and self.lenient:  # a node: no stay left is zero stays on its declared calendar
            self._add(
                "no inpatient stay in any unit: the node counts zero stays (check the mapping: docs/data.md)",
                severity="warning",
            )
            self.summary.update(frequency=Frequency.DAILY.value, gaps=0, daily_rows=0, units=[], daily=daily)
            return stays, self.problems, self.summary
        if stays.empty:
            self._add("no inpatient stay in any unit; expected at least one (check the mapping: docs/data.md)")
            return None, self.problems, self.summary
        self._warn_overlaps(stays)
        self.summary.update(frequency=Frequency.DAILY.value, gaps=0, daily_rows=len(daily))
        self.summary["units"] = sorted(daily[UNIT].unique().tolist())
        self.summary["date_start"] = f"{daily['date'].min():%Y-%m-%d}"
        self.summary["date_end"] = f"{daily['date'].max():%Y-%m-%d}"
        self.summary["daily"] = daily
        return stays, self.problems, self.summary

    def _dialect(self, tables: list[str]) -> _Dialect:
        if self.db.kind == "sqlite":
            dialect = _SQLite()
            if self.mapping.timezone:  # offsets converted to the site's zone: the row reader does it exactly
                for table in (t for t in tables if t != CARE_SITE):
                    for column in (c for c in self.cols[table] if c.endswith("_datetime") or c.endswith("_date")):
                        x = self._col(table, column)
                        found = self._rows(f"SELECT 1 FROM {self._table(table)} WHERE {dialect.has_offset(x)} LIMIT 1")
                        if found:
                            raise _Unsupported("times with a UTC offset and a site time zone")
            return dialect
        from sqlalchemy import types

        aware: set[str] = set()
        for table in tables:
            for name, column in self.cols[table].items():
                kind = column["type"]
                if name.endswith("_id"):
                    if name in (*_ID.values(), "person_id", "visit_concept_id") and not isinstance(kind, types.Integer):
                        raise _Unsupported(f"{table}.{name} is not an integer column")
                elif name.endswith("_date") or name.endswith("_datetime"):
                    if not isinstance(kind, types.Date | types.DateTime):
                        raise _Unsupported(f"{table}.{name} is not a date or timestamp column")
                    if isinstance(kind, types.DateTime) and getattr(kind, "timezone", False):
                        aware.add(self._col(table, name))
        return _Postgres(self.mapping.timezone, aware)

    def _table_counts(self) -> dict[str, int]:
        parts = [f"(SELECT count(*) FROM {self._table(t)})" for t in self.tables]
        row = self._rows("SELECT " + ", ".join(parts))[0]
        return {t: int(n) for t, n in zip(self.tables, row, strict=True)}

    def _concepts(self) -> list[tuple[int | None, int]]:
        d = self.dialect
        concept = d.as_int(self._col(VISIT, "visit_concept_id"))
        return [
            (None if c is None else int(c), int(n))
            for c, n in self._rows(
                f"SELECT {concept}, count(*) FROM {self._table(VISIT)} GROUP BY 1 ORDER BY 2 DESC, 1"
            )
        ]

    def _inpatient_present(self, concepts: list[tuple[int | None, int]]) -> bool:
        wanted_set = set(self.mapping.inpatient_visit_concepts)
        total = sum(n for _, n in concepts)
        inpatient = sum(n for c, n in concepts if c in wanted_set)
        other = [(c, n) for c, n in concepts if c is not None and c not in wanted_set]
        wanted = ", ".join(map(str, self.mapping.inpatient_visit_concepts))
        self.details.insert(1, ("inpatient visits", f"{inpatient:,} of {total:,} (visit_concept_id in {wanted})"))
        if other:
            shown = ", ".join(f"{k}: {v:,}" for k, v in other[:6])
            self.details.insert(2, ("left out", f"{sum(n for _, n in other):,} visits of other concepts ({shown})"))
        if inpatient:
            return True
        found = ", ".join(f"{k} ({v:,} visits)" for k, v in other[:6]) or "none"
        self._add(
            f"no {VISIT} row has an inpatient visit_concept_id ({wanted}); found {found}; "
            "set [omop] inpatient-visit-concepts in the mapping file if your site codes them differently",
            record=f"table {VISIT}",
            column="visit_concept_id",
        )
        return False

    # ------------------------------------------------------------------ relations
    def _concept_list(self) -> str:
        return ", ".join(str(int(c)) for c in self.mapping.inpatient_visit_concepts)

    def _normal(self, table: str) -> str:
        """The table with typed ids (NULL when invalid), each stay time's local wall clock (NULL when empty or
        invalid) and flags: ``sdt``/``edt`` the time came from the ``*_datetime`` column, ``bsd``/``bst``/``bed``/
        ``bet`` the start/end date/datetime is invalid, ``nos`` no start at all."""
        d = self.dialect
        stem = _STEM[table]
        inner = [
            f"{d.as_int(self._col(table, _ID[table]))} AS id",
            f"{d.as_int(self._col(table, 'person_id'))} AS person",
        ]
        if table == VISIT:
            inner.append(f"{d.as_int(self._col(table, 'visit_concept_id'))} AS concept")
            outer = ["id", "person", "concept"]
        else:
            inner.append(f"{d.as_int(self._col(table, 'visit_occurrence_id'))} AS parent")
            outer = ["id", "person", "parent"]
        site = self._col(table, "care_site_id") if "care_site_id" in self.cols[table] else None
        inner.append(f"{d.as_int(site)} AS site" if site else "NULL AS site")
        outer.append("site")
        slots: dict[str, str] = {}
        for which in ("start", "end"):
            for kind in ("date", "datetime"):
                column = f"{stem}_{which}_{kind}"
                if column in self.cols[table]:
                    slots[column] = _slot(column)[1:]
                    inner += d.prepare(self._col(table, column), slots[column])
        for which in ("start", "end"):
            time_col, date_col = f"{stem}_{which}_datetime", f"{stem}_{which}_date"
            walls = [d.wall_of(slots[c]) for c in (time_col, date_col) if c in slots]
            value = "NULL" if not walls else walls[0] if len(walls) == 1 else f"coalesce({', '.join(walls)})"
            outer.append(f"{value} AS {which[0]}")
            flag = f"CASE WHEN {walls[0]} IS NOT NULL THEN 1 ELSE 0 END" if time_col in slots else "0"
            outer.append(f"{flag} AS {which[0]}dt")
        for column in (f"{stem}_start_date", f"{stem}_start_datetime", f"{stem}_end_date", f"{stem}_end_datetime"):
            bad = f"CASE WHEN {d.bad(slots[column])} THEN 1 ELSE 0 END" if column in slots else "0"
            outer.append(f"{bad} AS {_slot(column)}")
        starts = [slots[c] for c in (f"{stem}_start_date", f"{stem}_start_datetime") if c in slots]
        empty = " AND ".join(f"{d.wall_of(n)} IS NULL" for n in starts) or "1 = 1"
        any_bad = " OR ".join(d.bad(n) for n in starts) or "1 = 0"
        outer.append(f"CASE WHEN ({empty}) AND NOT ({any_bad}) THEN 1 ELSE 0 END AS nos")
        # held: each row's times parsed once, not once per use in the outer expressions
        # held, twice: each time parsed and checked once per row, not once per use in the expressions above
        held = d.held(f"SELECT {', '.join(inner)} FROM {self._table(table)}")
        checked = ", ".join(f"CASE WHEN {d.valid(n)} THEN 1 ELSE 0 END AS v{n}" for n in slots.values())
        middle = d.held(f"SELECT x.*{', ' + checked if checked else ''} FROM ({held}) x")
        return f"SELECT {', '.join(outer)} FROM ({middle}) y"

    def _stays_sql(self) -> str:
        """One row per stay: tbl (0 visit_detail, 1 visit), id, person, site, a, e (local wall clocks), adt, edt."""
        visits = f"SELECT * FROM ({self._normal(VISIT)}) v WHERE concept IN ({self._concept_list()})"
        if self.level == "visit_detail":
            return (
                f"WITH ip AS MATERIALIZED ({visits}), d AS MATERIALIZED ({self._normal(DETAIL)}) "
                "SELECT 0 AS tbl, d.id, d.person, d.site, d.s AS a, d.e AS e, d.sdt AS adt, d.edt AS edt, "
                "d.bsd, d.bst, d.bed, d.bet, d.nos FROM d JOIN ip ON d.parent = ip.id "
                "UNION ALL SELECT 1, ip.id, ip.person, ip.site, ip.s, ip.e, ip.sdt, ip.edt, "
                "ip.bsd, ip.bst, ip.bed, ip.bet, ip.nos FROM ip "
                f"WHERE {self.dialect.absent('ip.id', 'd', 'parent')}"
            )
        return (
            f"WITH ip AS ({visits}) SELECT 1 AS tbl, id, person, site, s AS a, e, sdt AS adt, edt, "
            "bsd, bst, bed, bet, nos FROM ip"
        )

    def _units_sql(self) -> str:
        """The stays with ``name`` (their unit before [omop] units) and ``known`` (their care site exists)."""
        d = self.dialect
        hospital = self.mapping.hospital_unit.replace("'", "''")
        if self.mapping.unit_name == "care_site_id":
            return (
                f"SELECT s.*, CASE WHEN s.site IS NULL THEN '{hospital}' ELSE {d.text('s.site')} END AS name, "
                "1 AS known FROM stays s"
            )
        name = f"nullif(trim({d.text(self._col(CARE_SITE, self.mapping.unit_name))}), '')"
        site_id = d.as_int(self._col(CARE_SITE, "care_site_id"))
        sites = self.dialect.held(f"SELECT {site_id} AS id, {name} AS name FROM {self._table(CARE_SITE)}")
        return (
            f"SELECT s.*, CASE WHEN s.site IS NULL THEN '{hospital}' ELSE c.name END AS name, "
            f"CASE WHEN c.id IS NULL THEN 0 ELSE 1 END AS known FROM stays s LEFT JOIN ({sites}) c ON c.id = s.site"
        )

    # ------------------------------------------------------------------ checks
    def _record(self, table: str) -> Callable[[Any], str]:
        return lambda v: f"table {table}, {_ID[table]} {'(empty)' if v is None else v}"

    def _rows_of(self, table: str, where: str = "") -> str:
        """A FROM clause: ``table`` as alias ``t`` (``where`` over alias ``o``, the same table)."""
        if not where:
            return f"{self._table(table)} t"
        return f"(SELECT o.* FROM {self._table(table)} o WHERE {where}) t"

    def _id_checks(self, table: str, column: str, *, required: bool, unique: bool = False) -> list[_Check]:
        d = self.dialect
        x = self._col(table, column, "t")
        key = d.as_int(self._col(table, _ID[table], "t"))
        source = self._rows_of(table)
        checks = [
            _Check(
                table,
                column,
                source,
                f"{x} IS NOT NULL AND NOT {d.is_int(x)}",
                f"{key}, {x}",
                lambda r: f"{show(r[1])} is not a whole number; expected an integer id",
            )
        ]
        if required:
            checks.append(
                _Check(table, column, source, f"{x} IS NULL", key, _fixed(f"empty {column}; expected an integer id"))
            )
        if unique:
            inner = d.as_int(self._col(table, column, "o"))
            repeated = (
                f"(SELECT {inner} AS v FROM {self._table(table)} o WHERE {inner} IS NOT NULL "
                "GROUP BY 1 HAVING count(*) > 1)"
            )
            checks.append(
                _Check(
                    table,
                    column,
                    f"{source} JOIN {repeated} r ON r.v = {d.as_int(x)}",
                    "1=1",
                    key,
                    lambda r: (
                        f"{column} {r[0]} appears more than once (first at table {table}, {_ID[table]} {r[0]}); "
                        "expected one row per id"
                    ),
                )
            )
        return checks

    def _time_checks(self, table: str, where: str) -> list[_Check]:
        d = self.dialect
        stem = _STEM[table]
        key = d.as_int(self._col(table, _ID[table], "t"))
        source = self._rows_of(table, where)
        checks = []
        for which in ("start", "end"):
            present = [c for c in (f"{stem}_{which}_date", f"{stem}_{which}_datetime") if c in self.cols[table]]
            for column in present:
                x = self._col(table, column, "t")
                checks.append(
                    _Check(
                        table,
                        column,
                        source,
                        d.time_bad(x),
                        f"{key}, {x}",
                        lambda r: f"{show(r[1])} is not a valid date or date-time; {TIME_EXPECTED}",
                        flag=_slot(column),
                    )
                )
            if which == "start":
                date_col, time_col = f"{stem}_start_date", f"{stem}_start_datetime"
                shown = time_col if time_col in self.cols[table] else date_col
                empty = " AND ".join(f"{d.wall(self._col(table, c, 't'))} IS NULL" for c in present)
                bad = " OR ".join(d.time_bad(self._col(table, c, "t")) for c in present)
                checks.append(
                    _Check(
                        table,
                        shown,
                        source,
                        f"({empty}) AND NOT ({bad})",
                        key,
                        _fixed(f"empty {time_col} and {date_col}; expected when the stay began ({TIME_EXPECTED})"),
                        flag="nos",
                    )
                )
        return checks

    def _checks(self) -> list[_Check]:
        d = self.dialect
        visits = self._table(VISIT)
        inpatient = f"{d.as_int(self._col(VISIT, 'visit_concept_id', 'o'))} IN ({self._concept_list()})"
        checks = self._id_checks(VISIT, "visit_occurrence_id", required=True, unique=True)
        checks += self._id_checks(VISIT, "person_id", required=True)
        checks += self._id_checks(VISIT, "visit_concept_id", required=True)
        if self.level == "visit_detail":
            checks += self._id_checks(DETAIL, "visit_detail_id", required=True, unique=True)
            checks += self._id_checks(DETAIL, "person_id", required=True)
            checks += self._id_checks(DETAIL, "visit_occurrence_id", required=True)
            if "care_site_id" in self.cols[DETAIL]:
                checks += self._id_checks(DETAIL, "care_site_id", required=False)
            parent = d.as_int(self._col(DETAIL, "visit_occurrence_id", "t"))
            key = d.as_int(self._col(DETAIL, "visit_detail_id", "t"))
            v_col = self._col(VISIT, "visit_occurrence_id")
            checks.append(
                _Check(
                    DETAIL,
                    "visit_occurrence_id",
                    self._rows_of(DETAIL),
                    f"{parent} IS NOT NULL AND {d.absent(parent, visits, v_col)}",
                    f"{key}, {parent}",
                    lambda r: (
                        f"visit_occurrence_id {r[1]} is not in {VISIT}; expected the visit this detail belongs to"
                    ),
                )
            )
            v_id = d.as_int(self._col(VISIT, "visit_occurrence_id", "o"))
            v_person = d.as_int(self._col(VISIT, "person_id", "o"))
            ip = d.held(f"SELECT {v_id} AS id, {v_person} AS person FROM {visits} o WHERE {inpatient}")
            person = d.as_int(self._col(DETAIL, "person_id", "t"))
            checks.append(
                _Check(
                    DETAIL,
                    "person_id",
                    f"{self._rows_of(DETAIL)} JOIN ({ip}) pv ON pv.id = {parent}",
                    f"{person} IS NOT NULL AND pv.person IS NOT NULL AND {person} <> pv.person",
                    f"{key}, {person}, pv.person",
                    lambda r: f"person_id {r[1]} differs from its visit's ({r[2]}); expected the same person",
                )
            )
        if "care_site_id" in self.cols[VISIT]:  # as the row reader: every visit's (stricter than needed: safe)
            checks += self._id_checks(VISIT, "care_site_id", required=False)
        if self.mapping.unit_name != "care_site_id":
            checks += self._id_checks(CARE_SITE, "care_site_id", required=True, unique=True)
        return checks

    def _alone(self) -> str:
        """Over alias ``o`` of visit_occurrence: the inpatient visits that are stays themselves (no visit_detail)."""
        d = self.dialect
        inpatient = f"{d.as_int(self._col(VISIT, 'visit_concept_id', 'o'))} IN ({self._concept_list()})"
        if self.level != "visit_detail":
            return inpatient
        v_id = d.as_int(self._col(VISIT, "visit_occurrence_id", "o"))
        return f"{inpatient} AND {d.absent(v_id, self._table(DETAIL), self._col(DETAIL, 'visit_occurrence_id'))}"

    def _unit_checks(self) -> list[_Check]:
        """Checks on the stays' care sites (the stays relation must be valid: run after the others pass)."""
        stays = f"(WITH stays AS ({self._stays_sql()}) {self._units_sql()}) u"
        table_of = {0: DETAIL, 1: VISIT}
        checks = []
        if self.mapping.missing_care_site == "refuse":
            checks.append(
                _Check(
                    "",
                    "care_site_id",
                    stays,
                    "site IS NULL",
                    "id, tbl",
                    lambda r: (
                        f"empty care_site_id; expected the care site (unit) of this stay in {table_of[r[1]]} "
                        "(or set [omop] missing-care-site = 'hospital' to count such stays in one hospital-wide unit)"
                    ),
                    order="2, 1",
                    flag="refuse",
                )
            )
        if self.mapping.unit_name != "care_site_id":
            checks.append(
                _Check(
                    "",
                    "care_site_id",
                    stays,
                    "site IS NOT NULL AND known = 0",
                    "id, tbl, site",
                    lambda r: f"care_site_id {r[2]} is not in {CARE_SITE}; expected a care_site_id of that table",
                    order="2, 1",
                    flag="unknown",
                )
            )
            column = self.mapping.unit_name
            checks.append(
                _Check(
                    "",
                    "care_site_id",
                    stays,
                    "site IS NOT NULL AND known = 1 AND name IS NULL",
                    "id, tbl, site",
                    lambda r: f"care site {r[2]} has an empty {column}; expected a name for the unit",
                    order="2, 1",
                    flag="nameless",
                )
            )
        checks.append(
            _Check(
                "",
                lambda r: f"{_STEM[table_of[r[1]]]}_end_{'datetime' if r[5] else 'date'}",
                stays,
                "e < a",
                "id, tbl, a, e, adt, edt",
                lambda r: (
                    f"ends {pd.Timestamp(r[3]):%Y-%m-%d %H:%M} before it begins {pd.Timestamp(r[2]):%Y-%m-%d %H:%M}; "
                    "expected the end at or after the start"
                ),
                order="2, 1",
                flag="back",
            )
        )
        for check in checks:
            if check.table == "":
                check.table = "stays"
        return checks

    def _count(self, checks: list[_Check]) -> list[int]:
        if not checks:
            return []
        # one scan per FROM clause, every check on it a conditional sum
        sources = list(dict.fromkeys(c.source for c in checks))
        found: dict[int, int] = {}
        for source in sources:
            mine = [i for i, c in enumerate(checks) if c.source == source]
            sums = ", ".join(f"coalesce(sum(CASE WHEN {checks[i].condition} THEN 1 ELSE 0 END), 0)" for i in mine)
            row = self._rows(f"SELECT {sums} FROM {source}")[0]
            found.update({i: int(n) for i, n in zip(mine, row, strict=True)})
        return [found[i] for i in range(len(checks))]

    def _run_checks(self, visits: int) -> bool | None:
        """Count every check in the database; explain the flagged ones. None: the row reader should explain."""
        checks = self._checks()
        counts = self._count(checks)
        if not any(counts):  # the stays are well formed: one pass counts everything about them
            checks = self._stay_checks()
            counts = self._stay_pass(checks)
            if any(counts) and self.lenient:  # a node: the flagged stays left out here, in the database
                counts = self._leave_out(checks, counts)
        if any(counts):
            if visits <= ROW_READER_MAX_VISITS or self.lenient:  # a node: the row reader leaves ids' records out
                return None
            for check, count in zip(checks, counts, strict=True):
                if count:
                    self._explain(check, count)
            return False
        self._stay_summary()
        return True

    def _stay_checks(self) -> list[_Check]:
        """The checks counted in the one pass over the stays: their times, then their care sites."""
        checks: list[_Check] = []
        if self.level == "visit_detail":
            d = self.dialect
            w_id = d.as_int(self._col(VISIT, "visit_occurrence_id", "w"))
            w_inpatient = f"{d.as_int(self._col(VISIT, 'visit_concept_id', 'w'))} IN ({self._concept_list()})"
            o_parent = d.as_int(self._col(DETAIL, "visit_occurrence_id", "o"))
            used = f"{o_parent} IN (SELECT {w_id} FROM {self._table(VISIT)} w WHERE {w_inpatient})"
            checks += [replace(c, flag=f"0{c.flag}") for c in self._time_checks(DETAIL, used)]
        checks += [replace(c, flag=f"1{c.flag}") for c in self._time_checks(VISIT, self._alone())]
        return checks + self._unit_checks()

    def _leave_out(self, checks: list[_Check], counts: list[int]) -> list[int]:
        """A node's reading: the stays the flagged checks name are left out (``self.keep``), the stays counted
        again without them, and how many went into ``summary["left_out"]`` (the row reader's one number)."""
        conditions = _stay_conditions()
        flagged = [c.flag for c, n in zip(checks, counts, strict=True) if n]
        before = self.stay_counts["tbl0"] + self.stay_counts["tbl1"]
        self.keep = " OR ".join(f"({conditions[f]})" for f in flagged)
        again = self._stay_pass(checks)
        self.summary["left_out"] = before - (self.stay_counts["tbl0"] + self.stay_counts["tbl1"])
        return again

    def _kept_sql(self) -> str:
        """The stays with their units (``_units_sql``) a node counts: without those ``self.keep`` names."""
        units = self._units_sql()
        # CASE, not NOT: a condition that is NULL (an open stay's end) leaves nothing out
        return f"SELECT * FROM ({units}) k WHERE CASE WHEN {self.keep} THEN 0 ELSE 1 END = 1" if self.keep else units

    def _stay_pass(self, checks: list[_Check]) -> list[int]:
        """Every stay check, the stays per table and those without a care site, in one query over the stays."""
        conditions = _stay_conditions()
        extra = {
            "tbl0": "tbl = 0",
            "tbl1": "tbl = 1",
            "nosite0": "tbl = 0 AND site IS NULL",
            "nosite1": "tbl = 1 AND site IS NULL",
        }
        wanted = [c.flag for c in checks] + list(extra)
        sums = ", ".join(
            f"coalesce(sum(CASE WHEN {conditions.get(f) or extra[f]} THEN 1 ELSE 0 END), 0)" for f in wanted
        )
        zeros = ", ".join("0" for _ in wanted)
        # the checks' counters and the unit-day counts in one pass: admissions grouped by care site and day
        # carry the counters (each stay is admitted once), discharges are a second grouping of the same rows
        d = self.dialect
        by_site = "CASE WHEN site IS NULL THEN '<NA>' ELSE " + d.text("site") + " END" if self.mapping.units else "''"
        rows = self._rows(
            f"WITH stays AS ({self._stays_sql()}), u AS MATERIALIZED ({self._kept_sql()}) "
            f"SELECT name, {by_site}, 0, {d.day('a')}, count(*), {sums} FROM u GROUP BY 1, 2, 4 "
            f"UNION ALL SELECT name, {by_site}, 1, {d.day('e')}, count(*), {zeros} FROM u "
            "WHERE e IS NOT NULL GROUP BY 1, 2, 4"
        )
        frame = pd.DataFrame(rows, columns=["name", "site", "kind", "day", "n", *wanted])
        totals = [int(frame[f].sum()) for f in wanted]
        self.stay_counts = dict(zip(list(extra), totals[len(checks) :], strict=True))
        self.events = frame[["name", "site", "kind", "day", "n"]]
        return totals[: len(checks)]

    def _explain(self, check: _Check, count: int) -> None:
        rows = self._rows(
            f"SELECT {check.values} FROM {check.source} WHERE {check.condition} ORDER BY {check.order} "
            f"LIMIT {PROBLEMS_PER_CHECK}"
        )
        table_of = {0: DETAIL, 1: VISIT}
        for row in rows:
            if check.table == "stays":
                record = f"table {table_of[row[1]]}, {_ID[table_of[row[1]]]} {row[0]}"
            else:
                record = self._record(check.table)(row[0])
            field = check.column(row) if callable(check.column) else check.column
            self._add(check.message(row), record=record, column=field)
        if count > len(rows):
            first = rows[0] if rows else ()
            named = check.column(first) if callable(check.column) and first else check.column
            self._add(
                f"... and {count - len(rows):,} more record(s) with the same problem (not listed)",
                column=named if isinstance(named, str) else None,
            )

    def _stay_summary(self) -> None:
        """The stays' origin (the summary's lines) and the warning about stays without a care site."""
        c = self.stay_counts
        by_table = {0: (c["tbl0"], c["nosite0"]), 1: (c["tbl1"], c["nosite1"])}
        if self.level == "visit_detail":
            self.details.append(("stays", f"{by_table.get(0, (0, 0))[0]:,} visit_detail rows of inpatient visits"))
            if by_table.get(1, (0, 0))[0]:
                self.details.append(("stays (also)", f"{by_table[1][0]:,} inpatient visits without visit_detail"))
        elif by_table.get(1, (0, 0))[0]:
            self.details.append(("stays", f"{by_table[1][0]:,} inpatient visits"))
        missing = sum(m for _, m in by_table.values())
        total = sum(n for n, _ in by_table.values())
        if self.mapping.missing_care_site != "hospital" or not missing:
            return
        first = self._first_without_site()
        table = {0: DETAIL, 1: VISIT}[first[1]]
        hospital = self.mapping.hospital_unit
        self._add(
            f"{int(missing):,} of {int(total):,} stay(s) have no care_site_id; they are counted in one "
            f"hospital-wide unit {hospital!r} (first here; set [omop] missing-care-site = 'refuse' to refuse "
            "them, or hospital-unit to name that unit)",
            record=f"table {table}, {_ID[table]} {first[0]}",
            column="care_site_id",
            severity="warning",
        )
        self.details.append(("hospital-wide", f"{int(missing):,} stays without a care site, in {hospital!r}"))

    def _first_without_site(self) -> tuple[Any, int]:
        """(id, tbl) of the first stay without a care site, in (tbl, id) order."""
        row = self._rows(
            f"WITH stays AS ({self._stays_sql()}) SELECT id, tbl FROM stays WHERE site IS NULL ORDER BY tbl, id LIMIT 1"
        )[0]
        return row[0], int(row[1])

    # ------------------------------------------------------------------ counting
    def _unit_of(self, names: pd.Series, sites: pd.Series) -> pd.Series:
        """[omop] units applied to (name, care site id); NaN = not a unit."""
        if not self.mapping.units:
            return names.astype(object)
        units = {str(k): v for k, v in self.mapping.units.items()}
        mapped = names.map(units)
        return mapped.where(mapped.notna(), sites.map(units))

    def _daily(self) -> pd.DataFrame:
        """Admissions and discharges per care site and day (counted by the database); census and the grid here."""
        events = self.events.copy()  # counted by the database in the checks' pass
        events["unit"] = self._unit_of(events["name"], events["site"])
        outside = events[events["unit"].isna() & events["kind"].eq(0)]
        if len(outside):
            counts = outside.groupby("name")["n"].sum().sort_values(ascending=False, kind="stable")
            shown = ", ".join(f"{k}: {v:,}" for k, v in counts.head(6).items())
            self.details.append(
                ("not a unit", f"{int(counts.sum()):,} stays in care sites not in [omop] units ({shown})")
            )
        events = events[events["unit"].notna()]
        events["day"] = pd.to_datetime(events["day"].astype(str)).astype(DATE_DTYPE)
        return daily_from_events(events)

    def _fetch_stays(self) -> pd.DataFrame:
        """The stays in the units, fetched in batches as typed columns."""
        d = self.dialect
        by_site = "CASE WHEN site IS NULL THEN '<NA>' ELSE " + d.text("site") + " END"
        sql = (
            f"WITH stays AS ({self._stays_sql()}), u AS ({self._kept_sql()}) "
            f"SELECT tbl, id, person, name, {by_site}, a, e, adt FROM u ORDER BY tbl, id"
        )
        from medalloc_core.sources.omop import _db_errors_in_one_line

        parts: list[pd.DataFrame] = []
        with _db_errors_in_one_line(self.db.display), self.db.engine.connect() as connection:
            result = connection.execution_options(stream_results=True, yield_per=FETCH_ROWS).exec_driver_sql(sql)
            for batch in result.partitions(FETCH_ROWS):
                frame = pd.DataFrame(batch, columns=["tbl", "id", "person", "name", "site", "a", "e", "adt"])
                frame["unit"] = self._unit_of(frame["name"].astype(object), frame["site"])
                frame = frame[frame["unit"].notna()]
                parts.append(
                    pd.DataFrame(
                        {
                            "tbl": frame["tbl"].to_numpy(dtype="int8"),
                            "adt": frame["adt"].to_numpy(dtype="int8"),
                            "id": frame["id"].to_numpy(dtype="int64"),
                            PATIENT_ID: frame["person"].to_numpy(dtype="int64"),
                            UNIT: frame["unit"].astype("category"),
                            ADMIT_TIME: _times(frame["a"]),
                            DISCHARGE_TIME: _times(frame["e"]),
                        }
                    )
                )
        if not parts:
            return pd.DataFrame({c: pd.Series(dtype=object) for c in (ENCOUNTER_ID, PATIENT_ID, UNIT)}).assign(
                **{ADMIT_TIME: pd.Series(dtype=DATE_DTYPE), DISCHARGE_TIME: pd.Series(dtype=DATE_DTYPE)}
            )
        stays = pd.concat(parts, ignore_index=True)
        prefix = np.where(stays["tbl"].to_numpy() == 0, "visit_detail ", "visit_occurrence ")
        self.admit_from_datetime = stays["adt"].to_numpy()  # which field a warning about the admission names
        out = pd.DataFrame(
            {
                ENCOUNTER_ID: pd.Series(prefix).astype(str) + stays["id"].astype(str),
                PATIENT_ID: stays[PATIENT_ID].astype(str),
                UNIT: stays[UNIT].astype(str),
                ADMIT_TIME: stays[ADMIT_TIME],
                DISCHARGE_TIME: stays[DISCHARGE_TIME],
            }
        )
        return out

    def _warn_overlaps(self, stays: pd.DataFrame) -> None:
        """A patient in two units at once (the row reader's warning, same words)."""
        found = self._overlaps(stays)
        if found is None:
            return
        count, position = found
        kind, _, ident = str(stays[ENCOUNTER_ID].iat[position]).partition(" ")
        stem = _STEM[kind]
        has_time = bool(self.admit_from_datetime[position])
        self._add(
            f"{count} stay(s) begin while the same patient's previous stay is still open; first here; "
            "both are counted in the census until the first ends",
            record=f"table {kind}, {_ID[kind]} {ident}",
            column=f"{stem}_start_{'datetime' if has_time else 'date'}",
            severity="warning",
        )

    def _overlaps(self, stays: pd.DataFrame) -> tuple[int, int] | None:
        """How many stays begin while the same patient's previous one is open, and the position of the first in
        (patient, admission) order; None when none does."""
        ordered = stays.sort_values([PATIENT_ID, ADMIT_TIME], kind="stable")
        previous_end = ordered.groupby(PATIENT_ID)[DISCHARGE_TIME].shift(1)
        same = ordered[PATIENT_ID].eq(ordered[PATIENT_ID].shift(1))
        overlap = same & (previous_end.isna() | (previous_end > ordered[ADMIT_TIME]))
        if not overlap.any():
            return None
        label = overlap.index[overlap.to_numpy()][0]
        return int(overlap.sum()), int(stays.index.get_loc(label))


def _stay_conditions() -> dict[str, str]:
    """Each stay check's condition over the stays with their units (by the check's flag)."""
    conditions = {
        "back": "e < a",
        "refuse": "site IS NULL",
        "unknown": "site IS NOT NULL AND known = 0",
        "nameless": "site IS NOT NULL AND known = 1 AND name IS NULL",
    }
    for table in ("0", "1"):
        for flag in ("bsd", "bst", "bed", "bet", "nos"):
            conditions[table + flag] = f"tbl = {table} AND {flag} = 1"
    return conditions


def _fixed(text: str) -> Callable[[tuple[Any, ...]], str]:
    """A message that names no value of the record."""
    return lambda row: text


def _slot(column: str) -> str:
    """The stays' flag of a time column: ``bsd``/``bst``/``bed``/``bet`` (start/end, date/datetime)."""
    which = "s" if "_start_" in column else "e"
    return f"b{which}{'t' if column.endswith('_datetime') else 'd'}"


def _times(values: pd.Series) -> np.ndarray:
    """Database times (SQLite text 'YYYY-MM-DD HH:MM:SS.SSS', PostgreSQL datetime) as datetime64[ns]."""
    if values.empty:
        return np.array([], dtype=DATE_DTYPE)
    if values.map(lambda v: isinstance(v, str)).any():
        return pd.to_datetime(values, format="%Y-%m-%d %H:%M:%S").astype(DATE_DTYPE).to_numpy()
    return pd.to_datetime(values).astype(DATE_DTYPE).to_numpy()


def daily_from_events(events: pd.DataFrame) -> pd.DataFrame:
    """Daily unit records from event counts (``unit``, ``kind`` 0 admission / 1 discharge, ``day``, ``n``).

    The same records as :func:`medalloc_core.encounters.encounters_to_daily` on the stays
    behind the counts (tested against it): every day from a unit's first admission to the last
    admission or discharge day, census at the midnight closing the day.
    """
    from medalloc_core.encounters import _empty

    if events.empty:
        return _empty()
    admissions = events[events["kind"].eq(0)].groupby(["unit", "day"])["n"].sum()
    discharges = events[events["kind"].eq(1)].groupby(["unit", "day"])["n"].sum()
    last = events["day"].max()
    first_day = admissions.reset_index().groupby("unit")["day"].min()
    lengths = ((last - first_day) // pd.Timedelta(days=1) + 1).to_numpy()
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    days = np.repeat(first_day.to_numpy(), lengths) + offsets.astype("timedelta64[D]")
    index = pd.MultiIndex.from_arrays([np.repeat(first_day.index.to_numpy(), lengths), days], names=["unit", "date"])
    admissions.index = admissions.index.set_names(["unit", "date"])
    discharges.index = discharges.index.set_names(["unit", "date"])
    daily = pd.DataFrame(
        {
            "admissions": admissions.reindex(index, fill_value=0).to_numpy(dtype="int64"),
            "discharges": discharges.reindex(index, fill_value=0).to_numpy(dtype="int64"),
        },
        index=index,
    )
    daily["census"] = (daily["admissions"] - daily["discharges"]).groupby(level="unit").cumsum()
    daily = daily.reset_index()[["date", "unit", "admissions", "discharges", "census"]]
    daily["date"] = daily["date"].astype(DATE_DTYPE)
    daily["unit"] = daily["unit"].astype(str)
    return daily
