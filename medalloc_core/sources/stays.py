"""What OMOP and FHIR readers share: typed stays that remember their source record, and problems that name it.

A reader turns its records into one row per stay in one unit (the encounter contract's
columns, typed) plus where each row came from: ``_file`` (the file, or the database URL
with any password hidden), ``_row`` (spreadsheet row, NDJSON line or Bundle entry; None for
database rows), ``_record`` (the record's own id, e.g. ``table visit_detail,
visit_detail_id 3001`` or ``Encounter/e17``). Every problem about a stay names that origin
and the source's own field (``visit_detail_end_datetime``, ``location[1].period.end``), so a
data engineer fixes the record in the system it came from.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from medalloc_core.contract import (
    ADMIT_TIME,
    DISCHARGE_TIME,
    ENCOUNTER_ID,
    PATIENT_ID,
    UNIT,
    Frequency,
    Problem,
    Severity,
)
from medalloc_core.encounters import DATE_DTYPE, encounters_to_daily

# Same caps and bounds as the contract's own files (medalloc_core.validation).
PROBLEMS_PER_CHECK = 50
FIRST_DATE = pd.Timestamp("1678-01-01")
LAST_DATE = pd.Timestamp("2261-12-31 23:59:59")
_ISO = re.compile(r"\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-](?:0\d|1[0-4])(?::?[0-5]\d)?)?)?")
_OFFSET = re.compile(r"(?:Z|[+-](?:0\d|1[0-4])(?::?[0-5]\d)?)$")
_TIMED_OFFSET = re.compile(r"[ T]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-](?:0\d|1[0-4])(?::?[0-5]\d)?)$")
TIME_EXPECTED = (
    "expected an ISO date YYYY-MM-DD or date-time YYYY-MM-DD HH:MM[:SS] "
    "(T instead of the space, and Z or a UTC offset such as +01:00, allowed)"
)

ORIGIN_COLUMNS: tuple[str, ...] = ("_file", "_row", "_record")
STAY_COLUMNS: tuple[str, ...] = (ENCOUNTER_ID, PATIENT_ID, UNIT, ADMIT_TIME, DISCHARGE_TIME)


@dataclass
class Findings:
    """Problems about one source, capped per check so a million broken records cannot flood anyone."""

    file: str
    row_label: str = "row"
    column_label: str = "column"
    problems: list[Problem] = field(default_factory=list)

    def add(
        self,
        message: str,
        *,
        file: str | None = None,
        row: int | None = None,
        record: str | None = None,
        column: str | None = None,
        severity: Severity = "error",
    ) -> None:
        self.problems.append(
            Problem(
                file or self.file,
                message,
                row=row,
                column=column,
                severity=severity,
                record=record,
                row_label=self.row_label,
                column_label=self.column_label,
            )
        )

    def records(
        self,
        frame: pd.DataFrame,
        mask: pd.Series | np.ndarray,
        column: str | Callable[[Any], str] | None,
        describe: Callable[[Any], str],
        *,
        severity: Severity = "error",
    ) -> None:
        """One problem per flagged record of ``frame`` (which has the origin columns), capped.

        ``column`` is the source field, or a function of the record's index label giving it
        (a stay from ``visit_detail`` and one from ``visit_occurrence`` name different fields).
        """
        flagged = frame.index[np.asarray(mask, dtype=bool)]
        for label in flagged[:PROBLEMS_PER_CHECK]:
            self.add(
                describe(label),
                file=str(frame.at[label, "_file"]),
                row=_int_or_none(frame.at[label, "_row"]),
                record=_str_or_none(frame.at[label, "_record"]),
                column=column(label) if callable(column) else column,
                severity=severity,
            )
        if len(flagged) > PROBLEMS_PER_CHECK:
            first = flagged[0]
            self.add(
                f"... and {len(flagged) - PROBLEMS_PER_CHECK:,} more record(s) with the same problem (not listed)",
                file=str(frame.at[first, "_file"]),
                column=column(first) if callable(column) else column,
                severity=severity,
            )

    @property
    def has_errors(self) -> bool:
        return any(p.severity == "error" for p in self.problems)


@dataclass
class NodeFindings(Findings):
    """A node's reading (issue 20): a per-record error leaves its record out, only a structural one stops.

    Problems found record by record (:meth:`Findings.records`) are still listed, for the node's own
    log to count; :attr:`has_errors` counts the others only (a missing table or column, a source
    that cannot be read), so a reader goes on without the records it flagged. The reader drops
    them itself (``omop._Reader`` in ``lenient`` mode).
    """

    per_record: set[int] = field(default_factory=set)

    def records(
        self,
        frame: pd.DataFrame,
        mask: pd.Series | np.ndarray,
        column: str | Callable[[Any], str] | None,
        describe: Callable[[Any], str],
        *,
        severity: Severity = "error",
    ) -> None:
        before = len(self.problems)
        super().records(frame, mask, column, describe, severity=severity)
        self.per_record.update(id(p) for p in self.problems[before:])

    @property
    def has_errors(self) -> bool:
        return any(p.severity == "error" and id(p) not in self.per_record for p in self.problems)


def show(value: Any) -> str:
    """A value quoted for a message, cut at 40 characters (it may come from a hostile file)."""
    text = str(value)
    return repr(text if len(text) <= 40 else text[:37] + "...")


def parse_times(values: pd.Series, zone: str = "") -> tuple[pd.Series, pd.Series]:
    """Database or text date/date-time values as naive local ``datetime64[ns]``, and a mask of invalid ones.

    Accepts ``datetime``/``date`` objects (from a database driver) and ISO 8601 text (from
    exported files and SQLite) as real exports write it: a space or ``T`` between date and
    time, optional fractional seconds, and optionally ``Z`` or a UTC offset (``+01:00``,
    ``-0500``). A time that carries an offset (text, or a driver's aware ``datetime``) is
    converted to ``zone`` (the site's IANA time zone) before its wall clock is kept, so a
    stay is counted on the hospital's local calendar day; with no ``zone`` the offset is
    dropped and the wall clock kept as written (as the FHIR reader does). Missing values are
    NaT and not invalid. Values outside 1678-01-01 .. 2261-12-31 (what nanosecond timestamps
    hold) are invalid.
    """
    out = pd.Series(pd.NaT, index=values.index, dtype=DATE_DTYPE)
    invalid = pd.Series(False, index=values.index)
    if values.empty:
        return out, invalid
    present = values.notna()
    kinds = values[present].map(type)
    objects = kinds.map(lambda k: issubclass(k, dt.date)).astype(bool)
    texts = kinds.map(lambda k: issubclass(k, str)).astype(bool)
    invalid.loc[objects.index[~(objects | texts)]] = True
    held = values[present][objects]
    if len(held):
        # A driver's timestamps: aware ones converted to the site's zone, naive ones (OMOP's usual) kept.
        naive = [_local(v, zone) if isinstance(v, dt.datetime) else v for v in held]
        stamps = pd.to_datetime(pd.Series(naive, index=held.index, dtype=object), errors="coerce")
        fits = stamps.notna() & stamps.between(FIRST_DATE, LAST_DATE)
        out.loc[fits.index[fits]] = stamps[fits].astype(DATE_DTYPE)
        invalid.loc[fits.index[~fits]] = True
    text = values[present][texts].astype(str).str.strip()
    well_formed = text.str.fullmatch(_ISO.pattern).fillna(False).astype(bool)
    candidate = text.where(well_formed)
    has_offset = candidate.str.contains(_TIMED_OFFSET.pattern, regex=True).fillna(False).astype(bool) & well_formed
    parsed = pd.Series(pd.NaT, index=text.index, dtype=DATE_DTYPE)
    plain = well_formed & ~has_offset
    if plain.any():
        parsed.loc[plain[plain].index] = pd.to_datetime(candidate[plain], format="ISO8601", errors="coerce").astype(
            DATE_DTYPE
        )
    if has_offset.any():
        parsed.loc[has_offset[has_offset].index] = _offset_times(candidate[has_offset], zone)
    in_range = parsed.notna() & parsed.between(FIRST_DATE, LAST_DATE)
    out.loc[in_range.index[in_range]] = parsed[in_range].astype(DATE_DTYPE)
    empty_text = text.eq("")
    invalid.loc[text.index[~in_range & ~empty_text]] = True
    return out, invalid


def _local(value: dt.datetime, zone: str) -> dt.datetime:
    """An aware datetime as the site's wall clock (naive); a naive one as it is."""
    if value.tzinfo is not None and zone:
        from zoneinfo import ZoneInfo

        try:
            value = value.astimezone(ZoneInfo(zone))
        except (OverflowError, ValueError):  # out of range after conversion: reported as invalid
            return value.replace(tzinfo=None)
    return value.replace(tzinfo=None)


def _offset_times(text: pd.Series, zone: str) -> pd.Series:
    """ISO text with ``Z`` or an offset as naive local times: converted to ``zone``, or the offset dropped."""
    if not zone:
        wall = text.str.replace(_OFFSET.pattern, "", regex=True)
        return pd.to_datetime(wall, format="ISO8601", errors="coerce").astype(DATE_DTYPE)
    aware = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
    return aware.dt.tz_convert(zone).dt.tz_localize(None).astype(DATE_DTYPE)


def parse_ints(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Whole numbers (OMOP ids and concept ids) as nullable Int64, and a mask of invalid ones.

    Accepts ints, integral floats (a driver's NULL-able integer column) and decimal text.
    """
    present = values.notna()
    held = values[present]
    kinds = set(held.map(type).unique())
    if kinds <= {str}:  # exported files and text columns: vectorised (an id of 19 digits may overflow int64)
        text = held.str.strip()
        fits = text.str.fullmatch(r"[+-]?\d{1,18}").fillna(False).astype(bool)
        out = pd.Series(pd.NA, index=values.index, dtype="Int64")
        out.loc[fits.index[fits]] = text[fits].astype("int64").to_numpy()
        bad = pd.Series(False, index=values.index)
        bad.loc[fits.index[~fits]] = True
        if (~fits).any():  # the rare long ids: the exact, slow path decides
            slow, slow_bad = _parse_ints_slowly(values[bad])
            out.loc[slow.index] = slow
            bad.loc[slow.index] = slow_bad
        return out, bad
    if kinds <= {int, np.int64}:  # a database driver's integers
        return pd.Series(pd.array(values.tolist(), dtype="Int64"), index=values.index), pd.Series(
            False, index=values.index
        )
    return _parse_ints_slowly(values)


def _parse_ints_slowly(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    present = values.notna().to_numpy()
    numbers = [_as_int(v) if p else None for v, p in zip(values.to_numpy(dtype=object), present)]
    bad = np.array([p and n is None for n, p in zip(numbers, present)], dtype=bool)
    out = pd.Series(pd.array(numbers, dtype="Int64"), index=values.index)
    return out, pd.Series(bad, index=values.index)


_INT64 = 2**63 - 1


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | np.integer):
        number = int(value)
    elif isinstance(value, float | np.floating):
        if not np.isfinite(value) or not float(value).is_integer():
            return None
        number = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if not re.fullmatch(r"[+-]?\d{1,19}", text):
            return None
        number = int(text)
    else:
        return None
    return number if -_INT64 <= number <= _INT64 else None


def finish(
    stays: pd.DataFrame, findings: Findings, summary: dict[str, Any], fields: dict[str, Callable[[Any], str]]
) -> pd.DataFrame | None:
    """Checks every source shares, then daily unit records.

    ``stays`` has the contract's stay columns (times typed, rows already free of per-field
    errors) and the origin columns; ``fields`` maps ``admit_time`` / ``discharge_time`` /
    ``patient_id`` to a function naming the source field of a row. Reports stays that end
    before they begin (error) and a patient's stays that overlap (warning), fills the summary
    (units, date range, stays, open stays) and returns the daily records, or None on errors.
    """
    backwards = stays[DISCHARGE_TIME].notna() & (stays[DISCHARGE_TIME] < stays[ADMIT_TIME])
    findings.records(
        stays,
        backwards,
        fields[DISCHARGE_TIME],
        lambda i: (
            f"ends {stays.at[i, DISCHARGE_TIME]:%Y-%m-%d %H:%M} before it begins "
            f"{stays.at[i, ADMIT_TIME]:%Y-%m-%d %H:%M}; expected the end at or after the start"
        ),
    )
    summary["encounters"] = len(stays)
    summary["open_stays"] = int(stays[DISCHARGE_TIME].isna().sum())
    if findings.has_errors:
        return None
    if stays.empty:
        if isinstance(findings, NodeFindings):  # a node: no stay is zero stays on its declared calendar
            return no_daily()
        findings.add("no inpatient stay in any unit; expected at least one (check the mapping: docs/data.md)")
        return None
    _warn_overlaps(stays, findings, fields[ADMIT_TIME])
    daily = encounters_to_daily(stays[list(STAY_COLUMNS)])
    summary.update(frequency=Frequency.DAILY.value, gaps=0, daily_rows=len(daily))
    summary["units"] = sorted(daily[UNIT].unique().tolist())
    summary["date_start"] = f"{daily['date'].min():%Y-%m-%d}"
    summary["date_end"] = f"{daily['date'].max():%Y-%m-%d}"
    return daily


def _warn_overlaps(stays: pd.DataFrame, findings: Findings, admit_field: Callable[[Any], str]) -> None:
    """A patient in two units at once is usually a transfer booked without closing the first stay."""
    ordered = stays.sort_values([PATIENT_ID, ADMIT_TIME], kind="stable")
    previous_end = ordered.groupby(PATIENT_ID)[DISCHARGE_TIME].shift(1)
    same_patient = ordered[PATIENT_ID].eq(ordered[PATIENT_ID].shift(1))
    overlap = same_patient & (previous_end.isna() | (previous_end > ordered[ADMIT_TIME]))
    if not overlap.any():
        return
    label = overlap.index[overlap.to_numpy()][0]
    findings.add(
        f"{int(overlap.sum())} stay(s) begin while the same patient's previous stay is still open; first here; "
        "both are counted in the census until the first ends",
        file=str(stays.at[label, "_file"]),
        row=_int_or_none(stays.at[label, "_row"]),
        record=_str_or_none(stays.at[label, "_record"]),
        column=admit_field(label),
        severity="warning",
    )


def no_daily() -> pd.DataFrame:
    """Daily unit records of no stay (the columns, typed, no row)."""
    return pd.DataFrame(
        {
            "date": pd.Series(dtype=DATE_DTYPE),
            UNIT: pd.Series(dtype=object),
            "admissions": pd.Series(dtype="int64"),
            "discharges": pd.Series(dtype="int64"),
            "census": pd.Series(dtype="int64"),
        }
    )


def empty_stays() -> pd.DataFrame:
    return pd.DataFrame(
        {
            ENCOUNTER_ID: pd.Series(dtype=object),
            PATIENT_ID: pd.Series(dtype=object),
            UNIT: pd.Series(dtype=object),
            ADMIT_TIME: pd.Series(dtype=DATE_DTYPE),
            DISCHARGE_TIME: pd.Series(dtype=DATE_DTYPE),
            "_file": pd.Series(dtype=object),
            "_row": pd.Series(dtype=object),
            "_record": pd.Series(dtype=object),
        }
    )


def _int_or_none(value: Any) -> int | None:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return None
    return int(value)


def _str_or_none(value: Any) -> str | None:
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return None
    return str(value)
