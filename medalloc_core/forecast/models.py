"""The shared forecasters: config, a non-crossing quantile head, an MLP and a causal TCN, the pinball loss.

Every model maps ``x: (B, L, F)`` to ``(B, H, T, Q)`` quantiles in the scaled space, uses only
layers Opacus can compute per-sample gradients for (Linear, Conv1d, GroupNorm; no BatchNorm,
dropout off by default) and is listed in ``_ARCHITECTURES``, a private detail selected by
``ForecasterConfig.model`` (``MODEL_NAMES``). The one public forecaster registry is
``medalloc_core.forecast.forecasters.FORECASTERS``: ``make_forecaster("neural", model="tcn")``
reaches every architecture, and ``tests/test_forecasters.py`` is its contract test.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medalloc_core.contract import Frequency
from medalloc_core.forecast.features import WindowSpec

LEVELS = ("week", "weeks")  # ForecasterConfig.level
_INT_FIELDS = ("history", "horizon", "n_features", "n_targets", "hidden", "layers", "channels", "kernel_size", "levels")
# Bounds that keep even *describing* a model cheap (building it on the meta device to count its
# parameters makes one module per layer): far above any forecaster of hospital counts.
_DEPTH_FIELDS = ("layers", "levels")
_MAX_DEPTH = 64
_MAX_WIDTH = 1_000_000


def level_for(model: str, context: tuple[str, ...]) -> str:
    """``ForecasterConfig.level`` for a model reading ``context`` (a ``WindowSpec.context``): a hybrid
    whose first context group is the weekly means smooths its level from them."""
    return "weeks" if model == "hybrid" and context[:1] == ("weeks",) else "week"


@dataclass(frozen=True)
class ForecasterConfig:
    """Everything needed to rebuild a forecaster; stored with every checkpoint."""

    model: str = "mlp"  # one of MODEL_NAMES
    history: int = 56  # L: input periods (8 weeks of days)
    horizon: int = 14  # H: forecast periods (2 weeks of days)
    n_features: int = 7  # F: 2 targets + dow sin/cos + year sin/cos + was_missing
    n_targets: int = 2  # T: admissions and census
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)  # an 80% interval around the median
    hidden: int = 128  # MLP width; small data (a few hundred windows per hospital) needs no more
    layers: int = 1  # MLP hidden layers; 1 beat 2 under DP on the toy region (docs/forecasting.md)
    channels: int = 32  # TCN channels per causal conv layer
    kernel_size: int = 3  # TCN kernel; 2 convs per block, dilations 1,2,4,8: receptive field 1+2*2*15 = 61 >= L
    levels: int = 4  # TCN residual blocks, dilation 2**i
    dropout: float = 0.0  # off: DP noise already regularises, and dropout makes DP steps noisier
    context: int = 0  # hybrid: context channel groups after the level (WindowSpec.context: weeks, year-ago, region)
    # hybrid: where the classical level comes from. "week": the last week's mean (the window's loc);
    # "weeks": exponential smoothing of the weekly means in context group 0 (WindowSpec.context "weeks").
    level: str = "week"

    def __post_init__(self) -> None:
        # A config also comes from a model file's JSON sidecar: every field is checked for its
        # type as well as its range, so a bad file is a ValueError here, never a crash (or a
        # 14 GB allocation) inside torch. The parameter count is bounded by model_io.
        if not isinstance(self.model, str) or self.model not in _ARCHITECTURES:
            raise ValueError(f"unknown model {self.model!r}; choose one of {sorted(_ARCHITECTURES)}")
        q = self.quantiles
        if (
            not isinstance(q, tuple | list)
            or not q
            or any(isinstance(a, bool) or not isinstance(a, numbers.Real) or not 0 < a < 1 for a in q)
            or any(b <= a for a, b in zip(q, q[1:]))
        ):
            raise ValueError(f"quantiles {q!r} must be strictly increasing levels in (0, 1)")
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ValueError(f"ForecasterConfig.{name}={value!r} must be a whole number")
            limit = _MAX_DEPTH if name in _DEPTH_FIELDS else _MAX_WIDTH
            if not 1 <= int(value) <= limit:
                raise ValueError(f"ForecasterConfig.{name}={value} must be from 1 to {limit:,}")
            object.__setattr__(self, name, int(value))
        if (
            isinstance(self.context, bool)
            or not isinstance(self.context, numbers.Integral)
            or not 0 <= self.context <= 8
        ):
            raise ValueError(f"ForecasterConfig.context={self.context!r} must be a whole number from 0 to 8")
        object.__setattr__(self, "context", int(self.context))
        if self.level not in LEVELS or (self.level == "weeks" and (self.model != "hybrid" or self.context < 1)):
            raise ValueError(
                f"ForecasterConfig.level={self.level!r}: one of {LEVELS}; 'weeks' needs the hybrid model with the "
                "weekly means as its first context group (WindowSpec.context 'weeks')"
            )
        dropout = self.dropout
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0 <= dropout < 1:
            raise ValueError(f"ForecasterConfig.dropout={dropout!r} must be in [0, 1)")
        object.__setattr__(self, "quantiles", tuple(float(a) for a in q))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (quantiles as a list)."""
        d = asdict(self)
        d["quantiles"] = list(self.quantiles)
        return d

    @classmethod
    def for_spec(
        cls, spec: WindowSpec, *, model: str, hidden: int, frequency: Frequency = Frequency.DAILY
    ) -> ForecasterConfig:
        """The config whose inputs and outputs fit ``spec`` (F and T follow from the spec, not from any hospital)."""
        resolved = spec.resolved(frequency)
        assert resolved.history is not None and resolved.horizon is not None
        return cls(
            model=model,
            history=resolved.history,
            horizon=resolved.horizon,
            n_features=len(resolved.feature_names(frequency)),
            n_targets=len(resolved.targets),
            hidden=hidden,
            context=len(resolved.context),
            level=level_for(model, resolved.context),
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ForecasterConfig:
        """Inverse of ``to_dict``; unknown keys are an error (a checkpoint from another version)."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ForecasterConfig keys {sorted(unknown)}")
        d = dict(d)
        if isinstance(d.get("quantiles"), list):  # anything else is refused by __post_init__
            d["quantiles"] = tuple(d["quantiles"])
        return cls(**d)


# ----------------------------------------------------------------------------- quantile head


class QuantileHead(nn.Module):
    """Linear map to ``(B, H, T, Q)`` quantiles that cannot cross.

    It predicts the quantile nearest 0.5 directly and the others as cumulative softplus
    increments above and below it, so ``q[..., i] <= q[..., i + 1]`` by construction.
    """

    def __init__(self, in_features: int, config: ForecasterConfig) -> None:
        super().__init__()
        self.H, self.T, self.Q = config.horizon, config.n_targets, len(config.quantiles)
        self.anchor = min(range(self.Q), key=lambda i: abs(config.quantiles[i] - 0.5))
        self.proj = nn.Linear(in_features, self.H * self.T * self.Q)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        raw = self.proj(h).view(-1, self.H, self.T, self.Q)  # (B, H, T, Q)
        a = self.anchor
        mid = raw[..., a : a + 1]  # (B, H, T, 1)
        up = mid + torch.cumsum(F.softplus(raw[..., a + 1 :]), dim=-1)  # (B, H, T, Q-a-1)
        down = mid - torch.cumsum(F.softplus(raw[..., :a]).flip(-1), dim=-1).flip(-1)  # (B, H, T, a)
        return torch.cat([down, mid, up], dim=-1)


# ----------------------------------------------------------------------------- forecasters


class ForecasterNet(nn.Module):
    """What every registered forecaster is: a module that keeps the ``ForecasterConfig`` it was built from.

    ``config`` is declared here so that code holding any forecaster reads it typed
    (``nn.Module.__getattr__`` would otherwise type it ``Tensor | Module``).
    """

    config: ForecasterConfig


# ----------------------------------------------------------------------------- MLP


class MLPForecaster(ForecasterNet):
    """Flattened window -> ``layers`` x (Linear, GELU) -> quantile head.

    Only Linear layers carry parameters, which also lets training use the exact one-backward
    per-sample clipping in ``training`` (the cheapest DP path; see docs/forecasting.md).
    """

    def __init__(self, config: ForecasterConfig) -> None:
        super().__init__()
        self.config = config
        width = config.history * config.n_features
        blocks: list[nn.Module] = []
        for _ in range(config.layers):
            blocks += [nn.Linear(width, config.hidden), nn.GELU()]
            if config.dropout:
                blocks.append(nn.Dropout(config.dropout))
            width = config.hidden
        self.body = nn.Sequential(*blocks)
        self.head = QuantileHead(width, config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        assert x.ndim == 3 and x.shape[1:] == (c.history, c.n_features), (
            f"expected (B, {c.history}, {c.n_features}), got {tuple(x.shape)}"
        )
        return self.head(self.body(x.flatten(1)))  # (B, L*F) -> (B, hidden) -> (B, H, T, Q)


# ----------------------------------------------------------------------------- TCN


class CausalBlock(nn.Module):
    """Two dilated causal Conv1d layers with GroupNorm and a residual connection."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.pad = (kernel_size - 1) * dilation  # left padding only: period t never sees t+1
        self.conv1 = nn.Conv1d(c_in, c_out, kernel_size, dilation=dilation)
        self.conv2 = nn.Conv1d(c_out, c_out, kernel_size, dilation=dilation)
        self.norm1 = nn.GroupNorm(1, c_out)  # LayerNorm over channels and time; DP-safe, unlike BatchNorm
        self.norm2 = nn.GroupNorm(1, c_out)
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, L) -> (B, C_out, L)
        h = self.drop(F.gelu(self.norm1(self.conv1(F.pad(x, (self.pad, 0))))))
        h = self.drop(F.gelu(self.norm2(self.conv2(F.pad(h, (self.pad, 0))))))
        return h + self.skip(x)


class TCNForecaster(ForecasterNet):
    """Causal temporal convolutions over the window; the last period's features feed the quantile head."""

    def __init__(self, config: ForecasterConfig) -> None:
        super().__init__()
        self.config = config
        blocks = []
        c_in = config.n_features
        for i in range(config.levels):
            blocks.append(CausalBlock(c_in, config.channels, config.kernel_size, 2**i, config.dropout))
            c_in = config.channels
        self.blocks = nn.Sequential(*blocks)
        self.head = QuantileHead(config.channels, config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        assert x.ndim == 3 and x.shape[1:] == (c.history, c.n_features), (
            f"expected (B, {c.history}, {c.n_features}), got {tuple(x.shape)}"
        )
        h = self.blocks(x.transpose(1, 2))  # (B, F, L) -> (B, C, L)
        return self.head(h[:, :, -1])  # (B, C) -> (B, H, T, Q)


# ----------------------------------------------------------------------------- hybrid


def _inv_softplus(v: torch.Tensor) -> torch.Tensor:
    return v + torch.log(-torch.expm1(-v))  # log(exp(v) - 1), stable for large v


class HybridForecaster(ForecasterNet):
    """A classical forecast computed from the window itself, plus a learned correction.

    Expects window scaling (``WindowSpec(scaling="window")``): for each of the ``T`` targets
    the input has the window ``(x - loc) / scale`` (``loc`` = the window's last-week mean,
    ``scale`` = its seasonal spread, so one unit is "how much the series moves beyond its
    weekly pattern"), the weekly profile over up to 26 weeks before the origin, and the log
    level; channels ``[0, T)``, ``[T, 2T)``, ``[2T, 3T)``. Each target is forecast on its own
    with shared weights (channel-independent), so one set of weights serves admissions-only
    hospitals and ones with admissions and census; covariate channels are ignored.

    The classical part (no parameters): a level plus the long weekly profile — "the usual level,
    this weekday's usual deviation", an additive Holt-Winters — and a P10/P90 band of the
    standard-normal quantiles in units of the window's spread. The level is the last week's
    mean (``level = "week"``) or, with ``level = "weeks"``, simple exponential smoothing of the
    weekly means of the half year before the origin (context group 0), its smoothing weight
    chosen per window and target from ``SES_ALPHAS`` by (a softmin of) the one-week-ahead errors
    over those weeks: one week of admissions is a noisy level, and the weight that suits a stable
    clinic (small) is wrong after a shift (large). The network (``layers`` x (Linear, GELU),
    then a zero-initialised Linear) reads the window, its context channels, the profile and the
    level and adds a correction to the median and log-scale corrections to the gaps between
    quantiles. Untrained, the model *is* the classical
    forecast; a hospital unlike anything in training still gets at least the classical
    forecast's shape. Quantiles cannot cross (cumulative softplus gaps).
    """

    z_anchor: torch.Tensor  # () standard-normal quantile of the level nearest 0.5
    gap_bias: torch.Tensor  # (Q-1,) softplus^-1 of the standard-normal gaps between levels
    season_index: torch.Tensor  # (H,) h % 7: which of the last 7 inputs shares forecast day h's weekday

    def __init__(self, config: ForecasterConfig) -> None:
        super().__init__()
        assert config.history >= 7, f"the hybrid model needs L >= 7 (a week); got {config.history}"
        assert config.n_features >= (3 + config.context) * config.n_targets, (
            "the hybrid model needs window scaling (3 channels per target, plus its context channels)"
        )
        self.config = config
        blocks: list[nn.Module] = []
        width = config.history * (1 + config.context) + 7 + 1  # window, context channels, weekly profile, log level
        for _ in range(config.layers):
            blocks += [nn.Linear(width, config.hidden), nn.GELU()]
            width = config.hidden
        self.body = nn.Sequential(*blocks)
        self.out = nn.Linear(width, config.horizon * len(config.quantiles))
        nn.init.zeros_(self.out.weight)  # untrained = the classical forecast
        nn.init.zeros_(self.out.bias)
        levels = torch.tensor(config.quantiles, dtype=torch.float64)
        z = torch.special.ndtri(levels).float()  # (Q,) standard-normal quantiles
        self.anchor = min(range(len(levels)), key=lambda i: abs(config.quantiles[i] - 0.5))
        # Not parameters and not in state_dict: derived from the config, never sent or averaged.
        self.register_buffer("z_anchor", z[self.anchor].clone(), persistent=False)
        self.register_buffer("gap_bias", _inv_softplus(z[1:] - z[:-1]), persistent=False)
        self.register_buffer("season_index", torch.arange(config.horizon) % 7, persistent=False)

    def classical(self, u: torch.Tensor, profile: torch.Tensor, weeks: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, T, L)`` window, ``(B, T, 7)`` profile of its last week, ``(B, T, L)`` weekly means -> ``(B, T, H)``."""
        level = u[..., -7:].mean(-1, keepdim=True) if weeks is None else smoothed_level(weeks)  # (B, T, 1)
        return level + profile[..., self.season_index]  # forecast day h has the weekday of input L-7+(h%7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        T = c.n_targets
        K = c.context
        assert x.ndim == 3 and x.shape[1] == c.history and x.shape[2] >= (3 + K) * T, (
            f"expected (B, {c.history}, >={(3 + K) * T}), got {tuple(x.shape)}"
        )
        u = x[:, :, :T].transpose(1, 2)  # (B, T, L)
        profile = x[:, -7:, T : 2 * T].transpose(1, 2)  # (B, T, 7)
        log_level = x[:, -1:, 2 * T : 3 * T].transpose(1, 2)  # (B, T, 1)
        context = [x[:, :, (3 + k) * T : (4 + k) * T].transpose(1, 2) for k in range(K)]  # K x (B, T, L)
        base = self.classical(u, profile, context[0] if c.level == "weeks" else None)  # (B, T, H)
        extra = [channel.clamp(-20.0, 20.0) for channel in context]
        inputs = torch.cat(
            [u.clamp(-20.0, 20.0), *extra, profile.clamp(-20.0, 20.0), log_level], dim=-1
        )  # the clamp bounds a freak window
        raw = self.out(self.body(inputs)).view(u.shape[0], T, c.horizon, len(c.quantiles))  # (B, T, H, Q)
        a = self.anchor
        mid = (base + self.z_anchor + raw[..., a]).unsqueeze(-1)  # (B, T, H, 1)
        up = mid + torch.cumsum(F.softplus(raw[..., a + 1 :] + self.gap_bias[a:]), dim=-1)
        down = mid - torch.cumsum(F.softplus(raw[..., :a] + self.gap_bias[:a]).flip(-1), dim=-1).flip(-1)
        return torch.cat([down, mid, up], dim=-1).transpose(1, 2)  # (B, H, T, Q)


SES_ALPHAS = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)  # the smoothing weights the hybrid's "weeks" level chooses from
SES_SHARPNESS = 10.0  # softmin over their relative errors: 10 % more error than average weighs e^-1 as much


def smoothed_level(weeks: torch.Tensor, alphas: tuple[float, ...] = SES_ALPHAS) -> torch.Tensor:
    """``(B, T, L)`` weekly means, oldest first -> ``(B, T, 1)``: their exponentially smoothed level.

    Weeks before the series began are zeros before the first non-zero week (``weeks_channel``) and
    are skipped. Each row mixes the levels of the weights in ``alphas`` (``1.0`` is the last week
    itself) by a softmin of their sums of one-week-ahead absolute errors, relative to the mean sum
    (``SES_SHARPNESS``): in effect the best weight, but continuous in the input, so gradient-based
    explanations of the forecast still add up. Parameter-free and deterministic.
    """
    a = torch.tensor(alphas, dtype=weeks.dtype, device=weeks.device)  # (A,)
    seen = torch.cumsum((weeks != 0).to(weeks.dtype), dim=-1) > 0  # (B, T, L): from the first known week on
    level = torch.zeros(*weeks.shape[:-1], len(alphas), dtype=weeks.dtype, device=weeks.device)
    error = torch.zeros_like(level)
    started = torch.zeros(*weeks.shape[:-1], 1, dtype=torch.bool, device=weeks.device)
    for i in range(weeks.shape[-1]):
        w, known = weeks[..., i : i + 1], seen[..., i : i + 1]  # (B, T, 1)
        error = error + torch.where(known & started, (w - level).abs(), torch.zeros_like(level))
        level = torch.where(known, torch.where(started, level + a * (w - level), w.expand_as(level)), level)
        started = started | known
    relative = error / (error.mean(-1, keepdim=True) + 1e-6)  # scale-free: 1 = the average weight's error
    return (level * torch.softmax(-SES_SHARPNESS * relative, dim=-1)).sum(-1, keepdim=True)


# Private: the networks ForecasterConfig.model selects. Add an architecture here; it is then
# reachable from the public registry as make_forecaster("neural", model=<name>).
_ARCHITECTURES: dict[str, type[ForecasterNet]] = {
    "mlp": MLPForecaster,
    "tcn": TCNForecaster,
    "hybrid": HybridForecaster,
}
MODEL_NAMES: tuple[str, ...] = tuple(_ARCHITECTURES)


def build_model(config: ForecasterConfig, *, seed: int | None = None) -> ForecasterNet:
    """Instantiate ``config.model``; with ``seed`` the initial weights are reproducible."""
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return _ARCHITECTURES[config.model](config)
    return _ARCHITECTURES[config.model](config)


# ----------------------------------------------------------------------------- loss


def pinball_loss_per_sample(pred: torch.Tensor, target: torch.Tensor, quantiles: tuple[float, ...]) -> torch.Tensor:
    """Mean pinball (quantile) loss of each sample: ``(B, H, T, Q)``, ``(B, H, T)`` -> ``(B,)``.

    For level q and error e = y - yhat the loss is max(q e, (q - 1) e); the per-sample form is
    what DP training clips (one patient-window = one privacy unit of the gradient).
    """
    assert pred.shape[:-1] == target.shape and pred.shape[-1] == len(quantiles), (
        f"pred {tuple(pred.shape)} vs target {tuple(target.shape)}"
    )
    q = torch.tensor(quantiles, dtype=pred.dtype, device=pred.device)  # (Q,)
    err = target.unsqueeze(-1) - pred  # (B, H, T, Q)
    return torch.maximum(q * err, (q - 1) * err).flatten(1).mean(dim=1)


def pinball_loss(pred: torch.Tensor, target: torch.Tensor, quantiles: tuple[float, ...]) -> torch.Tensor:
    """Batch mean of ``pinball_loss_per_sample``."""
    return pinball_loss_per_sample(pred, target, quantiles).mean()


class PinballLoss(nn.Module):
    """Criterion form with a ``reduction`` ("mean", "sum", "none"), as Opacus' ghost clipping expects."""

    def __init__(self, quantiles: tuple[float, ...], reduction: str = "mean") -> None:
        super().__init__()
        self.quantiles = tuple(quantiles)
        self.reduction = reduction

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        per = pinball_loss_per_sample(pred, target, self.quantiles)
        if self.reduction == "none":
            return per
        return per.sum() if self.reduction == "sum" else per.mean()


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = [
    "ForecasterConfig",
    "ForecasterNet",
    "MODEL_NAMES",
    "MLPForecaster",
    "TCNForecaster",
    "HybridForecaster",
    "QuantileHead",
    "build_model",
    "pinball_loss",
    "pinball_loss_per_sample",
    "PinballLoss",
    "count_parameters",
]


# ----------------------------------------------------------------------------- model <-> arrays


def state_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's parameters as named float32 numpy arrays (the form sent over the wire and saved)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def load_arrays(model: nn.Module, arrays: Mapping[str, np.ndarray]) -> None:
    """Load named arrays into ``model`` strictly: every key and shape must match (``ValueError`` otherwise)."""
    own = model.state_dict()
    if set(own) != set(arrays):
        missing, unexpected = sorted(set(own) - set(arrays))[:3], sorted(set(arrays) - set(own))[:3]
        raise ValueError(f"parameter names differ: missing {missing}, unexpected {unexpected}")
    for key, tensor in own.items():
        if tuple(arrays[key].shape) != tuple(tensor.shape):
            raise ValueError(
                f"parameter '{key}' has shape {tuple(arrays[key].shape)}, the model expects {tuple(tensor.shape)}"
            )
    model.load_state_dict({k: torch.from_numpy(np.asarray(v, dtype=np.float32).copy()) for k, v in arrays.items()})


def build_from_arrays(config: ForecasterConfig, arrays: Mapping[str, np.ndarray]) -> ForecasterNet:
    """A forecaster of ``config`` holding ``arrays``."""
    model = build_model(config)
    load_arrays(model, arrays)
    return model
