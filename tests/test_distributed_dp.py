"""Distributed DP (Skellam): the RDP bound against the exact divergence, a node's share, and the ledger's charge."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants.analysis import rdp as rdp_analysis
from scipy import stats

from medalloc_core.privacy.accounting import RDP_ORDERS
from medalloc_core.privacy.distributed import (
    MECHANISM,
    SkellamPlan,
    centred,
    epsilon_with_skellam,
    noise_multiplier_for_epsilon,
    skellam_rdp,
    skellam_share,
    sum_rounded,
)
from medalloc_core.privacy.ledger import LedgerCorrupt, PrivacyBudgetExceeded, PrivacyLedger

DELTA = 1e-5
FP = "sha256:" + "e" * 64


def exact_skellam_renyi(alpha: float, mu: float, shift: int) -> float:
    """D_alpha(Sk(mu,mu) + shift || Sk(mu,mu)) from the probability mass function (1-D, numerically)."""
    span = int(20 * math.sqrt(2 * mu)) + abs(shift) + 50
    k = np.arange(-span, span + 1)
    log_p = stats.skellam.logpmf(k - shift, mu, mu)
    log_q = stats.skellam.logpmf(k, mu, mu)
    terms = alpha * log_p + (1 - alpha) * log_q
    terms = terms[np.isfinite(terms)]  # far tails underflow; they carry nothing
    top = terms.max()
    return float((top + np.log(np.exp(terms - top).sum())) / (alpha - 1))


@pytest.mark.parametrize(("mu", "shift"), [(2.0, 1), (10.0, 3), (50.0, 7), (400.0, 20)])
def test_bound_holds_over_the_exact_divergence_and_is_close(mu: float, shift: int) -> None:
    orders = [1.5, 2.0, 4.0, 8.0, 16.0]
    bound = skellam_rdp(orders, mu=mu, l2=shift, l1=shift)
    exact = np.array([exact_skellam_renyi(a, mu, shift) for a in orders])
    assert np.all(exact <= bound * (1 + 1e-9))
    if mu >= 50:  # many units of noise: at the orders that decide epsilon the bound is within 5 % of the truth
        assert np.all(bound[:3] <= exact[:3] * 1.05)


def test_large_mu_is_the_gaussian_at_equal_variance() -> None:
    mu, l2 = 1e9, 4102.0
    orders = np.array([2.0, 8.0, 32.0])
    gaussian = orders * l2**2 / (2 * (2 * mu))  # N(0, 2 mu)
    assert skellam_rdp(orders, mu=mu, l2=l2, l1=l2 * 6.3) == pytest.approx(gaussian, rel=1e-4)


def test_epsilon_above_opacus_gaussian_of_the_same_variance_and_close() -> None:
    plan = SkellamPlan(clip=0.2, dimension=39, noise_multiplier=20.0, min_survivors=5)
    skellam = epsilon_with_skellam([plan.item(100)], delta=DELTA)
    rdp = rdp_analysis.compute_rdp(q=1.0, noise_multiplier=20.0, steps=100, orders=list(RDP_ORDERS))
    gaussian, _ = rdp_analysis.get_privacy_spent(orders=list(RDP_ORDERS), rdp=rdp, delta=DELTA)
    assert gaussian <= skellam <= gaussian * 1.01


def test_noise_for_epsilon_meets_the_target_from_above() -> None:
    base = SkellamPlan(clip=0.2, dimension=39, noise_multiplier=1.0, min_survivors=6)
    sigma = noise_multiplier_for_epsilon(epsilon=2.0, delta=DELTA, rounds=100, plan=base)
    at = SkellamPlan(clip=0.2, dimension=39, noise_multiplier=sigma, min_survivors=6)
    below = SkellamPlan(clip=0.2, dimension=39, noise_multiplier=sigma * 0.99, min_survivors=6)
    assert (
        epsilon_with_skellam([at.item(100)], delta=DELTA) <= 2.0 < epsilon_with_skellam([below.item(100)], delta=DELTA)
    )


def test_noise_is_sized_for_the_minimum_survivors() -> None:
    five = SkellamPlan(clip=0.2, dimension=39, noise_multiplier=10.0, min_survivors=5)
    ten = SkellamPlan(clip=0.2, dimension=39, noise_multiplier=10.0, min_survivors=10)
    assert five.mu == ten.mu and five.share_mu == pytest.approx(2 * ten.share_mu)
    # m shares of variance 2 mu / m sum to the variance the accountant charges
    rng = np.random.default_rng(0)
    plan = SkellamPlan(clip=1.0, dimension=20_000, noise_multiplier=1e-3, min_survivors=4, resolution=10_000)
    total = sum(skellam_share(plan, rng) for _ in range(plan.min_survivors))
    assert np.var(total) == pytest.approx(2 * plan.mu, rel=0.05)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 5),
    scale=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**32 - 1),
)
def test_one_device_moves_the_sum_by_at_most_its_sensitivity(rows: int, scale: float, seed: int) -> None:
    plan = SkellamPlan(clip=0.2, dimension=39, noise_multiplier=1.0, min_survivors=2, resolution=64)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, plan.dimension)) * scale
    for row in x:  # any one device's rounded vector is what adding or removing it changes
        moved = sum_rounded(row[None, :], plan, rng)
        assert np.linalg.norm(moved) <= plan.l2_sensitivity
        assert np.abs(moved).sum() <= plan.l1_sensitivity


def test_rounding_is_unbiased() -> None:
    plan = SkellamPlan(clip=1.0, dimension=3, noise_multiplier=1.0, min_survivors=1, resolution=10)
    x = np.array([[0.031, -0.047, 0.012]])  # scaled: 0.31, -0.47, 0.12 units
    rng = np.random.default_rng(1)
    mean = np.mean([sum_rounded(x, plan, rng) for _ in range(20_000)], axis=0)
    assert mean == pytest.approx(x[0] * 10, abs=0.02)


def test_modular_sum_comes_back_exactly() -> None:
    modulus = 2**31
    rng = np.random.default_rng(2)
    parts = [rng.integers(-(10**8), 10**8, size=40) for _ in range(12)]
    wrapped = sum(np.mod(p, modulus) for p in parts) % modulus
    assert np.array_equal(centred(wrapped, modulus), sum(parts))


def test_plan_rejects_no_noise() -> None:
    with pytest.raises(ValueError, match="no node sends a sum without noise"):
        SkellamPlan(clip=0.2, dimension=39, noise_multiplier=0.0, min_survivors=3)


# ------------------------------------------------------------------ the ledger
def _spend(ledger: PrivacyLedger, plan: SkellamPlan, run: str) -> float:
    return ledger.spend(
        FP,
        noise_multiplier=plan.noise_multiplier,
        sample_rate=1.0,
        steps=1,
        run_id=run,
        mechanism=MECHANISM,
        detail={"skellam-mu": plan.mu, "l2-sensitivity": plan.l2_sensitivity, "l1-sensitivity": plan.l1_sensitivity},
    )


def test_ledger_charges_the_skellam_epsilon_and_composes_with_dp_sgd(tmp_path: Path) -> None:
    ledger = PrivacyLedger.open(tmp_path / "l.json", epsilon_budget=5.0, delta=DELTA, unit="device")
    plan = SkellamPlan(clip=0.2, dimension=39, noise_multiplier=8.0, min_survivors=5)
    for r in range(3):
        after = _spend(ledger, plan, f"run/round-{r}")
    assert after == pytest.approx(epsilon_with_skellam([plan.item(3)], delta=DELTA))
    assert PrivacyLedger.load(tmp_path / "l.json").epsilon_spent() == pytest.approx(after)  # persisted
    both = ledger.spend(FP, noise_multiplier=3.0, sample_rate=0.4, steps=12, run_id="dpsgd", mechanism="dp-sgd-device")
    assert both == pytest.approx(epsilon_with_skellam([plan.item(3)], [(3.0, 0.4, 12)], delta=DELTA))
    assert both > after


def test_ledger_refuses_over_budget_and_records_nothing(tmp_path: Path) -> None:
    ledger = PrivacyLedger.open(tmp_path / "l.json", epsilon_budget=1.0, delta=DELTA, unit="device")
    plan = SkellamPlan(clip=0.2, dimension=39, noise_multiplier=10.0, min_survivors=5)
    spent = 0.0
    with pytest.raises(PrivacyBudgetExceeded):
        for r in range(100):
            spent = _spend(ledger, plan, f"r{r}")
    assert 0 < spent <= 1.0
    assert ledger.epsilon_spent() == pytest.approx(spent)


def test_ledger_refuses_a_skellam_spend_without_its_accounting(tmp_path: Path) -> None:
    ledger = PrivacyLedger.open(tmp_path / "l.json", epsilon_budget=5.0, delta=DELTA, unit="device")
    with pytest.raises(LedgerCorrupt, match="skellam-mu"):
        ledger.spend(FP, noise_multiplier=8.0, sample_rate=1.0, steps=1, run_id="r", mechanism=MECHANISM)
    assert ledger.spends() == []
