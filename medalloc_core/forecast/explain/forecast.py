"""Explain one hospital's forecast: the model, its own records, a unit and a day -> attributions and words.

This is what ``medalloc explain`` runs on a hospital's machine. It rebuilds exactly the
forecast ``medalloc forecast`` would make from the records up to the chosen day (same
scalers, same input window), then attributes one quantile of one target to the window's cells.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from medalloc_core.contract import CENSUS, DATE, UNIT, Frequency, UnitRecords
from medalloc_core.forecast.explain.attribution import Attribution, ForecastFunction, attribute
from medalloc_core.forecast.explain.faithfulness import DeletionCurve, deletion_curve
from medalloc_core.forecast.explain.words import ChannelGroup, describe, group_attributions
from medalloc_core.forecast.features import WindowSpec, forecast_inputs, prepare_hospital
from medalloc_core.forecast.models import Forecaster, ForecasterConfig
from medalloc_core.forecast.predict import ModelDataMismatch, check_compatible, forecast_records

logger = logging.getLogger(__name__)


class ExplainError(ValueError):
    """The requested explanation cannot be made (unknown unit, target or level; a day outside the data)."""


def level_name(level: float) -> str:
    """0.9 -> 'P90', 0.975 -> 'P97.5'."""
    return f"P{level * 100:g}"


@dataclass(frozen=True)
class ForecastExplanation:
    """One unit's forecast from one origin, and why.

    ``input_dates`` are the L periods the model read (the last one is ``origin``);
    ``feature_names`` its F channels. ``forecast`` is that unit's forecast frame (every target
    and level), ``history`` its observed records up to ``origin``.
    """

    hospital: str
    unit: str
    target: str
    level: float
    origin: pd.Timestamp
    frequency: Frequency
    input_dates: pd.DatetimeIndex
    feature_names: tuple[str, ...]
    inputs: np.ndarray  # (L, F) the window, model space
    baseline: np.ndarray  # (L, F) the average training window of this unit
    attribution: Attribution
    deletion: DeletionCurve
    groups: tuple[ChannelGroup, ...]
    words: tuple[str, ...]
    forecast: pd.DataFrame
    history: pd.DataFrame

    @property
    def level_name(self) -> str:
        return level_name(self.level)

    @property
    def unit_of_measure(self) -> str:
        return "beds" if self.target == CENSUS else "patients"

    def to_dict(self) -> dict[str, Any]:
        """Everything a reader or another tool needs, JSON-able (attributions per date and channel)."""
        return {
            "hospital": self.hospital,
            "unit": self.unit,
            "target": self.target,
            "level": self.level,
            "origin": self.origin.strftime("%Y-%m-%d"),
            "method": self.attribution.method,
            "explained": (
                f"{self.level_name} of {self.target}, mean over the forecast periods, in {self.unit_of_measure}"
            ),
            "output": self.attribution.output,
            "baseline_output": self.attribution.baseline_output,
            "baseline": "the mean input window of this unit's training periods",
            "completeness_gap": self.attribution.completeness_gap,
            "input_dates": [d.strftime("%Y-%m-%d") for d in self.input_dates],
            "feature_names": list(self.feature_names),
            "attributions": self.attribution.values.round(6).tolist(),
            "groups": [
                {
                    "channels": g.channels,
                    "block": g.block,
                    "contribution": g.contribution,
                    "share": g.share,
                }
                for g in self.groups
            ],
            "words": list(self.words),
            "deletion": self.deletion.to_dict(),
        }


def _truncate(records: UnitRecords, date: pd.Timestamp | None) -> tuple[UnitRecords, pd.Timestamp]:
    last = pd.Timestamp(records.frame[DATE].max())
    if date is None:
        return records, last
    date = pd.Timestamp(date).normalize()
    first = pd.Timestamp(records.frame[DATE].min())
    if not first <= date <= last:
        raise ExplainError(
            f"{records.source}: --date {date.date()} is outside the records ({first.date()} to {last.date()}); "
            "the forecast is explained from a day the file holds"
        )
    return replace(records, frame=records.frame[records.frame[DATE] <= date].reset_index(drop=True)), date


def explain_forecast(
    model: Forecaster,
    spec: WindowSpec,
    records: UnitRecords,
    *,
    hospital: str,
    units: list[str] | None = None,
    date: pd.Timestamp | None = None,
    target: str = CENSUS,
    level: float | None = None,
    method: str = "integrated-gradients",
    steps: int = 64,
    random_orders: int = 20,
    seed: int = 0,
) -> list[ForecastExplanation]:
    """Explain the forecast made from the records up to ``date`` (default: their last day), unit by unit.

    Parameters
    ----------
    model, spec
        The shared forecaster and the window spec it was trained with (``model_io.load_model``).
    records
        This hospital's validated records (``validation.load_unit_records``).
    hospital
        The name written in the forecast frame.
    units
        Units to explain; default every unit in the records.
    date
        The forecast origin: the last day the model reads. Default the records' last day, which
        is the forecast ``medalloc forecast`` makes.
    target, level
        What to explain: a target the model forecasts (default census) and one of its quantile
        levels (default the highest, e.g. P90: the number a surge decision hangs on).
    method
        ``"integrated-gradients"`` (default) or ``"occlusion"``.
    steps, random_orders, seed
        Integration steps; random orders and their seed for the deletion check.

    Raises
    ------
    ExplainError
        Unknown unit, target or level, or a date outside the records.
    ModelDataMismatch
        The model does not fit the records, or too few periods lie before ``date``.
    """
    config: ForecasterConfig = model.config
    resolved = check_compatible(config, spec, records)
    if target not in resolved.targets:
        raise ExplainError(f"the model forecasts {list(resolved.targets)}; it has no '{target}' to explain")
    levels = tuple(config.quantiles)
    level = levels[-1] if level is None else float(level)
    matches = [i for i, q in enumerate(levels) if abs(q - level) < 1e-9]
    if not matches:
        raise ExplainError(
            f"the model forecasts the levels {[level_name(q) for q in levels]}; {level_name(level)} is not one of them"
        )
    chosen = units or records.units
    unknown = [u for u in chosen if u not in records.units]
    if unknown:
        raise ExplainError(f"{records.source}: no unit {unknown} in the records (units: {records.units})")
    truncated, origin = _truncate(records, date)
    try:
        dataset = prepare_hospital(truncated, resolved)
        inputs = forecast_inputs(truncated, dataset)
    except ValueError as exc:
        raise ModelDataMismatch(
            f"{records.source}: cannot forecast from {origin.date()}: {exc} (the model reads L={resolved.history} "
            f"periods and its scalers are fitted on all but the last {resolved.val_periods}+{resolved.test_periods})"
        ) from exc
    frame = forecast_records(model, spec, truncated, hospital=hospital, dataset=dataset)
    t_index, q_index = resolved.targets.index(target), matches[0]
    step = pd.Timedelta(days=records.frequency.period.days)
    out = []
    for unit in chosen:
        row = int(np.flatnonzero(inputs.units == unit)[0])
        last_day = pd.Timestamp(inputs.target_start[row]) - step
        if last_day != origin:
            raise ExplainError(
                f"{records.source}: unit {unit!r} has no record on {origin.date()} "
                f"(its last day is {last_day.date()}); "
                "pick a day the unit reports"
            )
        x = inputs.X[row].numpy()
        train = dataset.train.X[dataset.train.units == unit]
        baseline = train.mean(dim=0).numpy() if len(train) else np.zeros_like(x)
        if dataset.scaler is not None:  # series scaling: the unit's scaler
            mean, scale = float(dataset.scaler.mean[unit][t_index]), float(dataset.scaler.scale[unit][t_index])
        elif inputs.loc is not None and inputs.scale is not None:
            # window scaling (the hybrid): the explained window's own loc/scale, held fixed, so the
            # attributions are of the network's forecast for this window in beds/patients
            mean, scale = float(inputs.loc[row, t_index]), float(inputs.scale[row, t_index])
        else:
            raise ExplainError(f"{records.source}: the window spec has neither a series scaler nor window statistics")
        function = ForecastFunction(model, target_index=t_index, quantile_index=q_index, mean=mean, scale=scale)
        attribution = attribute(function, x, baseline, method=method, steps=steps)
        deletion = deletion_curve(function, x, baseline, attribution.values, random_orders=random_orders, seed=seed)
        groups = group_attributions(attribution.values, dataset.feature_names, records.frequency)
        unit_of_measure = "beds" if target == CENSUS else "patients"
        words = describe(
            groups,
            what=target,
            level=level_name(levels[q_index]),
            output=attribution.output,
            baseline_output=attribution.baseline_output,
            unit=unit_of_measure,
        )
        verdict = "passes" if deletion.passed else "FAILS"
        words.append(
            f"Faithfulness check {verdict}: deleting the top-attributed inputs moves this "
            f"{level_name(levels[q_index])} "
            f"{deletion.area_attributed / max(deletion.area_random, 1e-12):.1f}× as much as deleting random ones "
            f"(area under the deletion curve {deletion.area_attributed:.2f} vs {deletion.area_random:.2f} "
            f"{unit_of_measure})."
        )
        history = truncated.frame[truncated.frame[UNIT] == unit]
        out.append(
            ForecastExplanation(
                hospital=hospital,
                unit=unit,
                target=target,
                level=levels[q_index],
                origin=origin,
                frequency=records.frequency,
                input_dates=pd.DatetimeIndex([origin - step * (len(x) - 1 - i) for i in range(len(x))]),
                feature_names=tuple(dataset.feature_names),
                inputs=x,
                baseline=baseline,
                attribution=attribution,
                deletion=deletion,
                groups=tuple(groups),
                words=tuple(words),
                forecast=frame[frame[UNIT] == unit].reset_index(drop=True),
                history=history.reset_index(drop=True),
            )
        )
    return out
