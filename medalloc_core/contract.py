"""The hospital data contract: column names, record shapes and the problem type every check reports.

Everything that reads a hospital's files speaks these names, so validation, loading, the
generator and the forecaster agree on one vocabulary (see docs/data.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Literal

import pandas as pd

# --- daily (or weekly) unit records: one row per (date, unit) -------------------------
DATE = "date"
UNIT = "unit"
ADMISSIONS = "admissions"  # patients admitted to the unit during the period
DISCHARGES = "discharges"  # patients leaving the unit during the period (incl. deaths, transfers out)
CENSUS = "census"  # occupied beds at midnight closing the period
CAPACITY = "capacity"  # staffed beds available in the period
COUNT_COLUMNS: tuple[str, ...] = (ADMISSIONS, DISCHARGES, CENSUS, CAPACITY)
DAILY_REQUIRED: tuple[str, ...] = (DATE, UNIT)  # plus at least one of COUNT_COLUMNS

# --- encounter records: one row per patient stay in one unit --------------------------
ENCOUNTER_ID = "encounter_id"
PATIENT_ID = "patient_id"
ADMIT_TIME = "admit_time"
DISCHARGE_TIME = "discharge_time"  # empty = still admitted
ENCOUNTER_COLUMNS: tuple[str, ...] = (ENCOUNTER_ID, PATIENT_ID, UNIT, ADMIT_TIME, DISCHARGE_TIME)

RecordShape = Literal["daily", "encounters"]
Severity = Literal["error", "warning"]


class Frequency(StrEnum):
    """Sampling frequency of unit records; weekly means one row per ISO week (dated its Monday)."""

    DAILY = "daily"
    WEEKLY = "weekly"

    @property
    def period(self) -> pd.Timedelta:
        """Length of one period."""
        return pd.Timedelta(days=1 if self is Frequency.DAILY else 7)


@dataclass(frozen=True)
class Problem:
    """One finding about an input file, specific enough to fix by hand.

    ``row`` is the 1-based data row as a spreadsheet shows it (header = row 1, first
    record = row 2); ``None`` when the problem concerns the whole file or a column.
    Sources other than the contract's own files name their records in their own terms:
    ``row_label`` is ``"line"`` for an NDJSON line or ``"entry"`` for a Bundle entry,
    ``record`` says which record it is (``"Encounter/e17"``, ``"table visit_detail,
    visit_detail_id 3001"``) and ``column_label`` is ``"field"`` for a FHIR element path.
    """

    file: str
    message: str
    row: int | None = None
    column: str | None = None
    severity: Severity = "error"
    record: str | None = None
    row_label: str = "row"
    column_label: str = "column"

    def __str__(self) -> str:
        where = self.file
        if self.row is not None:
            where += f", {self.row_label} {self.row}"
        if self.record is not None:
            where += f", {self.record}"
        if self.column is not None:
            where += f", {self.column_label} '{self.column}'"
        return f"{self.severity}: {where}: {self.message}"


class DataContractError(ValueError):
    """Raised when a file breaks the data contract; carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        errors = [p for p in problems if p.severity == "error"]
        head = "\n".join(str(p) for p in errors[:20])
        more = f"\n... and {len(errors) - 20} more" if len(errors) > 20 else ""
        super().__init__(f"{len(errors)} data contract error(s):\n{head}{more}")


@dataclass(frozen=True)
class UnitRecords:
    """A hospital's validated unit-level series, ready for modelling.

    ``frame`` has columns ``date`` (datetime64, normalised to midnight; Mondays for weekly
    data), ``unit`` (str) and the count columns present in the source (int64), sorted by
    (unit, date), with unique (date, unit). Extra source columns are dropped here.
    """

    frame: pd.DataFrame
    frequency: Frequency
    source: Path | str  # the file, or a database URL (password hidden) / export folder for OMOP and FHIR sources
    shape: RecordShape

    @property
    def units(self) -> list[str]:
        return sorted(self.frame[UNIT].unique().tolist())

    @property
    def count_columns(self) -> list[str]:
        return [c for c in COUNT_COLUMNS if c in self.frame.columns]
