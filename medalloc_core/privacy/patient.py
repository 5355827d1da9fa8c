"""Patient-level DP-SGD (the studied alternative to the source release): stride sampling and its exact accounting.

A stay of at most N nights changes the counts of at most N consecutive days of at most two
units, so it enters every window of those units whose L + H days overlap them: up to
``S = L + H + N - 1`` consecutive window starts per unit. *Stride sampling* draws, per step and
unit, one offset ``o`` uniformly from ``[0, S)`` and keeps the windows whose start is ``o``
modulo ``S``, each then with probability ``p`` (Poisson). Any run of S consecutive starts holds
exactly one start of each residue, so a stay is in at most one sampled window per unit per step,
and in the batch with probability at most ``p`` per unit (Schuchardt et al., ICML 2025, bound
the per-step contribution of a w-event the same way, by structured sampling).

Per step, with and without the stay the clipped-gradient sums differ by a vector ``v`` with
``||v|| <= 2 C`` per affected unit (substitution: ``g`` becomes ``g'``, both of norm <= C), so
``<= 4 C`` over two units, and ``v != 0`` only if an affected window was sampled, probability
``q = 1 - (1 - p)^2``. By joint convexity of the hockey-stick divergence, each step is dominated
by the Poisson-subsampled Gaussian with noise multiplier ``sigma / 4`` and rate ``q``: the item
``(sigma / 4, q, steps)`` that Opacus' accountants (and the ledger) compose exactly.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

__all__ = ["PATIENT_SENSITIVITY", "dp_sgd_patient_item", "stride", "stride_batches"]

# Clipped-gradient change per step, in units of the clipping norm C: two units x substitution (2 C).
PATIENT_SENSITIVITY = 4.0


def stride(*, history: int, horizon: int, max_stay_days: int) -> int:
    """``S = L + H + N - 1``: consecutive window starts one stay can touch in one unit."""
    return history + horizon + max_stay_days - 1


def dp_sgd_patient_item(*, noise_multiplier: float, keep_rate: float, steps: int) -> tuple[float, float, int]:
    """The accountant item ``(sigma / 4, 1 - (1 - p)^2, steps)`` of ``steps`` stride-sampled DP-SGD steps, per stay."""
    if not noise_multiplier > 0 or not 0 < keep_rate <= 1:
        raise ValueError(f"need noise_multiplier > 0 and 0 < keep_rate <= 1, got {noise_multiplier}, {keep_rate}")
    return (noise_multiplier / PATIENT_SENSITIVITY, 1.0 - (1.0 - keep_rate) ** 2, int(steps))


def stride_batches(
    units: np.ndarray, starts: np.ndarray, *, stride_days: int, keep_rate: float, steps: int, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """Each step's batch: per unit, the windows starting on ``o`` mod ``stride_days``, kept w.p. ``keep_rate``.

    ``units[i]`` and ``starts[i]`` (day numbers, e.g. ``datetime64[D]`` as int) describe window ``i``.
    """
    by_unit = [np.flatnonzero(units == u) for u in np.unique(units)]
    residues = [starts[idx] % stride_days for idx in by_unit]
    for _ in range(steps):
        chosen = []
        for idx, res in zip(by_unit, residues):
            sel = idx[res == rng.integers(stride_days)]
            chosen.append(sel[rng.random(len(sel)) < keep_rate])
        yield np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)


def expected_batch(units: np.ndarray, *, stride_days: int, keep_rate: float) -> float:
    """Expected windows per step (the divisor of the noisy gradient sum)."""
    return float(len(units)) / stride_days * keep_rate


def as_tensor_batches(
    x: torch.Tensor, y: torch.Tensor, batches: Iterator[np.ndarray]
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The windows of each batch."""
    for sel in batches:
        index = torch.from_numpy(sel)
        yield x[index], y[index]
