"""The audit's statistics: AUC and TPR by hand, the one-run bound against direct computations and simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import brentq
from scipy.special import expit, logit
from scipy.stats import binom

from medalloc_core.privacy.audit_stats import (
    DEFAULT_GUESS_FRACTIONS,
    canary_guesses,
    mia_auc,
    one_run_audit,
    one_run_epsilon_lower_bound,
    one_run_p_value,
    tpr_at_fpr,
)

# ----------------------------------------------------------------------------- membership inference


def test_auc_hand_cases() -> None:
    assert mia_auc([3, 4], [1, 2]) == 1.0
    assert mia_auc([1, 2], [3, 4]) == 0.0
    assert mia_auc([1, 3], [2]) == 0.5
    assert mia_auc([1.0], [1.0]) == 0.5  # a tie counts one half
    # pairs (member, non-member): (2,1)=1 (2,2)=.5 twice over, (3,1)=1 (3,2)=1 -> 5 of 6
    assert mia_auc([2, 2, 3], [1, 2]) == pytest.approx(5 / 6)


finite = st.floats(-5, 5, allow_nan=False).map(lambda x: round(x, 1))  # rounding makes ties common


@given(st.lists(finite, min_size=1, max_size=30), st.lists(finite, min_size=1, max_size=30))
def test_auc_is_the_pairwise_win_rate(members: list[float], nonmembers: list[float]) -> None:
    wins = sum((a > b) + 0.5 * (a == b) for a in members for b in nonmembers)
    assert mia_auc(members, nonmembers) == pytest.approx(wins / (len(members) * len(nonmembers)))
    assert mia_auc(nonmembers, members) == pytest.approx(1 - wins / (len(members) * len(nonmembers)))


def test_tpr_at_fpr_hand_case() -> None:
    members, nonmembers = [5, 4, 3, 0], [4.5, 2, 1, -1]
    assert tpr_at_fpr(members, nonmembers, fpr=0.0) == 0.25  # only 5 beats every non-member
    assert tpr_at_fpr(members, nonmembers, fpr=0.25) == 0.75  # one false positive allowed: above 2
    assert tpr_at_fpr(members, nonmembers, fpr=0.5) == 0.75  # above 1: 0 still misses
    assert tpr_at_fpr(members, nonmembers, fpr=1.0) == 1.0


@given(
    st.lists(finite, min_size=1, max_size=25),
    st.lists(finite, min_size=1, max_size=25),
    st.sampled_from([0.0, 0.05, 0.1, 0.3, 1.0]),
)
def test_tpr_at_fpr_is_the_best_real_threshold(members: list[float], nonmembers: list[float], fpr: float) -> None:
    a, b = np.asarray(members), np.asarray(nonmembers)
    best = 0.0
    for t in [-np.inf, *a.tolist(), *b.tolist()]:  # "member" iff score > t
        if np.mean(b > t) <= fpr + 1e-12:
            best = max(best, float(np.mean(a > t)))
    assert tpr_at_fpr(members, nonmembers, fpr=fpr) == pytest.approx(best)


def test_attack_statistics_refuse_bad_scores() -> None:
    with pytest.raises(ValueError, match="empty"):
        mia_auc([], [1.0])
    with pytest.raises(ValueError, match="non-finite"):
        mia_auc([float("nan")], [1.0])
    with pytest.raises(ValueError, match="fpr"):
        tpr_at_fpr([1.0], [0.0], fpr=1.5)


# ----------------------------------------------------------------------------- the one-run bound


def _paper_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """The approximate-DP p-value as the paper's code computes it: a direct loop over i."""
    q = 1 / (1 + math.exp(-eps))
    beta = binom.sf(v - 1, r, q)
    alpha, total = 0.0, 0.0
    for i in range(1, v + 1):
        total += binom.pmf(v - i, r, q)  # P[v > W >= v - i]
        alpha = max(alpha, total / i)
    return min(beta + alpha * delta * 2 * m, 1.0)


def test_pure_dp_p_value_is_the_binomial_tail() -> None:
    assert one_run_p_value(m=10, r=1, v=1, epsilon=0.0, delta=0.0) == pytest.approx(0.5)
    assert one_run_p_value(m=10, r=3, v=3, epsilon=math.log(3), delta=0.0) == pytest.approx(0.75**3)
    for r, v, eps in ((20, 15, 0.5), (100, 80, 1.2), (7, 0, 2.0)):
        assert one_run_p_value(m=200, r=r, v=v, epsilon=eps, delta=0.0) == pytest.approx(binom.sf(v - 1, r, expit(eps)))


@pytest.mark.parametrize(
    ("m", "r", "v", "eps", "delta"),
    [(100, 40, 35, 1.0, 1e-3), (500, 100, 90, 1.5, 1e-5), (50, 50, 50, 3.0, 1e-2), (30, 10, 4, 0.2, 0.05)],
)
def test_approximate_dp_p_value_matches_the_papers_loop(m: int, r: int, v: int, eps: float, delta: float) -> None:
    ours = one_run_p_value(m=m, r=r, v=v, epsilon=eps, delta=delta)
    # Ours is the paper's bound minimised over u <= v (P[V >= v] <= P[V >= u]): valid, never looser.
    assert ours == pytest.approx(min(_paper_p_value(m, r, u, eps, delta) for u in range(v + 1)))
    assert ours <= _paper_p_value(m, r, v, eps, delta) + 1e-12


def test_no_bound_at_chance_accuracy() -> None:
    for r in (10, 100, 1000):
        assert one_run_epsilon_lower_bound(m=r, r=r, v=r // 2) == 0.0
        assert one_run_epsilon_lower_bound(m=r, r=r, v=r // 3, delta=1e-5) == 0.0


def test_all_correct_bound_is_the_closed_form_and_grows_with_r() -> None:
    bounds = []
    for r in (10, 50, 200, 1000):
        bound = one_run_epsilon_lower_bound(m=r, r=r, v=r, beta=0.05)
        # P[Binomial(r, q) >= r] = q^r = beta  ->  q = beta^(1/r), epsilon = logit(q)
        assert bound == pytest.approx(logit(0.05 ** (1 / r)), abs=1e-5)
        bounds.append(bound)
    assert bounds == sorted(bounds) and bounds[0] > 0


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 300), st.floats(0.0, 1.0), st.sampled_from([0.01, 0.05, 0.2]))
def test_pure_bound_is_the_root_of_the_binomial_tail(r: int, accuracy: float, beta: float) -> None:
    v = round(accuracy * r)
    bound = one_run_epsilon_lower_bound(m=r, r=r, v=v, beta=beta)

    def tail(eps: float) -> float:
        return float(binom.sf(v - 1, r, expit(eps))) - beta

    if tail(0.0) > 0:
        assert bound == 0.0
    else:
        assert bound == pytest.approx(brentq(tail, 0.0, 60.0, xtol=1e-9), abs=2e-6)


@pytest.mark.parametrize("delta", [0.0, 1e-5, 1e-4])
def test_bound_is_exactly_where_the_p_value_crosses_beta(delta: float) -> None:
    for m, r, v in ((1000, 300, 290), (600, 60, 46), (200, 100, 100), (400, 40, 33)):
        bound = one_run_epsilon_lower_bound(m=m, r=r, v=v, beta=0.05, delta=delta)
        assert bound > 0
        assert one_run_p_value(m=m, r=r, v=v, epsilon=bound, delta=delta) <= 0.05  # rejected: provable
        assert one_run_p_value(m=m, r=r, v=v, epsilon=bound + 1e-5, delta=delta) > 0.05  # and no more


def test_bound_is_monotone_in_correct_guesses_beta_and_delta() -> None:
    by_v = [one_run_epsilon_lower_bound(m=500, r=100, v=v, delta=1e-5) for v in range(40, 101)]
    assert all(a <= b for a, b in zip(by_v, by_v[1:]))
    assert by_v[-1] > by_v[30] > 0
    by_beta = [one_run_epsilon_lower_bound(m=500, r=100, v=90, beta=b) for b in (0.001, 0.01, 0.05, 0.2)]
    assert by_beta == sorted(by_beta)
    by_delta = [one_run_epsilon_lower_bound(m=500, r=100, v=90, delta=d) for d in (0.0, 1e-5, 1e-4, 1e-3)]
    assert by_delta == sorted(by_delta, reverse=True) and by_delta[-1] < by_delta[0]


def test_p_value_grows_with_epsilon() -> None:
    """The bisection needs the rejected epsilons to form an interval [0, bound)."""
    rng = np.random.default_rng(0)
    grid = np.linspace(0.0, 12.0, 100)
    for _ in range(80):
        m = int(rng.integers(1, 400))
        r = int(rng.integers(0, m + 1))
        v = int(rng.integers(0, r + 1))
        delta = float(rng.choice([0.0, 1e-5, 1e-3, 1e-2]))
        values = [one_run_p_value(m=m, r=r, v=v, epsilon=float(e), delta=delta) for e in grid]
        assert np.all(np.diff(values) >= -1e-12), (m, r, v, delta)


def test_bound_refuses_impossible_counts() -> None:
    with pytest.raises(ValueError, match="v <= r <= m"):
        one_run_epsilon_lower_bound(m=10, r=5, v=6)
    with pytest.raises(ValueError, match="v <= r <= m"):
        one_run_p_value(m=10, r=11, v=1, epsilon=1.0, delta=0.0)
    with pytest.raises(ValueError, match="beta"):
        one_run_epsilon_lower_bound(m=10, r=5, v=5, beta=0.0)


# ----------------------------------------------------------------------------- guesses and the whole audit


def test_canary_guesses_top_and_bottom_with_ties_by_index() -> None:
    scores = [0.5, 2.0, 2.0, -1.0, 0.0]
    assert canary_guesses(scores, k_plus=2, k_minus=1).tolist() == [0, 1, 1, -1, 0]
    assert canary_guesses(scores, k_plus=1, k_minus=2).tolist() == [0, 1, 0, -1, -1]  # tie: lower index first
    with pytest.raises(ValueError, match="sum to at most 5"):
        canary_guesses(scores, k_plus=3, k_minus=3)


def test_perfect_scores_give_the_closed_form_at_the_bonferroni_level() -> None:
    rng = np.random.default_rng(3)
    included = rng.random(200) < 0.5
    scores = np.where(included, 1.0, 0.0) + rng.normal(0, 0.01, 200)  # separable
    result = one_run_audit(scores, included, beta=0.05, delta=0.0)
    assert (result.canaries, result.included, result.choices) == (
        200,
        int(included.sum()),
        len(DEFAULT_GUESS_FRACTIONS),
    )
    # the widest choice (25 % in, 25 % out) is all right: r = v = 100
    assert (result.k_plus, result.k_minus, result.guesses, result.correct) == (50, 50, 100, 100)
    assert result.epsilon_lower_bound == pytest.approx(logit((0.05 / 6) ** (1 / 100)), abs=1e-5)


def test_uninformative_scores_prove_nothing() -> None:
    rng = np.random.default_rng(4)
    included = rng.random(1000) < 0.5
    assert one_run_audit(np.zeros(1000), included, delta=1e-5).epsilon_lower_bound < 0.3
    assert one_run_audit(rng.normal(size=1000), included, delta=1e-5).epsilon_lower_bound < 0.3


def _randomized_response_bounds(eps: float, delta: float, *, m: int, trials: int, seed: int) -> np.ndarray:
    """Audit an exactly (eps, delta)-DP mechanism many times; return the bounds.

    Per canary, the mechanism reveals S_i with probability delta, else answers S_i with
    probability e^eps / (1 + e^eps) and -S_i otherwise: (eps, delta)-DP in each S_i.
    """
    rng = np.random.default_rng(seed)
    bounds = []
    for _ in range(trials):
        s = rng.random(m) < 0.5
        truthful = (rng.random(m) < delta) | (rng.random(m) < expit(eps))
        answer = np.where(truthful, s, ~s)
        scores = answer + rng.random(m) * 0.1  # the auditor's score: the answer, ties broken at random
        bounds.append(
            one_run_audit(scores, s, beta=0.05, delta=delta, guess_fractions=((0.3, 0.3),)).epsilon_lower_bound
        )
    return np.asarray(bounds)


@pytest.mark.parametrize(("eps", "delta"), [(1.0, 0.0), (2.0, 0.0), (1.0, 2e-3)])
def test_the_bound_exceeds_the_true_epsilon_at_most_beta_of_the_time(eps: float, delta: float) -> None:
    trials = 300
    bounds = _randomized_response_bounds(eps, delta, m=100, trials=trials, seed=11)
    false_alarms = float(np.mean(bounds > eps))
    assert false_alarms <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / trials)  # beta plus three standard errors
    assert np.median(bounds) > 0.3 * eps  # and the test has power: it finds a good part of eps
