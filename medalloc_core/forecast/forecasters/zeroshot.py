"""The zero-shot comparison: a pretrained time-series model from PyPI that a user could pick instead."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from medalloc_core.forecast.forecasters.base import Forecaster, HospitalData, Origins, unit_series
from medalloc_core.forecast.metrics import DEFAULT_QUANTILES

__all__ = ["Fracast"]


class Fracast(Forecaster):
    """The zero-shot pretrained ``fracast`` model (PyPI ``fracast``, Apache-2.0, weights in its wheel).

    "What a user would pick instead": no training on anyone's data. Optional: install with
    ``python -m pip install -e '.[zeroshot]'``; ``fit`` raises ``ImportError`` without it.

    Parameters
    ----------
    context : int, default 512
        Most recent periods given as context (the model reads up to 2,048).
    weights : {"w8", "fp32"}, default "w8"
        The bundled int8 (default, as the package does) or full-precision checkpoint.
    quantiles : sequence of float, default (0.1, 0.5, 0.9)
        Must be among fracast's levels 0.1, 0.2, ..., 0.9.
    """

    def __init__(self, context: int = 512, weights: str = "w8", quantiles: Sequence[float] = DEFAULT_QUANTILES) -> None:
        self.context = context
        self.weights = weights
        self.quantiles = tuple(quantiles)

    @staticmethod
    def available() -> bool:
        """True when the optional ``fracast`` package is installed."""
        return importlib.util.find_spec("fracast") is not None

    def _fit(self, hospitals: Mapping[str, HospitalData]) -> None:
        if not self.available():
            raise ImportError(
                "the zero-shot comparison needs the optional package: python -m pip install -e '.[zeroshot]'"
            )
        from fracast import FracastModel

        self.model_ = FracastModel.from_pretrained(weights=self.weights, device="cpu")
        levels = np.round(np.asarray(self.model_.quantiles), 6)
        missing = [q for q in self.quantiles if not np.any(np.isclose(levels, q))]
        if missing:
            raise ValueError(f"fracast forecasts levels {levels.tolist()}; {missing} are not among them")
        self.level_index_ = [int(np.argmin(np.abs(levels - q))) for q in self.quantiles]

    def _predict(self, hospital: HospitalData, origins: Origins) -> np.ndarray:
        spec = hospital.spec.resolved(hospital.records.frequency)
        assert spec.horizon is not None
        out = np.empty((len(origins), spec.horizon, len(spec.targets), len(self.quantiles)))
        for _, rows, series, dates in unit_series(hospital.records, spec.targets, origins):
            # the origin's position: in the calendar, or one period past its end (a forecast after the data)
            last = dates.searchsorted(pd.DatetimeIndex(origins.target_start[rows]))
            for t in range(series.shape[1]):
                contexts = [series[max(0, i - self.context) : i, t] for i in last]
                width = max(len(c) for c in contexts)
                batch = np.full((len(contexts), width), np.nan, dtype=np.float32)  # left-padded: NaN is masked
                for k, c in enumerate(contexts):
                    batch[k, width - len(c) :] = c
                with torch.inference_mode():
                    pred = self.model_.forecast_batch(batch, horizon=spec.horizon)  # (N, H, 9)
                out[rows, :, t, :] = pred[:, :, self.level_index_]
        return np.sort(out, axis=-1)
