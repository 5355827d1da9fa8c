"""Local training of a forecaster, plain or with DP-SGD, in one code path; evaluation and prediction.

A DP run samples batches by Poisson sampling (Opacus' ``DPDataLoader``), clips every
per-sample gradient to ``max_grad_norm``, sums, adds ``N(0, sigma^2 C^2)`` noise and divides by
the expected batch size: exactly DP-SGD as Opacus accounts for it. Before the first step it asks
the privacy ledger for the whole planned spend and trains nothing when the ledger refuses.

Per-sample gradients come from one of two places:

- ``"linear"`` (ours): for models whose parameters all sit in ``nn.Linear`` layers applied to
  2-D inputs (the MLP), the per-sample gradient of a layer is the outer product ``g_i a_i^T``,
  so its norm is ``||g_i|| ||a_i||`` and the clipped sum is one matmul ``(c * G)^T A``. One
  forward, one backward, no per-sample tensors: about the cost of a plain step.
- Opacus' ``"hooks"``, ``"ghost"``, ``"ew"``, ``"functorch"`` for everything else.

``"auto"`` (the default) picks ``"linear"`` when the model allows it and ``"hooks"`` otherwise;
``simulations/benchmarks/dp_overhead.py`` measures all of them.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from medalloc_core.forecast.features import WindowSet
from medalloc_core.forecast.models import ForecasterNet, pinball_loss_per_sample
from medalloc_core.privacy.accounting import AccountantName, epsilon_for, noise_multiplier_for
from medalloc_core.privacy.dpsgd import DPSGDStep
from medalloc_core.privacy.plan import DPPlan

logger = logging.getLogger(__name__)

GRAD_SAMPLE_MODES = ("auto", "linear", "hooks", "ghost", "ew", "functorch")
OPACUS_MODES = ("hooks", "ghost", "ew", "functorch")


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class TrainConfig:
    """Local optimisation settings; defaults suit a few hundred windows per hospital.

    Parameters
    ----------
    epochs
        Passes over the training windows per call (default 5; one call = one federated round).
    batch_size
        Batch size; under DP the *expected* Poisson batch size (default 64).
    lr
        Learning rate (default 1e-3, Adam).
    optimizer
        ``"adam"`` (default) or ``"sgd"`` (momentum 0.9).
    weight_decay
        L2 weight decay (default 0).
    fedprox_mu
        FedProx proximal weight mu: adds mu/2 ||w - w_global||^2 (default 0 = off).
    seed
        Seeds batch sampling and DP noise (default 0: research runs repeat). ``None``: every
        generator is seeded per call from the OS CSPRNG (``secrets``), so nobody, the caller or a
        coordinator included, can recompute the sampling or the noise. Anything private against
        a party that knows the code and the seed must use ``None``.
    """

    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    fedprox_mu: float = 0.0
    seed: int | None = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs={self.epochs} and batch_size={self.batch_size} must be >= 1")
        if self.lr <= 0 or self.weight_decay < 0 or self.fedprox_mu < 0:
            raise ValueError("lr must be > 0; weight_decay and fedprox_mu must be >= 0")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer={self.optimizer!r}; use 'adam' or 'sgd'")


@dataclass(frozen=True, kw_only=True)
class DPConfig:
    """DP-SGD settings; every field is keyword-only because each changes the guarantee.

    Parameters
    ----------
    noise_multiplier
        sigma: noise std / max_grad_norm. Give this or ``target_epsilon``, not both.
    target_epsilon
        Calibrate sigma so that ``planned_rounds`` calls like this one spend this epsilon in
        total (needs ``medalloc_core.privacy.accounting``).
    planned_rounds
        Calls (federated rounds) the target_epsilon calibration covers (default 1).
    max_grad_norm
        C: per-sample gradient clipping bound in the scaled-loss units (default 1.0).
    delta
        Target delta (default 1e-5; below 1/n for a hospital's few thousand windows).
    grad_sample_mode
        One of ``GRAD_SAMPLE_MODES``; ``"auto"`` (default) = ``"linear"`` when the model allows,
        else ``"hooks"``.
    accountant
        ``"prv"`` (default, tighter) or ``"rdp"``.
    """

    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    planned_rounds: int = 1
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    grad_sample_mode: str = "auto"
    accountant: AccountantName = "prv"

    def __post_init__(self) -> None:
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError("DPConfig needs exactly one of noise_multiplier and target_epsilon")
        if self.noise_multiplier is not None and self.noise_multiplier < 0:
            raise ValueError(f"noise_multiplier={self.noise_multiplier} must be >= 0")
        if self.target_epsilon is not None and self.target_epsilon <= 0:
            raise ValueError(f"target_epsilon={self.target_epsilon} must be > 0")
        if self.planned_rounds < 1 or self.max_grad_norm <= 0 or not 0 < self.delta < 1:
            raise ValueError("planned_rounds >= 1, max_grad_norm > 0 and 0 < delta < 1 are required")
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise ValueError(f"grad_sample_mode={self.grad_sample_mode!r}; choose one of {GRAD_SAMPLE_MODES}")
        if self.accountant not in ("prv", "rdp"):
            raise ValueError(f"accountant={self.accountant!r}; use 'prv' or 'rdp'")


class LedgerLike(Protocol):
    """What training needs from ``medalloc_core.privacy.ledger.PrivacyLedger``."""

    def spend(
        self, fingerprint: str, *, noise_multiplier: float, sample_rate: float, steps: int, run_id: str
    ) -> float: ...


@dataclass(frozen=True)
class TrainResult:
    """What one ``train_local`` call did."""

    num_examples: int  # training windows (the FedAvg weight)
    steps: int  # optimisation steps taken
    loss: float  # mean training pinball loss over the steps (scaled space)
    noise_multiplier: float | None  # sigma used (None: not private)
    sample_rate: float | None  # Poisson sampling rate q (None: not private)
    epsilon_spent_this_call: float | None  # epsilon of this call alone at DPConfig.delta
    seconds: float  # wall time of the optimisation loop
    cpu_seconds: float = 0.0  # process CPU time of the loop: what benchmarks compare on a shared machine


# ----------------------------------------------------------------------------- per-sample clipping


class LinearClipper:
    """Exact per-sample clipping for models whose parameters all sit in ``nn.Linear`` layers.

    Inputs may be ``(B, d)`` or ``(B, T, d)`` (a layer applied to ``T`` rows of each sample, as
    the channel-independent hybrid does); the ``(B, T, d)`` case uses the Gram-matrix norm below.

    For a linear layer ``z = a W^T + b`` the per-sample gradient is ``g_i a_i^T`` (weight) and
    ``g_i`` (bias), with ``g_i = dloss_i/dz_i``; so ``||grad_i||^2 = ||g_i||^2 (||a_i||^2 + 1)``
    summed over layers, and the sum of clipped gradients is ``(c * G)^T A``.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        covered = {id(p) for m in self.linears for p in m.parameters()}
        stray = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in covered]
        if stray:
            raise ValueError(f"grad_sample_mode='linear' needs every parameter in an nn.Linear; not: {stray[:5]}")
        self._records: list[tuple[nn.Linear, torch.Tensor, torch.Tensor]] = []
        self._handles = [m.register_forward_hook(self._hook) for m in self.linears]

    @staticmethod
    def supports(model: nn.Module) -> bool:
        """True when every trainable parameter belongs to an ``nn.Linear``."""
        covered = {id(p) for m in model.modules() if isinstance(m, nn.Linear) for p in m.parameters()}
        return all(id(p) in covered for p in model.parameters() if p.requires_grad)

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if torch.is_grad_enabled():
            if inputs[0].ndim not in (2, 3):
                raise ValueError(
                    "grad_sample_mode='linear' needs (B, d) or (B, T, d) inputs to every Linear; use an Opacus mode"
                )
            self._records.append((module, inputs[0].detach(), output))  # type: ignore[arg-type]

    def clipped_sum(
        self, x: torch.Tensor, y: torch.Tensor, quantiles: tuple[float, ...], max_grad_norm: float
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Sum over the batch of per-sample gradients clipped to ``max_grad_norm``.

        Returns one tensor per parameter (in ``model.parameters()`` order) and the per-sample
        losses ``(B,)``.
        """
        self._records = []
        per_sample = pinball_loss_per_sample(self.model(x), y, quantiles)  # (B,)
        records, self._records = self._records, []
        if len({id(m) for m, _, _ in records}) != len(records):
            raise ValueError("grad_sample_mode='linear' needs each Linear used once per forward")
        if x.shape[0] == 0:  # an empty Poisson batch: nothing to sum (DP-SGD still adds noise)
            return [torch.zeros_like(p) for p in self.model.parameters()], per_sample.detach()
        outs = torch.autograd.grad(per_sample.sum(), [z for _, _, z in records])  # each (B, d_out) or (B, T, d_out)
        norms2 = torch.zeros(x.shape[0], dtype=x.dtype)
        for (m, a, _), g in zip(records, outs):
            if a.ndim == 2:
                g2 = g.pow(2).sum(1)
                norms2 += g2 * (a.pow(2).sum(1) + (1.0 if m.bias is not None else 0.0))
            else:
                # A layer applied to T rows of each sample: its gradient is sum_t g_t a_t^T, whose
                # squared norm is sum_{t,t'} (g_t . g_t')(a_t . a_t') (the Gram-matrix "ghost norm").
                gg = g @ g.transpose(1, 2)  # (B, T, T)
                norms2 += (gg * (a @ a.transpose(1, 2))).sum((1, 2))
                if m.bias is not None:
                    norms2 += g.sum(1).pow(2).sum(1)
        # Opacus' formula, so that both paths clip identically: C / (||g_i|| + 1e-6), at most 1.
        coef = (max_grad_norm / (norms2.sqrt() + 1e-6)).clamp(max=1.0)  # (B,)
        sums: dict[int, torch.Tensor] = {}
        for (m, a, _), g in zip(records, outs):
            if a.ndim == 2:
                cg = g * coef[:, None]  # (B, d_out)
                sums[id(m.weight)] = cg.T @ a  # (d_out, d_in)
                if m.bias is not None:
                    sums[id(m.bias)] = cg.sum(0)
            else:
                cg = g * coef[:, None, None]  # (B, T, d_out)
                sums[id(m.weight)] = torch.einsum("bto,bti->oi", cg, a)  # (d_out, d_in)
                if m.bias is not None:
                    sums[id(m.bias)] = cg.sum((0, 1))
        return [sums[id(p)] for p in self.model.parameters()], per_sample.detach()

    def close(self) -> None:
        """Remove the forward hooks; the model is left as it was given."""
        for h in self._handles:
            h.remove()
        self._handles = []


# ----------------------------------------------------------------------------- the shared loop


def _loader(data: WindowSet, batch_size: int, seed: int, *, plan: DPPlan | None) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    dataset = TensorDataset(data.X, data.y)
    if plan is None:
        return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator)
    from opacus.data_loader import DPDataLoader  # Opacus imports torch.distributed: only for a DP run

    # Poisson sampling at the plan's rate, drawn from the seeded generator.
    return DPDataLoader(dataset, sample_rate=plan.sample_rate, generator=generator)


def _optimizer(params: Sequence[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def _add_proximal_grad(model: nn.Module, global_params: Sequence[torch.Tensor] | None, mu: float) -> None:
    """Add the FedProx gradient mu (w - w_global) after privatisation: it does not touch data, so costs no privacy."""
    if not mu or global_params is None:
        return
    for p, g in zip(model.parameters(), global_params):
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        p.grad.add_(p.detach() - g, alpha=mu)


def _resolve_mode(model: nn.Module, mode: str) -> str:
    if mode == "auto":
        return "linear" if LinearClipper.supports(model) else "hooks"
    return mode


class _Stepper(Protocol):
    """Fills ``p.grad`` for one batch (privatised or not); the shared loop does the rest."""

    def zero_grad(self) -> None: ...

    def grads(self, x: torch.Tensor, y: torch.Tensor) -> float: ...  # returns the batch's mean loss

    def close(self) -> None: ...


class _PlainStepper:
    def __init__(self, model: nn.Module, quantiles: tuple[float, ...]) -> None:
        self.model, self.quantiles = model, quantiles

    def zero_grad(self) -> None:
        self.model.zero_grad(set_to_none=True)

    def grads(self, x: torch.Tensor, y: torch.Tensor) -> float:
        loss = pinball_loss_per_sample(self.model(x), y, self.quantiles).mean()
        loss.backward()
        return float(loss.detach())

    def close(self) -> None:
        pass


class _LinearDPStepper:
    """The exact ``LinearClipper`` clipped sum, noised and divided by the shared ``DPSGDStep`` (Opacus)."""

    def __init__(
        self, model: nn.Module, quantiles: tuple[float, ...], *, max_grad_norm: float, step: DPSGDStep
    ) -> None:
        self.model, self.quantiles = model, quantiles
        self.clipper = LinearClipper(model)
        self.C, self.step = max_grad_norm, step

    def zero_grad(self) -> None:
        self.model.zero_grad(set_to_none=True)

    def grads(self, x: torch.Tensor, y: torch.Tensor) -> float:
        sums, per_sample = self.clipper.clipped_sum(x, y, self.quantiles, self.C)
        self.step.from_clipped_sums(sums)  # + N(0, sigma^2 C^2), / the *expected* batch, as DP-SGD accounts it
        return float(per_sample.mean()) if len(per_sample) else 0.0

    def close(self) -> None:
        self.clipper.close()
        self.step.close()


class _OpacusStepper:
    """Per-sample gradients from an Opacus ``GradSampleModule``; clip and noise by the shared ``DPSGDStep``.

    ``"ghost"``: Opacus' ghost clipping (two backward passes) leaves the clipped sum in ``p.grad``.
    """

    def __init__(
        self, model: nn.Module, quantiles: tuple[float, ...], *, mode: str, max_grad_norm: float, step: DPSGDStep
    ) -> None:
        from opacus.grad_sample.utils import wrap_model

        kwargs: dict[str, object] = {"batch_first": True, "loss_reduction": "mean"}
        if mode == "ghost":
            kwargs["max_grad_norm"] = max_grad_norm
        self.gsm = wrap_model(model, grad_sample_mode=mode, **kwargs)
        self.mode, self.quantiles, self.step = mode, quantiles, step

    def grads(self, x: torch.Tensor, y: torch.Tensor) -> float:
        per_sample = pinball_loss_per_sample(self.gsm(x), y, self.quantiles)
        value = float(per_sample.detach().mean()) if x.shape[0] else 0.0
        if self.mode == "ghost":
            per_sample.mean().backward(retain_graph=True)  # first pass: per-sample norms only
            self.gsm.zero_grad(set_to_none=True)
            coeff = self.gsm.get_clipping_coef()
            self.gsm.disable_hooks()
            (coeff * per_sample).sum().backward()  # second pass: the clipped sum, in p.grad
            self.gsm.enable_hooks()
            self.step.from_clipped_sums([p.grad for p in self.step.params if p.grad is not None])
        else:
            per_sample.mean().backward()
            self.step.from_grad_samples()  # clip, sum, add noise, divide by the expected batch size -> p.grad
        return value

    def zero_grad(self) -> None:
        self.gsm.zero_grad(set_to_none=True)
        for p in self.step.params:
            p.grad_sample = None  # type: ignore[attr-defined]

    def close(self) -> None:
        # Public GradSampleModule API: drop the hooks and the grad_sample attributes; the
        # caller keeps its own reference to the unwrapped model, whose parameters were trained.
        self.gsm.remove_hooks()
        self.gsm.cleanup()
        self.step.close()


def train_local(
    model: ForecasterNet,
    train: WindowSet,
    *,
    config: TrainConfig,
    dp: DPConfig | None = None,
    ledger: LedgerLike | None = None,
    fingerprint: str | None = None,
    global_params: Sequence[torch.Tensor] | None = None,
    run_id: str = "",
) -> TrainResult:
    """Train ``model`` in place on ``train`` windows, privately when ``dp`` is given.

    Parameters
    ----------
    model
        A forecaster from ``build_model``; returned with its own parameter names (never wrapped).
    train
        Training windows (scaled space).
    config
        Optimisation settings.
    dp
        DP-SGD settings; ``None`` trains without privacy.
    ledger, fingerprint
        With ``dp``: the ledger is asked to ``spend`` the whole planned run (steps = epochs x
        Poisson batches per epoch) before the first step; when it raises (budget exceeded),
        nothing is trained and the exception propagates.
    global_params
        The global model's parameters (``model.parameters()`` order), for FedProx.
    run_id
        Recorded by the ledger.
    """
    if len(train) == 0:
        raise ValueError("no training windows: the hospital's series is shorter than the split needs")
    if ledger is not None and (dp is None or not fingerprint):
        raise ValueError("a ledger needs dp settings and the data fingerprint it is keyed by")
    if global_params is not None:
        global_params = [g.detach().clone() for g in global_params]
    quantiles: tuple[float, ...] = tuple(model.config.quantiles)
    plan = DPPlan(n_examples=len(train), batch_size=config.batch_size, epochs=config.epochs) if dp is not None else None
    # None: three independent seeds from the OS CSPRNG, drawn per call (sampling, noise, global RNG).
    seeds = (
        [secrets.randbits(63) for _ in range(3)] if config.seed is None else [config.seed, config.seed + 1, config.seed]
    )
    loader = _loader(train, config.batch_size, seeds[0], plan=plan)
    optimizer = _optimizer(list(model.parameters()), config)

    sigma: float | None = None
    sample_rate: float | None = None
    epsilon: float | None = None
    stepper: _Stepper
    if dp is None or plan is None:
        stepper = _PlainStepper(model, quantiles)
    else:
        sample_rate, steps_planned, expected_batch_size = plan.sample_rate, plan.steps, plan.expected_batch_size
        sigma = dp.noise_multiplier
        if sigma is None:
            assert dp.target_epsilon is not None
            sigma = noise_multiplier_for(
                target_epsilon=dp.target_epsilon,
                delta=dp.delta,
                sample_rate=sample_rate,
                steps=steps_planned * dp.planned_rounds,
                accountant=dp.accountant,
            )
        if ledger is not None:
            assert fingerprint is not None
            # Ask first: a refusal raises here, before any parameter has moved.
            total = ledger.spend(
                fingerprint,
                noise_multiplier=sigma,
                sample_rate=sample_rate,
                steps=steps_planned,
                run_id=run_id or "local-training",
            )
            logger.info(
                "ledger accepted %d steps at sigma=%.4g q=%.4g; cumulative epsilon %.4g",
                steps_planned,
                sigma,
                sample_rate,
                total,
            )
        epsilon = (
            epsilon_for([plan.history_item(sigma)], delta=dp.delta, accountant=dp.accountant) if sigma > 0 else math.inf
        )
        noise_gen = torch.Generator().manual_seed(seeds[1])  # seeds[1] is from os.urandom when config.seed is None
        step = DPSGDStep(
            list(model.parameters()),
            noise_multiplier=sigma,
            max_grad_norm=dp.max_grad_norm,
            expected_batch_size=expected_batch_size,
            generator=noise_gen,
        )
        mode = _resolve_mode(model, dp.grad_sample_mode)
        if mode == "linear":
            stepper = _LinearDPStepper(model, quantiles, max_grad_norm=dp.max_grad_norm, step=step)
        else:
            stepper = _OpacusStepper(model, quantiles, mode=mode, max_grad_norm=dp.max_grad_norm, step=step)
        logger.debug("DP training: mode=%s sigma=%.4g q=%.4g steps=%d", mode, sigma, sample_rate, steps_planned)

    steps, loss_sum = 0, 0.0
    start, cpu_start = time.perf_counter(), time.process_time()
    model.train()
    try:
        # The global RNG (dropout, if a config turns it on) is seeded inside a fork, so the
        # caller's random state is left as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seeds[2])
            for _ in range(config.epochs):
                for x, y in loader:
                    stepper.zero_grad()
                    loss_sum += stepper.grads(x, y)
                    _add_proximal_grad(model, global_params, config.fedprox_mu)
                    optimizer.step()  # the plain optimizer: DPSGDStep has already privatised p.grad
                    steps += 1
    finally:
        stepper.close()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    model.zero_grad(set_to_none=True)
    return TrainResult(len(train), steps, loss_sum / max(steps, 1), sigma, sample_rate, epsilon, seconds, cpu_seconds)


def adaptive_batch_size(n_windows: int, batch_size: int, *, min_batches: int = 4, warn: bool = True) -> int:
    """``batch_size``, lowered so an epoch has at least ``min_batches`` batches.

    A small hospital's few windows in one batch would give one optimiser step per epoch. Under
    the source release the batch size costs no privacy (training is post-processing); under
    DP-SGD (research) a batch as large as the dataset would also mean Poisson sampling at rate
    1, with no amplification by subsampling. Logged when it changes, before any training.
    """
    if n_windows <= 0:
        return batch_size
    adapted = max(1, min(batch_size, n_windows // min_batches))
    if adapted < batch_size and warn:
        logger.warning(
            "%d training windows: batch size lowered from %d to %d so that an epoch has at least %d batches",
            n_windows,
            batch_size,
            adapted,
            min_batches,
        )
    return adapted


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def predict(model: ForecasterNet, X: torch.Tensor, *, batch_size: int = 1024) -> np.ndarray:
    """Quantile forecasts ``(N, H, T, Q)`` in the scaled space (``scaler.inverse_transform`` for beds)."""
    was_training = model.training
    model.eval()
    parts = [model(X[i : i + batch_size]) for i in range(0, len(X), batch_size)]
    model.train(was_training)
    if not parts:
        c = model.config
        return np.zeros((0, c.horizon, c.n_targets, len(c.quantiles)), dtype=np.float32)
    return torch.cat(parts).numpy()


@torch.no_grad()
def evaluate(model: ForecasterNet, data: WindowSet) -> dict[str, float]:
    """Scaled pinball loss (and per-target pinball) of ``model`` on ``data``; NaN when empty."""
    quantiles = tuple(model.config.quantiles)
    if len(data) == 0:
        return {"pinball": float("nan"), "num_examples": 0.0}
    pred = torch.from_numpy(predict(model, data.X))
    out = {"pinball": float(pinball_loss_per_sample(pred, data.y, quantiles).mean()), "num_examples": float(len(data))}
    for t in range(data.y.shape[2]):
        out[f"pinball_t{t}"] = float(
            pinball_loss_per_sample(pred[:, :, t : t + 1], data.y[:, :, t : t + 1], quantiles).mean()
        )
    return out
