"""Where a hospital's data lives: the contract's own files, an OMOP CDM, or a FHIR export — one entry point.

``DataSource("…")`` names the data (a CSV/Parquet file, a database URL, an OMOP export
folder, a FHIR Bulk Data folder, NDJSON or Bundle file); :func:`validate_source` checks it
without changing anything and :func:`load_source` turns it into the daily unit records the
forecaster reads, plus the typed stays (with their patient ids, which never leave the node)
for patient-level privacy. See docs/data.md for each source's rules and mapping.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from medalloc_core.contract import DataContractError, Frequency, Problem, UnitRecords
from medalloc_core.paths import open_regular
from medalloc_core.sources.mapping import MappingError, SourceMapping
from medalloc_core.sources.stays import STAY_COLUMNS
from medalloc_core.validation import ValidationReport, inspect_file, load_node_records, log_left_out

logger = logging.getLogger(__name__)

SourceFormat = Literal["auto", "contract", "omop", "fhir"]
FORMATS: tuple[str, ...] = ("auto", "contract", "omop", "fhir")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_SQLITE_MAGIC = b"SQLite format 3\x00"
_SQLITE_SUFFIXES = (".sqlite", ".sqlite3", ".db")
_OMOP_TABLE = re.compile(r"^(visit_occurrence|visit_detail|care_site)\.(csv|parquet)$", re.I)

__all__ = [
    "FORMATS",
    "DataSource",
    "MappingError",
    "SourceData",
    "SourceFormat",
    "SourceMapping",
    "cached_source",
    "inspect_node_source",
    "inspect_source",
    "left_out_of",
    "load_node_source",
    "log_node_left_out",
    "load_source",
    "validate_source",
]


@dataclass(frozen=True)
class DataSource:
    """A hospital's data, wherever it lives, and how to map it.

    Parameters
    ----------
    location : str
        A contract file (``.csv``/``.parquet``), a SQLAlchemy database URL
        (``sqlite:///omop.db``, ``postgresql://reader@host/omop``) or an SQLite file holding
        an OMOP CDM, an OMOP export folder (``visit_occurrence.csv`` ...), a FHIR Bulk Data
        export folder (``*.ndjson``), an NDJSON file or a FHIR Bundle (``.json``).
    format : {"auto", "contract", "omop", "fhir"} (default: "auto")
        ``auto`` tells them apart by scheme, folder contents and file bytes.
    mapping : SourceMapping (default: the documented defaults)
        Which records count as stays and which care sites/locations are units.
    """

    location: str
    format: SourceFormat = "auto"
    mapping: SourceMapping = field(default_factory=SourceMapping)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"data format must be one of {', '.join(FORMATS)}, got {self.format!r}")

    @classmethod
    def of(cls, location: str | Path, *, format: SourceFormat = "auto", mapping: Path | None = None) -> DataSource:
        """A source with its mapping read from ``mapping`` (a TOML file); raises MappingError."""
        loaded = SourceMapping.from_toml(mapping) if mapping is not None else SourceMapping()
        return cls(str(location), format, loaded)

    @property
    def is_url(self) -> bool:
        return bool(_URL.match(self.location))

    @property
    def display(self) -> str:
        """The location as it may be shown and logged: a database URL's password hidden."""
        if not self.is_url:
            return self.location
        try:
            from sqlalchemy.engine import make_url

            return make_url(self.location).render_as_string(hide_password=True)
        except Exception:  # noqa: BLE001 - unparseable: show the scheme only, never a possible password
            return self.location.split("://", 1)[0] + "://..."

    @property
    def name(self) -> str:
        """A short name for logs and the node's default hospital id: the file or folder name up to its first dot."""
        if self.is_url:
            tail = self.display.rstrip("/").rsplit("/", 1)[-1]
            return tail.split(".", 1)[0] or "database"
        return Path(self.location).name.split(".", 1)[0] or Path(self.location).name

    def kind(self) -> Literal["contract", "omop", "fhir"]:
        """What the source is: the given format, or detected. Never raises; an unreadable path is 'contract'."""
        if self.format != "auto":
            return self.format
        if self.is_url:
            return "omop"
        path = Path(self.location)
        try:
            if path.is_dir():
                names = [p.name for p in path.iterdir()]
                if any(_OMOP_TABLE.match(n) for n in names):
                    return "omop"
                if any(n.lower().endswith(".ndjson") for n in names):
                    return "fhir"
                return "contract"  # reported by the contract reader: a folder is not a file
            if path.suffix.lower() == ".ndjson":
                return "fhir"
            if path.suffix.lower() in _SQLITE_SUFFIXES:  # named as a database: say so when it is not one
                return "omop"
            with open_regular(path) as handle:  # a FIFO or device: the contract reader names it
                head = handle.read(64)
        except OSError:
            return "contract"
        if head.startswith(_SQLITE_MAGIC):
            return "omop"
        if head.lstrip().startswith(b"{"):
            return "fhir"
        return "contract"

    def fingerprint(self) -> tuple[Any, ...] | None:
        """Identity of the data for caching (paths with size and mtime); None when it cannot be known (a server)."""
        if self.is_url and not self.location.startswith("sqlite"):
            return None
        path = Path(self._sqlite_path() if self.is_url else self.location)
        try:
            paths = sorted(path.iterdir()) if path.is_dir() else [path]
            stats = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths if p.is_file())
        except OSError:
            return None
        return (self.location, self.format, repr(self.mapping), stats)

    def _sqlite_path(self) -> str:
        return self.location.split(":///", 1)[-1] if self.location.startswith("sqlite:///") else self.location


@dataclass(frozen=True)
class SourceData:
    """A loaded source: the daily unit records, and the stays behind them (None for unit-record files).

    ``stays`` has the contract's stay columns (``encounter_id``, ``patient_id``, ``unit``,
    ``admit_time``, ``discharge_time``): the patient ids are the privacy unit, and stay on
    the node.
    """

    records: UnitRecords
    stays: pd.DataFrame | None
    report: ValidationReport


def validate_source(source: DataSource | str | Path) -> ValidationReport:
    """Check a source against its rules without modifying it (databases are opened read-only).

    Never raises for bad input: every problem is in the report, naming the file or database,
    the row/line/entry, the record and the field. A missing optional dependency is reported
    as a problem that says which extra to install.
    """
    report, _ = inspect_source(source)
    return report


def inspect_source(source: DataSource | str | Path) -> tuple[ValidationReport, SourceData | None]:
    """:func:`validate_source`'s report and, when the source is valid, the data it read (None otherwise).

    For a caller that reports on a source and then uses it: the source is read once.
    """
    return _inspect(_as_source(source))


def load_source(source: DataSource | str | Path) -> SourceData:
    """Read, validate and derive daily unit records from any source.

    Raises
    ------
    DataContractError
        Carrying every problem when the source has at least one error. Warnings are logged.
    """
    source = _as_source(source)
    report, data = _inspect(source)
    for problem in report.warnings:
        logger.warning("%s", problem)
    if data is None:
        raise DataContractError(report.problems)
    return data


def inspect_node_source(source: DataSource | str | Path) -> tuple[ValidationReport, SourceData | None]:
    """A source as a node reads it (issue 20): a malformed record is left out before counting, never a refusal.

    Whether a node answers, and what it counts, must not depend on one stay: the file without that stay
    answers normally. Every reader has this reading: a contract encounter file read by the validator
    (``validation.load_node_records``) or by the engine (``encounter_scan``, ``lenient``), an OMOP CDM read
    row by row (``omop._Reader``, ``lenient``), a FHIR export (``fhir_scan``, ``lenient``). The report's
    ``summary["left_out"]`` counts what was left out, by reason (:func:`left_out_of`); its problems are the
    structural ones (unreadable, no such columns or tables) that still refuse, and data is None then.
    `medalloc validate` reads with :func:`inspect_source`: strict, every record named. An OMOP CDM large
    enough to be read in SQL (``omop_sql.SQL_MIN_VISITS`` visits) leaves a flagged stay out in SQL, and goes
    to the lenient row reader when its ids are flagged (docs/privacy.md).
    """
    return _inspect(_as_source(source), node=True)


def left_out_of(report: ValidationReport) -> dict[str, int]:
    """What a node's reading left out, by reason (counts only: what its log may say); empty for a strict read."""
    left = report.summary.get("left_out")
    return {str(k): int(v) for k, v in left.items()} if isinstance(left, dict) else {}


def load_node_source(source: DataSource | str | Path) -> tuple[UnitRecords, pd.DataFrame | None, dict[str, int]]:
    """A source as a node counts it: ``(records, stays or None, stays left out by reason)`` (issue 20).

    :func:`inspect_node_source`, read in full; what it left out is logged by reason
    (``validation.log_left_out``), never which record. A node keeps the counts of a source big enough
    for the engine in its count cache instead (:func:`cached_source`), read the same way.

    Raises
    ------
    DataContractError
        The structural problems (unreadable, wrong columns, no tables or records).
    """
    source = _as_source(source)
    report, data = inspect_node_source(source)
    for problem in report.warnings:
        logger.warning("%s", problem)
    if data is None:
        raise DataContractError(report.problems)
    left_out = left_out_of(report)
    log_node_left_out(source, left_out)
    return data.records, data.stays, left_out


def log_node_left_out(source: DataSource, left_out: dict[str, int]) -> None:
    """A node's log line for what its reading of ``source`` left out: how many by reason, never which record."""
    log_left_out(source.display, left_out, named_by=_NAMED_BY[source.kind()])


#: How `medalloc validate` names a record of each kind of source (the node's log line points there).
_NAMED_BY = {
    "contract": "row and column",
    "omop": "table, record and field",
    "fhir": "file, line or entry, resource and element",
}


def cached_source(source: DataSource | str | Path) -> bool:
    """Whether a node keeps ``source``'s counts in its count cache (``sources.incremental``): an encounter file
    big enough for the engine, or a FHIR export. Either way it is read as :func:`inspect_node_source` reads it;
    a contract file small enough for the validator, and OMOP, are read in full at each change."""
    source = _as_source(source)
    kind = source.kind()
    if kind == "contract":
        return _for_engine(Path(source.location))
    return kind == "fhir"


def _as_source(source: DataSource | str | Path) -> DataSource:
    return source if isinstance(source, DataSource) else DataSource(str(source))


#: Encounter files larger than this are scanned by the DuckDB engine (bounded memory); smaller ones by the
#: full validator, whose checks the engine path does not all repeat (empty files, column types, corrupt Parquet).
ENGINE_MIN_BYTES = 32 * 2**20


#: Parquet is compressed (a million stays in 19 MB): past this many rows the engine reads it whatever its size.
ENGINE_MIN_PARQUET_ROWS = 400_000


def _file_bytes(path: Path) -> int:
    try:
        return path.stat().st_size if path.is_file() else 0
    except OSError:
        return 0


def _for_engine(path: Path) -> bool:
    """Whether an encounter file is big enough for the engine: its bytes, or a Parquet file's row count."""
    size = _file_bytes(path)
    if size > ENGINE_MIN_BYTES:
        return True
    if size < 12:
        return False
    try:
        from medalloc_core.io import PARQUET_MAGIC

        with path.open("rb") as handle:
            if handle.read(4) != PARQUET_MAGIC:
                return False
        import pyarrow.parquet as pq

        return bool(pq.ParquetFile(path).metadata.num_rows > ENGINE_MIN_PARQUET_ROWS)
    except Exception:  # noqa: BLE001 - unreadable or corrupt: the contract's reader names the problem
        return False


def _inspect(source: DataSource, *, node: bool = False) -> tuple[ValidationReport, SourceData | None]:
    kind = source.kind()
    if kind == "contract":
        path = Path(source.location)
        from medalloc_core.sources.encounter_scan import scan_encounter_file

        # Below ENGINE_MIN_BYTES (ENGINE_MIN_PARQUET_ROWS for Parquet) the full validator reads the file
        # (every check it has, seconds at that size); a hospital-scale export goes through the engine in
        # bounded memory.
        scanned = scan_encounter_file(path, source.mapping.engine, lenient=node) if _for_engine(path) else None
        if scanned is not None:  # an encounter file, read by the engine in bounded memory
            report, records, stays = scanned
            return report, (None if records is None else SourceData(records, stays, report))
        if node:
            return _node_contract(path)
        report, records = inspect_file(path)
        if records is None:
            return report, None
        return report, SourceData(records, _contract_stays(path, records), report)
    try:
        if kind == "omop":
            from medalloc_core.sources.omop import read_omop

            location, database, label = source.location, source.is_url, None
            # An SQLite file given by its path is named by it; anything there but a folder (an export)
            # is opened as one, so a FIFO or a device is refused as "not a regular file".
            if not database and Path(location).exists() and not Path(location).is_dir():
                location, database, label = f"sqlite:///{Path(location).resolve()}", True, source.location
            stays, problems, summary = read_omop(
                location,
                source.mapping.omop,
                database=database,
                label=label,
                timeout_s=source.mapping.engine.statement_timeout_s,
                lenient=node,
            )
        else:
            from medalloc_core.sources.fhir import read_fhir

            stays, problems, summary = read_fhir(
                Path(source.location), source.mapping.fhir, source.mapping.engine, lenient=node
            )
    except DataContractError as exc:
        return ValidationReport(source.display, list(exc.problems), {"file": source.display}), None
    except (ImportError, RuntimeError) as exc:  # an extra not installed: say which
        return ValidationReport(source.display, [Problem(source.display, str(exc))], {"file": source.display}), None
    summary["file"] = source.display
    if isinstance(summary.get("left_out"), int):  # the OMOP row reader counts its records in one number
        summary["left_out"] = {_OMOP_RECORDS: summary["left_out"]} if summary["left_out"] else {}
    daily = summary.pop("daily", None)
    report = ValidationReport(source.display, problems, summary)
    if stays is None or daily is None or (not report.ok and not node):  # a node's reader left flagged records out
        return report, None
    records = UnitRecords(frame=daily, frequency=Frequency.DAILY, source=source.display, shape="encounters")
    return report, SourceData(records, stays[list(STAY_COLUMNS)].reset_index(drop=True), report)


_OMOP_RECORDS = "of visit_occurrence or visit_detail"


def _node_contract(path: Path) -> tuple[ValidationReport, SourceData | None]:
    """A contract file read by the validator as a node reads it (``validation.load_node_records``)."""
    try:
        loaded = load_node_records(path)
    except DataContractError as exc:
        return ValidationReport(path, list(exc.problems), {"file": str(path)}), None
    stays = loaded.stays
    summary: dict[str, Any] = {"file": str(path), "shape": loaded.records.shape, "left_out": loaded.left_out}
    if stays is not None:
        summary.update(rows=len(stays) + sum(loaded.left_out.values()), encounters=len(stays))
        summary["open_stays"] = int(stays["discharge_time"].isna().sum())
    report = ValidationReport(path, [], summary)
    return report, SourceData(loaded.records, stays, report)


def _contract_stays(path: Path, records: UnitRecords) -> pd.DataFrame | None:
    """The typed stays of a contract encounter file (None for unit-record files)."""
    if records.shape != "encounters":
        return None
    from medalloc_core.io import read_table

    raw = read_table(path)
    raw.columns = [str(c).lower() for c in raw.columns]
    stays = raw[list(STAY_COLUMNS)].copy()
    for column in STAY_COLUMNS[:3]:
        stays[column] = stays[column].str.strip()
    for column in STAY_COLUMNS[3:]:
        stays[column] = pd.to_datetime(stays[column].str.strip(), format="ISO8601").astype("datetime64[ns]")
    return stays.reset_index(drop=True)
