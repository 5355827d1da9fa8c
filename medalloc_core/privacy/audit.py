"""Empirical privacy audit of DP training: canaries, a membership-inference test and the one-run bound.

Trains the project's forecaster through the real ``train_local`` path on a small,
deliberately overfitting setting with canaries, once without DP and once with DP-SGD, attacks
both with a loss-threshold membership-inference test and the one-run audit of Steinke, Nasr
and Jagielski (2023), and compares the DP run's empirical lower bound with the epsilon its
privacy ledger recorded for exactly the steps taken.

What it shows: a *lower* bound on epsilon from one particular attack, valid at confidence
``1 - beta``. A bound above the ledger's epsilon would be evidence that training spends more
privacy than accounted (a bug); a bound below it is a passed soundness check, not a proof of
privacy. The statistics live in ``audit_stats``; see docs/audit.md.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medalloc_core.contract import DATE, UNIT, Frequency, UnitRecords
from medalloc_core.forecast.features import WindowSet, WindowSpec, prepare_hospital
from medalloc_core.forecast.models import Forecaster, ForecasterConfig, build_model, pinball_loss_per_sample
from medalloc_core.forecast.training import DPConfig, TrainConfig, predict, train_local
from medalloc_core.privacy.audit_stats import OneRunAudit, mia_auc, one_run_audit, tpr_at_fpr
from medalloc_core.privacy.ledger import PrivacyLedger
from medalloc_core.synthetic import RegionConfig, generate_region

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_AUDIT_DP",
    "FULL_SETTING",
    "LEDGER_NAME",
    "QUICK_SETTING",
    "AuditData",
    "AuditReport",
    "AuditRun",
    "AuditSetting",
    "audit_run",
    "build_audit_data",
    "run_audit",
]

# The project's default DP setting: noise multiplier 1.0 is the federation's default
# dp-noise-multiplier (server/config.py); clipping norm, delta and accountant are DPConfig's
# defaults (1.0, 1e-5, PRV).
DEFAULT_AUDIT_DP = DPConfig(noise_multiplier=1.0)

# The ledger only measures here: the audit trains on synthetic data, once, and reads back the
# epsilon of exactly the steps it took. A budget this high never refuses.
_AUDIT_LEDGER_BUDGET = 1e9
# The DP run's fresh ledger, inside the audit's working directory.
LEDGER_NAME = "audit-ledger.json"


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
    low_fpr
        The false-positive rate at which the attack's TPR is reported (default 0.05).
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
    low_fpr: float = 0.05

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f"AuditSetting.seed={self.seed} must be >= 0 (numpy seeds are non-negative)")
        for name in (
            "days",
            "history",
            "horizon",
            "real_windows",
            "canaries",
            "hidden",
            "layers",
            "epochs",
            "batch_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"AuditSetting.{name}={getattr(self, name)} must be >= 1")
        if self.canary_level <= 0 or self.lr <= 0 or not 0 < self.beta < 1 or not 0 <= self.low_fpr <= 1:
            raise ValueError("AuditSetting needs canary_level > 0, lr > 0, 0 < beta < 1 and 0 <= low_fpr <= 1")


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
    canary_y = torch.from_numpy(
        np.broadcast_to(signs * setting.canary_level, (setting.canaries, setting.horizon, T)).copy()
    )
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
    canary_tpr_at_low_fpr: float  # at FPR <= setting.low_fpr
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
def _losses(model: Forecaster, X: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    quantiles = tuple(model.config.quantiles)
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
            model="mlp",
            history=setting.history,
            horizon=setting.horizon,
            n_features=train.X.shape[2],
            n_targets=train.y.shape[2],
            hidden=setting.hidden,
            layers=setting.layers,
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
            raise FileExistsError(
                f"{ledger_path} already exists; the audit needs a fresh ledger so its epsilon covers this run only"
            )
        ledger = PrivacyLedger.open(
            ledger_path, epsilon_budget=_AUDIT_LEDGER_BUDGET, delta=dp.delta, accountant=dp.accountant
        )
        result = train_local(
            model, train, config=config, dp=dp, ledger=ledger, fingerprint=data.fingerprint(), run_id="privacy-audit"
        )
        history = ledger.history()
        # The ledger must hold exactly what was trained: one spend, these steps, this noise.
        # Otherwise comparing with its epsilon would audit something else.
        if history != [(result.noise_multiplier, result.sample_rate, result.steps)]:
            raise RuntimeError(
                f"the ledger recorded {history}, but training took {result.steps} steps at sigma="
                f"{result.noise_multiplier} and q={result.sample_rate}; the audit cannot compare them"
            )
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
        canary_tpr_at_low_fpr=tpr_at_fpr(scores[data.canary_in], scores[~data.canary_in], fpr=setting.low_fpr),
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
        label,
        run.canary_auc,
        run.epsilon_lower_bound,
        ledger_epsilon,
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
    # One thread: the core count cannot change the order of a matmul's sums (same seed, same
    # numbers), and a model this small trains faster than with threads contending for cores.
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
