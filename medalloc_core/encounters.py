"""Derive daily unit records (admissions, discharges, midnight census) from patient stays."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from medalloc_core.contract import ADMISSIONS, ADMIT_TIME, CENSUS, DATE, DISCHARGE_TIME, DISCHARGES, UNIT

logger = logging.getLogger(__name__)

DAILY_FROM_ENCOUNTERS: tuple[str, ...] = (DATE, UNIT, ADMISSIONS, DISCHARGES, CENSUS)
DATE_DTYPE = "datetime64[ns]"


def encounters_to_daily(frame: pd.DataFrame, *, end: pd.Timestamp | None = None) -> pd.DataFrame:
    """Turn one-row-per-stay encounters into one row per (date, unit).

    A stay counts as an admission on the calendar day of ``admit_time`` and a discharge on
    the day of ``discharge_time``; it is in the census of every midnight that closes a day
    on or after its admission day and before its discharge day. A stay admitted and
    discharged on the same day is therefore one admission, one discharge and no census. A
    transfer is two consecutive stays of the same patient in different units, so it shows
    as a discharge from the first unit and an admission to the second on the transfer day,
    with the midnight census in the second unit only. Open stays (no ``discharge_time``)
    stay in the census through ``end``.

    Parameters
    ----------
    frame
        Columns ``unit``, ``admit_time`` and ``discharge_time`` (datetimes or ISO 8601
        strings; missing discharge = still admitted). Other columns are ignored.
    end
        Last day to report, default None = the last admission or discharge day in
        ``frame``. Events after ``end`` are left out; stays still open at ``end`` are in
        its census.

    Returns
    -------
    pd.DataFrame
        Columns ``date`` (midnight timestamps), ``unit``, ``admissions``, ``discharges``,
        ``census`` (int64), sorted by (unit, date): for each unit every day from its first
        admission to ``end``, days without events as zeros rather than gaps.

    Raises
    ------
    ValueError
        If a column is missing, an admit time is missing or unparseable, or a stay is
        discharged before it was admitted (validation reports these per row first).
    """
    missing = [c for c in (UNIT, ADMIT_TIME, DISCHARGE_TIME) if c not in frame.columns]
    if missing:
        raise ValueError(f"encounter frame lacks column(s) {missing}; expected {UNIT}, {ADMIT_TIME}, {DISCHARGE_TIME}")
    unit = frame[UNIT].astype(str).str.strip()
    admit_day = _to_datetime(frame[ADMIT_TIME], ADMIT_TIME).dt.normalize()
    discharge_day = _to_datetime(frame[DISCHARGE_TIME], DISCHARGE_TIME).dt.normalize()
    if admit_day.isna().any():
        raise ValueError(f"{int(admit_day.isna().sum())} stay(s) have no {ADMIT_TIME}")
    if (discharge_day < admit_day).any():
        raise ValueError(f"{int((discharge_day < admit_day).sum())} stay(s) are discharged before they were admitted")
    if frame.empty:
        return _empty()

    last = pd.Timestamp(end).normalize() if end is not None else max(admit_day.max(), discharge_day.max())
    in_range = admit_day <= last
    first_day = admit_day[in_range].groupby(unit[in_range]).min()
    if first_day.empty:
        return _empty()

    # Every (unit, day) from the unit's first admission to `last`: days without events are zeros.
    lengths = ((last - first_day) // pd.Timedelta(days=1) + 1).to_numpy()
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    days = np.repeat(first_day.to_numpy(), lengths) + offsets.astype("timedelta64[D]")
    index = pd.MultiIndex.from_arrays([np.repeat(first_day.index.to_numpy(), lengths), days], names=[UNIT, DATE])

    admissions = admit_day[in_range].groupby([unit[in_range], admit_day[in_range]]).size()
    out = discharge_day.notna() & (discharge_day <= last)
    discharges = discharge_day[out].groupby([unit[out], discharge_day[out]]).size()
    daily = pd.DataFrame(
        {
            ADMISSIONS: _on_index(admissions, index),
            DISCHARGES: _on_index(discharges, index),
        },
        index=index,
    )
    # Midnight census = stays admitted so far minus stays discharged so far, per unit.
    daily[CENSUS] = (daily[ADMISSIONS] - daily[DISCHARGES]).groupby(level=UNIT).cumsum()
    daily = daily.reset_index()[list(DAILY_FROM_ENCOUNTERS)]
    logger.debug("derived %d daily rows for %d unit(s) from %d stays", len(daily), len(first_day), len(frame))
    return daily


def _on_index(counts: pd.Series, index: pd.MultiIndex) -> np.ndarray:
    counts.index = counts.index.set_names([UNIT, DATE])
    return counts.reindex(index, fill_value=0).to_numpy(dtype="int64")


def _to_datetime(values: pd.Series, column: str) -> pd.Series:
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        # Hospital days are local days: keep the wall-clock time, drop the offset.
        return values.dt.tz_localize(None).astype(DATE_DTYPE)
    if pd.api.types.is_datetime64_any_dtype(values):
        return values.astype(DATE_DTYPE)
    try:
        return pd.to_datetime(values, format="ISO8601").astype(DATE_DTYPE)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"column {column!r} has values that are not ISO 8601 date-times: {exc}") from None


def _empty() -> pd.DataFrame:
    return pd.DataFrame(
        {
            DATE: pd.Series(dtype=DATE_DTYPE),
            UNIT: pd.Series(dtype=str),
            ADMISSIONS: pd.Series(dtype="int64"),
            DISCHARGES: pd.Series(dtype="int64"),
            CENSUS: pd.Series(dtype="int64"),
        }
    )
