"""The hybrid's context channels (the region, weekly means, year-ago) read nothing from a held-out or future day."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from medalloc_core.contract import ADMISSIONS, CENSUS, DATE, UNIT, UnitRecords
from medalloc_core.forecast.features import REGION_PREFIX, WindowSpec, forecast_inputs, prepare_hospital
from medalloc_core.forecast.forecasters import HospitalData, NeuralForecaster
from medalloc_core.forecast.region import daily_totals, regional, with_region
from tests.forecast_fixtures import records

DAYS = 460
CONTEXT = ("region", "weeks", "year_ago")
SPEC = WindowSpec(
    history=28,
    horizon=14,
    targets=(ADMISSIONS, CENSUS),
    val_periods=28,
    test_periods=56,
    scaling="window",
    context=CONTEXT,
)


@pytest.fixture(scope="module")
def region_records() -> dict[str, UnitRecords]:
    hospitals = {f"H{i}": records(days=DAYS, seed=10 * i) for i in range(3)}
    return regional(hospitals)


def _edit(recs: UnitRecords, since: pd.Timestamp, column: str, add: float) -> UnitRecords:
    frame = recs.frame.copy()
    frame.loc[frame[DATE] >= since, column] = frame.loc[frame[DATE] >= since, column] + add
    return UnitRecords(frame, recs.frequency, recs.source, recs.shape)


def test_region_is_the_sum_of_the_others_released_totals(region_records: dict[str, UnitRecords]) -> None:
    plain = {
        n: UnitRecords(
            r.frame.drop(columns=[c for c in r.frame if c.startswith(REGION_PREFIX)]), r.frequency, r.source, r.shape
        )
        for n, r in region_records.items()
    }
    totals = {n: daily_totals(r) for n, r in plain.items()}
    frame = region_records["H0"].frame.drop_duplicates(DATE).set_index(DATE)
    expected = totals["H1"][ADMISSIONS] + totals["H2"][ADMISSIONS]
    np.testing.assert_allclose(frame[REGION_PREFIX + ADMISSIONS].to_numpy(), expected.loc[frame.index].to_numpy())
    # H0's own counts are not in its region
    bumped = regional({**plain, "H0": _edit(plain["H0"], frame.index.min(), ADMISSIONS, 1000.0)})
    np.testing.assert_array_equal(
        bumped["H0"].frame[REGION_PREFIX + ADMISSIONS].to_numpy(),
        region_records["H0"].frame[REGION_PREFIX + ADMISSIONS].to_numpy(),
    )


@pytest.mark.parametrize("column", [REGION_PREFIX + ADMISSIONS, ADMISSIONS])
def test_a_window_reads_nothing_from_its_origin_on(region_records: dict[str, UnitRecords], column: str) -> None:
    """Changing the region (or the hospital's own counts) from day D on leaves every window whose
    first forecast day is D or earlier unchanged: the regional signal at t uses releases before t only."""
    recs = region_records["H0"]
    ds = prepare_hospital(recs, SPEC)
    since = pd.Timestamp(recs.frame[DATE].min()) + pd.Timedelta(days=400)
    changed = prepare_hospital(_edit(recs, since, column, 300.0), SPEC)
    for part, other in ((ds.train, changed.train), (ds.val, changed.val), (ds.test, changed.test)):
        before = pd.DatetimeIndex(part.target_start) <= since
        torch.testing.assert_close(part.X[before], other.X[before])
    after = pd.DatetimeIndex(ds.test.target_start) > since
    assert after.any() and not torch.equal(ds.test.X[after], changed.test.X[after])  # the channel is read


@pytest.mark.parametrize("column", [REGION_PREFIX + CENSUS, CENSUS])
def test_no_held_out_day_reaches_a_training_window(region_records: dict[str, UnitRecords], column: str) -> None:
    recs = region_records["H1"]
    ds = prepare_hospital(recs, SPEC)
    first_held_out = pd.Timestamp(recs.frame[DATE].max()) - pd.Timedelta(days=56 + 28 - 1)
    changed = prepare_hospital(_edit(recs, first_held_out, column, 500.0), SPEC)
    torch.testing.assert_close(ds.train.X, changed.train.X)
    torch.testing.assert_close(ds.train.y, changed.train.y)
    assert len(ds.train) > 100


def test_context_channels_are_named_and_the_spec_travels(region_records: dict[str, UnitRecords]) -> None:
    ds = prepare_hospital(region_records["H2"], SPEC)
    names = ds.feature_names
    assert ds.train.X.shape[2] == len(names)
    in_order = ("weeks", "year_ago", "region")  # whatever order the spec was given: weeks first (the hybrid's level)
    assert SPEC.context == in_order and sorted(CONTEXT) == sorted(in_order)
    assert names[6:12] == tuple(f"{t}_{c}" for c in in_order for t in (ADMISSIONS, CENSUS))
    assert WindowSpec.from_dict(SPEC.to_dict()) == SPEC
    with pytest.raises(ValueError, match="context"):
        WindowSpec(scaling="window", context=("tomorrow",))
    with pytest.raises(ValueError, match="window"):
        WindowSpec(context=("weeks",))
    # forecasting from the end of the data builds the same channels as the last test window would
    inputs = forecast_inputs(region_records["H2"], ds)
    assert inputs.X.shape[1:] == ds.test.X.shape[1:]


def test_a_hospital_without_a_region_gets_a_flat_channel() -> None:
    recs = records(days=DAYS)
    ds = prepare_hospital(recs, SPEC)
    names = ds.feature_names
    k = names.index(f"{ADMISSIONS}_region")
    assert float(ds.train.X[:, :, k].abs().max()) == 0.0


def test_pretrained_start_reads_new_channels_with_zero_weight(region_records: dict[str, UnitRecords]) -> None:
    """Untrained, the context model forecasts exactly what the shipped weights do."""
    spec = SPEC
    hospital = HospitalData("H0", region_records["H0"], spec)
    plain = NeuralForecaster(model="hybrid", init="pretrained", epochs=0).fit({"H0": hospital})
    wide = NeuralForecaster(model="hybrid", init="pretrained", epochs=0, context=CONTEXT).fit({"H0": hospital})
    from medalloc_core.forecast.forecasters import Origins

    origins = Origins.of(hospital.dataset(wide.model_spec(spec)).test)
    np.testing.assert_allclose(plain.predict(hospital, origins), wide.predict(hospital, origins), rtol=1e-5, atol=1e-4)
    assert wide.model_.config.context == len(CONTEXT)


def test_region_join_keeps_rows_and_marks_unknown_days() -> None:
    recs = records(days=100)
    region = daily_totals(records(days=60, seed=5))  # the region reported only the first 60 days
    joined = with_region(recs, region)
    assert len(joined.frame) == len(recs.frame)
    assert joined.frame[REGION_PREFIX + ADMISSIONS].isna().sum() == 40 * recs.frame[UNIT].nunique()


def test_the_run_configs_context_reaches_the_federations_model_and_its_windows() -> None:
    from medalloc.server.config import RunConfig, RunConfigError
    from medalloc_core.tasks.forecasting.task import ForecastingTask

    run = RunConfig.from_mapping({"context": "region"})
    model = ForecastingTask().model(run, {})
    assert model.config.context == 2 and model.spec.context == ("weeks", "region")
    assert WindowSpec.from_dict(model.spec.to_dict()) == model.spec  # what nodes receive
    default = ForecastingTask().model(RunConfig(), {})  # the hybrid always reads the weekly means: its level
    assert default.spec.context == ("weeks",) and default.config.level == "weeks"
    assert ForecastingTask().model(RunConfig.from_mapping({"context": "weeks"}), {}).spec == default.spec
    for bad in ({"context": "tomorrow"}, {"context": "weeks", "model": "mlp", "init": "none"}):
        with pytest.raises(RunConfigError, match="context"):
            RunConfig.from_mapping(bad)
