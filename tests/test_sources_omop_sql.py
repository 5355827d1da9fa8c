"""OMOP counted in its database (omop_sql.py): the same stays, daily records and words as the row reader.

The SQL path checks and aggregates in SQLite and in a real PostgreSQL; the row reader
(omop.py's ``_Reader``, which reads whole tables into pandas) is the reference. A CDM too big
for the row reader is explained by the SQL path itself: the same messages, naming the table,
the record's id and the field, the first examples listed and the rest counted.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from medalloc_core.sources import omop_sql
from medalloc_core.sources.mapping import OmopMapping
from medalloc_core.sources.omop import _Database, _Reader
from medalloc_core.sources.omop_sql import read_omop_sql
from medalloc_core.sources.synthetic import create_omop_database
from medalloc_core.synthetic import RegionConfig, generate_region
from tests import pg_server
from tests.source_fixtures import generated_omop_hospital, omop_mappings
from tests.source_fixtures import omop_tables as fixture_tables

STAYS = ["encounter_id", "patient_id", "unit", "admit_time", "discharge_time"]


def _both(url: str, mapping: OmopMapping, *, scan: bool = True) -> tuple[Any, Any]:
    """(SQL path, row reader) on the same database; the SQL path must have run (not handed over). ``scan``: a clean
    CDM read first by the streamed scan (omop_scan.py), as the SQL path reads it by default."""
    database = _Database(url, mapping.schema)
    try:
        counted = read_omop_sql(database, mapping, scan=scan)
    finally:
        database.close()
    assert counted is not None, "the SQL path handed the database to the row reader"
    database = _Database(url, mapping.schema)
    try:
        reference = _Reader(database, mapping).run()
    finally:
        database.close()
    return counted, reference


def _same(counted: Any, reference: Any) -> None:
    stays, problems, summary = counted
    ref_stays, ref_problems, ref_summary = reference
    assert [str(p) for p in problems] == [str(p) for p in ref_problems]
    pd.testing.assert_frame_equal(summary["daily"], ref_summary["daily"])
    order = ["encounter_id"]
    as_text = {"unit": str}  # the scan's unit is a categorical (omop_scan: a code per stay), the same names
    pd.testing.assert_frame_equal(
        stays[STAYS].astype(as_text).sort_values(order).reset_index(drop=True),
        ref_stays[STAYS].astype(as_text).sort_values(order).reset_index(drop=True),
        check_dtype=False,
    )
    assert summary["details"] == ref_summary["details"]
    for key in ("encounters", "open_stays", "units", "date_start", "date_end", "level", "format"):
        assert summary[key] == ref_summary[key], key


@pytest.fixture(scope="module")
def hospital() -> dict[str, pd.DataFrame]:
    return generated_omop_hospital()


@pytest.mark.parametrize(
    "mapping",
    list(omop_mappings().values()),
    ids=list(omop_mappings()),
)
def test_sqlite_counted_in_the_database_equals_the_row_reader(
    tmp_path: Path, hospital: dict[str, pd.DataFrame], mapping: OmopMapping
) -> None:
    path = tmp_path / "cdm.sqlite"
    create_omop_database(hospital, f"sqlite:///{path}")
    _same(*_both(f"sqlite:///{path}", mapping))


def test_units_mapping_and_missing_care_sites_as_the_row_reader(tmp_path: Path) -> None:
    tables = fixture_tables()
    tables["visit_occurrence"] = tables["visit_occurrence"].assign(care_site_id=[3, 4, None, 2])
    path = tmp_path / "cdm.sqlite"
    create_omop_database(tables, f"sqlite:///{path}")
    for mapping in (OmopMapping(), OmopMapping(units={"ICU": "ICU", "Ward 3": "MED-3", "Hospital": "ALL"})):
        counted, reference = _both(f"sqlite:///{path}", mapping)
        _same(counted, reference)
        assert any("have no care_site_id" in str(p) for p in counted[1])


def test_iso_text_times_with_t_z_and_offsets_as_the_row_reader(tmp_path: Path) -> None:
    """The OMOP community's export style in SQLite text: T, Z, an offset, fractions, dates alone."""
    path = tmp_path / "cdm.sqlite"
    create_omop_database(fixture_tables(), f"sqlite:///{path}")
    with sqlite3.connect(path) as connection:
        connection.execute(
            "UPDATE visit_detail SET visit_detail_start_datetime = replace(visit_detail_start_datetime, ' ', 'T') "
            "|| 'Z'"
        )
        connection.execute(
            "UPDATE visit_occurrence SET visit_start_datetime = substr(visit_start_datetime, 1, 16) || '+01:00' "
            "WHERE visit_start_datetime IS NOT NULL"
        )
    _same(*_both(f"sqlite:///{path}", OmopMapping()))


def _corrupt(path: Path) -> None:
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE visit_detail SET visit_detail_start_datetime = 'soon' WHERE visit_detail_id = 101")
        connection.execute("UPDATE visit_detail SET visit_detail_end_date = '2025-02-30' WHERE visit_detail_id = 102")
        connection.execute("UPDATE visit_detail SET visit_occurrence_id = 77 WHERE visit_detail_id = 100")
        connection.execute("UPDATE visit_occurrence SET person_id = 'P-13' WHERE visit_occurrence_id = 4")


def test_a_cdm_too_big_for_the_row_reader_is_explained_in_its_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "cdm.sqlite"
    create_omop_database(fixture_tables(), f"sqlite:///{path}")
    _corrupt(path)
    url = f"sqlite:///{path}"
    database = _Database(url, "")
    reference = _Reader(database, OmopMapping()).run()
    database.close()
    # small: the SQL path hands a flagged CDM to the row reader
    database = _Database(url, "")
    assert read_omop_sql(database, OmopMapping()) is None
    database.close()
    monkeypatch.setattr(omop_sql, "ROW_READER_MAX_VISITS", 0)
    database = _Database(url, "")
    counted = read_omop_sql(database, OmopMapping())
    database.close()
    assert counted is not None and counted[0] is None
    problems = {str(p) for p in counted[1]}
    # the id checks stop the row reader before the times; both name the same records and fields
    for expected in (str(p) for p in reference[1]):
        assert expected in problems, (expected, problems)
    assert any(
        "visit_detail_id 100, column 'visit_occurrence_id': visit_occurrence_id 77 is not in" in p for p in problems
    )
    assert any("'P-13' is not a whole number" in p and "visit_occurrence_id 4" in p for p in problems)


def test_the_times_of_a_big_cdm_are_explained_by_record_and_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "cdm.sqlite"
    create_omop_database(fixture_tables(), f"sqlite:///{path}")
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE visit_detail SET visit_detail_start_datetime = 'soon' WHERE visit_detail_id = 101")
        connection.execute("UPDATE visit_detail SET visit_detail_end_date = '2025-02-30' WHERE visit_detail_id = 102")
    url = f"sqlite:///{path}"
    database = _Database(url, "")
    reference = {str(p) for p in _Reader(database, OmopMapping()).run()[1]}
    database.close()
    monkeypatch.setattr(omop_sql, "ROW_READER_MAX_VISITS", 0)
    database = _Database(url, "")
    counted = read_omop_sql(database, OmopMapping())
    database.close()
    assert counted is not None and counted[0] is None
    assert {str(p) for p in counted[1]} == reference
    assert any(
        "table visit_detail, visit_detail_id 101, column 'visit_detail_start_datetime': 'soon' is not a valid" in p
        for p in reference
    )


def test_many_bad_records_list_the_first_and_count_the_rest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "cdm.sqlite"
    tables = fixture_tables()
    visits = tables["visit_occurrence"]
    many = pd.concat([visits.assign(visit_occurrence_id=visits["visit_occurrence_id"] + 10 * k) for k in range(40)])
    tables["visit_occurrence"] = many
    tables["visit_detail"] = tables["visit_detail"].iloc[:0]
    create_omop_database(tables, f"sqlite:///{path}")
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE visit_occurrence SET visit_start_date = 'not a date'")
    monkeypatch.setattr(omop_sql, "ROW_READER_MAX_VISITS", 0)
    database = _Database(f"sqlite:///{path}", "")
    counted = read_omop_sql(database, OmopMapping())
    database.close()
    assert counted is not None
    problems = [str(p) for p in counted[1]]
    listed = [p for p in problems if "'not a date' is not a valid date" in p]
    assert len(listed) == omop_sql.PROBLEMS_PER_CHECK and "table visit_occurrence, visit_occurrence_id " in listed[0]
    inpatient = int(many["visit_concept_id"].isin(OmopMapping().inpatient_visit_concepts).sum())
    assert any(f"... and {inpatient - omop_sql.PROBLEMS_PER_CHECK:,} more record(s)" in p for p in problems)


def test_a_hospital_scale_cdm_is_routed_to_the_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medalloc_core.sources import load_source
    from tests.source_fixtures import expected_daily

    path = tmp_path / "cdm.sqlite"
    create_omop_database(fixture_tables(), f"sqlite:///{path}")
    calls: list[int] = []
    counting = omop_sql.read_omop_sql

    def recorded(database: Any, mapping: OmopMapping, **kwargs: bool) -> Any:
        calls.append(omop_sql.visit_rows(database))
        return counting(database, mapping, **kwargs)

    monkeypatch.setattr(omop_sql, "read_omop_sql", recorded)
    load_source(path)
    assert calls == []  # 4 visits: the row reader
    monkeypatch.setattr(omop_sql, "SQL_MIN_VISITS", 4)
    data = load_source(path)
    assert calls == [4]
    pd.testing.assert_frame_equal(data.records.frame.reset_index(drop=True), expected_daily(), check_dtype=False)


def test_daily_from_event_counts_equals_the_reference_derivation(hospital: dict[str, pd.DataFrame]) -> None:
    from medalloc_core.encounters import encounters_to_daily

    region = generate_region(RegionConfig(hospitals=1, days=40, seed=9, shape="encounters", max_beds=40))
    stays = region.hospitals[0].encounters
    assert stays is not None
    admitted = stays.assign(day=stays["admit_time"].dt.normalize(), kind=0)
    discharged = stays.dropna(subset=["discharge_time"]).assign(
        day=lambda f: f["discharge_time"].dt.normalize(), kind=1
    )
    events = pd.concat([admitted, discharged]).groupby(["unit", "kind", "day"]).size().rename("n").reset_index()
    pd.testing.assert_frame_equal(omop_sql.daily_from_events(events), encounters_to_daily(stays))


# ---------------------------------------------------------------------- a real PostgreSQL server
def test_postgresql_counted_in_the_database_equals_the_row_reader(
    postgres: pg_server.PostgresServer, hospital: dict[str, pd.DataFrame]
) -> None:
    url = pg_server.create_database(postgres, "omop_sql")
    create_omop_database(hospital, url)
    for mapping in (OmopMapping(), OmopMapping(level="visit_occurrence"), OmopMapping(unit_name="care_site_id")):
        for scan in (False, True):  # the SQL path itself, and the scan that reads a clean CDM first
            _same(*_both(url, mapping, scan=scan))


def test_postgresql_problems_of_a_big_cdm_in_the_row_readers_words(
    postgres: pg_server.PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = pg_server.create_database(postgres, "omop_sql_bad")
    tables = fixture_tables()
    tables["visit_detail"] = tables["visit_detail"].assign(
        visit_occurrence_id=[1, 1, 99], visit_detail_end_datetime=[pd.Timestamp("2024-12-31"), None, None]
    )
    create_omop_database(tables, url)
    database = _Database(url, "")
    reference = {str(p) for p in _Reader(database, OmopMapping()).run()[1]}
    database.close()
    monkeypatch.setattr(omop_sql, "ROW_READER_MAX_VISITS", 0)
    database = _Database(url, "")
    counted = read_omop_sql(database, OmopMapping())
    database.close()
    assert counted is not None and counted[0] is None
    assert {str(p) for p in counted[1]} == reference
    assert any("visit_occurrence_id 99 is not in visit_occurrence" in p for p in reference)
