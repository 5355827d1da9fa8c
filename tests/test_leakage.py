"""Issue 19: no input lets a held-out day reach a training window, and the region at day t reads releases before t.

Every input the forecaster reads is poisoned on the held-out days (validation and test) with a huge
value: the counts, the region's released totals, the calendar (holidays declared only there), and
days missing right at the boundary (so gap filling is exercised). The training windows — inputs
``X`` (scaled counts, weekly profile, level, year-ago, weekly means, region, calendar), targets
``y`` and their scaling ``loc`` / ``scale`` — must stay bit for bit the same; the held-out windows
must change (so the poison did reach the data).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from medalloc.server.region import RegionCollector
from medalloc_core.contract import Frequency, UnitRecords
from medalloc_core.forecast.features import (
    REGION_PREFIX,
    WindowSpec,
    forecast_inputs,
    prepare_hospital,
    region_channel,
)
from medalloc_core.forecast.region import daily_totals, region_totals, totals_record, with_region

DAYS, VAL, TEST, L, H = 560, 56, 56, 28, 14
POISON = 1e6
TARGETS = ("admissions", "census")


def _records(*, drop_boundary: bool = True) -> UnitRecords:
    rng = np.random.default_rng(19)
    dates = pd.date_range("2023-01-02", periods=DAYS)
    rows = []
    for unit, level in (("icu", 8.0), ("ward", 30.0)):
        season = 1 + 0.3 * np.sin(2 * np.pi * np.arange(DAYS) / 365) + 0.1 * (dates.day_of_week < 5)
        frame = pd.DataFrame(
            {
                "date": dates,
                "unit": unit,
                "admissions": rng.poisson(level * season).astype(float),
                "census": rng.poisson(4 * level * season).astype(float),
                REGION_PREFIX + "admissions": rng.poisson(20 * level * season).astype(float),
                REGION_PREFIX + "census": rng.poisson(80 * level * season).astype(float),
            }
        )
        if drop_boundary:  # the last training day and the first held-out day are missing: filled, never borrowed
            boundary = DAYS - VAL - TEST
            frame = frame.drop(index=[boundary - 1, boundary])
        rows.append(frame)
    return UnitRecords(pd.concat(rows, ignore_index=True), Frequency.DAILY, "leak-test", "daily")


def _poisoned(records: UnitRecords, first: pd.Timestamp, columns: tuple[str, ...]) -> UnitRecords:
    frame = records.frame.copy()
    frame.loc[frame["date"] >= first, list(columns)] = POISON
    return UnitRecords(frame, records.frequency, records.source, records.shape)


def _spec(holidays: tuple[str, ...] = (), **kwargs: object) -> WindowSpec:
    defaults: dict[str, object] = {
        "history": L,
        "horizon": H,
        "targets": TARGETS,
        "val_periods": VAL,
        "test_periods": TEST,
        "scaling": "window",
        "context": ("year_ago", "weeks", "region"),
        "holidays": holidays,
    }
    return WindowSpec(**(defaults | kwargs))  # type: ignore[arg-type]


def _same(a, b) -> None:
    assert torch.equal(a.X, b.X) and torch.equal(a.y, b.y)
    assert np.array_equal(a.target_start, b.target_start)
    if a.loc is not None:
        assert np.array_equal(a.loc, b.loc) and np.array_equal(a.scale, b.scale)


FIRST_HELD_OUT = pd.Timestamp("2023-01-02") + pd.Timedelta(days=DAYS - VAL - TEST)
ALL_INPUTS = (*TARGETS, REGION_PREFIX + "admissions", REGION_PREFIX + "census")


@pytest.mark.parametrize(
    "spec_kwargs",
    [
        {},  # every context channel: year-ago, weekly means, region
        {"context": ("region",)},
        {"context": ("year_ago",)},
        {"context": ("weeks",)},
        {"context": (), "scaling": "series"},  # the series scaler: fitted on training days only
    ],
    ids=["all-context", "region", "year-ago", "weeks", "series-scaling"],
)
def test_nothing_from_a_held_out_day_reaches_a_training_window(spec_kwargs: dict):
    records = _records()
    early = ("2023-01-06", "2023-12-25")  # training-period holidays: the channel is there in both
    clean = prepare_hospital(records, _spec(early, **spec_kwargs))
    # more holidays declared only on held-out days: the calendar of the held-out days changes too
    late = tuple(str((FIRST_HELD_OUT + pd.Timedelta(days=d)).date()) for d in (0, 3, 20, 70))
    dirty = prepare_hospital(_poisoned(records, FIRST_HELD_OUT, ALL_INPUTS), _spec(early + late, **spec_kwargs))
    assert "holiday" in clean.feature_names
    assert len(clean.train) > 500
    assert (clean.train.target_dates(Frequency.DAILY) < np.datetime64(FIRST_HELD_OUT)).all()
    _same(clean.train, dirty.train)
    if clean.scaler is not None:
        for unit in ("icu", "ward"):
            assert np.array_equal(clean.scaler.mean[unit], dirty.scaler.mean[unit])
            assert np.array_equal(clean.scaler.scale[unit], dirty.scaler.scale[unit])
    # the poison is there: held-out windows changed (targets and, after the first, inputs)
    assert not torch.equal(clean.test.y, dirty.test.y) and not torch.equal(clean.test.X, dirty.test.X)
    assert not torch.equal(clean.val.X, dirty.val.X)


def test_the_poison_test_can_fail_a_window_that_reads_one_held_out_day_is_caught():
    """Control: poisoning from the last training window's last *input* day on does change training windows."""
    records = _records(drop_boundary=False)
    last_input = FIRST_HELD_OUT - pd.Timedelta(days=H + 1)  # the last training window forecasts the H days before
    clean = prepare_hospital(records, _spec())
    dirty = prepare_hospital(_poisoned(records, last_input, (REGION_PREFIX + "admissions",)), _spec())
    assert not torch.equal(clean.train.X, dirty.train.X)


def test_the_region_channel_at_origin_t_reads_releases_before_t_only():
    rng = np.random.default_rng(3)
    region = rng.poisson(200, size=(300, 2)).astype(float)
    starts = [60, 150, 299]
    base = region_channel(region, starts, L, 1.0, 2)
    for i, t in enumerate(starts):
        later = region.copy()
        later[t:] = POISON  # every release from the forecast's first day on
        assert np.array_equal(region_channel(later, [t], L, 1.0, 2)[0], base[i])
        earlier = region.copy()
        earlier[t - 1] = POISON  # the day before the origin is read
        assert not np.array_equal(region_channel(earlier, [t], L, 1.0, 2)[0], base[i])
    # unknown days (NaN) are carried from the last KNOWN earlier day, never filled from later ones
    gappy = region.copy()
    gappy[140:150] = np.nan
    after = gappy.copy()
    after[150:] = POISON
    assert np.array_equal(region_channel(gappy, [150], L, 1.0, 2), region_channel(after, [150], L, 1.0, 2))


def test_the_region_a_coordinator_builds_at_day_t_is_made_of_releases_of_day_t():
    """Whatever a node releases for later days leaves the region of earlier days unchanged, at the coordinator
    and in every window the receiving node builds from it (origins up to that day)."""
    records = _records(drop_boundary=False)
    own = UnitRecords(
        records.frame.drop(columns=[REGION_PREFIX + t for t in TARGETS]), records.frequency, "own", "daily"
    )
    other = UnitRecords(own.frame.assign(unit=own.frame["unit"] + "-b"), own.frequency, "other", "daily")
    cut = pd.Timestamp("2023-01-02") + pd.Timedelta(days=DAYS - 40)  # inside the test period
    late_other = _poisoned(other, cut, TARGETS)

    def node_windows(neighbour: UnitRecords):
        collector = RegionCollector()
        from tests.fed_fixtures import record, request, task_identity  # Flower Messages need a task identity

        with task_identity():
            from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

            from medalloc_core import protocol

            reply = Message(
                RecordDict(
                    {
                        protocol.METRICS: MetricRecord({protocol.NUM_EXAMPLES: 1}),
                        protocol.RELEASED_TOTALS: ConfigRecord(totals_record(neighbour, TARGETS)),
                    }
                ),
                reply_to=request(2, record({}), {}),
            )
            collector.collect([reply])
        sent = collector.region(exclude=1)
        return sent, prepare_hospital(with_region(own, sent), _spec(context=("region",)))

    clean_region, clean = node_windows(other)
    dirty_region, dirty = node_windows(late_other)
    pd.testing.assert_frame_equal(clean_region[clean_region.index < cut], dirty_region[dirty_region.index < cut])
    assert not clean_region.equals(dirty_region)
    for split in ("train", "val", "test"):
        a, b = getattr(clean, split), getattr(dirty, split)
        keep = a.target_start <= np.datetime64(cut)  # origins whose inputs end before the poisoned days
        assert keep.any()
        _same(a.select(keep), b.select(keep))
    # and the same sum as the research path (medalloc_core.forecast.region.region_totals)
    expected = region_totals({"other": daily_totals(other)})
    np.testing.assert_allclose(clean_region.to_numpy(), expected.to_numpy())


def test_forecast_inputs_read_the_region_up_to_the_last_day_only():
    """A neighbour whose release runs past this hospital's last day: the forecast's inputs do not change."""
    records = _records(drop_boundary=False)
    own = UnitRecords(
        records.frame.drop(columns=[REGION_PREFIX + t for t in TARGETS]), records.frequency, "own", "daily"
    )
    end = own.frame["date"].max()
    days = pd.date_range(own.frame["date"].min(), end + pd.Timedelta(days=30))
    region = pd.DataFrame({t: np.arange(len(days), dtype=float) % 11 + 100 for t in TARGETS}, index=days)
    later = region.copy()
    later.loc[later.index > end] = POISON
    spec = _spec(context=("region",))
    outputs = []
    for sent in (region, later):
        joined = with_region(own, sent)
        outputs.append(forecast_inputs(joined, prepare_hospital(joined, spec)))
    assert np.array_equal(outputs[0].target_start, outputs[1].target_start)
    assert torch.equal(outputs[0].X, outputs[1].X)
    assert (outputs[0].target_start == (end + pd.Timedelta(days=1)).to_datetime64()).all()
