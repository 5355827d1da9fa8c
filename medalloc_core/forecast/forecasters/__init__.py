"""One forecaster interface over the classical baselines and the neural models, and its registry.

Every forecaster is a small sktime-style estimator: hyperparameters as keyword arguments with
no logic in ``__init__``; ``fit(hospitals) -> self``; learned state in attributes ending in
``_``; ``predict(hospital, origins) -> (N, H, T, Q)`` quantile forecasts in patients/beds for
the given forecast origins. The public methods validate; ``_fit`` / ``_predict`` implement.
Adding a forecaster means adding a class to :data:`FORECASTERS`; ``tests/test_forecasters.py``
runs the same contract checks over every entry (as scikit-learn's estimator checks do), and
the comparisons and benchmarks call every method through this one interface.

- *Local* forecasters (seasonal naive, moving average, Holt-Winters, the zero-shot
  ``fracast``) learn nothing in ``fit``: at each origin they fit the hospital's own series up
  to that origin.
- *Global* forecasters train one network (``ForecasterConfig.model``: ``hybrid``, ``mlp``, ``tcn``)
  on the training windows of every hospital given to ``fit``: pooled (:class:`NeuralForecaster`,
  the "centralized" comparison), each hospital alone (:class:`LocalOnly`) or by federated
  averaging (:class:`Federated`, the federation's maths without Flower).
- :class:`FracastHead` keeps ``fracast`` frozen and trains a small head on what it does not
  read (the other target, the weekday, the long view, the region), federatedly by default;
  untrained it is ``fracast`` exactly.
- :class:`Ensemble` averages its members' quantiles.

This is the one public forecaster registry: every network (``make_forecaster("neural", model="tcn")``)
and every classical method (``make_forecaster("holt_winters")``) is reached from it by name; the
networks (``models._ARCHITECTURES``) and the classical maths (``baselines._SERIES_MODELS``) are
private details beneath it. (``models.ForecasterNet`` is the network module itself; these are
the estimators around it.)
"""

from __future__ import annotations

from typing import Any

from medalloc_core.forecast.forecasters.base import Forecaster, HospitalData, Origins, pooled_windows
from medalloc_core.forecast.forecasters.classical import (
    Classical,
    HoltWintersForecaster,
    MovingAverageForecaster,
    SeasonalNaiveForecaster,
)
from medalloc_core.forecast.forecasters.ensemble import Ensemble
from medalloc_core.forecast.forecasters.federated import Federated, fedavg
from medalloc_core.forecast.forecasters.fracast_head import FracastBackbone, FracastHead
from medalloc_core.forecast.forecasters.neural import LocalOnly, NeuralForecaster, predict_origins
from medalloc_core.forecast.forecasters.zeroshot import Fracast
from medalloc_core.forecast.training import adaptive_batch_size

__all__ = [
    "FORECASTERS",
    "Classical",
    "Ensemble",
    "Federated",
    "Forecaster",
    "Fracast",
    "FracastBackbone",
    "FracastHead",
    "HoltWintersForecaster",
    "HospitalData",
    "LocalOnly",
    "MovingAverageForecaster",
    "NeuralForecaster",
    "Origins",
    "SeasonalNaiveForecaster",
    "adaptive_batch_size",
    "fedavg",
    "make_forecaster",
    "pooled_windows",
    "predict_origins",
]

FORECASTERS: dict[str, type[Forecaster]] = {
    "seasonal_naive": SeasonalNaiveForecaster,
    "moving_average": MovingAverageForecaster,
    "holt_winters": HoltWintersForecaster,
    "fracast": Fracast,
    "fracast_head": FracastHead,
    "neural": NeuralForecaster,
    "local_only": LocalOnly,
    "federated": Federated,
    "ensemble": Ensemble,
}


def make_forecaster(name: str, **params: Any) -> Forecaster:
    """Build a registered forecaster by name, e.g. ``make_forecaster("holt_winters")``."""
    try:
        cls = FORECASTERS[name]
    except KeyError:
        raise ValueError(f"unknown forecaster {name!r}; choose one of {sorted(FORECASTERS)}") from None
    return cls(**params)
