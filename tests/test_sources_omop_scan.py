"""OMOP in SQLite read by one streamed scan (omop_scan.py): the SQL path's result exactly, or handed back to it.

The scan reads a clean CDM (every check passes, times in the ISO forms it parses) in one
``SELECT`` per table and checks and counts in Arrow and numpy; anything else it hands back
(None) and the SQL path (omop_sql.py, tested against the row reader) reads it. The
reference here is that SQL path with the scan turned off, on the same database.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from medalloc_core.contract import DataContractError
from medalloc_core.sources import omop_scan
from medalloc_core.sources.mapping import OmopMapping
from medalloc_core.sources.omop import _Database, _Reader
from medalloc_core.sources.omop_sql import read_omop_sql
from medalloc_core.sources.synthetic import create_omop_database
from tests.source_fixtures import generated_omop_hospital, omop_mappings
from tests.source_fixtures import omop_tables as fixture_tables

STAYS = ["encounter_id", "patient_id", "unit", "admit_time", "discharge_time"]


def _read(url: str, mapping: OmopMapping, **how: bool) -> Any:
    database = _Database(url, mapping.schema)
    try:
        return read_omop_sql(database, mapping, **how)
    finally:
        database.close()


def _scanned_and_sql(url: str, mapping: OmopMapping) -> tuple[Any, Any]:
    """(the scan alone, the SQL path without the scan): the scan must have read it (not handed it back)."""
    scanned = _read(url, mapping, scan=True, sql=False)
    assert scanned is not None, "the scan handed a clean CDM back"
    return scanned, _read(url, mapping, scan=False)


def _fixture_cdm_with(tmp_path: Path, update: str) -> str:
    """The URL of the small fixture CDM in SQLite with ``update`` applied."""
    path = tmp_path / "cdm.sqlite"
    create_omop_database(fixture_tables(), f"sqlite:///{path}")
    with sqlite3.connect(path) as connection:
        connection.execute(update)
    return f"sqlite:///{path}"


def _same(counted: Any, reference: Any) -> None:
    stays, problems, summary = counted
    ref_stays, ref_problems, ref_summary = reference
    assert [str(p) for p in problems] == [str(p) for p in ref_problems]
    pd.testing.assert_frame_equal(summary["daily"], ref_summary["daily"])
    # the same stays in the same order (tbl, id): the overlap warning names the first by position; the scan's
    # unit is a categorical (a code per stay: ten million in bounded memory), the same names
    assert isinstance(stays["unit"].dtype, pd.CategoricalDtype)
    pd.testing.assert_frame_equal(
        stays[STAYS].astype({"unit": str}).reset_index(drop=True),
        ref_stays[STAYS].astype({"unit": str}).reset_index(drop=True),
        check_dtype=False,
    )
    assert summary["details"] == ref_summary["details"]
    for key in ("encounters", "open_stays", "units", "date_start", "date_end", "level", "format", "frequency"):
        assert summary.get(key) == ref_summary.get(key), key


@pytest.fixture(scope="module")
def hospital() -> dict[str, pd.DataFrame]:
    return generated_omop_hospital()


@pytest.mark.parametrize(
    "mapping",
    [*omop_mappings().values(), OmopMapping(units={"icu": "ICU", "medical": "MED"})],
    ids=[*omop_mappings(), "units"],
)
def test_a_clean_cdm_is_scanned_to_the_sql_paths_result(
    tmp_path: Path, hospital: dict[str, pd.DataFrame], mapping: OmopMapping
) -> None:
    path = tmp_path / "cdm.sqlite"
    create_omop_database(hospital, f"sqlite:///{path}")
    scanned, sql = _scanned_and_sql(f"sqlite:///{path}", mapping)
    _same(scanned, sql)
    assert len(scanned[0]) > 50


def test_missing_care_sites_overlaps_and_open_stays_as_the_sql_path(tmp_path: Path) -> None:
    tables = fixture_tables()
    tables["visit_occurrence"] = tables["visit_occurrence"].assign(care_site_id=[3, 4, None, 2])
    # patient 13's stay begins while patient 10's... no: patient 10 again, inside the first visit (an overlap)
    tables["visit_occurrence"].loc[3, "person_id"] = 10
    path = tmp_path / "cdm.sqlite"
    create_omop_database(tables, f"sqlite:///{path}")
    for mapping in (OmopMapping(), OmopMapping(units={"ICU": "ICU", "Ward 3": "MED-3", "Hospital": "ALL"})):
        scanned, sql = _scanned_and_sql(f"sqlite:///{path}", mapping)
        _same(scanned, sql)
        problems = [str(p) for p in scanned[1]]
        assert any("have no care_site_id" in p for p in problems)
        assert any("begin while the same patient's previous stay is still open" in p for p in problems)
        assert scanned[2]["open_stays"] == 1


def test_the_time_forms_it_reads_equal_the_sql_path(tmp_path: Path) -> None:
    """Dates alone, ``T``, minutes without seconds, fractions, surrounding spaces: read as the SQL path reads them."""
    path = tmp_path / "cdm.sqlite"
    create_omop_database(fixture_tables(), f"sqlite:///{path}")
    with sqlite3.connect(path) as connection:
        connection.execute(
            "UPDATE visit_detail SET visit_detail_start_datetime = replace(visit_detail_start_datetime, ' ', 'T') "
            "WHERE visit_detail_id = 100"
        )
        connection.execute(
            "UPDATE visit_detail SET visit_detail_end_datetime = substr(visit_detail_end_datetime, 1, 16) "
            "WHERE visit_detail_id = 101"
        )
        connection.execute(
            "UPDATE visit_detail SET visit_detail_start_datetime = "
            "'  ' || substr(visit_detail_start_datetime, 1, 19) || '.123456 ' WHERE visit_detail_id = 102"
        )
        connection.execute("UPDATE visit_occurrence SET visit_end_date = '  ' WHERE visit_occurrence_id = 4")
    scanned, sql = _scanned_and_sql(f"sqlite:///{path}", OmopMapping())
    _same(scanned, sql)


@pytest.mark.parametrize(
    "update",
    [
        "UPDATE visit_detail SET visit_detail_start_datetime = 'soon' WHERE visit_detail_id = 101",
        "UPDATE visit_detail SET visit_detail_end_date = '2025-02-30' WHERE visit_detail_id = 102",
        "UPDATE visit_detail SET visit_detail_end_datetime = '2025-01-04 24:00:00' WHERE visit_detail_id = 102",
        "UPDATE visit_detail SET visit_detail_end_date = '1600-01-04' WHERE visit_detail_id = 102",
        "UPDATE visit_detail SET visit_detail_start_datetime = replace(visit_detail_start_datetime, ' ', 'T') || 'Z'",
        "UPDATE visit_occurrence SET visit_start_datetime = substr(visit_start_datetime, 1, 16) || '+01:00' "
        "WHERE visit_start_datetime IS NOT NULL",
        "UPDATE visit_detail SET visit_detail_start_date = 20250101 WHERE visit_detail_id = 100",
        "UPDATE visit_detail SET visit_detail_end_date = CAST('2025-01-02' AS BLOB) WHERE visit_detail_id = 101",
        "UPDATE visit_detail SET visit_occurrence_id = 77 WHERE visit_detail_id = 100",
        "UPDATE visit_detail SET person_id = 12 WHERE visit_detail_id = 100",
        "UPDATE visit_occurrence SET person_id = 'P-13' WHERE visit_occurrence_id = 4",
        "UPDATE visit_occurrence SET person_id = 13.5 WHERE visit_occurrence_id = 4",
        "UPDATE visit_occurrence SET person_id = NULL WHERE visit_occurrence_id = 2",
        "UPDATE visit_occurrence SET care_site_id = 9 WHERE visit_occurrence_id = 3",
        "UPDATE care_site SET care_site_name = ' ' WHERE care_site_id = 2",
        "UPDATE visit_detail SET visit_detail_end_datetime = '2024-12-01 00:00:00', "
        "visit_detail_end_date = '2024-12-01' WHERE visit_detail_id = 100",
        "UPDATE visit_occurrence SET visit_start_date = NULL, visit_start_datetime = NULL "
        "WHERE visit_occurrence_id = 4",
    ],
)
def test_what_it_does_not_read_exactly_is_handed_to_the_sql_path(tmp_path: Path, update: str) -> None:
    url = _fixture_cdm_with(tmp_path, update)
    assert _read(url, OmopMapping(), scan=True, sql=False) is None
    # and the routed read is the SQL path's (or the row reader's, when the SQL path hands a small CDM on)
    routed, sql = _read(url, OmopMapping()), _read(url, OmopMapping(), scan=False)
    if sql is None:
        assert routed is None
        return
    assert [str(p) for p in routed[1]] == [str(p) for p in sql[1]]


def test_refused_missing_care_sites_are_handed_back(tmp_path: Path) -> None:
    tables = fixture_tables()
    tables["visit_occurrence"] = tables["visit_occurrence"].assign(care_site_id=[3, 4, None, 2])
    path = tmp_path / "cdm.sqlite"
    create_omop_database(tables, f"sqlite:///{path}")
    assert _read(f"sqlite:///{path}", OmopMapping(missing_care_site="refuse"), scan=True, sql=False) is None


def test_the_scan_equals_the_row_reader_on_the_hand_worked_hospital(tmp_path: Path) -> None:
    from tests.source_fixtures import expected_daily

    path = tmp_path / "cdm.sqlite"
    create_omop_database(fixture_tables(), f"sqlite:///{path}")
    scanned = _read(f"sqlite:///{path}", OmopMapping(), scan=True, sql=False)
    assert scanned is not None
    pd.testing.assert_frame_equal(scanned[2]["daily"].reset_index(drop=True), expected_daily(), check_dtype=False)
    database = _Database(f"sqlite:///{path}", "")
    try:
        reference = _Reader(database, OmopMapping()).run()
    finally:
        database.close()
    assert sorted(scanned[0]["encounter_id"]) == sorted(reference[0]["encounter_id"])


def test_small_batches_read_the_same(tmp_path: Path, hospital: dict[str, pd.DataFrame], monkeypatch: Any) -> None:
    """A batch boundary changes nothing (each batch is checked and typed on its own), nor does a chunk boundary of
    the kept frame's id columns and of the overlap check."""
    path = tmp_path / "cdm.sqlite"
    create_omop_database(hospital, f"sqlite:///{path}")
    whole = _read(f"sqlite:///{path}", OmopMapping(), scan=True, sql=False)
    monkeypatch.setattr(omop_scan, "SCAN_ROWS", 7)
    monkeypatch.setattr(omop_scan, "BUILD_ROWS", 5)
    batched = _read(f"sqlite:///{path}", OmopMapping(), scan=True, sql=False)
    _same(batched, whole)


def test_load_source_routes_a_sqlite_cdm_of_scan_size_to_the_scan(tmp_path: Path, monkeypatch: Any) -> None:
    """From SCAN_MIN_VISITS visits the scan reads a clean CDM; what it hands back below SQL_MIN_VISITS goes to the
    row reader, as before."""
    from medalloc_core.sources import load_source, omop_sql
    from tests.source_fixtures import expected_daily

    path = tmp_path / "cdm.sqlite"
    create_omop_database(fixture_tables(), f"sqlite:///{path}")
    calls = record_scans(monkeypatch)
    load_source(path)
    assert calls == []  # 4 visits: the row reader
    monkeypatch.setattr(omop_sql, "SCAN_MIN_VISITS", 4)
    data = load_source(path)
    assert len(calls) == 1 and calls[0] is not None
    pd.testing.assert_frame_equal(data.records.frame.reset_index(drop=True), expected_daily(), check_dtype=False)
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE visit_detail SET visit_detail_start_datetime = 'soon' WHERE visit_detail_id = 101")
    with pytest.raises(DataContractError, match="'soon' is not a valid date"):
        load_source(path)
    assert len(calls) == 2 and calls[1] is None


def record_scans(monkeypatch: Any) -> list[Any]:
    """Every result of ``omop_scan.scan_omop`` from now on (None: handed back), in the order of the calls."""
    calls: list[Any] = []
    scan = omop_scan.scan_omop

    def recorded(database: Any, mapping: OmopMapping, **kwargs: bool) -> Any:
        calls.append(scan(database, mapping, **kwargs))
        return calls[-1]

    monkeypatch.setattr(omop_scan, "scan_omop", recorded)
    return calls


def _overlapping_patients_cdm(tmp_path: Path, hospital: dict[str, pd.DataFrame]) -> str:
    """The generated hospital with its visits spread over 37 patients (many overlapping stays), as an SQLite URL."""
    path = tmp_path / "cdm.sqlite"
    create_omop_database(hospital, f"sqlite:///{path}")
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE visit_occurrence SET person_id = visit_occurrence_id % 37 + 5")
        connection.execute(
            "UPDATE visit_detail SET person_id = (SELECT v.person_id FROM visit_occurrence v "
            "WHERE v.visit_occurrence_id = visit_detail.visit_occurrence_id)"
        )
    return f"sqlite:///{path}"


@pytest.mark.parametrize("build_rows", [omop_scan.BUILD_ROWS, 3])
def test_overlapping_stays_of_many_patients_are_warned_about_as_the_sql_path(
    tmp_path: Path, hospital: dict[str, pd.DataFrame], monkeypatch: Any, build_rows: int
) -> None:
    """Many overlaps over patients whose ids sort differently as numbers and as text: the same count, the same first
    (also when the check compares neighbours a few at a time, as it does a million at a time at hospital scale)."""
    monkeypatch.setattr(omop_scan, "BUILD_ROWS", build_rows)
    scanned, sql = _scanned_and_sql(_overlapping_patients_cdm(tmp_path, hospital), OmopMapping())
    _same(scanned, sql)
    assert any("begin while the same patient's previous stay is still open" in str(p) for p in scanned[1])


@pytest.mark.parametrize(
    "update",
    [
        "UPDATE visit_detail SET visit_detail_start_datetime = 'soon' WHERE visit_detail_id = 101",
        "UPDATE visit_detail SET visit_detail_end_date = '2025-02-30' WHERE visit_detail_id = 102",
        "UPDATE visit_detail SET visit_detail_end_datetime = '2024-12-01 00:00:00', "
        "visit_detail_end_date = '2024-12-01' WHERE visit_detail_id = 100",
        "UPDATE visit_occurrence SET care_site_id = 9 WHERE visit_occurrence_id = 3",
        "UPDATE care_site SET care_site_name = ' ' WHERE care_site_id = 2",
        "UPDATE visit_occurrence SET visit_start_date = NULL, visit_start_datetime = NULL "
        "WHERE visit_occurrence_id = 4",
        "UPDATE visit_occurrence SET care_site_id = NULL WHERE visit_occurrence_id = 3",
    ],
)
def test_a_node_leaves_a_flagged_stay_out_as_the_sql_path(tmp_path: Path, update: str) -> None:
    """A node's reading (lenient): a stay flagged by a check on the stays is left out and counted, not handed back."""
    url = _fixture_cdm_with(tmp_path, update)
    for mapping in (OmopMapping(), OmopMapping(missing_care_site="refuse")):
        scanned = _read(url, mapping, lenient=True, scan=True, sql=False)
        assert scanned is not None, "the scan handed a node's reading back"
        sql = _read(url, mapping, lenient=True, scan=False)
        _same(scanned, sql)
        assert scanned[2].get("left_out") == sql[2].get("left_out")
    assert scanned[2].get("left_out")


def test_the_per_patient_cut_of_the_scans_stays_is_the_sql_paths(
    tmp_path: Path, hospital: dict[str, pd.DataFrame]
) -> None:
    """What the release computes from the stays is unchanged by their compact form (unit a categorical, times views
    of the int64 columns read): the per-patient cut keeps the same segments and cuts the same, with overlapping
    stays of many patients (transfers, caps reached)."""
    from medalloc_core.privacy.contribution import PatientCaps, bound_contributions

    scanned, sql = _scanned_and_sql(_overlapping_patients_cdm(tmp_path, hospital), OmopMapping())
    stays, ref_stays = scanned[0], sql[0]
    assert isinstance(stays["unit"].dtype, pd.CategoricalDtype) and not isinstance(
        ref_stays["unit"].dtype, pd.CategoricalDtype
    )
    start, end = ref_stays["admit_time"].min().normalize(), ref_stays["admit_time"].max().normalize()
    units = sorted(ref_stays["unit"].astype(str).unique())[:-1]  # one unit outside the calendar: cut too
    caps = PatientCaps(stays=2, transfers=1, nights=10)
    kept, cut = bound_contributions(stays, caps, units=units, start=start, end=end)
    ref_kept, ref_cut = bound_contributions(ref_stays, caps, units=units, start=start, end=end)
    assert cut == ref_cut and cut["stays over max-patient-stays"] > 0
    pd.testing.assert_frame_equal(kept, ref_kept)
