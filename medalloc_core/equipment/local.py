"""A node's equipment work, free of Flower: load and snapshot its fleet, score a risk model on its test period.

The ClientApp's equipment handlers call these; the simulation runner and the benchmark call
the same functions for their comparisons, so every method is scored by one piece of code.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn

from medalloc_core.equipment.contract import Fleet
from medalloc_core.equipment.features import FleetDataset, SnapshotSpec, snapshots
from medalloc_core.equipment.metrics import brier, log_loss
from medalloc_core.equipment.model import DeviceBatches, predict_proba
from medalloc_core.equipment.validation import fleet_files, load_fleet

logger = logging.getLogger(__name__)

# Per-snapshot log loss is clipped here before it is averaged, so one device moves the mean by
# a bounded amount (what a DP release of the metric would need).
LOG_LOSS_CLIP = 10.0


@dataclass(frozen=True)
class LocalFleet:
    """One hospital's validated fleet, its snapshots split in time, and the training snapshots by device."""

    fleet: Fleet
    dataset: FleetDataset
    batches: DeviceBatches

    @cached_property
    def fingerprint(self) -> str:
        """Key of the data actually used, for the privacy ledger (see :func:`fleet_fingerprint`)."""
        return fleet_fingerprint(self.fleet)


def fleet_fingerprint(fleet: Fleet) -> str:
    """SHA-256 over the typed inventory and event log, row order and file format ignored.

    Each typed row is hashed (``pandas.util.hash_pandas_object``, stable across runs), the row
    hashes are sorted, and the column names and sorted hashes are digested: the same fleet
    read from CSV or Parquet, in any row order, gives the same key; any changed value, row or
    column gives a new one. Linear in the rows (the generic ``fingerprint_frame`` renders every
    value as text, which takes seconds on a large event log).
    """
    digest = hashlib.sha256(b"medalloc-fleet-v1")
    for frame in (fleet.devices, fleet.events):
        rows = np.sort(pd.util.hash_pandas_object(frame, index=False).to_numpy())
        digest.update(repr(list(frame.columns)).encode())
        digest.update(rows.tobytes())
    return "sha256:" + digest.hexdigest()


def prepare_fleet(fleet: Fleet, spec: SnapshotSpec) -> LocalFleet:
    """Snapshots, time split and per-device training batches of a loaded fleet."""
    dataset = FleetDataset.split(snapshots(fleet, spec), spec, len(fleet.devices))
    return LocalFleet(fleet, dataset, DeviceBatches.from_snapshots(dataset.train))


def load_local_fleet(path: Path, spec: SnapshotSpec) -> LocalFleet:
    """Load, validate and snapshot a fleet folder (cached per process while its files are unchanged).

    Raises ``DataContractError`` for files that break the contract and ``ValueError`` when the
    log is too short for a training and a test period.
    """
    path = Path(path)
    inventory, events, _ = fleet_files(path)
    stamp = tuple((p.stat().st_mtime_ns, p.stat().st_size) if p is not None else (0, 0) for p in (inventory, events))
    return _load_cached(path.resolve(), stamp, spec)


@lru_cache(maxsize=32)
def _load_cached(path: Path, stamp: tuple[tuple[int, int], ...], spec: SnapshotSpec) -> LocalFleet:
    # Keyed by the folder and its files' modification times and sizes, so edited files are
    # re-validated; Flower re-creates the ClientApp per message, so without this every round
    # would re-read and re-validate the whole event log. 32 entries: a simulation actor (or the
    # benchmark's in-process federation) serves every virtual node's fleet in turn.
    local = prepare_fleet(load_fleet(path), spec)
    if len(local.dataset.train) == 0 or len(local.dataset.test) == 0:
        raise ValueError(
            f"{path}: the event log ({local.fleet.start:%Y-%m-%d} .. {local.fleet.end:%Y-%m-%d}) is too short for a "
            f"training and a {spec.test_days}-day test period with a {spec.horizon_days}-day horizon"
        )
    return local


def evaluate_risk(model: nn.Module, local: LocalFleet) -> dict[str, float]:
    """Test-period scores of ``model`` on this fleet: log loss (clipped per snapshot) and Brier, and the count.

    Both are means over snapshots of per-snapshot values in a bounded range ([0, 10] and [0, 1]).
    """
    test = local.dataset.test
    if len(test) == 0:
        raise ValueError("the test period has no snapshots")
    p = predict_proba(model, test.X)
    clipped = np.clip(p, np.exp(-LOG_LOSS_CLIP), 1 - np.exp(-LOG_LOSS_CLIP))
    return {"loss": log_loss(test.y, clipped), "brier": brier(test.y, p), "n": float(len(test))}
