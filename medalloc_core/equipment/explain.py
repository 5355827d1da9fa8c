"""Why a device's risk is what it is: per-factor attributions of the risk model, computed on the node.

Occlusion over named factor groups: each numeric feature is its own factor; the device-type
and manufacturer one-hot blocks are one factor each. A factor's attribution for a device is
its risk minus the risk with that factor set to the fleet's average (the baseline), so a
positive number reads "this raises the risk above a device that is average in it". The model
is a small MLP and the factors are a few dozen, so the exact occlusion is cheap; nothing
leaves the node (the attributions are a local output, like the plan).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from torch import nn

from medalloc_core.equipment.features import NUMERIC_FEATURES, SnapshotSpec
from medalloc_core.equipment.model import predict_proba

TYPE_FACTOR = "device_type"
MAKER_FACTOR = "manufacturer"


def factor_columns(spec: SnapshotSpec) -> dict[str, np.ndarray]:
    """Feature-matrix columns of every factor, in the order of ``feature_matrix``."""
    n = len(NUMERIC_FEATURES)
    groups = {name: np.array([i]) for i, name in enumerate(NUMERIC_FEATURES)}
    groups[TYPE_FACTOR] = np.arange(n, n + 2 * spec.type_buckets)
    groups[MAKER_FACTOR] = np.arange(n + 2 * spec.type_buckets, spec.n_features)
    return groups


@dataclass(frozen=True)
class RiskAttributions:
    """Risk per device and each factor's contribution to it (``values`` is devices x factors)."""

    risk: np.ndarray  # (N,)
    baseline_risk: np.ndarray  # (N, G): the risk with that factor at the fleet's average
    factors: tuple[str, ...]

    @property
    def values(self) -> np.ndarray:
        """Risk minus the risk with the factor at its average: > 0 raises this device's risk."""
        return self.risk[:, None] - self.baseline_risk

    def top(self, device_ids: np.ndarray, k: int = 3) -> pd.DataFrame:
        """The ``k`` factors that raise each device's risk most: ``device_id, risk, factor_i, raises_by_i``."""
        order = np.argsort(-self.values, axis=1)[:, :k]
        frame = pd.DataFrame({"device_id": device_ids, "risk": self.risk})
        for i in range(order.shape[1]):
            frame[f"factor_{i + 1}"] = np.asarray(self.factors, dtype=object)[order[:, i]]
            frame[f"raises_by_{i + 1}"] = np.take_along_axis(self.values, order[:, i : i + 1], axis=1)[:, 0]
        return frame


def risk_attributions(
    model: nn.Module, X: np.ndarray, spec: SnapshotSpec, *, baseline: np.ndarray | None = None
) -> RiskAttributions:
    """Occlusion attributions of ``model``'s risk for the snapshots ``X`` (devices x features).

    ``baseline`` (one feature vector) defaults to the mean over ``X``: the fleet's average device.
    """
    X = np.asarray(X, dtype=np.float32)
    base = X.mean(axis=0) if baseline is None else np.asarray(baseline, dtype=np.float32)
    groups = factor_columns(spec)
    risk = predict_proba(model, X).astype(float)
    occluded = np.empty((len(X), len(groups)))
    for g, columns in enumerate(groups.values()):
        masked = X.copy()
        masked[:, columns] = base[columns]
        occluded[:, g] = predict_proba(model, masked)
    return RiskAttributions(risk, occluded, tuple(groups))


def deletion_curve(
    model: nn.Module, X: np.ndarray, spec: SnapshotSpec, order: np.ndarray, *, baseline: np.ndarray | None = None
) -> np.ndarray:
    """Mean |risk change| as the factors in ``order`` (devices x k, factor indices) are set to the baseline in turn.

    The faithfulness check: deleting the top-attributed factors must move the risk more than
    deleting as many random ones (``simulations`` and the tests compare the two curves).
    """
    X = np.asarray(X, dtype=np.float32)
    base = X.mean(axis=0) if baseline is None else np.asarray(baseline, dtype=np.float32)
    columns = list(factor_columns(spec).values())
    risk = predict_proba(model, X)
    masked = X.copy()
    rows = np.arange(len(X))
    curve = []
    for step in range(order.shape[1]):
        for row, g in zip(rows, order[:, step], strict=True):
            masked[row, columns[g]] = base[columns[g]]
        curve.append(float(np.mean(np.abs(predict_proba(model, masked) - risk))))
    return np.array(curve)
