"""Local forecasters: a classical per-series baseline refitted at every origin on the hospital's own data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from medalloc_core.forecast.baselines import BASELINES, rolling_origin_forecasts
from medalloc_core.forecast.forecasters.base import Forecaster, HospitalData, Origins, unit_series
from medalloc_core.forecast.metrics import DEFAULT_QUANTILES

__all__ = ["Classical", "HoltWintersForecaster", "MovingAverageForecaster", "SeasonalNaiveForecaster"]


class Classical(Forecaster):
    """A registered per-series baseline (``baselines.BASELINES``) fitted at every origin.

    Parameters
    ----------
    method : str, default "holt_winters"
        Key in ``BASELINES``: ``seasonal_naive``, ``moving_average``, ``holt_winters``.
    season : int, default 7
    refit_every : int, default 1
        Re-estimate parameters every ``refit_every`` origins of a series (in time order); in
        between, condition the fitted model on the newer data. 1: refit at every origin.
    quantiles : sequence of float, default (0.1, 0.5, 0.9)
    """

    def __init__(
        self,
        method: str = "holt_winters",
        season: int = 7,
        refit_every: int = 1,
        quantiles: Sequence[float] = DEFAULT_QUANTILES,
    ) -> None:
        self.method = method
        self.season = season
        self.refit_every = refit_every
        self.quantiles = tuple(quantiles)

    def _check_params(self) -> None:
        super()._check_params()
        if self.method not in BASELINES:
            raise ValueError(f"unknown baseline {self.method!r}; choose one of {sorted(BASELINES)}")

    def _fit(self, hospitals: Mapping[str, HospitalData]) -> None:
        pass  # nothing global to learn: each series is fitted at each origin

    def _predict(self, hospital: HospitalData, origins: Origins) -> np.ndarray:
        spec = hospital.spec.resolved(hospital.records.frequency)
        assert spec.horizon is not None
        out = np.empty((len(origins), spec.horizon, len(spec.targets), len(self.quantiles)))
        cls, quantiles, season = BASELINES[self.method], self.quantiles, self.season
        # MovingAverage calls its season-long window ``window``.
        params: dict[str, Any] = {
            "window" if self.method == "moving_average" else "season": season,
            "quantiles": quantiles,
        }
        for _, rows, series, dates in unit_series(hospital.records, spec.targets, origins):
            last = dates.get_indexer(pd.DatetimeIndex(origins.target_start[rows])) - 1
            if np.any(last < 0):
                raise ValueError(f"{hospital.name}: an origin lies outside the unit's records")
            for t in range(series.shape[1]):
                out[rows, :, t, :] = rolling_origin_forecasts(
                    series[:, t],
                    last.tolist(),
                    spec.horizon,
                    lambda: cls(**params),
                    refit_every=self.refit_every,
                )
        return out


class SeasonalNaiveForecaster(Classical):
    """Same weekday last week (see ``baselines.SeasonalNaive``)."""

    def __init__(self, season: int = 7, quantiles: Sequence[float] = DEFAULT_QUANTILES) -> None:
        super().__init__("seasonal_naive", season=season, refit_every=1, quantiles=quantiles)


class MovingAverageForecaster(Classical):
    """Flat mean of the last week (see ``baselines.MovingAverage``)."""

    def __init__(self, season: int = 7, quantiles: Sequence[float] = DEFAULT_QUANTILES) -> None:
        super().__init__("moving_average", season=season, refit_every=1, quantiles=quantiles)


class HoltWintersForecaster(Classical):
    """Additive damped Holt-Winters, refitted at every origin (see ``baselines.HoltWinters``)."""

    def __init__(self, season: int = 7, refit_every: int = 1, quantiles: Sequence[float] = DEFAULT_QUANTILES) -> None:
        super().__init__("holt_winters", season=season, refit_every=refit_every, quantiles=quantiles)
