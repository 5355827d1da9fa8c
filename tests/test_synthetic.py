"""The synthetic region generator: exact bookkeeping, the effects it claims, reproducibility."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from medalloc_core import contract as c
from medalloc_core.synthetic import (
    METADATA_NAME,
    Region,
    RegionConfig,
    generate_region,
    public_holidays,
    write_region,
)
from medalloc_core.synthetic.calendar import easter_sunday

SMALL = RegionConfig(hospitals=4, days=400, seed=7)


@pytest.fixture(scope="module")
def region() -> Region:
    return generate_region(SMALL)


def _region_daily(region: Region) -> pd.DataFrame:
    return pd.concat([h.daily.assign(hospital=h.hospital_id) for h in region.hospitals], ignore_index=True)


# --- bookkeeping -----------------------------------------------------------------------


def test_census_identity_holds_exactly_for_every_hospital_unit_and_day(region: Region) -> None:
    for hospital in region.hospitals:
        for unit, frame in hospital.daily.groupby(c.UNIT):
            frame = frame.sort_values(c.DATE)
            dates = frame[c.DATE].to_numpy()
            assert (np.diff(dates) == np.timedelta64(1, "D")).all(), f"{hospital.hospital_id}/{unit} has gaps"
            census = frame[c.CENSUS].to_numpy()
            expected = census[:-1] + frame[c.ADMISSIONS].to_numpy()[1:] - frame[c.DISCHARGES].to_numpy()[1:]
            assert np.array_equal(census[1:], expected), f"{hospital.hospital_id}/{unit}"


def test_counts_are_non_negative_int64_and_columns_follow_the_contract(region: Region) -> None:
    for hospital in region.hospitals:
        daily = hospital.daily
        assert list(daily.columns) == [c.DATE, c.UNIT, *c.COUNT_COLUMNS]
        assert not daily.duplicated([c.DATE, c.UNIT]).any()
        for column in c.COUNT_COLUMNS:
            assert daily[column].dtype == np.int64, column
            assert (daily[column] >= 0).all(), column
        assert (daily[c.CAPACITY] >= 1).all()


def test_series_start_at_steady_state_not_from_an_empty_hospital(region: Region) -> None:
    for hospital in region.hospitals:
        for unit, frame in hospital.daily.groupby(c.UNIT):
            first_week = frame[c.CENSUS].iloc[:7].mean()
            assert first_week > 0.7 * frame[c.CENSUS].mean(), f"{hospital.hospital_id}/{unit} ramps up"


def test_overflow_days_exist_but_are_rare(region: Region) -> None:
    daily = _region_daily(region)
    share = (daily[c.CENSUS] > daily[c.CAPACITY]).mean()
    assert 0.003 < share < 0.06
    # capacity is roughly flat: a handful of changes per unit over 400 days at most
    changes = daily.groupby(["hospital", c.UNIT])[c.CAPACITY].agg(lambda s: int((s.diff().fillna(0) != 0).sum()))
    assert changes.max() <= 8


# --- sizes and heterogeneity --------------------------------------------------------------


def test_sizes_span_the_range_with_more_small_than_large_hospitals() -> None:
    cfg = RegionConfig(hospitals=40, days=60, seed=3)
    beds = np.array([h.beds for h in generate_region(cfg).hospitals])
    assert beds.min() >= 30 and beds.max() <= 1500
    assert beds.min() < 45 and beds.max() > 1000  # stratified sampling reaches both ends
    assert np.median(beds) < np.sqrt(30 * 1500)  # below the log-midpoint: skewed to small
    small = generate_region(SMALL).hospitals
    assert min(h.beds for h in small) < 80 and max(h.beds for h in small) > 400


def test_small_hospitals_lack_icu_and_paediatrics_and_specialty_centres_differ() -> None:
    reg = generate_region(RegionConfig(hospitals=12, days=60, seed=5))
    for hospital, meta in zip(reg.hospitals, reg.metadata["hospitals"], strict=True):
        units = set(hospital.daily[c.UNIT])
        assert units == set(meta["units"])
        if meta["case_mix"] == "general" and hospital.beds < 80:
            assert units == {"medical", "surgical"}
    mixes = {m["case_mix"]: m for m in reg.metadata["hospitals"]}
    paed = mixes["paediatric"]["unit_parameters"]
    assert max(paed, key=lambda u: paed[u]["bed_share"]) == "paediatric"
    surg = mixes["surgical"]["unit_parameters"]
    assert max(surg, key=lambda u: surg[u]["bed_share"]) == "surgical"


def test_short_history_hospitals_start_later_already_occupied(region: Region) -> None:
    metas = region.metadata["hospitals"]
    short = [(h, m) for h, m in zip(region.hospitals, metas, strict=True) if m["short_history"]]
    assert len(short) == 1  # round(0.2 * 4)
    hospital, meta = short[0]
    first = hospital.daily[c.DATE].min()
    assert first > pd.Timestamp(SMALL.start)
    assert str(first.date()) == meta["first_date"]
    assert hospital.daily[c.DATE].max() == pd.Timestamp(SMALL.start) + pd.Timedelta(days=SMALL.days - 1)
    assert (hospital.daily.loc[hospital.daily[c.DATE] == first, c.CENSUS] > 0).all()


# --- the effects it claims ---------------------------------------------------------------------


def test_surgical_admissions_drop_at_weekends(region: Region) -> None:
    daily = _region_daily(region)
    surgical = daily[daily[c.UNIT] == "surgical"].groupby(c.DATE)[c.ADMISSIONS].sum()
    weekend = surgical.index.day_of_week >= 5
    weekday_mean, weekend_mean = surgical[~weekend].mean(), surgical[weekend].mean()
    assert weekday_mean > 1.6 * weekend_mean
    assert stats.ttest_ind(surgical[~weekend], surgical[weekend], equal_var=False).pvalue < 1e-10
    monday = surgical[surgical.index.day_of_week == 0].mean()
    assert monday > surgical[(surgical.index.day_of_week >= 1) & ~weekend].mean()  # Monday peak


def test_fewer_surgical_admissions_on_weekday_holidays() -> None:
    reg = generate_region(RegionConfig(hospitals=4, days=730, seed=17, short_history_fraction=0.0))
    daily = _region_daily(reg)
    surgical = daily[daily[c.UNIT] == "surgical"].groupby(c.DATE)[c.ADMISSIONS].sum()
    holidays = {pd.Timestamp(h["date"]) for h in reg.metadata["public_holidays"]}
    weekday = surgical.index.day_of_week < 5
    on_holiday = surgical.index.isin(list(holidays))
    assert (weekday & on_holiday).sum() >= 10
    assert surgical[weekday & on_holiday].mean() < 0.7 * surgical[weekday & ~on_holiday].mean()


def test_noisy_hospitals_have_overdispersed_counts() -> None:
    base = RegionConfig(hospitals=4, days=400, seed=19, noisy_fraction=0.0, short_history_fraction=0.0)
    quiet, noisy = generate_region(base), generate_region(replace(base, noisy_fraction=1.0))
    flagged = [m["hospital_id"] for m in noisy.metadata["hospitals"] if m["noisy"]]
    assert len(flagged) == 2  # the smaller half
    for hid in flagged:
        spreads = []
        for reg in (quiet, noisy):
            daily = next(h.daily for h in reg.hospitals if h.hospital_id == hid)
            medical = daily.loc[daily[c.UNIT] == "medical", c.ADMISSIONS].to_numpy().astype(float)
            spreads.append(np.var(np.diff(medical)) / medical.mean())
        assert spreads[1] > 1.5 * spreads[0], (hid, spreads)


def test_public_holidays_follow_the_documented_calendar() -> None:
    assert easter_sunday(2024) == date(2024, 3, 31)
    assert easter_sunday(2025) == date(2025, 4, 20)
    assert easter_sunday(2000) == date(2000, 4, 23)
    days = dict(public_holidays(date(2024, 1, 1), date(2024, 12, 31)))
    assert days[date(2024, 4, 1)] == "Easter Monday"
    assert days[date(2024, 12, 25)] == "Christmas Day"
    assert len(days) == 10


def _winter_summer_ratio(cfg: RegionConfig) -> float:
    daily = _region_daily(generate_region(cfg))
    medical = daily[daily[c.UNIT] == "medical"].groupby(c.DATE)[c.ADMISSIONS].sum()
    months = medical.index.month
    return float(medical[months.isin([12, 1, 2])].mean() / medical[months.isin([6, 7, 8])].mean())


def test_winter_peak_present_and_switchable() -> None:
    cfg = RegionConfig(hospitals=4, days=730, seed=11, epidemic_amplitude=0.0, short_history_fraction=0.0)
    assert _winter_summer_ratio(cfg) > 1.12  # medical amplitude 0.12 -> ~ +20 % winter vs summer
    assert abs(_winter_summer_ratio(replace(cfg, seasonality_scale=0.0)) - 1.0) < 0.04


def test_admissions_rise_during_the_metadata_wave_peaks() -> None:
    cfg = RegionConfig(hospitals=4, days=730, seed=2, seasonality_scale=0.0, short_history_fraction=0.0)
    reg = generate_region(cfg)
    daily = _region_daily(reg)
    acute = daily[daily[c.UNIT].isin(["icu", "medical"])].groupby(c.DATE)[c.ADMISSIONS].sum()
    lag = int(np.mean([m["epidemic_lag_days"] for m in reg.metadata["hospitals"]]))
    peaks = [pd.Timestamp(w["peak"]) + pd.Timedelta(days=lag) for w in reg.metadata["epidemic"]["waves"]]
    peaks = [p for p in peaks if acute.index[10] <= p <= acute.index[-10]]
    assert peaks, "the test region should contain a wave peak"
    near = np.zeros(len(acute), dtype=bool)
    for p in peaks:
        near |= np.abs((acute.index - p).days) <= 7
    curve = pd.Series(reg.metadata["epidemic"]["curve"], index=acute.index)
    off_wave = curve.shift(lag).fillna(0.0) < 0.02
    assert acute[near].mean() > 1.12 * acute[off_wave.to_numpy()].mean()


def test_hospital_lags_match_the_cross_correlation_peak() -> None:
    cfg = RegionConfig(
        hospitals=4,
        days=730,
        seed=4,
        min_beds=400,
        seasonality_scale=0.0,
        epidemic_amplitude=0.4,
        short_history_fraction=0.0,
        noisy_fraction=0.0,
    )
    reg = generate_region(cfg)
    curve = np.asarray(reg.metadata["epidemic"]["curve"])
    for hospital, meta in zip(reg.hospitals, reg.metadata["hospitals"], strict=True):
        daily = hospital.daily[hospital.daily[c.UNIT] != "surgical"]  # surgery ignores waves
        series = daily.groupby(c.DATE)[c.ADMISSIONS].sum().rolling(7, center=True).mean().to_numpy()
        lags = np.arange(0, 31)
        corr = []
        for k in lags:
            x, y = curve[: len(curve) - k], series[k:]
            ok = ~np.isnan(y)
            corr.append(np.corrcoef(x[ok], y[ok])[0, 1])
        found = int(lags[int(np.argmax(corr))])
        assert abs(found - meta["epidemic_lag_days"]) <= 3, (hospital.hospital_id, found, meta["epidemic_lag_days"])


# --- region.json and files ---------------------------------------------------------------------


def test_metadata_records_the_true_parameters(region: Region, tmp_path: Path) -> None:
    write_region(region, tmp_path)
    meta = json.loads((tmp_path / METADATA_NAME).read_text())
    assert meta["generator_version"] and meta["config"]["seed"] == 7 and meta["config"]["days"] == 400
    assert len(meta["epidemic"]["curve"]) == 400 and meta["epidemic"]["waves"]
    assert [h["hospital_id"] for h in meta["hospitals"]] == ["H000", "H001", "H002", "H003"]
    for h, hospital in zip(meta["hospitals"], region.hospitals, strict=True):
        assert h["beds"] == hospital.beds
        assert 0 <= h["epidemic_lag_days"] <= SMALL.max_lag_days
        for unit, params in h["unit_parameters"].items():
            assert params["los_mean_days"] > 0 and params["nominal_beds"] >= 2
            frame = hospital.daily[hospital.daily[c.UNIT] == unit]
            assert params["overflow_days"] == int((frame[c.CENSUS] > frame[c.CAPACITY]).sum())
    assert {"date": "2023-12-25", "name": "Christmas Day"} in meta["public_holidays"]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_same_seed_same_bytes_and_different_seed_different_bytes(fmt: str, tmp_path: Path) -> None:
    cfg = RegionConfig(hospitals=3, days=120, seed=21)
    paths_a = write_region(generate_region(cfg), tmp_path / "a", fmt=fmt)
    paths_b = write_region(generate_region(cfg), tmp_path / "b", fmt=fmt)
    assert [p.name for p in paths_a] == ["H000." + fmt, "H001." + fmt, "H002." + fmt, METADATA_NAME]
    for a, b in zip(paths_a, paths_b, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
    paths_c = write_region(generate_region(replace(cfg, seed=22)), tmp_path / "c", fmt=fmt)
    for a, other in zip(paths_a, paths_c, strict=True):
        assert a.read_bytes() != other.read_bytes(), a.name


def test_csv_round_trips_to_the_in_memory_records(region: Region, tmp_path: Path) -> None:
    write_region(region, tmp_path)
    for hospital in region.hospitals:
        back = pd.read_csv(tmp_path / f"{hospital.hospital_id}.csv", parse_dates=[c.DATE])
        pd.testing.assert_frame_equal(back, hospital.daily, check_dtype=False)


def test_write_refuses_an_earlier_region_and_replaces_it_whole_when_allowed(tmp_path: Path) -> None:
    write_region(generate_region(RegionConfig(hospitals=3, days=60, seed=1)), tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    smaller = generate_region(RegionConfig(hospitals=2, days=60, seed=2))
    with pytest.raises(FileExistsError, match="already holds a region"):
        write_region(smaller, tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    write_region(smaller, tmp_path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["H000.csv", "H001.csv", METADATA_NAME]


def test_encounter_shape_needs_an_encounter_region(region: Region, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shape='encounters'"):
        write_region(region, tmp_path, shape="encounters")


# --- encounters -----------------------------------------------------------------------------------


def _daily_from_encounters(enc: pd.DataFrame, dates: pd.DatetimeIndex) -> pd.DataFrame:
    """Independent recount: admissions/discharges by date, census at each closing midnight."""
    admit = pd.to_datetime(enc[c.ADMIT_TIME]).dt.normalize()
    discharge = pd.to_datetime(enc[c.DISCHARGE_TIME]).dt.normalize()
    rows = []
    for unit in sorted(enc[c.UNIT].unique()):
        mine = (enc[c.UNIT] == unit).to_numpy()
        a, d = admit[mine].to_numpy(), discharge[mine].to_numpy()
        for day in dates.to_numpy():
            rows.append(
                {
                    c.DATE: pd.Timestamp(day),
                    c.UNIT: unit,
                    c.ADMISSIONS: int((a == day).sum()),
                    c.DISCHARGES: int((d == day).sum()),
                    c.CENSUS: int(((a <= day) & (np.isnat(d) | (d > day))).sum()),
                }
            )
    return pd.DataFrame(rows)


def test_encounters_agree_with_the_daily_shape_of_the_same_seed(tmp_path: Path) -> None:
    cfg = RegionConfig(hospitals=3, days=90, seed=13, min_beds=30, max_beds=200, shape="encounters")
    reg = generate_region(cfg)
    daily_reg = generate_region(replace(cfg, shape="daily"))
    write_region(reg, tmp_path, shape="encounters")
    for hospital, plain in zip(reg.hospitals, daily_reg.hospitals, strict=True):
        pd.testing.assert_frame_equal(hospital.daily, plain.daily)  # same underlying simulation
        enc = pd.read_csv(tmp_path / f"{hospital.hospital_id}.csv", dtype=str, keep_default_na=False)
        assert list(enc.columns) == list(c.ENCOUNTER_COLUMNS)
        assert enc[c.ENCOUNTER_ID].is_unique
        enc = enc.replace({c.DISCHARGE_TIME: {"": None}})
        closed = enc[enc[c.DISCHARGE_TIME].notna()]
        assert (pd.to_datetime(closed[c.DISCHARGE_TIME]) > pd.to_datetime(closed[c.ADMIT_TIME])).all()
        end = pd.Timestamp(cfg.start) + pd.Timedelta(days=cfg.days)
        assert (pd.to_datetime(closed[c.DISCHARGE_TIME]) < end).all()
        assert enc[c.DISCHARGE_TIME].isna().any()  # stays still open at the end
        dates = pd.DatetimeIndex(sorted(hospital.daily[c.DATE].unique()))
        derived = _daily_from_encounters(enc, dates)
        expected = hospital.daily.drop(columns=c.CAPACITY).sort_values([c.UNIT, c.DATE]).reset_index(drop=True)
        pd.testing.assert_frame_equal(derived, expected, check_dtype=False)


def test_returning_patients_reuse_ids_without_overlapping_stays() -> None:
    reg = generate_region(RegionConfig(hospitals=1, days=90, seed=3, min_beds=300, shape="encounters"))
    enc = reg.hospitals[0].encounters
    assert enc is not None
    stays_per_patient = enc[c.PATIENT_ID].value_counts()
    assert 0.02 < (stays_per_patient > 1).sum() / len(stays_per_patient) < 0.2
    repeat = enc[enc[c.PATIENT_ID].isin(stays_per_patient[stays_per_patient > 1].index)]
    repeat = repeat.sort_values([c.PATIENT_ID, c.ADMIT_TIME])
    previous_end = repeat.groupby(c.PATIENT_ID)[c.DISCHARGE_TIME].shift()
    has_previous = previous_end.notna() | repeat.duplicated(c.PATIENT_ID)
    assert not previous_end[has_previous].isna().any()  # an open stay never has a successor
    assert (repeat.loc[has_previous, c.ADMIT_TIME] > previous_end[has_previous]).all()


# --- validation of generated files ---------------------------------------------------------


@pytest.mark.parametrize(("shape", "fmt"), [("daily", "csv"), ("daily", "parquet"), ("encounters", "csv")])
def test_written_files_pass_validation(shape: str, fmt: str, tmp_path: Path) -> None:
    validation = pytest.importorskip("medalloc_core.validation")
    reg = generate_region(RegionConfig(hospitals=2, days=60, seed=9, shape=shape))  # type: ignore[arg-type]
    for path in write_region(reg, tmp_path, shape=shape, fmt=fmt)[:-1]:  # type: ignore[arg-type]
        report = validation.validate_file(path)
        assert report.ok, [str(p) for p in report.problems]
    # and the loader reads back exactly the generator's daily records, from either shape
    for hospital in reg.hospitals:
        frame = validation.load_unit_records(tmp_path / f"{hospital.hospital_id}.{fmt}").frame
        frame = frame[frame[c.DATE] >= hospital.daily[c.DATE].min()]
        columns = [c.DATE, c.UNIT, c.ADMISSIONS, c.DISCHARGES, c.CENSUS]
        expected = hospital.daily.sort_values([c.UNIT, c.DATE])[columns].reset_index(drop=True)
        got = frame.sort_values([c.UNIT, c.DATE])[columns].reset_index(drop=True)
        pd.testing.assert_frame_equal(got, expected, check_dtype=False)


# --- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hospitals": 0}, "hospitals must be from 1 to 1000"),
        ({"days": 5}, "days must be from 28"),
        ({"start": "2023-02-30"}, "ISO date"),
        ({"min_beds": 500, "max_beds": 100}, "min_beds <= max_beds"),
        ({"shape": "weekly"}, "shape must be"),
        ({"units": ("icu", "burns")}, "units must include"),
    ],
)
def test_config_rejects_impossible_values_with_the_fix(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RegionConfig(**kwargs)


def test_config_is_frozen_with_documented_defaults() -> None:
    cfg = RegionConfig()
    assert (cfg.hospitals, cfg.days, cfg.seed, cfg.start, cfg.shape) == (10, 730, 0, "2023-01-01", "daily")
    with pytest.raises(AttributeError):
        cfg.seed = 1  # type: ignore[misc]
