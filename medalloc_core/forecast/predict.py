"""Apply a trained forecaster to one hospital's records: quantile forecast frames in beds and patients.

The model works in each series' scaled space; the scalers are refitted here from the
hospital's own records with the model's window spec, which reproduces exactly the scalers the
hospital used while training (the same training periods of the same data). Nothing leaves
the hospital: the forecast is computed where the records are.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd

from medalloc_core.allocation.forecast_io import FORECAST_COLUMNS, HOSPITAL, TARGET, TARGETS, VALUE, Q
from medalloc_core.contract import DATE, UNIT, Frequency, UnitRecords
from medalloc_core.forecast.features import (
    REGION_PREFIX,
    HospitalDataset,
    WindowSet,
    WindowSpec,
    forecast_inputs,
    prepare_hospital,
)
from medalloc_core.forecast.models import ForecasterConfig, ForecasterNet
from medalloc_core.forecast.region_store import reads_region
from medalloc_core.forecast.training import predict

logger = logging.getLogger(__name__)

__all__ = ["ModelDataMismatch", "check_compatible", "forecast_records", "holdout_forecasts", "windows_to_frame"]


class ModelDataMismatch(ValueError):
    """The model cannot be applied to these records (frequency, targets or length do not fit)."""


def check_compatible(config: ForecasterConfig, spec: WindowSpec, records: UnitRecords) -> WindowSpec:
    """Check that a model of ``config``/``spec`` fits ``records``; return the spec resolved for them.

    Raises
    ------
    ModelDataMismatch
        The model forecasts a column the file lacks, its feature count does not fit the
        records' frequency (a weekly model on daily data or the reverse), or L/H/targets of
        the spec contradict the config.
    """
    where = str(records.source)
    missing = [t for t in spec.targets if t not in records.count_columns]
    if missing:
        raise ModelDataMismatch(
            f"{where}: the model forecasts {list(spec.targets)} but the file has no {missing} column "
            f"(it has {records.count_columns}); use a model trained on the columns this hospital records"
        )
    resolved = spec.resolved(records.frequency)
    features = len(resolved.feature_names(records.frequency))
    if features != config.n_features:
        other = Frequency.WEEKLY if records.frequency is Frequency.DAILY else Frequency.DAILY
        hint = (
            f"; it was trained on {other.value} data and this file is {records.frequency.value}"
            if len(resolved.feature_names(other)) == config.n_features
            else ""
        )
        raise ModelDataMismatch(
            f"{where}: the model expects {config.n_features} input channels, these {records.frequency.value} "
            f"records give {features} ({', '.join(resolved.feature_names(records.frequency))}){hint}"
        )
    if (resolved.history, resolved.horizon, len(resolved.targets)) != (
        config.history,
        config.horizon,
        config.n_targets,
    ):
        raise ModelDataMismatch(
            f"{where}: window spec L={resolved.history}, H={resolved.horizon}, targets={list(resolved.targets)} "
            f"does not match the model (L={config.history}, H={config.horizon}, T={config.n_targets})"
        )
    return resolved


def _check_region(spec: WindowSpec, records: UnitRecords) -> None:
    """A model that reads the region needs its columns: without them its region channel would be zeros.

    Never silently: zeros are not what the model was trained and scored on (``forecast.region_store``).
    """
    if not reads_region(spec):
        return
    missing = [REGION_PREFIX + t for t in spec.targets if REGION_PREFIX + t not in records.frame.columns]
    if missing:
        raise ModelDataMismatch(
            f"{records.source}: the model reads the region (context 'region': the other hospitals' released daily "
            f"totals) and these records carry none ({missing}); on a node, give its stored region "
            "(<release-path>.region.json, kept from the federation's last round): `medalloc forecast --release` "
            "or `--region`"
        )


def windows_to_frame(
    quantiles: np.ndarray,
    windows: WindowSet,
    *,
    hospital: str,
    targets: tuple[str, ...],
    levels: tuple[float, ...],
    frequency: Frequency,
) -> pd.DataFrame:
    """Turn ``(N, H, T, Q)`` forecasts in beds/patients into forecast-frame rows.

    Every window contributes ``H × T × Q`` rows dated by its target periods; an ``origin``
    column (the last observed period before the window's first target) tells overlapping
    windows apart. Values are clipped at 0 (counts), which keeps the quantile order.
    """
    n, h, t, q = quantiles.shape
    if (t, q) != (len(targets), len(levels)) or n != len(windows):
        raise ValueError(f"forecast shape {quantiles.shape} does not fit {len(windows)} windows, {targets}, {levels}")
    dates = windows.target_dates(frequency)  # (N, H)
    step = np.timedelta64(frequency.period.days, "D")
    frame = pd.DataFrame(
        {
            HOSPITAL: hospital,
            UNIT: np.repeat(np.asarray(windows.units, dtype=str), h * t * q),
            DATE: np.repeat(dates.reshape(-1), t * q),
            TARGET: np.tile(np.repeat(np.asarray(targets, dtype=object), q), n * h),
            Q: np.tile(np.asarray(levels, dtype=float), n * h * t),
            VALUE: np.maximum(quantiles.reshape(-1), 0.0),
            "origin": np.repeat(windows.target_start - step, h * t * q),
        }
    )
    frame[DATE] = pd.to_datetime(frame[DATE])
    frame["origin"] = pd.to_datetime(frame["origin"])
    return frame


def forecast_records(
    model: ForecasterNet,
    spec: WindowSpec,
    records: UnitRecords,
    *,
    hospital: str,
    dataset: HospitalDataset | None = None,
    noise_sd: Mapping[str, float] | None = None,
    released: UnitRecords | None = None,
    zero_shot_weight: float = 0.0,
) -> pd.DataFrame:
    """Forecast the ``H`` periods after the end of every unit's records, for every target and quantile.

    Parameters
    ----------
    model
        A forecaster (``model.config`` is its ForecasterConfig).
    spec
        The window spec it was trained with (``SavedModel.spec``).
    records
        The hospital's validated records (``validation.load_unit_records``).
    hospital
        Name written in the ``hospital`` column.
    dataset
        The windows of these records under ``spec`` when the caller already has them.
    noise_sd, released
        Per target, the sd of the node's source-release noise (``ReleasePlan.noise_sd``) and the
        node's released counts (``ReleaseStore.records()``): a model trained on released counts may
        have learned bands of ``y + noise``; each target's band is scaled to the true counts' as
        measured on the node's validation days (``forecast.calibration``), exactly as ``medalloc
        simulate`` scores them. ``None``: the bands as learned.
    zero_shot_weight
        fracast's share of a level-by-level mix with the zero-shot model, computed here from the same
        records (``forecast.zero_shot_mix``; the benchmarks' ``federated + fracast`` is 0.5). 0: the
        model alone.

    Returns
    -------
    pd.DataFrame
        The forecast frame ``hospital, unit, date, target, q, value`` (beds or patients,
        >= 0, non-crossing), sorted by unit, target, date, q. Only the targets a plan can read
        (admissions, census) are kept; others are logged and dropped.

    Raises
    ------
    ModelDataMismatch
        The model does not fit the records (see :func:`check_compatible`) or a unit's series is
        too short for the model's history and held-out periods.
    """
    config = model.config
    resolved = check_compatible(config, spec, records)
    _check_region(resolved, records)
    try:
        if dataset is None:
            dataset = prepare_hospital(records, resolved)
        inputs = forecast_inputs(records, dataset)
    except ValueError as exc:
        raise ModelDataMismatch(
            f"{records.source}: {exc} (the model reads L={resolved.history} {records.frequency.value} periods and its "
            f"scalers are fitted on all but the last {resolved.val_periods}+{resolved.test_periods})"
        ) from exc
    values = dataset.to_original(predict(model, inputs.X), inputs)  # (U, H, T, Q)
    if noise_sd is not None or released is not None:
        if noise_sd is None or released is None:
            raise ValueError("calibrating the bands needs both noise_sd and the released counts")
        from medalloc_core.forecast.calibration import node_band_factors, scale_bands

        try:
            factors = node_band_factors(model, resolved, records, released, noise_sd)
        except ValueError as exc:
            raise ModelDataMismatch(f"{records.source}: the released counts cannot be windowed: {exc}") from exc
        logger.info("bands scaled per target by %s (measured on the validation days)", np.round(factors, 3).tolist())
        values = scale_bands(values, factors, tuple(config.quantiles))
    if zero_shot_weight:
        from medalloc_core.forecast.zero_shot_mix import mix_zero_shot

        values = mix_zero_shot(
            values, records, resolved, inputs.units, inputs.target_start, tuple(config.quantiles), zero_shot_weight
        )
    frame = windows_to_frame(
        values,
        inputs,
        hospital=hospital,
        targets=resolved.targets,
        levels=tuple(config.quantiles),
        frequency=records.frequency,
    )
    dropped = sorted(set(resolved.targets) - set(TARGETS))
    if dropped:
        logger.warning("forecast frame keeps %s only; dropping %s", list(TARGETS), dropped)
        frame = frame[frame[TARGET].isin(TARGETS)]
    return (
        frame.loc[:, list(FORECAST_COLUMNS)].sort_values([UNIT, TARGET, DATE, Q], kind="stable").reset_index(drop=True)
    )


def holdout_forecasts(
    model: ForecasterNet, dataset: HospitalDataset, *, hospital: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The forecasts and actuals of every test window, in beds/patients, for evaluations.

    Returns ``(forecast, actual)``: the forecast frame plus an ``origin`` column (test windows
    overlap, so a date is forecast from several origins), and the actuals
    ``hospital, unit, origin, date, target, value`` of the same windows.
    """
    config = model.config
    test = dataset.test
    pred = dataset.to_original(predict(model, test.X), test)  # (N, H, T, Q)
    truth = dataset.to_original(test.y.numpy(), test)  # (N, H, T)
    targets = tuple(dataset.spec.targets)
    forecast = windows_to_frame(
        pred, test, hospital=hospital, targets=targets, levels=tuple(config.quantiles), frequency=dataset.frequency
    )
    actual = windows_to_frame(
        truth[..., None], test, hospital=hospital, targets=targets, levels=(0.5,), frequency=dataset.frequency
    ).drop(columns=[Q])
    return forecast, actual
