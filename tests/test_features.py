"""Windows, split, scaling and covariates of medalloc_core.forecast.features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medalloc_core.contract import ADMISSIONS, CENSUS, DATE, UNIT, Frequency, UnitRecords
from medalloc_core.forecast.features import WindowSpec, calendar_covariates, forecast_inputs, prepare_hospital
from tests.forecast_fixtures import records

DAYS = 400


@pytest.fixture(scope="module")
def recs() -> UnitRecords:
    return records(days=DAYS)


@pytest.fixture(scope="module")
def ds(recs):
    return prepare_hospital(recs, WindowSpec())


def _raw(recs: UnitRecords, unit: str) -> pd.DataFrame:
    return recs.frame[recs.frame[UNIT] == unit].set_index(DATE)


def test_daily_defaults_and_shapes(ds):
    spec = ds.spec
    assert (spec.history, spec.horizon, spec.val_periods, spec.test_periods) == (56, 14, 56, 56)
    assert ds.feature_names == (
        "admissions_scaled",
        "census_scaled",
        "dow_sin",
        "dow_cos",
        "year_sin",
        "year_cos",
        "was_missing",
    )
    # per unit: train windows = (400 - 112) - 56 - 14 + 1 = 219; val = test = 56 - 14 + 1 = 43
    assert len(ds.train) == 2 * 219 and len(ds.val) == 2 * 43 and len(ds.test) == 2 * 43
    assert tuple(ds.train.X.shape) == (438, 56, 7) and tuple(ds.train.y.shape) == (438, 14, 2)
    assert ds.train.X.dtype == ds.train.y.dtype == torch.float32


def test_targets_never_cross_split_boundaries(recs, ds):
    for unit in recs.units:
        last = _raw(recs, unit).index.max()
        test_start = last - pd.Timedelta(days=55)
        val_start = test_start - pd.Timedelta(days=56)
        for split, lo, hi in [
            (ds.train, None, val_start),
            (ds.val, val_start, test_start),
            (ds.test, test_start, last + pd.Timedelta(days=1)),
        ]:
            dates = split.target_dates(Frequency.DAILY)[split.units == unit]
            assert len(dates) > 0
            assert (dates < np.datetime64(hi)).all()
            if lo is not None:
                assert (dates >= np.datetime64(lo)).all()
        # the last training target is the day before validation starts: no period is wasted either
        train_dates = ds.train.target_dates(Frequency.DAILY)[ds.train.units == unit]
        assert train_dates.max() == np.datetime64(val_start - pd.Timedelta(days=1))


def test_window_contents_match_raw_values(recs, ds):
    i = 100  # an arbitrary training window
    unit, start = ds.train.units[i], pd.Timestamp(ds.train.target_start[i])
    raw = _raw(recs, unit)[[ADMISSIONS, CENSUS]].astype(float)
    mean, scale = ds.scaler.mean[unit], ds.scaler.scale[unit]
    hist = raw.loc[start - pd.Timedelta(days=56) : start - pd.Timedelta(days=1)].to_numpy()
    fut = raw.loc[start : start + pd.Timedelta(days=13)].to_numpy()
    np.testing.assert_allclose(ds.train.X[i, :, :2].numpy(), (hist - mean) / scale, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ds.train.y[i].numpy(), (fut - mean) / scale, rtol=1e-5, atol=1e-5)
    # day-of-week channel of the last history day
    dow = (start - pd.Timedelta(days=1)).day_of_week
    assert ds.train.X[i, -1, 2].item() == pytest.approx(np.sin(2 * np.pi * dow / 7), abs=1e-6)
    # back to patients/beds exactly
    back = ds.scaler.inverse_transform(ds.train.y[i : i + 1].numpy(), [unit])
    np.testing.assert_allclose(back[0], fut, atol=1e-3)


def test_scaler_uses_training_period_only(recs, ds):
    for unit in recs.units:
        raw = _raw(recs, unit)[[ADMISSIONS, CENSUS]].astype(float)
        train_part = raw.iloc[: len(raw) - 112]
        np.testing.assert_allclose(ds.scaler.mean[unit], train_part.mean().to_numpy())
        np.testing.assert_allclose(ds.scaler.scale[unit], np.maximum(train_part.std(ddof=0).to_numpy(), 1.0))
    # change every validation/test value: the scaler and the training windows must not move
    frame = recs.frame.copy()
    late = frame[DATE] > frame[DATE].max() - pd.Timedelta(days=112)
    frame.loc[late, [ADMISSIONS, CENSUS]] = frame.loc[late, [ADMISSIONS, CENSUS]] * 100 + 7
    changed = prepare_hospital(UnitRecords(frame, recs.frequency, recs.source, recs.shape), WindowSpec())
    for unit in recs.units:
        np.testing.assert_array_equal(changed.scaler.mean[unit], ds.scaler.mean[unit])
        np.testing.assert_array_equal(changed.scaler.scale[unit], ds.scaler.scale[unit])
    assert np.array_equal(changed.train.X.numpy(), ds.train.X.numpy())
    assert np.array_equal(changed.train.y.numpy(), ds.train.y.numpy())
    assert not np.array_equal(changed.test.y.numpy(), ds.test.y.numpy())


def test_scale_floor_keeps_constant_series_finite():
    recs = records(days=300)
    frame = recs.frame.copy()
    frame.loc[frame[UNIT] == "icu", CENSUS] = 4  # a full 4-bed unit: std 0
    d = prepare_hospital(UnitRecords(frame, recs.frequency, recs.source, recs.shape), WindowSpec())
    assert d.scaler.scale["icu"][1] == 1.0
    assert np.isfinite(d.train.X.numpy()).all()


def test_gaps_are_interpolated_flagged_and_never_shift_dates():
    recs = records(days=300, drop=[100, 101, 102])  # days 100..102 missing in every unit
    d = prepare_hospital(recs, WindowSpec())
    gap = pd.date_range("2023-01-01", periods=300)[100:103]
    before, after = pd.Timestamp("2023-04-10"), pd.Timestamp("2023-04-14")  # days 99 and 103
    for unit in recs.units:
        raw = _raw(recs, unit)
        # a window whose history spans the gap: was_missing is 1 on exactly the gap days
        w2 = np.flatnonzero(
            (d.train.units == unit) & (d.train.target_start == np.datetime64(pd.Timestamp("2023-05-01")))
        )[0]
        hist_dates = pd.date_range(end=pd.Timestamp("2023-04-30"), periods=56)
        flags = d.train.X[w2, :, -1].numpy()
        np.testing.assert_array_equal(flags, hist_dates.isin(gap).astype(np.float32))
        # linear interpolation between day 99 and day 103 for the middle missing day (101)
        mid = hist_dates.get_loc(gap[1])
        expect = (raw.loc[before, CENSUS] + raw.loc[after, CENSUS]) / 2
        got = d.scaler.inverse_transform(d.train.X[w2 : w2 + 1, mid : mid + 1, :2].numpy(), [unit])[0, 0, 1]
        assert got == pytest.approx(expect, abs=1e-3)
        # no window has a missing day among its targets
        tdates = d.train.target_dates(Frequency.DAILY)[d.train.units == unit]
        assert not np.isin(tdates, gap.to_numpy()).any()


def test_missing_target_and_short_series_are_explained():
    recs = records(days=300)
    with pytest.raises(ValueError, match="capacity"):
        prepare_hospital(recs, WindowSpec(targets=("capacity",)))
    short = records(days=150)
    with pytest.raises(ValueError, match="needs at least 182 periods"):
        prepare_hospital(short, WindowSpec())
    with pytest.raises(ValueError, match="day_of_week"):
        WindowSpec(day_of_week="monday")


def test_onehot_and_holiday_channels():
    dates = pd.date_range("2024-12-23", periods=7)
    spec = WindowSpec(day_of_week="onehot", holidays=("2024-12-25",))
    cov = calendar_covariates(dates, spec, Frequency.DAILY)
    names = spec.covariate_names(Frequency.DAILY)
    assert cov.shape == (7, 10) and names[-2:] == ("holiday", "was_missing")
    np.testing.assert_array_equal(cov[:, :7], np.eye(7, dtype=np.float32))  # 2024-12-23 is a Monday
    np.testing.assert_array_equal(cov[:, names.index("holiday")], [0, 0, 1, 0, 0, 0, 0])
    weekly = calendar_covariates(pd.DatetimeIndex(["2024-12-16", "2024-12-23"]), spec, Frequency.WEEKLY)
    np.testing.assert_array_equal(weekly[:, -1], [0, 1])  # the week of the 25th is flagged


def test_weekly_defaults():
    daily = records(days=7 * 120).frame
    daily["week"] = daily[DATE] - pd.to_timedelta(daily[DATE].dt.day_of_week, unit="D")
    weekly = daily.groupby([UNIT, "week"], as_index=False).agg(admissions=(ADMISSIONS, "sum"), census=(CENSUS, "last"))
    weekly = weekly.rename(columns={"week": DATE})
    weekly = weekly[weekly[DATE] > weekly[DATE].min()]  # drop the partial first week
    recs = UnitRecords(weekly, Frequency.WEEKLY, Path("w.csv"), "daily")
    d = prepare_hospital(recs, WindowSpec())
    assert (d.spec.history, d.spec.horizon, d.spec.val_periods, d.spec.test_periods) == (26, 4, 13, 13)
    assert d.feature_names == ("admissions_scaled", "census_scaled", "year_sin", "year_cos", "was_missing")
    n = weekly.groupby(UNIT).size().iloc[0]
    assert len(d.test) == 2 * (13 - 4 + 1) and len(d.train) == 2 * (n - 26 - 26 - 4 + 1)
    steps = np.diff(d.test.target_dates(Frequency.WEEKLY)[0]).astype("timedelta64[D]").astype(int)
    assert (steps == 7).all()


def test_forecast_inputs_are_the_last_window(recs, ds):
    fut = forecast_inputs(recs, ds)
    assert tuple(fut.X.shape) == (2, 56, 7)
    for k, unit in enumerate(fut.units):
        raw = _raw(recs, unit)[[ADMISSIONS, CENSUS]].astype(float)
        np.testing.assert_allclose(
            fut.X[k, :, :2].numpy(), ds.scaler.transform(raw.to_numpy()[-56:], unit), rtol=1e-5, atol=1e-5
        )
        assert fut.target_start[k] == np.datetime64(raw.index.max() + pd.Timedelta(days=1))
        # the last test window's history ends 14 days before the data does
        assert np.array_equal(fut.X[k, :-14].numpy(), ds.test.X[ds.test.units == unit][-1, 14:].numpy())


def test_gap_across_the_validation_boundary_does_not_leak_into_training():
    # 300 days: validation starts at day 188; days 170..199 are missing (a gap longer than H
    # that spans the boundary). Interpolating across it would put day-200 (validation) values
    # into the history of training windows.
    recs = records(days=300, drop=list(range(170, 200)))
    base = prepare_hospital(recs, WindowSpec())
    frame = recs.frame.copy()
    late = frame[DATE] >= pd.Timestamp("2023-01-01") + pd.Timedelta(days=188)
    frame.loc[late, [ADMISSIONS, CENSUS]] = frame.loc[late, [ADMISSIONS, CENSUS]] * 50 + 3
    changed = prepare_hospital(UnitRecords(frame, recs.frequency, recs.source, recs.shape), WindowSpec())
    assert len(base.train) > 0
    assert np.array_equal(changed.train.X.numpy(), base.train.X.numpy())
    # and no training target lies in the gap (windows with a filled target are dropped)
    gap = (pd.Timestamp("2023-01-01") + pd.to_timedelta(np.arange(170, 200), unit="D")).to_numpy()
    assert not np.isin(base.train.target_dates(Frequency.DAILY), gap).any()


def test_window_scaling_uses_each_windows_own_inputs_only(recs):
    spec = WindowSpec(history=28, horizon=14, scaling="window")
    ds = prepare_hospital(recs, spec)
    assert ds.scaler is None  # nothing is fitted on the training periods
    assert ds.feature_names[:6] == (
        "admissions_scaled",
        "census_scaled",
        "admissions_profile",
        "census_profile",
        "admissions_log_level",
        "census_log_level",
    )
    w = ds.train
    i = len(w) // 2
    unit, start = w.units[i], pd.Timestamp(w.target_start[i])
    raw = _raw(recs, unit)[[ADMISSIONS, CENSUS]].astype(float)
    before = raw.loc[start - pd.Timedelta(days=28) : start - pd.Timedelta(days=1)].to_numpy()  # the 28 input days
    after = raw.loc[start : start + pd.Timedelta(days=13)].to_numpy()
    loc = before[-7:].mean(axis=0)
    scale = np.maximum(np.abs(before[7:] - before[:-7]).mean(axis=0), 1.0)
    np.testing.assert_allclose(w.loc[i], loc)
    np.testing.assert_allclose(w.scale[i], scale)
    np.testing.assert_allclose(w.X[i, :, :2].numpy(), (before - loc) / scale, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(w.y[i].numpy(), (after - loc) / scale, rtol=1e-5, atol=1e-5)
    # back to patients/beds with the window's own statistics
    np.testing.assert_allclose(ds.to_original(w.y[i : i + 1].numpy(), w.select(np.array([i])))[0], after, rtol=1e-5)
    # the profile channel: the weekday pattern of up to 26 whole weeks before the origin, in window units
    past = raw.loc[: start - pd.Timedelta(days=1)].to_numpy()
    weeks = min(26, len(past) // 7)
    block = past[len(past) - 7 * weeks :].reshape(weeks, 7, 2)
    weekly = (block - block.mean(axis=1, keepdims=True)).mean(axis=0) / scale
    np.testing.assert_allclose(w.X[i, -7:, 2:4].numpy(), weekly, rtol=1e-4, atol=1e-5)


def test_window_scaling_is_untouched_by_a_change_outside_the_window(recs):
    """A record changes only the windows that contain it (what per-window clipping and source release assume)."""
    spec = WindowSpec(history=28, horizon=14, scaling="window", year_position=False)
    ds = prepare_hospital(recs, spec)
    frame = recs.frame.copy()
    first = frame[DATE].min()
    frame.loc[frame[DATE] == first, CENSUS] += 500  # one day, at the very start
    changed = prepare_hospital(UnitRecords(frame, recs.frequency, recs.source, recs.shape), spec)
    late = pd.DatetimeIndex(ds.train.target_start) > first + pd.Timedelta(days=7 * 27 + 28)
    assert late.any()
    torch.testing.assert_close(ds.train.X[late], changed.train.X[late])
    torch.testing.assert_close(ds.train.y[late], changed.train.y[late])


def test_window_spec_wire_form_keeps_the_scaling():
    spec = WindowSpec(history=28, horizon=14, val_periods=28, test_periods=28, scaling="window")
    assert WindowSpec.from_dict(spec.to_dict()) == spec
    series = WindowSpec(history=28, horizon=14, val_periods=28, test_periods=28)
    assert "scaling" not in series.to_dict()  # files of series-scaled models are unchanged
    with pytest.raises(ValueError, match="scaling"):
        WindowSpec.from_dict(series.to_dict() | {"scaling": "global"})
