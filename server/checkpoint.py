"""Per-round checkpoints of the global model: safetensors arrays plus a JSON sidecar, written atomically.

A checkpoint for round ``r`` in folder ``d`` is three files:

- ``d/round-000r.safetensors`` — the global model's arrays (names as in the ArrayRecord);
- ``d/round-000r.state.safetensors`` — the strategy's array state (FedAdam's moments),
  present only when the strategy has any;
- ``d/round-000r.json`` — round number, strategy name, the model config, the run config,
  the strategy's scalar state (client-level DP releases) and the SHA-256 of both array files.

The JSON is written last and names the hashes of the array files, so it is the commit
marker: a crash mid-write leaves either no JSON or a JSON whose files verify. Nothing is
pickled; loading reads tensors only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from medalloc_core.atomic import atomic_write_bytes

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^round-(\d{4,})\.json$")
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not match its recorded hash."""


@dataclass(frozen=True)
class Checkpoint:
    """One saved round: the arrays and everything needed to continue from it."""

    round: int
    arrays: dict[str, np.ndarray]
    strategy: str
    model_config: dict[str, Any]
    run_config: dict[str, Any] = field(default_factory=dict)
    strategy_arrays: dict[str, np.ndarray] = field(default_factory=dict)
    strategy_state: dict[str, Any] = field(default_factory=dict)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _contiguous(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(v) for k, v in arrays.items()}


def save_model(path: Path, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, Any]) -> None:
    """Save a model as ``path`` (safetensors) plus ``path.with_suffix('.json')`` (its config), atomically."""
    data = st_save(_contiguous(arrays))
    atomic_write_bytes(path, data)
    meta = dict(metadata) | {"sha256": _sha256(data), "format-version": FORMAT_VERSION}
    atomic_write_bytes(path.with_suffix(".json"), json.dumps(meta, indent=2, sort_keys=True).encode())


def save_checkpoint(directory: Path, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` into ``directory``; returns the JSON sidecar's path (the commit marker)."""
    stem = f"round-{checkpoint.round:04d}"
    model_bytes = st_save(_contiguous(checkpoint.arrays))
    atomic_write_bytes(directory / f"{stem}.safetensors", model_bytes)
    state_hash = None
    if checkpoint.strategy_arrays:
        state_bytes = st_save(_contiguous(checkpoint.strategy_arrays))
        atomic_write_bytes(directory / f"{stem}.state.safetensors", state_bytes)
        state_hash = _sha256(state_bytes)
    meta = {
        "format-version": FORMAT_VERSION,
        "round": checkpoint.round,
        "strategy": checkpoint.strategy,
        "model-config": checkpoint.model_config,
        "run-config": checkpoint.run_config,
        "strategy-state": checkpoint.strategy_state,
        "sha256": _sha256(model_bytes),
        "state-sha256": state_hash,
    }
    marker = directory / f"{stem}.json"
    atomic_write_bytes(marker, json.dumps(meta, indent=2, sort_keys=True).encode())
    logger.info("checkpoint for round %s written to %s", checkpoint.round, marker)
    return marker


def load_checkpoint(marker: Path) -> Checkpoint:
    """Read the checkpoint whose JSON sidecar is ``marker``, verifying both array files' hashes."""
    try:
        meta = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{marker}: cannot read checkpoint metadata ({exc})") from exc
    stem = marker.name[: -len(".json")]
    arrays = _load_verified(marker.parent / f"{stem}.safetensors", meta.get("sha256"))
    state_arrays: dict[str, np.ndarray] = {}
    if meta.get("state-sha256"):
        state_arrays = _load_verified(marker.parent / f"{stem}.state.safetensors", meta["state-sha256"])
    return Checkpoint(
        round=int(meta["round"]),
        arrays=arrays,
        strategy=str(meta["strategy"]),
        model_config=dict(meta["model-config"]),
        run_config=dict(meta.get("run-config", {})),
        strategy_arrays=state_arrays,
        strategy_state=dict(meta.get("strategy-state", {})),
    )


def _load_verified(path: Path, expected: str | None) -> dict[str, np.ndarray]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc})") from exc
    if expected is not None and _sha256(data) != expected:
        raise CheckpointError(f"{path}: SHA-256 does not match its checkpoint record; the file was altered or torn")
    try:
        return dict(st_load(data))
    except SafetensorError as exc:  # e.g. a pickle dressed as a checkpoint: refused, never unpickled
        raise CheckpointError(f"{path}: not a safetensors file ({exc})") from exc


def latest_checkpoint(directory: Path) -> Checkpoint | None:
    """The newest checkpoint in ``directory`` that loads and verifies; ``None`` when there is none.

    A newer checkpoint that fails to verify is skipped with a warning, so a crash during a
    write costs one round, not the run.
    """
    if not directory.is_dir():
        return None
    markers = sorted(
        (int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name)) is not None
    )
    for _, marker in reversed(markers):
        try:
            return load_checkpoint(marker)
        except CheckpointError as exc:
            logger.warning("skipping unusable checkpoint: %s", exc)
    return None
