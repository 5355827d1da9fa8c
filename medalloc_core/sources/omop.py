"""OMOP CDM v5.4 in: ``visit_occurrence``, ``visit_detail`` and ``care_site`` as unit-level stays.

The tables come from a SQL database by SQLAlchemy URL (``sqlite:///omop.db`` embedded,
``postgresql://reader@db.hospital/omop`` for a real site; always opened read-only) or from
an export folder holding ``visit_occurrence.csv`` / ``.parquet`` and friends. Which visits
are inpatient stays and which care sites are units is the site's :class:`OmopMapping`.
Person ids become the stays' ``patient_id``: they stay on the node (patient-level privacy
needs them), and nothing here logs or returns them except in the stays frame itself.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from medalloc_core.contract import ADMIT_TIME, DISCHARGE_TIME, ENCOUNTER_ID, PATIENT_ID, UNIT, DataContractError
from medalloc_core.io import read_table
from medalloc_core.paths import check_regular, open_regular
from medalloc_core.sources.mapping import OmopMapping
from medalloc_core.sources.stays import (
    TIME_EXPECTED,
    Findings,
    NodeFindings,
    _int_or_none,
    empty_stays,
    finish,
    parse_ints,
    parse_times,
    show,
)

logger = logging.getLogger(__name__)

VISIT = "visit_occurrence"
DETAIL = "visit_detail"
CARE_SITE = "care_site"
TABLES = (VISIT, DETAIL, CARE_SITE)
# Columns read per table (OMOP CDM v5.4 names); the first group must exist as columns.
REQUIRED: dict[str, tuple[str, ...]] = {
    VISIT: ("visit_occurrence_id", "person_id", "visit_concept_id", "visit_start_date"),
    DETAIL: ("visit_detail_id", "person_id", "visit_detail_start_date", "visit_occurrence_id"),
    CARE_SITE: ("care_site_id",),
}
OPTIONAL: dict[str, tuple[str, ...]] = {
    VISIT: ("visit_start_datetime", "visit_end_date", "visit_end_datetime", "care_site_id"),
    DETAIL: ("visit_detail_start_datetime", "visit_detail_end_date", "visit_detail_end_datetime", "care_site_id"),
    CARE_SITE: ("care_site_name", "care_site_source_value"),
}
# Per table: the id column and the prefix of its start/end columns.
_ID = {VISIT: "visit_occurrence_id", DETAIL: "visit_detail_id", CARE_SITE: "care_site_id"}
_TIME_PREFIX = {VISIT: "visit", DETAIL: "visit_detail"}
_SCHEMES = ("sqlite", "postgresql")
_CONNECT_TIMEOUT_S = 10
_HEADER_SNIFF = 65536


class OmopUnavailable(RuntimeError):
    """The optional dependencies for OMOP databases are not installed."""


@dataclass
class _Table:
    """One table's requested columns (raw values, object dtype) and where each row came from."""

    name: str
    frame: pd.DataFrame
    file: str  # the table's file, or the database URL (password hidden)
    rows: pd.Series | None  # spreadsheet rows (exports) or None (database rows)

    def origin(self, ids: pd.Series) -> pd.DataFrame:
        """The origin columns of every row: file, row and the record's id."""
        prefix = f"table {self.name}, {_ID[self.name]} " if self.rows is None else f"{_ID[self.name]} "
        record = prefix + ids.astype("string").fillna("(empty)")
        return pd.DataFrame(
            {
                "_file": self.file,
                "_row": None if self.rows is None else self.rows,
                "_record": record,
            },
            index=self.frame.index,
        )


class _Source:
    """Where the tables are: ``names()`` of the tables present and ``read(table, columns)``."""

    display: str
    kind: str

    def names(self) -> set[str]:
        raise NotImplementedError

    def columns(self, table: str) -> list[str]:
        raise NotImplementedError

    def read(self, table: str, columns: list[str]) -> _Table:
        raise NotImplementedError

    def table_location(self, table: str) -> tuple[str, str | None, int | None]:
        """(file, record, header row) naming the table itself in a problem."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class _Database(_Source):
    """A CDM in a SQL database, opened read-only: SQLite file or PostgreSQL server."""

    def __init__(self, url: str, schema: str, label: str | None = None, timeout_s: int = 300) -> None:
        try:
            from sqlalchemy import create_engine, inspect
            from sqlalchemy.engine import make_url
            from sqlalchemy.exc import ArgumentError
        except ImportError as exc:  # pragma: no cover - the omop extra is part of dev
            raise OmopUnavailable(
                "reading an OMOP database needs the 'omop' extra: python -m pip install -e '.[omop]'"
            ) from exc
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise DataContractError(
                [_problem(url, "is not a database URL; expected e.g. sqlite:///omop.db or postgresql://user@host/db")]
            ) from None
        self.display = label or parsed.render_as_string(hide_password=True)
        backend = parsed.get_backend_name()
        if backend not in _SCHEMES:
            raise DataContractError(
                [
                    _problem(
                        self.display,
                        f"database kind {backend!r} is not supported; expected sqlite:///PATH or postgresql://USER@HOST/DB",
                    )
                ]
            )
        self.kind = backend
        self.schema = schema if backend == "postgresql" else ""
        if backend == "sqlite":
            path = Path(parsed.database or "")
            # sqlite3 would create a missing file; validation must never write anything.
            if not parsed.database or not path.exists():
                raise DataContractError([_problem(self.display, "no such SQLite database file")])
            try:
                check_regular(path, what="a SQLite database file")
            except OSError as exc:
                raise DataContractError([_problem(self.display, exc.strerror or str(exc))]) from None
            uri = f"file:{path.resolve()}?mode=ro"
            self.engine = create_engine("sqlite://", creator=lambda: _sqlite_connection(uri, timeout_s))
        else:
            if parsed.drivername == "postgresql":
                parsed = parsed.set(drivername="postgresql+psycopg")
            self.engine = create_engine(
                parsed,
                connect_args={
                    "connect_timeout": min(_CONNECT_TIMEOUT_S, timeout_s),
                    # Every transaction read-only: validating or training never writes to the CDM; no
                    # query or lock wait runs past the node's limit (a server that stops answering
                    # mid-query is caught by the TCP keepalives and the client-side deadline below).
                    "options": (
                        "-c default_transaction_read_only=on "
                        f"-c statement_timeout={timeout_s * 1000} -c lock_timeout={timeout_s * 1000} "
                        f"-c idle_in_transaction_session_timeout={timeout_s * 1000}"
                    ),
                    "keepalives": 1,
                    "keepalives_idle": 10,
                    "keepalives_interval": 5,
                    "keepalives_count": 3,
                    "tcp_user_timeout": timeout_s * 1000,
                },
            )
        self.timeout_s = timeout_s
        try:
            with _deadline(min(_CONNECT_TIMEOUT_S, timeout_s) + 5 if backend == "postgresql" else None):
                self._inspector = inspect(self.engine)
                self._names = {n.lower(): n for n in self._inspector.get_table_names(schema=self.schema or None)}
        except _NoAnswer:
            self.engine.dispose()
            raise DataContractError(
                [
                    _problem(
                        self.display,
                        f"the database did not answer within {min(_CONNECT_TIMEOUT_S, timeout_s) + 5} s; "
                        "expected a PostgreSQL server at that address (check the host, port and firewall)",
                    )
                ]
            ) from None
        except Exception as exc:  # noqa: BLE001 - any driver error is one clear line, never a traceback
            self.engine.dispose()
            raise DataContractError([_problem(self.display, _db_error(exc))]) from None

    def names(self) -> set[str]:
        return set(self._names)

    def columns(self, table: str) -> list[str]:
        return [
            str(c["name"]).lower() for c in self._inspector.get_columns(self._names[table], schema=self.schema or None)
        ]

    def read(self, table: str, columns: list[str]) -> _Table:
        from sqlalchemy import column, select
        from sqlalchemy import table as sql_table

        actual = {
            str(c["name"]).lower(): str(c["name"])
            for c in self._inspector.get_columns(self._names[table], schema=self.schema or None)
        }
        query: Any = select(*[column(actual[c]) for c in columns]).select_from(
            sql_table(self._names[table], schema=self.schema or None)
        )
        try:
            with self.engine.connect() as connection:
                rows = [tuple(row) for row in connection.execute(query)]  # Row objects make pandas crawl
        except Exception as exc:  # noqa: BLE001 - see __init__
            raise DataContractError([_problem(self.display, f"table {table}: {_db_error(exc)}")]) from None
        frame = pd.DataFrame.from_records(rows, columns=columns)
        frame = frame.astype(object).where(frame.notna(), None)
        return _Table(table, frame, self.display, None)

    def table_location(self, table: str) -> tuple[str, str | None, int | None]:
        return self.display, f"table {table}", None

    def close(self) -> None:
        self.engine.dispose()


class _Export(_Source):
    """A CDM exported as one CSV or Parquet file per table (``visit_occurrence.csv``, ...)."""

    def __init__(self, folder: Path) -> None:
        self.display = str(folder)
        self.kind = "export"
        self._files: dict[str, Path] = {}
        found: dict[str, list[Path]] = {}
        for path in sorted(folder.iterdir()):
            stem, _, suffix = path.name.lower().partition(".")
            if path.is_file() and stem in TABLES and suffix in ("csv", "parquet"):
                found.setdefault(stem, []).append(path)
        for name, paths in found.items():
            if len(paths) > 1:
                raise DataContractError(
                    [
                        _problem(
                            str(paths[1]), f"a second {name} table beside {paths[0].name}; expected one file per table"
                        )
                    ]
                )
            self._files[name] = paths[0]
        self._raw: dict[str, pd.DataFrame] = {}

    def names(self) -> set[str]:
        return set(self._files)

    def _frame(self, table: str) -> pd.DataFrame:
        if table not in self._raw:
            path = self._files[table]
            header = _header_only(path)
            raw = pd.DataFrame(columns=header) if header is not None else read_table(path)
            raw.columns = [str(c).strip().lower() for c in raw.columns]
            self._raw[table] = raw
        return self._raw[table]

    def columns(self, table: str) -> list[str]:
        return list(self._frame(table).columns)

    def read(self, table: str, columns: list[str]) -> _Table:
        raw = self._frame(table)
        frame = raw[columns].astype(object)
        frame = frame.where(frame.notna(), None)
        return _Table(table, frame, str(self._files[table]), pd.Series(raw.index + 2, index=raw.index))

    def table_location(self, table: str) -> tuple[str, str | None, int | None]:
        return str(self._files[table]), None, 1


def read_omop(
    location: str,
    mapping: OmopMapping,
    *,
    database: bool,
    label: str | None = None,
    timeout_s: int = 300,
    lenient: bool = False,
) -> tuple[pd.DataFrame | None, list, dict[str, Any]]:
    """Read a CDM into typed stays, checked record by record.

    Parameters
    ----------
    location
        A database URL (``database=True``) or an export folder.
    mapping
        Which visits are stays and which care sites are units.
    database
        Whether ``location`` is a SQLAlchemy URL.
    label
        How problems name the database (default: the URL, password hidden); an SQLite file
        given by its path is named by that path.
    timeout_s
        The longest a query may run (PostgreSQL ``statement_timeout``; SQLite interrupted by a
        progress handler), and the bound on connecting to a server that does not answer.
    lenient
        A node's reading (issue 20): a record that breaks a per-record rule is left out (and
        listed), only a structural problem stops. A CDM of ``SQL_MIN_VISITS`` visits or more is
        counted in SQL, a flagged stay left out there; flagged ids send it to this row reader,
        leniently (``omop_sql.read_omop_sql``).

    Returns
    -------
    (stays, problems, summary)
        ``stays`` (contract stay columns with origin columns, or None when an error was
        found), every problem found, and what a person checks at a glance (``details``: the
        tables read, inpatient visits, stays, what was left out and why).

    Raises
    ------
    DataContractError
        When the source cannot be opened at all (no such database or folder, unreachable
        server, unreadable table file).
    OmopUnavailable
        When a database is given but the ``omop`` extra is not installed.
    """
    source: _Source = _Database(location, mapping.schema, label, timeout_s) if database else _Export(Path(location))
    try:
        if isinstance(source, _Database):
            # A hospital-scale CDM is checked and counted in the database (omop_sql.py: memory bounded by the
            # stays, not the tables); a smaller one by the row reader, faster at that size (docs/data.md). A clean
            # CDM (SQLite or PostgreSQL) of SCAN_MIN_VISITS or more is read by one streamed scan (omop_scan.py),
            # faster than both.
            from medalloc_core.sources.omop_sql import SCAN_MIN_VISITS, SQL_MIN_VISITS, read_omop_sql, visit_rows

            visits = visit_rows(source)
            if visits >= min(SCAN_MIN_VISITS, SQL_MIN_VISITS):
                counted = read_omop_sql(source, mapping, lenient=lenient, sql=visits >= SQL_MIN_VISITS)
                if counted is not None:
                    return counted
        return _Reader(source, mapping, lenient=lenient).run()
    finally:
        source.close()


class _Reader:
    def __init__(self, source: _Source, mapping: OmopMapping, *, lenient: bool = False) -> None:
        self.source = source
        self.mapping = mapping
        # lenient (a node's reading): a record flagged by a per-record check is dropped, not a reason to stop
        self.lenient = lenient
        self.findings: Findings = NodeFindings(source.display) if lenient else Findings(source.display)
        self.details: list[tuple[str, str]] = []
        self.summary: dict[str, Any] = {
            "file": source.display,
            "format": f"omop ({source.kind})",
            "shape": "encounters",
            "source": "omop",
            "details": self.details,
        }

    # ------------------------------------------------------------------ steps
    def run(self) -> tuple[pd.DataFrame | None, list, dict[str, Any]]:
        names = self.source.names()
        if VISIT not in names:
            self.findings.add(
                f"no {VISIT} table; expected the OMOP CDM v5.4 tables {VISIT} "
                f"(required), {DETAIL} and {CARE_SITE}"
                + (" as visit_occurrence.csv or .parquet in this folder" if self.source.kind == "export" else "")
                + (
                    f" in schema {self.mapping.schema!r}"
                    if self.mapping.schema and self.source.kind == "postgresql"
                    else ""
                )
            )
            return None, self.findings.problems, self.summary
        level = self.mapping.level
        if level == "auto":
            level = "visit_detail" if DETAIL in names else "visit_occurrence"
        if level == "visit_detail" and DETAIL not in names:
            self.findings.add(f"[omop] level = 'visit_detail' but there is no {DETAIL} table; expected {DETAIL}")
            return None, self.findings.problems, self.summary
        self.summary["level"] = level

        visits = self._table(VISIT)
        details = self._table(DETAIL) if level == "visit_detail" else None
        sites = self._table(CARE_SITE) if CARE_SITE in names else None
        if visits is None or (level == "visit_detail" and details is None) or (CARE_SITE in names and sites is None):
            return None, self.findings.problems, self.summary
        counts = [f"{VISIT} {len(visits.frame):,}"]
        counts += [f"{DETAIL} {len(details.frame):,}"] if details is not None else []
        counts += [f"{CARE_SITE} {len(sites.frame):,}"] if sites is not None else []
        self.details.append(("tables", ", ".join(counts) + " rows"))

        visit = self._visits(visits)
        if visit is None:
            return None, self.findings.problems, self.summary
        stays = self._stays(visits, visit, details)
        if stays is None:
            return None, self.findings.problems, self.summary
        stays = self._units(stays, sites)
        if stays is None:
            return None, self.findings.problems, self.summary
        if self.lenient:  # finish() lists a stay that ends before it begins; a node leaves it out
            backwards = stays[DISCHARGE_TIME].notna() & (stays[DISCHARGE_TIME] < stays[ADMIT_TIME])
            stays = self._drop(stays, backwards.to_numpy(dtype=bool))
        daily = finish(
            stays,
            self.findings,
            self.summary,
            {
                ADMIT_TIME: lambda i: str(stays.at[i, "_admit_field"]),
                DISCHARGE_TIME: lambda i: str(stays.at[i, "_discharge_field"]),
            },
        )
        self.summary["daily"] = daily
        return (None if daily is None else stays), self.findings.problems, self.summary

    def _table(self, name: str) -> _Table | None:
        """The table's columns we read; a missing required column is an error naming the table."""
        try:
            present = set(self.source.columns(name))
        except DataContractError as exc:
            self.findings.problems.extend(exc.problems)
            return None
        file, record, row = self.source.table_location(name)
        missing = [c for c in REQUIRED[name] if c not in present]
        for column in missing:
            self.findings.add(
                f"{name} has no column {column!r}; expected the OMOP CDM v5.4 columns "
                f"{', '.join(REQUIRED[name])} (found: {', '.join(sorted(present)) or 'none'})",
                file=file,
                record=record,
                row=row,
                column=column,
            )
        if missing:
            return None
        wanted = [c for c in (*REQUIRED[name], *OPTIONAL[name]) if c in present]
        try:
            return self.source.read(name, wanted)
        except DataContractError as exc:
            self.findings.problems.extend(exc.problems)
            return None

    def _ids(self, table: _Table, column: str, *, required: bool, unique: bool = False) -> pd.Series:
        """An integer id column, each empty/invalid/repeated value reported against its record."""
        values, invalid = parse_ints(table.frame[column])
        key = table.frame[_ID[table.name]]
        origin = table.origin(key)
        self.findings.records(
            origin,
            invalid,
            column,
            lambda i: f"{show(table.frame.at[i, column])} is not a whole number; expected an integer id",
        )
        if required:
            self.findings.records(
                origin, values.isna() & ~invalid, column, lambda i: f"empty {column}; expected an integer id"
            )
        if unique:
            repeated = values.notna() & values.duplicated(keep="first")
            firsts = values[values.notna() & ~values.duplicated(keep="first")]
            first_of = pd.Series(firsts.index, index=firsts.to_numpy())

            def where(i: Any) -> str:
                j = first_of[values[i]]
                return f"row {table.rows[j]}" if table.rows is not None else str(origin.at[j, "_record"])

            self.findings.records(
                origin,
                repeated,
                column,
                lambda i: f"{column} {values[i]} appears more than once (first at {where(i)}); expected one row per id",
            )
        return values

    def _visits(self, visits: _Table) -> pd.DataFrame | None:
        ident = self._ids(visits, "visit_occurrence_id", required=True, unique=True)
        person = self._ids(visits, "person_id", required=True)
        concept = self._ids(visits, "visit_concept_id", required=True)
        inpatient = concept.isin(self.mapping.inpatient_visit_concepts).fillna(False).astype(bool)
        other = concept[~inpatient & concept.notna()].value_counts()
        wanted = ", ".join(map(str, self.mapping.inpatient_visit_concepts))
        self.details.append(
            ("inpatient visits", f"{int(inpatient.sum()):,} of {len(concept):,} (visit_concept_id in {wanted})")
        )
        if len(other):
            shown = ", ".join(f"{k}: {v:,}" for k, v in other.head(6).items())
            self.details.append(("left out", f"{int(other.sum()):,} visits of other concepts ({shown})"))
        if self.findings.has_errors:
            return None
        if not inpatient.any():
            found = ", ".join(f"{k} ({v:,} visits)" for k, v in other.head(6).items()) or "none"
            self.findings.add(
                f"no {VISIT} row has an inpatient visit_concept_id ({wanted}); found {found}; "
                "set [omop] inpatient-visit-concepts in the mapping file if your site codes them differently",
                record=f"table {VISIT}" if visits.rows is None else None,
                file=visits.file,
                column="visit_concept_id",
            )
            return None
        visit = pd.DataFrame({"id": ident, "person": person, "inpatient": inpatient}, index=visits.frame.index)
        if self.lenient:  # a visit without a usable id or person is left out (a repeated id: every row of it)
            bad = ident.isna() | ident.duplicated(keep=False) | person.isna()
            visit = self._drop(visit, bad.to_numpy(dtype=bool))
        return visit

    def _times(
        self, table: _Table, ids: pd.Series, which: str, *, required: bool
    ) -> tuple[pd.Series, pd.Series, pd.Series]:
        """The start or end of each row: ``*_datetime`` when set, else ``*_date``; returns (time, source field,
        invalid: a value that could not be read, or an empty required one)."""
        prefix = _TIME_PREFIX[table.name]
        date_col, time_col = f"{prefix}_{which}_date", f"{prefix}_{which}_datetime"
        origin = table.origin(ids)
        result = pd.Series(pd.NaT, index=table.frame.index, dtype="datetime64[ns]")
        field = pd.Series(time_col if time_col in table.frame else date_col, index=table.frame.index, dtype=object)
        bad = pd.Series(False, index=table.frame.index)
        for column in (date_col, time_col):  # the datetime, when present, wins
            if column not in table.frame:
                continue
            parsed, invalid = parse_times(table.frame[column], self.mapping.timezone)
            values = table.frame[column]
            self.findings.records(
                origin,
                invalid,
                column,
                lambda i: f"{show(values[i])} is not a valid date or date-time; {TIME_EXPECTED}",  # noqa: B023
            )
            bad |= invalid
            result = parsed.where(parsed.notna(), result)
            field = field.where(parsed.isna(), column)
        if required:
            self.findings.records(
                origin,
                result.isna() & ~bad,
                time_col if time_col in table.frame else date_col,
                lambda i: f"empty {time_col} and {date_col}; expected when the stay began ({TIME_EXPECTED})",
            )
        if required:
            bad = bad | result.isna()
        return result, field, bad

    def _stays(self, visits: _Table, visit: pd.DataFrame, details: _Table | None) -> pd.DataFrame | None:
        """Stays of inpatient visits: their visit_detail rows, or the visit itself when it has none."""
        inpatient = visit["inpatient"]
        parts: list[pd.DataFrame] = []
        with_detail = pd.Series(False, index=visit.index)
        if details is not None:
            detail_id = self._ids(details, "visit_detail_id", required=True, unique=True)
            person = self._ids(details, "person_id", required=True)
            parent = self._ids(details, "visit_occurrence_id", required=True)
            site = self._ids(details, "care_site_id", required=False) if "care_site_id" in details.frame else None
            if self.findings.has_errors:
                return None
            by_id = visit.set_index("id")
            known = parent.isin(by_id.index).fillna(False).astype(bool)
            origin = details.origin(detail_id)
            self.findings.records(
                origin,
                parent.notna() & ~known,
                "visit_occurrence_id",
                lambda i: (
                    f"visit_occurrence_id {parent[i]} is not in {VISIT}; expected the visit this detail belongs to"
                ),
            )
            used = known & parent.map(by_id["inpatient"]).fillna(False).astype(bool)
            mismatch = used & (person != parent.map(by_id["person"])).fillna(False).astype(bool)
            self.findings.records(
                origin,
                mismatch,
                "person_id",
                lambda i: (
                    f"person_id {person[i]} differs from its visit's ({by_id.at[parent[i], 'person']}); "
                    "expected the same person"
                ),
            )
            if self.findings.has_errors:
                return None
            if self.lenient:  # a detail without a usable id, person or visit, or another person's, is left out
                ok = detail_id.notna() & ~detail_id.duplicated(keep=False) & person.notna() & ~mismatch
                self._count_left_out(int((used & ~ok).sum()))
                used = used & ok.fillna(False).astype(bool)
            rows = details.frame.index[used]
            start, start_field, bad_start = self._times(_subset(details, rows), detail_id[rows], "start", required=True)
            end, end_field, bad_end = self._times(_subset(details, rows), detail_id[rows], "end", required=False)
            parts.append(
                pd.DataFrame(
                    {
                        ENCOUNTER_ID: "visit_detail " + detail_id[rows].astype(str),
                        PATIENT_ID: person[rows].astype(str),
                        "_site": site[rows] if site is not None else pd.NA,
                        ADMIT_TIME: start,
                        DISCHARGE_TIME: end,
                        "_admit_field": start_field,
                        "_discharge_field": end_field,
                        "_table": DETAIL,
                    }
                ).join(origin.loc[rows])
            )
            if self.lenient:
                parts[-1] = self._drop(parts[-1], (bad_start | bad_end).reindex(parts[-1].index).to_numpy(dtype=bool))
            with_detail = visit["id"].isin(parent[used].dropna().unique())
            self.details.append(("stays", f"{len(rows):,} visit_detail rows of inpatient visits"))
        alone = visit.index[inpatient & ~with_detail]
        if len(alone):
            site = self._ids(visits, "care_site_id", required=False) if "care_site_id" in visits.frame else None
            if self.findings.has_errors:
                return None
            start, start_field, bad_start = self._times(
                _subset(visits, alone), visit.loc[alone, "id"], "start", required=True
            )
            end, end_field, bad_end = self._times(_subset(visits, alone), visit.loc[alone, "id"], "end", required=False)
            origin = visits.origin(visit["id"]).loc[alone]
            parts.append(
                pd.DataFrame(
                    {
                        ENCOUNTER_ID: "visit_occurrence " + visit.loc[alone, "id"].astype(str),
                        PATIENT_ID: visit.loc[alone, "person"].astype(str),
                        "_site": site[alone] if site is not None else pd.NA,
                        ADMIT_TIME: start,
                        DISCHARGE_TIME: end,
                        "_admit_field": start_field,
                        "_discharge_field": end_field,
                        "_table": VISIT,
                    }
                ).join(origin)
            )
            if self.lenient:
                parts[-1] = self._drop(parts[-1], (bad_start | bad_end).reindex(parts[-1].index).to_numpy(dtype=bool))
            what = "inpatient visits without visit_detail" if details is not None else "inpatient visits"
            self.details.append(("stays" if details is None else "stays (also)", f"{len(alone):,} {what}"))
        if self.findings.has_errors:
            return None
        if not parts:
            return empty_stays()
        return pd.concat(parts, ignore_index=True)

    def _count_left_out(self, n: int) -> None:
        if n:
            self.summary["left_out"] = int(self.summary.get("left_out", 0)) + n

    def _drop(self, frame: pd.DataFrame, bad: np.ndarray) -> pd.DataFrame:
        """``frame`` without the rows ``bad`` flags (a node's lenient reading), counted in summary['left_out']."""
        self._count_left_out(int(bad.sum()))
        return frame[~bad]

    def _units(self, stays: pd.DataFrame, sites: _Table | None) -> pd.DataFrame | None:
        """Each stay's unit from its care site; stays outside the mapped units are left out."""
        column = self.mapping.unit_name
        no_site = stays["_site"].isna()
        if self.mapping.missing_care_site == "refuse":
            self.findings.records(
                stays,
                no_site,
                "care_site_id",
                lambda i: (
                    f"empty care_site_id; expected the care site (unit) of this stay in {stays.at[i, '_table']} "
                    "(or set [omop] missing-care-site = 'hospital' to count such stays in one hospital-wide unit)"
                ),
            )
            if self.findings.has_errors:
                return None
            if self.lenient:
                stays = self._drop(stays, no_site.to_numpy(dtype=bool))
                no_site = no_site[~no_site]
        elif no_site.any():
            hospital = self.mapping.hospital_unit
            first = no_site.index[no_site.to_numpy()][0]
            self.findings.add(
                f"{int(no_site.sum()):,} of {len(stays):,} stay(s) have no care_site_id; they are counted in one "
                f"hospital-wide unit {hospital!r} (first here; set [omop] missing-care-site = 'refuse' to refuse "
                "them, or hospital-unit to name that unit)",
                file=str(stays.at[first, "_file"]),
                row=_int_or_none(stays.at[first, "_row"]),
                record=str(stays.at[first, "_record"]),
                column="care_site_id",
                severity="warning",
            )
            self.details.append(("hospital-wide", f"{int(no_site.sum()):,} stays without a care site, in {hospital!r}"))
        if column == "care_site_id":
            names = stays["_site"].astype(str)
        else:
            if sites is None:
                self.findings.add(
                    f"no {CARE_SITE} table, so care sites have no {column}; expected {CARE_SITE} "
                    "(or set [omop] unit-name = 'care_site_id' to name units by their id)"
                )
                return None
            site_id = self._ids(sites, "care_site_id", required=True, unique=True)
            if column not in sites.frame:
                file, record, row = self.source.table_location(CARE_SITE)
                self.findings.add(
                    f"{CARE_SITE} has no column {column!r}; expected it to name the units "
                    "(or set [omop] unit-name to another care_site column)",
                    file=file,
                    record=record,
                    row=row,
                    column=column,
                )
                return None
            if self.findings.has_errors:
                return None
            label = sites.frame[column].map(lambda v: None if v is None else str(v).strip() or None)
            lookup = pd.Series(label.to_numpy(), index=site_id.to_numpy())
            unknown = ~no_site & ~stays["_site"].isin(lookup.index).fillna(False).astype(bool)
            self.findings.records(
                stays,
                unknown,
                "care_site_id",
                lambda i: (
                    f"care_site_id {stays.at[i, '_site']} is not in {CARE_SITE}; expected a care_site_id of that table"
                ),
            )
            names = stays["_site"].map(lookup)
            nameless = ~no_site & ~unknown & names.isna()
            self.findings.records(
                stays,
                nameless,
                "care_site_id",
                lambda i: f"care site {stays.at[i, '_site']} has an empty {column}; expected a name for the unit",
            )
            if self.findings.has_errors:
                return None
            if self.lenient:  # a care site that is not in care_site, or has no name: its stays are left out
                keep = ~(unknown | nameless).to_numpy(dtype=bool)
                self._count_left_out(int((~keep).sum()))
                stays, names, no_site = stays[keep], names[keep], no_site[keep]
        names = names.astype(object).where(~no_site, self.mapping.hospital_unit)
        if self.mapping.units:
            units = {str(k): v for k, v in self.mapping.units.items()}
            mapped = names.map(units)
            mapped = mapped.where(mapped.notna(), stays["_site"].astype(str).map(units))
            outside = mapped.isna()
            if outside.any():
                counts = names[outside].value_counts()
                shown = ", ".join(f"{k}: {v:,}" for k, v in counts.head(6).items())
                self.details.append(
                    ("not a unit", f"{int(outside.sum()):,} stays in care sites not in [omop] units ({shown})")
                )
            stays = stays.assign(**{UNIT: mapped})[~outside]
        else:
            stays = stays.assign(**{UNIT: names})
        return stays.drop(columns=["_site"])


# SQLite guards: a value longer than this (a generated zeroblob column) is an error, not gigabytes.
SQLITE_MAX_VALUE_BYTES = 1 << 20
_SQLITE_LIMIT_LENGTH = 0  # sqlite3.SQLITE_LIMIT_LENGTH


def _sqlite_connection(uri: str, timeout_s: int) -> Any:
    """A read-only SQLite connection bounded in value size and time (a recursive view or trigger cannot hang it)."""
    import sqlite3
    import time

    connection = sqlite3.connect(uri, uri=True, factory=_TimedConnection)
    connection.setlimit(getattr(sqlite3, "SQLITE_LIMIT_LENGTH", _SQLITE_LIMIT_LENGTH), SQLITE_MAX_VALUE_BYTES)
    connection.timeout_s = timeout_s

    def over_time() -> int:  # a non-zero answer interrupts the statement ("interrupted")
        return 1 if time.monotonic() > connection.deadline else 0

    connection.set_progress_handler(over_time, 100_000)
    connection.execute("PRAGMA query_only = 1")
    connection.execute("PRAGMA trusted_schema = 0")  # views and triggers may not call unsafe functions
    return connection


class _TimedConnection(sqlite3.Connection):
    """An SQLite connection whose every statement (and the fetching of its rows) has ``timeout_s`` to finish."""

    timeout_s: float = 300.0
    deadline: float = float("inf")

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        import time

        self.deadline = time.monotonic() + self.timeout_s
        return super().cursor(*args, **kwargs)

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        import time

        self.deadline = time.monotonic() + self.timeout_s
        return super().execute(*args, **kwargs)


class _NoAnswer(Exception):
    """The server did not answer before the deadline."""


@contextlib.contextmanager
def _deadline(seconds: float | None) -> Iterator[None]:
    """Raise _NoAnswer if the block runs past ``seconds`` (main thread only; elsewhere the driver's timeouts apply)."""
    import signal
    import threading

    if seconds is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise _NoAnswer

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _subset(table: _Table, rows: pd.Index) -> _Table:
    return _Table(table.name, table.frame.loc[rows], table.file, None if table.rows is None else table.rows.loc[rows])


def _header_only(path: Path) -> list[str] | None:
    """The column names of a table file without records (an empty visit_detail is legitimate), else None."""
    try:
        with open_regular(path) as handle:  # a FIFO never blocks: read_table names what it is
            head = handle.read(_HEADER_SNIFF + 1)
        if head[:4] == b"PAR1":
            meta = pq.read_metadata(path)
            return list(meta.schema.names) if meta.num_rows == 0 else None
        if len(head) > _HEADER_SNIFF:
            return None  # too long to be a header alone
        lines = [line for line in head.decode("utf-8-sig").splitlines() if line.strip()]
    except Exception:  # noqa: BLE001 - unreadable or corrupt: read_table names the problem precisely
        return None
    if len(lines) == 1:
        return [c.strip() for c in lines[0].split(",")]
    return None


def _problem(file: str, message: str) -> Any:
    from medalloc_core.contract import Problem

    return Problem(file, message)


@contextlib.contextmanager
def _db_errors_in_one_line(
    display: str, kinds: type[BaseException] | tuple[type[BaseException], ...] = Exception
) -> Iterator[None]:
    """A driver error (``kinds``) raised inside becomes one clear line naming the database (:func:`_db_error`: no SQL,
    no password), a :class:`DataContractError`, never a traceback."""
    try:
        yield
    except kinds as exc:
        raise DataContractError([_problem(display, _db_error(exc))]) from None


def _db_error(exc: BaseException) -> str:
    """A driver error as one line, without the SQL or the URL's password."""
    original = getattr(exc, "orig", None) or exc
    text = " ".join(str(original).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"cannot read the database ({type(original).__name__}: {text})"
