"""Forecast accountability on real arrays: which forecast scores which week, the scores, and the drift alarm.

The true counts are a generated hospital's (medalloc_core.synthetic); the forecasts are the
kind a node logs each week — a seasonal-naive median (the same weekday a week earlier) with a
band from the last weeks' errors — so the weekly WAPE varies the way a real one does, and the
alarm is tested against that natural variation, not against a constant.
"""

from __future__ import annotations

import math
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from medalloc_core.contract import DATE, UNIT
from medalloc_core.forecast.accountability import (
    DriftRule,
    account,
    run_for_week,
    score_week,
    week_bounds,
)
from medalloc_core.forecast.history import ForecastRun
from medalloc_core.synthetic import RegionConfig, generate_region

LEVELS = (0.1, 0.5, 0.9)
HORIZON = 14


@pytest.fixture(scope="module")
def actuals() -> pd.DataFrame:
    """A generated hospital's true daily counts (date, unit, admissions, census, ...)."""
    config = RegionConfig(
        hospitals=1,
        days=220,
        seed=11,
        min_beds=200,
        max_beds=300,
        short_history_fraction=0.0,
        noisy_fraction=0.0,
        specialty_centres=0,
        warmup_days=30,
    )
    frame = generate_region(config).hospitals[0].daily
    return frame.assign(**{DATE: pd.to_datetime(frame[DATE])})


def seasonal_naive_run(
    actuals: pd.DataFrame, origin: date, *, scale: float = 1.0, version: str = "aaaaaaaaaaaa"
) -> ForecastRun:
    """What a simple forecaster would have logged at ``origin``: the median repeats the last week (times
    ``scale``), the band is the median ± the 10th-90th percentile of the last 4 weeks' weekly changes."""
    units = tuple(sorted(actuals[UNIT].astype(str).unique()))
    targets = ("admissions", "census")
    dates = tuple(origin + timedelta(days=d) for d in range(1, HORIZON + 1))
    values = np.zeros((len(units), len(targets), HORIZON, len(LEVELS)))
    for u, unit in enumerate(units):
        series = actuals[actuals[UNIT] == unit].set_index(DATE).sort_index()
        past = series[series.index <= pd.Timestamp(origin)]
        for t, target in enumerate(targets):
            y = past[target].to_numpy(dtype=float)
            last_week = y[-7:]
            changes = y[-28:] - y[-35:-7]
            lo, hi = np.quantile(changes, [0.1, 0.9])
            median = np.tile(last_week, 2) * scale
            values[u, t, :, 0] = np.maximum(median + min(lo, 0.0), 0.0)
            values[u, t, :, 1] = median
            values[u, t, :, 2] = median + max(hi, 0.0)
    return ForecastRun("2026-01-01T00:00:00+00:00", origin, version, "H000", units, targets, LEVELS, dates, values)


def lookup(actuals: pd.DataFrame) -> dict[tuple[str, str, date], float]:
    out = {}
    for row in actuals.to_dict("records"):
        for target in ("admissions", "census"):
            out[(str(row[UNIT]), target, pd.Timestamp(row[DATE]).date())] = float(row[target])
    return out


def test_scores_are_the_metrics_of_the_arrays(actuals: pd.DataFrame) -> None:
    last = actuals[DATE].max().date()
    start, end = week_bounds(last, 0)
    run = seasonal_naive_run(actuals, start - timedelta(days=1))
    scores = score_week(run, lookup(actuals), start, end)
    assert {(s.unit, s.target) for s in scores} == {(u, t) for u in run.units for t in run.targets}
    for s in scores:
        u, t = run.units.index(s.unit), run.targets.index(s.target)
        y = (
            actuals[(actuals[UNIT] == s.unit) & (actuals[DATE] >= pd.Timestamp(start))]
            .sort_values(DATE)[s.target]
            .to_numpy(dtype=float)
        )
        q = run.values[u, t, :7, :]
        assert s.days == 7 and s.week_start == start and s.week_end == end
        assert s.wape == pytest.approx(np.abs(y - q[:, 1]).sum() / np.abs(y).sum())
        e = y[:, None] - q
        tau = np.array(LEVELS)
        assert s.pinball == pytest.approx(np.maximum(tau * e, (tau - 1) * e).mean())
        assert s.coverage == pytest.approx(((y >= q[:, 0]) & (y <= q[:, 2])).mean())
        assert s.band == "P10-P90"


def test_the_week_is_scored_on_the_forecast_made_before_it(actuals: pd.DataFrame) -> None:
    last = actuals[DATE].max().date()
    start, end = week_bounds(last, 0)
    before = seasonal_naive_run(actuals, start - timedelta(days=1), version="before000000")
    older = seasonal_naive_run(actuals, start - timedelta(days=8), version="older0000000")
    after = seasonal_naive_run(actuals, last, version="after0000000")  # made with the week's own data
    assert run_for_week([before, after, older], start, end) is before
    assert run_for_week([older, after], start, end) is older
    assert run_for_week([after], start, end) is None
    # the same origin twice: the later entry in the log (a rerun) wins
    rerun = seasonal_naive_run(actuals, start - timedelta(days=1), version="rerun0000000")
    assert run_for_week([before, rerun], start, end) is rerun


def weekly_runs(actuals: pd.DataFrame, weeks: int, *, last_scale: float = 1.0) -> list[ForecastRun]:
    last = actuals[DATE].max().date()
    runs = []
    for k in range(weeks, -1, -1):
        start, _ = week_bounds(last, k)
        runs.append(seasonal_naive_run(actuals, start - timedelta(days=1), scale=last_scale if k == 0 else 1.0))
    return runs


def test_a_forecast_gone_wrong_raises_the_drift_alarm(actuals: pd.DataFrame) -> None:
    good = account(weekly_runs(actuals, 12), actuals)
    assert good.scores and len({s.week_start for s in good.history}) == 13
    assert not good.alarms, [d.sentence() for d in good.alarms]
    assert {d.state for d in good.drift} <= {"within", "better"}
    # the same history, but last week's forecast doubled (a model gone wrong, a unit reorganised)
    bad = account(weekly_runs(actuals, 12, last_scale=2.0), actuals)
    census = {d.unit: d for d in bad.drift if d.target == "census"}
    assert census and all(d.alarm for d in census.values()), [d.sentence() for d in census.values()]
    for d in census.values():
        assert d.wape > d.high and d.earlier_weeks == 12
        assert "above its usual range" in d.sentence()


def test_the_usual_range_is_the_documented_rule() -> None:
    rule = DriftRule()
    earlier = [0.10, 0.12, 0.11, 0.09, 0.13, 0.10, 0.50]  # one bad week does not widen the range
    low, high = rule.usual_range(earlier) or (math.nan, math.nan)
    median = float(np.median(earlier))
    mad = float(np.median(np.abs(np.array(earlier) - median)))
    assert high == pytest.approx(median + max(3 * 1.4826 * mad, 0.05))
    assert low == pytest.approx(median - max(3 * 1.4826 * mad, 0.05))
    assert high < 0.2
    assert rule.usual_range([0.1, 0.1, 0.1]) is None  # fewer than 4 earlier weeks
    assert rule.usual_range([0.1] * 5) == pytest.approx((0.05, 0.15))  # the floor when every week is the same
    with pytest.raises(ValueError, match="min_history"):
        DriftRule(min_history=0)


def test_too_little_history_says_so_and_never_alarms(actuals: pd.DataFrame) -> None:
    acc = account(weekly_runs(actuals, 2, last_scale=3.0), actuals)
    assert acc.scores and not acc.alarms
    assert {d.state for d in acc.drift} == {"not enough history"}
    assert "needs more history" in acc.drift[0].sentence()


def test_no_forecast_before_the_week_scores_nothing(actuals: pd.DataFrame) -> None:
    last = actuals[DATE].max().date()
    acc = account([seasonal_naive_run(actuals, last)], actuals)
    assert acc.week_end == last and acc.scores == [] and acc.drift == []
    empty = account([], actuals.iloc[0:0])
    assert empty.week_start is None and empty.scores == []


def test_missing_true_counts_are_left_out_not_zero(actuals: pd.DataFrame) -> None:
    last = actuals[DATE].max().date()
    start, end = week_bounds(last, 0)
    run = seasonal_naive_run(actuals, start - timedelta(days=1))
    gap = actuals[
        ~(
            (actuals[DATE] >= pd.Timestamp(start + timedelta(days=2)))
            & (actuals[DATE] <= pd.Timestamp(start + timedelta(days=4)))
        )
    ]
    scores = account([run], gap).scores
    assert scores and all(s.days == 4 for s in scores)
