"""Keep the start unless training beats it by more than the validation noise.

Training on a release is free in privacy terms, so every method here trains as long as it
likes and keeps the round (or epoch) with the lowest pinball on the validation days. Those days
are few and, on a node, noisy (they are the release too): the best of twenty rounds beats the
start on them by chance alone. The lowest loss is therefore kept only where it beats the start
by more than ``margin`` standard errors of the paired difference, the difference averaged over
**blocks** of ``H`` consecutive origins per unit (overlapping windows share target days, so they
are not independent). Otherwise the start is kept: where the start is the public weights or a
zero-shot model, a hospital then gets what it would have had without training, never a model
that only looked better on noise.

The same rule runs in process (``Federated``, ``NeuralForecaster(select=True)``, ``FracastHead``)
and in the ServerApp, where each node reports its validation loss per block
(:func:`block_losses`) and the coordinator pairs them with the start's (:func:`beats`).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from medalloc_core.forecast.features import WindowSet
from medalloc_core.forecast.models import pinball_loss_per_sample
from medalloc_core.forecast.training import predict

logger = logging.getLogger(__name__)

#: Standard errors of the paired difference by which a trained model must beat its start.
KEEP_START_MARGIN = 2.0

__all__ = [
    "KEEP_START_MARGIN",
    "BestOrStart",
    "beats",
    "block_losses",
    "origin_blocks",
    "pooled_blocks",
    "window_losses",
]


def origin_blocks(name: str, windows: WindowSet, horizon: int) -> np.ndarray:
    """Per window, its block: hospital, unit and the ``horizon``-day block its first target day falls in."""
    days = windows.target_start.astype("datetime64[D]").astype(np.int64) // max(int(horizon), 1)
    return np.array([f"{name}|{u}|{d}" for u, d in zip(windows.units, days)], dtype=object)


def pooled_blocks(windows: Mapping[str, WindowSet], horizon: int) -> np.ndarray:
    """The :func:`origin_blocks` of each hospital's windows, in the order ``pooled_windows`` pools them."""
    parts = [origin_blocks(name, w, horizon) for name, w in windows.items()]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=object)


def window_losses(model: torch.nn.Module, windows: WindowSet, quantiles: Sequence[float]) -> np.ndarray:
    """Each window's pinball loss (scaled space, mean over days, targets and quantiles)."""
    if len(windows) == 0:
        return np.zeros(0)
    pred = torch.from_numpy(predict(model, windows.X))  # type: ignore[arg-type]
    return pinball_loss_per_sample(pred, windows.y, tuple(quantiles)).numpy().astype(np.float64)


def block_losses(losses: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """Mean loss per block, blocks in sorted order (the same order for every model on the same windows)."""
    if len(losses) == 0:
        return np.zeros(0)
    return pd.Series(np.asarray(losses, dtype=np.float64)).groupby(np.asarray(blocks)).mean().to_numpy()


def beats(candidate: np.ndarray, start: np.ndarray, margin: float = KEEP_START_MARGIN) -> bool:
    """True when per-block ``candidate`` losses beat the ``start``'s by more than ``margin`` standard errors.

    Both arrays hold one loss per block, the same blocks in the same order. Fewer than two
    blocks cannot measure the noise: the start is kept.
    """
    candidate, start = np.asarray(candidate, dtype=np.float64), np.asarray(start, dtype=np.float64)
    if candidate.shape != start.shape:
        raise ValueError(f"{candidate.shape[0]} candidate blocks against {start.shape[0]} of the start")
    diff = candidate - start
    if len(diff) < 2:
        return False
    se = float(diff.std(ddof=1) / np.sqrt(len(diff)))
    return float(diff.mean()) < -margin * se


class BestOrStart:
    """The lowest-validation-loss weights seen during training, or the start where they do not beat it.

    Offer the model after every round or epoch (:meth:`offer`); :meth:`finish` loads the weights
    to keep into it and returns their step (0: the start). ``val`` are the validation windows of
    every hospital pooled, ``blocks`` their :func:`origin_blocks`.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        val: WindowSet,
        blocks: np.ndarray,
        quantiles: Sequence[float],
        margin: float = KEEP_START_MARGIN,
    ) -> None:
        self.val, self.blocks, self.quantiles, self.margin = val, blocks, tuple(quantiles), margin
        losses = window_losses(model, val, self.quantiles)
        self.start_state = copy.deepcopy(model.state_dict())
        self.start_blocks = block_losses(losses, blocks)
        self.best_state, self.best_loss, self.best_step = self.start_state, float(losses.mean()), 0
        self.best_blocks = self.start_blocks

    def offer(self, model: torch.nn.Module, step: int) -> None:
        """Score ``model`` (after ``step``) on the validation windows; remember it if it is the best so far."""
        losses = window_losses(model, self.val, self.quantiles)
        loss = float(losses.mean())
        if loss < self.best_loss:
            self.best_state, self.best_loss, self.best_step = copy.deepcopy(model.state_dict()), loss, step
            self.best_blocks = block_losses(losses, self.blocks)

    def finish(self, model: torch.nn.Module) -> int:
        """Load the weights to keep into ``model``; the step they come from (0 = the start)."""
        if self.best_step and not beats(self.best_blocks, self.start_blocks, self.margin):
            logger.info(
                "step %d (validation pinball %.4f) is within the validation noise of the start; keeping the start",
                self.best_step,
                self.best_loss,
            )
            self.best_state, self.best_step = self.start_state, 0
        model.load_state_dict(self.best_state)
        return self.best_step
