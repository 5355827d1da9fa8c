"""Global forecasters: a network trained on the pooled windows of the hospitals it is fitted on, or on each alone."""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np

from medalloc_core.forecast.features import SeriesScaler, WindowSet, WindowSpec, hybrid_context, prepare_hospital
from medalloc_core.forecast.forecasters.base import Forecaster, HospitalData, Origins, pooled_windows
from medalloc_core.forecast.metrics import DEFAULT_QUANTILES
from medalloc_core.forecast.models import ForecasterConfig, build_from_arrays, build_model, level_for
from medalloc_core.forecast.models import ForecasterNet as Network
from medalloc_core.forecast.selection import KEEP_START_MARGIN, BestOrStart, pooled_blocks
from medalloc_core.forecast.training import (
    DPConfig,
    TrainConfig,
    TrainResult,
    adaptive_batch_size,
    predict,
    train_local,
)

logger = logging.getLogger(__name__)

__all__ = ["LocalOnly", "NeuralForecaster", "predict_origins"]


class NeuralForecaster(Forecaster):
    """A network (``ForecasterConfig.model``) trained on the pooled training windows of every hospital.

    Parameters
    ----------
    model : str, default "hybrid"
        ``hybrid`` (classical forecast + learned correction, window scaling), ``mlp`` or ``tcn``
        (series scaling).
    hidden, layers : int, default 64, 1
        Network width and depth (``ForecasterConfig``).
    init : str, mapping or None, default None
        ``"pretrained"``: start from the shipped public weights (``medalloc_core.forecast.pretrained``,
        hybrid only); ``None``: from the seeded initial weights (for the hybrid that is the
        classical forecast); a mapping of parameter arrays: from those weights (e.g. a
        federation's final model, scored as it is with ``epochs=0``).
    epochs, batch_size, lr : int, int, float, default 5, 256, 1e-3
        Adam on the pinball loss (``training.TrainConfig``); ``epochs=0`` keeps the starting
        weights (the pretrained model used zero-shot).
    dp : DPConfig or None, default None
        Train with DP-SGD (per-window clipping and noise).
    select : bool, default False
        Keep the weights (the starting ones included) with the lowest pinball loss on the
        hospitals' validation windows, checked after every epoch. Ignored under ``dp`` (the
        choice would read the data outside DP-SGD's accounting). Off by default: measured on
        the benchmark families it never helped and, after an epidemic, it kept the starting
        weights because the validation weeks did not look like the weeks that followed
        (docs/forecasting.md). The best epoch is kept only where it beats the start by more
        than ``margin`` standard errors of the validation noise (``selection.BestOrStart``).
    margin : float, default 2.0
        See ``select``.
    seed : int, default 0
    quantiles : sequence of float, default (0.1, 0.5, 0.9)
    context : sequence of str, default ()
        Hybrid only: the context channels it reads beside the weekly means it always reads
        (``features.hybrid_context``): ``"year_ago"``, ``"region"``; the region needs
        ``region_<target>`` columns in the records, see ``medalloc_core.forecast.region``.

    Attributes
    ----------
    model_ : Network          the trained network
    train_result_ : TrainResult or None   what the last training call reported
    scalers_ : dict               series scaling only: per hospital fitted on, the scaler of its
                                  training data; forecasts for that hospital scale their inputs
                                  with it, as in training (a node trained on its released counts
                                  feeds its true counts through the released scaler)
    """

    def __init__(
        self,
        model: str = "hybrid",
        hidden: int = 64,
        layers: int = 1,
        init: str | Mapping[str, np.ndarray] | None = None,
        epochs: int = 5,
        batch_size: int = 256,
        lr: float = 1e-3,
        dp: DPConfig | None = None,
        select: bool = False,
        margin: float = KEEP_START_MARGIN,
        seed: int = 0,
        quantiles: Sequence[float] = DEFAULT_QUANTILES,
        context: Sequence[str] = (),
    ) -> None:
        self.model = model
        self.hidden = hidden
        self.layers = layers
        self.init = init
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.dp = dp
        self.select = select
        self.margin = margin
        self.seed = seed
        self.quantiles = tuple(quantiles)
        self.context = tuple(context)

    def _check_params(self) -> None:
        super()._check_params()
        if not (self.init is None or self.init == "pretrained" or isinstance(self.init, Mapping)):
            raise ValueError(f"init={self.init!r}; use None, 'pretrained' or a mapping of parameter arrays")
        if self.init == "pretrained" and self.model != "hybrid":
            raise ValueError("init='pretrained' exists for model='hybrid' only")
        if self.epochs < 0:
            raise ValueError(f"epochs={self.epochs} must be >= 0")

    # -- helpers shared with LocalOnly and the federated fit
    def model_spec(self, spec: WindowSpec) -> WindowSpec:
        """The task's spec with the scaling this model needs."""
        if self.model == "hybrid":
            return replace(spec, scaling="window", context=hybrid_context(self.context))
        return replace(spec, scaling="series", context=())

    def model_config(self, hospital: HospitalData) -> ForecasterConfig:
        """``ForecasterConfig`` for the task of ``hospital``."""
        ds = hospital.dataset(self.model_spec(hospital.spec))
        assert ds.spec.history is not None and ds.spec.horizon is not None
        return ForecasterConfig(
            model=self.model,
            history=ds.spec.history,
            horizon=ds.spec.horizon,
            n_features=ds.n_features,
            n_targets=ds.n_targets,
            quantiles=self.quantiles,
            hidden=self.hidden,
            layers=self.layers,
            context=len(ds.spec.context),
            level=level_for(self.model, ds.spec.context),
        )

    def initial_model(self, config: ForecasterConfig) -> Network:
        """The starting network: seeded weights, the shipped pretrained ones, or the given arrays."""
        if isinstance(self.init, Mapping):
            given: Network = build_from_arrays(config, dict(self.init))
            return given
        if self.init == "pretrained":
            from medalloc_core.forecast.pretrained import load_pretrained

            return load_pretrained(config)
        network: Network = build_model(config, seed=self.seed)
        return network

    def scalers(self, hospitals: Mapping[str, HospitalData]) -> dict[str, SeriesScaler]:
        """Per hospital, the scaler of its training data under this model's spec (none under window scaling)."""
        out = {}
        for name, hospital in hospitals.items():
            scaler = hospital.dataset(self.model_spec(hospital.spec)).scaler
            if scaler is not None:
                out[name] = scaler
        return out

    def train_config(self, n_windows: int) -> TrainConfig:
        """Optimiser settings; the batch adapts to small datasets (see ``adaptive_batch_size``)."""
        batch = adaptive_batch_size(n_windows, self.batch_size, warn=self.dp is not None)
        return TrainConfig(epochs=self.epochs, batch_size=batch, lr=self.lr, seed=self.seed)

    def _train(self, model: Network, windows: WindowSet) -> TrainResult:
        return train_local(model, windows, config=self.train_config(len(windows)), dp=self.dp)

    def _fit(self, hospitals: Mapping[str, HospitalData]) -> None:
        first = next(iter(hospitals.values()))
        self.config_ = self.model_config(first)
        self.model_ = self.initial_model(self.config_)
        self.scalers_ = self.scalers(hospitals)
        sets = [h.dataset(self.model_spec(h.spec)) for h in hospitals.values()]
        train = pooled_windows([d.train for d in sets])
        val = pooled_windows([d.val for d in sets])
        self.train_result_ = None
        self.best_epoch_ = 0
        if self.epochs == 0:  # the starting weights as they are (e.g. the public pretrained model, zero-shot)
            return
        if not len(train):
            logger.warning("no training windows: the model stays at its starting weights")
            return
        if not (self.select and self.dp is None and len(val)):
            self.train_result_ = self._train(self.model_, train)
            self.best_epoch_ = self.epochs
            return
        blocks = pooled_blocks({n: d.val for n, d in zip(hospitals, sets)}, sets[0].spec.horizon or 1)
        keeper = BestOrStart(self.model_, val, blocks, self.quantiles, self.margin)
        config = self.train_config(len(train))
        for epoch in range(1, self.epochs + 1):
            self.train_result_ = train_local(
                self.model_, train, config=replace(config, epochs=1, seed=self.seed + epoch)
            )
            keeper.offer(self.model_, epoch)
        self.best_epoch_ = keeper.finish(self.model_)

    def _predict(self, hospital: HospitalData, origins: Origins) -> np.ndarray:
        spec = self.model_spec(hospital.spec)
        return predict_origins(self.model_, hospital, spec, origins, scaler=self.scalers_.get(hospital.name))


def predict_origins(
    model: Network, hospital: HospitalData, spec: WindowSpec, origins: Origins, *, scaler: SeriesScaler | None = None
) -> np.ndarray:
    """A network's forecasts in patients/beds for the windows of ``hospital`` that start at ``origins``.

    ``scaler`` (series scaling only): scale the hospital's inputs with it instead of one fitted
    on this data, e.g. the scaler of the released counts the network was trained on.
    """
    ds = (
        hospital.dataset(spec)
        if scaler is None or spec.scaling == "window"
        else prepare_hospital(hospital.records, spec, scaler=scaler)
    )
    windows = pooled_windows([ds.train, ds.val, ds.test])
    index = {(str(u), np.datetime64(d, "ns")): i for i, (u, d) in enumerate(zip(windows.units, windows.target_start))}
    try:
        rows = np.array(
            [index[(str(u), np.datetime64(d, "ns"))] for u, d in zip(origins.units, origins.target_start)],
            dtype=np.int64,
        )
    except KeyError as exc:
        raise ValueError(
            f"{hospital.name}: no complete window for origin {exc.args[0]} (too early, or its targets were missing)"
        ) from None
    chosen = windows.select(rows)
    return ds.to_original(predict(model, chosen.X), chosen)


class LocalOnly(Forecaster):
    """Each hospital trains its own copy of a :class:`NeuralForecaster` on its own windows only.

    Parameters
    ----------
    base : NeuralForecaster
        The model and training settings (including ``dp``: each hospital alone with DP).
    """

    def __init__(self, base: NeuralForecaster | None = None) -> None:
        self.base = base if base is not None else NeuralForecaster()
        self.quantiles = self.base.quantiles

    def _fit(self, hospitals: Mapping[str, HospitalData]) -> None:
        self.models_: dict[str, NeuralForecaster] = {}
        for name, hospital in hospitals.items():
            alone = copy.deepcopy(self.base)
            alone.fit({name: hospital})
            self.models_[name] = alone

    def _predict(self, hospital: HospitalData, origins: Origins) -> np.ndarray:
        if hospital.name not in self.models_:
            raise ValueError(f"LocalOnly was not fitted on hospital {hospital.name!r}")
        return self.models_[hospital.name].predict(hospital, origins)
