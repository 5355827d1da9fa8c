"""FHIR R4 in: ``Encounter`` resources from a Bulk Data NDJSON export or a Bundle, as unit-level stays.

Each inpatient Encounter (its ``class`` in the mapping's classes, its ``status`` not skipped)
becomes one stay per entry of its ``location`` history: the location is the unit, the
entry's ``period`` the stay (a single location without a period takes the Encounter's).
``Location`` resources in the same export give units their names. Resources are parsed and
checked by ``fhir.resources`` (R4B models, structurally identical to R4 for Encounter and
Location), never by hand; problems name the file, the NDJSON line or Bundle entry, the
resource (``Encounter/e17``) and the element (``location[1].period.end``).

``subject.reference`` (the patient) becomes the stays' ``patient_id``: patient-level privacy
needs it on the node; it is never logged nor sent anywhere.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import logging
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd

from medalloc_core.contract import (
    ADMIT_TIME,
    DISCHARGE_TIME,
    ENCOUNTER_ID,
    PATIENT_ID,
    UNIT,
    DataContractError,
    Problem,
)
from medalloc_core.encounters import DATE_DTYPE
from medalloc_core.io import MAX_FILE_BYTES
from medalloc_core.paths import check_regular, open_regular, read_regular_bytes
from medalloc_core.sources.bundle_stream import SplitBundle, bundle_entries, entry_array, split_bundle
from medalloc_core.sources.engine import connect, handoff, lines_of_ordinals, take_over
from medalloc_core.sources.fhir_scan import ScanResult, scan_fhir, stays_frame
from medalloc_core.sources.mapping import EngineSettings, FhirMapping
from medalloc_core.sources.stays import (
    FIRST_DATE,
    LAST_DATE,
    PROBLEMS_PER_CHECK,
    Findings,
    empty_stays,
    finish,
    no_daily,
    show,
)

logger = logging.getLogger(__name__)

NDJSON_SUFFIXES = (".ndjson",)
# A resource line longer than this is not an Encounter: refuse it before json.loads holds it twice.
MAX_LINE_BYTES = 4 * 1024 * 1024
_TIME_EXPECTED = "expected a FHIR dateTime with at least a full date (YYYY-MM-DD or YYYY-MM-DDThh:mm:ss+zz:zz)"


class FhirUnavailable(RuntimeError):
    """The optional dependency for FHIR (``fhir.resources``) is not installed."""


@functools.cache
def _models() -> tuple[Any, Any]:
    try:
        from fhir.resources.R4B.encounter import Encounter
        from fhir.resources.R4B.location import Location
    except ImportError as exc:  # pragma: no cover - the fhir extra is part of dev
        raise FhirUnavailable("reading FHIR needs the 'fhir' extra: python -m pip install -e '.[fhir]'") from exc
    return Encounter, Location


@dataclass
class _Parsed:
    """One parsed resource and where it was found."""

    resource: Any
    file: str
    row: int
    kind: str  # "line" or "entry"


@dataclass
class _Collected:
    encounters: list[_Parsed] = field(default_factory=list)
    locations: dict[str, str] = field(default_factory=dict)  # "Location/<id>" -> name
    ignored: Counter[str] = field(default_factory=Counter)
    other_class: Counter[str] = field(default_factory=Counter)  # Encounters of classes the mapping leaves out
    resources: int = 0


def fhir_files(location: Path) -> list[Path]:
    """The files of a FHIR source: the NDJSON files of a Bulk Data export folder, or the one file given."""
    if location.is_dir():
        # every .ndjson entry but a folder: a link to a device or a FIFO is refused by read_fhir, not skipped
        return sorted(p for p in location.iterdir() if not p.is_dir() and p.suffix.lower() in NDJSON_SUFFIXES)
    return [location]


def read_fhir(
    location: Path, mapping: FhirMapping, settings: EngineSettings | None = None, *, lenient: bool = False
) -> tuple[pd.DataFrame | None, list[Problem], dict[str, Any]]:
    """Read Encounters (and Location names) into typed stays, checked resource by resource.

    Parameters
    ----------
    location
        A Bulk Data export folder (every ``*.ndjson`` in it), one NDJSON file, or a Bundle
        (JSON) file.
    mapping
        Which encounters are inpatient stays, which locations are units, the time zone.
    settings
        The scan engine's memory and threads (default: :class:`EngineSettings` defaults).
    lenient
        A node's reading (issue 20): a record the scan flags is left out before counting, in the
        engine, and counted by reason in ``summary["left_out"]`` (never named: nothing is parsed
        record by record); an NDJSON line that is not a JSON object is such a record. What still
        stops is structural: a file that cannot be read or scanned, a Bundle that is not JSON.
        No stay left is zero stays, not an error. ``medalloc validate`` reads strictly.

    The export is scanned by DuckDB in bounded memory (:mod:`medalloc_core.sources.fhir_scan`);
    only the records it flags are parsed by ``fhir.resources`` to say what is wrong with them,
    the first :data:`EXPLAINED` of them, with a count of the rest by reason.

    Returns
    -------
    (stays, problems, summary)
        As :func:`medalloc_core.sources.omop.read_omop`.

    Raises
    ------
    DataContractError
        When the location does not exist or holds no NDJSON file.
    FhirUnavailable
        When ``fhir.resources`` is not installed.
    """
    _models()  # FhirUnavailable before anything is read
    location = Path(location)
    if not location.exists():
        raise DataContractError([Problem(str(location), "no such file or folder")])
    files = fhir_files(location)
    if not files:
        raise DataContractError(
            [
                Problem(
                    str(location),
                    "holds no .ndjson file; expected a FHIR Bulk Data export (Encounter.ndjson, Location.ndjson)",
                )
            ]
        )
    refused = []
    for file in files:  # what each file is, before any engine opens it (a FIFO never blocks, a device never streams)
        try:
            check_regular(file, what="a .ndjson file" if file.suffix.lower() in NDJSON_SUFFIXES else "a FHIR file")
        except OSError as exc:
            refused.append(Problem(str(file), exc.strerror or str(exc)))
    if refused:
        raise DataContractError(refused)
    bundle = len(files) == 1 and files[0].suffix.lower() not in NDJSON_SUFFIXES
    findings = Findings(str(location), row_label="entry" if bundle else "line", column_label="field")
    details: list[tuple[str, str]] = []
    summary: dict[str, Any] = {
        "file": str(location),
        "format": "fhir bundle" if bundle else "fhir ndjson",
        "shape": "encounters",
        "source": "fhir",
        "details": details,
    }
    settings = settings or EngineSettings()
    with tempfile.TemporaryDirectory(prefix="medalloc-bundle-") as folder:
        split = None
        if bundle:  # never the whole Bundle in memory: its entry array streamed by the engine, or split
            split = entry_array(files[0], Path(folder) / "entries.json", max_entry_bytes=MAX_LINE_BYTES)
            if split is not None:
                try:
                    return _read_scanned(files, bundle, mapping, settings, findings, summary, split, lenient)
                except _ArrayRefused:  # an entry the typed reader cannot take: walk the Bundle entry by entry
                    logger.debug("%s: the entry array has an entry of another shape; splitting it", files[0])
            split = split_bundle(files[0], Path(folder) / "entries.ndjson", max_entry_bytes=MAX_LINE_BYTES)
            if split is None:  # not a Bundle of entries, or not JSON somewhere: the exact reader says what
                return _read_by_record(files, bundle, mapping, findings, summary)
        return _read_scanned(files, bundle, mapping, settings, findings, summary, split, lenient)


class _ArrayRefused(Exception):
    """The engine could not type a Bundle's entry array (an entry or resource that is not an object)."""


def _read_scanned(
    files: list[Path],
    bundle: bool,
    mapping: FhirMapping,
    settings: EngineSettings,
    findings: Findings,
    summary: dict[str, Any],
    split: SplitBundle | None,
    lenient: bool = False,
) -> tuple[pd.DataFrame | None, list[Problem], dict[str, Any]]:
    """The engine's scan of the files (or of the split Bundle), then the flagged records explained (or, on a
    node, left out)."""
    try:
        import duckdb
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise FhirUnavailable("reading FHIR needs DuckDB: pip install duckdb") from exc
    try:
        with handoff() as handed:  # the stays are read once the engine is closed: its memory, then theirs
            with connect(settings) as connection:
                scan = scan_fhir(
                    connection,
                    files,
                    bundle=bundle,
                    mapping=mapping,
                    max_line_bytes=MAX_LINE_BYTES,
                    examples=EXPLAINED,
                    split=split,
                    handed=handed,
                    lenient=lenient,
                )
            if handed.exists():
                scan.stays = stays_frame(take_over(handed))
    except _SOURCE_ERRORS(duckdb) as exc:
        if split is not None and split.array:
            raise _ArrayRefused from exc
        # Not JSON at all somewhere (or a line over the limit): found line by line, in bounded memory.
        if bundle:
            return _read_by_record(files, bundle, mapping, findings, summary)
        for path in files:
            _scan_lines(path, findings)
        if not findings.has_errors:
            findings.add(f"cannot be scanned ({_engine_error(exc)})")
        return None, findings.problems, summary
    if scan.flagged:
        _explain(scan, bundle, mapping, findings)
        if not findings.has_errors:  # flagged by the engine, valid for fhir.resources: the exact reader decides
            logger.info(
                "the scan flagged %d record(s) the record-by-record reader accepts; reading record by record",
                scan.flagged,
            )
            return _read_by_record(
                files, bundle, mapping, Findings(findings.file, findings.row_label, findings.column_label), summary
            )
        return None, findings.problems, summary
    if lenient:
        summary["left_out"] = scan.left_out
    return _from_scan(scan, files, bundle, mapping, findings, summary, lenient)


EXPLAINED = 200


def _SOURCE_ERRORS(duckdb: Any) -> tuple[type[BaseException], ...]:  # noqa: N802 - a tuple of exception types
    """What a file (not the query) makes the engine raise: unreadable, not JSON, over a size limit, out of memory."""
    return (
        duckdb.IOException,
        duckdb.InvalidInputException,
        duckdb.ConversionException,
        duckdb.OutOfMemoryException,
    )


"""How many flagged records the reader explains one by one; the rest are counted by reason."""


def _engine_error(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:197] + "..."


def _from_scan(
    scan: ScanResult,
    files: list[Path],
    bundle: bool,
    mapping: FhirMapping,
    findings: Findings,
    summary: dict[str, Any],
    lenient: bool = False,
) -> tuple[pd.DataFrame | None, list[Problem], dict[str, Any]]:
    """The summary, stays and daily records of a clean scan, in the words of the record-by-record reader.

    ``lenient`` (a node): no stay is zero stays on the node's declared calendar, said as a warning."""
    details: list[tuple[str, str]] = summary["details"]
    kinds = ", ".join(f"{k} {v:,}" for k, v in scan.ignored)
    details.append(
        (
            "resources",
            f"{scan.resources:,} in {len(files)} file(s): Encounter {scan.encounters:,}, "
            f"Location {scan.locations:,}" + (f", ignored {kinds}" if kinds else ""),
        )
    )
    classes = ", ".join(mapping.encounter_classes)
    details.append(("inpatient encounters", f"{scan.inpatient:,} of {scan.total:,} (class in {classes})"))
    left = [f"status {k}: {v:,}" for k, v in scan.skipped_status]
    left += [f"class {k}: {v:,}" for k, v in scan.skipped_class]
    if left:
        details.append(("left out", ", ".join(left)))
    if scan.outside_total:
        shown = ", ".join(f"{k}: {v:,}" for k, v in scan.outside)
        details.append(("not a unit", f"{scan.outside_total:,} stays at locations not in [fhir] units ({shown})"))
    stays = scan.stays if scan.stays is not None else empty_stays()
    if stays.empty and lenient:
        findings.add(
            "no inpatient stay in any unit: the node counts zero stays (check the mapping: docs/data.md)",
            severity="warning",
        )
        summary.update(encounters=0, open_stays=0, frequency="daily", gaps=0, daily_rows=0, units=[])
        summary["daily"] = no_daily()
        return stays, findings.problems, summary
    if stays.empty:
        if not scan.inpatient:
            found = ", ".join(f"{k} ({v:,})" for k, v in scan.skipped_class) or "none"
            findings.add(
                f"no Encounter has an inpatient class ({classes}); found classes {found}; "
                "set [fhir] encounter-classes in the mapping file if your server codes stays differently",
                column="class",
            )
            return None, findings.problems, summary
    else:
        details.append(("stays", f"{len(stays):,} location stays of inpatient encounters"))
    summary["encounters"] = len(stays)
    summary["open_stays"] = int(stays[DISCHARGE_TIME].isna().sum())
    daily = scan.daily
    if stays.empty or daily is None:
        findings.add("no inpatient stay in any unit; expected at least one (check the mapping: docs/data.md)")
        return None, findings.problems, summary
    if scan.overlaps and scan.overlap_at is not None:  # as finish() words it, counted in the engine
        file, ordinal, record, field_name = scan.overlap_at
        findings.add(
            f"{scan.overlaps} stay(s) begin while the same patient's previous stay is still open; first here; "
            "both are counted in the census until the first ends",
            file=str(file),
            row=int(ordinal),
            record=str(record),
            column=str(field_name),
            severity="warning",
        )
    summary.update(frequency="daily", gaps=0, daily_rows=len(daily))
    summary["units"] = sorted(daily[UNIT].unique().tolist())
    summary["date_start"] = f"{daily['date'].min():%Y-%m-%d}"
    summary["date_end"] = f"{daily['date'].max():%Y-%m-%d}"
    if not bundle:  # the engine numbers objects; a problem names the line an editor shows
        findings.problems[:] = _lines_named(findings.problems)
    summary["daily"] = daily
    return stays, findings.problems, summary


def _lines_named(problems: list[Problem]) -> list[Problem]:
    wanted: dict[str, set[int]] = {}
    for problem in problems:
        if problem.row is not None:
            wanted.setdefault(problem.file, set()).add(problem.row)
    lines = {file: lines_of_ordinals(Path(file), ordinals) for file, ordinals in wanted.items()}
    return [dataclasses.replace(p, row=lines[p.file].get(p.row, p.row)) if p.row is not None else p for p in problems]


def _explain(scan: ScanResult, bundle: bool, mapping: FhirMapping, findings: Findings) -> None:
    """The first flagged records, parsed and checked by the record-by-record reader; the rest counted."""
    collected = _Collected()
    before = len(findings.problems)
    by_file: dict[str, list[int]] = {}
    for file, ordinal in scan.examples:
        by_file.setdefault(file, []).append(ordinal)
    for file, ordinals in by_file.items():
        if bundle:  # streamed: only the wanted entries are held
            records = [
                (n, entry["resource"])
                for n, entry in bundle_entries(Path(file), set(ordinals))
                if isinstance(entry, dict) and isinstance(entry.get("resource"), dict)
            ]
            for n in sorted(set(ordinals) - {n for n, _ in records}):
                findings.add("entry without a resource; expected entry.resource", file=file, row=n, column="resource")
        else:
            records = list(_ndjson_lines(Path(file), findings, only=set(ordinals)))
        for row, raw in records:
            _parse(raw, file, row, "entry" if bundle else "line", mapping, collected, findings)
    stays = _Stays(mapping, collected, findings, []).build()
    if stays is not None and not stays.empty:
        finish(
            stays,
            findings,
            {},
            {
                ADMIT_TIME: lambda i: str(stays.at[i, "_admit_field"]),
                DISCHARGE_TIME: lambda i: str(stays.at[i, "_discharge_field"]),
            },
        )
    # Problems about the set explained rather than a record ("no inpatient stay") say nothing here.
    findings.problems[before:] = [p for p in findings.problems[before:] if p.row is not None and p.severity == "error"]
    if findings.has_errors and scan.flagged > len(scan.examples):
        reasons = ", ".join(f"{reason}: {n:,}" for reason, n in scan.flagged_reasons)
        findings.add(
            f"... and {scan.flagged - len(scan.examples):,} more record(s) with problems, not listed "
            f"({scan.flagged:,} in all: {reasons}); fix these and validate again"
        )


def _read_by_record(
    files: list[Path], bundle: bool, mapping: FhirMapping, findings: Findings, summary: dict[str, Any]
) -> tuple[pd.DataFrame | None, list[Problem], dict[str, Any]]:
    """The record-by-record reader: every resource parsed by ``fhir.resources`` (exact, slow; for odd sources)."""
    details: list[tuple[str, str]] = summary["details"]
    details.clear()
    collected = _Collected()
    for path in files:
        records = _bundle_entries(path, findings) if bundle else _ndjson_lines(path, findings)
        for row, raw in records:
            _parse(raw, str(path), row, "entry" if bundle else "line", mapping, collected, findings)
    kinds = ", ".join(f"{k} {v:,}" for k, v in collected.ignored.most_common(6))
    encounters = len(collected.encounters) + sum(collected.other_class.values())
    details.append(
        (
            "resources",
            f"{collected.resources:,} in {len(files)} file(s): Encounter {encounters:,}, "
            f"Location {len(collected.locations):,}" + (f", ignored {kinds}" if kinds else ""),
        )
    )
    if findings.has_errors:
        return None, findings.problems, summary
    stays = _Stays(mapping, collected, findings, details).build()
    if stays is None:
        return None, findings.problems, summary
    daily = finish(
        stays,
        findings,
        summary,
        {
            ADMIT_TIME: lambda i: str(stays.at[i, "_admit_field"]),
            DISCHARGE_TIME: lambda i: str(stays.at[i, "_discharge_field"]),
        },
    )
    summary["daily"] = daily
    return (None if daily is None else stays), findings.problems, summary


# ---------------------------------------------------------------------- reading resources
class _Capped:
    """Line-level problems of one kind, the first few listed and the rest counted (a file of a million bad lines)."""

    def __init__(self, findings: Findings, path: Path) -> None:
        self.findings = findings
        self.path = path
        self.counts: Counter[str] = Counter()

    def add(self, kind: str, message: str, row: int, column: str | None = None) -> None:
        self.counts[kind] += 1
        if self.counts[kind] <= PROBLEMS_PER_CHECK:
            self.findings.add(message, file=str(self.path), row=row, column=column)

    def close(self) -> None:
        for kind, count in self.counts.items():
            if count > PROBLEMS_PER_CHECK:
                self.findings.add(
                    f"... and {count - PROBLEMS_PER_CHECK:,} more line(s) {kind} (not listed)", file=str(self.path)
                )


def _ndjson_lines(path: Path, findings: Findings, *, only: set[int] | None = None) -> Iterator[tuple[int, Any]]:
    """(line number, JSON value) of every non-blank line, streamed; unreadable lines are reported.

    Memory is bounded by :data:`MAX_LINE_BYTES` whatever the file: a longer line is measured
    while it is skipped, never held. ``only``: just the n-th non-blank lines (1-based) the
    scan engine flagged; the others are counted, not parsed.
    """
    try:
        handle = open_regular(path, what="a .ndjson file")  # a FIFO or a device is refused, never read
    except OSError as exc:
        findings.add(f"cannot be read: {exc.strerror or exc}", file=str(path))
        return
    capped = _Capped(findings, path)
    last = max(only) if only else None
    ordinal = 0
    found = False
    with handle:
        number = 0
        while True:
            line = handle.readline(MAX_LINE_BYTES + 1)
            if not line:
                break
            number += 1
            if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                size = len(line)
                while True:  # the rest of the line, measured in fixed-size pieces
                    piece = handle.readline(1 << 20)
                    size += len(piece)
                    if not piece or piece.endswith(b"\n"):
                        break
                ordinal += 1
                capped.add(
                    "longer than the limit",
                    f"line of {size:,} bytes; expected one resource of at most {MAX_LINE_BYTES:,} bytes per line",
                    number,
                )
                continue
            if not line.strip():
                continue
            ordinal += 1
            if only is not None:
                if ordinal not in only:
                    if last is not None and ordinal > last:
                        break
                    continue
            try:
                value = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as exc:
                capped.add(
                    "that are not UTF-8", f"not UTF-8 (byte 0x{line[exc.start]:02x}); expected UTF-8 JSON", number
                )
                continue
            except (ValueError, RecursionError) as exc:
                capped.add(
                    "that are not JSON", f"not JSON ({_short(exc)}); expected one JSON resource per line", number
                )
                continue
            found = True
            yield number, value
    capped.close()
    if only is None and not found and not findings.has_errors:
        findings.add("holds no resource; expected one JSON resource per line", file=str(path))


def _scan_lines(path: Path, findings: Findings) -> None:
    """Every line checked as JSON and as a resource (an object with a resourceType), nothing more: bounded, fast."""
    capped = _Capped(findings, path)
    for number, value in _ndjson_lines(path, findings):
        if not isinstance(value, dict):
            capped.add(
                "that are not objects",
                f"is a JSON {type(value).__name__}; expected a FHIR resource (an object)",
                number,
            )
        elif not isinstance(value.get("resourceType"), str):
            capped.add(
                "without a resourceType",
                "has no resourceType; expected a FHIR resource",
                number,
                column="resourceType",
            )
    capped.close()


def _bundle_entries(path: Path, findings: Findings) -> list[tuple[int, Any]]:
    """(entry number, resource) of a Bundle file; a file that is not a Bundle is reported."""
    try:
        raw = json.loads(
            read_regular_bytes(path, limit=MAX_FILE_BYTES, what="a FHIR Bundle (.fhir.json)").decode("utf-8")
        )
    except OSError as exc:
        findings.add(f"cannot be read: {exc.strerror or exc}", file=str(path))
        return []
    except UnicodeDecodeError as exc:
        findings.add(f"not UTF-8 (byte offset {exc.start}); expected a UTF-8 JSON Bundle", file=str(path))
        return []
    except (ValueError, RecursionError) as exc:
        findings.add(f"not JSON ({_short(exc)}); expected a FHIR Bundle, or NDJSON in a .ndjson file", file=str(path))
        return []
    if not isinstance(raw, dict) or raw.get("resourceType") != "Bundle":
        kind = raw.get("resourceType") if isinstance(raw, dict) else type(raw).__name__
        findings.add(f"is a {show(kind)}, not a Bundle; expected a FHIR Bundle of Encounters", file=str(path))
        return []
    entries = raw.get("entry", [])
    if not isinstance(entries, list):
        findings.add("Bundle.entry is not a list; expected a list of entries", file=str(path), column="entry")
        return []
    out = []
    for number, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
            findings.add(
                "entry without a resource; expected entry.resource", file=str(path), row=number, column="resource"
            )
            continue
        out.append((number, entry["resource"]))
    if not out and not findings.has_errors:
        findings.add("Bundle has no entries; expected Encounter resources", file=str(path))
    return out


def _parse(
    raw: Any,
    file: str,
    row: int,
    kind: str,
    mapping: FhirMapping,
    collected: _Collected,
    findings: Findings,
) -> None:
    """Parse one resource with its fhir.resources model; each validation error is a problem.

    An Encounter whose ``class.code`` is a plain string outside the mapping's classes is
    counted and not parsed: an export holds many more outpatient encounters than stays, and
    parsing each costs a third of a millisecond. Everything used is parsed in full.
    """
    encounter_model, location_model = _models()
    collected.resources += 1
    if not isinstance(raw, dict):
        findings.add(f"is a JSON {type(raw).__name__}; expected a FHIR resource (an object)", file=file, row=row)
        return
    resource_type = raw.get("resourceType")
    if not isinstance(resource_type, str):
        findings.add("has no resourceType; expected a FHIR resource", file=file, row=row, column="resourceType")
        return
    model = {"Encounter": encounter_model, "Location": location_model}.get(resource_type)
    if model is None:
        collected.ignored[resource_type[:40]] += 1
        return
    if resource_type == "Encounter":
        coding = raw.get("class")
        code = coding.get("code") if isinstance(coding, dict) else None
        if isinstance(code, str) and code not in mapping.encounter_classes:
            collected.other_class[code[:40]] += 1
            return
    record = f"{resource_type}/{raw['id']}" if isinstance(raw.get("id"), str) else resource_type
    try:
        parsed = model.model_validate(raw)
    except ValueError as exc:  # pydantic's ValidationError
        errors = exc.errors() if hasattr(exc, "errors") else []
        for error in errors[:10]:
            findings.add(
                f"{_short_msg(error.get('msg', ''))}; expected a valid FHIR R4 {resource_type}",
                file=file,
                row=row,
                record=record,
                column=_path(error.get("loc", ())) or None,
            )
        if not errors:
            findings.add(f"is not a valid {resource_type} ({_short(exc)})", file=file, row=row, record=record)
        return
    except Exception as exc:  # noqa: BLE001 - a parser bug on odd input is still one clear problem
        findings.add(
            f"could not be parsed ({type(exc).__name__}: {_short(exc)}); expected a valid FHIR R4 {resource_type}",
            file=file,
            row=row,
            record=record,
        )
        return
    if resource_type == "Location":
        if parsed.id:
            collected.locations[f"Location/{parsed.id}"] = (parsed.name or "").strip()
        return
    if not parsed.id:
        findings.add("Encounter has no id; expected Encounter.id", file=file, row=row, column="id")
        return
    # fhir.resources reads a JSON number as a Unix time; FHIR dateTimes are strings.
    for where, value in _raw_times(raw):
        if not isinstance(value, str):
            findings.add(
                f"{show(value)} is a JSON {type(value).__name__}; {_TIME_EXPECTED}",
                file=file,
                row=row,
                record=record,
                column=where,
            )
    collected.encounters.append(_Parsed(parsed, file, row, kind))


def _raw_times(raw: dict[str, Any]) -> list[tuple[str, Any]]:
    """The period start/end values of a raw Encounter and where they are (for the JSON-type check only)."""
    out = []
    period = raw.get("period")
    if isinstance(period, dict):
        out += [(f"period.{k}", period[k]) for k in ("start", "end") if k in period]
    locations = raw.get("location")
    if isinstance(locations, list):
        for i, entry in enumerate(locations):
            p = entry.get("period") if isinstance(entry, dict) else None
            if isinstance(p, dict):
                out += [(f"location[{i}].period.{k}", p[k]) for k in ("start", "end") if k in p]
    return out


# ---------------------------------------------------------------------- stays
class _Stays:
    def __init__(
        self, mapping: FhirMapping, collected: _Collected, findings: Findings, details: list[tuple[str, str]]
    ) -> None:
        self.mapping = mapping
        self.collected = collected
        self.findings = findings
        self.details = details
        self.zone = ZoneInfo(mapping.timezone) if mapping.timezone else None
        self.units = {str(k): v for k, v in mapping.units.items()}

    def build(self) -> pd.DataFrame | None:
        encounters = self.collected.encounters
        seen: dict[str, _Parsed] = {}
        for item in encounters:
            ident = item.resource.id
            if ident in seen:
                first = seen[ident]
                self.findings.add(
                    f"Encounter/{ident} appears more than once (first in {Path(first.file).name}, {first.kind} "
                    f"{first.row}); expected one resource per id",
                    file=item.file,
                    row=item.row,
                    record=f"Encounter/{ident}",
                    column="id",
                )
            else:
                seen[ident] = item
        if self.findings.has_errors:
            return None
        # Ward stays modelled as sub-encounters (partOf): the parent's own locations would count them twice.
        parents = {
            ref.split("/", 1)[1]
            for item in encounters
            if item.resource.partOf is not None
            and (ref := item.resource.partOf.reference or "").startswith("Encounter/")
            and ref.split("/", 1)[1] in seen
        }
        rows: list[dict[str, Any]] = []
        skipped_status: Counter[str] = Counter()
        skipped_class: Counter[str] = Counter(self.collected.other_class)
        outside: Counter[str] = Counter()
        for item in encounters:
            enc = item.resource
            status = str(enc.status or "")
            code = str(enc.class_fhir.code or "") if enc.class_fhir is not None else ""
            if status in self.mapping.skip_statuses:
                skipped_status[status] += 1
                continue
            if code not in self.mapping.encounter_classes:
                skipped_class[code or "(none)"] += 1
                continue
            if enc.id in parents:
                skipped_class["parent of sub-encounters"] += 1
                continue
            rows += self._encounter_stays(item, outside)
        total = len(encounters) + sum(self.collected.other_class.values())
        inpatient = total - sum(skipped_status.values()) - sum(skipped_class.values())
        classes = ", ".join(self.mapping.encounter_classes)
        self.details.append(("inpatient encounters", f"{inpatient:,} of {total:,} (class in {classes})"))
        left = [f"status {k}: {v:,}" for k, v in skipped_status.most_common()]
        left += [f"class {k}: {v:,}" for k, v in skipped_class.most_common(6)]
        if left:
            self.details.append(("left out", ", ".join(left)))
        if outside:
            shown = ", ".join(f"{k}: {v:,}" for k, v in outside.most_common(6))
            self.details.append(
                ("not a unit", f"{sum(outside.values()):,} stays at locations not in [fhir] units ({shown})")
            )
        if self.findings.has_errors:
            return None
        if not rows:
            if not inpatient:
                found = ", ".join(f"{k} ({v:,})" for k, v in skipped_class.most_common(6)) or "none"
                self.findings.add(
                    f"no Encounter has an inpatient class ({classes}); found classes {found}; "
                    "set [fhir] encounter-classes in the mapping file if your server codes stays differently",
                    column="class",
                )
                return None
            return empty_stays()
        stays = pd.DataFrame(rows)
        for column in (ADMIT_TIME, DISCHARGE_TIME):
            stays[column] = pd.to_datetime(stays[column]).astype(DATE_DTYPE)
        self.details.append(("stays", f"{len(stays):,} location stays of inpatient encounters"))
        return stays

    def _encounter_stays(self, item: _Parsed, outside: Counter[str]) -> list[dict[str, Any]]:
        enc = item.resource
        record = f"Encounter/{enc.id}"
        where: dict[str, Any] = {"file": item.file, "row": item.row, "record": record}
        subject = enc.subject.reference if enc.subject is not None else None
        if not subject:
            self.findings.add(
                "Encounter has no subject.reference; expected the Patient (the node protects each patient's stays)",
                column="subject.reference",
                **where,
            )
            return []
        history = [(i, loc) for i, loc in enumerate(enc.location or []) if str(loc.status or "") != "planned"]
        if not history:
            self.findings.add(
                "Encounter has no location history; expected location[] naming the unit and when the patient was there",
                column="location",
                **where,
            )
            return []
        single = len(history) == 1
        finished = str(enc.status or "") == "finished"
        out = []
        for i, loc in history:
            period = loc.period
            start, start_field = self._time(period.start if period else None, f"location[{i}].period.start", where)
            end, end_field = self._time(period.end if period else None, f"location[{i}].period.end", where)
            if start is None and single and enc.period is not None:
                start, start_field = self._time(enc.period.start, "period.start", where)
            if end is None and single and enc.period is not None:
                end, end_field = self._time(enc.period.end, "period.end", where)
            if start is None:
                self.findings.add(
                    "no start time; expected when the patient arrived at this location "
                    + ("(location[0].period.start or period.start)" if single else f"(location[{i}].period.start)"),
                    column=start_field,
                    **where,
                )
                continue
            if end is None and finished:
                self.findings.add(
                    "the Encounter is finished but this stay has no end; expected "
                    + ("location[0].period.end or period.end" if single else f"location[{i}].period.end"),
                    column=end_field,
                    **where,
                )
                continue
            unit = self._unit(loc, i, where)
            if unit is None:
                continue
            name, mapped = unit
            if mapped is None:
                outside[name] += 1
                continue
            out.append(
                {
                    ENCOUNTER_ID: f"{record}#{i}",
                    PATIENT_ID: subject,
                    UNIT: mapped,
                    ADMIT_TIME: start,
                    DISCHARGE_TIME: end if end is not None else pd.NaT,
                    "_admit_field": start_field,
                    "_discharge_field": end_field,
                    "_file": item.file,
                    "_row": item.row,
                    "_record": record,
                }
            )
        return out

    def _time(self, value: Any, field_name: str, where: dict[str, Any]) -> tuple[pd.Timestamp | None, str]:
        """A FHIR date/dateTime as the hospital's local wall clock (naive); None when absent or unusable."""
        if value is None:
            return None, field_name
        if isinstance(value, str):  # fhir.resources keeps partial dates ("2024", "2024-01") as text
            self.findings.add(f"{show(value)} is not a full date; {_TIME_EXPECTED}", column=field_name, **where)
            return None, field_name
        if isinstance(value, dt.datetime):
            if value.tzinfo is not None and self.zone is not None:
                value = value.astimezone(self.zone)
            stamp = pd.Timestamp(value.replace(tzinfo=None))
        else:
            stamp = pd.Timestamp(value)
        if not FIRST_DATE <= stamp <= LAST_DATE:
            self.findings.add(
                f"{stamp.date()} is outside the dates MedAlloc can handle "
                f"({FIRST_DATE:%Y-%m-%d} .. {LAST_DATE:%Y-%m-%d}); {_TIME_EXPECTED}",
                column=field_name,
                **where,
            )
            return None, field_name
        return stamp, field_name

    def _unit(self, loc: Any, i: int, where: dict[str, Any]) -> tuple[str, str | None] | None:
        """(name, unit) of a location entry: unit None when the mapping leaves it out; None on error."""
        ref = (loc.location.reference or "").strip() if loc.location is not None else ""
        display = (loc.location.display or "").strip() if loc.location is not None else ""
        if self.mapping.unit_name == "reference":
            name = ref
        else:
            name = self.collected.locations.get(ref) or display or ref
        if not name:
            self.findings.add(
                "location without a reference or display; expected location.reference to the unit's Location",
                column=f"location[{i}].location",
                **where,
            )
            return None
        if not self.units:
            return name, name
        return name, self.units.get(name) or self.units.get(ref)


def _path(loc: tuple[Any, ...]) -> str:
    """A pydantic error location as a FHIR element path: ``("location", 0, "period")`` -> ``location[0].period``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("root", "resource_type"):
            out += "" if part == "root" else (".resourceType" if out else "resourceType")
        else:
            out += f".{part}" if out else str(part)
    return out


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 160 else text[:157] + "..."


def _short_msg(text: str) -> str:
    text = " ".join(text.split()).removeprefix("Value error, ")
    return text if len(text) <= 160 else text[:157] + "..."
