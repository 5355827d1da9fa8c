"""Empirical privacy audit: a loss-threshold membership-inference test and the one-run canary audit.

Two parts. The statistics (top of the module) are pure functions of attack scores: ROC AUC by
the Mann-Whitney statistic, TPR at a low FPR, and the epsilon lower bound of Steinke, Nasr and
Jagielski (2023), "Privacy Auditing with One (1) Training Run" (NeurIPS 2023,
arXiv:2305.08846). The procedure (bottom) trains the project's forecaster through the real
``train_local`` path, once without DP and once with DP-SGD, on a small, deliberately
overfitting setting with canaries, and reports both against the privacy ledger's epsilon.

What the audit is: a *lower* bound on epsilon from one particular attack, valid at confidence
``1 - beta``. If the training code spent more privacy than the ledger says, a strong attack
can push the lower bound above the ledger's epsilon; a bound below the ledger's epsilon is a
passed soundness check, not a proof of privacy. See docs/audit.md.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import expit
from scipy.stats import binom, rankdata

from medalloc_core.contract import DATE, UNIT, Frequency, UnitRecords
from medalloc_core.features import WindowSet, WindowSpec, prepare_hospital
from medalloc_core.models import ForecasterConfig, build_model, pinball_loss_per_sample
from medalloc_core.privacy.ledger import PrivacyLedger
from medalloc_core.synthetic import RegionConfig, generate_region
from medalloc_core.training import DPConfig, TrainConfig, predict, train_local

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_AUDIT_DP",
    "DEFAULT_GUESS_FRACTIONS",
    "FULL_SETTING",
    "LEDGER_NAME",
    "LOW_FPR",
    "QUICK_SETTING",
    "AuditData",
    "AuditReport",
    "AuditRun",
    "AuditSetting",
    "OneRunAudit",
    "audit_run",
    "build_audit_data",
    "canary_guesses",
    "mia_auc",
    "one_run_audit",
    "one_run_epsilon_lower_bound",
    "one_run_p_value",
    "run_audit",
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
    (0.05, 0.0), (0.1, 0.0), (0.2, 0.0), (0.05, 0.05), (0.1, 0.1), (0.25, 0.25),
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
        k_plus, k_minus = round(plus_fraction * m), round(minus_fraction * m)
        if k_plus + k_minus == 0 or k_plus + k_minus > m:
            raise ValueError(f"guess fractions ({plus_fraction}, {minus_fraction}) give {k_plus} + {k_minus} guesses of {m} canaries")
        guesses = canary_guesses(s, k_plus=k_plus, k_minus=k_minus)
        r = int(np.count_nonzero(guesses))
        v = int(np.count_nonzero(guesses == truth))
        bound = one_run_epsilon_lower_bound(m=m, r=r, v=v, beta=level, delta=delta)
        logger.debug("one-run audit: k+=%d k-=%d: %d of %d correct -> epsilon >= %.4f", k_plus, k_minus, v, r, bound)
        if best is None or bound > best.epsilon_lower_bound:
            best = OneRunAudit(bound, m, int(member.sum()), k_plus, k_minus, r, v, beta, delta, len(guess_fractions))
    assert best is not None
    return best


# ============================================================================ the audit procedure

# The project's default DP setting: noise multiplier 1.0 is the federation's default
# dp-noise-multiplier (server/config.py); clipping norm, delta and accountant are DPConfig's
# defaults (1.0, 1e-5, PRV).
DEFAULT_AUDIT_DP = DPConfig(noise_multiplier=1.0)

# The ledger only measures here: the audit trains on synthetic data, once, and reads back the
# epsilon of exactly the steps it took. A budget this high never refuses.
_AUDIT_LEDGER_BUDGET = 1e9
# The DP run's fresh ledger, inside the audit's working directory.
LEDGER_NAME = "audit-ledger.json"
# FPR at which the TPR of the loss-threshold attack is reported ("TPR at low FPR").
LOW_FPR = 0.05


@dataclass(frozen=True)
class AuditSetting:
    """The small, deliberately overfitting setting the audit trains in (all of it seeded).

    One synthetic hospital's windows; a pool of real windows of which a random half is
    trained on (the natural membership test); ``canaries`` further windows whose targets are
    replaced by random out-of-distribution levels, each included with probability 1/2 (the
    one-run audit); an MLP wide enough to memorise them, trained for many epochs.

    Parameters
    ----------
    seed
        Seeds the region, the coins, the canary targets, the model and training (default 0).
    days
        Days of the synthetic hospital's records (default 730).
    history, horizon
        Window length L and forecast horizon H in days (default 14 and 7).
    real_windows
        Size of the pool of real training-period windows; each is trained on with
        probability 1/2 (default 600).
    canaries
        m, the number of canaries (default 1500). More canaries allow a larger provable
        bound: with every guess right, r guesses prove at most logit(beta ** (1 / r)).
    canary_level
        Canary targets are ``+-canary_level`` in the scaled space, the sign random per
        (canary, target); real scaled targets rarely leave [-3, 3] (default 6.0).
    hidden, layers
        MLP width and depth (default 256, 2): far more parameters than windows.
    epochs, batch_size, lr
        Local training (default 200 epochs of Adam, batch 64, lr 3e-3): long enough for
        the non-private model to memorise nearly every included canary.
    beta
        Significance of the one-run bound (default 0.05: 95 % confidence).
    """

    seed: int = 0
    days: int = 730
    history: int = 14
    horizon: int = 7
    real_windows: int = 600
    canaries: int = 1500
    canary_level: float = 6.0
    hidden: int = 256
    layers: int = 2
    epochs: int = 200
    batch_size: int = 64
    lr: float = 3e-3
    beta: float = 0.05

    def __post_init__(self) -> None:
        for name in ("days", "history", "horizon", "real_windows", "canaries", "hidden", "layers", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"AuditSetting.{name}={getattr(self, name)} must be >= 1")
        if self.canary_level <= 0 or self.lr <= 0 or not 0 < self.beta < 1:
            raise ValueError("AuditSetting needs canary_level > 0, lr > 0 and 0 < beta < 1")


@dataclass(frozen=True)
class AuditData:
    """The audit's fixed data: real windows and canaries, each with its inclusion coin."""

    real_X: torch.Tensor  # (R, L, F)
    real_y: torch.Tensor  # (R, H, T)
    real_in: np.ndarray  # (R,) bool: trained on
    canary_X: torch.Tensor  # (m, L, F)
    canary_y: torch.Tensor  # (m, H, T), +-canary_level
    canary_in: np.ndarray  # (m,) bool: S_i = +1

    def train_set(self) -> WindowSet:
        """The training windows: the included real windows and the included canaries."""
        X = torch.cat([self.real_X[self.real_in], self.canary_X[self.canary_in]])
        y = torch.cat([self.real_y[self.real_in], self.canary_y[self.canary_in]])
        n = X.shape[0]
        return WindowSet(X, y, np.array(["audit"] * n, dtype=object), np.zeros(n, dtype="datetime64[ns]"))

    def fingerprint(self) -> str:
        """SHA-256 of the training tensors: the ledger's key for this data."""
        train = self.train_set()
        digest = hashlib.sha256()
        for tensor in (train.X, train.y):
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.contiguous().numpy().tobytes())
        return "sha256:" + digest.hexdigest()


def build_audit_data(setting: AuditSetting) -> AuditData:
    """One synthetic hospital's windows turned into the audit's real windows and canaries.

    Real windows come from the training period; canaries take the inputs of windows *not*
    in the real pool (other training-period windows, then validation and test windows) with
    their targets replaced, so no canary input is also a real training input.
    """
    region = generate_region(RegionConfig(hospitals=1, days=setting.days, seed=setting.seed))
    frame = region.hospitals[0].daily.sort_values([UNIT, DATE], ignore_index=True)
    records = UnitRecords(frame=frame, frequency=Frequency.DAILY, source=Path("synthetic-audit"), shape="daily")
    dataset = prepare_hospital(records, WindowSpec(history=setting.history, horizon=setting.horizon))
    rng = np.random.default_rng(setting.seed)
    order = rng.permutation(len(dataset.train))
    if len(order) < setting.real_windows:
        raise ValueError(
            f"the synthetic hospital has {len(order)} training windows, fewer than real_windows="
            f"{setting.real_windows}; raise days or lower real_windows"
        )
    real_idx, spare_idx = order[: setting.real_windows], order[setting.real_windows :]
    spare_X = torch.cat([dataset.train.X[torch.from_numpy(spare_idx)], dataset.val.X, dataset.test.X])
    if len(spare_X) < setting.canaries:
        raise ValueError(
            f"only {len(spare_X)} windows are left for canaries, fewer than canaries={setting.canaries}; "
            "raise days or lower canaries or real_windows"
        )
    canary_X = spare_X[torch.from_numpy(rng.permutation(len(spare_X))[: setting.canaries])]
    T = dataset.train.y.shape[2]
    signs = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=(setting.canaries, 1, T))
    canary_y = torch.from_numpy(np.broadcast_to(signs * setting.canary_level, (setting.canaries, setting.horizon, T)).copy())
    return AuditData(
        real_X=dataset.train.X[torch.from_numpy(real_idx)],
        real_y=dataset.train.y[torch.from_numpy(real_idx)],
        real_in=rng.random(setting.real_windows) < 0.5,
        canary_X=canary_X,
        canary_y=canary_y,
        canary_in=rng.random(setting.canaries) < 0.5,
    )


@dataclass(frozen=True)
class AuditRun:
    """One trained model, attacked."""

    label: str
    private: bool
    noise_multiplier: float  # 0 without DP
    max_grad_norm: float | None  # None: no clipping
    sample_rate: float | None  # Poisson rate under DP; None without DP
    steps: int
    delta: float  # the delta the one-run bound is computed at (the ledger's)
    ledger_epsilon: float | None  # what the ledger recorded for exactly these steps; None without DP
    canary_auc: float  # loss-threshold MIA, included vs excluded canaries
    canary_tpr_at_low_fpr: float  # at FPR <= LOW_FPR
    real_auc: float  # loss-threshold MIA on real windows, trained vs held out
    member_canary_loss: float  # mean pinball loss of included canaries
    nonmember_canary_loss: float  # ... and of excluded ones
    train_loss: float
    one_run: OneRunAudit
    seconds: float
    canary_losses: tuple[float, ...]  # per canary, in canary order (for the CSV and the figure)

    @property
    def epsilon_lower_bound(self) -> float:
        """The one-run audit's lower bound at confidence 1 - beta."""
        return self.one_run.epsilon_lower_bound


@dataclass(frozen=True)
class AuditReport:
    """Both runs and the two checks the audit exists for."""

    setting: AuditSetting
    no_dp: AuditRun
    dp: AuditRun
    canary_included: tuple[bool, ...]  # the coins S_i = +1, in canary order

    @property
    def sound(self) -> bool:
        """The DP run's empirical lower bound does not exceed the ledger's epsilon."""
        assert self.dp.ledger_epsilon is not None
        return self.dp.epsilon_lower_bound <= self.dp.ledger_epsilon

    @property
    def powerful(self) -> bool:
        """The attack finds the non-private run clearly leaky: bound >= 1 and above the DP run's."""
        return self.no_dp.epsilon_lower_bound >= 1.0 and self.no_dp.epsilon_lower_bound > self.dp.epsilon_lower_bound

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (what ``medalloc audit --out`` writes)."""
        runs = []
        for run in (self.no_dp, self.dp):
            fields = asdict(run)
            del fields["canary_losses"]  # m numbers: written to canaries.csv instead
            runs.append(fields)
        return {
            "setting": asdict(self.setting),
            "runs": runs,
            "canaries_included": int(sum(self.canary_included)),
            "sound": self.sound,
            "powerful": self.powerful,
        }


@torch.no_grad()
def _losses(model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    quantiles = tuple(model.config.quantiles)  # type: ignore[union-attr]
    pred = torch.from_numpy(predict(model, X))
    return pinball_loss_per_sample(pred, y, quantiles).numpy().astype(np.float64)


def audit_run(
    data: AuditData,
    setting: AuditSetting,
    *,
    dp: DPConfig | None,
    ledger_path: Path | None = None,
) -> AuditRun:
    """Train one model on ``data`` through ``train_local`` and attack it.

    Parameters
    ----------
    data, setting
        From :func:`build_audit_data` and the setting that built it.
    dp
        DP-SGD settings, or ``None`` for the non-private run (no clipping, no noise, the
        plain training path).
    ledger_path
        With ``dp``: where to create a *fresh* privacy ledger; the run spends through it and
        its epsilon is the one the audit is checked against. Must not exist yet (an older
        ledger's history would be composed in).
    """
    if (dp is None) != (ledger_path is None):
        raise ValueError("a DP run needs a ledger_path for its fresh ledger, and a non-private run none")
    train = data.train_set()
    model = build_model(
        ForecasterConfig(
            model="mlp", history=setting.history, horizon=setting.horizon,
            n_features=train.X.shape[2], n_targets=train.y.shape[2],
            hidden=setting.hidden, layers=setting.layers,
        ),
        seed=setting.seed,
    )
    config = TrainConfig(epochs=setting.epochs, batch_size=setting.batch_size, lr=setting.lr, seed=setting.seed)
    ledger_epsilon: float | None = None
    delta = dp.delta if dp is not None else DEFAULT_AUDIT_DP.delta
    if dp is None:
        result = train_local(model, train, config=config)
    else:
        assert ledger_path is not None
        if ledger_path.exists():
            raise FileExistsError(f"{ledger_path} already exists; the audit needs a fresh ledger so its epsilon covers this run only")
        ledger = PrivacyLedger.open(ledger_path, epsilon_budget=_AUDIT_LEDGER_BUDGET, delta=dp.delta, accountant=dp.accountant)  # type: ignore[arg-type]
        result = train_local(model, train, config=config, dp=dp, ledger=ledger, fingerprint=data.fingerprint(), run_id="privacy-audit")
        history = ledger.history()
        # The ledger must hold exactly what was trained: one spend, these steps, this noise.
        assert history == [(result.noise_multiplier, result.sample_rate, result.steps)], f"ledger {history} vs run {result}"
        ledger_epsilon = ledger.epsilon_spent()
    canary_loss = _losses(model, data.canary_X, data.canary_y)
    real_loss = _losses(model, data.real_X, data.real_y)
    scores = -canary_loss  # low loss = memorised = "in"
    one_run = one_run_audit(scores, data.canary_in, beta=setting.beta, delta=delta)
    label = "no DP" if dp is None else f"DP σ={result.noise_multiplier:g} C={dp.max_grad_norm:g}"
    run = AuditRun(
        label=label,
        private=dp is not None,
        noise_multiplier=float(result.noise_multiplier or 0.0),
        max_grad_norm=None if dp is None else dp.max_grad_norm,
        sample_rate=result.sample_rate,
        steps=result.steps,
        delta=delta,
        ledger_epsilon=ledger_epsilon,
        canary_auc=mia_auc(scores[data.canary_in], scores[~data.canary_in]),
        canary_tpr_at_low_fpr=tpr_at_fpr(scores[data.canary_in], scores[~data.canary_in], fpr=LOW_FPR),
        real_auc=mia_auc(-real_loss[data.real_in], -real_loss[~data.real_in]),
        member_canary_loss=float(canary_loss[data.canary_in].mean()),
        nonmember_canary_loss=float(canary_loss[~data.canary_in].mean()),
        train_loss=result.loss,
        one_run=one_run,
        seconds=result.seconds,
        canary_losses=tuple(canary_loss.tolist()),
    )
    logger.info(
        "audit %s: canary AUC %.3f, one-run epsilon >= %.3f (ledger epsilon %s)",
        label, run.canary_auc, run.epsilon_lower_bound, ledger_epsilon,
    )
    return run


def run_audit(
    setting: AuditSetting,
    *,
    workdir: Path,
    dp: DPConfig = DEFAULT_AUDIT_DP,
    progress: Callable[[str], None] | None = None,
) -> AuditReport:
    """The whole audit: build the data, train without and with DP, attack both.

    Parameters
    ----------
    setting
        The overfitting setting (``QUICK_SETTING`` for tests, ``FULL_SETTING`` by default on
        the command line).
    workdir
        An existing directory; the DP run's fresh ledger is written to
        ``workdir / "audit-ledger.json"`` (which must not exist).
    dp
        The DP setting audited (default: the project's default, ``DEFAULT_AUDIT_DP``).
    progress
        Called with a short description before each stage (for a CLI's progress bar).
    """
    say = progress or (lambda _stage: None)
    threads = torch.get_num_threads()
    # One thread: the same numbers on every machine (a parallel matmul may sum in another
    # order), and faster for a model this small than threads contending for shared cores.
    torch.set_num_threads(1)
    try:
        say("building canaries")
        data = build_audit_data(setting)
        say("training without DP")
        no_dp = audit_run(data, setting, dp=None)
        say("training with DP-SGD")
        private = audit_run(data, setting, dp=dp, ledger_path=workdir / LEDGER_NAME)
    finally:
        torch.set_num_threads(threads)
    return AuditReport(setting, no_dp, private, tuple(bool(b) for b in data.canary_in))


# The command's default: ~1 minute on a laptop core.
FULL_SETTING = AuditSetting()
# `medalloc audit --quick` and the slow test: ~10 s on one core, the same conclusions with a
# smaller provable range (fewer canaries).
QUICK_SETTING = AuditSetting(days=365, real_windows=300, canaries=600, epochs=100)
