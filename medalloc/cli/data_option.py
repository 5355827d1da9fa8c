"""``--data`` / ``--capacity-from``: a contract file or any source a node reads (OMOP, FHIR, an encounter file).

``forecast``, ``allocate``, ``share`` and ``explain`` read a hospital's records the way its
node does: :func:`medalloc_core.sources.load_source` with the site's mapping (``--mapping``,
or the node config's ``data-mapping``), so an OMOP database, a FHIR export or a
hospital-scale encounter file is used where it lives, with no intermediate CSV to keep in
step with it. A contract file goes through the same reader: the contract's validator, or the
scan engine for an encounter file past ``ENGINE_MIN_BYTES``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medalloc_core.contract import DataContractError, Problem, UnitRecords
from medalloc_core.sources import DataSource, MappingError, load_source

DATA_HELP = (
    "This hospital's records: a daily/weekly unit-records or encounter file (CSV/Parquet), an OMOP CDM "
    "(sqlite:///FILE, postgresql://USER@HOST/DB, an SQLite file or export folder) or a FHIR export "
    "(Bulk Data folder, NDJSON or Bundle file), read as the node reads it."
)
MAPPING_HELP = "Site mapping file (TOML, docs/data.md) for an OMOP or FHIR --data: which visits are stays, which units."


@dataclass(frozen=True)
class ReadSource:
    """What a command read: the source (its display name hides a database password) and its records."""

    source: DataSource
    records: UnitRecords

    @property
    def name(self) -> str:
        """The default hospital name: a file's stem, a folder's or a database's name."""
        return self.source.name


def read_records(location: str, mapping: Path | None = None) -> ReadSource:
    """A source's validated unit records, through the node's reader (``load_source``) and the site mapping.

    Raises
    ------
    DataContractError
        For data that breaks its rules, a source that cannot be opened (no such file, a
        database that does not answer) or a bad mapping file; each problem names the file or
        database, the row or record and the field.
    """
    if not location.strip():
        raise DataContractError([Problem("--data", "is empty; expected a file, folder or database URL")])
    try:
        source = DataSource.of(location, mapping=mapping)
    except MappingError as exc:
        raise DataContractError([Problem(str(mapping), str(exc))]) from None
    if not source.is_url and not Path(location).exists():
        raise DataContractError([Problem(location, "no such file or folder")])
    return ReadSource(source, load_source(source).records)


def one_line(location: str, exc: DataContractError) -> str:
    """A bad source as one line when it has one error (a server that does not answer), else the report's head."""
    errors = [p for p in exc.problems if p.severity == "error"]
    shown = DataSource(location).display
    if len(errors) == 1:  # "error: FILE, row N, column 'c': message" names the source itself
        return str(errors[0]).removeprefix("error: ")
    return f"{shown} does not meet the data contract (run `medalloc validate {shown}` for the full report):\n{exc}"


def is_path_input(location: str) -> Path | None:
    """The source as a path (to refuse an output over it), or None for a database URL."""
    return None if DataSource(location).is_url else Path(location)
