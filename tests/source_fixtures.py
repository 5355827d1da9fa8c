"""One small hospital written as an OMOP CDM and as a FHIR Bundle, with its daily records worked out by hand.

Patient 10 arrives in the emergency department on 1 January 08:00, moves to ICU at 12:00,
to Ward 3 on 2 January 15:00, and goes home on 4 January 10:00 (one inpatient visit, three
unit stays: two transfers). Patient 12 is admitted to Ward 3 on 2 January 22:00 and is still
there (open stay, no unit-level detail: the visit itself is the stay). Patient 13 is in ICU
for part of 3 January (dates only, no times). Patient 11's outpatient appointment in
Radiology, and (FHIR) an encounter entered in error, must be left out.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pandas as pd

D = dt.date
T = dt.datetime

CARE_SITES = pd.DataFrame(
    {
        "care_site_id": [1, 2, 3, 4],
        "care_site_name": ["Emergency department", "ICU", "Ward 3", "Radiology"],
        "care_site_source_value": ["ED", "ICU", "W3", "RAD"],
    }
)
VISITS = pd.DataFrame(
    {
        "visit_occurrence_id": [1, 2, 3, 4],
        "person_id": [10, 11, 12, 13],
        "visit_concept_id": [9201, 9202, 262, 9201],  # inpatient, outpatient, ER+inpatient, inpatient
        "visit_start_date": [D(2025, 1, 1), D(2025, 1, 2), D(2025, 1, 2), D(2025, 1, 3)],
        "visit_start_datetime": [T(2025, 1, 1, 8), T(2025, 1, 2, 9), T(2025, 1, 2, 22), None],
        "visit_end_date": [D(2025, 1, 4), D(2025, 1, 2), None, D(2025, 1, 3)],
        "visit_end_datetime": [T(2025, 1, 4, 10), T(2025, 1, 2, 9, 30), None, None],
        "visit_type_concept_id": [32817, 32817, 32817, 32817],
        "care_site_id": [3, 4, 3, 2],
    }
)
DETAILS = pd.DataFrame(
    {
        "visit_detail_id": [100, 101, 102],
        "person_id": [10, 10, 10],
        "visit_detail_concept_id": [9203, 32037, 9201],
        "visit_detail_start_date": [D(2025, 1, 1), D(2025, 1, 1), D(2025, 1, 2)],
        "visit_detail_start_datetime": [T(2025, 1, 1, 8), T(2025, 1, 1, 12), T(2025, 1, 2, 15)],
        "visit_detail_end_date": [D(2025, 1, 1), D(2025, 1, 2), D(2025, 1, 4)],
        "visit_detail_end_datetime": [T(2025, 1, 1, 12), T(2025, 1, 2, 15), T(2025, 1, 4, 10)],
        "visit_detail_type_concept_id": [32817, 32817, 32817],
        "care_site_id": [1, 2, 3],
        "visit_occurrence_id": [1, 1, 1],
    }
)


def omop_tables() -> dict[str, pd.DataFrame]:
    """Fresh copies of the three tables (tests mutate them)."""
    return {"care_site": CARE_SITES.copy(), "visit_occurrence": VISITS.copy(), "visit_detail": DETAILS.copy()}


def expected_daily() -> pd.DataFrame:
    """The daily records both sources must give, by hand (see the module docstring)."""
    rows = [
        # unit, day, admissions, discharges, census
        ("Emergency department", 1, 1, 1, 0),
        ("Emergency department", 2, 0, 0, 0),
        ("Emergency department", 3, 0, 0, 0),
        ("Emergency department", 4, 0, 0, 0),
        ("ICU", 1, 1, 0, 1),
        ("ICU", 2, 0, 1, 0),
        ("ICU", 3, 1, 1, 0),
        ("ICU", 4, 0, 0, 0),
        ("Ward 3", 2, 2, 0, 2),
        ("Ward 3", 3, 0, 0, 2),
        ("Ward 3", 4, 0, 1, 1),
    ]
    return pd.DataFrame(
        {
            "date": [pd.Timestamp(2025, 1, day) for _, day, *_ in rows],
            "unit": [r[0] for r in rows],
            "admissions": [r[2] for r in rows],
            "discharges": [r[3] for r in rows],
            "census": [r[4] for r in rows],
        }
    )


def write_export(tables: dict[str, pd.DataFrame], folder: Path, fmt: str = "csv") -> Path:
    """The tables as an export folder, one ``<table>.csv`` (or ``.parquet``) each."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in tables.items():
        if fmt == "csv":
            frame.to_csv(folder / f"{name}.csv", index=False, date_format="%Y-%m-%d %H:%M:%S")
        else:
            frame.to_parquet(folder / f"{name}.parquet", index=False)
    return folder


def fhir_resources() -> list[dict[str, Any]]:
    """The same hospital as FHIR R4 resources (Locations and Encounters), UTC offsets +00:00."""

    def loc(ref: str, start: str | None = None, end: str | None = None) -> dict[str, Any]:
        entry: dict[str, Any] = {"location": {"reference": f"Location/{ref}"}}
        if start or end:
            entry["period"] = {k: v for k, v in (("start", start), ("end", end)) if v}
        return entry

    imp = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"}
    return [
        {"resourceType": "Location", "id": "ed", "name": "Emergency department"},
        {"resourceType": "Location", "id": "icu", "name": "ICU"},
        {"resourceType": "Location", "id": "w3", "name": "Ward 3"},
        {
            "resourceType": "Encounter",
            "id": "e1",
            "status": "finished",
            "class": imp,
            "subject": {"reference": "Patient/10"},
            "period": {"start": "2025-01-01T08:00:00+00:00", "end": "2025-01-04T10:00:00+00:00"},
            "location": [
                loc("ed", "2025-01-01T08:00:00+00:00", "2025-01-01T12:00:00+00:00"),
                loc("icu", "2025-01-01T12:00:00+00:00", "2025-01-02T15:00:00+00:00"),
                loc("w3", "2025-01-02T15:00:00+00:00", "2025-01-04T10:00:00+00:00"),
            ],
        },
        {
            "resourceType": "Encounter",
            "id": "e2",
            "status": "finished",
            "class": {"code": "AMB"},
            "subject": {"reference": "Patient/11"},
            "period": {"start": "2025-01-02T09:00:00+00:00", "end": "2025-01-02T09:30:00+00:00"},
        },
        {
            "resourceType": "Encounter",
            "id": "e3",
            "status": "in-progress",
            "class": imp,
            "subject": {"reference": "Patient/12"},
            "period": {"start": "2025-01-02T22:00:00+00:00"},
            "location": [loc("w3")],
        },
        {
            "resourceType": "Encounter",
            "id": "e4",
            "status": "finished",
            "class": imp,
            "subject": {"reference": "Patient/13"},
            "period": {"start": "2025-01-03", "end": "2025-01-03"},
            "location": [loc("icu")],
        },
        {
            "resourceType": "Encounter",
            "id": "e5",
            "status": "entered-in-error",
            "class": imp,
            "subject": {"reference": "Patient/14"},
            "period": {"start": "2025-01-03T10:00:00+00:00"},
            "location": [loc("icu")],
        },
    ]


def write_bundle(resources: list[dict[str, Any]], path: Path) -> Path:
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}
    path.write_text(json.dumps(bundle, indent=1), encoding="utf-8")
    return path


def write_ndjson(resources: list[dict[str, Any]], folder: Path) -> Path:
    """A Bulk Data export folder: ``Encounter.ndjson`` and ``Location.ndjson``."""
    folder.mkdir(parents=True, exist_ok=True)
    for kind in ("Encounter", "Location"):
        lines = [json.dumps(r) for r in resources if r["resourceType"] == kind]
        (folder / f"{kind}.ndjson").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def generated_omop_hospital() -> dict[str, pd.DataFrame]:
    """The OMOP tables of one generated 60-day hospital (the SQL path's and the scan's larger CDM)."""
    from medalloc_core.sources.synthetic import omop_tables as tables_of
    from medalloc_core.synthetic import RegionConfig, generate_region

    region = generate_region(RegionConfig(hospitals=1, days=60, seed=8, shape="encounters", max_beds=60))
    encounters = region.hospitals[0].encounters
    assert encounters is not None
    return tables_of(encounters, hospital_id="H000", seed=2)


def omop_mappings() -> dict[str, Any]:
    """Mapping variants every OMOP reader must read alike, by test id."""
    from medalloc_core.sources.mapping import OmopMapping

    return {
        "detail": OmopMapping(),
        "visit": OmopMapping(level="visit_occurrence"),
        "by-id": OmopMapping(unit_name="care_site_id"),
        "by-code": OmopMapping(unit_name="care_site_source_value"),
    }
