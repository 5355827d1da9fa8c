"""The one DP-SGD step, on Opacus: clip each example's gradient, sum, add N(0, sigma^2 C^2), divide.

Every DP-SGD path of the project runs its privatisation through ``DPSGDStep``: window-level
DP-SGD (``medalloc_core.forecast.training.train_local``, every ``grad_sample_mode``),
patient-level DP-SGD (``simulations/benchmarks/patient_privacy.py`` over
``medalloc_core.privacy.patient``) and the equipment task's device-level DP-SGD
(``medalloc_core.equipment.model``). The clipping and the noise are Opacus' own
(``opacus.optimizers.DPOptimizer.clip_and_accumulate`` and ``add_noise``, its clip factor
``C / (||g_i|| + 1e-6)`` capped at 1, its ``secure_mode`` when asked); only the way each path
obtains its per-example gradients differs:

- ``from_grad_samples``: per-example gradients, either given (``vmap`` per device) or left on
  ``p.grad_sample`` by an Opacus ``GradSampleModule`` (``hooks``, ``ew``, ``functorch``);
- ``from_clipped_sums``: already clipped and summed gradients (the exact ``LinearClipper`` of
  ``forecast.training`` and Opacus' ghost clipping compute the clipped sum without per-example
  tensors): Opacus adds the noise and the division.

The privacy accounting is not Opacus' accountant: a node's ``PrivacyLedger`` is its one
accountant for the life of its data, charged with the plan (``DPPlan``) before the first step.

Cost, measured against the hand-written steps it replaced (one run each on the shared 2-core
machine, process CPU time): equipment's ``train_risk`` 3.53 -> 3.59 ms per step (logistic model,
217 devices, 1.02x) and 4.50 -> 4.62 ms (hidden 8, 1.03x); ``dp_overhead --quick`` MLP
``linear`` DP/plain 1.19x -> 1.33x and 1.26x -> 1.68x in a second pair of runs (medians 1.27x ->
1.31x, 1.35x -> 1.49x), ``hooks`` 7.19x -> 5.77x and 6.60x -> 5.81x, ``ghost`` 2.16x -> 2.00x and
2.36x -> 1.94x. The noise-and-divide alone of one MLP step (30,612 parameters) costs 0.37 ms
hand-written and 0.69 ms here (Opacus draws per parameter), +0.32 ms on a ~4-5 ms step: small
next to one place for the mechanism and Opacus' secure_mode, so no reason against Opacus.

Randomness: on a real node the noise generator is seeded from the OS CSPRNG (``os_generator``,
``os.urandom``); a seeded generator is for research runs only (``TrainConfig.seed``,
``simulation-reproducible-noise``). ``secure_mode=True`` turns on Opacus' floating-point-attack
resistant sampling.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import torch

__all__ = ["DPSGDStep", "os_generator"]


def os_generator() -> torch.Generator:
    """A torch generator seeded with 63 bits from ``os.urandom``: nobody, the coordinator included, can recompute it."""
    return torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)


class DPSGDStep:
    """DP-SGD privatisation of one step's gradient over ``params``, written to each ``p.grad``.

    Parameters
    ----------
    params
        The trained tensors (``requires_grad``); the step writes ``p.grad`` of each.
    noise_multiplier
        sigma: the noise std over the clipping bound (0: clip only, no noise).
    max_grad_norm
        C: each example's whole gradient (all parameters together) is clipped to this L2 norm.
    expected_batch_size
        The divisor of the noisy sum: the *expected* Poisson batch, as DP-SGD is accounted (an
        empty batch still gets its noise and the same divisor).
    generator
        Source of the noise; ``None`` draws one from the OS (``os_generator``).
    secure_mode
        Opacus' secure noise (``opacus.optimizers.optimizer._generate_noise``).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: float,
        generator: torch.Generator | None = None,
        secure_mode: bool = False,
    ) -> None:
        if not noise_multiplier >= 0 or not max_grad_norm > 0 or not expected_batch_size > 0:
            raise ValueError(
                f"DP-SGD needs noise_multiplier >= 0, max_grad_norm > 0 and expected_batch_size > 0, got "
                f"{noise_multiplier}, {max_grad_norm}, {expected_batch_size}"
            )
        self.params = [p for p in params if p.requires_grad]
        self.expected_batch_size = expected_batch_size
        from opacus.optimizers import DPOptimizer  # Opacus imports torch.distributed: only when a node trains with DP

        # Opacus' optimizer over a no-op SGD: its clipping and noise, never its update (the
        # caller's own optimizer steps, after e.g. FedProx's data-free proximal term is added).
        self._opacus = DPOptimizer(
            torch.optim.SGD(self.params, lr=0.0),
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=1,  # the division is ours: Opacus' reads the grad-sample count
            loss_reduction="sum",
            generator=generator if generator is not None else os_generator(),
            secure_mode=secure_mode,
        )

    @property
    def noise_multiplier(self) -> float:
        return float(self._opacus.noise_multiplier)

    @property
    def max_grad_norm(self) -> float:
        return float(self._opacus.max_grad_norm)

    @torch.no_grad()
    def from_grad_samples(self, grad_samples: Sequence[torch.Tensor] | None = None) -> None:
        """Clip per-example gradients ``(b, *p.shape)`` (given, or on ``p.grad_sample``), sum, noise, divide."""
        if grad_samples is not None:
            if len(grad_samples) != len(self.params):
                raise ValueError(f"{len(grad_samples)} per-example gradients for {len(self.params)} parameters")
            for p, g in zip(self.params, grad_samples):
                p.grad_sample = g.detach()  # type: ignore[attr-defined]  # a new tensor object: Opacus marks it processed, not the caller's
        for p in self.params:
            p.summed_grad = None  # type: ignore[attr-defined]
        self._opacus.clip_and_accumulate()
        self._noise_and_divide()

    @torch.no_grad()
    def from_clipped_sums(self, sums: Sequence[torch.Tensor]) -> None:
        """Noise and divide already clipped and summed gradients (one per parameter, ``p.shape``)."""
        if len(sums) != len(self.params):
            raise ValueError(f"{len(sums)} clipped sums for {len(self.params)} parameters")
        for p, s in zip(self.params, sums):
            p.summed_grad = s.detach().reshape(p.shape)  # type: ignore[attr-defined]
        self._noise_and_divide()

    def _noise_and_divide(self) -> None:
        self._opacus.add_noise()  # p.grad = summed + N(0, sigma^2 C^2), Opacus' draw
        for p in self.params:
            assert p.grad is not None  # Opacus' add_noise sets it
            p.grad.div_(self.expected_batch_size)
            p.grad_sample = None  # type: ignore[attr-defined]
            p.summed_grad = None  # type: ignore[attr-defined]

    def close(self) -> None:
        """Remove Opacus' bookkeeping attributes from the parameters (they are left as they were given)."""
        for p in self.params:
            for name in ("grad_sample", "summed_grad"):
                if hasattr(p, name):
                    delattr(p, name)
