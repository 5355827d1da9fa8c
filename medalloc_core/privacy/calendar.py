"""A node's public calendar: which units and which days its replies and its release cover.

Everything a node sends that is not a released count (the number of examples, whether it
replies or refuses, the days and units it trains on) must not move when one patient's stays are
added or removed. Deriving the units and days from the records does exactly that: one stay in a
new unit creates a unit, one early stay moves a unit's first day, one late stay extends every
unit's last day (issue 20). So the calendar is fixed before anything is read from patients:

* **declared** in node config (the strong form; a node operator's choice, public by construction)::

      calendar-units = "ICU,ward,surgery"      # exactly these units; stays elsewhere are dropped
      calendar-start = "2024-01-01"            # first day
      calendar-end   = "2024-12-31"            # last day

  A node that runs for months declares an end that moves instead of a date, read again at
  every round (the node's config is read once, when the SuperNode starts; these are not):

      calendar-end      = "today-2"            # the node's UTC date minus 2 days, at each round
      calendar-end-file = "/data/complete-through.txt"  # one date, written by the export job

  Both are public by construction (the node's clock; a date its operator's export job writes
  after each load), never a function of the stays; days past a moving end join the release
  as they come in (``continuity``), each released once.

* A **deployed node** must declare all three, whatever its data: anything taken from the data
  is a function of it, however it is rounded (rounded inward to whole months, one stay still
  adds a unit or crosses a month boundary; rounded outward, one stay in a new month adds a
  month). That holds for a file of daily counts too: which (unit, day) rows an export writes
  can depend on the counts (a unit or a day with no patient left out), so its own rows are no
  more public than a stay file's. Without the keys the node refuses with ``node-misconfigured``
  and its log names the missing keys, with the values its data would suggest (the whole months
  of the file and its units) for the operator to check and copy.
* A **simulated or research** node may leave parts undeclared: with stays they are then taken
  from the data, rounded inward to whole calendar months (the first whole month starting on or
  after the first admission to the last whole month ending on or before the last event; the
  units of the file); a file of daily counts keeps its own rows (the generator's calendar). The
  node logs that this calendar is NOT public. Simulations use it; no deployed node does.

Every unit runs over the same days: a unit with no stay on a day has zero admissions that day,
which is the truth for an encounter source. Stays outside the calendar are dropped before
counting (how many is logged, as a count only).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from medalloc_core.contract import DATE, UNIT, UnitRecords
from medalloc_core.paths import read_regular_bytes

__all__ = [
    "CalendarError",
    "CalendarNotDeclared",
    "NodeCalendar",
    "apply_calendar",
    "node_calendar",
    "suggested_calendar",
]

logger = logging.getLogger(__name__)

UNITS_KEY, START_KEY, END_KEY = "calendar-units", "calendar-start", "calendar-end"
END_FILE_KEY = "calendar-end-file"
_TODAY = re.compile(r"today(?:\s*-\s*(\d{1,4}))?")
MAX_END_FILE_BYTES = 1024  # one date and a newline; anything bigger is not what the export job writes


class CalendarError(ValueError):
    """The node's declared calendar is malformed (names the node-config key) or covers no day."""


class CalendarNotDeclared(CalendarError):
    """A deployed node has no declared calendar (names the missing node-config keys)."""


@dataclass(frozen=True)
class NodeCalendar:
    """The units and days a node covers; ``declared`` says whether every part came from node config."""

    units: tuple[str, ...]
    start: pd.Timestamp
    end: pd.Timestamp
    declared: bool

    @property
    def days(self) -> pd.DatetimeIndex:
        """Every day of the calendar, midnight timestamps."""
        return pd.date_range(self.start, self.end, freq="D")

    def grid(self) -> pd.MultiIndex:
        """(unit, date) for every unit and day, in (unit, date) order."""
        return pd.MultiIndex.from_product([list(self.units), self.days], names=[UNIT, DATE])


def declared_parts(
    extra: Mapping[str, Any], *, today: pd.Timestamp | None = None
) -> tuple[tuple[str, ...] | None, pd.Timestamp | None, pd.Timestamp | None]:
    """The calendar keys of a node's config: units, first day, last day (None where not declared).

    The last day is ``calendar-end`` (a date, or ``today`` / ``today-N``: ``today`` is the node's
    UTC date now unless given) or the date held by ``calendar-end-file``, read now: called at every
    round, a long-running node's calendar grows with its clock or its export job.
    """
    units: tuple[str, ...] | None = None
    raw_units = extra.get(UNITS_KEY)
    if raw_units is not None and str(raw_units).strip():
        names = [u.strip() for u in str(raw_units).split(",")]
        if any(not u for u in names) or len(set(names)) != len(names):
            raise CalendarError(f"{UNITS_KEY}: expected distinct, non-empty unit names separated by commas")
        units = tuple(sorted(names))
    start, end = _day(extra, START_KEY), _end(extra, today)
    if start is not None and end is not None and end < start:
        raise CalendarError(f"{END_KEY} {end:%Y-%m-%d} is before {START_KEY} {start:%Y-%m-%d}")
    return units, start, end


def _day(extra: Mapping[str, Any], key: str) -> pd.Timestamp | None:
    raw = extra.get(key)
    if raw is None or not str(raw).strip():
        return None
    try:
        return pd.Timestamp(str(raw).strip()).normalize()
    except (ValueError, TypeError):
        raise CalendarError(f"{key}: expected a date YYYY-MM-DD, got {raw!r}") from None


def _end(extra: Mapping[str, Any], today: pd.Timestamp | None) -> pd.Timestamp | None:
    """The declared last day: a date, ``today-N`` on the node's clock, or the date in ``calendar-end-file``."""
    raw, file = extra.get(END_KEY), extra.get(END_FILE_KEY)
    has_raw, has_file = raw is not None and bool(str(raw).strip()), file is not None and bool(str(file).strip())
    if has_raw and has_file:
        raise CalendarError(f"declare {END_KEY} or {END_FILE_KEY}, not both")
    if has_file:
        return _end_from_file(Path(str(file).strip()).expanduser())
    if has_raw and (match := _TODAY.fullmatch(str(raw).strip().lower())):
        now = pd.Timestamp.now(tz="UTC").tz_localize(None) if today is None else pd.Timestamp(today)
        return now.normalize() - pd.Timedelta(days=int(match[1] or 0))
    return _day(extra, END_KEY)


def _end_from_file(path: Path) -> pd.Timestamp:
    """The one date ``calendar-end-file`` holds (``YYYY-MM-DD``); any other content names the file and says why."""
    where = f"{END_FILE_KEY} {path}"
    try:  # a regular file only, read bounded: a FIFO or a device named here must not hang the round
        content = read_regular_bytes(path, limit=MAX_END_FILE_BYTES, what="one date YYYY-MM-DD")
    except OSError as exc:
        raise CalendarError(f"{where}: cannot be read ({exc.strerror or exc})") from None
    text = content.decode("utf-8", errors="replace").strip()
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        raise CalendarError(f"{where}: expected one date YYYY-MM-DD, got {text[:40]!r}")
    try:
        return pd.Timestamp(text).normalize()
    except (ValueError, TypeError):
        raise CalendarError(f"{where}: expected one date YYYY-MM-DD, got {text!r}") from None


def node_calendar(
    extra: Mapping[str, Any],
    *,
    first_event: pd.Timestamp,
    last_event: pd.Timestamp,
    data_units: Sequence[str],
    research: bool = False,
) -> NodeCalendar:
    """The node's calendar: the declared one; for a ``research`` (simulated) node the rest from whole months.

    A deployed node (``research`` False, the default) with any part undeclared raises
    ``CalendarNotDeclared`` naming the missing keys: no part of a deployed node's calendar is ever
    taken from its stays. Its message suggests values from the data (``first_event``,
    ``last_event``, ``data_units``); it goes to the node's own log, never into a reply. For a
    research node the undeclared parts are taken from the data, rounded inward to whole months,
    with a warning that they are not public.
    """
    units, start, end = declared_parts(extra)
    undeclared = [k for k, v in ((UNITS_KEY, units), (START_KEY, start), (END_KEY, end)) if v is None]
    if not undeclared:  # the declared calendar alone: nothing of the data is read (it may hold no stay at all)
        assert units is not None and start is not None and end is not None
        return NodeCalendar(units, start, end, declared=True)
    if pd.isna(first_event) or pd.isna(last_event):
        raise CalendarNotDeclared(
            f"the node's calendar is not declared ({', '.join(undeclared)} missing) and its data has no event to "
            "suggest one from; set them in the node config (docs/privacy.md, 'What is public')"
        )
    suggested = suggested_calendar(first_event=first_event, last_event=last_event, data_units=data_units)
    if not research:
        raise CalendarNotDeclared(
            f"the node's calendar is not declared ({', '.join(undeclared)} missing): a deployed node covers only "
            "declared units and days, whatever its data (stays or daily counts), so that no one patient can change "
            "how many examples it reports or whether it refuses. Set in the node config "
            + " ".join(f'{k}="{suggested[k]}"' for k in undeclared)
            + " (what this data spans, in whole months: check it against what your hospital may publish; "
            "docs/privacy.md, 'What is public')"
        )
    start = pd.Timestamp(suggested[START_KEY]) if start is None else start
    end = pd.Timestamp(suggested[END_KEY]) if end is None else end
    units = tuple(sorted(str(u) for u in data_units)) if units is None else units
    logger.warning(
        "simulated node: its calendar (%s) is taken from the data, rounded to whole months: NOT public (one "
        "patient can move it by a month or add a unit); a deployed node refuses without %s",
        ", ".join(undeclared),
        ", ".join(undeclared),
    )
    # Data shorter than a whole month gives an empty calendar: the windowing then refuses it as too
    # short for the request (data-invalid, naming the run-config keys), like any short series.
    return NodeCalendar(units, start, end, declared=False)


def suggested_calendar(
    *, first_event: pd.Timestamp, last_event: pd.Timestamp, data_units: Sequence[str]
) -> dict[str, str]:
    """The calendar keys the data spans: its units, and whole months rounded inward (first whole month starting
    on or after ``first_event``, last ending on or before ``last_event``).

    A function of the stays: what an operator is shown to check and declare, and what a simulated
    node uses; never a deployed node's calendar by itself.
    """
    first = pd.Timestamp(first_event).normalize()
    last = pd.Timestamp(last_event).normalize()
    start = first if first.day == 1 else (first + pd.offsets.MonthBegin(1)).normalize()
    end = last if last.is_month_end else (last - pd.offsets.MonthEnd(1)).normalize()
    return {
        UNITS_KEY: ",".join(sorted(str(u) for u in data_units)),
        START_KEY: f"{start:%Y-%m-%d}",
        END_KEY: f"{end:%Y-%m-%d}",
    }


def apply_calendar(records: UnitRecords, calendar: NodeCalendar) -> UnitRecords:
    """``records`` on exactly the calendar's (unit, day) grid: rows outside dropped, days without a row zero.

    The dropped and filled rows are logged as counts only.
    """
    frame = records.frame
    counts = records.count_columns
    indexed = frame.set_index([UNIT, DATE])[counts]
    grid = calendar.grid()
    inside = indexed.index.isin(grid)
    dropped = int((~inside).sum())
    filled = int((~grid.isin(indexed.index)).sum())
    out = indexed[inside].reindex(grid, fill_value=0).astype("int64").reset_index()
    out = out[[DATE, UNIT, *counts]].sort_values([UNIT, DATE]).reset_index(drop=True)
    out[UNIT] = out[UNIT].astype(str)
    if filled and records.shape != "encounters":
        # A file of daily counts without a row for a declared day: released as 0 (the days are the calendar's,
        # never the file's rows); if the export is only late, calendar-end should not run past it.
        logger.warning(
            "calendar: %d declared unit-day(s) have no row in the daily-count file and count as 0 (released once, "
            "as 0); if the export is late, set calendar-end to its last complete day (%d row(s) outside the "
            "calendar left out)",
            filled,
            dropped,
        )
    elif dropped or filled:
        logger.info(
            "calendar: %d unit-day row(s) outside it left out, %d day(s) without a row set to 0", dropped, filled
        )
    return UnitRecords(out, records.frequency, records.source, records.shape)
