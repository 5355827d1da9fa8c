"""The node's stored region (``forecast.region_store``): round trip, damage refused with the path, a region model never
read without it, a region behind the records said."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medalloc_core.contract import Frequency, UnitRecords
from medalloc_core.forecast.features import REGION_PREFIX, WindowSpec
from medalloc_core.forecast.region_store import (
    RegionStoreError,
    join_stored_region,
    read_region,
    region_path,
    store_region,
)

REGION_SPEC = WindowSpec(history=28, horizon=7, targets=("admissions", "census"), scaling="window", context=("region",))
PLAIN_SPEC = WindowSpec(history=28, horizon=7, targets=("admissions", "census"))


def _records(days: int) -> UnitRecords:
    dates = pd.date_range("2024-01-01", periods=days)
    frame = pd.DataFrame({"date": dates, "unit": "icu", "admissions": 3.0, "census": 10.0})
    return UnitRecords(frame, Frequency.DAILY, "t", "daily")


def _region(days: int) -> pd.DataFrame:
    dates = pd.date_range("2024-01-01", periods=days)
    region = pd.DataFrame({"admissions": np.arange(days, dtype=float), "census": 5.0 * np.arange(days)}, index=dates)
    region.iloc[3, 0] = np.nan  # a day no other node reported
    return region


def test_the_region_round_trips_beside_the_release(tmp_path: Path) -> None:
    path = region_path(tmp_path / "ledger.json.released.csv")
    assert path.name == "ledger.json.released.csv.region.json"
    store_region(path, _region(40), run_tag="run-7")
    stored = read_region(path)
    pd.testing.assert_frame_equal(stored.region, _region(40), check_freq=False)
    assert stored.run_tag == "run-7" and stored.received and stored.last_day == pd.Timestamp("2024-02-09")
    assert path.stat().st_mode & 0o077 == 0  # local to the node: its operator's only


def test_a_damaged_or_foreign_file_is_refused_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "r.region.json"
    with pytest.raises(RegionStoreError, match="no stored region"):
        read_region(path)
    store_region(path, _region(10), run_tag="r")
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(RegionStoreError, match=str(path)):
        read_region(path)
    path.write_text('{"format": "something-else"}')
    with pytest.raises(RegionStoreError, match="not a MedAlloc node region"):
        read_region(path)
    path.write_text('{"format": "medalloc-node-region", "version": 1, "region": {"dates": ["2024-01-01"], "x": [1]}}')
    with pytest.raises(RegionStoreError, match="unknown column"):
        read_region(path)


def test_a_region_model_reads_the_stored_region_or_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    records = _records(40)
    assert join_stored_region(records, PLAIN_SPEC, None) is records  # a model without the region: unchanged
    with pytest.raises(RegionStoreError, match="reads the region"):
        join_stored_region(records, REGION_SPEC, None)
    path = tmp_path / "r.region.json"
    store_region(path, _region(40), run_tag="r")
    joined = join_stored_region(records, REGION_SPEC, read_region(path))
    np.testing.assert_allclose(joined.frame[REGION_PREFIX + "census"], 5.0 * np.arange(40))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    # the records run 10 days past the last region the node was sent: used, and said
    with caplog.at_level(logging.WARNING):
        late = join_stored_region(_records(50), REGION_SPEC, read_region(path))
    assert late.frame[REGION_PREFIX + "census"].isna().sum() == 10
    assert "10 day(s) before the records" in caplog.text
    store_region(path, _region(40)[["admissions"]], run_tag="r")
    with pytest.raises(RegionStoreError, match="lacks"):
        join_stored_region(records, REGION_SPEC, read_region(path))
