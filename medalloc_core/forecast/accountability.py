"""Forecast accountability: how last week's forecasts did against what happened, and a drift alarm.

Each week the node scores the forecast it had *before* the week began against its own true
counts for that week — WAPE of the median, pinball loss over the quantile levels, and the share
of days inside the P10–P90 band — per unit and target. Everything here is local: the forecasts
(from the node's forecast log, ``medalloc_core.forecast.history``) and the true counts never
leave the node, and nothing computed here is sent.

Which forecast scores which week
    Weeks are the seven-day blocks ending at the last day with true counts (``last``): week 0 is
    ``last - 6 .. last``, week k is seven days earlier still. A week is scored on the newest run
    in the log whose origin (last day of data) lies before the week's first day: the forecast the
    planner had on the week's first morning. Its forecast days inside the week that have a true
    count are the days scored.

The drift alarm (:class:`DriftRule`)
    The node's own history defines "usual": the WAPE of the same unit and target in up to
    ``history_weeks`` (12) earlier weeks, recomputed each time from the log and the true counts.
    With at least ``min_history`` (4) earlier weekly scores, the usual range is
    ``median ± max(spread · 1.4826 · MAD, floor)`` (spread 3, floor 0.05 WAPE points; 1.4826 · MAD
    estimates a standard deviation robustly, so one bad week in the history does not widen it).
    The alarm goes off when this week's WAPE is above the range: accuracy is worse than this
    node's forecasts usually are. A WAPE below the range is shown as "better than usual", never
    as an alarm. With fewer earlier weeks there is no alarm, and the page says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np
import pandas as pd

from medalloc_core.contract import DATE, UNIT
from medalloc_core.forecast.history import ForecastRun
from medalloc_core.forecast.metrics import interval_coverage, pinball_loss, wape

WEEK_DAYS = 7
MAD_TO_SD = 1.4826  # MAD x this estimates the standard deviation of normal errors


@dataclass(frozen=True)
class DriftRule:
    """When accuracy has left its usual range (see the module docstring for the rule in words)."""

    history_weeks: int = 12  # the usual range is read from up to this many earlier weeks (about a quarter)
    min_history: int = 4  # fewer earlier weekly scores than this: no alarm, "not enough history"
    spread: float = 3.0  # robust standard deviations between the median and the range's edge
    floor: float = 0.05  # WAPE points: the range is never narrower than this on either side

    def __post_init__(self) -> None:
        if not 1 <= self.min_history <= self.history_weeks <= 520:
            raise ValueError(
                f"need 1 <= min_history <= history_weeks <= 520, got {self.min_history}, {self.history_weeks}"
            )
        if not (self.spread > 0 and self.floor >= 0 and math.isfinite(self.spread + self.floor)):
            raise ValueError(f"spread must be > 0 and floor >= 0, got {self.spread}, {self.floor}")

    def usual_range(self, earlier: Sequence[float]) -> tuple[float, float] | None:
        """(low, high) of the usual WAPE from earlier weekly WAPEs; ``None`` with too few of them."""
        values = np.asarray([v for v in earlier if math.isfinite(v)], dtype=float)[: self.history_weeks]
        if values.size < self.min_history:
            return None
        median = float(np.median(values))
        width = max(self.spread * MAD_TO_SD * float(np.median(np.abs(values - median))), self.floor)
        return median - width, median + width


@dataclass(frozen=True)
class WeekScore:
    """One unit and target, one week: the forecast that was used and how it did."""

    unit: str
    target: str
    week_start: date
    week_end: date
    origin: date  # the last day of data the scored forecast was made from
    model_version: str
    days: int  # days scored (forecast and true count both present)
    wape: float  # sum |actual - P50| / sum |actual| (NaN when the week's actuals are all 0)
    pinball: float  # mean pinball loss over the forecast's levels, in beds / patients
    coverage: float  # share of days inside the band [band_low, band_high]
    band: str  # e.g. "P10-P90"
    actual_mean: float
    median_mean: float


@dataclass(frozen=True)
class Drift:
    """This week's WAPE of one unit and target against its usual range."""

    unit: str
    target: str
    wape: float
    earlier_weeks: int  # earlier weekly WAPEs the range was read from
    low: float  # NaN when there is not enough history
    high: float
    state: str  # "alarm" (worse than usual), "within", "better" (than usual), "not enough history", "no score"

    @property
    def alarm(self) -> bool:
        return self.state == "alarm"

    def sentence(self) -> str:
        """The state in plain words, for the page."""
        if self.state == "alarm":
            return (
                f"{self.unit} {self.target}: WAPE {self.wape:.1%} is above its usual range "
                f"({max(self.low, 0):.1%}–{self.high:.1%} over {self.earlier_weeks} earlier weeks): "
                "the forecast is doing worse than it usually does; plan with a wider margin and tell the coordinator"
            )
        if self.state == "better":
            return f"{self.unit} {self.target}: WAPE {self.wape:.1%} is better than its usual range"
        if self.state == "within":
            return f"{self.unit} {self.target}: WAPE {self.wape:.1%} is within its usual range"
        if self.state == "no score":
            return f"{self.unit} {self.target}: no WAPE this week (no forecast or no true counts to score)"
        return (
            f"{self.unit} {self.target}: {self.earlier_weeks} earlier weekly score(s); the alarm needs "
            "more history before it can say what is usual"
        )


@dataclass(frozen=True)
class Accountability:
    """Last week's scores, the drift states and the weekly history they came from."""

    week_start: date | None
    week_end: date | None
    scores: list[WeekScore]  # week 0 (the last seven days with true counts)
    drift: list[Drift]
    history: list[WeekScore] = field(default_factory=list)  # every scored week, newest first
    rule: DriftRule = DriftRule()

    @property
    def alarms(self) -> list[Drift]:
        return [d for d in self.drift if d.alarm]


def week_bounds(last: date, k: int) -> tuple[date, date]:
    """The k-th seven-day block ending at ``last`` (k = 0: the last seven days)."""
    end = last - timedelta(days=WEEK_DAYS * k)
    return end - timedelta(days=WEEK_DAYS - 1), end


def run_for_week(runs: Sequence[ForecastRun], start: date, end: date) -> ForecastRun | None:
    """The forecast the planner had when the week began: the newest run (by origin, then by its place
    in the log) made from data ending before ``start`` that forecasts at least one day of the week."""
    best: tuple[date, int] | None = None
    chosen = None
    for i, run in enumerate(runs):
        if run.origin >= start or not any(start <= d <= end for d in run.dates):
            continue
        key = (run.origin, i)
        if best is None or key > best:
            best, chosen = key, run
    return chosen


def _band(levels: Sequence[float]) -> tuple[int, int, str]:
    """Indices and name of the P10-P90 band when the forecast has those levels, else its outer levels."""
    lv = list(levels)
    lo = next((i for i, q in enumerate(lv) if abs(q - 0.1) < 1e-9), 0)
    hi = next((i for i, q in enumerate(lv) if abs(q - 0.9) < 1e-9), len(lv) - 1)
    return lo, hi, f"P{100 * lv[lo]:g}-P{100 * lv[hi]:g}"


def _median_index(levels: Sequence[float]) -> int:
    return int(np.argmin([abs(q - 0.5) for q in levels]))


def _actual_lookup(actuals: pd.DataFrame) -> dict[tuple[str, str, date], float]:
    frame = actuals.assign(**{UNIT: actuals[UNIT].astype(str), DATE: pd.to_datetime(actuals[DATE]).dt.date})
    out: dict[tuple[str, str, date], float] = {}
    for column in frame.columns:
        if column in (UNIT, DATE):
            continue
        values = pd.to_numeric(frame[column], errors="coerce")
        for unit, day, value in zip(frame[UNIT], frame[DATE], values, strict=True):
            if pd.notna(value):
                out[(unit, column, day)] = float(value)
    return out


def score_week(
    run: ForecastRun, actuals: dict[tuple[str, str, date], float], start: date, end: date
) -> list[WeekScore]:
    """Per unit and target of ``run``: its forecast for the days of [start, end] against the true counts."""
    lo, hi, band = _band(run.levels)
    mid = _median_index(run.levels)
    days = [(j, d) for j, d in enumerate(run.dates) if start <= d <= end]
    scores = []
    for u, unit in enumerate(run.units):
        for t, target in enumerate(run.targets):
            seen = [(j, actuals[(unit, target, d)]) for j, d in days if (unit, target, d) in actuals]
            if not seen:
                continue
            index = [j for j, _ in seen]
            y = np.array([[v for _, v in seen]])  # (1, D)
            q = run.values[u, t, index, :][None, ...]  # (1, D, K)
            scores.append(
                WeekScore(
                    unit=unit,
                    target=target,
                    week_start=start,
                    week_end=end,
                    origin=run.origin,
                    model_version=run.model_version,
                    days=len(seen),
                    wape=float(wape(y, q[..., mid])),
                    pinball=float(pinball_loss(y, q, quantiles=run.levels)),
                    coverage=float(interval_coverage(y, q[..., lo], q[..., hi])),
                    band=band,
                    actual_mean=float(y.mean()),
                    median_mean=float(q[..., mid].mean()),
                )
            )
    return scores


def last_actual_day(actuals: pd.DataFrame) -> date | None:
    """The last day with true counts in ``actuals`` (``date`` column), ``None`` when empty."""
    if actuals.empty:
        return None
    return pd.to_datetime(actuals[DATE]).max().date()


def account(
    runs: Sequence[ForecastRun],
    actuals: pd.DataFrame,
    *,
    last: date | None = None,
    rule: DriftRule = DriftRule(),
) -> Accountability:
    """Score the week ending at ``last`` (default: the last day of ``actuals``) and the weeks before it,
    and set each unit and target's drift state.

    Parameters
    ----------
    runs
        The node's forecast log, oldest first.
    actuals
        The node's true daily counts: columns ``date``, ``unit`` and one column per target
        (``census``, ``admissions``, ...), as ``UnitRecords.frame``.
    last
        The last day of the week to account for (default: the last day in ``actuals``).
    rule
        What "usual" means (default :class:`DriftRule`).
    """
    last = last or last_actual_day(actuals)
    if last is None:
        return Accountability(None, None, [], [], [], rule)
    lookup = _actual_lookup(actuals)
    history: list[WeekScore] = []
    for k in range(rule.history_weeks + 1):
        start, end = week_bounds(last, k)
        run = run_for_week(runs, start, end)
        if run is not None:
            history.extend(score_week(run, lookup, start, end))
    start, end = week_bounds(last, 0)
    current = [s for s in history if s.week_start == start]
    drift = []
    keys = sorted({(s.unit, s.target) for s in history})
    for unit, target in keys:
        this = next((s for s in current if (s.unit, s.target) == (unit, target)), None)
        earlier = [s.wape for s in history if (s.unit, s.target) == (unit, target) and s.week_start < start]
        finite = [v for v in earlier if math.isfinite(v)]
        usual = rule.usual_range(finite)
        low, high = usual if usual is not None else (math.nan, math.nan)
        if this is None or not math.isfinite(this.wape):
            state = "no score"
        elif usual is None:
            state = "not enough history"
        elif this.wape > high:
            state = "alarm"
        elif this.wape < low:
            state = "better"
        else:
            state = "within"
        drift.append(
            Drift(
                unit=unit,
                target=target,
                wape=this.wape if this is not None else math.nan,
                earlier_weeks=min(len(finite), rule.history_weeks),
                low=low,
                high=high,
                state=state,
            )
        )
    return Accountability(start, end, current, drift, history, rule)


__all__ = [
    "Accountability",
    "Drift",
    "DriftRule",
    "WeekScore",
    "account",
    "last_actual_day",
    "run_for_week",
    "score_week",
    "week_bounds",
]
