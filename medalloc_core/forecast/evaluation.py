"""Rolling-origin evaluation: the same forecast origins for every method, spread over the last weeks of every unit.

Each unit's last ``weeks`` weeks (default 16) are held out. From ``n_origins`` origins in that
period (default 8, one every ``horizon`` days, so the 14-day forecasts tile the 16 weeks
without overlap) every method forecasts the next ``horizon`` days using only data before the
origin. Classical methods refit at every origin; networks are trained once on the data before
the held-out period (and its ``val_periods`` validation days) and read each origin's window.
Scores are in patients/beds, per hospital, then volume-weighted over hospitals (docs/metrics.md).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from medalloc_core.contract import DATE, UNIT
from medalloc_core.forecast.features import WindowSpec
from medalloc_core.forecast.forecasters import Forecaster, HospitalData, Origins
from medalloc_core.forecast.metrics import aggregate_over_hospitals, forecast_metrics

logger = logging.getLogger(__name__)

__all__ = ["EVAL_WEEKS", "N_ORIGINS", "evaluation_spec", "rolling_origins", "score_forecasts", "evaluate_forecaster"]

EVAL_WEEKS = 16  # held-out weeks per unit: long enough for 8 non-overlapping 14-day forecasts
N_ORIGINS = 8  # forecast origins per unit: enough to tell methods apart (2 origins were not)
SCALARS = ("mae", "rmse", "wape", "pinball", "coverage", "width")


def evaluation_spec(
    *,
    history: int,
    horizon: int,
    targets: tuple[str, ...],
    weeks: int = EVAL_WEEKS,
    val_periods: int = 28,
    scaling: str = "window",
) -> WindowSpec:
    """The task: daily windows; the last ``weeks`` weeks held out, the ``val_periods`` before them for validation."""
    return WindowSpec(
        history=history,
        horizon=horizon,
        targets=targets,
        val_periods=val_periods,
        test_periods=7 * weeks,
        scaling=scaling,
    )


def rolling_origins(hospital: HospitalData, *, n_origins: int = N_ORIGINS, stride: int | None = None) -> Origins:
    """Up to ``n_origins`` origins per unit, ``stride`` days apart, from the first held-out day.

    The default stride spreads the origins evenly over the held-out period, the last one
    forecasting its last ``horizon`` days (16 weeks, horizon 14, 8 origins: one every 14 days,
    forecasts that tile the period). Origins whose targets include a missing day are skipped
    (nothing is scored on a guess); a unit that keeps fewer than half of them is logged.
    """
    ds = hospital.dataset()
    spec = ds.spec
    assert spec.horizon is not None and spec.test_periods is not None
    if stride is None:
        stride = (spec.test_periods - spec.horizon) // (n_origins - 1) if n_origins > 1 else spec.horizon
    if stride < 1 or (n_origins - 1) * stride + spec.horizon > spec.test_periods:
        raise ValueError(
            f"{n_origins} origins {stride} days apart with horizon {spec.horizon} do not fit in "
            f"{spec.test_periods} held-out days; hold out more days or ask for fewer origins"
        )
    test = ds.test
    units, starts = [], []
    for unit in sorted(set(test.units)):
        dates = np.sort(test.target_start[test.units == unit])
        last = pd.Timestamp(hospital.records.frame.loc[hospital.records.frame[UNIT] == unit, DATE].max())
        first = last - pd.Timedelta(days=spec.test_periods - 1)  # the first held-out day
        wanted = [(first + pd.Timedelta(days=k * stride)).to_datetime64() for k in range(n_origins)]
        kept = [d for d in wanted if d in set(dates)]
        if len(kept) < n_origins / 2:
            logger.warning(
                "%s unit %s: only %d of %d origins have complete targets", hospital.name, unit, len(kept), n_origins
            )
        units += [unit] * len(kept)
        starts += kept
    return Origins(np.array(units, dtype=object), np.array(starts, dtype="datetime64[ns]"))


def score_forecasts(y: np.ndarray, q: np.ndarray, quantiles: tuple[float, ...]) -> dict[str, Any]:
    """``forecast_metrics`` without per-horizon detail, plus the scored volume (for weighting)."""
    metrics = forecast_metrics(y, q, quantiles=quantiles)
    out: dict[str, Any] = {k: float(metrics[k]) for k in SCALARS}
    out["per_horizon"] = {k: metrics["per_horizon"][k] for k in SCALARS}
    out["volume"] = float(np.abs(y).sum())
    return out


def overall(per_hospital: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Volume-weighted and unweighted means over hospitals."""
    nan_mase = {"mase": float("nan")}
    cleaned = {
        h: {k: m[k] for k in SCALARS}
        | nan_mase
        | {"per_horizon": dict(m["per_horizon"]) | {"mase": [float("nan")] * len(m["per_horizon"]["mae"])}}
        for h, m in per_hospital.items()
    }
    combined = aggregate_over_hospitals(cleaned, {h: m["volume"] for h, m in per_hospital.items()})
    return {
        kind: {k: v for k, v in values.items() if k not in ("per_horizon", "mase")} for kind, values in combined.items()
    }


def evaluate_forecaster(
    forecaster: Forecaster, hospitals: Mapping[str, HospitalData], origins: Mapping[str, Origins]
) -> dict[str, dict[str, Any]]:
    """Score a fitted forecaster at the given origins of every hospital: per-hospital metrics."""
    out = {}
    for name, hospital in hospitals.items():
        o = origins[name]
        y = hospital.actuals(o)
        q = forecaster.predict(hospital, o)
        out[name] = score_forecasts(y, q, tuple(forecaster.quantiles))
    return out
