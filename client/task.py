"""The hospital-side work of a round, free of Flower: load and window the data, train, evaluate in original units.

The ClientApp calls these; the simulation runner calls the same functions for its local-only
and centralized comparisons, so every method is scored by one piece of code.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medalloc_core.contract import Frequency, UnitRecords
from medalloc_core.features import HospitalDataset, WindowSpec, federation_window_spec, prepare_hospital
from medalloc_core.metrics import mae, wape
from medalloc_core.models import ForecasterConfig, build_model
from medalloc_core.training import evaluate, predict
from medalloc_core.validation import load_unit_records

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------ the shared model's shape
window_spec = federation_window_spec  # the name the ServerApp, runner and benchmarks use


def model_config(spec: WindowSpec, *, model: str, hidden: int) -> ForecasterConfig:
    """The ForecasterConfig matching ``spec`` on daily data (F follows from the spec, not from any hospital)."""
    assert spec.history is not None and spec.horizon is not None
    return ForecasterConfig(
        model=model,
        history=spec.history,
        horizon=spec.horizon,
        n_features=len(spec.feature_names(Frequency.DAILY)),
        n_targets=len(spec.targets),
        hidden=hidden,
    )


def spec_to_json(spec: WindowSpec) -> str:
    """The parts of a WindowSpec the federation varies, as JSON (sent to nodes each round)."""
    return json.dumps(
        {
            "history": spec.history,
            "horizon": spec.horizon,
            "targets": list(spec.targets),
            "val_periods": spec.val_periods,
            "test_periods": spec.test_periods,
        },
        sort_keys=True,
    )


def spec_from_json(text: str) -> WindowSpec:
    """Inverse of ``spec_to_json``; raises ``ValueError`` on anything else."""
    raw = json.loads(text)
    if not isinstance(raw, dict) or set(raw) != {"history", "horizon", "targets", "val_periods", "test_periods"}:
        raise ValueError(f"window spec must have exactly history, horizon, targets, val_periods, test_periods; got {raw!r}")
    return WindowSpec(
        history=int(raw["history"]),
        horizon=int(raw["horizon"]),
        targets=tuple(str(t) for t in raw["targets"]),
        val_periods=int(raw["val_periods"]),
        test_periods=int(raw["test_periods"]),
    )


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


# ------------------------------------------------------------------ model <-> arrays
def state_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's parameters as named float32 numpy arrays (the form sent over the wire)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def load_arrays(model: nn.Module, arrays: Mapping[str, np.ndarray]) -> None:
    """Load named arrays into ``model`` strictly: every key and shape must match (``ValueError`` otherwise)."""
    own = model.state_dict()
    if set(own) != set(arrays):
        raise ValueError(f"parameter names differ: missing {sorted(set(own) - set(arrays))[:3]}, unexpected {sorted(set(arrays) - set(own))[:3]}")
    for key, tensor in own.items():
        if tuple(arrays[key].shape) != tuple(tensor.shape):
            raise ValueError(f"parameter '{key}' has shape {tuple(arrays[key].shape)}, the model expects {tuple(tensor.shape)}")
    model.load_state_dict({k: torch.from_numpy(np.asarray(v, dtype=np.float32).copy()) for k, v in arrays.items()})


def build_from_arrays(config: ForecasterConfig, arrays: Mapping[str, np.ndarray]) -> nn.Module:
    """A forecaster of ``config`` holding ``arrays``."""
    model = build_model(config)
    load_arrays(model, arrays)
    return model


# ------------------------------------------------------------------ evaluation
def test_forecasts(model: nn.Module, dataset: HospitalDataset) -> tuple[np.ndarray, np.ndarray]:
    """Actuals ``(N, H, T)`` and quantile forecasts ``(N, H, T, Q)`` on the test split, in patients/beds."""
    test = dataset.test
    units = list(test.units)
    pred = predict(model, test.X)  # (N, H, T, Q) scaled
    y = dataset.scaler.inverse_transform(test.y.numpy(), units)
    q = dataset.scaler.inverse_transform(pred, units)
    return y, q


def evaluate_local(model: nn.Module, dataset: HospitalDataset) -> dict[str, float]:
    """Test-split metrics a node may share: scaled pinball loss, and MAE and WAPE of the median in original units."""
    if len(dataset.test) == 0:
        raise ValueError("the test split has no windows")
    loss = evaluate(model, dataset.test)["pinball"]
    y, q = test_forecasts(model, dataset)
    median = q[..., _median_index(model)]
    w = float(wape(y, median))
    return {"loss": float(loss), "mae": float(mae(y, median)), "wape": w if math.isfinite(w) else 0.0, "n": float(len(dataset.test))}


def _median_index(model: nn.Module) -> int:
    levels: tuple[float, ...] = tuple(model.config.quantiles)  # type: ignore[union-attr]
    return min(range(len(levels)), key=lambda i: abs(levels[i] - 0.5))


def describe(config: ForecasterConfig) -> dict[str, Any]:
    """JSON-able model config."""
    return config.to_dict()
