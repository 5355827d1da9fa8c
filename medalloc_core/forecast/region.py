"""The regional signal: other hospitals' released daily totals, summed per day (post-processing of DP releases).

Every node releases its daily counts once under patient-level DP (``privacy.release``); any
function of those releases costs no further privacy. The region a hospital sees is the sum,
per day and count column, of the *other* hospitals' released totals (over all their units):
an epidemic wave that reaches the neighbours first shows there before it shows in the
hospital's own counts. ``with_region`` stores it in the records as ``region_<column>``
columns (one value per date, repeated on every unit's row); the window features read it
only up to the day before each forecast origin (``features.region_channel``).
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from medalloc_core.contract import DATE, UNIT, UnitRecords
from medalloc_core.forecast.features import REGION_PREFIX

__all__ = ["daily_totals", "region_totals", "regional", "with_region"]


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
