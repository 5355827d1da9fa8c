"""Pure privacy accounting: epsilon for a DP-SGD history, noise for a target epsilon."""

from __future__ import annotations

import logging
import math
import numbers
import warnings
from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np

__all__ = [
    "ACCOUNTANTS",
    "DEFAULT_ACCOUNTANT",
    "PRV_EPS_ERROR",
    "RDP_ORDERS",
    "AccountantName",
    "HistoryItem",
    "TargetUnreachable",
    "compact_history",
    "epsilon_for",
    "noise_multiplier_for",
    "validate_history_item",
]

logger = logging.getLogger(__name__)

AccountantName = Literal["prv", "rdp"]
# One composed mechanism: (noise_multiplier, sample_rate, steps) of the Poisson-subsampled
# Gaussian mechanism, exactly Opacus' accountant history item.
HistoryItem = tuple[float, float, int]

ACCOUNTANTS: tuple[AccountantName, ...] = ("prv", "rdp")
# PRV: measured ~9-13% tighter than RDP on our settings (simulations/benchmarks/accountant.py).
DEFAULT_ACCOUNTANT: AccountantName = "prv"
# Opacus' default PRV discretisation error; it is *added* to the estimate so the returned
# value is an upper bound (a guarantee), not the estimate.
PRV_EPS_ERROR = 0.01
# Opacus' standard RDP orders (RDPAccountant.DEFAULT_ALPHAS), copied so a pinned value
# cannot drift with the library default.
RDP_ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))
# Above this the mechanism offers no meaningful protection; Opacus uses the same ceiling.
_MAX_NOISE = 1e6
# PRV discretises the privacy loss on a grid of this many points at most (~10 float64 arrays
# of it live at once: ~300 MB). Typical node histories need ~1e5-1e6 points; a pathological
# one (almost no noise) can need 1e9 and minutes of swapping, so it goes to RDP instead.
_PRV_MAX_GRID_POINTS = 4_000_000


class TargetUnreachable(ValueError):
    """No noise multiplier meets the target epsilon (e.g. the history already spends more)."""


# Below this the accountants divide by ~sigma^2 into overflow (1e-300 raised ZeroDivisionError)
# and any epsilon would be astronomically large: no DP run uses it.
MIN_NOISE_MULTIPLIER = 0.01
MAX_STEPS = 10**9  # a billion DP-SGD steps on one node: far past any budget; more is a corrupt record
# 1e308 overflowed the RDP accountant (OverflowError); both accountants are exact to 1e8 and more.
# The same ceiling as the noise search below (_MAX_NOISE), so a search never steps past it.
MAX_NOISE_MULTIPLIER = _MAX_NOISE


def validate_history_item(noise_multiplier: float, sample_rate: float, steps: int) -> None:
    """Check one ``(noise_multiplier, sample_rate, steps)`` item; raise ``ValueError`` if bad.

    Parameters
    ----------
    noise_multiplier
        Gaussian noise std relative to the clipping norm; must be finite and > 0 (zero noise
        means no privacy at all, which the accountant cannot express as a finite epsilon).
    sample_rate
        Poisson sampling probability of one example per step, in (0, 1].
    steps
        Number of noisy steps, an integer >= 0.
    """
    if isinstance(noise_multiplier, bool) or not (
        isinstance(noise_multiplier, numbers.Real) and math.isfinite(noise_multiplier)
    ):
        raise ValueError(f"noise_multiplier must be a finite number, got {noise_multiplier!r}")
    if noise_multiplier <= 0:
        raise ValueError(
            f"noise_multiplier must be > 0 (got {noise_multiplier}); zero noise gives no "
            "differential privacy. Use DP with a positive noise multiplier or train without DP."
        )
    if noise_multiplier > MAX_NOISE_MULTIPLIER:
        raise ValueError(
            f"noise_multiplier {noise_multiplier:g} is above {MAX_NOISE_MULTIPLIER:g}: the accountants overflow; "
            "such noise drowns any update, so no run uses it"
        )
    if noise_multiplier < MIN_NOISE_MULTIPLIER:
        raise ValueError(
            f"noise_multiplier {noise_multiplier:g} is below {MIN_NOISE_MULTIPLIER:g}: such noise gives no "
            "meaningful privacy and overflows the accountants. Use a noise multiplier of 0.3 or more."
        )
    if isinstance(sample_rate, bool) or not (isinstance(sample_rate, numbers.Real) and 0 < sample_rate <= 1):
        raise ValueError(
            f"sample_rate must be in (0, 1] (batch size / number of training windows), got {sample_rate!r}"
        )
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 0 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be an integer from 0 to {MAX_STEPS:,}, got {steps!r}")


def compact_history(history: Iterable[Sequence[float]]) -> list[HistoryItem]:
    """Merge items with the same (noise, sample rate) and drop zero-step items.

    Composition of the subsampled Gaussian mechanism is commutative, so the epsilon of the
    compacted history equals that of the original; the PRV accountant's cost grows with the
    number of distinct items, and a node's life-long history repeats the same settings.
    The result is sorted, so equal histories give identical accountant inputs.
    """
    steps_by_setting: dict[tuple[float, float], int] = {}
    for item in history:
        if len(item) != 3:
            raise ValueError(f"history items are (noise_multiplier, sample_rate, steps), got {item!r}")
        noise, rate, steps = float(item[0]), float(item[1]), item[2]
        validate_history_item(noise, rate, steps)  # type: ignore[arg-type]
        if steps == 0:
            continue
        key = (noise, rate)
        steps_by_setting[key] = steps_by_setting.get(key, 0) + int(steps)
    # Sorted: the PRV's numerics then give bit-identical results for the same multiset of
    # spends, whatever order they were recorded in (the ledger relies on this).
    return sorted((noise, rate, steps) for (noise, rate), steps in steps_by_setting.items())


def _check_delta(delta: float) -> None:
    if not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise ValueError(
            f"delta must be in (0, 1), got {delta!r}; choose delta well below 1/N, where N "
            "is the number of training windows"
        )


def _rdp_epsilon(history: Sequence[HistoryItem], delta: float) -> float:
    from opacus.accountants.analysis import rdp as rdp_analysis  # Opacus imports torch.distributed: only when used

    rdp = np.zeros(len(RDP_ORDERS))
    for noise, rate, steps in history:
        rdp = rdp + np.asarray(
            rdp_analysis.compute_rdp(q=rate, noise_multiplier=noise, steps=steps, orders=list(RDP_ORDERS))
        )
    # Opacus warns when the best order is at the edge of the grid (the bound is then looser
    # than it could be, still valid); record it in our log instead of the user's terminal.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        eps, order = rdp_analysis.get_privacy_spent(orders=list(RDP_ORDERS), rdp=rdp, delta=delta)
    for warning in caught:
        logger.debug("RDP conversion at order %s: %s", order, warning.message)
    return float(eps)


def _prv_grid_points(history: Sequence[HistoryItem], delta_error: float) -> float:
    """Size of the grid PRVAccountant would discretise on (its own formula, evaluated first)."""
    from opacus.accountants.analysis.prv import PoissonSubsampledGaussianPRV, compute_safe_domain_size

    prvs = [PoissonSubsampledGaussianPRV(rate, noise) for noise, rate, _ in history]
    steps = [s for _, _, s in history]
    half_width = compute_safe_domain_size(
        prvs=prvs, max_self_compositions=steps, eps_error=PRV_EPS_ERROR, delta_error=delta_error
    )
    mesh = PRV_EPS_ERROR / math.sqrt(sum(steps) * math.log(12 / delta_error) / 2)
    return 2 * half_width / mesh


def _prv_epsilon(history: Sequence[HistoryItem], delta: float) -> float:
    from opacus.accountants import PRVAccountant

    accountant = PRVAccountant()
    accountant.history = list(history)
    # PRVAccountant.get_epsilon returns eps_upper = estimate + eps_error at delta - delta_error:
    # an upper bound. log(0)/exp overflow at the edges of the PRV's support are expected (a
    # non-finite result is caught by the caller), and the RDP accountant it uses to size its
    # domain warns about edge orders; keep both out of the user's terminal, in our log.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        points = _prv_grid_points(history, delta_error=delta / 1000)  # Opacus' default delta_error
        if not points <= _PRV_MAX_GRID_POINTS:
            raise ValueError(f"PRV would need a grid of {points:.3g} points (limit {_PRV_MAX_GRID_POINTS:.0g})")
        epsilon = float(accountant.get_epsilon(delta=delta, eps_error=PRV_EPS_ERROR))
    for warning in caught:
        logger.debug("PRV accountant: %s", warning.message)
    return epsilon


def epsilon_for(
    history: Iterable[Sequence[float]],
    *,
    delta: float,
    accountant: AccountantName = DEFAULT_ACCOUNTANT,
) -> float:
    """Epsilon (an upper bound) of composing every item of ``history`` at ``delta``.

    Parameters
    ----------
    history
        Items ``(noise_multiplier, sample_rate, steps)`` of the Poisson-subsampled Gaussian
        mechanism (Opacus' accountant history). Order does not matter; empty gives 0. A
        history of ``sample_rate == 1`` items only (plain Gaussian mechanisms) is composed
        exactly (``medalloc_core.privacy.gaussian``), whatever ``accountant`` says.
    delta
        Target delta, in (0, 1).
    accountant
        ``"prv"`` (default): Opacus' PRV accountant's upper bound (``eps_error`` = 0.01 is
        added to the numerical estimate). Where PRV cannot evaluate a history (numerical
        failure), or where its bound is looser than RDP's (a handful of steps, where the
        added ``eps_error`` dominates), the RDP bound is returned: both are guarantees and
        we report the smaller guarantee, never an estimate.
        ``"rdp"``: the Renyi-DP bound over Opacus' standard orders.

    Returns
    -------
    float
        Epsilon such that the composed mechanism is (epsilon, delta)-DP; ``inf`` if the
        history offers no finite guarantee.
    """
    _check_delta(delta)
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
    items = compact_history(history)
    if not items:
        return 0.0
    if all(rate == 1.0 for _, rate, _ in items):
        # Only unsubsampled Gaussians (source releases, shares, DP metrics): they compose to one
        # Gaussian exactly, and its tight curve beats both accountants' bounds.
        from medalloc_core.privacy.gaussian import gaussian_epsilon

        z = 1.0 / math.sqrt(sum(steps / noise**2 for noise, _, steps in items))
        return gaussian_epsilon(noise_multiplier=z, delta=delta)
    rdp_eps = _rdp_epsilon(items, delta)
    if accountant == "rdp":
        return rdp_eps
    try:
        prv_eps = _prv_epsilon(items, delta)
    except (RuntimeError, ValueError, FloatingPointError, MemoryError) as exc:
        logger.warning(
            "PRV accountant cannot evaluate history %s at delta=%g (%s); using the RDP bound "
            "%.4f instead (a guarantee, slightly looser)",
            items,
            delta,
            exc,
            rdp_eps,
        )
        return rdp_eps
    if not math.isfinite(prv_eps) or prv_eps < 0:
        logger.warning(
            "PRV accountant returned %r for history %s at delta=%g; using the RDP bound %.4f",
            prv_eps,
            items,
            delta,
            rdp_eps,
        )
        return rdp_eps
    if rdp_eps < prv_eps:
        logger.debug("RDP bound %.4f tighter than PRV bound %.4f; using RDP", rdp_eps, prv_eps)
        return rdp_eps
    return prv_eps


def noise_multiplier_for(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: AccountantName = DEFAULT_ACCOUNTANT,
    history: Iterable[Sequence[float]] = (),
    epsilon_tolerance: float = 0.01,
) -> float:
    """Smallest noise multiplier (to ``epsilon_tolerance``) that stays within the target.

    Binary search on the noise multiplier; the returned value is always on the safe side:
    ``epsilon_for(history + [(result, sample_rate, steps)])`` is <= ``target_epsilon``
    (checked, not assumed), and within ``epsilon_tolerance`` of it unless the search hit
    its resolution limit.

    Parameters
    ----------
    target_epsilon
        Cumulative epsilon allowed after these ``steps`` are composed after ``history``.
    delta
        Target delta, in (0, 1).
    sample_rate, steps
        The planned training: Poisson sampling rate and number of noisy steps (>= 1).
    accountant
        ``"prv"`` (default) or ``"rdp"``; see :func:`epsilon_for`.
    history
        What this data has already spent (e.g. ``PrivacyLedger.history()``).
    epsilon_tolerance
        How far below the target the result may land; default 0.01 (as Opacus).

    Raises
    ------
    TargetUnreachable
        When even a huge noise multiplier exceeds the target, e.g. the history already
        spends as much as the target.
    """
    _check_delta(delta)
    if not (isinstance(target_epsilon, (int, float)) and target_epsilon > 0):
        raise ValueError(f"target_epsilon must be > 0, got {target_epsilon!r}")
    if epsilon_tolerance <= 0:
        raise ValueError(f"epsilon_tolerance must be > 0, got {epsilon_tolerance!r}")
    validate_history_item(1.0, sample_rate, steps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1 to need any noise, got {steps}")
    past = compact_history(history)

    def eps_at(noise: float) -> float:
        return epsilon_for([*past, (noise, sample_rate, steps)], delta=delta, accountant=accountant)

    already = epsilon_for(past, delta=delta, accountant=accountant)
    if already >= target_epsilon:
        raise TargetUnreachable(
            f"this data has already spent epsilon={already:.4g} at delta={delta:g}, which "
            f"reaches the target {target_epsilon:g}: no amount of noise makes {steps} more "
            "steps fit. Raise the budget only if your governance allows it, or train "
            "without this data (or without DP updates from it)."
        )

    noise_low, noise_high = 0.0, 1.0
    eps_high = eps_at(noise_high)
    while eps_high > target_epsilon:
        noise_low, noise_high = noise_high, 2 * noise_high
        if noise_high > _MAX_NOISE:
            raise TargetUnreachable(
                f"even noise_multiplier={_MAX_NOISE:g} exceeds target epsilon "
                f"{target_epsilon:g} at delta={delta:g} after the history "
                f"(epsilon {already:.4g} already spent). Lower the steps or sample rate, "
                "or raise the target."
            )
        eps_high = eps_at(noise_high)

    # Invariant: eps_at(noise_high) <= target; noise_low is 0 or exceeds the target.
    for _ in range(100):
        if target_epsilon - eps_high <= epsilon_tolerance:
            break
        if noise_high - noise_low <= 1e-6 * noise_high:
            break  # resolution limit: the remaining slack is in the accountant, not the noise
        middle = (noise_low + noise_high) / 2
        eps_middle = eps_at(middle)
        if eps_middle <= target_epsilon:
            noise_high, eps_high = middle, eps_middle
        else:
            noise_low = middle
    logger.debug(
        "noise_multiplier %.6g gives epsilon %.4f <= target %.4f (delta=%g, q=%g, steps=%d)",
        noise_high,
        eps_high,
        target_epsilon,
        delta,
        sample_rate,
        steps,
    )
    return noise_high
