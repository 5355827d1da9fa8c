"""An OMOP CDM exported as the OMOP community's own tools write it reads as it is written.

The layout of a public CDM sample (exported by OHDSI tools): upper-case file and column
names, every date-time ISO 8601 with ``T`` and ``Z`` (``1996-08-21T00:00:00Z``), and visits
without a care site (many CDMs, claims-derived ones especially, carry none). The fixture is
written here by hand in that layout; nothing in it comes from the synthetic generator.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from medalloc_core.contract import DataContractError
from medalloc_core.sources import DataSource, load_source, validate_source
from medalloc_core.sources.mapping import MappingError, OmopMapping, SourceMapping

VISIT_HEADER = (
    "VISIT_OCCURRENCE_ID,PERSON_ID,VISIT_CONCEPT_ID,VISIT_START_DATE,VISIT_START_DATETIME,VISIT_END_DATE,"
    "VISIT_END_DATETIME,VISIT_TYPE_CONCEPT_ID,PROVIDER_ID,CARE_SITE_ID,VISIT_SOURCE_VALUE,"
    "VISIT_SOURCE_CONCEPT_ID,ADMITTING_SOURCE_CONCEPT_ID,ADMITTING_SOURCE_VALUE,"
    "DISCHARGE_TO_CONCEPT_ID,DISCHARGE_TO_SOURCE_VALUE,PRECEDING_VISIT_OCCURRENCE_ID"
)
# Three inpatient visits (9201) without a care site, one outpatient (9202) that is left out.
VISIT_ROWS = [
    "1,7,9201,1996-08-21,1996-08-21T00:00:00Z,1996-08-23,1996-08-23T12:30:00Z,44818517,,,,0,0,,0,,",
    "2,8,9201,1996-08-21,1996-08-21T15:00:00Z,1996-08-22,1996-08-22T03:00:00Z,44818517,,,,0,0,,0,,",
    "3,9,9202,1996-08-22,1996-08-22T09:00:00Z,1996-08-22,1996-08-22T09:00:00Z,44818517,,,,0,0,,0,,",
    "4,9,9201,1996-08-22,1996-08-22T23:30:00+02:00,,,44818517,,,,0,0,,0,,",
]
DETAIL_HEADER = (
    "VISIT_DETAIL_ID,PERSON_ID,VISIT_DETAIL_CONCEPT_ID,VISIT_DETAIL_START_DATE,VISIT_DETAIL_START_DATETIME,"
    "VISIT_DETAIL_END_DATE,VISIT_DETAIL_END_DATETIME,VISIT_DETAIL_TYPE_CONCEPT_ID,PROVIDER_ID,CARE_SITE_ID,"
    "VISIT_DETAIL_SOURCE_VALUE,VISIT_DETAIL_SOURCE_CONCEPT_ID,ADMITTING_SOURCE_VALUE,ADMITTING_SOURCE_CONCEPT_ID,"
    "DISCHARGE_TO_SOURCE_VALUE,DISCHARGE_TO_CONCEPT_ID,PRECEDING_VISIT_DETAIL_ID,VISIT_DETAIL_PARENT_ID,"
    "VISIT_OCCURRENCE_ID"
)
CARE_SITE_HEADER = "CARE_SITE_ID,CARE_SITE_NAME,PLACE_OF_SERVICE_CONCEPT_ID,LOCATION_ID,CARE_SITE_SOURCE_VALUE"


def _export(folder: Path, rows: list[str] = VISIT_ROWS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "VISIT_OCCURRENCE.csv").write_text("\n".join([VISIT_HEADER, *rows]) + "\n", encoding="utf-8")
    (folder / "VISIT_DETAIL.csv").write_text(DETAIL_HEADER + "\n", encoding="utf-8")
    (folder / "CARE_SITE.csv").write_text(CARE_SITE_HEADER + "\n", encoding="utf-8")
    return folder


def _source(folder: Path, **omop: object) -> DataSource:
    return DataSource(str(folder), mapping=SourceMapping(omop=OmopMapping(**omop)))  # type: ignore[arg-type]


def test_a_community_export_reads_with_its_visits_in_one_hospital_wide_unit(tmp_path: Path) -> None:
    folder = _export(tmp_path / "cdm")
    assert DataSource(str(folder)).kind() == "omop"
    report = validate_source(folder)
    assert report.ok, [str(p) for p in report.problems]
    (warning,) = report.warnings
    assert "3 of 3 stay(s) have no care_site_id" in str(warning)
    assert "'Hospital'" in str(warning) and "missing-care-site = 'refuse'" in str(warning)
    assert "VISIT_OCCURRENCE.csv" in str(warning) and "row 2" in str(warning)

    data = load_source(folder)
    frame = data.records.frame.reset_index(drop=True)
    # No zone given: each wall clock as written (offsets dropped), as the FHIR reader does.
    assert frame["unit"].unique().tolist() == ["Hospital"]
    assert frame["date"].dt.strftime("%Y-%m-%d").tolist() == ["1996-08-21", "1996-08-22", "1996-08-23"]
    assert frame["admissions"].tolist() == [2, 1, 0]
    assert frame["discharges"].tolist() == [0, 1, 1]
    assert frame["census"].tolist() == [2, 2, 1]
    assert sorted(data.stays["patient_id"]) == ["7", "8", "9"]


def test_z_and_offsets_are_converted_to_the_sites_time_zone(tmp_path: Path) -> None:
    folder = _export(tmp_path / "cdm")
    data = load_source(_source(folder, timezone="America/New_York"))
    stays = data.stays.set_index("encounter_id")
    # 1996-08-21T00:00:00Z is 20:00 on the 20th in New York (EDT, UTC-4).
    assert stays.at["visit_occurrence 1", "admit_time"] == pd.Timestamp("1996-08-20 20:00")
    assert stays.at["visit_occurrence 1", "discharge_time"] == pd.Timestamp("1996-08-23 08:30")
    # 23:30 at +02:00 is 21:30 UTC, 17:30 in New York.
    assert stays.at["visit_occurrence 4", "admit_time"] == pd.Timestamp("1996-08-22 17:30")
    frame = data.records.frame
    assert frame["date"].min() == pd.Timestamp("1996-08-20")
    assert int(frame.loc[frame["date"] == pd.Timestamp("1996-08-20"), "admissions"].sum()) == 1


def test_a_mapping_refuses_stays_without_a_care_site(tmp_path: Path) -> None:
    folder = _export(tmp_path / "cdm")
    report = validate_source(_source(folder, missing_care_site="refuse"))
    errors = [str(p) for p in report.errors]
    assert len(errors) == 3
    assert "VISIT_OCCURRENCE.csv, row 2, visit_occurrence_id 1, column 'care_site_id': empty care_site_id" in errors[0]
    with pytest.raises(DataContractError):
        load_source(_source(folder, missing_care_site="refuse"))


def test_the_hospital_wide_unit_can_be_named(tmp_path: Path) -> None:
    folder = _export(tmp_path / "cdm")
    mapping = tmp_path / "mapping.toml"
    mapping.write_text(
        '[omop]\nhospital-unit = "St Mary\'s"\ntimezone = "Europe/London"\nmissing-care-site = "hospital"\n'
    )
    data = load_source(DataSource.of(folder, mapping=mapping))
    assert data.records.frame["unit"].unique().tolist() == ["St Mary's"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('missing-care-site = "drop"', "missing-care-site must be 'hospital' or 'refuse'"),
        ('hospital-unit = " "', "hospital-unit is empty"),
        ('timezone = "Mars/Olympus"', "timezone 'Mars/Olympus' is not a known IANA time zone"),
    ],
)
def test_bad_mapping_values_are_refused_by_name(tmp_path: Path, text: str, message: str) -> None:
    mapping = tmp_path / "mapping.toml"
    mapping.write_text(f"[omop]\n{text}\n")
    with pytest.raises(MappingError, match=message):
        SourceMapping.from_toml(mapping)


def test_a_malformed_iso_time_still_names_row_record_and_field(tmp_path: Path) -> None:
    rows = [*VISIT_ROWS[:1], "2,8,9201,1996-08-21,1996-08-21T15:00:00+25,,,44818517,,,,0,0,,0,,"]
    report = validate_source(_export(tmp_path / "cdm", rows))
    (error,) = [str(p) for p in report.errors]
    assert "row 3, visit_occurrence_id 2, column 'visit_start_datetime': '1996-08-21T15:00:00+25'" in error
    assert "Z or a UTC offset" in error
