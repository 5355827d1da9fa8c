"""FHIR R4 in: a Bundle and a Bulk Data NDJSON export give the hand-worked daily records of the same hospital.

Location history is the unit (transfers are consecutive location entries), ambulatory and
entered-in-error encounters are left out, time zones are the site's choice, and every
malformed resource is reported by file, line or entry, resource id and element path.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from medalloc_core.encounters import encounters_to_daily
from medalloc_core.sources import DataSource, load_source, validate_source
from medalloc_core.sources.mapping import FhirMapping, SourceMapping
from medalloc_core.sources.synthetic import fhir_resources as generated_resources
from medalloc_core.sources.synthetic import write_fhir
from medalloc_core.synthetic import RegionConfig, generate_region
from tests.source_fixtures import expected_daily, fhir_resources, write_bundle, write_ndjson


def _frame(source: DataSource | str | Path) -> pd.DataFrame:
    return load_source(source).records.frame.reset_index(drop=True)


def _errors(source: DataSource | str | Path) -> list[str]:
    report = validate_source(source)
    assert not report.ok, report.summary
    return [str(p) for p in report.errors]


def _encounter(resources: list[dict[str, Any]], ident: str) -> dict[str, Any]:
    return next(r for r in resources if r.get("id") == ident)


@pytest.mark.parametrize("layout", ["bundle", "ndjson-folder", "ndjson-file"])
def test_bundle_and_bulk_export_give_the_hand_worked_daily_records(tmp_path: Path, layout: str) -> None:
    resources = fhir_resources()
    if layout == "bundle":
        location = write_bundle(resources, tmp_path / "stays.json")
    elif layout == "ndjson-folder":
        location = write_ndjson(resources, tmp_path / "export")
    else:
        location = tmp_path / "all.ndjson"
        location.write_text("\n".join(json.dumps(r) for r in resources) + "\n")
    data = load_source(str(location))
    pd.testing.assert_frame_equal(data.records.frame.reset_index(drop=True), expected_daily(), check_dtype=False)
    summary = data.report.summary
    assert summary["source"] == "fhir" and summary["open_stays"] == 1
    details = dict(summary["details"])
    assert details["inpatient encounters"] == "3 of 5 (class in IMP, ACUTE, NONAC)"
    assert details["left out"] == "status entered-in-error: 1, class AMB: 1"
    assert data.stays is not None
    assert list(data.stays.loc[data.stays["patient_id"] == "Patient/10", "unit"]) == [
        "Emergency department",
        "ICU",
        "Ward 3",
    ]


def test_generated_region_round_trips_as_ndjson_and_bundle(tmp_path: Path) -> None:
    region = generate_region(RegionConfig(hospitals=1, days=45, seed=2, shape="encounters", max_beds=80))
    hospital = region.hospitals[0]
    assert hospital.encounters is not None
    expected = encounters_to_daily(hospital.encounters).reset_index(drop=True)
    resources = generated_resources(hospital.encounters, hospital_id=hospital.hospital_id)
    assert {r["class"]["code"] for r in resources["Encounter"]} == {"IMP", "AMB"}
    for fmt in ("ndjson", "bundle"):
        out = write_fhir(resources, tmp_path / f"H000.{fmt}", fmt)  # type: ignore[arg-type]
        pd.testing.assert_frame_equal(_frame(DataSource(str(out), format="fhir")), expected, check_dtype=False)


def test_units_mapping_and_reference_names(tmp_path: Path) -> None:
    path = write_bundle(fhir_resources(), tmp_path / "b.json")
    mapped = DataSource(
        str(path), mapping=SourceMapping(fhir=FhirMapping(units={"Location/icu": "ICU", "Ward 3": "W3"}))
    )
    report = validate_source(mapped)
    assert report.ok and report.summary["units"] == ["ICU", "W3"]
    assert dict(report.summary["details"])["not a unit"].startswith("1 stays at locations not in [fhir] units")
    by_reference = DataSource(str(path), mapping=SourceMapping(fhir=FhirMapping(unit_name="reference")))
    assert validate_source(by_reference).summary["units"] == ["Location/ed", "Location/icu", "Location/w3"]


def test_timezone_decides_the_calendar_day(tmp_path: Path) -> None:
    resources = fhir_resources()
    _encounter(resources, "e3")["period"]["start"] = "2025-01-02T23:30:00Z"
    path = write_bundle(resources, tmp_path / "utc.json")
    as_written = _frame(str(path))
    ward = as_written[as_written["unit"] == "Ward 3"].set_index("date")
    assert ward.loc["2025-01-02", "admissions"] == 2  # 23:30 as written: still 2 January
    berlin = DataSource(str(path), mapping=SourceMapping(fhir=FhirMapping(timezone="Europe/Berlin")))
    ward = _frame(berlin).query("unit == 'Ward 3'").set_index("date")
    assert ward.loc["2025-01-02", "admissions"] == 1  # 00:30 in Berlin: 3 January
    assert ward.loc["2025-01-03", "admissions"] == 1


def test_sub_encounters_replace_their_parent(tmp_path: Path) -> None:
    """Ward stays modelled as Encounters partOf a hospital Encounter: the parent is not counted twice."""
    resources = fhir_resources()
    parent = _encounter(resources, "e1")
    children = []
    for i, entry in enumerate(parent["location"]):
        child = copy.deepcopy(parent)
        child.update(id=f"e1-{i}", period=entry["period"], location=[entry], partOf={"reference": "Encounter/e1"})
        children.append(child)
    path = write_bundle(resources + children, tmp_path / "nested.json")
    pd.testing.assert_frame_equal(_frame(str(path)), expected_daily(), check_dtype=False)
    assert "parent of sub-encounters: 1" in dict(validate_source(str(path)).summary["details"])["left out"]


# ---------------------------------------------------------------------- malformed resources are named
def _broken(tmp_path: Path, edit: Any) -> Path:
    resources = fhir_resources()
    edit(resources)
    return write_ndjson(resources, tmp_path / "export")


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda r: _encounter(r, "e1")["location"][1]["period"].update(start="2025-01-01T12:00:00"),
            "line 1, Encounter/e1, field 'location[1].period.start': DateTime value string does not match spec "
            "regex.; expected a valid FHIR R4 Encounter",
        ),
        (
            lambda r: _encounter(r, "e1")["location"][2]["period"].update(end="2025-01-01T10:00:00+00:00"),
            "line 1, Encounter/e1, field 'location[2].period.end': ends 2025-01-01 10:00 before it begins "
            "2025-01-02 15:00",
        ),
        (
            lambda r: _encounter(r, "e3").pop("subject"),
            "line 3, Encounter/e3, field 'subject.reference': Encounter has no subject.reference; expected the Patient",
        ),
        (
            lambda r: _encounter(r, "e4")["period"].pop("end"),
            "line 4, Encounter/e4, field 'period.end': the Encounter is finished but this stay has no end",
        ),
        (
            lambda r: _encounter(r, "e4")["period"].update(start="2025-01"),
            "line 4, Encounter/e4, field 'period.start': '2025-01' is not a full date",
        ),
        (
            lambda r: _encounter(r, "e3")["period"].update(start=1735855200),
            "line 3, Encounter/e3, field 'period.start': '1735855200' is a JSON int; expected a FHIR dateTime",
        ),
        (
            lambda r: _encounter(r, "e3").pop("location"),
            "line 3, Encounter/e3, field 'location': Encounter has no location history",
        ),
        (
            lambda r: _encounter(r, "e1").update({"class": [{"code": "IMP"}]}),
            "line 1, Encounter/e1, field 'class': Value is expected from the instance of Coding",
        ),
        (
            lambda r: _encounter(r, "e4").update(id="e1"),
            "line 4, Encounter/e1, field 'id': Encounter/e1 appears more than once (first in Encounter.ndjson, line 1)",
        ),
    ],
)
def test_each_malformed_resource_is_named(tmp_path: Path, edit: Any, expected: str) -> None:
    folder = _broken(tmp_path, edit)
    errors = _errors(str(folder))
    assert any(f"error: {folder / 'Encounter.ndjson'}, {expected}" in e for e in errors), errors


def test_lines_that_are_not_resources(tmp_path: Path) -> None:
    folder = write_ndjson(fhir_resources(), tmp_path / "export")
    with (folder / "Encounter.ndjson").open("a") as handle:
        handle.write('{"resourceType": "Encounter", "id": \n[1, 2]\n{"id": "x"}\n')
    errors = _errors(str(folder))
    encounters = folder / "Encounter.ndjson"
    assert errors[0].startswith(f"error: {encounters}, line 6: not JSON (")
    assert errors[1] == f"error: {encounters}, line 7: is a JSON list; expected a FHIR resource (an object)"
    assert (
        errors[2] == f"error: {encounters}, line 8, field 'resourceType': has no resourceType; expected a FHIR resource"
    )


def test_not_a_bundle_and_no_inpatient_class(tmp_path: Path) -> None:
    path = tmp_path / "patient.json"
    path.write_text('{"resourceType": "Patient", "id": "p"}')
    assert _errors(str(path)) == [f"error: {path}: is a 'Patient', not a Bundle; expected a FHIR Bundle of Encounters"]
    only_amb = [r for r in fhir_resources() if r.get("class", {}).get("code") in (None, "AMB")]
    bundle = write_bundle(only_amb, tmp_path / "amb.json")
    (error,) = _errors(str(bundle))
    assert "no Encounter has an inpatient class (IMP, ACUTE, NONAC); found classes AMB (1)" in error
    assert "encounter-classes" in error


def test_validation_never_writes(tmp_path: Path) -> None:
    folder = write_ndjson(fhir_resources(), tmp_path / "export")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert validate_source(str(folder)).ok
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
