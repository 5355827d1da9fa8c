"""OMOP CDM in SQLite at hospital scale: each column a stay needs streamed once, checked and counted in Arrow and numpy.

The SQL path (:mod:`medalloc_core.sources.omop_sql`) asks SQLite to check and count: every
check and every time a per-row expression (``trim``, ``substr``, ``GLOB``, ``date()``) that
SQLite evaluates one row at a time, and the stays the node keeps fetched by a second query
that evaluates them all again: 49 to 63 times SQLite's own aggregation at a million visits.
Here SQLite only reads: one plain ``SELECT`` of the raw columns per table (ids, concept,
care site, the four times), fetched with ``cursor.fetchmany`` in batches of
:data:`SCAN_ROWS`. Each batch becomes typed columns at once: ids as int64 (their storage
class checked, ``int`` or ``NULL``), times parsed as Arrow strings by vectorised kernels
(a regular expression, ``strptime``) into int64 wall clocks. The checks are then array
operations (uniqueness by sorting, a detail's visit by a sorted lookup) and the daily
counts a tally of one (care site, day) int64 key per stay. The stays kept are built for ten
million in under 1 GB (docs/data.md, "Measured"): the unit a categorical, the times views of
the int64 columns read, the ids Arrow large strings built a million at a time, every array
released as soon as its column is built, and the heap pages freed by joining the batches given
back to the system at once.

This path reads a *clean* CDM exactly as the SQL path does (same stays, daily records,
warnings and summary; tested against it): when any check would flag a record, or a value
is of a form it does not read (a storage class other than integer or text, a time with a
``Z``, an offset or spaces inside), it hands the CDM back (None) and the SQL path reads it
again and explains it in its words (or the row reader, for a small CDM). A hospital's
clean CDM is then one read; a broken one costs that read more than today. A node's reading
(``lenient``) leaves a stay flagged by a check on the stays out here, as the SQL path does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from medalloc_core.contract import ADMIT_TIME, DISCHARGE_TIME, ENCOUNTER_ID, PATIENT_ID, UNIT
from medalloc_core.encounters import DATE_DTYPE
from medalloc_core.sources.mapping import OmopMapping
from medalloc_core.sources.omop_sql import (
    _ID,
    _STEM,
    CARE_SITE,
    DETAIL,
    VISIT,
    _Dialect,
    _Postgres,
    _SQLite,
    _SqlReader,
    _Unsupported,
)

logger = logging.getLogger(__name__)

#: Rows per ``fetchmany`` (one batch's Python objects are the only ones alive at a time).
SCAN_ROWS = 25_000
#: Rows per block of PostgreSQL's CSV copy parsed at once (a block's bytes and arrays are alive at a time).
COPY_ROWS = 100_000
#: Stays per Arrow chunk when the kept frame's id columns are built, and per step of the overlap check.
BUILD_ROWS = 1_000_000
#: The times this path reads (a subset of what SQLite's ``datetime()`` and the SQL path accept): an ISO date, or date,
#: ``T`` or space, ``HH:MM`` with optional seconds and fraction; no offset or ``Z`` (the SQL path handles those).
_TIME = r"^\d{4}-\d{2}-\d{2}(?:[ T](?:[01]\d|2[0-3]):[0-5]\d(?::[0-5]\d(?:\.\d+)?)?)?$"
_NONE = type(None)
_NS_PER_DAY = 86_400 * 10**9
#: 2261-12-31 23:59:59 in seconds since the epoch: PostgreSQL's SQL path reads times up to it, the fraction included.
_LAST_SECOND = int(np.datetime64("2261-12-31T23:59:59", "s").astype(np.int64))
_FIRST_US = int(np.datetime64("1678-01-01T00:00:00", "us").astype(np.int64))


class _HandBack(Exception):
    """A record a check flags, or a value this path does not read exactly: the SQL path reads the CDM."""


def scan_omop(
    database: Any, mapping: OmopMapping, *, lenient: bool = False
) -> tuple[pd.DataFrame | None, list[Any], dict[str, Any]] | None:
    """Read a clean SQLite or PostgreSQL CDM in one streamed pass; None when the SQL path should read it (module
    docstring).

    Returns (stays, problems, summary) as :func:`medalloc_core.sources.omop_sql.read_omop_sql`
    does. ``lenient`` (a node's reading): a stay flagged by a check on the stays themselves (an
    unreadable or missing start, an unreadable end, an end before its start, a missing, unknown
    or nameless care site) is left out and counted in ``summary["left_out"]``, as the SQL path
    does; a flagged id still hands the CDM back.
    """
    reader = {"sqlite": _ScanReader, "postgresql": _PostgresScanReader}.get(database.kind)
    if reader is None:
        return None
    try:
        return reader(database, mapping, lenient=lenient).run()
    except (_HandBack, _Unsupported) as exc:
        logger.debug("OMOP %s handed to the SQL path: %s", database.display, exc)
        return None


# ---------------------------------------------------------------------- typed columns from one batch
def _ints(values: Sequence[Any] | pa.Array, what: str, *, nullable: bool) -> tuple[np.ndarray, np.ndarray]:
    """An id column as int64 and its NULL mask; hands back on another storage class or an empty required id.

    ``values``: Python values as SQLite stores them (their storage class checked here), or an Arrow int64 array
    (PostgreSQL's integer columns, typed as read)."""
    if isinstance(values, pa.Array):
        if values.null_count and not nullable:
            raise _HandBack(f"{what}: an empty id")
        nulls = values.is_null().to_numpy(zero_copy_only=False)
        return values.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False), nulls
    kinds = set(map(type, values))
    if not kinds <= {int, _NONE}:
        raise _HandBack(f"{what}: a value stored as {sorted(k.__name__ for k in kinds - {int, _NONE})}")
    if _NONE not in kinds:
        return np.array(values, dtype=np.int64), np.zeros(len(values), dtype=bool)
    if not nullable:
        raise _HandBack(f"{what}: an empty id")
    array = pa.array(values, type=pa.int64())
    return array.fill_null(0).to_numpy(), array.is_null().to_numpy(zero_copy_only=False)


def _walls(
    values: Sequence[Any] | pa.Array, what: str, *, fraction: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A time column as (wall clock in ns since the epoch, has a valid time, is present but not read).

    The wall clock is the SQL path's: the text cut to ``YYYY-MM-DD HH:MM:SS`` (a date alone at
    midnight); empty text (after SQLite's ``trim``: spaces) is no time. ``values``: Python values as
    SQLite stores them (their storage class checked here), or an Arrow string array (PostgreSQL's
    ``date``/``timestamp`` output in ISO style). The fraction of a second is dropped, as SQLite's
    SQL path drops it, unless ``fraction`` (PostgreSQL's SQL path keeps its microseconds: so does
    this, and a time past 2261-12-31 23:59:59 is out of range there).
    """
    if isinstance(values, pa.Array):
        text = values
    else:
        kinds = set(map(type, values))
        if not kinds <= {str, _NONE}:
            raise _HandBack(f"{what}: a value stored as {sorted(k.__name__ for k in kinds - {str, _NONE})}")
        text = pc.utf8_trim(pa.array(values, type=pa.string()), " ")
    length = pc.binary_length(text)
    empty = pc.fill_null(pc.equal(length, 0), True)
    ok = pc.fill_null(pc.match_substring_regex(text, _TIME), False)  # ASCII where it matches: a byte is a character
    raw = text.view(pa.binary())
    wall = pc.binary_slice(raw, 0, 19)  # the whole seconds: the fraction dropped
    if pc.any(pc.and_(ok, pc.less(length, 19))).as_py():  # a date alone at midnight, minutes without seconds
        suffix = pc.if_else(pc.equal(length, 10), b" 00:00:00", pc.if_else(pc.equal(length, 16), b":00", b""))
        wall = pc.binary_join_element_wise(wall, suffix, b"")
    if pc.any(pc.equal(pc.binary_slice(raw, 10, 11), b"T")).as_py():
        wall = pc.replace_substring(wall, "T", " ", max_replacements=1)
    parsed = pc.strptime(wall.view(pa.string()), format="%Y-%m-%d %H:%M:%S", unit="s", error_is_null=True)
    ok = pc.and_(ok, pc.is_valid(parsed))
    # strptime rolls 2025-02-30 over to 03-02: the month and day read must be those written (then so is the year)
    safe = pc.if_else(ok, parsed, pa.scalar(0, pa.timestamp("s")))
    for begin, part in ((5, pc.month), (8, pc.day)):
        written = pc.cast(pc.if_else(ok, pc.binary_slice(raw, begin, begin + 2), b"0").view(pa.string()), pa.int64())
        ok = pc.and_(ok, pc.equal(part(safe), written))
    year = pc.year(safe)
    ok = pc.and_(ok, pc.and_(pc.greater_equal(year, 1678), pc.less_equal(year, 2261)))
    valid = ok.to_numpy(zero_copy_only=False)
    seconds = parsed.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
    bad = ~valid & ~empty.to_numpy(zero_copy_only=False)
    ns = np.where(valid, seconds, 0) * 10**9  # 1678-2261 fits int64 nanoseconds
    if fraction and pc.any(pc.greater(length, 20)).as_py():  # 'YYYY-MM-DD HH:MM:SS.f...': the digits after the dot
        digits = pc.utf8_rpad(pc.binary_slice(raw, 20, 29).view(pa.string()), 9, "0")
        part = pc.cast(pc.if_else(ok, digits, "0" * 9), pa.int64()).to_numpy(zero_copy_only=False)
        past = valid & (seconds == _LAST_SECOND) & (part > 0)  # past the SQL path's upper bound
        valid &= ~past
        bad |= past
        ns = np.where(valid, ns + part, 0)
    return ns, valid, bad


def _stamps(values: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_walls` of a time column PostgreSQL's copy gave as timestamps (microseconds, as the SQL path keeps
    them): valid from 1678-01-01 to 2261-12-31 23:59:59, as the SQL path's range."""
    us = pc.cast(values, pa.timestamp("us")).cast(pa.int64())
    present = us.is_valid().to_numpy(zero_copy_only=False)
    raw = us.fill_null(0).to_numpy(zero_copy_only=False)
    valid = present & (raw >= _FIRST_US) & (raw <= _LAST_SECOND * 10**6)
    return np.where(valid, raw, 0) * 1000, valid, present & ~valid


def _sorted_unique(values: np.ndarray, *, in_place: bool = False) -> tuple[np.ndarray, bool]:
    """The distinct values, sorted, and whether any was repeated (by sorting: numpy's hashed ``unique`` is far slower
    on millions of ids). ``in_place``: ``values`` is the caller's own and is sorted where it is (no copy of ten
    million ids)."""
    if in_place:
        values.sort()
        ordered = values
    else:
        ordered = np.sort(values)
    same = ordered[1:] == ordered[:-1]
    if not same.any():
        return ordered, False
    return ordered[np.concatenate(([True], ~same))], True


def _member(values: np.ndarray, among: np.ndarray) -> np.ndarray:
    """Whether each value is in ``among`` (sorted), by binary search."""
    if not len(among):
        return np.zeros(len(values), dtype=bool)
    at = np.searchsorted(among, values).clip(0, len(among) - 1)
    return np.asarray(among[at] == values)


class _Times:
    """One table's start and end (wall clock, present, from the ``*_datetime`` column) and its flags, per row."""

    def __init__(self, table: str, present: set[str], *, fraction: bool = False) -> None:
        stem = _STEM[table]
        self.fraction = fraction  # the fraction of a second kept (PostgreSQL) or dropped (SQLite): see _walls
        self.columns = [
            f"{stem}_{which}_{kind}"
            for which in ("start", "end")
            for kind in ("datetime", "date")
            if f"{stem}_{which}_{kind}" in present
        ]

    def read(self, batch: dict[str, Any], rows: int) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {"bad": np.zeros(rows, dtype=bool)}
        for which in ("start", "end"):
            wall = np.zeros(rows, dtype=np.int64)
            has = np.zeros(rows, dtype=bool)
            from_time = np.zeros(rows, dtype=bool)
            for column in [c for c in self.columns if f"_{which}_" in c]:  # datetime first: coalesce(datetime, date)
                values = batch[column]
                if isinstance(values, pa.Array) and pa.types.is_timestamp(values.type):
                    ns, valid, bad = _stamps(values)
                else:
                    ns, valid, bad = _walls(values, column, fraction=self.fraction)
                out["bad"] |= bad
                take = valid & ~has
                wall[take] = ns[take]
                if column.endswith("_datetime"):
                    from_time = valid
                has |= valid
            out[which[0]] = wall
            out[which[0] + "_has"] = has
            if which == "start":
                out["sdt"] = from_time
        return out


# ---------------------------------------------------------------------- the reader
class _ScanReader(_SqlReader):
    """:class:`_SqlReader` with its queries replaced by one streamed read of each table (the same steps and words)."""

    inpatient_ids: np.ndarray  # the inpatient visits' ids (sorted) and their persons, for the visit_detail checks
    inpatient_persons: np.ndarray
    parents: np.ndarray | None  # the visits with visit_detail rows (sorted); None at the visit level
    first_nosite: tuple[int, int] | None  # (id, tbl) of the first stay without a care site
    overlaps_found: tuple[int, int] | None = None  # (how many, position of the first): found in _fetch_stays
    fraction = False  # a time's fraction of a second dropped, as SQLite's SQL path drops it (_walls)

    def _dialect(self, tables: list[str]) -> _Dialect:
        # no offset scan here: a time with an offset or Z is not read by this path at all (it hands back)
        return _SQLite()

    # ------------------------------------------------------------------ reading
    def _batches(self, table: str, columns: list[str]) -> Iterator[dict[str, Any]]:
        """The table's ``columns`` (lower-case names), a batch of :data:`SCAN_ROWS` rows at a time, column by column."""
        from medalloc_core.sources.omop import _db_errors_in_one_line

        sql = f"SELECT {', '.join(self._col(table, c) for c in columns)} FROM {self._table(table)}"
        connection = self.db.engine.raw_connection()
        try:
            with _db_errors_in_one_line(self.db.display, sqlite3.Error):
                cursor = connection.cursor()
                cursor.execute(sql)
                while True:
                    rows = cursor.fetchmany(SCAN_ROWS)
                    if not rows:
                        return
                    yield dict(zip(columns, zip(*rows), strict=True))
        finally:
            connection.close()

    def _read(self, table: str) -> dict[str, np.ndarray]:
        """One table's ids, care sites and times (times only for the rows that may be stays), checked as read."""
        parent = "visit_occurrence_id" if table == DETAIL else "visit_concept_id"
        columns = [_ID[table], "person_id", parent]
        has_site = "care_site_id" in self.cols[table]
        times = _Times(table, set(self.cols[table]), fraction=self.fraction)
        columns += (["care_site_id"] if has_site else []) + times.columns
        wanted = np.sort(np.array(self.mapping.inpatient_visit_concepts, dtype=np.int64))
        keep: dict[str, list[np.ndarray]] = {}
        ids: list[np.ndarray] = []
        inpatient: list[tuple[np.ndarray, np.ndarray]] = []  # visits: (id, person) of the inpatient ones
        concepts: list[pd.Series] = []  # visits: how many of each concept

        def add(name: str, values: np.ndarray) -> None:
            keep.setdefault(name, []).append(values)

        for batch in self._batches(table, columns):
            rows = len(batch[_ID[table]])
            key, _ = _ints(batch[_ID[table]], f"{table}.{_ID[table]}", nullable=False)
            person, _ = _ints(batch["person_id"], f"{table}.person_id", nullable=False)
            link, _ = _ints(batch[parent], f"{table}.{parent}", nullable=False)
            if has_site:
                site, no_site = _ints(batch["care_site_id"], f"{table}.care_site_id", nullable=True)
            else:
                site, no_site = np.zeros(rows, dtype=np.int64), np.ones(rows, dtype=bool)
            ids.append(key)
            if table == VISIT:
                concepts.append(pd.Series(link).value_counts())
            # the rows that may be stays: inpatient visits; for details, those of an inpatient visit
            if table == VISIT:
                maybe = _member(link, wanted)
                if self.parents is not None:  # a visit with visit_detail rows is not a stay itself
                    parent_of_detail = _member(key, self.parents)
                    # only a visit with detail rows can be a detail's visit: the others' (id, person) are not held
                    inpatient.append((key[maybe & parent_of_detail], person[maybe & parent_of_detail]))
                    maybe &= ~parent_of_detail
            else:
                position = np.searchsorted(self.inpatient_ids, link).clip(0, max(len(self.inpatient_ids) - 1, 0))
                maybe = self.inpatient_ids[position] == link if len(self.inpatient_ids) else np.zeros(rows, dtype=bool)
                if (person[maybe] != self.inpatient_persons[position[maybe]]).any():
                    raise _HandBack("a visit_detail of another person's visit")
            timed = times.read({c: batch[c] for c in times.columns}, rows)
            for name, values in (("id", key), ("person", person), ("site", site), ("nosite", no_site)):
                add(name, values[maybe])
            for name, values in timed.items():
                add(name, values[maybe])
        out = {}
        for name in list(keep):  # one column at a time, its batches released as it is joined
            out[name] = np.concatenate(keep.pop(name))
            _return_freed()
        out["all_ids"] = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
        del ids
        _return_freed()
        if table == VISIT:
            self.concept_counts = pd.concat(concepts).groupby(level=0).sum().to_dict() if concepts else {}
            ip_ids = np.concatenate([i for i, _ in inpatient]) if inpatient else np.zeros(0, dtype=np.int64)
            order = np.argsort(ip_ids, kind="stable")
            self.inpatient_ids = ip_ids[order]
            del ip_ids
            ip_persons = np.concatenate([p for _, p in inpatient]) if inpatient else np.zeros(0, dtype=np.int64)
            del inpatient
            self.inpatient_persons = ip_persons[order]
            del ip_persons, order
        out["all_ids"], repeated = _sorted_unique(out["all_ids"], in_place=True)  # sorted from here on
        if repeated:
            raise _HandBack(f"a repeated {_ID[table]}")
        return out

    def _parents(self) -> np.ndarray:
        """The visits that have visit_detail rows (sorted): read first, so that only the visits without any are
        kept as stays (the others' times are never held)."""
        parents: list[np.ndarray] = []
        for batch in self._batches(DETAIL, ["visit_occurrence_id"]):
            parents.append(_sorted_unique(_ints(batch["visit_occurrence_id"], "visit_detail", nullable=False)[0])[0])
        return _sorted_unique(np.concatenate(parents))[0] if parents else np.zeros(0, dtype=np.int64)

    def _table_counts(self) -> dict[str, int]:
        if self.mapping.unit_name != "care_site_id":  # checked as the SQL path does, whether or not a stay names it
            self.known_sites, self.site_labels = self._care_sites()
        self.parents = self._parents() if self.level == "visit_detail" else None
        visits = self._read(VISIT)
        counts = {VISIT: len(visits["all_ids"])}
        all_visits = visits.pop("all_ids")
        parts = []
        if self.parents is not None:
            if not _member(self.parents, all_visits).all():
                raise _HandBack("a visit_detail of no visit")
            del all_visits
            self.parents = np.zeros(0, dtype=np.int64)  # read; not needed again (it marks the level)
            details = self._read(DETAIL)
            counts[DETAIL] = len(details.pop("all_ids"))
            parts.append((0, details))
            # the visits' persons were for the details' checks only
            self.inpatient_ids = self.inpatient_persons = np.zeros(0, dtype=np.int64)
        parts.append((1, visits))
        self.scan = self._stays(parts)
        if CARE_SITE in self.tables:
            counts[CARE_SITE] = int(self._rows(f"SELECT count(*) FROM {self._table(CARE_SITE)}")[0][0])
        return counts

    def _care_sites(self) -> tuple[np.ndarray, list[Any]]:
        """The care sites' ids (sorted) and unit names (NULL: empty), when units are named by a care_site column."""
        name = f"nullif(trim(CAST({self._col(CARE_SITE, self.mapping.unit_name)} AS TEXT)), '')"
        rows = self._rows(f"SELECT {self._col(CARE_SITE, 'care_site_id')}, {name} FROM {self._table(CARE_SITE)}")
        ids, _ = _ints([r[0] for r in rows], "care_site.care_site_id", nullable=False)
        if _sorted_unique(ids)[1]:
            raise _HandBack("a repeated care_site_id")
        order = np.argsort(ids, kind="stable")
        return ids[order], [rows[i][1] for i in order]

    def _stays(self, parts: list[tuple[int, dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
        """The stays in (tbl, id) order, each check on them run (a flagged one hands back), their unit names coded."""
        columns: dict[str, list[np.ndarray]] = {}
        fields = ("id", "person", "site", "nosite", "s", "s_has", "sdt", "e", "e_has", "bad")
        for tbl, part in parts:
            if "id" not in part:
                continue
            order = np.argsort(part["id"], kind="stable")
            columns.setdefault("tbl", []).append(np.full(len(order), tbl, dtype=np.int8))
            for name in fields:  # sorted one column at a time, the unsorted one released at once
                columns.setdefault(name, []).append(part.pop(name)[order])
        if not columns:
            empty = np.zeros(0, dtype=np.int64)
            stays = {n: empty for n in ("tbl", "id", "person", "s", "e", "code")}
            stays.update({n: empty.astype(bool) for n in ("nosite", "e_has", "sdt")})
            self.unit_names, self.unit_sites, self.first_nosite = [], [], None
            return stays
        stays = {}
        for name in list(columns):
            joined = columns.pop(name)
            stays[name] = joined[0] if len(joined) == 1 else np.concatenate(joined)
        # the stays' care sites coded once (the minimum: no care site, the hospital-wide unit)
        none = np.iinfo(np.int64).min
        codes, uniques = pd.factorize(np.where(stays["nosite"], none, stays.pop("site")))
        sites = [int(s) for s in uniques]
        codes = codes.astype(_code_dtype(len(sites)))  # a few units: a byte per stay, not eight
        unknown = np.zeros(len(sites), dtype=bool)
        nameless = np.zeros(len(sites), dtype=bool)
        names: list[Any] = []
        for i, site in enumerate(sites):
            if site == none:
                names.append(self.mapping.hospital_unit)
            elif self.mapping.unit_name == "care_site_id":
                names.append(str(site))
            else:
                at = int(np.searchsorted(self.known_sites, site))
                unknown[i] = at >= len(self.known_sites) or self.known_sites[at] != site
                names.append(None if unknown[i] else self.site_labels[at])
                nameless[i] = not unknown[i] and names[-1] is None
        self.unit_names = names
        self.unit_sites = ["<NA>" if site == none else str(site) for site in sites]
        stays["code"] = codes
        # the checks on the stays themselves: strict, any flag hands the CDM back (the SQL path explains it); a
        # node's reading leaves the flagged stays out, as the SQL path's WHERE does, and counts them
        refuse = self.mapping.missing_care_site == "refuse"
        flagged = {
            "a time that is not read here": stays["bad"],
            "a stay without a start": ~stays["s_has"],
            "a stay that ends before it begins": stays["e_has"] & (stays["e"] < stays["s"]),
            "a stay without a care site": stays["nosite"] & refuse,
            "a care site not in care_site": unknown[codes],
            "a care site without a name": nameless[codes],
        }
        out = np.zeros(len(codes), dtype=bool)
        for reason, mask in flagged.items():
            if mask.any() and not self.lenient:
                raise _HandBack(reason)
            out |= mask
        del flagged
        nosite = np.flatnonzero(stays["nosite"])  # the warning names the first of all the stays, as the SQL path's
        self.first_nosite = (int(stays["id"][nosite[0]]), int(stays["tbl"][nosite[0]])) if len(nosite) else None
        for name in ("bad", "s_has"):  # checked: not needed again
            del stays[name]
        # a stay without an end: NaT in its end (the frame's discharge_time is then a view of it, not a copy)
        stays["e"][~stays["e_has"]] = np.datetime64("NaT").view(np.int64)
        if out.any():
            self.summary["left_out"] = int(out.sum())
            keep = ~out
            for name in list(stays):  # one column at a time: never two copies of every stay
                stays[name] = stays[name][keep]
        _return_freed()
        return stays

    def _concepts(self) -> list[tuple[int | None, int]]:
        return sorted(((int(c), int(n)) for c, n in self.concept_counts.items()), key=lambda cn: (-cn[1], cn[0]))

    def _run_checks(self, visits: int) -> bool | None:
        s = self.scan
        tbl0, tbl1 = s["tbl"] == 0, s["tbl"] == 1
        self.stay_counts = {
            "tbl0": int(tbl0.sum()),
            "tbl1": int(tbl1.sum()),
            "nosite0": int((tbl0 & s["nosite"]).sum()),
            "nosite1": int((tbl1 & s["nosite"]).sum()),
        }
        del s["nosite"], tbl0, tbl1
        self.events = self._events()
        _return_freed()
        self._stay_summary()
        return True

    def _first_without_site(self) -> tuple[Any, int]:
        assert self.first_nosite is not None, "asked only when a stay has no care site"
        return self.first_nosite

    def _events(self) -> pd.DataFrame:
        """Admissions and discharges per care site and day (the SQL path's ``events``), counted over one int64 key
        per stay, (care site code, day), by ``bincount`` (or a sort, when the days span too far for a table of
        counts): one key column at a time, never a frame of the stays."""
        s = self.scan
        frames = []
        for kind, wall, take in ((0, s["s"], None), (1, s["e"], s["e_has"])):
            key = wall.copy() if take is None else wall[take]
            np.floor_divide(key, _NS_PER_DAY, out=key)  # the day, in place
            code = s["code"] if take is None else s["code"][take]
            first = int(key.min()) if len(key) else 0
            span = int(key.max()) - first + 1 if len(key) else 1
            key -= first
            key += code.astype(np.int64) * span
            del code
            if span * len(self.unit_names) <= 4 * len(key) + 1_000_000:  # the table of counts is small
                tally = np.bincount(key, minlength=span * len(self.unit_names))
                del key
                found = np.flatnonzero(tally)
                n = tally[found]
            else:
                found, n = np.unique(key, return_counts=True)
                del key
            frames.append(pd.DataFrame({"code": found // span, "day": found % span + first, "n": n, "kind": kind}))
        events = pd.concat(frames, ignore_index=True)
        codes = events["code"].to_numpy()
        names = pd.Series(self.unit_names, dtype=object)
        sites = pd.Series(self.unit_sites if self.mapping.units else [""] * len(self.unit_sites), dtype=object)
        return pd.DataFrame(
            {
                "name": names.to_numpy()[codes] if len(codes) else np.array([], dtype=object),
                "site": sites.to_numpy()[codes] if len(codes) else np.array([], dtype=object),
                "kind": events["kind"].to_numpy(),
                "day": (events["day"].to_numpy() * _NS_PER_DAY).astype(DATE_DTYPE),
                "n": events["n"].to_numpy(dtype="int64"),
            }
        )

    def _fetch_stays(self) -> pd.DataFrame:
        """The stays in the units, from the arrays read (the SQL path's frame: same columns, values and order).

        Built for ten million stays in bounded memory: the overlap check first, on the int64 columns
        alone; the unit a categorical (one code per stay, the names once), the times views of the int64
        columns read, the ids Arrow strings built :data:`BUILD_ROWS` at a time; each array read is
        released once its column is built.
        """
        s = self.scan
        units = self._unit_of(
            pd.Series(self.unit_names, dtype=object), pd.Series(self.unit_sites, dtype=object)
        ).to_numpy()
        if len(s["code"]) == 0:
            return pd.DataFrame({c: pd.Series(dtype=object) for c in (ENCOUNTER_ID, PATIENT_ID, UNIT)}).assign(
                **{ADMIT_TIME: pd.Series(dtype=DATE_DTYPE), DISCHARGE_TIME: pd.Series(dtype=DATE_DTYPE)}
            )
        named = [None if pd.isna(u) else str(u) for u in units]  # each care site code's unit (None: not a unit)
        categories = sorted({u for u in named if u is not None})  # sorted: the categorical sorts as its names
        category = np.array([-1 if u is None else categories.index(u) for u in named], dtype=np.int64)
        in_unit = (category >= 0)[s["code"]]
        every = bool(in_unit.all())

        def take(name: str) -> np.ndarray:
            """The column for the stays in units, released from the arrays read (no copy when every stay is)."""
            values = s.pop(name)
            return values if every else values[in_unit]

        # the overlap check first, on the int64 columns alone: its sort never meets the strings built below
        person, admit, end, has_end = (take(name) for name in ("person", "s", "e", "e_has"))
        self.overlaps_found = _first_overlap(person, admit, end, has_end)
        del has_end
        _return_freed()
        unit = pd.Categorical.from_codes(
            category[take("code")].astype(_code_dtype(len(categories))), categories=pd.Index(categories, dtype=str)
        )
        tbl, ids = take("tbl"), take("id")
        encounter = _strings(ids, prefix=(tbl, "visit_detail ", "visit_occurrence "))
        del tbl, ids
        self.admit_from_datetime = take("sdt").view(np.int8)
        self.scan = {}  # the rest of the arrays read are released
        patient = _strings(person)
        del person
        _return_freed()
        return pd.DataFrame(
            {
                ENCOUNTER_ID: encounter,  # Arrow strings, as pandas' own str columns
                PATIENT_ID: patient,
                UNIT: unit,
                ADMIT_TIME: admit.view(DATE_DTYPE),  # views of the int64 columns read: no copy
                DISCHARGE_TIME: end.view(DATE_DTYPE),  # NaT where there is no end (set in _stays)
            },
            copy=False,
        )

    def _overlaps(self, stays: pd.DataFrame) -> tuple[int, int] | None:
        """The SQL path's count and first overlap: found on the int64 columns as the frame was built."""
        return self.overlaps_found


class _PostgresScanReader(_ScanReader):
    """The scan of a PostgreSQL CDM: each table's raw columns copied out as CSV (``COPY ... TO STDOUT``), typed by
    pyarrow's CSV reader in blocks of :data:`COPY_ROWS` rows, then checked and counted as the SQLite scan does.

    Where PostgreSQL types the columns the SQL path reads exactly (integer ids, ``date``/``timestamp``/
    ``timestamptz`` times; the SQL path's own test of the column types), the copy needs no check of a
    storage class: ids arrive as int64 (NULL: empty), times as timestamps the CSV reader parses from
    PostgreSQL's ISO text (microseconds kept, as the SQL path keeps them), a ``timestamptz`` converted to
    the site's wall clock in the ``SELECT`` exactly as the SQL path converts it. A block with a time the
    CSV reader does not parse (``infinity``, a BC date, a year past 9999: out of range for the SQL path
    too) is typed again with its times as text, which :func:`_walls` reads and flags. Another column type
    is the SQL path's (and then the row reader's) to read, as before.
    """

    fraction = True  # PostgreSQL's SQL path keeps the microseconds of a timestamp

    def _dialect(self, tables: list[str]) -> _Dialect:
        return _SqlReader._dialect(self, tables)  # raises _Unsupported on a column type it does not read exactly

    def _select(self, table: str, column: str) -> str:
        """The ``SELECT`` item of one column: a timestamp as the SQL path's wall clock; an id or date as stored."""
        from sqlalchemy import types

        quoted = self._col(table, column)
        if isinstance(self.cols[table][column]["type"], types.DateTime):
            assert isinstance(self.dialect, _Postgres), "set by _dialect"
            return f"{self.dialect._local(quoted)} AS {quoted}"
        return quoted

    def _batches(self, table: str, columns: list[str]) -> Iterator[dict[str, Any]]:
        """The table's ``columns`` copied out as CSV, :data:`COPY_ROWS` rows at a time, as Arrow arrays (ids int64,
        times timestamps, or text in a block the CSV reader cannot type); in the read-only session the engine
        opened (its statement and lock timeouts)."""
        import psycopg
        from pyarrow import csv

        from medalloc_core.sources.omop import _db_errors_in_one_line

        time = {c for c in columns if c.endswith("_date") or c.endswith("_datetime")}
        ids = {c: pa.int64() for c in columns if c not in time}
        typings = [  # times parsed by the CSV reader itself; a block it cannot parse ('infinity', BC) read as text
            csv.ConvertOptions(
                column_types=ids | {c: kind for c in time},
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            )
            for kind in (pa.timestamp("us"), pa.string())
        ]
        options = csv.ReadOptions(column_names=columns, use_threads=False)
        select = ", ".join(self._select(table, c) for c in columns)
        sql = f"COPY (SELECT {select} FROM {self._table(table)}) TO STDOUT (FORMAT csv)"

        def typed(block: bytearray) -> dict[str, Any]:
            for convert in typings:
                try:
                    read = csv.read_csv(
                        pa.BufferReader(pa.py_buffer(block)), read_options=options, convert_options=convert
                    )
                except pa.ArrowInvalid as exc:
                    failed = exc
                    continue
                return {c: read.column(c).combine_chunks() for c in columns}
            raise _HandBack(f"{table}: {failed}")  # an id the copy's int64 does not hold: not read here

        connection = self.db.engine.raw_connection()
        done = False
        try:
            with _db_errors_in_one_line(self.db.display, psycopg.Error):
                driver = connection.driver_connection
                assert isinstance(driver, psycopg.Connection), "the engine's driver is psycopg"
                driver.execute("SET LOCAL DateStyle = 'ISO, YMD'")  # the ISO text _walls reads, whatever the server's
                for block in _copy_out(driver, sql):
                    yield typed(block)
                done = True
        finally:
            if done:
                connection.close()  # back to the pool, its transaction rolled back
            else:
                connection.invalidate()  # left in the middle of a copy (handed back, or an error): closed


def _copy_out(driver: Any, sql: str) -> Iterator[bytearray]:
    """The rows of ``COPY ... TO STDOUT`` by libpq's own calls, in blocks of :data:`COPY_ROWS` rows.

    psycopg's ``cursor.copy`` iterates in Python over one message per row (its generator and wait
    layers): most of the time a million visits took to read (profiled: 5 of 9 s). Here
    ``PQgetCopyData`` is called in a tight loop (blocking: the session's statement timeout and TCP
    keepalives bound the wait), which copies a million visits out in under a second. Errors are
    raised as psycopg raises them (the caller turns them into one line).
    """
    import psycopg
    from psycopg import pq

    pgconn = driver.pgconn
    encoding = driver.info.encoding
    blocking = pgconn.nonblocking
    pgconn.nonblocking = 0  # send the query whole; every call below waits for the server
    try:
        pgconn.send_query(sql.encode())
        result = pgconn.get_result()
        if result is None or result.status != pq.ExecStatus.COPY_OUT:
            while pgconn.get_result() is not None:
                pass
            if result is not None and result.status == pq.ExecStatus.FATAL_ERROR:
                raise psycopg.errors.error_from_result(result, encoding=encoding)
            raise psycopg.OperationalError(f"expected a copy of the rows; the server answered {result!r}")
        block, rows = bytearray(), 0
        while True:
            size, data = pgconn.get_copy_data(0)
            if size <= 0:  # -1: the copy is complete; -2: it failed; its closing result says how
                break
            block += data
            rows += 1
            if rows == COPY_ROWS:
                yield block
                block, rows = bytearray(), 0
        while (result := pgconn.get_result()) is not None:
            if result.status == pq.ExecStatus.FATAL_ERROR:
                raise psycopg.errors.error_from_result(result, encoding=encoding)
        if size != -1:
            raise psycopg.OperationalError(pgconn.get_error_message(encoding) or "the copy of the rows failed")
        if rows:
            yield block
    finally:
        pgconn.nonblocking = blocking


def _first_overlap(
    person: np.ndarray, admit: np.ndarray, end: np.ndarray, has_end: np.ndarray
) -> tuple[int, int] | None:
    """How many stays begin while the same patient's previous one is open, and the position of the first; None
    when none does (the SQL path's ``_overlaps``, on int64 columns: no sort of a string frame).

    Within a patient the order is (admission, position), as the stable sort by (patient, admission) gives
    (``lexsort`` is stable); the first is then the one whose patient id sorts first as text, as the frame's
    patient ids do. Compared :data:`BUILD_ROWS` neighbours at a time (no sorted copy of every column).
    """
    n = len(person)
    order = np.lexsort((admit, person))
    overlap = np.zeros(n, dtype=bool)
    for begin in range(0, max(n - 1, 0), BUILD_ROWS):
        at = order[begin : begin + BUILD_ROWS + 1]
        same = person[at]
        previous, following = at[:-1], at[1:]
        overlap[begin + 1 : begin + len(at)] = (same[1:] == same[:-1]) & (
            ~has_end[previous] | (end[previous] > admit[following])
        )
    if not overlap.any():
        return None
    hits = order[overlap]  # positions in the frame, in (patient as int, admission, position) order
    del order
    patients = person[hits]
    first_patient = min(np.unique(patients).tolist(), key=str)
    return int(overlap.sum()), int(hits[patients == first_patient][0])


@functools.cache
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim``, or None (another C library: nothing to call)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or None).malloc_trim
    except (OSError, AttributeError, TypeError):  # no such library or function here
        return None


def _return_freed() -> None:
    """Give the heap pages freed so far back to the system (glibc's ``malloc_trim``).

    The scan's batches are many arrays of a few hundred KB, which glibc keeps in its heap; when
    they are joined into one array per column, the pages they leave free inside the heap stay
    the process's memory (glibc returns only a free top of the heap) and the peak holds every
    column twice. Measured at ten million visits: 0.25 GB of such pages after a read.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _code_dtype(distinct: int) -> type[np.signedinteger[Any]]:
    """The smallest signed integer type that holds codes 0..distinct-1 (and -1)."""
    for dtype in (np.int8, np.int16, np.int32):
        if distinct <= np.iinfo(dtype).max:
            return dtype
    return np.int64


def _strings(values: np.ndarray, *, prefix: tuple[np.ndarray, str, str] | None = None) -> pd.Series:
    """int64 ids as a pandas str column (Arrow large strings, as pandas holds them: no conversion copy), built
    :data:`BUILD_ROWS` at a time; ``prefix`` = (flags, text where the flag is 0, text elsewhere) before each."""
    chunks = []
    for begin in range(0, len(values), BUILD_ROWS):
        text = pa.array(values[begin : begin + BUILD_ROWS]).cast(pa.large_string())
        if prefix is not None:
            flags, zero, other = prefix
            head = pc.if_else(
                pa.array(flags[begin : begin + BUILD_ROWS] == 0),
                pa.scalar(zero, pa.large_string()),
                pa.scalar(other, pa.large_string()),
            )
            text = pc.binary_join_element_wise(head, text, pa.scalar("", pa.large_string()))
        chunks.append(text)
    return pa.chunked_array(chunks, type=pa.large_string()).to_pandas()
