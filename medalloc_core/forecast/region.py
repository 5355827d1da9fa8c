"""The regional signal: other hospitals' released daily totals, summed per day (post-processing of DP releases).

Every node releases its daily counts once under patient-level DP (``privacy.release``); any
function of those releases costs no further privacy. The region a hospital sees is the sum,
per day and count column, of the *other* hospitals' released totals (over all their units):
an epidemic wave that reaches the neighbours first shows there before it shows in the
hospital's own counts. ``with_region`` stores it in the records as ``region_<column>``
columns (one value per date, repeated on every unit's row); the window features read it
only up to the day before each forecast origin (``features.region_channel``).

In a federation the totals travel as two messages (docs/coordinator.md, "The region"): a node
adds ``totals_record`` of its released counts to its reply (``protocol.RELEASED_TOTALS``), the
coordinator reads each with ``parse_totals``, sums them per day over the other nodes
(``region_totals``) and sends each node ``region_to_text`` of its region; the node reads it back
with ``region_from_text``. Both readers refuse anything malformed with a ``ValueError`` naming it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from medalloc_core.contract import COUNT_COLUMNS, DATE, UNIT, UnitRecords
from medalloc_core.forecast.features import REGION_PREFIX

__all__ = [
    "DATES",
    "MAX_DAYS",
    "MAX_TOTAL",
    "daily_totals",
    "parse_totals",
    "region_from_text",
    "region_to_text",
    "region_totals",
    "regional",
    "totals_record",
    "with_region",
]

DATES = "dates"  # the key of the days (ISO dates) in a totals record and in the region sent to a node
MAX_DAYS = 40 * 366  # a series longer than 40 years of days is refused (a hostile node's unbounded list)
MAX_TOTAL = 10_000_000.0  # a daily total larger than this is refused (no hospital counts ten million a day)


def daily_totals(records: UnitRecords) -> pd.DataFrame:
    """One hospital's released counts summed over its units: index date, one column per count column."""
    columns = records.count_columns
    return records.frame.groupby(DATE)[columns].sum(min_count=1).astype("float64")


def region_totals(totals: Mapping[str, pd.DataFrame], exclude: str | None = None) -> pd.DataFrame:
    """Per date and column, the sum of the hospitals' totals (``exclude`` left out); NaN where none reported."""
    frames = [t for name, t in totals.items() if name != exclude]
    if not frames:
        return pd.DataFrame()
    stacked = pd.concat(frames, axis=0)
    return stacked.groupby(level=0).sum(min_count=1).sort_index()


def with_region(records: UnitRecords, region: pd.DataFrame) -> UnitRecords:
    """``records`` with ``region_<column>`` columns joined by date (NaN on dates the region did not report)."""
    frame = records.frame.drop(columns=[c for c in records.frame.columns if c.startswith(REGION_PREFIX)])
    if len(region.columns):
        joined = region.add_prefix(REGION_PREFIX)
        frame = frame.merge(joined, left_on=DATE, right_index=True, how="left")
    frame = frame.sort_values([UNIT, DATE]).reset_index(drop=True)
    return UnitRecords(frame, records.frequency, records.source, records.shape)


def regional(
    released: Mapping[str, UnitRecords], own: Mapping[str, UnitRecords] | None = None
) -> dict[str, UnitRecords]:
    """Each hospital's records (``own``, default ``released``) with the region of the others' ``released`` totals."""
    totals = {name: daily_totals(r) for name, r in released.items()}
    base = own if own is not None else released
    return {name: with_region(base[name], region_totals(totals, exclude=name)) for name in base}


# ------------------------------------------------------------------ on the wire
def totals_record(released: UnitRecords, columns: tuple[str, ...] | None = None) -> dict[str, list[str] | list[float]]:
    """A node's released daily totals as a reply's ``ConfigRecord`` values: ``{"dates": [...], column: [...]}``.

    ``released`` must be the node's *released* counts (post-processing; never its true records).
    Days where a column is not known (NaN) are left out, so every value is a finite number.
    """
    totals = daily_totals(released)
    if columns is not None:
        totals = totals[[c for c in columns if c in totals.columns]]
    totals = totals.dropna(how="any")
    out: dict[str, list[str] | list[float]] = {DATES: [d.date().isoformat() for d in pd.DatetimeIndex(totals.index)]}
    for column in totals.columns:
        out[str(column)] = [float(v) for v in totals[column].to_numpy()]
    return out


def _dates(raw: object, what: str) -> pd.DatetimeIndex:
    if not isinstance(raw, list | tuple) or not all(isinstance(d, str) for d in raw):
        raise ValueError(f"{what}: '{DATES}' must be a list of ISO dates")
    if len(raw) > MAX_DAYS:
        raise ValueError(f"{what}: {len(raw)} days, more than the {MAX_DAYS} accepted")
    try:
        dates = pd.DatetimeIndex(pd.to_datetime(list(raw), format="%Y-%m-%d"))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{what}: '{DATES}' holds a value that is not a YYYY-MM-DD date") from exc
    if dates.has_duplicates:
        raise ValueError(f"{what}: '{DATES}' repeats a day")
    return dates


def _values(raw: object, n: int, what: str, column: str, *, nullable: bool) -> np.ndarray:
    if not isinstance(raw, list | tuple) or len(raw) != n:
        raise ValueError(f"{what}: '{column}' must be a list of {n} numbers (one per day)")
    out = np.empty(n)
    for i, v in enumerate(raw):
        if v is None and nullable:
            out[i] = np.nan
        elif isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or abs(v) > MAX_TOTAL:
            raise ValueError(f"{what}: '{column}' holds a value that is not a finite number within +-{MAX_TOTAL:g}")
        else:
            out[i] = float(v)
    return out


def parse_totals(record: Mapping[str, Any], columns: tuple[str, ...], what: str = "released totals") -> pd.DataFrame:
    """Read a node's totals record (coordinator side; the node is not trusted): index date, ``columns`` it has.

    Raises ``ValueError`` naming the key for a record that is not ``{"dates": [ISO dates], column:
    [finite numbers, one per day]}`` over known ``columns`` (at most ``MAX_DAYS`` days).
    """
    unknown = sorted(set(record) - {DATES, *columns})
    if unknown:
        names = [str(k)[:40] for k in unknown][:5]
        raise ValueError(f"{what}: unknown key(s) {names}; expected {DATES!r} and {columns}")
    if DATES not in record:
        raise ValueError(f"{what}: '{DATES}' is missing")
    dates = _dates(record[DATES], what)
    data = {c: _values(record[c], len(dates), what, c, nullable=False) for c in columns if c in record}
    return pd.DataFrame(data, index=dates).sort_index()


def region_to_text(region: pd.DataFrame) -> str:
    """The region one node is sent (a ``ConfigRecord`` string): JSON ``{"dates": [...], column: [... or null]}``."""
    out: dict[str, Any] = {DATES: [d.date().isoformat() for d in pd.DatetimeIndex(region.index)]}
    for column in region.columns:
        out[str(column)] = [None if not np.isfinite(v) else round(float(v), 6) for v in region[column].to_numpy()]
    return json.dumps(out, separators=(",", ":"))


def region_from_text(text: str, what: str = "region") -> pd.DataFrame:
    """Read the region a coordinator sent (node side): index date, one float column per count column.

    Raises ``ValueError`` naming what is wrong (not JSON, a bad date, a list of the wrong length, a value
    that is not a finite number or null).
    """
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} is not valid JSON ({exc.msg})") from exc
    if not isinstance(raw, dict) or DATES not in raw:
        raise ValueError(f"{what} must be a JSON object with '{DATES}' and one list per count column")
    dates = _dates(raw[DATES], what)
    columns = [c for c in raw if c != DATES]
    unknown = [c for c in columns if c not in COUNT_COLUMNS]
    if unknown:
        names = [str(c)[:40] for c in unknown][:5]
        raise ValueError(f"{what}: unknown column(s) {names}; count columns are {COUNT_COLUMNS}")
    data = {str(c): _values(raw[c], len(dates), what, str(c), nullable=True) for c in columns}
    return pd.DataFrame(data, index=dates).sort_index()
