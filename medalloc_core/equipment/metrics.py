"""Scores of a failure-risk model: ranking (AUROC), probability accuracy (Brier, log loss) and calibration (ECE).

Pure numpy on ``(y, p)`` arrays: ``y`` in {0, 1} (failed within the horizon), ``p`` the
predicted probability. Scores that need both classes return NaN when one is absent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

CALIBRATION_BINS = 10
_EPS = 1e-7


def _arrays(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y, p = np.asarray(y, dtype=float).ravel(), np.asarray(p, dtype=float).ravel()
    if y.shape != p.shape:
        raise ValueError(f"y and p differ in length: {len(y)} vs {len(p)}")
    return y, p


def auroc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve: P(a failing device-day ranks above a non-failing one), ties counting half."""
    y, p = _arrays(y, p)
    pos = y > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(p)  # average ranks: ties count half (Mann-Whitney U)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def brier(y: np.ndarray, p: np.ndarray) -> float:
    """Mean squared error of the probability: 0 is perfect; predicting the base rate b scores b(1 - b)."""
    y, p = _arrays(y, p)
    return float(np.mean((p - y) ** 2)) if len(y) else float("nan")


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean negative log-likelihood (natural log), probabilities clipped to [1e-7, 1 - 1e-7]."""
    y, p = _arrays(y, p)
    p = np.clip(p, _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p))) if len(y) else float("nan")


@dataclass(frozen=True)
class Reliability:
    """Equal-mass bins of predicted probability: mean prediction, observed frequency and count per bin."""

    predicted: np.ndarray
    observed: np.ndarray
    count: np.ndarray

    @property
    def ece(self) -> float:
        """Expected calibration error: count-weighted mean |observed - predicted| over the bins."""
        total = self.count.sum()
        return float(np.sum(self.count * np.abs(self.observed - self.predicted)) / total) if total else float("nan")


def reliability(y: np.ndarray, p: np.ndarray, bins: int = CALIBRATION_BINS) -> Reliability:
    """Reliability-diagram data with equal-mass bins (quantiles of p): rare events need them, equal-width bins
    would put almost every device-day in the first bin."""
    y, p = _arrays(y, p)
    if len(y) == 0:
        return Reliability(np.zeros(0), np.zeros(0), np.zeros(0))
    order = np.argsort(p, kind="stable")
    parts = np.array_split(order, min(bins, len(order)))
    return Reliability(
        predicted=np.array([p[i].mean() for i in parts]),
        observed=np.array([y[i].mean() for i in parts]),
        count=np.array([len(i) for i in parts], dtype=float),
    )


def calibration_error(y: np.ndarray, p: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """ECE over ``bins`` equal-mass bins (see :func:`reliability`)."""
    return reliability(y, p, bins).ece


def risk_scores(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Every score at once: auroc, brier, log_loss, ece, and the base rate and mean prediction."""
    y, p = _arrays(y, p)
    return {
        "auroc": auroc(y, p),
        "brier": brier(y, p),
        "log_loss": log_loss(y, p),
        "ece": calibration_error(y, p),
        "base_rate": float(y.mean()) if len(y) else float("nan"),
        "mean_prediction": float(p.mean()) if len(p) else float("nan"),
        "n": float(len(y)),
    }
