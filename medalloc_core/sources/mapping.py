"""How a site's OMOP or FHIR data maps onto the encounter contract: which visits count, which care sites are units.

Sites differ in what they call an inpatient stay and which care sites or locations are the
units a planner forecasts. The defaults follow the OMOP CDM v5.4 standard concepts and the
FHIR R4 ``v3-ActCode`` encounter classes; a site overrides them in a small TOML file
(``data-mapping`` in the node config, ``--mapping`` on the command line), documented key by
key in docs/data.md. Unknown keys are an error that names the key and the known ones, so a
typo never silently falls back to a default.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# OMOP CDM v5.4 standard Visit concepts that are inpatient stays (Athena, domain Visit):
# 9201 Inpatient Visit, 262 Emergency Room and Inpatient Visit, 8717 Inpatient Hospital,
# 32037 Intensive Care. Outpatient (9202), emergency-only (9203) and home visits are not stays
# in a bed the forecaster plans for.
DEFAULT_INPATIENT_VISIT_CONCEPTS: tuple[int, ...] = (9201, 262, 8717, 32037)
# FHIR R4 Encounter.class codes (v3-ActCode) for a stay in a bed: IMP inpatient encounter,
# ACUTE inpatient acute, NONAC inpatient non-acute. AMB, EMER, OBSENC, HH, VR are not.
DEFAULT_ENCOUNTER_CLASSES: tuple[str, ...] = ("IMP", "ACUTE", "NONAC")
# Encounter.status values that were never (or wrongly) a stay.
DEFAULT_SKIPPED_STATUSES: tuple[str, ...] = ("planned", "cancelled", "entered-in-error")

OmopLevel = Literal["auto", "visit_detail", "visit_occurrence"]
CareSiteName = Literal["care_site_name", "care_site_source_value", "care_site_id"]
MissingCareSite = Literal["hospital", "refuse"]
LocationName = Literal["name", "reference"]


class MappingError(ValueError):
    """The mapping file or a mapping value is invalid; the message names the key and what is expected."""


@dataclass(frozen=True)
class OmopMapping:
    """Which OMOP CDM records are stays in which unit.

    Parameters
    ----------
    schema : str (default: "")
        Database schema that holds the CDM tables (PostgreSQL: e.g. ``"cdm"``); empty uses the
        connection's default search path. Ignored for SQLite and exported files.
    inpatient_visit_concepts : tuple[int, ...] (default: 9201, 262, 8717, 32037)
        ``visit_occurrence.visit_concept_id`` values that are inpatient stays.
    level : {"auto", "visit_detail", "visit_occurrence"} (default: "auto")
        Where unit-level stays come from. ``visit_detail``: each ``visit_detail`` row of an
        inpatient visit is a stay in its care site (transfers are consecutive rows), and an
        inpatient visit without detail rows is one stay in its own care site.
        ``visit_occurrence``: each inpatient visit is one stay in its own care site.
        ``auto``: ``visit_detail`` when that table exists, else ``visit_occurrence``.
    unit_name : {"care_site_name", "care_site_source_value", "care_site_id"} (default: "care_site_name")
        The ``care_site`` column that names a unit.
    units : dict[str, str] (default: empty)
        Care site (by its ``unit_name`` value) -> unit name. Empty: every care site of an
        inpatient stay is a unit. Otherwise only the listed care sites are units (several may
        map to one unit); stays elsewhere are left out and counted in the summary.
    timezone : str (default: "")
        IANA time zone of the hospital (e.g. ``"Europe/London"``). A date-time written with
        ``Z`` or a UTC offset (``1996-08-21T00:00:00Z``, as the OMOP community's export tools
        write them; a PostgreSQL ``timestamptz``) is converted to it before its calendar day is
        taken. Empty: the wall clock as written, offset dropped. Times without an offset (the
        CDM's convention) are local times and kept as they are.
    missing_care_site : {"hospital", "refuse"} (default: "hospital")
        What a stay without a care site is (many CDMs, claims-derived ones especially, have no
        visit-level care site). ``hospital``: counted in one hospital-wide unit named
        ``hospital_unit``, with a warning that says how many; ``refuse``: an error per stay.
    hospital_unit : str (default: "Hospital")
        The name of that hospital-wide unit.
    """

    schema: str = ""
    inpatient_visit_concepts: tuple[int, ...] = DEFAULT_INPATIENT_VISIT_CONCEPTS
    level: OmopLevel = "auto"
    unit_name: CareSiteName = "care_site_name"
    units: Mapping[str, str] = field(default_factory=dict)
    timezone: str = ""
    missing_care_site: MissingCareSite = "hospital"
    hospital_unit: str = "Hospital"

    def __post_init__(self) -> None:
        if not self.inpatient_visit_concepts:
            raise MappingError("[omop] inpatient-visit-concepts is empty; expected at least one visit_concept_id")
        if self.level not in ("auto", "visit_detail", "visit_occurrence"):
            raise MappingError(f"[omop] level must be 'auto', 'visit_detail' or 'visit_occurrence', got {self.level!r}")
        if self.unit_name not in ("care_site_name", "care_site_source_value", "care_site_id"):
            raise MappingError(
                "[omop] unit-name must be 'care_site_name', 'care_site_source_value' or 'care_site_id', "
                f"got {self.unit_name!r}"
            )
        if self.missing_care_site not in ("hospital", "refuse"):
            raise MappingError(
                f"[omop] missing-care-site must be 'hospital' or 'refuse', got {self.missing_care_site!r}"
            )
        if not self.hospital_unit.strip():
            raise MappingError("[omop] hospital-unit is empty; expected a unit name such as 'Hospital'")
        _check_timezone("omop", self.timezone)
        _check_units("omop", self.units)


@dataclass(frozen=True)
class FhirMapping:
    """Which FHIR Encounters are stays, and which locations are units.

    Parameters
    ----------
    encounter_classes : tuple[str, ...] (default: "IMP", "ACUTE", "NONAC")
        ``Encounter.class.code`` values that are inpatient stays.
    skip_statuses : tuple[str, ...] (default: "planned", "cancelled", "entered-in-error")
        ``Encounter.status`` values left out (never a stay, or recorded in error).
    timezone : str (default: "")
        IANA time zone of the hospital (e.g. ``"Europe/London"``): every time is converted to
        it before its calendar day is taken. Empty: each time's wall clock as written, offset
        dropped (right when the server writes local times, wrong when it writes UTC).
    unit_name : {"name", "reference"} (default: "name")
        How a location names a unit: ``name`` = the ``Location`` resource's ``name`` when the
        export holds it, else the reference's ``display``, else the reference;
        ``reference`` = the reference itself (``Location/123``).
    units : dict[str, str] (default: empty)
        Location (by its ``unit_name`` value or its reference) -> unit name. Empty: every
        location of an inpatient encounter is a unit. Otherwise only the listed ones are.
    """

    encounter_classes: tuple[str, ...] = DEFAULT_ENCOUNTER_CLASSES
    skip_statuses: tuple[str, ...] = DEFAULT_SKIPPED_STATUSES
    timezone: str = ""
    unit_name: LocationName = "name"
    units: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.encounter_classes:
            raise MappingError("[fhir] encounter-classes is empty; expected at least one class code such as 'IMP'")
        if self.unit_name not in ("name", "reference"):
            raise MappingError(f"[fhir] unit-name must be 'name' or 'reference', got {self.unit_name!r}")
        _check_timezone("fhir", self.timezone)
        _check_units("fhir", self.units)


@dataclass(frozen=True)
class EngineSettings:
    """How much of the machine reading a source may use: the scan engine's memory and threads.

    Sources are scanned by DuckDB (NDJSON, Bundles, encounter CSV/Parquet) or counted inside
    their own database (OMOP); these settings bound what that costs the node, whatever the size
    of the export: past ``memory_limit`` the engine spills to a temporary folder instead of
    growing. The stays kept for patient-level privacy are held in memory besides (about 60
    bytes a stay).

    Parameters
    ----------
    memory_limit : str (default: "512MB")
        DuckDB's ``memory_limit`` (``"256MB"``, ``"2GB"``).
    threads : int (default: 2)
        DuckDB's worker threads.
    statement_timeout_s : int (default: 300)
        The longest one query of an OMOP database may run, and how long a connection may take
        to answer, before the read is refused with a message that says so.
    """

    memory_limit: str = "512MB"
    threads: int = 2
    statement_timeout_s: int = 300

    def __post_init__(self) -> None:
        import re

        if not re.fullmatch(r"\s*\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*", self.memory_limit):
            raise MappingError(
                f"[engine] memory-limit must be a size such as '512MB' or '2GB', got {self.memory_limit!r}"
            )
        if not 1 <= self.threads <= 256:
            raise MappingError(f"[engine] threads must be a whole number from 1 to 256, got {self.threads!r}")
        if not 1 <= self.statement_timeout_s <= 86400:
            raise MappingError(
                f"[engine] statement-timeout-s must be a whole number of seconds from 1 to 86400, "
                f"got {self.statement_timeout_s!r}"
            )


@dataclass(frozen=True)
class SourceMapping:
    """The mapping of one site: its OMOP and FHIR sections (only the one its source uses matters), and engine limits."""

    omop: OmopMapping = field(default_factory=OmopMapping)
    fhir: FhirMapping = field(default_factory=FhirMapping)
    path: Path | None = None  # the file it was read from, for messages
    engine: EngineSettings = field(default_factory=EngineSettings)

    @classmethod
    def from_toml(cls, path: Path) -> SourceMapping:
        """Read a mapping file (sections ``[omop]`` and ``[fhir]``, kebab-case keys).

        Raises
        ------
        MappingError
            If the file cannot be read or parsed, or holds an unknown section or key or a
            value of the wrong type; the message names the file, the key and what is expected.
        """
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise MappingError(f"{path}: cannot be read ({exc.strerror or exc})") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise MappingError(f"{path}: not valid TOML ({exc})") from None
        unknown = sorted(set(raw) - {"omop", "fhir", "engine"})
        if unknown:
            raise MappingError(
                f"{path}: unknown section(s) {unknown}; "
                "expected [omop] and/or [fhir] (and [engine] for the scan limits)"
            )
        try:
            return cls(
                omop=_section(OmopMapping, raw.get("omop", {}), "omop"),
                fhir=_section(FhirMapping, raw.get("fhir", {}), "fhir"),
                path=path,
                engine=_section(EngineSettings, raw.get("engine", {}), "engine"),
            )
        except MappingError as exc:
            raise MappingError(f"{path}: {exc}") from None


def _section(kind: type, raw: Any, name: str) -> Any:
    """Build ``kind`` from a TOML table with kebab-case keys, checking each value's type."""
    if not isinstance(raw, dict):
        raise MappingError(f"[{name}] must be a table of keys")
    known = {f.name.replace("_", "-"): f for f in fields(kind)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise MappingError(f"[{name}] unknown key(s) {unknown}; known keys: {', '.join(sorted(known))}")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        attribute = known[key].name
        default = getattr(kind(), attribute)
        values[attribute] = _typed(f"[{name}] {key}", value, default)
    return kind(**values)


def _typed(where: str, value: Any, default: Any) -> Any:
    """``value`` checked against the type of the field's default (str, tuple of int/str, table of str)."""
    if isinstance(default, int) and not isinstance(default, bool):
        if not isinstance(value, int) or isinstance(value, bool):
            raise MappingError(f"{where} must be a whole number, got {value!r}")
        return value
    if isinstance(default, str):
        if not isinstance(value, str):
            raise MappingError(f"{where} must be a string, got {value!r}")
        return value
    if isinstance(default, tuple):
        item = type(default[0]) if default else str
        if not isinstance(value, list) or not all(isinstance(v, item) and not isinstance(v, bool) for v in value):
            raise MappingError(
                f"{where} must be a list of {'whole numbers' if item is int else 'strings'}, got {value!r}"
            )
        return tuple(value)
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise MappingError(f'{where} must be a table of names, e.g. {{ "Ward 3" = "MED-3" }}, got {value!r}')
    return {str(k): v for k, v in value.items()}


def _check_units(section: str, units: Mapping[str, str]) -> None:
    for key, unit in units.items():
        if not str(unit).strip():
            raise MappingError(f"[{section}] units maps {key!r} to an empty unit name; expected a name such as 'ICU'")


def _check_timezone(section: str, zone: str) -> None:
    if zone:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise MappingError(
                f"[{section}] timezone {zone!r} is not a known IANA time zone; expected e.g. 'Europe/London'"
            ) from None
