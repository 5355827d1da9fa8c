"""Adopt or keep: a node scores a new shared model against the one it uses, on its own most recent released days.

Each week the federation may produce a new shared model. A node does not have to take it: it
scores the candidate and its current model on the test days of its own *released* counts (the
most recent days of its release; ``evaluate_local``, the same scoring as a federated evaluate
round), which is post-processing of its one source release and costs no epsilon, and adopts the
candidate only if its WAPE is lower (node setting ``adopt = "if-better"``, the default) or
always (``adopt = "always"``). Nothing here is sent.

The adopted model is copied next to the node's ledger (``<ledger>.models/<version>.safetensors``
and its ``.json``) and named by its **version**: the first 12 hex digits of the SHA-256 of the
model's ``.safetensors`` file (:func:`model_version`; the planner page and forecast history use
the same definition). ``<ledger>.adopted.json`` records the version in use and every decision.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medalloc_core.atomic import atomic_write_bytes
from medalloc_core.contract import UnitRecords
from medalloc_core.forecast.features import REGION_PREFIX, prepare_hospital
from medalloc_core.forecast.region_store import reads_region
from medalloc_core.model_io import load_model, read_sidecar, sidecar_of
from medalloc_core.paths import read_regular_bytes
from medalloc_core.tasks.forecasting.local import evaluate_local

__all__ = [
    "ADOPT_KEY",
    "ADOPT_POLICIES",
    "AdoptionError",
    "Decision",
    "Score",
    "adopt",
    "adopted_model",
    "model_version",
]

ADOPT_KEY = "adopt"  # node config: "if-better" (default) or "always"
ADOPT_POLICIES = ("if-better", "always")
_MAX_STATE_BYTES = 16 * 2**20


class AdoptionError(ValueError):
    """A candidate, a setting or the node's adoption state that cannot be used; the message says what to do."""


def model_version(path: str | Path) -> str:
    """A model's version: the first 12 hex digits of the SHA-256 of its ``.safetensors`` file (a results folder or
    a sidecar is resolved to that file first)."""
    from medalloc_core.forecast.history import model_version_of_file

    return model_version_of_file(load_model(Path(path)).path)


@dataclass(frozen=True)
class Score:
    """One model on the node's most recent released days: WAPE and MAE of the median, windows scored."""

    version: str
    wape: float
    mae: float
    windows: int


@dataclass(frozen=True)
class Decision:
    """What ``adopt`` decided and why (recorded in ``<ledger>.adopted.json``)."""

    policy: str
    adopted: bool
    reason: str
    candidate: Score
    current: Score | None
    version_in_use: str


def score_model(path: Path, released: UnitRecords) -> Score:
    """Score the model at ``path`` on the test days of ``released`` (its own window spec; post-processing)."""
    saved = load_model(path)
    if reads_region(saved.spec) and not any(c.startswith(REGION_PREFIX) for c in released.frame.columns):
        raise AdoptionError(
            f"{saved.path} reads the region (context 'region') and the node keeps no region beside its release "
            "(<release-path>.region.json, written by every round of a region run): it cannot be scored as trained"
        )
    try:
        dataset = prepare_hospital(released, saved.spec)
        scores = evaluate_local(saved.model, dataset)
    except ValueError as exc:
        raise AdoptionError(f"{saved.path} cannot be scored on the node's released days: {exc}") from exc
    return Score(model_version(path), float(scores["wape"]), float(scores["mae"]), int(scores["n"]))


def state_path(ledger_path: Path) -> Path:
    """``<ledger>.adopted.json``: the version in use and every decision."""
    return ledger_path.with_name(ledger_path.name + ".adopted.json")


def models_dir(ledger_path: Path) -> Path:
    """``<ledger>.models/``: the node's copies of the models it adopted, by version."""
    return ledger_path.with_name(ledger_path.name + ".models")


def _read_state(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"format": "medalloc-adopted-model", "current": None, "decisions": []}
    try:
        raw = json.loads(read_regular_bytes(path, limit=_MAX_STATE_BYTES, what="the node's adoption state (JSON)"))
    except (OSError, ValueError) as exc:
        raise AdoptionError(f"{path} cannot be read ({exc}); restore it from the node's backup") from exc
    if not isinstance(raw, dict) or raw.get("format") != "medalloc-adopted-model":
        raise AdoptionError(f"{path} is not a MedAlloc adoption state; restore it from the node's backup")
    return raw


def adopted_model(ledger_path: Path) -> tuple[str, Path] | None:
    """The version the node uses and its model file, or None before the first adoption."""
    current = _read_state(state_path(ledger_path)).get("current")
    if not current:
        return None
    return str(current["version"]), Path(str(current["file"]))


def policy_of(node_config: Mapping[str, Any]) -> str:
    """The node's ``adopt`` setting (default ``if-better``); ``AdoptionError`` naming the key otherwise."""
    value = str(node_config.get(ADOPT_KEY, "if-better"))
    if value not in ADOPT_POLICIES:
        raise AdoptionError(f"node config '{ADOPT_KEY}' must be one of {', '.join(ADOPT_POLICIES)}, got {value!r}")
    return value


def _keep_copy(path: Path, ledger_path: Path, version: str) -> Path:
    """Copy the model's two files into ``<ledger>.models/<version>.*`` (a results folder may be overwritten)."""
    saved = load_model(path)
    folder = models_dir(ledger_path)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{version}.safetensors"
    if not target.exists():
        sidecar = sidecar_of(saved.path)
        read_sidecar(sidecar)  # checked before it is copied
        shutil.copyfile(sidecar, sidecar_of(target))
        shutil.copyfile(saved.path, target)
    return target


def adopt(candidate: Path, *, released: UnitRecords, ledger_path: Path, policy: str) -> Decision:
    """Score ``candidate`` and the node's current model on ``released``; adopt the candidate per ``policy``.

    The decision is appended to ``<ledger>.adopted.json``; an adopted model is copied beside the
    ledger and becomes the version in use.
    """
    if policy not in ADOPT_POLICIES:
        raise AdoptionError(f"policy must be one of {', '.join(ADOPT_POLICIES)}, got {policy!r}")
    path = state_path(ledger_path)
    state = _read_state(path)
    new = score_model(candidate, released)
    current = state.get("current")
    old: Score | None = None
    if current:
        try:
            old = score_model(Path(str(current["file"])), released)
        except (AdoptionError, ValueError, OSError) as exc:
            reason = f"the model in use ({current['version']}) cannot be scored any more ({exc})"
            old = None
            adopted = True
        else:
            adopted = policy == "always" or (math.isfinite(new.wape) and new.wape < old.wape)
            if policy == "always":
                reason = "adopt = always"
            elif adopted:
                reason = f"WAPE {new.wape:.4f} < {old.wape:.4f} of the model in use"
            else:
                reason = f"WAPE {new.wape:.4f} is not below {old.wape:.4f} of the model in use: kept"
        if old is not None and new.version == old.version:
            adopted, reason = False, "the candidate is the model in use"
    else:
        adopted, reason = True, "the node had no model in use"
    version = new.version if adopted else str(current["version"]) if current else new.version
    if adopted:
        state["current"] = {
            "version": new.version,
            "file": str(_keep_copy(candidate, ledger_path, new.version)),
            "adopted": datetime.now(UTC).isoformat(timespec="seconds"),
            "wape": new.wape,
        }
    decision = Decision(policy, adopted, reason, new, old, version)
    state["decisions"] = [
        *state.get("decisions", []),
        {"time": datetime.now(UTC).isoformat(timespec="seconds"), "candidate_file": str(candidate), **asdict(decision)},
    ]
    atomic_write_bytes(path, (json.dumps(state, indent=1, sort_keys=True) + "\n").encode())
    return decision
