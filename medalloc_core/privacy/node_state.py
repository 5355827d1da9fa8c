"""The node state record: remembers which ledger a node has, so a deleted or replaced ledger is noticed.

A ledger that is missing (deleted together with its ``.bak``) or a ``ledger-path`` pointed at a
new file would otherwise start from zero and forget every epsilon already spent. The record
(JSON, one entry per hospital id) is written when a node first gets a ledger and is checked every
time it opens one: a node that has a record but finds no ledger, another path, or a ledger with
another id refuses (``LedgerResetDetected``). Keep it outside the ledger's folder (node config
``node-state-path``, e.g. beside the node's keys) so that removing the ledger folder is noticed too.

What it cannot do: an administrator who deletes the record as well (or edits it) resets the node;
no file on a machine its own administrator controls can prevent that (docs/hospital.md says so).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medalloc_core.atomic import atomic_write_bytes
from medalloc_core.privacy.ledger import LedgerError, LedgerMissing, PrivacyLedger

__all__ = ["NODE_STATE_FORMAT", "LedgerResetDetected", "NodeStateRecord", "open_node_ledger"]

logger = logging.getLogger(__name__)

NODE_STATE_FORMAT = "medalloc-node-state"


class LedgerResetDetected(LedgerError):
    """The node has had a ledger, and the configured one is missing or a different one."""


@dataclass(frozen=True)
class NodeStateRecord:
    """What the record keeps for one hospital id: its ledger's path and id."""

    hospital_id: str
    ledger_path: str
    ledger_id: str


def _read(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"format": NODE_STATE_FORMAT, "nodes": {}}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LedgerResetDetected(
            f"node state record {path} is unreadable ({exc}); the node refuses until its operator restores it"
        ) from exc
    if not isinstance(raw, dict) or raw.get("format") != NODE_STATE_FORMAT or not isinstance(raw.get("nodes"), dict):
        raise LedgerResetDetected(
            f"{path} is not a MedAlloc node state record; the node refuses until its operator restores it"
        )
    return raw


def _hint(record: NodeStateRecord, state_path: Path) -> str:
    return (
        f"This node's state record {state_path} says its privacy ledger is {record.ledger_path} "
        f"(id {record.ledger_id[:12]}). "
        "Restore that ledger (or its .bak) and point ledger-path at it. Starting a new ledger would forget the "
        "epsilon already spent on this hospital's patients; if your governance decides to do so anyway, remove "
        f"this hospital's entry from {state_path} by hand and record the decision."
    )


def open_node_ledger(
    *,
    state_path: Path,
    hospital_id: str,
    ledger_path: Path,
    epsilon_budget: float,
    delta: float,
    accountant: str,
    max_stay_days: int | None,
    unit: str = "patient",
    entry: str | None = None,
) -> PrivacyLedger:
    """Open the node's ledger of a task, creating it (and its record) only on a node that never had one.

    The forecasting task's ledger counts epsilon per patient (``unit="patient"``, stays of at
    most ``max_stay_days`` nights); another task's ledger has its own unit (the equipment task:
    ``"device"``) and its own ``entry`` in the record (the task's ``node_state_key``, e.g.
    ``<hospital_id>/<task>``; default ``hospital_id``), so each ledger of a node gets the same
    reset detection and no two ledgers share a budget.

    Raises
    ------
    LedgerResetDetected
        The record names another ledger path or id, or the recorded ledger is gone.
    LedgerError
        As ``PrivacyLedger.open`` (corrupt, config mismatch).
    """
    state_path, ledger_path = Path(state_path), Path(ledger_path)
    document = _read(state_path)
    key = entry or hospital_id
    raw = document["nodes"].get(key)
    known = NodeStateRecord(key, str(raw["ledger_path"]), str(raw["ledger_id"])) if isinstance(raw, dict) else None
    if known is not None and Path(known.ledger_path).resolve() != ledger_path.resolve():
        raise LedgerResetDetected(f"ledger-path is {ledger_path}, not the node's ledger. {_hint(known, state_path)}")
    try:
        ledger = PrivacyLedger.open(
            ledger_path,
            epsilon_budget=epsilon_budget,
            delta=delta,
            accountant=accountant,  # type: ignore[arg-type]
            unit=unit,
            max_stay_days=max_stay_days,
            create=known is None,
        )
    except LedgerMissing as exc:
        assert known is not None
        raise LedgerResetDetected(
            f"no privacy ledger at {ledger_path} although this node has had one. {_hint(known, state_path)}"
        ) from exc
    if known is not None and ledger.ledger_id != known.ledger_id:
        raise LedgerResetDetected(
            f"the ledger at {ledger_path} has id {ledger.ledger_id[:12]}: it was replaced. {_hint(known, state_path)}"
        )
    if known is None:
        document["nodes"][key] = {"ledger_path": str(ledger_path.resolve()), "ledger_id": ledger.ledger_id}
        atomic_write_bytes(state_path, (json.dumps(document, indent=2, sort_keys=True) + "\n").encode())
        logger.info("node %s: recorded its privacy ledger %s in %s", hospital_id, ledger_path, state_path)
    return ledger
