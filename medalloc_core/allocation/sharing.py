"""DP release of a hospital's shared forecast, charged to the node's privacy ledger with its DP-SGD spends.

A Gaussian release of ``n`` numbers, each moved by at most ``Δ`` by one patient, with
per-value noise ``σ`` has L2 sensitivity ``Δ√n``: it is exactly one step of the subsampled
Gaussian mechanism with ``sample_rate = 1`` and ``noise_multiplier = σ / (Δ√n)``. So the
release is one more item in the node's accountant history and composes with its training.
The noise is calibrated with the ledger's own accountant (an upper bound, so never less
noise than the exact analytic Gaussian needs) and the ledger is charged *before* any noise is
drawn: if it refuses, nothing is released.

What this bookkeeping is and is not: DP-SGD's unit is one training window of aggregate
counts; the release's sensitivity is per patient per day, an assumption that holds for the
census counts but not for model forecasts (see docs/privacy.md). Composing both in one
history is conservative bookkeeping, not a patient-level guarantee.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import pandas as pd

from medalloc_core.allocation.regional import hospital_totals, share_forecast
from medalloc_core.privacy.accounting import AccountantName, epsilon_for, noise_multiplier_for
from medalloc_core.privacy.ledger import PrivacyLedger

logger = logging.getLogger(__name__)

__all__ = ["ShareResult", "calibrate_share_noise", "share_with_ledger"]


@dataclass(frozen=True)
class ShareResult:
    """One recorded release."""

    shared: pd.DataFrame  # hospital, date, q, value (noisy, sorted per day, >= 0)
    n_values: int
    noise_multiplier: float  # sigma / (sensitivity * sqrt(n)): what the ledger recorded
    sigma: float  # per-value Gaussian noise std, in beds
    epsilon_release: float  # the release alone, by the ledger's accountant at its delta
    epsilon_node_after: float  # the node's cumulative epsilon with this release


def calibrate_share_noise(
    *, epsilon: float, delta: float, n_values: int, sensitivity: float, accountant: AccountantName
) -> tuple[float, float]:
    """``(noise_multiplier, per-value sigma)`` for a Gaussian release of ``n_values`` numbers at (ε, δ).

    The noise multiplier is the accountant's for one step at sample rate 1 (``noise_multiplier_for``);
    ``sigma = noise_multiplier · sensitivity · √n_values``.
    """
    if n_values < 1 or not sensitivity > 0:
        raise ValueError(f"need n_values >= 1 and sensitivity > 0, got {n_values}, {sensitivity}")
    z = noise_multiplier_for(target_epsilon=epsilon, delta=delta, sample_rate=1.0, steps=1, accountant=accountant)
    return z, z * sensitivity * math.sqrt(n_values)


def share_with_ledger(
    forecast: pd.DataFrame,
    *,
    ledger: PrivacyLedger,
    fingerprint: str,
    epsilon: float,
    sensitivity: float = 1.0,
    seed: int | None,
    run_id: str,
) -> ShareResult:
    """Release one hospital's census quantiles with Gaussian noise, after charging its ledger.

    Parameters
    ----------
    forecast
        The hospital's forecast frame (``medalloc forecast`` output); census rows are summed over units.
    ledger
        The node's ledger; its delta and accountant calibrate the noise.
    fingerprint
        Fingerprint of the records the forecast was computed from (``fingerprint_frame``),
        the same key DP-SGD spends on that data are recorded under.
    epsilon
        Epsilon of this release alone at the ledger's delta.
    sensitivity
        Δ: how much one patient can move one released number (1 = one bed).
    seed
        ``None`` for a real release (fresh entropy); an int only for experiments.
    run_id
        Recorded with the spend.

    Raises
    ------
    PrivacyBudgetExceeded
        The node's cumulative epsilon would exceed its budget: nothing recorded, nothing released.
    """
    n = len(hospital_totals(forecast))
    z, sigma = calibrate_share_noise(
        epsilon=epsilon, delta=ledger.delta, n_values=n, sensitivity=sensitivity, accountant=ledger.accountant
    )
    after: list[float] = []

    def charge(_epsilon: float) -> None:  # called by share_forecast before any noise is drawn
        # On a patient-level ledger the release composes with the node's source release (both Gaussian):
        # the sensitivity per value is then the per-patient bound the caller states (docs/privacy.md §8).
        after.append(
            ledger.spend(fingerprint, noise_multiplier=z, sample_rate=1.0, steps=1, run_id=run_id, mechanism="share")
        )

    shared = share_forecast(
        forecast,
        epsilon=epsilon,
        delta=ledger.delta,
        mechanism="gaussian",
        sensitivity=sensitivity,
        seed=seed,
        on_release=charge,
        noise_scale=sigma,
    )
    if not after:
        raise RuntimeError("share_forecast released without charging the ledger")
    eps_alone = epsilon_for([(z, 1.0, 1)], delta=ledger.delta, accountant=ledger.accountant)
    logger.info(
        "shared %d values, sigma %.3g beds (z=%.4g); release epsilon %.4g, node epsilon %.4g",
        n,
        sigma,
        z,
        eps_alone,
        after[0],
    )
    return ShareResult(shared, n, z, sigma, eps_alone, after[0])
