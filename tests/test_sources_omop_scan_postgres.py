"""OMOP in PostgreSQL read by the streamed scan (omop_scan.py): the SQL path's result exactly, or handed back to it.

The scan copies each table's raw columns out of a real PostgreSQL (``COPY ... TO STDOUT``),
types them with pyarrow's CSV reader and checks and counts them as the SQLite scan does.
The reference is the SQL path (omop_sql.py, tested against the row reader) with the scan
turned off, on the same database; anything the scan does not read exactly it hands back
(None) and the SQL path, or the row reader, explains it in the same words. One throwaway
cluster serves the whole module; each case reads a database copied from a template.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import pandas as pd
import pytest

from medalloc_core.contract import DataContractError
from medalloc_core.sources import omop_scan
from medalloc_core.sources.mapping import OmopMapping
from medalloc_core.sources.omop import _Database, _Reader
from medalloc_core.sources.omop_sql import read_omop_sql
from medalloc_core.sources.synthetic import create_omop_database
from tests import pg_server
from tests.source_fixtures import generated_omop_hospital, omop_mappings
from tests.source_fixtures import omop_tables as fixture_tables
from tests.test_sources_omop_scan import _same, record_scans

_names = itertools.count()


@pytest.fixture(scope="module")
def hospital_url(postgres: pg_server.PostgresServer) -> str:
    url = pg_server.create_database(postgres, "hospital")
    create_omop_database(generated_omop_hospital(), url)
    return url


@pytest.fixture(scope="module")
def fixture_template(postgres: pg_server.PostgresServer) -> str:
    """The small hand-worked CDM, as a template database each case copies (CREATE DATABASE ... TEMPLATE)."""
    create_omop_database(fixture_tables(), pg_server.create_database(postgres, "fixture"))
    return "fixture"


def _copy_with(postgres: pg_server.PostgresServer, template: str, *statements: str) -> str:
    """A fresh copy of the template database with ``statements`` run in it; its URL."""
    import psycopg

    name = f"case_{next(_names)}"
    with psycopg.connect(postgres.url(), autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    url = postgres.url(name)
    with psycopg.connect(url, autocommit=True) as connection:
        for statement in statements:
            connection.execute(statement)
    return url


def _read(url: str, mapping: OmopMapping, **how: Any) -> Any:
    database = _Database(url, mapping.schema)
    try:
        return read_omop_sql(database, mapping, **how)
    finally:
        database.close()


def _scanned_and_sql(url: str, mapping: OmopMapping, **how: Any) -> tuple[Any, Any]:
    """(the scan alone, the SQL path without the scan): the scan must have read it (not handed it back)."""
    scanned = _read(url, mapping, scan=True, sql=False, **how)
    assert scanned is not None, "the scan handed a clean CDM back"
    return scanned, _read(url, mapping, scan=False, **how)


@pytest.mark.parametrize(
    "mapping",
    [*omop_mappings().values(), OmopMapping(units={"icu": "ICU", "medical": "MED"})],
    ids=[*omop_mappings(), "units"],
)
def test_a_clean_postgresql_cdm_is_scanned_to_the_sql_paths_result(hospital_url: str, mapping: OmopMapping) -> None:
    scanned, sql = _scanned_and_sql(hospital_url, mapping)
    _same(scanned, sql)
    assert len(scanned[0]) > 50


def test_small_blocks_read_the_same(hospital_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A block boundary of the copy changes nothing (each block is typed on its own)."""
    whole = _read(hospital_url, OmopMapping(), scan=True, sql=False)
    monkeypatch.setattr(omop_scan, "COPY_ROWS", 7)
    batched = _read(hospital_url, OmopMapping(), scan=True, sql=False)
    assert whole is not None and batched is not None
    _same(batched, whole)


def test_time_zones_fractions_and_what_the_csv_reader_cannot_type_as_the_sql_path(
    postgres: pg_server.PostgresServer, fixture_template: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``timestamptz`` columns (converted to the site's zone in the copy, or the session's without one),
    microseconds (kept, as the SQL path keeps them: an end 0.1 s before its start is an end before its start),
    and a block holding an ``infinity`` or a BC date (typed as text, that block only): the SQL path's result."""
    monkeypatch.setattr(omop_scan, "COPY_ROWS", 2)  # the odd values in some blocks, not in others
    url = _copy_with(
        postgres,
        fixture_template,
        "ALTER TABLE visit_detail ALTER COLUMN visit_detail_start_datetime TYPE timestamptz "
        "USING visit_detail_start_datetime AT TIME ZONE 'UTC'",
        "UPDATE visit_detail SET visit_detail_end_datetime = visit_detail_end_datetime + interval '0.25 s' "
        "WHERE visit_detail_id = 101",
        "UPDATE visit_detail SET visit_detail_start_datetime = visit_detail_start_datetime + interval '0.123456 s' "
        "WHERE visit_detail_id = 102",
        "UPDATE visit_occurrence SET visit_end_datetime = 'infinity' WHERE visit_occurrence_id = 2",
        "UPDATE visit_occurrence SET visit_end_date = '0044-03-15 BC' WHERE visit_occurrence_id = 2",
    )
    for mapping in (OmopMapping(), OmopMapping(timezone="Europe/Berlin"), OmopMapping(level="visit_occurrence")):
        scanned, sql = _scanned_and_sql(url, mapping)
        _same(scanned, sql)
    stays = scanned[0]
    assert not stays.empty
    back = _copy_with(
        postgres,
        fixture_template,
        "UPDATE visit_detail SET visit_detail_end_datetime = visit_detail_start_datetime - interval '0.1 s' "
        "WHERE visit_detail_id = 101",
    )
    assert _read(back, OmopMapping(), scan=True, sql=False) is None  # strict: flagged, handed back
    scanned, sql = _scanned_and_sql(back, OmopMapping(), lenient=True)  # a node's reading: left out here
    _same(scanned, sql)
    assert scanned[2].get("left_out") == sql[2].get("left_out") == 1


@pytest.mark.parametrize(
    "statements",
    [
        ["UPDATE visit_detail SET visit_detail_start_datetime = 'infinity' WHERE visit_detail_id = 101"],
        ["UPDATE visit_detail SET visit_detail_end_date = '1600-01-04' WHERE visit_detail_id = 102"],
        ["UPDATE visit_detail SET visit_occurrence_id = 77 WHERE visit_detail_id = 100"],
        ["UPDATE visit_detail SET person_id = 12 WHERE visit_detail_id = 100"],
        ["UPDATE visit_occurrence SET person_id = NULL WHERE visit_occurrence_id = 2"],
        [
            "ALTER TABLE visit_detail DROP CONSTRAINT visit_detail_pkey",
            "UPDATE visit_detail SET visit_detail_id = 100 WHERE visit_detail_id = 101",
        ],
        ["UPDATE visit_occurrence SET care_site_id = 9 WHERE visit_occurrence_id = 3"],
        ["UPDATE care_site SET care_site_name = ' ' WHERE care_site_id = 2"],
        [
            "UPDATE visit_occurrence SET visit_start_date = NULL, visit_start_datetime = NULL "
            "WHERE visit_occurrence_id = 4"
        ],
        [
            "ALTER TABLE visit_occurrence ALTER COLUMN person_id TYPE text",
            "UPDATE visit_occurrence SET person_id = 'P-13' WHERE visit_occurrence_id = 4",
        ],
        [
            "ALTER TABLE visit_detail ALTER COLUMN visit_detail_end_datetime TYPE text",
            "UPDATE visit_detail SET visit_detail_end_datetime = 'soon' WHERE visit_detail_id = 101",
        ],
    ],
    ids=[
        "infinity",
        "before-1678",
        "no-visit",
        "other-person",
        "no-person",
        "repeated-id",
        "unknown-site",
        "nameless-site",
        "no-start",
        "text-id",
        "text-time",
    ],
)
def test_what_it_does_not_read_exactly_is_handed_back_with_the_same_words(
    postgres: pg_server.PostgresServer, fixture_template: str, statements: list[str]
) -> None:
    url = _copy_with(postgres, fixture_template, *statements)
    assert _read(url, OmopMapping(), scan=True, sql=False) is None
    # the routed read is the SQL path's (or, handed on by it, None: the row reader's), and the words the same
    routed, sql = _read(url, OmopMapping()), _read(url, OmopMapping(), scan=False)
    if sql is None:
        assert routed is None
        database = _Database(url, "")
        try:
            problems = _Reader(database, OmopMapping()).run()[1]
        finally:
            database.close()
        assert problems, "the row reader found nothing wrong"
        return
    assert [str(p) for p in routed[1]] == [str(p) for p in sql[1]]
    assert routed[0] is None and any(p.severity == "error" for p in sql[1])


def test_a_locked_table_is_one_clear_error_within_the_lock_timeout(
    postgres: pg_server.PostgresServer, fixture_template: str
) -> None:
    """The copy runs in the engine's session (its lock and statement timeouts): a table another session holds
    locked is one line naming the database, not a wait nor a traceback."""
    import psycopg

    url = _copy_with(postgres, fixture_template)
    messages = []
    for inspected in (False, True):
        database = _Database(url, "", timeout_s=1)
        if inspected:  # the columns inspected before the lock (cached): it is the copy that waits
            for table in ("visit_occurrence", "visit_detail", "care_site"):
                database.columns(table)
        with psycopg.connect(url) as holder:
            holder.execute("LOCK TABLE visit_occurrence IN ACCESS EXCLUSIVE MODE")
            try:
                with pytest.raises(DataContractError) as error:
                    read_omop_sql(database, OmopMapping(), scan=True, sql=False)
            finally:
                database.close()
            holder.rollback()
        messages.append(str(error.value))
    for message in messages:  # the statement and lock timeouts are the same second: either may cancel it
        assert re.search(
            f"error: {re.escape(url)}: cannot read the database "
            r"\((QueryCanceled|LockNotAvailable): canceling statement due to (statement|lock) timeout\)$",
            message,
        ), message


def test_load_source_routes_a_postgresql_cdm_of_scan_size_to_the_scan(
    postgres: pg_server.PostgresServer, fixture_template: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From SCAN_MIN_VISITS visits the scan reads a clean PostgreSQL CDM; what it hands back below SQL_MIN_VISITS
    goes to the row reader, as before (and the session left mid-copy is not reused half-read)."""
    import psycopg

    from medalloc_core.sources import load_source, omop_sql
    from tests.source_fixtures import expected_daily

    url = _copy_with(postgres, fixture_template)
    calls = record_scans(monkeypatch)
    load_source(url)
    assert calls == []  # 4 visits: the row reader
    monkeypatch.setattr(omop_sql, "SCAN_MIN_VISITS", 4)
    data = load_source(url)
    assert len(calls) == 1 and calls[0] is not None
    pd.testing.assert_frame_equal(data.records.frame.reset_index(drop=True), expected_daily(), check_dtype=False)
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("UPDATE visit_detail SET person_id = 12 WHERE visit_detail_id = 100")
    monkeypatch.setattr(omop_scan, "COPY_ROWS", 1)  # handed back with the copy of visit_detail still running
    with pytest.raises(DataContractError, match="visit_detail_id 100"):
        load_source(url)
    assert len(calls) == 2 and calls[1] is None
