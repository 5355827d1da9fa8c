"""Pure statistics of the privacy audit: membership-inference AUC and TPR, the one-run epsilon lower bound.

Functions of attack scores only (no training): ROC AUC by the Mann-Whitney statistic, TPR at
a low FPR, and the epsilon lower bound of Steinke, Nasr and Jagielski (2023), "Privacy
Auditing with One (1) Training Run" (NeurIPS 2023, arXiv:2305.08846). The procedure that
trains models and feeds them these scores is ``medalloc_core.forecast.audit``; docs/audit.md
says what the numbers mean.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import expit
from scipy.stats import binom, rankdata

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_GUESS_FRACTIONS",
    "OneRunAudit",
    "canary_guesses",
    "mia_auc",
    "one_run_audit",
    "one_run_epsilon_lower_bound",
    "one_run_p_value",
    "tpr_at_fpr",
]

# The bisection stops at this width; the lower end is returned (the conservative side).
_EPS_TOLERANCE = 1e-6
# expit(60) rounds to 1.0 in float64: beyond it every guess is "certainly right" and the
# p-value is 1, so no lower bound can exceed this.
_EPS_CEILING = 60.0


# ============================================================================ membership inference


def _scores(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size == 0:
        raise ValueError(f"{name} is empty; an attack needs at least one score on each side")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds non-finite scores (NaN or inf); score with a finite loss")
    return array


def mia_auc(member_scores: Sequence[float] | np.ndarray, nonmember_scores: Sequence[float] | np.ndarray) -> float:
    """ROC AUC of a membership attack: P[member score > non-member score] + P[tie] / 2.

    Computed exactly as the Mann-Whitney U statistic divided by ``n_members * n_nonmembers``
    (average ranks handle ties), so it needs no threshold grid and no interpolation.

    Parameters
    ----------
    member_scores, nonmember_scores
        Attack scores of examples that were / were not in the training set; higher means
        "more likely a member" (e.g. the negative loss).

    Returns
    -------
    float
        In [0, 1]: 0.5 is a coin flip, 1.0 separates members perfectly.
    """
    members = _scores(member_scores, "member_scores")
    nonmembers = _scores(nonmember_scores, "nonmember_scores")
    ranks = rankdata(np.concatenate([members, nonmembers]))  # 1-based, ties averaged
    n1, n0 = members.size, nonmembers.size
    u = ranks[:n1].sum() - n1 * (n1 + 1) / 2
    return float(u / (n1 * n0))


def tpr_at_fpr(
    member_scores: Sequence[float] | np.ndarray,
    nonmember_scores: Sequence[float] | np.ndarray,
    *,
    fpr: float,
) -> float:
    """Largest true-positive rate of a threshold attack whose false-positive rate is at most ``fpr``.

    The attack says "member" when the score is strictly above a threshold. With ``k =
    floor(fpr * n_nonmembers)`` false positives allowed, the best threshold sits at the
    ``(k + 1)``-th largest non-member score. No interpolation: the rate is achieved by a real
    threshold, which is what matters at low FPR (Carlini et al. 2022).

    Parameters
    ----------
    member_scores, nonmember_scores
        As for :func:`mia_auc`; higher means "more likely a member".
    fpr
        The false-positive rate allowed, in [0, 1].
    """
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr={fpr} must be in [0, 1]")
    members = _scores(member_scores, "member_scores")
    nonmembers = np.sort(_scores(nonmember_scores, "nonmember_scores"))[::-1]  # descending
    allowed = math.floor(fpr * nonmembers.size + 1e-9)  # 1e-9: 0.01 * 100 is 1, not 0.99999...
    if allowed >= nonmembers.size:
        return 1.0
    threshold = nonmembers[allowed]  # the (allowed+1)-th largest: must stay below the line
    return float(np.mean(members > threshold))


# ============================================================================ the one-run audit


def one_run_p_value(*, m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Upper bound on P[at least ``v`` of ``r`` guesses correct] for an (epsilon, delta)-DP algorithm.

    This is the approximate-DP main theorem of Steinke, Nasr and Jagielski (2023): ``m``
    canaries, each included independently with probability 1/2 (``S_i`` uniform on {-1, +1});
    the algorithm is (epsilon, delta)-DP with respect to adding or removing one canary; the
    auditor makes at most ``r`` guesses ``T_i`` in {-1, +1} from the algorithm's output
    (abstaining on the rest). Then, with ``W ~ Binomial(r, e^eps / (1 + e^eps))`` and
    ``f(v) = P[W >= v]``, the number ``V`` of correct guesses satisfies, for every v,

        P[V >= v] <= f(v) + 2 m delta * max_{i = 1..v} (f(v - i) - f(v)) / i.

    With ``delta = 0`` this is their pure-DP theorem, ``P[V >= v] <= f(v)``. The maximum runs
    over i <= v as in the paper's own p-value code (for i > v the ratio only shrinks).

    One refinement, valid and never looser: since ``P[V >= v] <= P[V >= u]`` for u <= v, the
    returned value is the minimum of the bound over u = 0..v. That makes the p-value
    non-increasing in v, which the usual "reject when p <= beta" argument needs.

    Parameters
    ----------
    m
        Number of canaries (all of them, guessed or not); only the delta term uses it.
    r
        Number of guesses (abstentions excluded), 0 <= r <= m.
    v
        Number of correct guesses, 0 <= v <= r.
    epsilon
        The epsilon of the null hypothesis, >= 0.
    delta
        The delta of the null hypothesis, in [0, 1].

    Returns
    -------
    float
        The p-value in [0, 1]: small values reject "(epsilon, delta)-DP".
    """
    _check_counts(m, r, v)
    if not epsilon >= 0 or not math.isfinite(epsilon):
        raise ValueError(f"epsilon={epsilon} must be finite and >= 0")
    if not 0.0 <= delta <= 1.0:
        raise ValueError(f"delta={delta} must be in [0, 1]")
    q = float(expit(epsilon))  # accuracy of epsilon-DP randomized response: e^eps / (1 + e^eps)
    u = np.arange(v + 1)
    tail = binom.sf(u - 1, r, q)  # tail[u] = P[W >= u]; tail[0] = 1
    if delta == 0.0:
        return float(min(tail[v], 1.0))  # a tail is already non-increasing in u
    # alpha[u] = max_{1 <= i <= u} (tail[u - i] - tail[u]) / i, all u at once: (v+1, v) grid.
    i = np.arange(1, v + 1)
    lower = u[:, None] - i[None, :]  # u - i
    gaps = np.where(lower >= 0, tail[np.clip(lower, 0, None)] - tail[:, None], -np.inf) / i[None, :]
    alpha = np.max(gaps, axis=1, initial=0.0)
    bound = tail + 2.0 * m * delta * alpha
    return float(min(bound.min(), 1.0))


def one_run_epsilon_lower_bound(*, m: int, r: int, v: int, beta: float = 0.05, delta: float = 0.0) -> float:
    """The largest epsilon that ``v`` correct guesses out of ``r`` reject at confidence ``1 - beta``.

    Bisection on epsilon for ``one_run_p_value(..., epsilon) <= beta``. The p-value grows
    with epsilon (checked by the tests over a grid of cases), so the set of rejected
    epsilons is an interval [0, bound). The lower end of the final bracket is returned, the
    conservative side.

    If the algorithm really is (eps*, delta)-DP, then ``P[bound > eps*] <= beta`` over the
    canary coins and the algorithm's randomness: a bound above the accountant's epsilon is
    evidence, at level beta, that the accountant is wrong.

    Parameters
    ----------
    m, r, v
        Canaries, guesses, correct guesses (see :func:`one_run_p_value`).
    beta
        Significance, in (0, 1) (default 0.05: 95 % confidence).
    delta
        The delta the bound is valid for (default 0: pure DP). Compare with an accountant's
        epsilon only at the accountant's delta.

    Returns
    -------
    float
        A lower bound >= 0; 0 when nothing can be rejected.
    """
    if not 0.0 < beta < 1.0:
        raise ValueError(f"beta={beta} must be in (0, 1)")

    def rejects(eps: float) -> bool:
        return one_run_p_value(m=m, r=r, v=v, epsilon=eps, delta=delta) <= beta

    if not rejects(0.0):
        return 0.0
    low, high = 0.0, 1.0
    while rejects(high):
        low, high = high, 2.0 * high
        if high >= _EPS_CEILING:
            high = _EPS_CEILING
            break
    while high - low > _EPS_TOLERANCE:
        middle = (low + high) / 2
        if rejects(middle):
            low = middle
        else:
            high = middle
    return low


def _check_counts(m: int, r: int, v: int) -> None:
    for name, value in (("m", m), ("r", r), ("v", v)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name}={value!r} must be an integer")
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m (correct <= guesses <= canaries), got v={v}, r={r}, m={m}")


def canary_guesses(scores: Sequence[float] | np.ndarray, *, k_plus: int, k_minus: int) -> np.ndarray:
    """The auditor's guesses: +1 ("in") for the ``k_plus`` highest scores, -1 for the ``k_minus`` lowest, 0 otherwise.

    Ties are broken by canary index (a stable sort), so the guesses are a deterministic
    function of the scores.
    """
    s = _scores(scores, "scores")
    if k_plus < 0 or k_minus < 0 or k_plus + k_minus > s.size:
        raise ValueError(f"k_plus={k_plus} and k_minus={k_minus} must be >= 0 and sum to at most {s.size} canaries")
    order = np.argsort(-s, kind="stable")  # highest score first
    guesses = np.zeros(s.size, dtype=np.int8)
    guesses[order[:k_plus]] = 1
    if k_minus:
        guesses[order[s.size - k_minus :]] = -1
    return guesses


# (k_plus, k_minus) as fractions of m. A few choices fixed in advance, each tested at
# beta / len(choices) (Bonferroni): choosing the best after seeing the scores would otherwise
# overstate the confidence.
DEFAULT_GUESS_FRACTIONS: tuple[tuple[float, float], ...] = (
    (0.05, 0.0),
    (0.1, 0.0),
    (0.2, 0.0),
    (0.05, 0.05),
    (0.1, 0.1),
    (0.25, 0.25),
)


@dataclass(frozen=True)
class OneRunAudit:
    """The outcome of the one-run audit on one trained model.

    ``epsilon_lower_bound`` is the best bound over the guess choices, each computed at
    ``beta / choices`` so that the reported bound holds at confidence ``1 - beta`` overall.
    """

    epsilon_lower_bound: float
    canaries: int  # m
    included: int  # canaries with S_i = +1
    k_plus: int  # the choice that gave the bound
    k_minus: int
    guesses: int  # r = k_plus + k_minus
    correct: int  # v
    beta: float
    delta: float
    choices: int  # how many (k_plus, k_minus) choices were tried (the Bonferroni factor)


def one_run_audit(
    scores: Sequence[float] | np.ndarray,
    included: Sequence[bool] | np.ndarray,
    *,
    beta: float = 0.05,
    delta: float,
    guess_fractions: Sequence[tuple[float, float]] = DEFAULT_GUESS_FRACTIONS,
) -> OneRunAudit:
    """Run the one-run audit on canary scores: guess, count, bound.

    Parameters
    ----------
    scores
        One attack score per canary, higher = "more likely included" (e.g. negative loss).
    included
        The canary coins: True where the canary was in the training set (S_i = +1).
    beta
        Overall significance (default 0.05); each of the ``len(guess_fractions)`` choices is
        tested at ``beta / len(guess_fractions)``.
    delta
        The delta of the (epsilon, delta) statement the bound is compared with; keyword-only
        because it decides what the bound means (use the ledger's delta).
    guess_fractions
        ``(k_plus / m, k_minus / m)`` choices fixed before looking at the scores.
    """
    s = _scores(scores, "scores")
    member = np.asarray(included, dtype=bool).ravel()
    if member.shape != s.shape:
        raise ValueError(f"{s.size} scores but {member.size} inclusion flags; give one of each per canary")
    if not guess_fractions:
        raise ValueError("guess_fractions is empty; give at least one (k_plus, k_minus) fraction pair")
    m = s.size
    truth = np.where(member, 1, -1)
    level = beta / len(guess_fractions)
    best: OneRunAudit | None = None
    for plus_fraction, minus_fraction in guess_fractions:
        if not (0 <= plus_fraction <= 1 and 0 <= minus_fraction <= 1 and 0 < plus_fraction + minus_fraction <= 1):
            raise ValueError(
                f"guess fractions ({plus_fraction}, {minus_fraction}) must be in [0, 1] with a sum in (0, 1]"
            )
        # A positive fraction guesses at least one canary, so small audits still guess.
        k_plus = max(1, round(plus_fraction * m)) if plus_fraction else 0
        k_minus = max(1, round(minus_fraction * m)) if minus_fraction else 0
        k_minus = min(k_minus, m - k_plus)
        guesses = canary_guesses(s, k_plus=k_plus, k_minus=k_minus)
        r = int(np.count_nonzero(guesses))
        v = int(np.count_nonzero(guesses == truth))
        bound = one_run_epsilon_lower_bound(m=m, r=r, v=v, beta=level, delta=delta)
        logger.debug("one-run audit: k+=%d k-=%d: %d of %d correct -> epsilon >= %.4f", k_plus, k_minus, v, r, bound)
        if best is None or bound > best.epsilon_lower_bound:
            best = OneRunAudit(bound, m, int(member.sum()), k_plus, k_minus, r, v, beta, delta, len(guess_fractions))
    assert best is not None
    return best
