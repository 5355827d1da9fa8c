"""Per-round checkpoints of the global model, in the project's one model-file format (``medalloc_core.model_io``).

A checkpoint for round ``r`` in folder ``d`` is the model file ``d/round-000r.safetensors``
plus its sidecar ``d/round-000r.json`` (round, strategy, run config and the strategy's
scalar state beside the format's own fields), and, when the strategy keeps arrays of its own
(FedAdam's moments), ``d/round-000r.state.safetensors`` whose SHA-256 the sidecar records.
The sidecar is written last and is the commit marker: a crash mid-write leaves either no
sidecar or one whose files verify. ``medalloc forecast --model d`` reads the latest round.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from medalloc_core.atomic import atomic_write_bytes
from medalloc_core.model_io import ModelFileError, read_model_files, write_task_model_files
from medalloc_core.tasks import DEFAULT_TASK, get_task, task_of_model

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^round-(\d{4,})\.json$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not match its recorded hash."""


@dataclass(frozen=True)
class Checkpoint:
    """One saved round: the arrays and everything needed to continue from it."""

    round: int
    arrays: dict[str, np.ndarray]
    strategy: str
    model_config: Any  # the task's model config (has to_dict)
    window_spec: Any  # the task's example spec (has to_dict)
    task: str = DEFAULT_TASK
    run_config: dict[str, Any] = field(default_factory=dict)
    strategy_arrays: dict[str, np.ndarray] = field(default_factory=dict)
    strategy_state: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(directory: Path, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` into ``directory``; returns the sidecar's path (the commit marker)."""
    stem = f"round-{checkpoint.round:04d}"
    state_hash = None
    if checkpoint.strategy_arrays:
        state_bytes = st_save({k: np.ascontiguousarray(v) for k, v in checkpoint.strategy_arrays.items()})
        atomic_write_bytes(directory / f"{stem}.state.safetensors", state_bytes)
        state_hash = hashlib.sha256(state_bytes).hexdigest()
    marker = write_task_model_files(
        directory / f"{stem}.safetensors",
        checkpoint.arrays,
        model_config=checkpoint.model_config.to_dict(),
        spec=checkpoint.window_spec.to_dict(),
        task=get_task(checkpoint.task).model_file_task(),
        extra={
            "round": checkpoint.round,
            "strategy": checkpoint.strategy,
            "run-config": checkpoint.run_config,
            "strategy-state": checkpoint.strategy_state,
            "state-sha256": state_hash,
        },
    )
    logger.info("checkpoint for round %s written to %s", checkpoint.round, marker)
    return marker


def load_checkpoint(marker: Path) -> Checkpoint:
    """Read the checkpoint whose sidecar is ``marker``, verifying every file it names."""
    try:
        meta, arrays = read_model_files(marker)
        task = task_of_model(meta)
        model_config, spec = get_task(task).parse_model(meta["model-config"], meta["window-spec"])
        round_ = int(meta["round"])
        strategy = str(meta["strategy"])
    except (ModelFileError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{marker}: not a usable checkpoint ({exc})") from exc
    state_arrays: dict[str, np.ndarray] = {}
    if meta.get("state-sha256"):
        state_arrays = _load_verified(marker.with_name(f"{marker.stem}.state.safetensors"), meta["state-sha256"])
    return Checkpoint(
        round=round_,
        arrays=arrays,
        strategy=strategy,
        task=task,
        model_config=model_config,
        window_spec=spec,
        run_config=dict(meta.get("run-config", {})),
        strategy_arrays=state_arrays,
        strategy_state=dict(meta.get("strategy-state", {})),
    )


def _load_verified(path: Path, expected: str) -> dict[str, np.ndarray]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc})") from exc
    if hashlib.sha256(data).hexdigest() != expected:
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
    markers = sorted((int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name)) is not None)
    for _, marker in reversed(markers):
        try:
            return load_checkpoint(marker)
        except CheckpointError as exc:
            logger.warning("skipping unusable checkpoint: %s", exc)
    return None
