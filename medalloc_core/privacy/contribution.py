"""Per-patient contribution bounding: what one patient may add to a node's counts, enforced before counting.

The source release adds Gaussian noise to every (unit, day) count. Its privacy unit is whatever
the noise is calibrated to: the L2 norm of the largest change one *unit* can make to the vector
of released counts. Calibrated to one stay (two admissions: one transfer; N nights), a patient
with several stays is protected far less than the headline (issue 20: 2 stays x 7 nights with a
transfer each -> epsilon 1.18 at a headline 1.0; 12 zero-night visits -> 1.53). Where the
records carry patient identifiers (encounter files, OMOP, FHIR), the node therefore cuts each
patient's stays *before counting*, per release (the calendar's days), to at most

* ``max-patient-stays`` stays (default 2; a stay is a run of segments joined by transfers),
* ``max-patient-transfers`` transfers in all (default 1; a transfer is a segment admitted on the
  day the patient's previous segment ended),
* ``max-patient-nights`` midnight-census nights in all (default: the node's ``max-stay-days``, 14),

keeps at most one admission and one discharge per (unit, day) per patient and never two
segments of one patient at once (an overlapping earlier segment ends when the next begins).
After the cut one patient changes at most ``A = stays + transfers`` admission counts by 1, ``A``
discharge counts by 1 and ``N`` census counts by 1, all distinct coordinates, so the exact L2
sensitivity of the release is ``sqrt(A/sd_a^2 + A/sd_d^2 + N/sd_c^2)`` in units of the noise and
the release is calibrated to that: the headline epsilon is per patient. What is cut is logged as
counts only, never as records.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from medalloc_core.contract import (
    ADMISSIONS,
    ADMIT_TIME,
    CENSUS,
    DATE,
    DISCHARGE_TIME,
    DISCHARGES,
    PATIENT_ID,
    UNIT,
    UnitRecords,
)
from medalloc_core.privacy.calendar import NodeCalendar, apply_calendar, declared_parts, node_calendar
from medalloc_core.privacy.continuity import PatientContributions
from medalloc_core.privacy.gaussian import gaussian_epsilon

__all__ = [
    "PatientCaps",
    "bound_contributions",
    "contribution_epsilon",
    "group_epsilons",
    "public_counts",
    "public_records",
]

logger = logging.getLogger(__name__)

STAYS_KEY, TRANSFERS_KEY, NIGHTS_KEY = "max-patient-stays", "max-patient-transfers", "max-patient-nights"


@dataclass(frozen=True)
class PatientCaps:
    """How much one patient may contribute to one release (node settings; never the coordinator's)."""

    stays: int = 2
    transfers: int = 1
    nights: int = 14

    def __post_init__(self) -> None:
        for name, value, least in (
            ("stays", self.stays, 1),
            ("transfers", self.transfers, 0),
            ("nights", self.nights, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"max-patient-{name} must be a whole number >= {least}, got {value!r}")

    @property
    def admissions(self) -> int:
        """The most admission (and discharge) counts one patient can raise: a stay's first unit plus each transfer."""
        return self.stays + self.transfers

    @classmethod
    def of(cls, extra: Mapping[str, Any], *, default_nights: int = 14) -> PatientCaps:
        """The caps of a node's config (``max-patient-stays``, ``-transfers``, ``-nights``); errors name the key."""
        values: dict[str, int] = {}
        for key, name, default in (
            (STAYS_KEY, "stays", cls.stays),
            (TRANSFERS_KEY, "transfers", cls.transfers),
            (NIGHTS_KEY, "nights", default_nights),
        ):
            raw = extra.get(key, default)
            if isinstance(raw, bool) or not isinstance(raw, int | float) or float(raw) != int(raw):
                raise ValueError(f"{key} must be a whole number, got {raw!r}")
            values[name] = int(raw)
        return cls(**values)


def contribution_epsilon(
    noise_sd: Mapping[str, float], noise_multiplier_delta: float, *, admissions: int, nights: int
) -> float:
    """Epsilon (at ``delta``) the release with per-column ``noise_sd`` gives a patient who adds ``admissions``
    admission and discharge counts and ``nights`` census counts (all distinct coordinates).

    The exact Gaussian mechanism: the two neighbouring outputs are Gaussians whose means differ by
    a vector of L2 norm ``sqrt(sum_c k_c / sd_c^2)`` in noise units (Balle & Wang 2018).
    """
    sq = sum(
        (nights if c == CENSUS else admissions) / sd**2
        for c, sd in noise_sd.items()
        if c in (ADMISSIONS, DISCHARGES, CENSUS)
    )
    if sq == 0:
        return 0.0
    return gaussian_epsilon(noise_multiplier=1 / math.sqrt(sq), delta=noise_multiplier_delta)


def group_epsilons(
    noise_sd: Mapping[str, float], delta: float, *, stays: Iterable[int] = (1, 2, 3, 5, 10), nights: int = 0
) -> dict[int, float]:
    """Readmission figures for a per-stay release: epsilon for a patient with k stays (each with one transfer,
    ``nights`` nights in all), from the exact mechanism; what a node without patient ids prints beside its number."""
    return {k: contribution_epsilon(noise_sd, delta, admissions=2 * k, nights=nights) for k in stays}


@dataclass
class _Kept:
    unit: str
    admit: pd.Timestamp
    discharge: pd.Timestamp | None


def _day(t: pd.Timestamp | None) -> pd.Timestamp | None:
    return None if t is None or pd.isna(t) else pd.Timestamp(t).normalize()


def _nights(admit: pd.Timestamp, discharge: pd.Timestamp | None, start: pd.Timestamp, end: pd.Timestamp) -> int:
    """Census nights (days d with admit_day <= d < discharge_day) inside [start, end]."""
    first = max(_day(admit), start)
    last = end if discharge is None else min(_day(discharge) - pd.Timedelta(days=1), end)
    return max(0, (last - first).days + 1)


def bound_contributions(
    stays: pd.DataFrame,
    caps: PatientCaps,
    *,
    units: Iterable[str],
    start: pd.Timestamp,
    end: pd.Timestamp,
) -> tuple[pd.DataFrame, Counter[str]]:
    """The stays with each patient's contribution to the calendar's counts cut to ``caps``.

    Returns the kept stays (columns ``patient_id``, ``unit``, ``admit_time``, ``discharge_time``;
    a truncated stay ends at midnight after its last allowed night) and how many segments or
    nights were cut, by reason (counts only: what may be logged).
    """
    cut: Counter[str] = Counter()
    allowed = set(units)
    unit = stays[UNIT].astype(str)
    admit = pd.to_datetime(stays[ADMIT_TIME])
    discharge = pd.to_datetime(stays[DISCHARGE_TIME])
    outside_unit = ~unit.isin(allowed)
    outside_days = (admit.dt.normalize() > end) | (discharge.notna() & (discharge.dt.normalize() < start))
    cut["segments outside the calendar's units"] = int(outside_unit.sum())
    cut["segments outside the calendar's days"] = int((outside_days & ~outside_unit).sum())
    frame = pd.DataFrame(
        {PATIENT_ID: stays[PATIENT_ID].astype(str), UNIT: unit, ADMIT_TIME: admit, DISCHARGE_TIME: discharge}
    )[~(outside_unit | outside_days)]
    frame = frame.sort_values([PATIENT_ID, ADMIT_TIME], kind="stable")
    # Fast path: a patient with one segment within the nights cap is kept as it is (most patients).
    single = ~frame[PATIENT_ID].duplicated(keep=False)
    first_night = frame[ADMIT_TIME].dt.normalize().clip(lower=start)
    last_night = (frame[DISCHARGE_TIME].dt.normalize() - pd.Timedelta(days=1)).fillna(end).clip(upper=end)
    nights = ((last_night - first_night).dt.days + 1).clip(lower=0)
    simple = single & (nights <= caps.nights)
    kept_rows: list[tuple[str, str, pd.Timestamp, pd.Timestamp | None]] = []
    for patient, group in frame[~simple].groupby(PATIENT_ID, sort=False):
        for seg in _bound_patient(group, caps, start, end, cut):
            kept_rows.append((str(patient), seg.unit, seg.admit, seg.discharge))
    out = pd.concat(
        [
            frame.loc[simple, [PATIENT_ID, UNIT, ADMIT_TIME, DISCHARGE_TIME]],
            pd.DataFrame(kept_rows, columns=[PATIENT_ID, UNIT, ADMIT_TIME, DISCHARGE_TIME]),
        ],
        ignore_index=True,
    )
    out[ADMIT_TIME] = pd.to_datetime(out[ADMIT_TIME]).astype("datetime64[ns]")
    out[DISCHARGE_TIME] = pd.to_datetime(out[DISCHARGE_TIME]).astype("datetime64[ns]")
    cut = Counter({k: v for k, v in cut.items() if v})
    if cut:
        logger.info("per-patient bounding: %s", ", ".join(f"{v} {k}" for k, v in sorted(cut.items())))
    return out, cut


def _bound_patient(
    group: pd.DataFrame, caps: PatientCaps, start: pd.Timestamp, end: pd.Timestamp, cut: Counter[str]
) -> list[_Kept]:
    kept: list[_Kept] = []
    stays = transfers = nights = 0
    admitted: set[tuple[str, pd.Timestamp]] = set()
    discharged: set[tuple[str, pd.Timestamp]] = set()
    for row in group.itertuples(index=False):
        seg_unit = str(getattr(row, UNIT))
        seg_admit = pd.Timestamp(getattr(row, ADMIT_TIME))
        raw_discharge = getattr(row, DISCHARGE_TIME)
        seg_discharge = None if pd.isna(raw_discharge) else pd.Timestamp(raw_discharge)
        prev = kept[-1] if kept else None
        if prev is not None and (prev.discharge is None or prev.discharge > seg_admit):
            # One patient in two places at once: the earlier segment ends when this one begins.
            old = _day(prev.discharge)
            new = _day(seg_admit)
            if (prev.unit, new) in discharged and old != new:
                cut["overlapping segments"] += 1
                continue
            nights -= _nights(prev.admit, prev.discharge, start, end) - _nights(prev.admit, seg_admit, start, end)
            if old is not None:
                discharged.discard((prev.unit, old))
            prev.discharge = seg_admit
            discharged.add((prev.unit, new))
        is_transfer = prev is not None and _day(prev.discharge) == _day(seg_admit)
        if is_transfer and transfers >= caps.transfers:
            cut["transfers over max-patient-transfers"] += 1
            continue
        if not is_transfer and stays >= caps.stays:
            cut["stays over max-patient-stays"] += 1
            continue
        a_key = (seg_unit, _day(seg_admit))
        d_day = _day(seg_discharge)
        if a_key in admitted or (d_day is not None and (seg_unit, d_day) in discharged):
            cut["segments repeating an admission or discharge day"] += 1
            continue
        room = caps.nights - nights
        n = _nights(seg_admit, seg_discharge, start, end)
        if n > room:
            cut["nights over max-patient-nights"] += n - room
            # Keep the nights before the calendar and `room` nights inside it, then discharge.
            first_inside = max(_day(seg_admit), start)
            seg_discharge = first_inside + pd.Timedelta(days=room)
            d_day = seg_discharge
            while (seg_unit, d_day) in discharged and d_day > _day(seg_admit):
                d_day = d_day - pd.Timedelta(days=1)
                cut["nights over max-patient-nights"] += 1
            if (seg_unit, d_day) in discharged:
                cut["segments repeating an admission or discharge day"] += 1
                continue
            seg_discharge = max(d_day, seg_admit)
            n = _nights(seg_admit, seg_discharge, start, end)
        if is_transfer:
            transfers += 1
        else:
            stays += 1
        nights += n
        admitted.add(a_key)
        if seg_discharge is not None:
            discharged.add((seg_unit, _day(seg_discharge)))
        kept.append(_Kept(seg_unit, seg_admit, seg_discharge))
    return kept


def public_records(
    records: UnitRecords,
    stays: pd.DataFrame | None,
    extra: Mapping[str, Any],
    *,
    default_nights: int,
    research: bool = False,
) -> tuple[UnitRecords, PatientCaps | None]:
    """A node's counts on its public calendar, each patient's contribution cut to the node's caps first
    (:func:`public_counts` without the per-patient rows)."""
    counts, caps, _ = public_counts(records, stays, extra, default_nights=default_nights, research=research)
    return counts, caps


def public_counts(
    records: UnitRecords,
    stays: pd.DataFrame | None,
    extra: Mapping[str, Any],
    *,
    default_nights: int,
    research: bool = False,
) -> tuple[UnitRecords, PatientCaps | None, PatientContributions | None]:
    """A node's counts on its public calendar, each patient's contribution cut to the node's caps first.

    Also returns every count each patient adds after the cut (``continuity.PatientContributions``;
    None without patient ids): a node that keeps going cuts a patient's new days to what its
    earlier releases left of the caps.

    ``records`` are the source's daily counts; ``stays`` its patient stays (None for a file of
    daily counts, which is then only put on the declared calendar and stays per stay).
    Returns the counts to release and the caps they were bounded with (None without patient ids).
    Raises ``CalendarError`` / ``ValueError`` naming the node-config key for a bad setting, and
    ``CalendarNotDeclared`` without a declared calendar unless ``research`` (a simulated node: its
    calendar is then whole months of the stays, or a daily-count file's own rows; not public).
    """
    from medalloc_core.encounters import encounters_to_daily

    if stays is None:
        frame = records.frame
        units, start, end = declared_parts(extra)
        if not research:  # a deployed node: its calendar is declared, whatever rows its file has (issue 20)
            calendar = node_calendar(
                extra, first_event=frame[DATE].min(), last_event=frame[DATE].max(), data_units=records.units
            )
            return apply_calendar(records, calendar), None, None
        if units is None and start is None and end is None:
            return records, None, None  # a simulated node's file: the generator's own calendar
        calendar = NodeCalendar(
            units or tuple(records.units),
            start or frame[DATE].min(),
            end or frame[DATE].max(),
            declared=units is not None and start is not None and end is not None,
        )
        return apply_calendar(records, calendar), None, None
    caps = PatientCaps.of(extra, default_nights=default_nights)
    events = pd.concat([pd.to_datetime(stays[ADMIT_TIME]), pd.to_datetime(stays[DISCHARGE_TIME])]).dropna()
    calendar = node_calendar(
        extra,
        first_event=events.min(),
        last_event=events.max(),
        data_units=stays[UNIT].astype(str).unique(),
        research=research,
    )
    kept, _ = bound_contributions(stays, caps, units=calendar.units, start=calendar.start, end=calendar.end)
    daily = encounters_to_daily(kept, end=calendar.end)
    counted = UnitRecords(daily, records.frequency, records.source, records.shape)
    rows = PatientContributions.of_stays(
        kept, start=calendar.start, end=calendar.end, admissions_cap=caps.admissions, nights_cap=caps.nights
    )
    return apply_calendar(counted, calendar), caps, rows
