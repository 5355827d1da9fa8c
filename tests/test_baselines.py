"""Baselines: hand-computed forecasts, Holt-Winters quality, one contract suite over the registry, rolling origins."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from statsmodels.tools.sm_exceptions import ConvergenceWarning

from medalloc_core.forecast.baselines import (
    BASELINES,
    HoltWinters,
    MovingAverage,
    SeasonalNaive,
    _quiet_convergence,
    make_baseline,
    rolling_origin_forecasts,
)
from medalloc_core.forecast.metrics import mae


def _seasonal_series(n: int, *, seed: int = 0, noise: float = 1.0, level: float = 40.0) -> np.ndarray:
    """Daily counts with a strong weekday pattern (amplitude 10) and a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return np.clip(level + 10 * np.sin(2 * np.pi * t / 7) + rng.normal(0, noise, n), 0, None)


# ----------------------------------------------------------------------------- seasonal naive
def test_seasonal_naive_repeats_last_season_exactly() -> None:
    # a perfectly periodic series: every in-sample error is 0, so every quantile is the point
    x = np.array([5.0, 0.0, 2.0] * 3)
    q = SeasonalNaive(season=3).fit(x).predict(4)
    np.testing.assert_array_equal(q, np.array([[5.0] * 3, [0.0] * 3, [2.0] * 3, [5.0] * 3]))


def test_seasonal_naive_quantiles_from_h_step_errors() -> None:
    x = np.array([1.0, 2.0, 3.0, 2.0, 4.0, 6.0, 3.0, 5.0, 7.0])  # season 3, n = 9
    q = SeasonalNaive(season=3).fit(x).predict(2)
    # point: last season [3, 5, 7] -> step 1 = 3, step 2 = 5
    # step-1 errors x[t+1] - x[t-2], origins t = 2..7: 2-1, 4-2, 6-3, 3-2, 5-4, 7-6 = 1,2,3,1,1,1
    #   sorted [1,1,1,1,2,3]; numpy linear quantiles: P10 pos 0.5 -> 1, P50 pos 2.5 -> 1, P90 pos 4.5 -> 2.5
    # step-2 errors x[t+2] - x[t-1], origins t = 2..6: 4-2, 6-3, 3-2, 5-4, 7-6 = 2,3,1,1,1
    #   sorted [1,1,1,2,3]: P10 pos 0.4 -> 1, P50 pos 2 -> 1, P90 pos 3.6 -> 2 + 0.6 = 2.6
    np.testing.assert_allclose(q, [[4.0, 4.0, 5.5], [6.0, 6.0, 7.6]])


def test_seasonal_naive_clips_at_zero() -> None:
    # drops from 10 to 0 every other season: large negative errors, point 0 in the last season
    x = np.array([10.0, 10.0, 0.0, 0.0] * 4)
    q = SeasonalNaive(season=2).fit(x).predict(2)
    assert q.min() == 0.0


# ----------------------------------------------------------------------------- moving average
def test_moving_average_exact() -> None:
    x = np.array([3.0, 6.0, 9.0, 3.0, 6.0, 9.0])  # window 3: every 3-window averages 6
    q = MovingAverage(window=3).fit(x).predict(4)
    # point: mean(3, 6, 9) = 6 at every step
    # step 1 errors (origins t = 2..4, forecast 6): x3-6, x4-6, x5-6 = -3, 0, 3
    #   P10 pos 0.2 -> -3 + 0.2*3 = -2.4 ; P50 -> 0 ; P90 pos 1.8 -> 0 + 0.8*3 = 2.4
    # step 2 errors (origins 2..3): x4-6, x5-6 = 0, 3 -> P10 0.3, P50 1.5, P90 2.7
    # step 3 errors (origin 2): x5-6 = 3 -> 3, 3, 3 ; step 4 has no in-sample error: reuses step 3
    np.testing.assert_allclose(q, [[3.6, 6.0, 8.4], [6.3, 7.5, 8.7], [9.0, 9.0, 9.0], [9.0, 9.0, 9.0]])
    assert MovingAverage(window=3).fit(x).level_ == pytest.approx(6.0)


# ----------------------------------------------------------------------------- Holt-Winters
def test_holt_winters_recovers_clean_seasonal_pattern() -> None:
    x = _seasonal_series(210, noise=0.5)
    q = HoltWinters(season=7).fit(x[:196]).predict(14)
    t = np.arange(196, 210)
    truth = 40 + 10 * np.sin(2 * np.pi * t / 7)  # the noise-free pattern, amplitude 10
    err = np.mean(np.abs(q[:, 1] - truth))
    assert err < 0.5, f"median off the true pattern by {err:.2f} (amplitude 10)"
    # the P10-P90 band should be about as wide as the noise implies: 2 * 1.28 * 0.5 = 1.28
    assert 0.9 < np.mean(q[:, 2] - q[:, 0]) < 1.8


def test_holt_winters_beats_moving_average_on_seasonal_series() -> None:
    x = _seasonal_series(224, seed=3, noise=2.0)
    origins = list(range(161, 210, 12))
    y = np.stack([x[t + 1 : t + 15] for t in origins])  # (N, 14)
    hw = rolling_origin_forecasts(x, origins, 14, HoltWinters)[..., 1]
    ma = rolling_origin_forecasts(x, origins, 14, MovingAverage)[..., 1]
    assert mae(y, hw) < 0.5 * mae(y, ma)


@pytest.mark.parametrize(
    ("series", "reason"),
    [(np.zeros(60), "constant"), (np.full(60, 4.0), "constant"), (_seasonal_series(15), "seasons")],
)
def test_holt_winters_falls_back_to_seasonal_naive(
    series: np.ndarray, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="medalloc_core.forecast.baselines"):
        model = HoltWinters(season=7).fit(series)
    assert model.fallback_
    assert any("falls back to seasonal naive" in r.getMessage() and reason in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(model.predict(9), SeasonalNaive(season=7).fit(series).predict(9))


def test_quiet_convergence_only_silences_convergence_warnings() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with _quiet_convergence():
            warnings.warn("optimizer stopped", ConvergenceWarning, stacklevel=1)
            warnings.warn("something else", UserWarning, stacklevel=1)
    assert [w.category for w in caught] == [UserWarning]


def test_holt_winters_update_keeps_parameters_and_moves_state() -> None:
    x = _seasonal_series(120, seed=5)
    model = HoltWinters().fit(x[:100])
    fitted_forecast = model.predict(7)
    params = {k: np.copy(v) for k, v in model.params_.items()}
    # re-filtering the same data with the same parameters and initial states reproduces the fit
    np.testing.assert_allclose(model.update(x[:100]).predict(7), fitted_forecast, rtol=1e-9, atol=1e-9)
    model.update(x)
    assert model.n_obs_ == 120
    for key, value in params.items():
        np.testing.assert_array_equal(model.params_[key], value)
    # the state moved on: the forecast now starts at period 120 (a different weekday than 100)
    refit = HoltWinters().fit(x).predict(7)
    assert np.mean(np.abs(model.predict(7)[:, 1] - refit[:, 1])) < 1.0
    with pytest.raises(ValueError, match="extended"):
        model.update(x[::-1].copy())


def test_holt_winters_fit_emits_no_warnings() -> None:
    # statsmodels deprecations (e.g. the old random_state argument) must not reach users
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        HoltWinters().fit(_seasonal_series(100, seed=8, noise=3.0)).predict(10)


def test_holt_winters_without_trend() -> None:
    q = HoltWinters(trend=None).fit(_seasonal_series(90)).predict(5)
    assert q.shape == (5, 3) and np.all(np.diff(q, axis=1) >= 0)


# ----------------------------------------------------------------------------- contract suite over the registry
REGISTRY = sorted(BASELINES)


@pytest.fixture(params=REGISTRY)
def name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_fit_returns_self_and_keeps_hyperparameters(name: str) -> None:
    model = make_baseline(name)
    before = {k: v for k, v in vars(model).items()}
    assert model.fit(_seasonal_series(60)) is model
    assert {k: v for k, v in vars(model).items() if not k.endswith("_")} == before
    assert model.n_obs_ == 60 and model.history_.shape == (60,)
    assert model.fit(_seasonal_series(60), start="2024-01-01").start_ == "2024-01-01"


@pytest.mark.parametrize("levels", [(0.1, 0.5, 0.9), (0.05, 0.25, 0.5, 0.75, 0.95)])
def test_shape_nonnegative_noncrossing(name: str, levels: tuple[float, ...]) -> None:
    rng = np.random.default_rng(2)
    sparse = rng.poisson(0.7, 70).astype(float)  # mostly zeros and ones: tempts negative quantiles
    for series in (sparse, _seasonal_series(70)):
        q = make_baseline(name, quantiles=levels).fit(series).predict(10)
        assert q.shape == (10, len(levels))
        assert np.all(np.isfinite(q)) and q.min() >= 0
        assert np.all(np.diff(q, axis=1) >= 0)


def test_deterministic(name: str) -> None:
    x = _seasonal_series(80, seed=7, noise=3.0)
    np.testing.assert_array_equal(make_baseline(name).fit(x).predict(12), make_baseline(name).fit(x).predict(12))


def test_too_short_history_says_how_long(name: str) -> None:
    model = make_baseline(name)
    need = model.min_history()
    model.fit(_seasonal_series(need))  # exactly enough is accepted
    with pytest.raises(ValueError, match=f"at least {need} periods"):
        make_baseline(name).fit(_seasonal_series(need - 1))


def test_bad_input_is_refused(name: str) -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        make_baseline(name).predict(3)
    x = _seasonal_series(40)
    for bad, match in (
        (np.where(np.arange(40) == 5, np.nan, x), "non-finite"),
        (np.where(np.arange(40) == 5, -1.0, x), "negative"),
        (x.reshape(20, 2), "shape"),
    ):
        with pytest.raises(ValueError, match=match):
            make_baseline(name).fit(bad)
    with pytest.raises(ValueError, match="horizon"):
        make_baseline(name).fit(x).predict(0)
    with pytest.raises(ValueError, match="quantiles"):
        make_baseline(name, quantiles=(0.9, 0.1)).fit(x)


def test_rolling_origin_does_not_peek(name: str) -> None:
    x = _seasonal_series(100, seed=4, noise=2.0)
    origins = [60, 75, 90]
    base = rolling_origin_forecasts(x, origins, 7, BASELINES[name])
    for i, t in enumerate(origins):
        tampered = x.copy()
        tampered[t + 1 :] = 1000.0  # everything after the origin changes wildly
        again = rolling_origin_forecasts(tampered, [t], 7, BASELINES[name])
        np.testing.assert_array_equal(again[0], base[i])
    # ... and each origin equals a model fitted on series[: t + 1] by hand
    for i, t in enumerate(origins):
        np.testing.assert_array_equal(base[i], make_baseline(name).fit(x[: t + 1]).predict(7))


def test_rolling_origin_with_periodic_refit_does_not_peek(name: str) -> None:
    x = _seasonal_series(120, seed=6, noise=2.0)
    origins = [100, 60, 80, 70, 90]  # any order; refits follow time order
    base = rolling_origin_forecasts(x, origins, 5, BASELINES[name], refit_every=3)
    assert base.shape == (5, 5, 3)
    # origin 80 is the third in time order (60, 70, 80): updated from the fit at 60. Tamper after 80.
    tampered = x.copy()
    tampered[81:] = 0.0
    again = rolling_origin_forecasts(tampered, origins, 5, BASELINES[name], refit_every=3)
    for i, t in enumerate(origins):
        if t <= 80:
            np.testing.assert_array_equal(again[i], base[i])


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(REGISTRY),
    counts=st.lists(st.integers(0, 30), min_size=14, max_size=60),
    horizon=st.integers(1, 20),
)
def test_any_count_series_gives_valid_quantiles(name: str, counts: list[int], horizon: int) -> None:
    q = make_baseline(name).fit(np.array(counts, dtype=float)).predict(horizon)
    assert q.shape == (horizon, 3) and np.all(np.isfinite(q)) and q.min() >= 0
    assert np.all(np.diff(q, axis=1) >= 0)


def test_rolling_origin_rejects_bad_origins() -> None:
    x = _seasonal_series(50)
    with pytest.raises(ValueError, match="outside the series"):
        rolling_origin_forecasts(x, [20, 50], 3, SeasonalNaive)
    with pytest.raises(ValueError, match="integer"):
        rolling_origin_forecasts(x, [20.5], 3, SeasonalNaive)
    with pytest.raises(ValueError, match="refit_every"):
        rolling_origin_forecasts(x, [20], 3, SeasonalNaive, refit_every=0)
    with pytest.raises(ValueError, match="at least 14"):
        rolling_origin_forecasts(x, [5], 3, SeasonalNaive)


def test_make_baseline_unknown_name() -> None:
    with pytest.raises(ValueError, match="holt_winters"):
        make_baseline("prophet")
