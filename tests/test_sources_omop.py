"""OMOP CDM v5.4 in: one hospital from SQLite, PostgreSQL, CSV and Parquet exports gives the hand-worked records.

Errors name the table file or database, the record (its id), the column and what was
expected; validating never writes (the SQLite file is byte-identical, the PostgreSQL session
refuses writes); the mapping decides which visits and care sites count.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest

from medalloc_core.contract import DataContractError
from medalloc_core.encounters import encounters_to_daily
from medalloc_core.sources import DataSource, load_source, validate_source
from medalloc_core.sources.mapping import OmopMapping, SourceMapping
from medalloc_core.sources.synthetic import create_omop_database, omop_tables, write_omop
from medalloc_core.synthetic import RegionConfig, generate_region
from tests import pg_server
from tests.source_fixtures import expected_daily, write_export
from tests.source_fixtures import omop_tables as fixture_tables


def _sqlite(tmp_path: Path, tables: dict[str, pd.DataFrame] | None = None, name: str = "cdm.sqlite") -> Path:
    path = tmp_path / name
    create_omop_database(tables or fixture_tables(), f"sqlite:///{path}")
    return path


def _frame(source: DataSource | str | Path) -> pd.DataFrame:
    return load_source(source).records.frame.reset_index(drop=True)


def _errors(source: DataSource | str | Path) -> list[str]:
    report = validate_source(source)
    assert not report.ok
    return [str(p) for p in report.errors]


@pytest.fixture
def sqlite_cdm(tmp_path: Path) -> Path:
    return _sqlite(tmp_path)


# ---------------------------------------------------------------------- the same hospital from every store
@pytest.mark.parametrize("store", ["sqlite-url", "sqlite-path", "csv", "parquet"])
def test_every_store_gives_the_hand_worked_daily_records(tmp_path: Path, store: str) -> None:
    if store.startswith("sqlite"):
        path = _sqlite(tmp_path)
        location = f"sqlite:///{path}" if store == "sqlite-url" else str(path)
    else:
        location = str(write_export(fixture_tables(), tmp_path / "export", store))
    data = load_source(location)
    pd.testing.assert_frame_equal(data.records.frame.reset_index(drop=True), expected_daily(), check_dtype=False)
    assert data.report.summary["source"] == "omop"
    assert data.report.summary["open_stays"] == 1
    # The stays keep the person ids (the privacy unit) on the node, one row per unit stay.
    stays = data.stays
    assert stays is not None and len(stays) == 5
    assert sorted(stays["patient_id"].unique()) == ["10", "12", "13"]
    assert list(stays.loc[stays["patient_id"] == "10", "unit"]) == ["Emergency department", "ICU", "Ward 3"]


def test_generated_region_round_trips_through_every_store(tmp_path: Path) -> None:
    """A generated hospital written as OMOP (with outpatient noise) reads back to its encounter file's daily records."""
    region = generate_region(RegionConfig(hospitals=1, days=60, seed=3, shape="encounters", max_beds=120))
    hospital = region.hospitals[0]
    assert hospital.encounters is not None
    expected = encounters_to_daily(hospital.encounters).reset_index(drop=True)
    tables = omop_tables(hospital.encounters, hospital_id=hospital.hospital_id)
    assert (tables["visit_occurrence"]["visit_concept_id"] != 9201).sum() > 0  # noise that must be left out
    for fmt in ("sqlite", "csv", "parquet"):
        out = write_omop(tables, tmp_path / f"H000-{fmt}", fmt)  # type: ignore[arg-type]
        pd.testing.assert_frame_equal(_frame(str(out)), expected, check_dtype=False)


# ---------------------------------------------------------------------- the mapping
def test_mapping_picks_the_units_and_renames_them(sqlite_cdm: Path) -> None:
    mapping = SourceMapping(omop=OmopMapping(units={"ICU": "ICU", "Ward 3": "MED-3"}))
    report = validate_source(DataSource(str(sqlite_cdm), mapping=mapping))
    assert report.ok, report.errors
    assert report.summary["units"] == ["ICU", "MED-3"]
    details = dict(report.summary["details"])
    assert details["not a unit"].startswith("1 stays in care sites not in [omop] units (Emergency department: 1)")
    frame = _frame(DataSource(str(sqlite_cdm), mapping=mapping))
    expected = expected_daily()
    expected = expected[expected["unit"] != "Emergency department"].replace({"unit": {"Ward 3": "MED-3"}})
    pd.testing.assert_frame_equal(frame, expected.reset_index(drop=True), check_dtype=False)


def test_mapping_by_care_site_source_value_and_by_id(sqlite_cdm: Path) -> None:
    by_code = DataSource(str(sqlite_cdm), mapping=SourceMapping(omop=OmopMapping(unit_name="care_site_source_value")))
    assert validate_source(by_code).summary["units"] == ["ED", "ICU", "W3"]
    by_id = DataSource(str(sqlite_cdm), mapping=SourceMapping(omop=OmopMapping(unit_name="care_site_id")))
    assert validate_source(by_id).summary["units"] == ["1", "2", "3"]


def test_visit_level_counts_each_visit_as_one_stay_in_its_care_site(sqlite_cdm: Path) -> None:
    source = DataSource(str(sqlite_cdm), mapping=SourceMapping(omop=OmopMapping(level="visit_occurrence")))
    frame = _frame(source)
    ward = frame[frame["unit"] == "Ward 3"].set_index("date")
    # Patient 10's whole visit is in Ward 3 now: admitted 1 January, home 4 January.
    assert ward.loc["2025-01-01", "admissions"] == 1
    assert list(ward["census"]) == [1, 2, 2, 1]
    assert sorted(frame["unit"].unique()) == ["ICU", "Ward 3"]


def test_inpatient_concepts_are_the_sites_choice(sqlite_cdm: Path) -> None:
    only_9201 = DataSource(str(sqlite_cdm), mapping=SourceMapping(omop=OmopMapping(inpatient_visit_concepts=(9201,))))
    report = validate_source(only_9201)
    assert report.ok
    assert report.summary["open_stays"] == 0  # the ER+inpatient visit (262) of patient 12 is out
    assert "262: 1" in dict(report.summary["details"])["left out"]
    none = DataSource(str(sqlite_cdm), mapping=SourceMapping(omop=OmopMapping(inpatient_visit_concepts=(581476,))))
    (error,) = _errors(none)
    assert "no visit_occurrence row has an inpatient visit_concept_id (581476)" in error
    assert "9201 (2 visits)" in error and "inpatient-visit-concepts" in error


# ---------------------------------------------------------------------- errors name table, record, column
def test_bad_values_name_the_record_and_column_in_a_database(tmp_path: Path) -> None:
    tables = fixture_tables()
    detail = tables["visit_detail"]
    detail["visit_detail_end_datetime"] = detail["visit_detail_end_datetime"].astype(object)
    detail.loc[1, "visit_detail_end_datetime"] = "2025-02-30 10:00:00"  # no such day
    detail["visit_detail_start_datetime"] = detail["visit_detail_start_datetime"].astype(object)
    detail.loc[2, "visit_detail_start_datetime"] = "02/01/2025 15:00"  # not ISO
    path = tmp_path / "bad.sqlite"
    _write_text_tables(tables, path)
    errors = _errors(str(path))  # an SQLite file given by path is named by that path
    wanted = (
        f"error: {path}, table visit_detail, visit_detail_id 101, column 'visit_detail_end_datetime': "
        "'2025-02-30 10:00:00' is not a valid date or date-time; expected an ISO date YYYY-MM-DD"
    )
    assert any(e.startswith(wanted) for e in errors), errors
    assert any("visit_detail_id 102, column 'visit_detail_start_datetime': '02/01/2025 15:00'" in e for e in errors)
    url = f"sqlite:///{path}"
    assert all(e.startswith(f"error: {url}, table visit_detail") for e in _errors(url))


def test_bad_values_name_the_file_row_and_column_in_an_export(tmp_path: Path) -> None:
    tables = fixture_tables()
    tables["visit_occurrence"]["person_id"] = tables["visit_occurrence"]["person_id"].astype(object)
    tables["visit_occurrence"].loc[2, "person_id"] = "P-12"
    folder = write_export(tables, tmp_path / "export")
    (error,) = _errors(str(folder))
    assert error == (
        f"error: {folder / 'visit_occurrence.csv'}, row 4, visit_occurrence_id 3, column 'person_id': "
        "'P-12' is not a whole number; expected an integer id"
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda t: t["visit_detail"].drop(columns=["visit_occurrence_id"]),
            "visit_detail has no column 'visit_occurrence_id'; expected the OMOP CDM v5.4 columns",
        ),
        (
            lambda t: t["visit_detail"].assign(care_site_id=[1, 99, 3]),
            "visit_detail_id 101, column 'care_site_id': care_site_id 99 is not in care_site",
        ),
        (
            lambda t: t["visit_detail"].assign(visit_detail_id=[100, 100, 102]),
            "visit_detail_id 100 appears more than once (first at table visit_detail, visit_detail_id 100)",
        ),
        (
            lambda t: t["visit_detail"].assign(visit_occurrence_id=[1, 7, 1]),
            "column 'visit_occurrence_id': visit_occurrence_id 7 is not in visit_occurrence",
        ),
        (
            lambda t: t["visit_detail"].assign(person_id=[10, 11, 10]),
            "column 'person_id': person_id 11 differs from its visit's (10); expected the same person",
        ),
        (
            lambda t: t["visit_detail"].assign(
                visit_detail_end_datetime=[pd.Timestamp("2024-12-31 12:00"), *t["visit_detail"].iloc[1:, 6]]
            ),
            "visit_detail_id 100, column 'visit_detail_end_datetime': ends 2024-12-31 12:00 before it begins "
            "2025-01-01 08:00",
        ),
    ],
)
def test_each_broken_detail_is_named(tmp_path: Path, change, expected: str) -> None:  # type: ignore[no-untyped-def]
    tables = fixture_tables()
    tables["visit_detail"] = change(tables)
    path = tmp_path / "cdm.sqlite"
    _write_text_tables(tables, path)  # no constraints: the database holds what a sloppy ETL wrote
    errors = _errors(str(path))
    assert any(expected in e for e in errors), errors


def test_missing_table_and_empty_start(tmp_path: Path) -> None:
    folder = write_export({"care_site": fixture_tables()["care_site"]}, tmp_path / "no-visits")
    # A folder without visit_occurrence is not recognised as OMOP by itself: say the format.
    (error,) = _errors(DataSource(str(folder), format="omop"))
    assert "no visit_occurrence table; expected the OMOP CDM v5.4 tables visit_occurrence (required)" in error
    tables = fixture_tables()
    tables["visit_occurrence"].loc[3, "visit_start_date"] = None
    (error,) = _errors(str(_sqlite(tmp_path, tables, "empty-start.sqlite")))
    assert "visit_occurrence_id 4, column 'visit_start_datetime': empty visit_start_datetime and visit_start_date" in (
        error
    )


def test_validation_never_writes_and_never_creates(tmp_path: Path, sqlite_cdm: Path) -> None:
    before = hashlib.sha256(sqlite_cdm.read_bytes()).hexdigest(), sorted(p.name for p in tmp_path.iterdir())
    assert validate_source(str(sqlite_cdm)).ok
    after = hashlib.sha256(sqlite_cdm.read_bytes()).hexdigest(), sorted(p.name for p in tmp_path.iterdir())
    assert before == after
    missing = tmp_path / "missing.sqlite"
    (error,) = _errors(f"sqlite:///{missing}")
    assert error.endswith("no such SQLite database file")
    assert not missing.exists()
    with pytest.raises(DataContractError):
        load_source(f"sqlite:///{missing}")


def test_unsupported_database_and_password_never_shown(tmp_path: Path) -> None:
    (error,) = _errors("mysql://reader:s3cret@db.example/omop")
    assert "database kind 'mysql' is not supported" in error and "s3cret" not in error
    assert "***" in DataSource("postgresql://reader:s3cret@127.0.0.1:1/omop").display


def _write_text_tables(tables: dict[str, pd.DataFrame], path: Path) -> None:
    """SQLite tables whose datetime columns hold arbitrary text (as a sloppy ETL leaves them)."""
    import sqlite3

    with sqlite3.connect(path) as conn:
        for name, frame in tables.items():
            frame.astype(object).where(frame.notna(), None).map(
                lambda v: str(v) if hasattr(v, "isoformat") else v
            ).to_sql(name, conn, index=False)
    conn.close()


# ---------------------------------------------------------------------- a real PostgreSQL server
def test_postgresql_by_url_with_a_schema(postgres: pg_server.PostgresServer) -> None:
    url = pg_server.create_database(postgres, "omop_schema")
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA cdm")
    create_omop_database(fixture_tables(), url, schema="cdm")
    # Without the schema the tables are not on the search path: the error says where it looked.
    (error,) = _errors(url)
    assert error.startswith(f"error: {url}: no visit_occurrence table")
    source = DataSource(url, mapping=SourceMapping(omop=OmopMapping(schema="cdm")))
    data = load_source(source)
    pd.testing.assert_frame_equal(data.records.frame.reset_index(drop=True), expected_daily(), check_dtype=False)
    assert data.report.summary["format"] == "omop (postgresql)"


def test_postgresql_generated_hospital_and_read_only_session(
    postgres: pg_server.PostgresServer, tmp_path: Path
) -> None:
    region = generate_region(RegionConfig(hospitals=1, days=45, seed=5, shape="encounters", max_beds=80))
    hospital = region.hospitals[0]
    assert hospital.encounters is not None
    url = pg_server.create_database(postgres, "omop_generated")
    create_omop_database(omop_tables(hospital.encounters, hospital_id="H000"), url)
    expected = encounters_to_daily(hospital.encounters).reset_index(drop=True)
    pd.testing.assert_frame_equal(_frame(url), expected, check_dtype=False)

    # The reader's own connection refuses to write: validation cannot change the CDM.
    from sqlalchemy import text

    from medalloc_core.sources.omop import _Database

    db = _Database(url, "")
    try:
        with db.engine.connect() as conn, pytest.raises(Exception, match="read-only transaction"):
            conn.execute(text("DELETE FROM visit_detail"))
    finally:
        db.close()
    assert _frame(url).equals(_frame(url))


def test_postgresql_unreachable_is_one_clear_error(postgres: pg_server.PostgresServer) -> None:
    url = f"postgresql://medalloc:pw@127.0.0.1:{postgres.port}/no_such_db"
    (error,) = _errors(url)
    assert error.startswith(f"error: postgresql://medalloc:***@127.0.0.1:{postgres.port}/no_such_db: ")
    assert "cannot read the database" in error and 'database "no_such_db" does not exist' in error
