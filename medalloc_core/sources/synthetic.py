"""Synthetic OMOP CDM and FHIR exports of a generated hospital, so every source path runs end to end.

The stays are the generator's own encounters (one unit stay each), so a source read back
gives exactly the daily records of the encounter file: the tests compare them. Around the
stays each writer adds what a real export also holds and the mapping must leave out:
outpatient and emergency visits in non-unit care sites (OMOP), ambulatory encounters and
encounters entered in error (FHIR), and Patient resources nobody reads.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from medalloc_core import contract as c

OmopFormat = Literal["sqlite", "csv", "parquet"]
FhirFormat = Literal["ndjson", "bundle"]
# Share of extra non-inpatient records added around the stays (filtered out by the default mapping).
NOISE_SHARE = 0.3
# Care sites that are not units: outpatient and emergency visits happen there.
NON_UNIT_SITES = ("Outpatient clinic", "Emergency department")
OMOP_VISIT_CONCEPTS = {"inpatient": 9201, "outpatient": 9202, "emergency": 9203}
EHR_TYPE_CONCEPT = 32817  # Type Concept "EHR"
ICU_CONCEPT = 32037  # Visit concept "Intensive Care"
DEFAULT_TIMEZONE = "Europe/London"
_V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


def _rng(hospital_id: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(hospital_id.encode())])


def _numbers(ids: pd.Series) -> np.ndarray:
    """The integer in an id such as ``H000-P0000012`` (OMOP ids are integers), plus one so none is 0."""
    return ids.str.extract(r"(\d+)$")[0].astype("int64").to_numpy() + 1


def omop_tables(encounters: pd.DataFrame, *, hospital_id: str, seed: int = 0) -> dict[str, pd.DataFrame]:
    """``visit_occurrence``, ``visit_detail`` and ``care_site`` (OMOP CDM v5.4 columns) for the stays.

    Every stay is one inpatient visit (concept 9201) with one visit_detail row in its unit's
    care site; ongoing stays have NULL end dates. Outpatient and emergency visits (30% as
    many, no visit_detail) in two non-unit care sites are added around them.
    """
    rng = _rng(hospital_id, seed)
    units = sorted(encounters[c.UNIT].unique())
    sites = [*units, *NON_UNIT_SITES]
    care_site = pd.DataFrame(
        {
            "care_site_id": np.arange(1, len(sites) + 1, dtype="int64"),
            "care_site_name": sites,
            "place_of_service_concept_id": np.zeros(len(sites), dtype="int64"),
            "location_id": pd.array([None] * len(sites), dtype="Int64"),
            "care_site_source_value": [s.upper()[:20] for s in sites],
            "place_of_service_source_value": [None] * len(sites),
        }
    )
    site_of = dict(zip(sites, care_site["care_site_id"]))
    n = len(encounters)
    person = _numbers(encounters[c.PATIENT_ID])
    start = pd.to_datetime(encounters[c.ADMIT_TIME]).reset_index(drop=True)
    end = pd.to_datetime(encounters[c.DISCHARGE_TIME]).reset_index(drop=True)
    site = encounters[c.UNIT].map(site_of).to_numpy()
    icu = encounters[c.UNIT].str.lower().str.contains("icu").to_numpy()

    noise = int(round(NOISE_SHARE * n))
    lo, hi = start.min(), start.max()
    span_minutes = max(int((hi - lo) / pd.Timedelta(minutes=1)), 1)
    noise_start = lo + pd.to_timedelta(rng.integers(0, span_minutes, noise), unit="min")
    noise_end = noise_start + pd.to_timedelta(rng.integers(20, 300, noise), unit="min")
    emergency = rng.random(noise) < 0.4
    noise_concept = np.where(emergency, OMOP_VISIT_CONCEPTS["emergency"], OMOP_VISIT_CONCEPTS["outpatient"])
    noise_site = np.where(emergency, site_of[NON_UNIT_SITES[1]], site_of[NON_UNIT_SITES[0]])
    noise_person = rng.integers(1, max(int(person.max()) if n else 1, 1) + 1, noise)

    visit_id = np.arange(1, n + noise + 1, dtype="int64")
    all_start = pd.concat([start, pd.Series(noise_start)], ignore_index=True)
    all_end = pd.concat([end, pd.Series(noise_end)], ignore_index=True)
    visit = pd.DataFrame(
        {
            "visit_occurrence_id": visit_id,
            "person_id": np.concatenate([person, noise_person]).astype("int64"),
            "visit_concept_id": np.concatenate([np.full(n, OMOP_VISIT_CONCEPTS["inpatient"]), noise_concept]).astype(
                "int64"
            ),
            "visit_start_date": all_start.dt.date,
            "visit_start_datetime": all_start,
            "visit_end_date": all_end.dt.date.where(all_end.notna(), None),
            "visit_end_datetime": all_end,
            "visit_type_concept_id": np.full(n + noise, EHR_TYPE_CONCEPT, dtype="int64"),
            "provider_id": pd.array([None] * (n + noise), dtype="Int64"),
            "care_site_id": np.concatenate([site, noise_site]).astype("int64"),
            "visit_source_value": [None] * (n + noise),
        }
    )
    # Shuffle rows: a database returns them in no particular order.
    visit = visit.iloc[rng.permutation(len(visit))].reset_index(drop=True)
    detail = pd.DataFrame(
        {
            "visit_detail_id": np.arange(1, n + 1, dtype="int64"),
            "person_id": person.astype("int64"),
            "visit_detail_concept_id": np.where(icu, ICU_CONCEPT, OMOP_VISIT_CONCEPTS["inpatient"]).astype("int64"),
            "visit_detail_start_date": start.dt.date,
            "visit_detail_start_datetime": start,
            "visit_detail_end_date": end.dt.date.where(end.notna(), None),
            "visit_detail_end_datetime": end,
            "visit_detail_type_concept_id": np.full(n, EHR_TYPE_CONCEPT, dtype="int64"),
            "care_site_id": site.astype("int64"),
            "visit_occurrence_id": np.arange(1, n + 1, dtype="int64"),
        }
    )
    return {"care_site": care_site, "visit_occurrence": visit, "visit_detail": detail}


def write_omop(tables: dict[str, pd.DataFrame], out: Path, fmt: OmopFormat) -> Path:
    """Write the tables as an SQLite database file (``fmt="sqlite"``) or an export folder of CSV/Parquet files.

    Written into a temporary sibling and renamed into place, so a reader never sees half a CDM.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if fmt == "sqlite":
            target = staging / "cdm.sqlite"
            create_omop_database(tables, f"sqlite:///{target}")
        else:
            target = staging / "export"
            target.mkdir()
            for name, frame in tables.items():
                if fmt == "csv":
                    _csv_frame(frame).to_csv(target / f"{name}.csv", index=False, lineterminator="\n")
                else:
                    frame.to_parquet(target / f"{name}.parquet", index=False, engine="pyarrow")
        os.replace(target, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def create_omop_database(tables: dict[str, pd.DataFrame], url: str, *, schema: str | None = None) -> None:
    """Create the three CDM tables (v5.4 types) in the database at ``url`` and insert the rows.

    Used by ``medalloc generate`` (SQLite) and by the tests to fill a throwaway PostgreSQL.
    """
    from sqlalchemy import BigInteger, Column, Date, DateTime, MetaData, String, Table, create_engine

    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    meta = MetaData(schema=schema)
    kinds: dict[str, Any] = {"_date": Date, "_datetime": DateTime}
    created = {}
    for name, frame in tables.items():
        columns = []
        for column in frame.columns:
            kind = next((k for suffix, k in kinds.items() if column.endswith(suffix)), None)
            if kind is None:
                kind = BigInteger if (column.endswith("_id") or frame[column].dtype.kind == "i") else String(255)
            columns.append(Column(column, kind, primary_key=column == f"{name}_id"))
        created[name] = Table(name, meta, *columns)
    try:
        with engine.begin() as connection:
            meta.create_all(connection)
            for name, frame in tables.items():
                rows = [{k: _sql_value(v) for k, v in record.items()} for record in frame.to_dict(orient="records")]
                if rows:
                    connection.execute(created[name].insert(), rows)
    finally:
        engine.dispose()


def _sql_value(value: Any) -> Any:
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and np.isnan(value):
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if isinstance(value, np.integer):
        return int(value)
    return value


def _csv_frame(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    for column in out.columns:
        if column.endswith("_datetime"):
            out[column] = pd.to_datetime(out[column]).dt.strftime("%Y-%m-%d %H:%M:%S")
    return out


# ---------------------------------------------------------------------- FHIR
def fhir_resources(
    encounters: pd.DataFrame, *, hospital_id: str, seed: int = 0, timezone: str = DEFAULT_TIMEZONE
) -> dict[str, list[dict[str, Any]]]:
    """``Encounter``, ``Location`` and ``Patient`` resources (FHIR R4 JSON) for the stays.

    Each stay is one finished (or in-progress, when open) ``IMP`` Encounter whose single
    location is its unit, times as local dateTimes with the zone's offset. Ambulatory
    encounters (30% as many) and inpatient encounters entered in error (2%) are added.
    """
    rng = _rng(hospital_id, seed)
    zone = ZoneInfo(timezone)
    units = sorted(encounters[c.UNIT].unique())
    unit_ids = {u: f"{hospital_id.lower()}-unit-{i + 1}" for i, u in enumerate(units)}
    clinic = f"{hospital_id.lower()}-clinic"
    locations = [
        {"resourceType": "Location", "id": lid, "status": "active", "name": unit, "mode": "instance"}
        for unit, lid in unit_ids.items()
    ] + [{"resourceType": "Location", "id": clinic, "status": "active", "name": "Outpatient clinic"}]

    def stamp(value: Any) -> str:
        return datetime.fromisoformat(str(pd.Timestamp(value))).replace(tzinfo=zone).isoformat()

    encounter_list: list[dict[str, Any]] = []
    patients = sorted(encounters[c.PATIENT_ID].unique())
    for k, row in enumerate(encounters.itertuples(index=False)):
        start = stamp(getattr(row, c.ADMIT_TIME))
        end_value = getattr(row, c.DISCHARGE_TIME)
        period: dict[str, str] = {"start": start}
        if not pd.isna(end_value):
            period["end"] = stamp(end_value)
        unit = getattr(row, c.UNIT)
        encounter_list.append(
            {
                "resourceType": "Encounter",
                "id": f"{hospital_id.lower()}-enc-{k + 1}",
                "status": "finished" if "end" in period else "in-progress",
                "class": {"system": _V3_ACT_CODE, "code": "IMP", "display": "inpatient encounter"},
                "subject": {"reference": f"Patient/{getattr(row, c.PATIENT_ID)}"},
                "period": period,
                "location": [
                    {
                        "location": {"reference": f"Location/{unit_ids[unit]}", "display": unit},
                        "status": "completed" if "end" in period else "active",
                        "period": dict(period),
                    }
                ],
            }
        )
    n = len(encounter_list)
    admits = pd.to_datetime(encounters[c.ADMIT_TIME])
    lo, span = admits.min(), max(int((admits.max() - admits.min()) / pd.Timedelta(minutes=1)), 1)
    for k in range(int(round(NOISE_SHARE * n))):
        begin = lo + pd.Timedelta(minutes=int(rng.integers(0, span)))
        encounter_list.append(
            {
                "resourceType": "Encounter",
                "id": f"{hospital_id.lower()}-amb-{k + 1}",
                "status": "finished",
                "class": {"system": _V3_ACT_CODE, "code": "AMB", "display": "ambulatory"},
                "subject": {"reference": f"Patient/{patients[int(rng.integers(0, len(patients)))]}"},
                "period": {"start": stamp(begin), "end": stamp(begin + pd.Timedelta(minutes=30))},
                "location": [{"location": {"reference": f"Location/{clinic}"}}],
            }
        )
    for k in range(int(round(0.02 * n))):
        begin = lo + pd.Timedelta(minutes=int(rng.integers(0, span)))
        encounter_list.append(
            {
                "resourceType": "Encounter",
                "id": f"{hospital_id.lower()}-err-{k + 1}",
                "status": "entered-in-error",
                "class": {"system": _V3_ACT_CODE, "code": "IMP"},
                "subject": {"reference": f"Patient/{patients[int(rng.integers(0, len(patients)))]}"},
                "period": {"start": stamp(begin)},
                "location": [{"location": {"reference": f"Location/{unit_ids[units[0]]}"}}],
            }
        )
    order = rng.permutation(len(encounter_list))
    return {
        "Encounter": [encounter_list[i] for i in order],
        "Location": locations,
        "Patient": [{"resourceType": "Patient", "id": p} for p in patients],
    }


def write_fhir(resources: dict[str, list[dict[str, Any]]], out: Path, fmt: FhirFormat) -> Path:
    """Write a Bulk Data export folder (one ``<Type>.ndjson`` per resource type) or one collection Bundle.

    Written into a temporary sibling and renamed into place.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if fmt == "ndjson":
            target = staging / "export"
            target.mkdir()
            for kind, items in resources.items():
                with (target / f"{kind}.ndjson").open("w", encoding="utf-8") as handle:
                    for resource in items:
                        handle.write(json.dumps(resource, separators=(",", ":")) + "\n")
        else:
            target = staging / "bundle.json"
            entries = [{"resource": r} for r in _all(resources)]
            bundle = {"resourceType": "Bundle", "type": "collection", "entry": entries}
            target.write_text(json.dumps(bundle, separators=(",", ":")) + "\n", encoding="utf-8")
        os.replace(target, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _all(resources: dict[str, list[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
    for items in resources.values():
        yield from items
