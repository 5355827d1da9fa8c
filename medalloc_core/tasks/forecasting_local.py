"""The hospital-side work of a round, free of Flower: load and window the data, train, evaluate in original units.

The ClientApp calls these; the simulation runner calls the same functions for its local-only
and centralized comparisons, so every method is scored by one piece of code.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from medalloc_core.contract import Frequency, UnitRecords
from medalloc_core.features import HospitalDataset, WindowSpec, prepare_hospital
from medalloc_core.metrics import mae, wape
from medalloc_core.models import Forecaster
from medalloc_core.training import evaluate, predict
from medalloc_core.validation import load_unit_records

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------ data
@dataclass(frozen=True)
class LocalData:
    """One hospital's validated records and windows. Stays on the node."""

    records: UnitRecords
    dataset: HospitalDataset


def load_local_data(path: Path, spec: WindowSpec) -> LocalData:
    """Load, validate and window a hospital file (cached per process while the file is unchanged).

    Raises ``DataContractError`` for a file that breaks the contract and ``ValueError`` when
    its series are too short for the spec.
    """
    stat = path.stat()
    return _load_cached(path.resolve(), stat.st_mtime_ns, stat.st_size, spec)


@lru_cache(maxsize=8)
def _load_cached(path: Path, mtime_ns: int, size: int, spec: WindowSpec) -> LocalData:
    # Keyed by the file's identity *and* its modification time and size, so an edited file is
    # re-validated; one node reads one file, so a handful of entries covers a simulation actor
    # serving several virtual nodes. Flower re-creates the ClientApp per message, so without
    # this every round would re-read and re-validate the whole file.
    records = load_unit_records(path)
    if records.frequency is not Frequency.DAILY:
        raise ValueError(f"{path}: the federation's model is daily; this file is {records.frequency.value}")
    return LocalData(records, prepare_hospital(records, spec))


# ------------------------------------------------------------------ evaluation
def test_forecasts(model: Forecaster, dataset: HospitalDataset) -> tuple[np.ndarray, np.ndarray]:
    """Actuals ``(N, H, T)`` and quantile forecasts ``(N, H, T, Q)`` on the test split, in patients/beds."""
    test = dataset.test
    units = list(test.units)
    pred = predict(model, test.X)  # (N, H, T, Q) scaled
    y = dataset.scaler.inverse_transform(test.y.numpy(), units)
    q = dataset.scaler.inverse_transform(pred, units)
    return y, q


def evaluate_local(model: Forecaster, dataset: HospitalDataset) -> dict[str, float]:
    """Test-split metrics a node may share: scaled pinball loss, and MAE and WAPE of the median in original units."""
    if len(dataset.test) == 0:
        raise ValueError("the test split has no windows")
    loss = evaluate(model, dataset.test)["pinball"]
    y, q = test_forecasts(model, dataset)
    median = q[..., _median_index(model)]
    w = float(wape(y, median))
    return {
        "loss": float(loss),
        "mae": float(mae(y, median)),
        "wape": w if math.isfinite(w) else 0.0,
        "n": float(len(dataset.test)),
    }


def _median_index(model: Forecaster) -> int:
    levels: tuple[float, ...] = tuple(model.config.quantiles)
    return min(range(len(levels)), key=lambda i: abs(levels[i] - 0.5))
