"""Reset detection keyed on the data, kept in one fixed place per machine: which ledger a hospital's data spends from.

The node state record (``node_state``) lives beside the ledger by default and is keyed on the
hospital id, so a ``ledger-path`` pointed at a new folder, a new ``hospital-id`` with a new
ledger, or ``medalloc share --ledger`` on a fresh path each started a second full budget on the
same patients (issue 20). This record is keyed on the *data source* (its resolved path, or its
database URL without the password) and kept at a fixed per-machine location that no ledger
setting moves:

    $MEDALLOC_STATE_DIR/data-sources.json     (default: $XDG_STATE_HOME/medalloc, else ~/.local/state/medalloc)

The first real (non-simulated) node or ``medalloc share`` that spends on a data source records
its ledger's path and id; every later one must use that ledger, or it refuses with
``LedgerResetDetected`` naming this file. What an operator can still do (docs/privacy.md, "Reset
detection"): copy the data to a new path, or delete or edit this file. Neither happens by
accident; both are the operator's decision to record.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medalloc_core.atomic import atomic_write_bytes
from medalloc_core.paths import read_regular_bytes
from medalloc_core.privacy.ledger import LedgerWriteFailed
from medalloc_core.privacy.node_state import LedgerResetDetected

__all__ = ["STATE_DIR_ENV", "check_source_ledger", "record_derived", "registry_path", "source_identity"]

logger = logging.getLogger(__name__)

STATE_DIR_ENV = "MEDALLOC_STATE_DIR"
FORMAT = "medalloc-data-sources"


def registry_path() -> Path:
    """``$MEDALLOC_STATE_DIR/data-sources.json``; the folder defaults to ``$XDG_STATE_HOME/medalloc`` (or
    ``~/.local/state/medalloc``)."""
    folder = os.environ.get(STATE_DIR_ENV)
    if not folder:
        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        folder = str(Path(base) / "medalloc")
    return Path(folder) / "data-sources.json"


def source_identity(location: str) -> str:
    """A stable key for a data source: its resolved path, or its URL without the password, hashed."""
    text = str(location)
    if "://" in text:
        scheme, _, rest = text.partition("://")
        if "@" in rest.split("/", 1)[0]:
            creds, _, host = rest.partition("@")
            text = f"{scheme}://{creds.split(':', 1)[0]}@{host}"
    else:
        text = str(Path(text).expanduser().resolve())
    return hashlib.sha256(text.encode()).hexdigest()


_MAX_RECORD_BYTES = 16 * 2**20  # one entry per data source: a few hundred bytes each


def _read(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"format": FORMAT, "sources": {}}
    try:
        # a regular file only, bounded: a FIFO here would block every node and `share` on this machine
        raw = json.loads(read_regular_bytes(path, limit=_MAX_RECORD_BYTES, what="the data-source record (JSON)"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LedgerResetDetected(f"the data-source record {path} is unreadable ({exc}); restore it") from exc
    if (
        not isinstance(raw, dict)
        or raw.get("format") != FORMAT
        or not isinstance(raw.get("sources"), dict)
        or not isinstance(raw.get("derived", {}), dict)
    ):
        raise LedgerResetDetected(f"{path} is not a MedAlloc data-source record; restore it")
    return raw


def _write(path: Path, document: dict[str, Any]) -> None:
    """Write the record atomically; a failure (a full disk) is a ``LedgerWriteFailed`` before anything is spent."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, (json.dumps(document, indent=2, sort_keys=True) + "\n").encode())
    except OSError as exc:  # the callers record before they spend: nothing was spent or released yet
        raise LedgerWriteFailed(
            f"the data-source record {path} could not be written: {exc.strerror or exc}. Nothing was spent or "
            "released; free space on the disk holding it and run again"
        ) from exc


def record_derived(derived: str | Path, source: str, *, path: Path | None = None) -> None:
    """Record that the file ``derived`` holds ``source``'s patients (``medalloc validate --daily-out``).

    ``medalloc share --data`` then takes the file for its source: a daily file written from the
    node's database spends from the node's ledger, not from a fresh one (the documented flow
    would otherwise start a second budget on the same patients by accident).
    """
    path = Path(path) if path is not None else registry_path()
    document = _read(path)
    root = _key(document, source)
    document.setdefault("derived", {})[source_identity(str(derived))] = root
    _write(path, document)
    logger.info("recorded %s as derived from the node's data source in %s", derived, path)


def _key(document: dict[str, Any], location: str) -> str:
    """``location``'s key, or the key of the source it was derived from."""
    key = source_identity(location)
    derived = document.get("derived", {}).get(key)
    return derived if isinstance(derived, str) else key


def check_source_ledger(location: str, ledger_path: Path, ledger_id: str, *, path: Path | None = None) -> None:
    """Refuse (``LedgerResetDetected``) when ``location``'s data already spends from another ledger; else record it.

    ``path`` overrides :func:`registry_path` (tests, or an operator's node-config ``data-source-record``).
    """
    path = Path(path) if path is not None else registry_path()
    document = _read(path)
    key = _key(document, location)
    known = document["sources"].get(key)
    here = str(Path(ledger_path).expanduser().resolve())
    if isinstance(known, dict):
        if known.get("ledger_path") != here or known.get("ledger_id") != ledger_id:
            raise LedgerResetDetected(
                f"this data source already spends from the privacy ledger {known.get('ledger_path')} "
                f"(id {str(known.get('ledger_id'))[:12]}), recorded in {path}; the configured ledger {here} "
                f"(id {ledger_id[:12]}) would start its patients' budget again. Point ledger-path (or --ledger) at "
                "the recorded ledger; starting again is a governance decision: remove the entry from that file "
                "by hand and record why."
            )
        return
    document["sources"][key] = {
        "ledger_path": here,
        "ledger_id": ledger_id,
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    _write(path, document)
    logger.info("recorded the data source's privacy ledger %s in %s", here, path)
