"""Check a hospital file against the data contract and load it as typed, sorted unit records."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medalloc_core.contract import (
    ADMISSIONS,
    ADMIT_TIME,
    CAPACITY,
    CENSUS,
    COUNT_COLUMNS,
    DATE,
    DISCHARGE_TIME,
    DISCHARGES,
    ENCOUNTER_COLUMNS,
    ENCOUNTER_ID,
    PATIENT_ID,
    UNIT,
    DataContractError,
    Frequency,
    Problem,
    RecordShape,
    Severity,
    UnitRecords,
)
from medalloc_core.encounters import DATE_DTYPE, encounters_to_daily
from medalloc_core.io import read_table

logger = logging.getLogger(__name__)

# A record's spreadsheet row: the header is row 1, the first record (index 0) row 2.
ROW_OFFSET = 2
# Detailed findings per check; the rest are counted in one line, so a million broken rows
# neither flood the terminal nor fill memory.
PROBLEMS_PER_CHECK = 50
# Upper bound for any count in one unit and period: larger values are unit or export
# mistakes (and would overflow the int64 the models use long before they are real).
MAX_COUNT = 100_000
# census(t) = census(t-1) + admissions(t) - discharges(t) holds exactly for clean data;
# allow a couple of beds or 5% for how hospitals book transfers and same-day stays.
CENSUS_TOLERANCE_BEDS = 2
CENSUS_TOLERANCE_FRACTION = 0.05

_DATE_PATTERN = r"\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?"
# Dates are held as datetime64[ns], which spans 1677-09-21 .. 2262-04-11; whole years inside
# that, so a weekly date moved back to its Monday still fits.
FIRST_DATE = pd.Timestamp("1678-01-01")
LAST_DATE = pd.Timestamp("2261-12-31 23:59:59")
_DATE_EXPECTED = "expected an ISO date YYYY-MM-DD (optionally with a time HH:MM[:SS], no UTC offset)"
_COUNT_EXPECTED = f"expected a whole number from 0 to {MAX_COUNT:,}"


@dataclass(frozen=True)
class ValidationReport:
    """What validating one file found.

    ``problems`` lists errors and warnings in the order found; ``summary`` holds what a
    person checks at a glance: ``file``, ``format`` (csv/parquet, from the bytes), ``shape``, ``frequency``, ``units``,
    ``date_start``, ``date_end``, ``rows``, ``gaps`` (missing periods inside the units'
    ranges) and, for encounter files, ``encounters`` and ``open_stays``.
    """

    path: Path | str  # a file, or a database URL (password hidden) / export folder for OMOP and FHIR sources
    problems: list[Problem] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        """True when the file has no errors (warnings allowed)."""
        return not self.errors


def validate_file(path: Path) -> ValidationReport:
    """Check a file against the data contract without modifying it.

    Never raises for bad input: every problem, down to the row and column, is in the
    report. See docs/data.md for the rules.

    Parameters
    ----------
    path
        A daily/weekly unit-records file or an encounter file, CSV or Parquet.

    Returns
    -------
    ValidationReport
        ``ok`` is False when any error was found.
    """
    report, _ = _inspect(Path(path))
    return report


def inspect_file(path: Path) -> tuple[ValidationReport, UnitRecords | None]:
    """Validate and, when valid, type a file in one pass: ``(report, records or None)``; never raises for bad input."""
    return _inspect(Path(path))


def load_unit_records(path: Path) -> UnitRecords:
    """Read, validate and type a hospital's file; encounter files are derived to daily records.

    Parameters
    ----------
    path
        A daily/weekly unit-records file or an encounter file, CSV or Parquet.

    Returns
    -------
    UnitRecords
        Sorted by (unit, date), unique (date, unit), counts as int64, dates at midnight
        (Mondays for weekly data); extra columns dropped.

    Raises
    ------
    DataContractError
        Carrying every problem when the file has at least one error. Warnings (gaps,
        census inconsistencies) are logged and do not stop loading.
    """
    report, records = _inspect(Path(path))
    for problem in report.warnings:
        logger.warning("%s", problem)
    if records is None:
        raise DataContractError(report.problems)
    return records


@dataclass(frozen=True)
class NodeRecords:
    """What a node counts from a contract file: its records, its stays (None for daily counts), what it left out.

    ``left_out`` counts the stays dropped before counting, by reason (counts only: what a node may log).
    """

    records: UnitRecords
    stays: pd.DataFrame | None
    left_out: dict[str, int]


def load_node_records(path: Path) -> NodeRecords:
    """A contract file as a node counts it: a malformed stay is left out, never a reason to refuse (issue 20).

    ``medalloc validate`` stays strict and names every problem (file, row, column); a node must not:
    whether it answers or refuses would then be a function of one stay (an adjacent file without
    that stay answers normally). So for an encounter file each stay that breaks a per-record rule
    (no ``patient_id``, no unit, an empty or invalid ``admit_time``, an invalid ``discharge_time``,
    a discharge before its admission) is dropped before counting and counted by reason; the
    ``encounter_id`` is not used for counting, so an empty or repeated one drops nothing. What is
    refused is structural, not a function of one stay: a file that cannot be read, missing
    columns, a header without records; and a file of daily counts with any error (a count row is
    an aggregate of the unit's day, which one stay cannot make malformed). The reasons are
    :data:`LEFT_OUT_REASONS`; the caller logs the counts (:func:`log_left_out`).

    Raises
    ------
    DataContractError
        With the structural problems (or every problem of a daily-count file).
    """
    findings = _Findings(str(path))
    # A header without stays is zero stays, not a refusal: with one stay or none the node answers alike.
    frame = _canonical_columns(read_table(path, allow_empty=True))
    if detect_shape(list(frame.columns)) != "encounters":
        report, records = _inspect(path)
        for problem in report.warnings:
            logger.warning("%s", problem)
        if records is None:
            raise DataContractError(report.problems)
        return NodeRecords(records, None, {})
    if _missing_columns(frame, ENCOUNTER_COLUMNS, findings, "an encounter file needs " + ", ".join(ENCOUNTER_COLUMNS)):
        raise DataContractError(findings.problems)
    patient_id = _text(frame, PATIENT_ID)
    units = _text(frame, UNIT)
    admit = _parse_dates(frame, ADMIT_TIME, findings, required=True)
    discharge = _parse_dates(frame, DISCHARGE_TIME, findings, required=False)
    bad_discharge = _text(frame, DISCHARGE_TIME).notna() & discharge.isna()
    masks = {
        NO_PATIENT: patient_id.isna(),
        NO_UNIT: units.isna(),
        BAD_ADMIT: admit.isna(),
        BAD_DISCHARGE: bad_discharge,
        BACKWARDS: (discharge < admit).fillna(False),
    }
    bad = pd.Series(False, index=frame.index)
    left_out: dict[str, int] = {}
    for reason in LEFT_OUT_REASONS:
        mask = masks[reason].astype(bool) & ~bad  # each stay counted once, under its first reason
        if mask.any():
            left_out[reason] = int(mask.sum())
        bad |= mask
    kept = ~bad
    stays = pd.DataFrame(
        {
            ENCOUNTER_ID: _text(frame, ENCOUNTER_ID)[kept],
            PATIENT_ID: patient_id[kept],
            UNIT: units[kept],
            ADMIT_TIME: admit[kept],
            DISCHARGE_TIME: discharge[kept],
        }
    ).reset_index(drop=True)
    daily = encounters_to_daily(stays) if len(stays) else _empty_daily()
    records = UnitRecords(frame=daily, frequency=Frequency.DAILY, source=path, shape="encounters")
    return NodeRecords(records, stays, left_out)


# Why a node leaves a stay of an encounter file out before counting (issue 20), in the order a stay is counted
# under the first that applies. The validator's reading (load_node_records) and the engine's
# (sources.encounter_scan, lenient) count by these names, so a node's log reads alike whatever its file's size.
NO_PATIENT = "without patient_id"
NO_UNIT = "without unit"
BAD_ADMIT = "with an empty or invalid admit_time"
BAD_DISCHARGE = "with an invalid discharge_time"
BACKWARDS = "discharged before admission"
LEFT_OUT_REASONS: tuple[str, ...] = (NO_PATIENT, NO_UNIT, BAD_ADMIT, BAD_DISCHARGE, BACKWARDS)


def log_left_out(where: str | Path, left_out: dict[str, int], *, named_by: str = "row and column") -> None:
    """The node's own log line for what its reading left out: how many, by reason, never which (issue 20).

    Every lenient reader (contract files, the engine's encounter and FHIR scans, OMOP) logs through
    here; ``medalloc validate`` names each record (``named_by``: how it names them).
    """
    if not left_out:
        return
    logger.warning(
        "%s: %d malformed record(s) left out before counting (%s); `medalloc validate %s` names each by %s",
        where,
        sum(left_out.values()),
        ", ".join(f"{n} {reason}" for reason, n in left_out.items()),
        where,
        named_by,
    )


def _empty_daily() -> pd.DataFrame:
    return pd.DataFrame(
        {
            DATE: pd.Series(dtype=DATE_DTYPE),
            UNIT: pd.Series(dtype=object),
            ADMISSIONS: pd.Series(dtype="int64"),
            DISCHARGES: pd.Series(dtype="int64"),
            CENSUS: pd.Series(dtype="int64"),
        }
    )


def detect_shape(columns: list[str]) -> RecordShape:
    """Which of the two record shapes a header describes.

    A file is an encounter file when it has ``admit_time``, or when it has another
    encounter-only column (``discharge_time``, ``encounter_id``, ``patient_id``) and no
    count column; otherwise it is read as unit records.
    """
    present = set(columns)
    if ADMIT_TIME in present:
        return "encounters"
    encounter_only = {ENCOUNTER_ID, PATIENT_ID, DISCHARGE_TIME}
    if present & encounter_only and not present & set(COUNT_COLUMNS):
        return "encounters"
    return "daily"


# ---------------------------------------------------------------------------- internals


class _Findings:
    """Problems about one file, with the per-check cap applied."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []

    def add(
        self, message: str, *, row: int | None = None, column: str | None = None, severity: Severity = "error"
    ) -> None:
        self.problems.append(Problem(self.file, message, row=row, column=column, severity=severity))

    def rows(
        self,
        mask: pd.Series,
        column: str | None,
        describe: Callable[[Any], str],
        *,
        severity: Severity = "error",
    ) -> None:
        """One problem per flagged record (capped), ``describe(index_label)`` saying what is wrong."""
        flagged = mask.index[mask.to_numpy(dtype=bool)]
        for label in flagged[:PROBLEMS_PER_CHECK]:
            self.add(describe(label), row=int(label) + ROW_OFFSET, column=column, severity=severity)
        if len(flagged) > PROBLEMS_PER_CHECK:
            self.add(
                f"... and {len(flagged) - PROBLEMS_PER_CHECK:,} more row(s) with the same problem (not listed)",
                column=column,
                severity=severity,
            )

    @property
    def has_errors(self) -> bool:
        return any(p.severity == "error" for p in self.problems)


def _inspect(path: Path) -> tuple[ValidationReport, UnitRecords | None]:
    name = str(path)
    findings = _Findings(name)
    summary: dict[str, Any] = {"file": name}
    try:
        raw = read_table(path)
    except DataContractError as exc:
        return ValidationReport(path, list(exc.problems), summary), None
    frame = _canonical_columns(raw)
    shape = detect_shape(list(frame.columns))
    summary.update(format=raw.attrs.get("format"), shape=shape, rows=len(frame))
    if shape == "encounters":
        daily = _check_encounters(frame, findings, summary)
    else:
        daily = _check_unit_records(frame, findings, summary)
    if daily is None or findings.has_errors:
        return ValidationReport(path, findings.problems, summary), None
    frequency = Frequency(summary["frequency"])
    records = UnitRecords(frame=daily, frequency=frequency, source=path, shape=shape)
    return ValidationReport(path, findings.problems, summary), records


def _canonical_columns(raw: pd.DataFrame) -> pd.DataFrame:
    """Match contract column names case-insensitively (``Date`` -> ``date``); others untouched."""
    known = {c for c in (*COUNT_COLUMNS, DATE, *ENCOUNTER_COLUMNS)}
    taken = set(raw.columns)
    rename = {}
    for column in raw.columns:
        lowered = column.lower()
        if lowered in known and lowered != column and lowered not in taken:
            rename[column] = lowered
            taken.add(lowered)
    return raw.rename(columns=rename) if rename else raw


def _missing_columns(frame: pd.DataFrame, required: tuple[str, ...], findings: _Findings, what: str) -> bool:
    found = list(frame.columns)
    missing = [c for c in required if c not in found]
    for column in missing:
        findings.add(f"missing required column '{column}'; {what} (found: {', '.join(found)})", row=1, column=column)
    if missing and len(found) == 1:
        for separator, label in ((";", "semicolons"), ("\t", "tabs")):
            if separator in found[0]:
                findings.add(
                    f"the header looks separated by {label}; expected commas (export as comma-separated CSV)", row=1
                )
    return bool(missing)


def _text(frame: pd.DataFrame, column: str) -> pd.Series:
    """Stripped text with empty strings as missing."""
    values = frame[column].str.strip()
    return values.mask(values == "")


def _show(value: Any) -> str:
    text = str(value)
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _parse_dates(frame: pd.DataFrame, column: str, findings: _Findings, *, required: bool) -> pd.Series:
    """ISO dates/date-times as datetime64 (NaT where empty or invalid, each invalid one reported)."""
    text = _text(frame, column)
    empty = text.isna()
    well_formed = text.str.fullmatch(_DATE_PATTERN).fillna(False).astype(bool)
    parsed = pd.to_datetime(text.where(well_formed), format="ISO8601", errors="coerce")
    # A typo like 9999-12-31 parses (pandas picks a coarser unit) but cannot be held in nanoseconds.
    out_of_range = parsed.notna() & ~parsed.between(FIRST_DATE, LAST_DATE)
    parsed = parsed.mask(out_of_range)
    if required:
        findings.rows(empty, column, lambda i: f"empty {column}; {_DATE_EXPECTED}")
    findings.rows(
        out_of_range,
        column,
        lambda i: (
            f"{_show(text[i])} is outside the dates MedAlloc can handle "
            f"({FIRST_DATE:%Y-%m-%d} .. {LAST_DATE:%Y-%m-%d}); {_DATE_EXPECTED}"
        ),
    )
    findings.rows(
        ~empty & ~out_of_range & parsed.isna(),
        column,
        lambda i: f"{_show(text[i])} is not a valid date; {_DATE_EXPECTED}",
    )
    return parsed.astype(DATE_DTYPE)


def _parse_counts(frame: pd.DataFrame, column: str, findings: _Findings) -> pd.Series:
    """Counts as float64 (NaN where invalid, each invalid one reported as error)."""
    text = _text(frame, column)
    number = pd.to_numeric(text, errors="coerce").astype("float64")
    empty = text.isna()
    not_number = ~empty & number.isna()
    negative = number < 0
    huge = ~negative & (~np.isfinite(number.fillna(0.0)) | (number > MAX_COUNT))
    fractional = ~huge & ~negative & number.notna() & (number != np.round(number))
    findings.rows(
        empty, column, lambda i: f"empty {column}; {_COUNT_EXPECTED} (leave the whole column out if it is not recorded)"
    )
    findings.rows(not_number, column, lambda i: f"{_show(text[i])} is not a number; {_COUNT_EXPECTED}")
    findings.rows(
        huge, column, lambda i: f"{_show(text[i])} is implausibly large; {_COUNT_EXPECTED} per unit and period"
    )
    findings.rows(negative, column, lambda i: f"{_show(text[i])} is negative; {_COUNT_EXPECTED}")
    findings.rows(fractional, column, lambda i: f"{_show(text[i])} is not a whole number; {_COUNT_EXPECTED}")
    return number.where(~(empty | not_number | huge | negative | fractional))


def _check_units(frame: pd.DataFrame, findings: _Findings) -> pd.Series:
    unit = _text(frame, UNIT)
    findings.rows(unit.isna(), UNIT, lambda i: "empty unit; expected the unit's name or code (e.g. ICU, WARD-3)")
    return unit


def _report_duplicates(
    keys: pd.DataFrame, findings: _Findings, column: str, describe: Callable[[Any, Any], str]
) -> None:
    """Flag every repeat of a key after its first row, naming that first row."""
    repeated = keys.duplicated(keep="first")
    if not repeated.any():
        return
    first_row = keys.reset_index().groupby(list(keys.columns), sort=False)["index"].transform("min")
    first_row.index = keys.index
    findings.rows(repeated, column, lambda i: describe(i, int(first_row[i]) + ROW_OFFSET))


def _check_unit_records(frame: pd.DataFrame, findings: _Findings, summary: dict[str, Any]) -> pd.DataFrame | None:
    what = f"a unit-records file needs {DATE}, {UNIT} and at least one of {', '.join(COUNT_COLUMNS)}"
    missing = _missing_columns(frame, (DATE, UNIT), findings, what)
    counts = [c for c in COUNT_COLUMNS if c in frame.columns]
    if not counts:
        findings.add(f"no count column; {what}", row=1)
        return None
    if missing:
        return None
    summary["columns_ignored"] = [c for c in frame.columns if c not in (DATE, UNIT, *counts)]

    dates = _parse_dates(frame, DATE, findings, required=True)
    units = _check_units(frame, findings)
    typed = pd.DataFrame({DATE: dates.dt.normalize(), UNIT: units}, index=frame.index)
    for column in counts:
        typed[column] = _parse_counts(frame, column, findings)
    keyed = typed.loc[typed[DATE].notna() & typed[UNIT].notna()]
    _report_duplicates(
        keyed[[DATE, UNIT]],
        findings,
        DATE,
        lambda i, first: (
            f"duplicate (date, unit) = ({keyed.at[i, DATE]:%Y-%m-%d}, {keyed.at[i, UNIT]}), "
            f"first at row {first}; expected one row per date and unit"
        ),
    )
    keyed = keyed.loc[~keyed[[DATE, UNIT]].duplicated(keep="first")]
    frequency = _infer_frequency(keyed, findings)
    summary["frequency"] = frequency.value
    if frequency is Frequency.WEEKLY:
        # All of a weekly unit's dates are whole weeks apart, so they stay distinct on Mondays.
        keyed = keyed.assign(**{DATE: keyed[DATE] - pd.to_timedelta(keyed[DATE].dt.day_of_week, unit="D")})
    _summarise_range(keyed, summary)
    if findings.has_errors:
        return None

    records = keyed.astype({c: "int64" for c in counts}).sort_values([UNIT, DATE])
    _warn_gaps(records, frequency, findings, summary)
    _warn_census(records, frequency, findings)
    return records.reset_index(drop=True)[[DATE, UNIT, *counts]]


def _infer_frequency(keyed: pd.DataFrame, findings: _Findings) -> Frequency:
    """Daily or weekly from the spacing of each unit's dates; mixing them is an error.

    A unit is weekly when all its consecutive dates are a multiple of 7 days apart. A unit
    with 1-day steps is daily, and a daily unit with two 7-day steps in a row (three dates
    a week apart) mixes frequencies; a single longer step is a gap, not a change.
    """
    if keyed.empty:
        return Frequency.DAILY
    ordered = keyed.sort_values([UNIT, DATE])
    step = ordered.groupby(UNIT)[DATE].diff().dt.days
    by_unit = step.groupby(ordered[UNIT])
    has_steps = by_unit.count() > 0
    weekly_units = by_unit.apply(lambda s: bool(s.dropna().mod(7).eq(0).all())) & has_steps
    daily_units = has_steps & ~weekly_units

    week_step = step.eq(7)
    week_run = week_step & week_step.groupby(ordered[UNIT]).shift(1, fill_value=False)
    has_day_steps = by_unit.apply(lambda s: bool(s.eq(1).any()))
    mixed_rows = week_run & ordered[UNIT].map(daily_units & has_day_steps).astype(bool)
    for unit in ordered.loc[mixed_rows, UNIT].unique()[:PROBLEMS_PER_CHECK]:
        label = mixed_rows[mixed_rows & ordered[UNIT].eq(unit)].index[0]
        findings.add(
            f"unit {unit} mixes daily and weekly rows: its dates are 1 day apart elsewhere but 7 days apart "
            f"around {ordered.at[label, DATE]:%Y-%m-%d}; expected one frequency (daily or weekly) per file",
            row=int(label) + ROW_OFFSET,
            column=DATE,
        )
    if weekly_units.any() and daily_units.any():
        minority = weekly_units if weekly_units.sum() <= daily_units.sum() else daily_units
        kind, other = ("weekly", "daily") if minority is weekly_units else ("daily", "weekly")
        for unit in minority[minority].index[:PROBLEMS_PER_CHECK]:
            label = ordered.index[ordered[UNIT].eq(unit).to_numpy()][1]
            findings.add(
                f"unit {unit} is {kind} while other units are {other}; "
                "expected one frequency (daily or weekly) per file",
                row=int(label) + ROW_OFFSET,
                column=DATE,
            )
        return Frequency.DAILY
    return Frequency.WEEKLY if weekly_units.any() else Frequency.DAILY


def _summarise_range(keyed: pd.DataFrame, summary: dict[str, Any]) -> None:
    summary["units"] = sorted(keyed[UNIT].unique().tolist())
    if len(keyed):
        summary["date_start"] = f"{keyed[DATE].min():%Y-%m-%d}"
        summary["date_end"] = f"{keyed[DATE].max():%Y-%m-%d}"


def _warn_gaps(records: pd.DataFrame, frequency: Frequency, findings: _Findings, summary: dict[str, Any]) -> None:
    """Missing periods inside a unit's date range are a warning: the forecaster treats them as missing."""
    period = frequency.period
    step = records.groupby(UNIT)[DATE].diff()
    missing = (step / period - 1).fillna(0).astype("int64")
    summary["gaps"] = int(missing.sum())
    noun = "day" if frequency is Frequency.DAILY else "week"
    for unit, per_unit in missing.groupby(records[UNIT]):
        if per_unit.sum() == 0:
            continue
        label = per_unit.index[per_unit.to_numpy() > 0][0]
        first_missing = records.at[label, DATE] - step[label] + period
        findings.add(
            f"unit {unit} has {int(per_unit.sum())} missing {noun}(s) inside its date range, the first "
            f"{first_missing:%Y-%m-%d} (just before this row); they are treated as missing, add them if you have them",
            row=int(label) + ROW_OFFSET,
            column=DATE,
            severity="warning",
        )


def _warn_census(records: pd.DataFrame, frequency: Frequency, findings: _Findings) -> None:
    """Census that drifts from previous census + admissions - discharges, or exceeds capacity, is a warning."""
    columns = set(records.columns)
    if {CENSUS, ADMISSIONS, DISCHARGES} <= columns:
        by_unit = records.groupby(UNIT)
        previous = by_unit[CENSUS].shift(1)
        consecutive = by_unit[DATE].diff().eq(frequency.period)
        expected = previous + records[ADMISSIONS] - records[DISCHARGES]
        tolerance = np.maximum(CENSUS_TOLERANCE_BEDS, CENSUS_TOLERANCE_FRACTION * previous)
        off = consecutive & (records[CENSUS] - expected).abs().gt(tolerance)
        for unit, flagged in off.groupby(records[UNIT]):
            if not flagged.any():
                continue
            label = flagged.index[flagged.to_numpy()][0]
            findings.add(
                f"unit {unit}: census disagrees with previous census + admissions - discharges on "
                f"{int(flagged.sum())} row(s); first here: expected {int(expected[label])} "
                f"(± {float(tolerance[label]):.0f}), found {int(records.at[label, CENSUS])}",
                row=int(label) + ROW_OFFSET,
                column=CENSUS,
                severity="warning",
            )
    if {CENSUS, CAPACITY} <= columns:
        over = records[CENSUS] > records[CAPACITY]
        for unit, flagged in over.groupby(records[UNIT]):
            if not flagged.any():
                continue
            label = flagged.index[flagged.to_numpy()][0]
            findings.add(
                f"unit {unit}: census exceeds capacity on {int(flagged.sum())} row(s); first here: census "
                f"{int(records.at[label, CENSUS])} > capacity {int(records.at[label, CAPACITY])} "
                "(check that overflow beds are counted in capacity)",
                row=int(label) + ROW_OFFSET,
                column=CENSUS,
                severity="warning",
            )


def _check_encounters(frame: pd.DataFrame, findings: _Findings, summary: dict[str, Any]) -> pd.DataFrame | None:
    what = f"an encounter file needs {', '.join(ENCOUNTER_COLUMNS)} ({DISCHARGE_TIME} may be empty for open stays)"
    if _missing_columns(frame, ENCOUNTER_COLUMNS, findings, what):
        return None
    summary["columns_ignored"] = [c for c in frame.columns if c not in ENCOUNTER_COLUMNS]
    encounter_id = _text(frame, ENCOUNTER_ID)
    patient_id = _text(frame, PATIENT_ID)
    findings.rows(
        encounter_id.isna(), ENCOUNTER_ID, lambda i: "empty encounter_id; expected an identifier unique to the stay"
    )
    findings.rows(
        patient_id.isna(), PATIENT_ID, lambda i: "empty patient_id; expected the (pseudonymised) patient identifier"
    )
    units = _check_units(frame, findings)
    admit = _parse_dates(frame, ADMIT_TIME, findings, required=True)
    discharge = _parse_dates(frame, DISCHARGE_TIME, findings, required=False)
    backwards = discharge < admit
    findings.rows(
        backwards,
        DISCHARGE_TIME,
        lambda i: (
            f"discharge {discharge[i]:%Y-%m-%d %H:%M} is before admission {admit[i]:%Y-%m-%d %H:%M}; "
            "expected discharge at or after admit_time"
        ),
    )
    with_id = encounter_id.dropna()
    _report_duplicates(
        with_id.to_frame(),
        findings,
        ENCOUNTER_ID,
        lambda i, first: f"duplicate encounter_id {_show(with_id[i])}, first at row {first}; expected one row per stay",
    )
    summary["encounters"] = len(frame)
    summary["open_stays"] = int(_text(frame, DISCHARGE_TIME).isna().sum())
    if findings.has_errors:
        return None

    stays = pd.DataFrame({PATIENT_ID: patient_id, UNIT: units, ADMIT_TIME: admit, DISCHARGE_TIME: discharge})
    _warn_overlapping_stays(stays, findings)
    daily = encounters_to_daily(stays)
    summary.update(frequency=Frequency.DAILY.value, gaps=0, daily_rows=len(daily))
    _summarise_range(daily, summary)
    return daily


def _warn_overlapping_stays(stays: pd.DataFrame, findings: _Findings) -> None:
    """A patient in two units at once usually means a transfer booked without closing the first stay."""
    ordered = stays.sort_values([PATIENT_ID, ADMIT_TIME])
    previous_discharge = ordered.groupby(PATIENT_ID)[DISCHARGE_TIME].shift(1)
    has_previous = ordered[PATIENT_ID].eq(ordered[PATIENT_ID].shift(1))
    overlap = has_previous & (previous_discharge.isna() | (previous_discharge > ordered[ADMIT_TIME]))
    if not overlap.any():
        return
    label = overlap.index[overlap.to_numpy()][0]
    findings.add(
        f"{int(overlap.sum())} stay(s) start while the same patient's previous stay is still open; first here "
        f"(patient {_show(ordered.at[label, PATIENT_ID])}); "
        "both are counted in the census until the first is discharged",
        row=int(label) + ROW_OFFSET,
        column=ADMIT_TIME,
        severity="warning",
    )


# ---------------------------------------------------------------------------- shared with other contracts
# The equipment contract's validator (medalloc_core.equipment.validation) reports problems the
# same way, with the same row numbers, caps, date rule and messages: these are its names for them.
Findings = _Findings
DATE_PATTERN = _DATE_PATTERN
DATE_EXPECTED = _DATE_EXPECTED
text_values = _text
show_value = _show
parse_dates = _parse_dates
missing_columns = _missing_columns
report_duplicates = _report_duplicates
