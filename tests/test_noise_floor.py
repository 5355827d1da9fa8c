"""The noise floor's oracle (simulations/oracle.py): it draws as the generator does; nothing beats it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from medalloc.simulations.oracle import QUANTILES, Oracle, oracle_forecast, remaining_discharges
from medalloc_core.contract import ADMISSIONS, CENSUS, DATE, UNIT, Frequency, UnitRecords
from medalloc_core.forecast.evaluation import evaluation_spec, rolling_origins, score_forecasts
from medalloc_core.forecast.forecasters import HoltWintersForecaster, HospitalData
from medalloc_core.synthetic import RegionConfig, generate_region


@pytest.fixture(scope="module")
def region():
    return generate_region(RegionConfig(hospitals=2, days=260, seed=4, max_beds=150, short_history_fraction=0.0))


def test_the_generator_keeps_what_it_drew_admissions_from(region) -> None:
    """Admissions are the stays' admission days, and the rate is their mean: the truth is the generator's own."""
    hospital = region.hospitals[0]
    for unit, truth in hospital.truth.items():
        frame = hospital.daily[hospital.daily["unit"] == unit]
        days = truth.stays.admit_day
        counted = np.bincount(days[days >= 0], minlength=region.config.days)[: region.config.days]
        assert np.array_equal(counted, frame[ADMISSIONS].to_numpy())
        rate = truth.rate[truth.warmup :]
        # Negative-binomial counts around the rate: their mean over 260 days is the rate's, within 5 sd.
        sd = np.sqrt((rate + rate**2 / truth.dispersion).sum()) / rate.size
        assert abs(counted.mean() - rate.mean()) < 5 * sd + 1e-9


def test_the_oracle_admissions_are_the_negative_binomial_quantiles(region) -> None:
    truth = next(iter(region.hospitals[0].truth.values()))
    q = oracle_forecast(truth, 100, horizon=14, targets=(ADMISSIONS,), rng=np.random.default_rng(0), samples=4000)
    g = 100 + truth.warmup
    r, k = truth.rate[g : g + 14], truth.dispersion
    exact = np.stack([stats.nbinom.ppf(a, k, k / (k + r)) for a in QUANTILES], axis=-1)  # (14, 3)
    assert np.abs(q[:, 0, :] - exact).max() <= 1.0  # integer quantiles; Monte Carlo moves one by a step at most


def test_patients_in_a_bed_leave_after_the_origin_and_no_later_than_the_law_allows(region) -> None:
    truth = next(iter(region.hospitals[0].truth.values()))
    leave = remaining_discharges(truth, 150, samples=200, rng=np.random.default_rng(1))
    stays = truth.stays
    inside = (stays.admit_day <= 149) & (stays.discharge_day > 149)
    assert leave.shape == (200, int(inside.sum())) and inside.sum() > 0
    assert (leave > 149).all()
    assert (leave <= stays.admit_day[inside] + truth.warmup + 8).all()  # the capped stay plus a weekend delay
    # Redrawn, not copied: the draws spread around the true days.
    assert np.unique(leave, axis=0).shape[0] > 1


def test_the_horizon_must_be_whole_weeks(region) -> None:
    truth = next(iter(region.hospitals[0].truth.values()))
    with pytest.raises(AssertionError, match="whole weeks"):
        oracle_forecast(truth, 100, horizon=10, targets=(ADMISSIONS,), rng=np.random.default_rng(0))


def test_no_forecaster_beats_the_floor_and_its_band_is_calibrated(region) -> None:
    spec = evaluation_spec(history=28, horizon=14, targets=(ADMISSIONS, CENSUS), weeks=8)
    hospitals = {
        h.hospital_id: HospitalData(
            h.hospital_id,
            UnitRecords(h.daily[[DATE, UNIT, ADMISSIONS, CENSUS]], Frequency.DAILY, Path(h.hospital_id), "daily"),
            spec,
        )
        for h in region.hospitals
    }
    origins = {n: rolling_origins(h, n_origins=4) for n, h in hospitals.items()}
    oracle = Oracle(region, samples=300, seed=0).fit(hospitals)
    hw = HoltWintersForecaster().fit(hospitals)
    for name, h in hospitals.items():
        y = h.actuals(origins[name])
        best = score_forecasts(y, oracle.predict(h, origins[name]), QUANTILES)
        other = score_forecasts(y, hw.predict(h, origins[name]), QUANTILES)
        assert best["pinball"] < other["pinball"]
        assert 0.65 <= best["coverage"] <= 0.95
    # The same seed, the same draws.
    again = Oracle(region, samples=300, seed=0).fit(hospitals)
    name = next(iter(hospitals))
    assert np.array_equal(again.predict(hospitals[name], origins[name]), oracle.predict(hospitals[name], origins[name]))
