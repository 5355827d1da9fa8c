"""Forecast metrics on hand-computed cases, plus calibration and aggregation properties."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from medalloc_core.forecast.metrics import (
    aggregate_over_hospitals,
    forecast_metrics,
    interval_coverage,
    interval_width,
    mae,
    mase,
    mase_scale,
    pinball_loss,
    rmse,
    wape,
)

# N = 2 origins, H = 2 horizon steps.
Y = np.array([[1.0, 2.0], [3.0, 4.0]])
Y_HAT = np.array([[2.0, 2.0], [1.0, 5.0]])
# errors y - y_hat = [[-1, 0], [2, -1]]; |e| = [[1, 0], [2, 1]]


def test_mae_hand_computed() -> None:
    # overall: (1 + 0 + 2 + 1) / 4 = 1.0
    assert mae(Y, Y_HAT) == pytest.approx(1.0)
    # step 1: (1 + 2) / 2 = 1.5; step 2: (0 + 1) / 2 = 0.5
    np.testing.assert_allclose(mae(Y, Y_HAT, per_horizon=True), [1.5, 0.5])


def test_rmse_hand_computed() -> None:
    # overall: sqrt((1 + 0 + 4 + 1) / 4) = sqrt(1.5)
    assert rmse(Y, Y_HAT) == pytest.approx(math.sqrt(1.5))
    # step 1: sqrt((1 + 4) / 2) = sqrt(2.5); step 2: sqrt((0 + 1) / 2) = sqrt(0.5)
    np.testing.assert_allclose(rmse(Y, Y_HAT, per_horizon=True), [math.sqrt(2.5), math.sqrt(0.5)])


def test_wape_hand_computed() -> None:
    # overall: sum|e| / sum|y| = 4 / (1 + 2 + 3 + 4) = 0.4
    assert wape(Y, Y_HAT) == pytest.approx(0.4)
    # step 1: (1 + 2) / (1 + 3) = 0.75; step 2: (0 + 1) / (2 + 4) = 1/6
    np.testing.assert_allclose(wape(Y, Y_HAT, per_horizon=True), [0.75, 1 / 6])


def test_wape_is_nan_without_volume() -> None:
    with np.errstate(all="raise"):  # no divide-by-zero warning either
        assert math.isnan(wape(np.zeros((2, 3)), np.ones((2, 3))))
        # step 1 has no volume (nan), step 2: |0-1| + |3-2| over 1 + 3 = 0.5
        per_h = wape(np.array([[0.0, 1.0], [0.0, 3.0]]), np.array([[1.0, 0.0], [0.0, 2.0]]), per_horizon=True)
    assert math.isnan(per_h[0])
    assert per_h[1] == pytest.approx(0.5)


def test_mase_scale_hand_computed() -> None:
    # season 2: |x[t] - x[t-2]| = |2-1|, |5-3|, |4-2|, |6-5| = 1, 2, 2, 1 -> mean 1.5
    assert mase_scale(np.array([1.0, 3.0, 2.0, 5.0, 4.0, 6.0]), season=2) == pytest.approx(1.5)
    # daily season 7: a weekly pattern shifted up by 7 after one week -> every |diff| = 7
    weekly = np.arange(7.0)
    assert mase_scale(np.concatenate([weekly, weekly + 7]), season=7) == pytest.approx(7.0)
    # per-target columns: second target is twice the first -> scale twice as large
    two = np.column_stack([[1.0, 3.0, 2.0, 5.0, 4.0, 6.0], [2.0, 6.0, 4.0, 10.0, 8.0, 12.0]])
    np.testing.assert_allclose(mase_scale(two, season=2), [1.5, 3.0])


def test_mase_scale_needs_more_than_one_season() -> None:
    with pytest.raises(ValueError, match="at least 8"):
        mase_scale(np.arange(7.0), season=7)


def test_mase_divides_mae_by_scale() -> None:
    # MAE 1.0 (above) / scale 1.5 = 2/3; per step 1.5/1.5 = 1, 0.5/1.5 = 1/3
    assert mase(Y, Y_HAT, scale=1.5) == pytest.approx(2 / 3)
    np.testing.assert_allclose(mase(Y, Y_HAT, scale=1.5, per_horizon=True), [1.0, 1 / 3])
    # a zero scale (series repeats exactly every season) is undefined -> nan
    assert math.isnan(mase(Y, Y_HAT, scale=0.0))


def test_mase_per_target_scale() -> None:
    # (N=1, H=2, T=2): target 0 errors 1, 1 with scale 1; target 1 errors 4, 4 with scale 2
    y = np.array([[[1.0, 4.0], [1.0, 4.0]]])
    y_hat = np.array([[[0.0, 0.0], [2.0, 8.0]]])
    # scaled errors: 1, 2, 1, 2 -> mean 1.5
    assert mase(y, y_hat, scale=np.array([1.0, 2.0])) == pytest.approx(1.5)


def test_pinball_hand_computed() -> None:
    # y = 10; q10, q50, q90 = 8, 11, 15; e = y - q = 2, -1, -5
    # loss: 0.1*2 = 0.2 ; (0.5-1)*(-1) = 0.5 ; (0.9-1)*(-5) = 0.5 -> mean 1.2 / 3 = 0.4
    y = np.array([[10.0]])
    q = np.array([[[8.0, 11.0, 15.0]]])
    assert pinball_loss(y, q, quantiles=(0.1, 0.5, 0.9)) == pytest.approx(0.4)


def test_pinball_asymmetric_quantile() -> None:
    # P90 two beds too low: 0.9 * 2 = 1.8; two beds too high: (0.9 - 1) * (-2) = 0.2
    y = np.array([[10.0, 10.0]])
    q = np.array([[[8.0], [12.0]]])
    np.testing.assert_allclose(pinball_loss(y, q, quantiles=(0.9,), per_horizon=True), [1.8, 0.2])
    assert pinball_loss(y, q, quantiles=(0.9,)) == pytest.approx(1.0)
    # P10 is the mirror image: too low costs 0.2, too high 1.8
    np.testing.assert_allclose(pinball_loss(y, q, quantiles=(0.1,), per_horizon=True), [0.2, 1.8])


@settings(max_examples=50, deadline=None)
@given(
    y=arrays(np.float64, (3, 4), elements=st.floats(0, 1e3)),
    q=arrays(np.float64, (3, 4), elements=st.floats(0, 1e3)),
)
def test_median_pinball_is_half_the_mae(y: np.ndarray, q: np.ndarray) -> None:
    assert pinball_loss(y, q[..., None], quantiles=(0.5,)) == pytest.approx(0.5 * mae(y, q), abs=1e-9)


def test_coverage_and_width_hand_computed() -> None:
    y = np.array([[1.0, 5.0], [3.0, 10.0]])
    lower = np.array([[0.0, 6.0], [2.0, 2.0]])
    upper = np.array([[2.0, 7.0], [6.0, 9.0]])
    # inside? 1 in [0,2] yes; 5 in [6,7] no; 3 in [2,6] yes; 10 in [2,9] no
    assert interval_coverage(y, lower, upper) == pytest.approx(0.5)
    np.testing.assert_allclose(interval_coverage(y, lower, upper, per_horizon=True), [1.0, 0.0])
    # widths 2, 1, 4, 7 -> mean 3.5; step 1 (2 + 4)/2 = 3, step 2 (1 + 7)/2 = 4
    assert interval_width(lower, upper) == pytest.approx(3.5)
    np.testing.assert_allclose(interval_width(lower, upper, per_horizon=True), [3.0, 4.0])


def test_coverage_bounds_are_inclusive() -> None:
    y = np.array([[2.0, 6.0]])
    assert interval_coverage(y, np.array([[2.0, 1.0]]), np.array([[3.0, 6.0]])) == 1.0


def test_calibrated_normal_band_covers_80_percent() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=(20_000, 5))
    z90 = 1.2815515655446004  # standard normal 0.9 quantile
    q = np.broadcast_to(np.array([-z90, 0.0, z90]), y.shape + (3,))
    out = forecast_metrics(y, q, quantiles=(0.1, 0.5, 0.9))
    assert out["coverage"] == pytest.approx(0.8, abs=0.01)
    assert out["nominal_coverage"] == pytest.approx(0.8)
    assert out["width"] == pytest.approx(2 * z90)


def _quantile_forecast() -> np.ndarray:
    # median = Y_HAT; P10 = median - 1; P90 = median + 2  -> shape (2, 2, 3)
    return np.stack([Y_HAT - 1, Y_HAT, Y_HAT + 2], axis=-1)


def test_forecast_metrics_bundle() -> None:
    q = _quantile_forecast()
    out = forecast_metrics(Y, q, quantiles=(0.1, 0.5, 0.9), mase_scale=1.5)
    assert out["mae"] == pytest.approx(1.0)
    assert out["rmse"] == pytest.approx(math.sqrt(1.5))
    assert out["wape"] == pytest.approx(0.4)
    assert out["mase"] == pytest.approx(2 / 3)
    assert out["width"] == pytest.approx(3.0)
    # bands [y_hat-1, y_hat+2]: [1,4] has 1 yes; [1,4] has 2 yes; [0,3] has 3 yes; [4,7] has 4 yes
    assert out["coverage"] == pytest.approx(1.0)
    assert out["n"] == 4
    assert out["per_horizon"]["mae"] == pytest.approx([1.5, 0.5])
    assert set(out["per_horizon"]) == {"mae", "rmse", "wape", "mase", "pinball", "coverage", "width"}
    assert all(len(v) == 2 for v in out["per_horizon"].values())
    json.dumps(out)  # plain Python types, ready for a results file


def test_forecast_metrics_without_scale_reports_nan_mase() -> None:
    out = forecast_metrics(Y, _quantile_forecast(), quantiles=(0.1, 0.5, 0.9))
    assert math.isnan(out["mase"]) and all(math.isnan(v) for v in out["per_horizon"]["mase"])


def test_forecast_metrics_three_d_targets() -> None:
    y = np.stack([Y, 2 * Y], axis=-1)  # (2, 2, 2): second target doubled
    q = np.stack([_quantile_forecast(), 2 * _quantile_forecast()], axis=2)  # (2, 2, 2, 3)
    out = forecast_metrics(y, q, quantiles=(0.1, 0.5, 0.9))
    # |e| target 0: 1, 0, 2, 1 ; target 1: 2, 0, 4, 2 -> sum 12 over 8 values
    assert out["mae"] == pytest.approx(1.5)
    assert out["wape"] == pytest.approx(12 / 30)


def test_forecast_metrics_clear_errors() -> None:
    q = _quantile_forecast()
    with pytest.raises(ValueError, match="not among the forecast's levels"):
        forecast_metrics(Y, q, quantiles=(0.1, 0.5, 0.9), interval=(0.05, 0.95))
    with pytest.raises(ValueError, match="expected"):
        forecast_metrics(Y, q[..., :2], quantiles=(0.1, 0.5, 0.9))
    with pytest.raises(ValueError, match="strictly increasing"):
        forecast_metrics(Y, q, quantiles=(0.5, 0.1, 0.9))
    with pytest.raises(ValueError, match="non-finite"):
        forecast_metrics(np.array([[1.0, np.nan], [3.0, 4.0]]), q, quantiles=(0.1, 0.5, 0.9))
    with pytest.raises(ValueError, match="cross"):
        forecast_metrics(Y, q[..., ::-1], quantiles=(0.1, 0.5, 0.9))
    with pytest.raises(ValueError, match=r"\(N, H\)"):
        mae(np.ones(3), np.ones(3))


def test_aggregate_over_hospitals_weighted_and_unweighted() -> None:
    def fake(wape_value: float, mase_value: float) -> dict[str, object]:
        metrics = {m: 1.0 for m in ("mae", "rmse", "pinball", "coverage", "width")}
        metrics.update(wape=wape_value, mase=mase_value)
        per_h = {m: [v, v] for m, v in metrics.items()}
        return {**metrics, "per_horizon": per_h}

    per_hospital = {"H000": fake(0.1, 0.8), "H001": fake(0.5, math.nan)}
    agg = aggregate_over_hospitals(per_hospital, {"H000": 900.0, "H001": 100.0})
    # volume weighted: (0.1 * 900 + 0.5 * 100) / 1000 = 0.14 ; unweighted (0.1 + 0.5) / 2 = 0.3
    assert agg["volume_weighted"]["wape"] == pytest.approx(0.14)
    assert agg["unweighted"]["wape"] == pytest.approx(0.3)
    assert agg["volume_weighted"]["per_horizon"]["wape"] == pytest.approx([0.14, 0.14])
    # H001 has no MASE: both averages use H000 alone
    assert agg["volume_weighted"]["mase"] == pytest.approx(0.8)
    assert agg["unweighted"]["mase"] == pytest.approx(0.8)
    assert agg["unweighted"]["hospitals"] == 2
    with pytest.raises(ValueError, match="no volume"):
        aggregate_over_hospitals(per_hospital, {"H000": 1.0})


def test_volume_weighted_wape_equals_pooled_wape() -> None:
    rng = np.random.default_rng(1)
    ys = {"A": rng.poisson(50, (4, 3)).astype(float), "B": rng.poisson(5, (4, 3)).astype(float)}
    qs = {
        h: np.sort(np.stack([y * 0.8, y + rng.normal(0, 2, y.shape), y * 1.3 + 1], axis=-1), axis=-1)
        for h, y in ys.items()
    }
    levels = (0.1, 0.5, 0.9)
    per_hospital = {h: forecast_metrics(ys[h], qs[h], quantiles=levels) for h in ys}
    agg = aggregate_over_hospitals(per_hospital, {h: float(np.abs(y).sum()) for h, y in ys.items()})
    pooled = forecast_metrics(np.concatenate([ys["A"], ys["B"]]), np.concatenate([qs["A"], qs["B"]]), quantiles=levels)
    assert agg["volume_weighted"]["wape"] == pytest.approx(pooled["wape"])
