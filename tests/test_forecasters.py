"""One contract suite over every registered forecaster (classical, neural, federated, zero-shot), tiny settings."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medalloc_core.contract import ADMISSIONS, CENSUS, DATE, UNIT, Frequency, UnitRecords
from medalloc_core.forecast.evaluation import evaluate_forecaster, evaluation_spec, overall, rolling_origins
from medalloc_core.forecast.forecasters import (
    FORECASTERS,
    Forecaster,
    Fracast,
    FracastBackbone,
    HospitalData,
    NeuralForecaster,
    Origins,
    SeasonalNaiveForecaster,
    adaptive_batch_size,
    make_forecaster,
)
from medalloc_core.forecast.models import SES_ALPHAS, SES_SHARPNESS, smoothed_level
from medalloc_core.synthetic import RegionConfig, generate_region

HISTORY, HORIZON, WEEKS = 14, 7, 4  # tiny: 4 held-out weeks, 4 origins a week apart


def _tiny_params(name: str) -> dict:
    """Small, fast settings per registered forecaster (a new entry needs one line here)."""
    neural = dict(hidden=8, epochs=1, batch_size=32)
    return {
        "neural": neural,
        "local_only": {"base": NeuralForecaster(**neural)},
        "federated": {"base": NeuralForecaster(**neural), "rounds": 2},
        "fracast": {"context": 64},
        "fracast_head": {"context": (), "rounds": 2, "hidden": 4, "backbone": FracastBackbone(context=64)},
        "ensemble": {"members": (NeuralForecaster(**neural), SeasonalNaiveForecaster())},
    }.get(name, {})


def _records(frame: pd.DataFrame, name: str) -> UnitRecords:
    return UnitRecords(frame.sort_values([UNIT, DATE]).reset_index(drop=True), Frequency.DAILY, Path(name), "daily")


@pytest.fixture(scope="module")
def hospitals() -> dict[str, HospitalData]:
    region = generate_region(
        RegionConfig(hospitals=2, days=140, seed=3, short_history_fraction=0.0, min_beds=80, max_beds=200)
    )
    spec = evaluation_spec(
        history=HISTORY, horizon=HORIZON, targets=(ADMISSIONS, CENSUS), weeks=WEEKS, val_periods=HORIZON
    )
    return {
        h.hospital_id: HospitalData(
            h.hospital_id, _records(h.daily[[DATE, UNIT, ADMISSIONS, CENSUS]], h.hospital_id), spec
        )
        for h in region.hospitals
    }


@pytest.fixture(params=sorted(FORECASTERS))
def name(request) -> str:
    if request.param in ("fracast", "fracast_head") and not Fracast.available():
        pytest.skip("optional zero-shot package not installed (pip install 'medalloc[zeroshot]')")
    return request.param


def test_hyperparameters_are_keyword_arguments_stored_as_given(name):
    cls = FORECASTERS[name]
    params = inspect.signature(cls.__init__).parameters
    assert all(p.default is not inspect.Parameter.empty for n, p in params.items() if n != "self"), (
        "every hyperparameter has a default"
    )
    params = _tiny_params(name)
    forecaster = make_forecaster(name, **params)
    for key, value in params.items():
        assert forecaster.get_params()[key] is value  # no logic in __init__: stored exactly as given
    assert not any(k.endswith("_") for k in vars(forecaster)), "nothing learned before fit"


def test_predict_before_fit_raises(name, hospitals):
    hospital = next(iter(hospitals.values()))
    with pytest.raises(RuntimeError, match="not fitted"):
        make_forecaster(name, **_tiny_params(name)).predict(hospital, rolling_origins(hospital))


def test_fit_returns_self_and_sets_learned_attributes(name, hospitals):
    forecaster = make_forecaster(name, **_tiny_params(name))
    assert forecaster.fit(hospitals) is forecaster
    assert forecaster.hospitals_ == tuple(hospitals)


def test_quantile_forecasts_have_the_contract_shape(name, hospitals):
    forecaster = make_forecaster(name, **_tiny_params(name)).fit(hospitals)
    for hospital in hospitals.values():
        origins = rolling_origins(hospital, n_origins=WEEKS, stride=7)
        assert len(origins) == WEEKS * len(hospital.records.units)
        q = forecaster.predict(hospital, origins)
        assert q.shape == (len(origins), HORIZON, 2, 3)
        assert np.isfinite(q).all() and (q >= 0).all()
        assert (np.diff(q, axis=-1) >= 0).all(), "quantiles must not cross"


def test_forecasts_use_only_data_before_the_origin(name, hospitals):
    """Changing every value from the first origin on leaves the forecasts from that origin unchanged."""
    forecaster = make_forecaster(name, **_tiny_params(name)).fit(hospitals)
    hospital = next(iter(hospitals.values()))
    origins = rolling_origins(hospital, n_origins=1)
    first = origins.target_start.min()
    frame = hospital.records.frame.copy()
    future = frame[DATE] >= first
    frame.loc[future, [ADMISSIONS, CENSUS]] = frame.loc[future, [ADMISSIONS, CENSUS]] * 3 + 50
    altered = HospitalData(hospital.name, _records(frame, hospital.name), hospital.spec)
    np.testing.assert_allclose(
        forecaster.predict(altered, origins), forecaster.predict(hospital, origins), rtol=1e-5, atol=1e-5
    )


def test_fit_never_reads_the_held_out_weeks(name, hospitals):
    """Rolling-origin evaluation scores the held-out weeks: changing them before ``fit`` changes no forecast."""
    altered = {}
    for n, hospital in hospitals.items():
        frame = hospital.records.frame.copy()
        last = frame.groupby(UNIT)[DATE].transform("max")
        held_out = frame[DATE] > last - pd.Timedelta(days=7 * WEEKS)
        frame.loc[held_out, [ADMISSIONS, CENSUS]] = frame.loc[held_out, [ADMISSIONS, CENSUS]] * 5 + 100
        altered[n] = HospitalData(n, _records(frame, n), hospital.spec)
    on_truth = make_forecaster(name, **_tiny_params(name)).fit(hospitals)
    on_altered = make_forecaster(name, **_tiny_params(name)).fit(altered)
    for hospital in hospitals.values():
        origins = rolling_origins(hospital)
        np.testing.assert_allclose(
            on_altered.predict(hospital, origins), on_truth.predict(hospital, origins), rtol=1e-5, atol=1e-5
        )


def test_a_network_scores_with_the_scaler_of_the_counts_it_learned_from(hospitals):
    """Series scaling: weights given as they are (a federation's), inputs scaled as in training (the release's)."""
    from medalloc_core.forecast.forecasters import predict_origins
    from medalloc_core.forecast.models import state_arrays

    hospital = next(iter(hospitals.values()))
    frame = hospital.records.frame.copy()
    noise = np.random.default_rng(0).normal(0, 10, size=(len(frame), 2))
    frame[[ADMISSIONS, CENSUS]] = frame[[ADMISSIONS, CENSUS]].astype(float) + noise
    released = HospitalData(hospital.name, _records(frame, hospital.name), hospital.spec)
    trained = NeuralForecaster(model="mlp", hidden=8, epochs=1, batch_size=32).fit({hospital.name: released})
    arrays = state_arrays(trained.model_)
    given = NeuralForecaster(model="mlp", hidden=8, init=arrays, epochs=0).fit({hospital.name: released})
    assert all(np.array_equal(v, arrays[k]) for k, v in state_arrays(given.model_).items())
    origins = rolling_origins(hospital)
    spec = given.model_spec(hospital.spec)
    q = given.predict(hospital, origins)
    np.testing.assert_allclose(q, trained.predict(hospital, origins), rtol=1e-6)
    scaler = released.dataset(spec).scaler
    expected = np.clip(predict_origins(given.model_, hospital, spec, origins, scaler=scaler), 0, None)
    np.testing.assert_allclose(q, np.maximum.accumulate(expected, axis=-1), rtol=1e-5, atol=1e-5)
    own = predict_origins(given.model_, hospital, spec, origins)  # a scaler fitted on the true counts instead
    assert not np.allclose(own, expected)


def test_refit_with_the_same_seed_is_reproducible(name, hospitals):
    hospital = next(iter(hospitals.values()))
    origins = rolling_origins(hospital)
    a = make_forecaster(name, **_tiny_params(name)).fit(hospitals).predict(hospital, origins)
    b = make_forecaster(name, **_tiny_params(name)).fit(hospitals).predict(hospital, origins)
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_evaluation_scores_every_hospital_at_the_same_origins(hospitals):
    origins = {n: rolling_origins(h) for n, h in hospitals.items()}
    scores = {}
    for name in ("seasonal_naive", "holt_winters"):
        per = evaluate_forecaster(make_forecaster(name).fit(hospitals), hospitals, origins)
        assert set(per) == set(hospitals)
        scores[name] = overall(per)["volume_weighted"]
    assert all(0 < s["wape"] < 1 and 0 <= s["coverage"] <= 1 for s in scores.values())
    assert scores["seasonal_naive"]["pinball"] != scores["holt_winters"]["pinball"]


def test_rolling_origins_tile_the_held_out_weeks(hospitals):
    hospital = next(iter(hospitals.values()))
    origins = rolling_origins(hospital, n_origins=WEEKS)  # spread evenly: here one every horizon
    last = hospital.records.frame[DATE].max()
    for unit in hospital.records.units:
        starts = np.sort(origins.target_start[origins.units == unit])
        assert len(starts) == WEEKS
        assert np.all(np.diff(starts) == np.timedelta64(HORIZON, "D"))
        assert pd.Timestamp(starts[0]) == last - pd.Timedelta(days=7 * WEEKS - 1)  # the first held-out day
    spread = rolling_origins(hospital)  # 8 origins over 4 weeks: 3 days apart, the last forecast ends on the last day
    for unit in hospital.records.units:
        starts = np.sort(spread.target_start[spread.units == unit])
        assert len(starts) == 8 and np.all(np.diff(starts) == np.timedelta64(3, "D"))
        assert pd.Timestamp(starts[-1]) + pd.Timedelta(days=HORIZON - 1) <= last
    with pytest.raises(ValueError, match="do not fit in 28 held-out days"):
        rolling_origins(hospital, n_origins=30)


def test_origins_reject_mismatched_lengths():
    with pytest.raises(ValueError, match="units"):
        Origins(np.array(["a", "b"], dtype=object), np.array(["2024-01-01"], dtype="datetime64[ns]"))


def test_unknown_forecaster_is_named():
    with pytest.raises(ValueError, match="unknown forecaster 'prophet'"):
        make_forecaster("prophet")


def test_untrained_hybrid_equals_its_classical_forecast(hospitals):
    """Zero-initialised correction: the untrained network is the smoothed weekly level plus the weekly profile."""
    hospital = next(iter(hospitals.values()))
    origins = rolling_origins(hospital)
    forecaster = NeuralForecaster(model="hybrid", epochs=1).fit({hospital.name: hospital})
    torch.manual_seed(0)
    untrained = NeuralForecaster(model="hybrid")
    untrained.fit({hospital.name: hospital})
    with torch.no_grad():
        for p in untrained.model_.out.parameters():
            p.zero_()
    q = untrained.predict(hospital, origins)
    # The classical median by hand from the raw series: the weekly means of up to L whole weeks before
    # the origin, exponentially smoothed with the weight of the smallest one-week-ahead error, + the
    # weekday's deviation over up to 26 whole weeks.
    series = (
        hospital.records.frame[hospital.records.frame[UNIT] == origins.units[0]]
        .set_index(DATE)[ADMISSIONS]
        .astype(float)
    )
    t = series.index.get_loc(pd.Timestamp(origins.target_start[0]))
    past = series.to_numpy()[:t]
    weeks = min(26, t // 7)
    block = past[t - 7 * weeks :].reshape(weeks, 7)
    profile = (block - block.mean(1, keepdims=True)).mean(0)
    k = min(HISTORY, t // 7)  # the weeks channel holds as many weeks as the window has days
    means = past[t - 7 * k :].reshape(k, 7).mean(1)
    levels, errors = [], []
    for alpha in SES_ALPHAS:
        level, error = means[0], 0.0
        for mean in means[1:]:
            error += abs(mean - level)
            level += alpha * (mean - level)
        levels.append(level)
        errors.append(error)
    weights = np.exp(-SES_SHARPNESS * np.array(errors) / np.mean(errors))  # softmin of the relative errors
    level = float(np.dot(weights / weights.sum(), levels))
    assert untrained.model_.config.level == "weeks"
    expected = level + profile[np.arange(HORIZON) % 7]
    np.testing.assert_allclose(q[0, :, 0, 1], np.clip(expected, 0, None), rtol=1e-4, atol=1e-4)
    assert forecaster.train_result_ is not None and forecaster.train_result_.steps > 0


def test_the_weekly_level_is_smooth_when_weeks_are_noisy_and_follows_a_shift():
    """One noisy week does not move the level; a lasting shift does; weeks before the series are skipped."""
    noisy = torch.tensor([[[1.0, -1.0] * 14]])  # (B=1, T=1, L=28): stable around 0, last week -1
    assert abs(float(smoothed_level(noisy))) < 0.3
    shifted = torch.tensor([[[0.5] * 20 + [5.0] * 8]])
    assert float(smoothed_level(shifted)) == pytest.approx(5.0, abs=0.05)
    seen = torch.tensor([[3.0, 1.0, 2.0, 4.0, 3.0, 2.5]])
    late = torch.cat([torch.zeros(1, 22), seen], dim=-1)  # a series that began 6 weeks before the origin
    assert float(smoothed_level(late[None])) == pytest.approx(float(smoothed_level(seen[None])))


def test_adaptive_batch_keeps_several_batches_per_epoch(caplog):
    assert adaptive_batch_size(10_000, 256) == 256
    with caplog.at_level("WARNING"):
        assert adaptive_batch_size(100, 256) == 25
    assert "lowered from 256 to 25" in caplog.text
    assert adaptive_batch_size(3, 256) == 1


def test_every_registered_forecaster_is_a_forecaster():
    """One public registry, one class name: the network module is ForecasterNet, never a second Forecaster."""
    from medalloc_core.forecast import models

    assert not hasattr(models, "Forecaster") and not hasattr(models, "MODELS")
    assert all(issubclass(cls, Forecaster) for cls in FORECASTERS.values())
    assert math.isfinite(len(FORECASTERS))


@pytest.mark.parametrize("model", ["mlp", "tcn"])  # "hybrid" is the registry's default "neural" entry above
def test_every_network_is_reached_from_the_registry_by_name(model, hospitals):
    """The networks are a private detail of models.py: the public registry reaches each by its config name."""
    from medalloc_core.forecast.models import MODEL_NAMES

    assert set(MODEL_NAMES) == {"mlp", "tcn", NeuralForecaster().model}
    forecaster = make_forecaster("neural", model=model, hidden=8, epochs=1, batch_size=32).fit(hospitals)
    assert forecaster.model_.config.model == model
    hospital = next(iter(hospitals.values()))
    assert forecaster.predict(hospital, rolling_origins(hospital)).shape[1:] == (HORIZON, 2, 3)


def test_every_classical_method_is_reached_from_the_registry_by_name():
    """The classical maths (forecast.baselines) sits privately beneath the registry: each model has an entry."""
    from medalloc_core.forecast.baselines import _SERIES_MODELS
    from medalloc_core.forecast.forecasters import Classical

    methods = {name: cls().method for name, cls in FORECASTERS.items() if issubclass(cls, Classical)}
    assert methods == {name: name for name in _SERIES_MODELS}


def test_federated_dp_sgd_spends_at_most_the_target_per_hospital(hospitals):
    """Per-window DP-SGD through the hybrid's exact (B, T, d) clipping: each node's rounds compose to <= target."""
    from medalloc_core.forecast.forecasters import Federated
    from medalloc_core.forecast.training import DPConfig

    dp = DPConfig(target_epsilon=2.0, planned_rounds=2, delta=1e-6, accountant="rdp")
    fed = Federated(NeuralForecaster(hidden=8, batch_size=32, dp=dp), rounds=2).fit(hospitals)
    spent = fed.epsilon_spent(delta=1e-6)
    assert set(spent) == set(hospitals)
    assert all(0 < e <= 2.0 * 1.01 for e in spent.values()), spent
    assert all(len(results) == 2 and results[0].noise_multiplier for results in fed.results_.values())
