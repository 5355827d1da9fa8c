"""Attributions of one forecast quantile to the cells of its input window, with Captum.

The model reads a window ``x: (L, F)`` (L periods × F channels: the scaled target series and
the calendar covariates) and forecasts ``(H, T, Q)`` quantiles. The explained number is one
target's one quantile level, averaged over the horizon and brought back to beds/patients —
e.g. "the P90 of census, mean over the next 14 days". An attribution gives every input cell
its share of how far that number lies from the same number for a *baseline* window.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

# "integrated-gradients": exact completeness (the cells add up to f(x) - f(baseline)), one
# backward per step; "occlusion": replaces blocks of `window` periods of one channel with the
# baseline and measures the change (no gradients: also right for non-differentiable models).
METHODS: tuple[str, ...] = ("integrated-gradients", "occlusion")


class ForecastFunction(nn.Module):
    """``x: (B, L, F) -> (B,)``: one target's quantile, mean over horizon days, in beds/patients.

    Parameters
    ----------
    model : nn.Module
        A forecaster mapping ``(B, L, F)`` to ``(B, H, T, Q)`` in the scaled space.
    target_index, quantile_index : int
        Which target (T axis) and which quantile level (Q axis) to explain.
    mean, scale : float
        The unit's scaler for that target: beds = scaled * scale + mean.
    """

    def __init__(self, model: nn.Module, *, target_index: int, quantile_index: int, mean: float, scale: float) -> None:
        super().__init__()
        self.model = model
        self.target_index = int(target_index)
        self.quantile_index = int(quantile_index)
        self.mean = float(mean)
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)  # (B, H, T, Q)
        scaled = out[:, :, self.target_index, self.quantile_index].mean(dim=1)  # (B,)
        return scaled * self.scale + self.mean

    @torch.no_grad()
    def values(self, x: np.ndarray | torch.Tensor, *, batch_size: int = 2048) -> np.ndarray:
        """Evaluate on a stack of windows ``(N, L, F)``; ``(N,)`` float64."""
        tensor = torch.as_tensor(np.asarray(x, dtype=np.float32))
        parts = [self(tensor[i : i + batch_size]) for i in range(0, len(tensor), batch_size)]
        return torch.cat(parts).double().numpy() if parts else np.zeros(0)


@dataclass(frozen=True)
class Attribution:
    """Per-cell contributions to one forecast number.

    ``values`` is ``(L, F)`` in the forecast's unit (beds or patients); ``output`` and
    ``baseline_output`` are the explained number for the window and for the baseline. For
    integrated gradients ``values.sum() ≈ output - baseline_output`` (``completeness_gap`` says
    how closely); occlusion has no such identity.
    """

    values: np.ndarray
    output: float
    baseline_output: float
    method: str

    @property
    def completeness_gap(self) -> float:
        """|Σ attributions − (f(x) − f(baseline))|: 0 for exact integrated gradients."""
        return abs(float(self.values.sum()) - (self.output - self.baseline_output))


def attribute(
    function: ForecastFunction,
    x: np.ndarray,
    baseline: np.ndarray,
    *,
    method: str = "integrated-gradients",
    steps: int = 64,
    window: int = 7,
) -> Attribution:
    """Attribute ``function(x)`` to the cells of ``x: (L, F)`` relative to ``baseline: (L, F)``.

    Parameters
    ----------
    function : ForecastFunction
        The explained number as a function of the window.
    x, baseline : np.ndarray
        The window and the reference window, both ``(L, F)`` in the model's input space.
    method : str
        One of ``METHODS``.
    steps : int
        Integration steps (Gauss-Legendre) for integrated gradients; default 64 keeps the
        completeness gap below a hundredth of a bed on the project's models.
    window : int
        Periods per occluded block (default 7: one week), for occlusion.

    Returns
    -------
    Attribution
    """
    try:
        from captum.attr import IntegratedGradients, Occlusion
    except ModuleNotFoundError as exc:  # pragma: no cover - exercised only without the extra
        raise ModuleNotFoundError(
            "attributions need Captum: install the 'explain' extra (python -m pip install -e '.[explain]')",
            name=exc.name,
        ) from exc
    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; choose one of {list(METHODS)}")
    x = np.asarray(x, dtype=np.float32)
    baseline = np.asarray(baseline, dtype=np.float32)
    if x.shape != baseline.shape or x.ndim != 2:
        raise ValueError(f"x and baseline must both be (L, F), got {x.shape} and {baseline.shape}")
    if steps < 2 or window < 1:
        raise ValueError(f"steps must be >= 2 and window >= 1, got {steps}, {window}")
    inputs = torch.from_numpy(x)[None]  # (1, L, F)
    reference = torch.from_numpy(baseline)[None]  # (1, L, F)
    function.eval()
    if method == "integrated-gradients":
        values = IntegratedGradients(function).attribute(
            inputs, baselines=reference, n_steps=steps, method="gausslegendre"
        )
    else:
        window = min(window, x.shape[0])
        values = Occlusion(function).attribute(
            inputs, sliding_window_shapes=(window, 1), strides=(window, 1), baselines=reference
        )
    out, base = function.values(np.stack([x, baseline]))
    result = Attribution(
        values=values[0].detach().double().numpy(), output=float(out), baseline_output=float(base), method=method
    )
    logger.debug(
        "%s: f(x)=%.4f f(baseline)=%.4f sum=%.4f", method, result.output, result.baseline_output, result.values.sum()
    )
    return result
