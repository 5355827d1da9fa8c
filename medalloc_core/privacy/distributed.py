"""Distributed DP by the Skellam mechanism: each node adds its share of integer noise, only the sum is seen.

The mechanism (Agarwal, Kairouz, Liu, "The Skellam Mechanism for Differentially Private
Federated Learning", NeurIPS 2021) in the form the equipment task uses under secure aggregation:

- each node clips every device's gradient to L2 norm ``clip``, scales it by
  ``resolution / clip`` and rounds each coordinate at random (unbiased: up with probability
  the fractional part), so one device moves the node's integer sum by a vector of L2 norm
  below ``resolution + sqrt(d)`` and L1 norm below ``sqrt(d) (resolution + sqrt(d))``
  (every coordinate moves by less than 1 in rounding);
- each node adds ``Sk(mu / m, mu / m)`` (a difference of two Poisson(mu / m) draws, from the
  OS CSPRNG) to every coordinate, ``m`` being the minimum number of nodes whose shares the
  sum must hold;
- a sum of independent Skellams is Skellam: if at least ``m`` nodes' shares are summed the sum
  carries ``Sk(mu', mu')`` noise with ``mu' >= mu``, and the guarantee of ``Sk(mu, mu)`` holds
  (more noise never hurts). Secure aggregation (Flower's SecAgg+) makes the sum, modulo
  ``2**modulus_bits``, the only thing the coordinator sees; the modular wrap is a function of
  the sum, so it costs no privacy.

Accounting is Renyi DP: Theorem 3.5 of the paper bounds the Skellam mechanism at order alpha by
``alpha D2^2 / (4 mu) + min(((2 alpha - 1) D2^2 + 6 D1) / (16 mu^2), 3 D1 / (4 mu))``
(``D2``, ``D1``: the L2 and L1 sensitivities; ``Sk(mu, mu)`` has variance ``2 mu``, so the
first term is the Gaussian's at the same variance). Rounds compose by adding the curves, a
node's DP-SGD history (Opacus' subsampled-Gaussian RDP) adds to the same curve, and the
conversion to (epsilon, delta) is Opacus' (Balle et al. 2020). ``simulations.benchmarks.accountant``
checks the bound against the Renyi divergence of the Skellam distribution computed from its
probability mass function.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from medalloc_core.privacy.accounting import RDP_ORDERS, HistoryItem, compact_history

__all__ = [
    "MECHANISM",
    "SkellamItem",
    "SkellamPlan",
    "centred",
    "epsilon_with_skellam",
    "noise_multiplier_for_epsilon",
    "skellam_rdp",
    "skellam_share",
    "sum_rounded",
]

MECHANISM = "skellam-device"  # the ledger's name for a distributed-DP round of the equipment task
# Opacus' orders and larger ones: one round at the task's noise has its best order far above 63
# (Opacus then warns and its bound is loose); the Skellam bound holds at every order.
ORDERS: tuple[float, ...] = (*RDP_ORDERS, 80.0, 96.0, 128.0, 192.0, 256.0, 384.0, 512.0, 1024.0)
_MAX_MODULUS_BITS = 31  # Flower's SecAgg+ quantises into int32 and masks modulo at most 2**32


@dataclass(frozen=True, kw_only=True)
class SkellamItem:
    """One composed Skellam release for the accountant: ``steps`` releases of ``Sk(mu, mu)`` at sensitivities l2, l1."""

    mu: float
    l2: float
    l1: float
    steps: int

    def __post_init__(self) -> None:
        if not (self.mu > 0 and math.isfinite(self.mu)):
            raise ValueError(f"Skellam mu must be a finite number > 0, got {self.mu!r}")
        if not (self.l2 > 0 and self.l1 >= self.l2 and math.isfinite(self.l1)):
            raise ValueError(f"sensitivities need l1 >= l2 > 0, got l2={self.l2!r}, l1={self.l1!r}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")


@dataclass(frozen=True, kw_only=True)
class SkellamPlan:
    """What every node of a distributed-DP round agrees on; all noise sized for ``min_survivors`` nodes.

    Parameters
    ----------
    clip : float
        L2 bound of one device's gradient (the privacy unit's contribution), in model units.
    dimension : int
        Number of model coordinates summed.
    noise_multiplier : float
        Standard deviation of the noise on the sum, relative to the L2 sensitivity
        (``resolution + sqrt(dimension)`` integer units): the Gaussian's sigma at equal variance.
    min_survivors : int
        The fewest nodes whose noise shares the sum must hold; each node adds ``1/min_survivors``
        of the variance, so the guarantee holds while at least this many honest nodes' shares are summed.
    resolution : int (default: 4096)
        Integer units per ``clip``: rounding adds at most ``sqrt(dimension)`` units to the
        sensitivity, 0.15 % for the 40-coordinate risk model at the default.
    modulus_bits : int (default: 31)
        The sum is taken modulo ``2**modulus_bits`` (Flower's SecAgg+ quantises into int32).
    """

    clip: float
    dimension: int
    noise_multiplier: float
    min_survivors: int
    resolution: int = 4096
    modulus_bits: int = _MAX_MODULUS_BITS

    def __post_init__(self) -> None:
        if not (self.clip > 0 and math.isfinite(self.clip)):
            raise ValueError(f"clip must be a finite number > 0, got {self.clip!r}")
        if self.dimension < 1:
            raise ValueError(f"dimension must be >= 1, got {self.dimension}")
        if not (self.noise_multiplier > 0 and math.isfinite(self.noise_multiplier)):
            raise ValueError(
                f"noise_multiplier must be a finite number > 0, got {self.noise_multiplier!r}: "
                "no node sends a sum without noise"
            )
        if self.min_survivors < 1:
            raise ValueError(f"min_survivors must be >= 1, got {self.min_survivors}")
        if self.resolution < 1:
            raise ValueError(f"resolution must be >= 1, got {self.resolution}")
        if not 8 <= self.modulus_bits <= _MAX_MODULUS_BITS:
            raise ValueError(f"modulus_bits must be from 8 to {_MAX_MODULUS_BITS}, got {self.modulus_bits}")

    @property
    def scale(self) -> float:
        """Integer units per model unit."""
        return self.resolution / self.clip

    @property
    def l2_sensitivity(self) -> float:
        """One device's largest L2 move of a node's integer sum: ``resolution``, plus < 1 per coordinate in rounding."""
        return self.resolution + math.sqrt(self.dimension)

    @property
    def l1_sensitivity(self) -> float:
        """One device's largest L1 move: ``sqrt(d)`` times its L2 move (Cauchy-Schwarz)."""
        return math.sqrt(self.dimension) * self.l2_sensitivity

    @property
    def mu(self) -> float:
        """The Skellam parameter of the noise on the sum of ``min_survivors`` shares: variance ``2 mu``."""
        return (self.noise_multiplier * self.l2_sensitivity) ** 2 / 2.0

    @property
    def share_mu(self) -> float:
        """Each node's share: ``Sk(mu / m, mu / m)`` per coordinate."""
        return self.mu / self.min_survivors

    @property
    def modulus(self) -> int:
        return int(2**self.modulus_bits)

    def item(self, steps: int = 1) -> SkellamItem:
        """The accountant's item for ``steps`` rounds under this plan."""
        return SkellamItem(mu=self.mu, l2=self.l2_sensitivity, l1=self.l1_sensitivity, steps=steps)


# ------------------------------------------------------------------ accounting
def skellam_rdp(orders: Sequence[float], *, mu: float, l2: float, l1: float) -> np.ndarray:
    """Renyi DP of one ``Sk(mu, mu)`` release at each order (Agarwal et al. 2021, Theorem 3.5; an upper bound)."""
    a = np.asarray(orders, dtype=float)
    if np.any(a <= 1):
        raise ValueError("Renyi orders must be > 1")
    gaussian = a * l2**2 / (4.0 * mu)
    extra = np.minimum(((2.0 * a - 1.0) * l2**2 + 6.0 * l1) / (16.0 * mu**2), 3.0 * l1 / (4.0 * mu))
    result: np.ndarray = gaussian + extra
    return result


def epsilon_with_skellam(
    skellam: Iterable[SkellamItem],
    gaussian: Iterable[Sequence[float]] = (),
    *,
    delta: float,
    orders: Sequence[float] = ORDERS,
) -> float:
    """Epsilon at ``delta`` of composing Skellam releases with a subsampled-Gaussian history (RDP; an upper bound).

    ``gaussian`` holds Opacus history items ``(noise_multiplier, sample_rate, steps)`` (the
    node's DP-SGD and Gaussian releases on the same ledger); their RDP curves are Opacus' own.
    """
    from opacus.accountants.analysis import rdp as rdp_analysis  # Opacus imports torch.distributed: only when used

    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    rdp = np.zeros(len(orders))
    for item in skellam:
        if item.steps:
            rdp += item.steps * skellam_rdp(orders, mu=item.mu, l2=item.l2, l1=item.l1)
    for noise, rate, steps in compact_history(gaussian):
        rdp += np.asarray(rdp_analysis.compute_rdp(q=rate, noise_multiplier=noise, steps=steps, orders=list(orders)))
    if not np.any(rdp):
        return 0.0
    epsilon, _ = rdp_analysis.get_privacy_spent(orders=list(orders), rdp=rdp, delta=delta)
    return float(epsilon)


def noise_multiplier_for_epsilon(
    *, epsilon: float, delta: float, rounds: int, plan: SkellamPlan, history: Sequence[HistoryItem] = ()
) -> float:
    """The smallest noise multiplier (to 0.1 %) whose ``rounds`` Skellam releases stay within ``epsilon``.

    Raises ``ValueError`` when no noise up to 1e6 fits.
    """

    def eps(noise: float) -> float:
        probe = SkellamPlan(
            clip=plan.clip,
            dimension=plan.dimension,
            noise_multiplier=noise,
            min_survivors=plan.min_survivors,
            resolution=plan.resolution,
            modulus_bits=plan.modulus_bits,
        )
        return epsilon_with_skellam([probe.item(rounds)], history, delta=delta)

    low, high = 1e-2, 1.0
    while eps(high) > epsilon:
        high *= 2
        if high > 1e6:
            raise ValueError(f"no noise multiplier up to 1e6 keeps {rounds} rounds within epsilon {epsilon}")
    while high - low > 1e-3 * high:
        mid = (low + high) / 2
        low, high = (low, mid) if eps(mid) <= epsilon else (mid, high)
    return high


# ------------------------------------------------------------------ a node's share
def sum_rounded(per_device: np.ndarray, plan: SkellamPlan, rng: np.random.Generator) -> np.ndarray:
    """Clip each row (one device's gradient, ``(n, d)``) to ``plan.clip``, scale, round at random, sum: int64 ``(d,)``.

    ``rng`` must be the node's OS-seeded generator: whoever knows the rounding draws learns more about the rows.
    """
    x = np.asarray(per_device, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != plan.dimension:
        raise ValueError(f"expected per-device gradients of shape (n, {plan.dimension}), got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("a per-device gradient is not finite")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    clipped = x * np.minimum(1.0, plan.clip / np.maximum(norms, 1e-300))
    scaled = clipped * plan.scale
    floor = np.floor(scaled)
    rounded = floor + (rng.random(scaled.shape) < (scaled - floor))
    return rounded.sum(axis=0).astype(np.int64)


def skellam_share(plan: SkellamPlan, rng: np.random.Generator) -> np.ndarray:
    """One node's noise share: ``Sk(mu/m, mu/m)`` per coordinate, int64 ``(d,)``, from ``rng`` (OS CSPRNG on a node)."""
    lam = plan.share_mu
    share: np.ndarray = rng.poisson(lam, plan.dimension).astype(np.int64) - rng.poisson(lam, plan.dimension).astype(
        np.int64
    )
    return share


def centred(total: np.ndarray, modulus: int) -> np.ndarray:
    """A sum taken modulo ``modulus`` back to integers in ``[-modulus/2, modulus/2)``."""
    t = np.mod(np.asarray(total, dtype=np.int64), modulus)
    out: np.ndarray = np.where(t >= modulus // 2, t - modulus, t)
    return out
