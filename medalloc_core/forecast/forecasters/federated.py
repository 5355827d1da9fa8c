"""Federated averaging in one process: the federation's maths without Flower, for comparisons and benchmarks.

Each round every hospital trains a copy of the global network on its own training windows
(``training.train_local``, with DP-SGD when the base forecaster has a ``dp`` setting) and the
global network becomes the average of their parameters weighted by their numbers of windows —
what the ServerApp's FedAvg computes from the nodes' replies. The real federation
(``medalloc simulate``, ``flwr run .``) runs the same local training inside Flower nodes; this
loop lets a benchmark sweep many privacy levels in minutes.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import torch

from medalloc_core.forecast.forecasters.base import Forecaster, HospitalData, Origins, pooled_windows
from medalloc_core.forecast.forecasters.neural import NeuralForecaster, predict_origins
from medalloc_core.forecast.selection import BestOrStart, pooled_blocks
from medalloc_core.forecast.training import TrainConfig, TrainResult, train_local

logger = logging.getLogger(__name__)

__all__ = ["Federated", "fedavg"]


def fedavg(states: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    """Weighted average of state dicts (weights need not sum to 1)."""
    total = float(sum(weights))
    if not states or total <= 0:
        raise ValueError("fedavg needs at least one state with a positive weight")
    return {k: sum(w / total * s[k] for s, w in zip(states, weights)) for k in states[0]}  # type: ignore[misc]


class Federated(Forecaster):
    """One network trained by federated averaging over the hospitals given to ``fit``.

    Parameters
    ----------
    base : NeuralForecaster
        Model, initial weights, optimiser and ``dp`` of every node. With
        ``dp=DPConfig(target_epsilon=E, planned_rounds=rounds)`` every node calibrates its own
        noise so that its ``rounds`` calls together spend ``E``.
    rounds : int, default 5
    local_epochs : int, default 1
        Epochs per node and round (``base.epochs`` is not used here).

    Attributes
    ----------
    model_ : nn.Module        the final global network
    results_ : dict           per hospital, the ``TrainResult`` of every round
    """

    def __init__(self, base: NeuralForecaster | None = None, rounds: int = 5, local_epochs: int = 1) -> None:
        self.base = base if base is not None else NeuralForecaster()
        self.rounds = rounds
        self.local_epochs = local_epochs
        self.quantiles = self.base.quantiles

    def _check_params(self) -> None:
        super()._check_params()
        self.base._check_params()
        if self.rounds < 1 or self.local_epochs < 1:
            raise ValueError(f"rounds={self.rounds} and local_epochs={self.local_epochs} must be >= 1")

    def _fit(self, hospitals: Mapping[str, HospitalData]) -> None:
        base = self.base
        first = next(iter(hospitals.values()))
        self.config_ = base.model_config(first)
        self.model_ = base.initial_model(self.config_)
        self.scalers_ = base.scalers(hospitals)
        sets = {n: h.dataset(base.model_spec(h.spec)) for n, h in hospitals.items()}
        windows = {n: d.train for n, d in sets.items()}
        empty = [n for n, w in windows.items() if len(w) == 0]
        if empty:
            logger.warning("hospitals %s have no training windows and sit the federation out", empty)
        val = {n: d.val for n, d in sets.items()}
        select = base.select and base.dp is None and any(len(v) for v in val.values())
        self.results_: dict[str, list[TrainResult]] = {n: [] for n in hospitals}
        if select:
            horizon = next(iter(sets.values())).spec.horizon or 1
            pooled = pooled_windows(list(val.values()))
            keeper = BestOrStart(self.model_, pooled, pooled_blocks(val, horizon), base.quantiles, base.margin)
        for r in range(self.rounds):
            states, weights = [], []
            for name, train in windows.items():
                if len(train) == 0:
                    continue
                local = copy.deepcopy(self.model_)
                config: TrainConfig = replace(
                    base.train_config(len(train)), epochs=self.local_epochs, seed=base.seed + 1000 * r
                )
                result = train_local(local, train, config=config, dp=base.dp)
                self.results_[name].append(result)
                states.append({k: v.detach() for k, v in local.state_dict().items()})
                weights.append(float(len(train)))
            if not states:
                raise ValueError("no hospital has training windows; nothing to federate")
            self.model_.load_state_dict(fedavg(states, weights))
            logger.debug("round %d: %d nodes", r + 1, len(states))
            if select:
                keeper.offer(self.model_, r + 1)
        self.best_round_ = keeper.finish(self.model_) if select else self.rounds

    def epsilon_spent(self, delta: float) -> dict[str, float]:
        """Per hospital, the epsilon of all its rounds composed (PRV accountant); inf without DP."""
        from medalloc_core.privacy.accounting import epsilon_for

        out = {}
        for name, results in self.results_.items():
            history = [(r.noise_multiplier, r.sample_rate, r.steps) for r in results]
            if any(s is None or q is None for s, q, _ in history):
                out[name] = float("inf")
            else:
                out[name] = float(epsilon_for(history, delta=delta)) if history else 0.0  # type: ignore[arg-type]
        return out

    def _predict(self, hospital: HospitalData, origins: Origins) -> np.ndarray:
        spec = self.base.model_spec(hospital.spec)
        return predict_origins(self.model_, hospital, spec, origins, scaler=self.scalers_.get(hospital.name))
