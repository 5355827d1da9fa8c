"""fracast + a federated head: starts as fracast exactly, learns a signal fracast cannot see, repeats under a seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medalloc_core.contract import ADMISSIONS, DATE, UNIT, Frequency, UnitRecords
from medalloc_core.forecast.evaluation import evaluation_spec, rolling_origins, score_forecasts
from medalloc_core.forecast.features import REGION_PREFIX
from medalloc_core.forecast.forecasters import Fracast, FracastBackbone, FracastHead, HospitalData
from medalloc_core.forecast.forecasters.fracast_head import HeadNet

pytestmark = pytest.mark.skipif(
    not FracastBackbone.available(),
    reason="optional zero-shot package not installed (pip install 'medalloc[zeroshot]')",
)

HISTORY, HORIZON, WEEKS = 14, 7, 4


def _leading_region(name: str, seed: int, days: int = 240) -> HospitalData:
    """A hospital whose admissions repeat the region's released total of ``HORIZON`` days before.

    The region is a random walk: nothing in the hospital's own past tells where it goes next,
    while the region channel (days before the origin only) shows it a week ahead. fracast reads
    the hospital's series alone; a head reading the region can learn the rest.
    """
    rng = np.random.default_rng(seed)
    region = np.clip(150 + np.cumsum(rng.normal(0, 6, days + HORIZON)), 20, None)
    admissions = np.round(region[:days])  # day t: the region at t - HORIZON
    dates = pd.date_range("2024-01-01", periods=days, freq="D")
    frame = pd.DataFrame(
        {DATE: dates, UNIT: "ward", ADMISSIONS: admissions, f"{REGION_PREFIX}{ADMISSIONS}": region[HORIZON:]}
    )
    spec = evaluation_spec(history=HISTORY, horizon=HORIZON, targets=(ADMISSIONS,), weeks=WEEKS, val_periods=28)
    return HospitalData(name, UnitRecords(frame, Frequency.DAILY, Path(name), "daily"), spec)


@pytest.fixture(scope="module")
def backbone() -> FracastBackbone:
    return FracastBackbone(context=64)  # shared: every fit reads the same contexts once


@pytest.fixture(scope="module")
def hospitals() -> dict[str, HospitalData]:
    return {f"H{i}": _leading_region(f"H{i}", seed=i) for i in range(2)}


def _head(backbone: FracastBackbone, **kw: object) -> FracastHead:
    params: dict[str, object] = dict(
        context=("region",),
        rounds=10,
        local_epochs=5,
        lr=3e-3,
        batch_size=32,
        stride=2,
        val_stride=1,
        backbone=backbone,
    )
    return FracastHead(**(params | kw))  # type: ignore[arg-type]


def test_head_net_starts_as_the_identity_on_fracast_quantiles() -> None:
    net = HeadNet(history=5, n_features=3, horizon=4, n_targets=2, level_index=[0, 4, 8], median_position=1)
    f = torch.sort(torch.randn(6, 4, 2, 9), dim=-1).values
    out = net(torch.randn(6, 5, 3), f)
    assert out.shape == (6, 4, 2, 3)
    torch.testing.assert_close(out, f[..., [0, 4, 8]], rtol=0, atol=1e-6)


def test_untrained_model_forecasts_exactly_what_fracast_does(hospitals, backbone) -> None:
    """A head kept at its start (no round may beat it) gives fracast zero-shot's quantiles."""
    kept = _head(backbone, rounds=1, margin=1e9).fit(hospitals)
    zero_shot = Fracast(context=64).fit(hospitals)
    assert kept.best_round_ == 0
    for h in hospitals.values():
        origins = rolling_origins(h)
        pred = kept.predict(h, origins)
        assert pred.shape == (len(origins), HORIZON, 1, 3)
        np.testing.assert_allclose(pred, zero_shot.predict(h, origins), rtol=1e-5, atol=1e-4)


def test_training_learns_a_signal_fracast_cannot_see(hospitals, backbone) -> None:
    zero_shot = _head(backbone, rounds=1, margin=1e9).fit(hospitals)
    trained = _head(backbone).fit(hospitals)
    assert trained.best_round_ > 0, "a round beat fracast on validation beyond the noise"

    def pinball(model: FracastHead) -> float:
        scores = []
        for h in hospitals.values():
            origins = rolling_origins(h)
            scores.append(score_forecasts(h.actuals(origins), model.predict(h, origins), (0.1, 0.5, 0.9))["pinball"])
        return float(np.mean(scores))

    assert pinball(trained) < 0.9 * pinball(zero_shot)


def test_same_seed_same_model(hospitals, backbone) -> None:
    h = hospitals["H0"]
    origins = rolling_origins(h)
    a = _head(backbone, rounds=3, margin=0.0).fit(hospitals).predict(h, origins)
    b = _head(backbone, rounds=3, margin=0.0).fit(hospitals).predict(h, origins)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("mode", ["local", "centralized"])
def test_local_and_centralized_heads_forecast_every_hospital(hospitals, backbone, mode: str) -> None:
    model = _head(backbone, mode=mode, rounds=2).fit(hospitals)
    for h in hospitals.values():
        origins = rolling_origins(h)
        assert np.isfinite(model.predict(h, origins)).all()


def test_bad_settings_are_refused(hospitals, backbone) -> None:
    with pytest.raises(ValueError, match="mode"):
        _head(backbone, mode="pooled").fit(hospitals)
    with pytest.raises(ValueError, match="median"):
        _head(backbone, quantiles=(0.1, 0.9)).fit(hospitals)


def test_personal_heads_are_kept_only_where_they_beat_the_federated_head(hospitals, backbone) -> None:
    """A personal copy per hospital: kept when it beats the federated head beyond the noise, else the shared one."""
    never = _head(backbone, rounds=2, personal_epochs=3, margin=1e9).fit(hospitals)
    assert never.heads_ == {}  # no personal head can clear an infinite margin
    model = _head(backbone, rounds=2, personal_epochs=3).fit(hospitals)
    assert set(model.heads_) <= set(hospitals)
    for h in hospitals.values():
        assert np.isfinite(model.predict(h, rolling_origins(h))).all()


def test_saved_forecasts_are_read_back_without_running_fracast(backbone, tmp_path) -> None:
    series = 20 + 5 * np.sin(np.arange(80) / 3)
    first = backbone.forecast(series, [40, 80], HORIZON)
    backbone.save(tmp_path / "cache.npz")
    other = FracastBackbone(context=64)
    other.load(tmp_path / "cache.npz")
    np.testing.assert_array_equal(other.forecast(series, [40, 80], HORIZON), first)
    assert other._model is None  # every context was a hit: fracast was never loaded
