"""The source release as one transaction: intent, spend, counts, commit; a restart finishes it or says why not.

A release has three effects on disk: a spend in the privacy ledger, the noisy counts, and the
store they join (``ReleaseStore``: counts CSV and plan JSON). A node killed between them used to
either release the same days again with what was left of the budget (noise multiplier 512 where
the first plan had 4.22, silently) or refuse every later round as ``ledger-corrupt``. Here:

1. **intent** — ``<release>.pending.json`` names the release (a random id, in the spend's
   ``run_id``), its plan and the (unit, day) keys it covers; written before anything is spent.
2. **spend** — the ledger records the spend (its own atomic write).
3. **counts** — the noisy counts go to ``<release>.pending.csv``, their SHA-256 into the intent.
4. **commit** — the counts join the store (both files staged, then renamed), then the pending
   files are removed.

:func:`finish_pending` runs before every release and every read of the store. With an intent
on disk it looks at the ledger: no spend with the intent's id -> nothing was charged or drawn;
the intent is dropped and the days are released normally. A spend -> the *same* release is
finished with the intent's plan: the staged counts if they are intact, else the noise is drawn
now (the earlier draw died in memory with the process: it was never stored or sent, so one
draw is released per spend). It never spends again. When it cannot finish (the intent is
unreadable, or the node's data no longer holds the days that were charged) it refuses with
:class:`ReleaseInterrupted`, whose message says what happened and what to do.

``MEDALLOC_FAULT_POINT`` (tests only) kills the process with SIGKILL at a named step
(:data:`FAULT_POINTS`), so tests can stop a real node at each one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import secrets
import signal
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medalloc_core.atomic import atomic_write_files
from medalloc_core.contract import DATE, UNIT, Frequency, UnitRecords
from medalloc_core.paths import read_regular_bytes
from medalloc_core.privacy import continuity
from medalloc_core.privacy.fingerprint import fingerprint_frame
from medalloc_core.privacy.ledger import PrivacyLedger
from medalloc_core.privacy.release import (
    MAX_RELEASE_BYTES,
    ReleasePlan,
    ReleaseStore,
    ReleaseStoreError,
    release_records,
)

__all__ = [
    "FAULT_ENV",
    "FAULT_POINTS",
    "PendingRelease",
    "ReleaseInterrupted",
    "commit_release",
    "fault_point",
    "finish_pending",
    "release_lock",
]

logger = logging.getLogger(__name__)

FAULT_ENV = "MEDALLOC_FAULT_POINT"
# Where a test may kill the node (in order); "store-half" is between the store's two renames.
FAULT_POINTS: tuple[str, ...] = (
    "release:intent",
    "release:spent",
    "release:counts",
    "release:store-half",
    "release:stored",
)
_MAX_INTENT_BYTES = 64 * 2**20


def fault_point(name: str) -> None:
    """Kill this process with SIGKILL here when ``MEDALLOC_FAULT_POINT`` names ``name`` (tests only)."""
    if os.environ.get(FAULT_ENV) == name:
        logger.warning("fault injection: killing the process at %s", name)
        os.kill(os.getpid(), signal.SIGKILL)


class ReleaseInterrupted(ReleaseStoreError):
    """An interrupted release that cannot be finished; the message says what happened and what to do."""


@dataclass(frozen=True)
class PendingRelease:
    """The intent record of one release (``<release>.pending.json``)."""

    release_id: str
    run_id: str
    created: str
    plan: ReleasePlan
    keys: tuple[tuple[str, str], ...]  # (unit, ISO date), sorted by unit then date
    days: tuple[str, str]
    counts_sha256: str | None = None

    def to_json(self) -> bytes:
        body = {
            "format": "medalloc-pending-release",
            "release_id": self.release_id,
            "run_id": self.run_id,
            "created": self.created,
            "plan": self.plan.to_dict(),
            "keys": [list(k) for k in self.keys],
            "days": list(self.days),
            "counts_sha256": self.counts_sha256,
        }
        return (json.dumps(body, indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> PendingRelease:
        raw = json.loads(data.decode("utf-8"))
        if not isinstance(raw, dict) or raw.get("format") != "medalloc-pending-release":
            raise ValueError("not a MedAlloc pending-release record")
        return cls(
            release_id=str(raw["release_id"]),
            run_id=str(raw["run_id"]),
            created=str(raw["created"]),
            plan=ReleasePlan.from_dict(raw["plan"]),
            keys=tuple((str(u), str(d)) for u, d in raw["keys"]),
            days=(str(raw["days"][0]), str(raw["days"][1])),
            counts_sha256=None if raw.get("counts_sha256") is None else str(raw["counts_sha256"]),
        )


def release_pending(store_path: Path) -> bool:
    """Whether an interrupted release of ``store_path`` waits to be finished (its intent record exists)."""
    return _intent_path(store_path).exists()


def _intent_path(store_path: Path) -> Path:
    return store_path.with_name(store_path.name + ".pending.json")


def _counts_path(store_path: Path) -> Path:
    return store_path.with_name(store_path.name + ".pending.csv")


@contextlib.contextmanager
def release_lock(store_path: Path) -> Iterator[None]:
    """Hold ``flock(LOCK_EX)`` on ``<release>.lock``: one process releases or recovers at a time."""
    lock_path = Path(store_path).with_name(Path(store_path).name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)  # as the store's own writes do
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _counts_csv(released: UnitRecords, plan: ReleasePlan) -> bytes:
    frame = released.frame[[DATE, UNIT, *plan.columns]].copy()
    frame[DATE] = pd.to_datetime(frame[DATE]).dt.strftime("%Y-%m-%d")
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, float_format="%.6f")
    return buffer.getvalue().encode()


def _keys(frame: pd.DataFrame) -> tuple[tuple[str, str], ...]:
    dates = pd.to_datetime(frame[DATE]).dt.strftime("%Y-%m-%d")
    return tuple(zip(frame[UNIT].astype(str), dates, strict=True))


def commit_release(
    store: ReleaseStore,
    ledger: PrivacyLedger,
    frame: pd.DataFrame,
    plan: ReleasePlan,
    *,
    rng: np.random.Generator,
    run_tag: str,
    records: UnitRecords,
    per_patient: bool = False,
    epoch: int = 0,
    staged: Mapping[Path, bytes] | None = None,
) -> UnitRecords:
    """Release the true counts ``frame`` (rows not released yet) as one transaction; returns the released rows.

    Raises what ``ledger.spend`` raises (nothing written but the intent, which is then removed),
    and ``OSError`` (``WriteFailed``) when a file cannot be written; after the spend, the intent
    stays and :func:`finish_pending` completes the same release on the next start.

    ``epoch`` (``privacy.continuity``): releases of one epoch over disjoint days compose as one
    Gaussian in the ledger; ``staged`` files (the pending patient tally and day digests) are
    written with the intent and become current when the release joins the store.
    """
    intent_path = _intent_path(store.path)
    release_id = secrets.token_hex(8)
    days = (str(pd.Timestamp(frame[DATE].min()).date()), str(pd.Timestamp(frame[DATE].max()).date()))
    pending = PendingRelease(
        release_id=release_id,
        run_id=f"{run_tag}/source-release/{release_id}",
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        plan=plan,
        keys=_keys(frame),
        days=days,
    )
    atomic_write_files({intent_path: pending.to_json(), **dict(staged or {})})
    fault_point("release:intent")
    try:
        ledger.spend(
            fingerprint_frame(frame),
            noise_multiplier=plan.noise_multiplier,
            sample_rate=1.0,
            steps=1,
            run_id=pending.run_id,
            mechanism="source-release",
            days=days,
            detail={f"sd-{c}": sd for c, sd in plan.noise_sd.items()}
            | {"max-stay-days": float(plan.max_stay_days)}
            # per patient (ids bounded before counting) or per stay (daily counts only): medalloc privacy says which
            | ({"per-patient": 1.0, "max-admissions": float(plan.max_admissions)} if per_patient else {})
            # a release that could not join the earlier ones at no cost (privacy.continuity) composes apart
            | ({"epoch": float(epoch)} if epoch else {}),
        )
    except BaseException:
        try:
            charged = _spent(ledger, pending)
        except Exception:  # noqa: BLE001 - cannot tell: keep the intent, the next start decides
            charged = True
        if not charged:  # refused (budget, corrupt ledger, full disk): nothing was charged
            with contextlib.suppress(OSError):
                intent_path.unlink()
                continuity.drop_pending(store.path)
        raise
    fault_point("release:spent")
    part = UnitRecords(frame.reset_index(drop=True), records.frequency, records.source, records.shape)
    released = release_records(part, plan, rng=rng)
    return _store(store, pending, released)


def _store(store: ReleaseStore, pending: PendingRelease, released: UnitRecords) -> UnitRecords:
    """Steps 3 and 4: stage the counts with their hash in the intent, join the store, drop the pending files."""
    intent_path, counts_path = _intent_path(store.path), _counts_path(store.path)
    data = _counts_csv(released, pending.plan)
    staged = PendingRelease(**{**pending.__dict__, "counts_sha256": hashlib.sha256(data).hexdigest()})
    atomic_write_files({counts_path: data, intent_path: staged.to_json()})
    fault_point("release:counts")
    store.add(released, pending.plan, between=lambda: fault_point("release:store-half"))
    fault_point("release:stored")
    continuity.commit_pending(store.path)  # the tally and digests of the days now released
    for path in (counts_path, intent_path):  # counts first: an intent without counts redraws nothing stored
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return released


def _spent(ledger: PrivacyLedger, pending: PendingRelease) -> bool:
    return any(spend.run_id == pending.run_id for spend in ledger.spends())


def _refusal(store_path: Path, what: str, todo: str) -> ReleaseInterrupted:
    return ReleaseInterrupted(
        f"an interrupted source release at {store_path} cannot be finished: {what}. {todo} "
        f"The record of the interrupted release is {_intent_path(store_path)}; keep it until then. "
        "Never delete the released counts or the ledger to start again: the ledger already charged this release."
    )


def _read_store_parts(store_path: Path, plan: ReleasePlan) -> ReleaseStore:
    """The store as the interrupted commit left it: the counts CSV (if any) under the intent's plan.

    A kill between the store's two renames can leave the plan without the counts (first release)
    or the new counts without the plan; either way the intent's plan is the plan.
    """
    meta = store_path.with_name(store_path.name + ".json")
    if meta.exists():
        stored = ReleaseStore.open_plan(meta)
        if (stored.noise_multiplier, stored.columns, stored.max_stay_days) != (
            plan.noise_multiplier,
            plan.columns,
            plan.max_stay_days,
        ):
            raise _refusal(
                store_path,
                f"its plan (noise multiplier {plan.noise_multiplier:.4g}) differs from the stored plan "
                f"{meta} (noise multiplier {stored.noise_multiplier:.4g})",
                "Restore the release files from the node's backup.",
            )
    if not store_path.exists():
        return ReleaseStore(store_path, None, pd.DataFrame(columns=[DATE, UNIT, *plan.columns]))
    frame = ReleaseStore.read_counts(store_path, plan)
    return ReleaseStore(store_path, plan if not frame.empty else None, frame)


def finish_pending(
    store_path: str | os.PathLike[str],
    ledger: PrivacyLedger,
    records: UnitRecords,
    rng: Callable[[], np.random.Generator],
) -> str | None:
    """Finish or drop an interrupted release before anything else reads or extends the store.

    Returns what was done (for the log), or None when nothing was pending. ``rng`` is called only
    when the noise must be drawn now. Raises :class:`ReleaseInterrupted` when the release cannot
    be finished (the message says what to do), ``OSError`` when a file cannot be written.
    """
    store_path = Path(store_path)
    intent_path, counts_path = _intent_path(store_path), _counts_path(store_path)
    if not intent_path.exists():
        with contextlib.suppress(FileNotFoundError):
            counts_path.unlink()  # a commit that finished, killed before the intent was removed
        return None
    try:
        pending = PendingRelease.from_json(read_regular_bytes(intent_path, limit=_MAX_INTENT_BYTES))
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise _refusal(
            store_path,
            f"its record is unreadable ({exc})",
            "Restore the node's folder from its last backup; if none exists, compare the ledger's last "
            "source-release spend (`medalloc privacy --ledger ...`) with the released counts before deciding.",
        ) from exc
    if not _spent(ledger, pending):
        continuity.drop_pending(store_path)
        for path in (counts_path, intent_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        done = (
            f"release {pending.release_id} ({pending.days[0]}..{pending.days[1]}) was stopped before the ledger "
            "charged it: nothing was spent or released; it starts again"
        )
        logger.warning("%s", done)
        return done
    store = _read_store_parts(store_path, pending.plan)
    released: UnitRecords | None = None
    if pending.counts_sha256 is not None and counts_path.exists():
        data = read_regular_bytes(counts_path, limit=MAX_RELEASE_BYTES)
        if hashlib.sha256(data).hexdigest() == pending.counts_sha256:
            frame = pd.read_csv(io.BytesIO(data), parse_dates=[DATE], dtype={UNIT: str})
            released = UnitRecords(frame, Frequency.DAILY, records.source, "daily")
    stored_keys = set(_keys(store.frame)) if not store.frame.empty else set()
    wanted = set(pending.keys)
    if wanted <= stored_keys:  # the commit finished; only the pending files were left
        continuity.commit_pending(store_path)
        for path in (counts_path, intent_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        done = f"release {pending.release_id} had been stored; its pending record is removed"
        logger.info("%s", done)
        return done
    if wanted & stored_keys:
        raise _refusal(
            store_path,
            f"{len(wanted & stored_keys)} of its {len(wanted)} unit-days are already in the store and the others "
            "are not, which no interrupted commit leaves",
            "Restore the release files from the node's backup.",
        )
    redrawn = released is None
    if released is None:
        true = records.frame
        present = set(_keys(true))
        lost = sorted(wanted - present)
        if lost:
            raise _refusal(
                store_path,
                f"the ledger charged release {pending.release_id} of {len(wanted)} unit-days "
                f"({pending.days[0]}..{pending.days[1]}, noise multiplier {pending.plan.noise_multiplier:.4g}), "
                f"the node was stopped before its counts were stored, and {len(lost)} of those unit-days "
                f"(first: unit {lost[0][0]}, {lost[0][1]}) are no longer in the node's data",
                "Restore data-path to the file the node had then (it must hold those days) and restart the node: "
                "it then finishes the same release without charging it again.",
            )
        mask = pd.Series(_keys(true), index=true.index).isin(wanted)
        frame = true[mask].sort_values([UNIT, DATE]).reset_index(drop=True)
        frame = continuity.apply_pending_cuts(store_path, frame)  # the tally's cut, as first computed
        part = UnitRecords(frame, records.frequency, records.source, records.shape)
        released = release_records(part, pending.plan, rng=rng())
    _store(store, pending, released)
    done = (
        f"finished interrupted release {pending.release_id}: {len(wanted)} unit-days "
        f"({pending.days[0]}..{pending.days[1]}) at noise multiplier {pending.plan.noise_multiplier:.4g}, "
        f"charged once ({'noise drawn now: the first draw was never stored' if redrawn else 'staged counts'})"
    )
    logger.warning("%s", done)
    return done


def pending_record(store_path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The pending intent at ``store_path`` as JSON (for reports), or None."""
    path = _intent_path(Path(store_path))
    if not path.exists():
        return None
    return json.loads(read_regular_bytes(path, limit=_MAX_INTENT_BYTES))
