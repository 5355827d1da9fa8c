"""Privacy accounting: pinned reference epsilons, PRV/RDP behaviour, noise search invariants."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import PRVAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from opacus.accountants.utils import get_noise_multiplier

from medalloc_core.privacy.accounting import (
    TargetUnreachable,
    compact_history,
    epsilon_for,
    noise_multiplier_for,
)

# Opacus' standard RDP orders, written out here so the reference is independent of our module.
STANDARD_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))


def rdp_reference(history: list[tuple[float, float, int]], delta: float) -> float:
    """Epsilon computed directly from Opacus' RDP analysis functions."""
    rdp = sum(
        np.asarray(compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=STANDARD_ORDERS))
        for sigma, q, steps in history
    )
    eps, _ = get_privacy_spent(orders=STANDARD_ORDERS, rdp=rdp, delta=delta)
    return float(eps)


# (noise, sample rate, steps, delta) -> RDP epsilon, pinned from Opacus 1.6.0.
PINNED_RDP = [
    ((1.0, 0.01, 1000), 1e-5, 2.1013652716430564),
    ((1.1, 0.05, 500), 1e-5, 6.921636609206166),
    ((0.8, 0.02, 5000), 1e-8, 21.052064647854063),
    ((1.0, 0.01, 1), 1e-5, 0.9555491477031676),
]


@pytest.mark.parametrize(("item", "delta", "expected"), PINNED_RDP)
def test_rdp_epsilon_matches_pinned_and_independent_reference(item, delta, expected) -> None:
    got = epsilon_for([item], delta=delta, accountant="rdp")
    assert got == pytest.approx(expected, rel=1e-9)
    assert got == pytest.approx(rdp_reference([item], delta), rel=1e-12)


def test_prv_epsilon_is_opacus_upper_bound_and_tighter_than_rdp() -> None:
    history = [(1.0, 0.01, 1000)]
    got = epsilon_for(history, delta=1e-5, accountant="prv")
    accountant = PRVAccountant()
    accountant.history = list(history)
    assert got == pytest.approx(accountant.get_epsilon(delta=1e-5, eps_error=0.01), rel=1e-9)
    assert got == pytest.approx(1.8383716370172951, rel=1e-6)
    rdp = rdp_reference(history, 1e-5)
    # PRV is the tighter guarantee on typical DP-SGD settings (~12% here) but the same ballpark.
    assert 0.8 * rdp < got < 0.95 * rdp


def test_heterogeneous_history_composes() -> None:
    history = [(1.0, 0.01, 1000), (2.0, 0.1, 200)]
    assert epsilon_for(history, delta=1e-5, accountant="rdp") == pytest.approx(rdp_reference(history, 1e-5), rel=1e-12)
    single = epsilon_for(history[:1], delta=1e-5, accountant="rdp")
    assert epsilon_for(history, delta=1e-5, accountant="rdp") > single


def test_split_history_equals_merged_history() -> None:
    merged = [(1.0, 0.01, 1000)]
    split = [(1.0, 0.01, 300), (1.0, 0.01, 0), (1.0, 0.01, 700)]
    assert compact_history(split) == [(1.0, 0.01, 1000)]
    for accountant in ("rdp", "prv"):
        assert epsilon_for(split, delta=1e-5, accountant=accountant) == epsilon_for(
            merged, delta=1e-5, accountant=accountant
        )


def test_order_of_history_does_not_change_prv_result() -> None:
    a, b = (1.0, 0.01, 400), (1.5, 0.05, 100)
    assert epsilon_for([a, b], delta=1e-5) == epsilon_for([b, a], delta=1e-5)


def test_empty_history_spends_nothing() -> None:
    assert epsilon_for([], delta=1e-5) == 0.0
    assert epsilon_for([(1.0, 0.1, 0)], delta=1e-5) == 0.0


@pytest.mark.parametrize(
    ("history", "delta", "match"),
    [
        ([(0.0, 0.1, 10)], 1e-5, "noise_multiplier must be > 0"),
        ([(1.0, 0.0, 10)], 1e-5, "sample_rate"),
        ([(1.0, 1.5, 10)], 1e-5, "sample_rate"),
        ([(1.0, 0.1, -1)], 1e-5, "steps"),
        ([(1.0, 0.1, 2.5)], 1e-5, "steps"),
        ([(1.0, 0.1, 10)], 0.0, "delta"),
        ([(1.0, 0.1, 10)], 1.0, "delta"),
    ],
)
def test_invalid_inputs_are_named(history, delta, match) -> None:
    with pytest.raises(ValueError, match=match):
        epsilon_for(history, delta=delta)


def test_prv_failure_falls_back_to_rdp_and_logs_why(caplog: pytest.LogCaptureFixture) -> None:
    # At delta=1e-17 PRV's floating-point guard refuses; RDP still gives a guarantee.
    history = [(1.0, 0.01, 1000)]
    with caplog.at_level(logging.WARNING, logger="medalloc_core.privacy.accounting"):
        got = epsilon_for(history, delta=1e-17, accountant="prv")
    assert got == pytest.approx(rdp_reference(history, 1e-17), rel=1e-12)
    assert "using the RDP bound" in caplog.text and "Floating point" in caplog.text


@pytest.mark.filterwarnings("ignore:Optimal order:UserWarning")  # from rdp_reference itself
def test_prv_pathological_history_falls_back_to_rdp(caplog: pytest.LogCaptureFixture) -> None:
    # Almost no noise: PRV would discretise on ~1e8 points (minutes, GBs); we go to RDP first.
    history = [(0.05, 0.9, 100)]
    with caplog.at_level(logging.WARNING, logger="medalloc_core.privacy.accounting"):
        got = epsilon_for(history, delta=1e-5, accountant="prv")
    assert np.isfinite(got)
    assert got == pytest.approx(rdp_reference(history, 1e-5), rel=1e-12)
    assert "using the RDP bound" in caplog.text and "grid" in caplog.text


@settings(max_examples=6, deadline=None)
@given(
    noise=st.floats(0.5, 4.0),
    rate=st.floats(0.001, 0.3),
    steps=st.integers(1, 400),
)
def test_prv_never_reports_more_than_rdp(noise: float, rate: float, steps: int) -> None:
    history = [(noise, rate, steps)]
    assert epsilon_for(history, delta=1e-5, accountant="prv") <= epsilon_for(history, delta=1e-5, accountant="rdp")


@settings(max_examples=20, deadline=None)
@given(
    noise=st.floats(0.3, 10.0),
    rate=st.floats(0.0005, 1.0),
    steps=st.integers(1, 5000),
    extra=st.integers(1, 5000),
    more_noise=st.floats(1.01, 3.0),
)
def test_rdp_epsilon_monotone_in_steps_and_decreasing_in_noise(
    noise: float, rate: float, steps: int, extra: int, more_noise: float
) -> None:
    eps = epsilon_for([(noise, rate, steps)], delta=1e-5, accountant="rdp")
    assert epsilon_for([(noise, rate, steps + extra)], delta=1e-5, accountant="rdp") >= eps
    assert epsilon_for([(noise * more_noise, rate, steps)], delta=1e-5, accountant="rdp") <= eps


@settings(max_examples=5, deadline=None)
@given(
    noise=st.floats(0.6, 3.0),
    rate=st.floats(0.002, 0.2),
    steps=st.integers(1, 300),
)
def test_prv_epsilon_monotone_in_steps_and_decreasing_in_noise(noise: float, rate: float, steps: int) -> None:
    eps = epsilon_for([(noise, rate, steps)], delta=1e-5)
    assert epsilon_for([(noise, rate, 2 * steps)], delta=1e-5) >= eps
    assert epsilon_for([(1.5 * noise, rate, steps)], delta=1e-5) <= eps


@pytest.mark.filterwarnings("ignore:Optimal order:UserWarning")  # from Opacus' own search
def test_noise_for_target_agrees_with_opacus_search_and_is_safe() -> None:
    kwargs = {"sample_rate": 0.02, "steps": 500}
    ours = noise_multiplier_for(target_epsilon=3.0, delta=1e-5, accountant="rdp", **kwargs)
    theirs = get_noise_multiplier(target_epsilon=3.0, target_delta=1e-5, accountant="rdp", **kwargs)
    assert ours == pytest.approx(theirs, rel=0.02)
    eps = epsilon_for([(ours, 0.02, 500)], delta=1e-5, accountant="rdp")
    assert 3.0 - 0.01 <= eps <= 3.0


def test_prv_noise_for_target_is_safe_and_smaller_than_rdp() -> None:
    sigma_prv = noise_multiplier_for(target_epsilon=3.0, delta=1e-5, sample_rate=0.02, steps=500)
    sigma_rdp = noise_multiplier_for(target_epsilon=3.0, delta=1e-5, sample_rate=0.02, steps=500, accountant="rdp")
    assert epsilon_for([(sigma_prv, 0.02, 500)], delta=1e-5) <= 3.0
    assert sigma_prv < sigma_rdp  # the tighter accountant buys less noise for the same epsilon


@pytest.mark.slow  # ~20 s: each example runs a full binary search
@settings(max_examples=12, deadline=None)
@given(
    target=st.floats(0.3, 12.0),
    rate=st.floats(0.001, 0.5),
    steps=st.integers(1, 3000),
    past=st.lists(st.tuples(st.floats(1.0, 8.0), st.floats(0.001, 0.1), st.integers(1, 200)), max_size=3),
)
def test_noise_for_target_never_overshoots(target, rate, steps, past) -> None:
    already = epsilon_for(past, delta=1e-5, accountant="rdp")
    if already >= target:
        with pytest.raises(TargetUnreachable):
            noise_multiplier_for(
                target_epsilon=target,
                delta=1e-5,
                sample_rate=rate,
                steps=steps,
                accountant="rdp",
                history=past,
            )
        return
    sigma = noise_multiplier_for(
        target_epsilon=target,
        delta=1e-5,
        sample_rate=rate,
        steps=steps,
        accountant="rdp",
        history=past,
    )
    eps = epsilon_for([*past, (sigma, rate, steps)], delta=1e-5, accountant="rdp")
    assert eps <= target
    # ...and it is the smallest to within the tolerance: a bit less noise would overshoot or
    # gain less than the tolerance.
    less = epsilon_for([*past, (sigma * 0.98, rate, steps)], delta=1e-5, accountant="rdp")
    assert target - eps <= 0.01 + 1e-12 or less > target


def test_target_already_spent_is_unreachable_with_how_to_fix() -> None:
    past = [(1.0, 0.01, 1000)]  # RDP epsilon 2.10 at 1e-5
    with pytest.raises(TargetUnreachable, match="already spent epsilon=2.1"):
        noise_multiplier_for(
            target_epsilon=2.0,
            delta=1e-5,
            sample_rate=0.01,
            steps=10,
            accountant="rdp",
            history=past,
        )
