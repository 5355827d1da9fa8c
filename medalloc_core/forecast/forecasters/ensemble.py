"""An ensemble: the level-by-level mean of its members' quantile forecasts."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import numpy as np

from medalloc_core.forecast.forecasters.base import Forecaster, HospitalData, Origins
from medalloc_core.forecast.forecasters.classical import HoltWintersForecaster
from medalloc_core.forecast.forecasters.neural import NeuralForecaster
from medalloc_core.forecast.metrics import DEFAULT_QUANTILES

__all__ = ["Ensemble"]


class Ensemble(Forecaster):
    """The mean of its members' quantile forecasts (each fitted on the same hospitals).

    Averaging quantiles level by level keeps them non-crossing. With Holt-Winters as a member
    the hospital computes that part from its own records at forecast time, so the ensemble
    costs no privacy beyond its other members'.

    Parameters
    ----------
    members : tuple of Forecaster
        Default: the pretrained hybrid and Holt-Winters.
    weights : tuple of float or None
        Relative weights (default equal).
    """

    def __init__(self, members: Sequence[Forecaster] | None = None, weights: Sequence[float] | None = None) -> None:
        self.members = (
            tuple(members)
            if members is not None
            else (NeuralForecaster(init="pretrained", epochs=0), HoltWintersForecaster())
        )
        self.weights = weights
        self.quantiles = self.members[0].quantiles if self.members else DEFAULT_QUANTILES

    def _check_params(self) -> None:
        super()._check_params()
        if not self.members or any(m.quantiles != self.quantiles for m in self.members):
            raise ValueError("an ensemble needs at least one member, all forecasting the same quantile levels")
        if self.weights is not None and (
            len(self.weights) != len(self.members) or min(self.weights) < 0 or sum(self.weights) <= 0
        ):
            raise ValueError(f"weights {self.weights} must be one non-negative number per member, not all zero")

    def _fit(self, hospitals: Mapping[str, HospitalData]) -> None:
        self.members_ = tuple(copy.deepcopy(m).fit(hospitals) for m in self.members)

    def _predict(self, hospital: HospitalData, origins: Origins) -> np.ndarray:
        w = np.asarray(self.weights if self.weights is not None else [1.0] * len(self.members_), dtype=float)
        out = np.zeros(1)
        for wi, member in zip(w, self.members_):
            out = out + wi / w.sum() * member.predict(hospital, origins)
        return out
