"""The node's privacy ledger: a persisted, checksummed, cumulative history of DP spends."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import hmac
import json
import logging
import math
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medalloc_core.atomic import WriteFailed, atomic_write_bytes, create_exclusive
from medalloc_core.paths import FileTooLarge, NotRegularFile, read_regular_bytes, read_regular_text
from medalloc_core.privacy.accounting import (
    ACCOUNTANTS,
    DEFAULT_ACCOUNTANT,
    AccountantName,
    HistoryItem,
    compact_history,
    epsilon_for,
    validate_history_item,
)
from medalloc_core.privacy.distributed import MECHANISM as SKELLAM_MECHANISM
from medalloc_core.privacy.distributed import SkellamItem, epsilon_with_skellam

__all__ = [
    "LEDGER_FORMAT",
    "MECHANISMS",
    "LEDGER_VERSION",
    "BudgetChange",
    "LedgerConfigMismatch",
    "LedgerCorrupt",
    "LedgerEntry",
    "LedgerError",
    "LedgerMissing",
    "LedgerWriteFailed",
    "PrivacyBudgetExceeded",
    "PrivacyLedger",
    "Spend",
]

logger = logging.getLogger(__name__)

LEDGER_FORMAT = "medalloc-privacy-ledger"
LEDGER_VERSION = 2
# Version 1 stored an unkeyed SHA-256 of the body: anyone who edited the file could recompute
# it. Version 2 stores an HMAC-SHA256 under a node-local key (``<ledger>.key``).
_UNKEYED_VERSION = 1
# A spend is about 300 bytes of JSON: 64 MiB is some 200,000 spends, far past any budget.
MAX_LEDGER_BYTES = 64 * 2**20
_KEY_BYTES = 32
_MAX_KEY_FILE_BYTES = 4096  # a key file is 65 bytes of hex
_LEDGER_FILE = "a privacy ledger file (JSON)"
# What a spend was, so the ledger composes it right (the item is what the accountant sees):
# - "source-release": one Gaussian release of (unit, day) counts per patient stay, item (z, 1, 1);
#   releases at one z over disjoint days compose to ONE Gaussian (a stay's days split over them);
# - "dp-sgd-patient": DP-SGD with at most one window of a stay per unit and step, item
#   (sigma / 4, 1 - (1 - p)^2, steps) (medalloc_core.privacy.patient);
# - "share", "dp-metric": a Gaussian release of derived numbers, item (z, 1, 1);
# - "dp-sgd-window": DP-SGD accounted per training window (ledgers before patient-level
#   accounting): no patient-level guarantee.
# - "dp-sgd-device": the equipment task's DP-SGD with one device's whole history as one example,
#   item (sigma, q, steps) exactly as Opacus accounts it (medalloc_core.equipment.model), on a
#   ledger whose unit is "device": device epsilon never composes with patient epsilon.
# - "skellam-device": the equipment task's distributed-DP rounds under secure aggregation, the
#   noise the Skellam sum of the minimum number of surviving nodes carries: detail holds its
#   "skellam-mu", "l2-sensitivity" and "l1-sensitivity" (medalloc_core.privacy.distributed);
#   not a Gaussian item, it composes with the others by Renyi DP.
MECHANISMS: tuple[str, ...] = (
    "source-release",
    "dp-sgd-patient",
    "share",
    "dp-metric",
    "dp-sgd-window",
    "dp-sgd-device",
    SKELLAM_MECHANISM,
)
_SKELLAM_DETAIL = ("skellam-mu", "l2-sensitivity", "l1-sensitivity")
UNITS: tuple[str, ...] = ("patient", "window", "device")


class LedgerError(Exception):
    """Base class of privacy-ledger errors; the message says what the operator should do."""


class LedgerCorrupt(LedgerError):
    """The ledger file cannot be trusted (unreadable, truncated, invalid, checksum mismatch).

    Training must stop: starting again from zero would forget what was already spent.
    """


class LedgerMissing(LedgerError):
    """No ledger exists at the path (and nothing suggests one was lost)."""


class LedgerWriteFailed(LedgerError):
    """The ledger (or its key) could not be written, e.g. the disk is full; the file on disk is unchanged."""


class LedgerConfigMismatch(LedgerError):
    """The caller's budget, delta or accountant differ from the ledger's own."""


class PrivacyBudgetExceeded(LedgerError):
    """A spend would take the node's cumulative epsilon above its budget; nothing was recorded."""

    def __init__(self, message: str, *, projected_epsilon: float, epsilon_budget: float) -> None:
        super().__init__(message)
        self.projected_epsilon = projected_epsilon
        self.epsilon_budget = epsilon_budget


@dataclass(frozen=True)
class Spend:
    """One recorded DP training run on one dataset entry."""

    timestamp: str  # UTC, ISO 8601
    run_id: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    epsilon_entry_after: float  # this entry's own history composed, after this spend
    epsilon_node_after: float  # every entry on the node composed (what the budget enforces)
    mechanism: str = "dp-sgd-window"  # one of MECHANISMS; ledgers written before it are window-level DP-SGD
    days: tuple[str, str] | None = None  # source releases: first and last date released (ISO)
    # reporting, e.g. window-level sigma/q/steps, noise sd; "epoch" also decides how source releases compose
    detail: tuple[tuple[str, float], ...] = ()

    def history_item(self) -> HistoryItem:
        """The accountant history item ``(noise_multiplier, sample_rate, steps)``."""
        return (self.noise_multiplier, self.sample_rate, self.steps)


@dataclass(frozen=True)
class LedgerEntry:
    """All spends on one dataset, keyed by the fingerprint of the data actually used."""

    fingerprint: str
    spends: tuple[Spend, ...]
    epsilon: float  # this entry's own history composed (reporting; the budget is node-wide)

    @property
    def first_spend(self) -> str | None:
        """Timestamp of the first spend, or None."""
        return self.spends[0].timestamp if self.spends else None

    @property
    def last_spend(self) -> str | None:
        """Timestamp of the latest spend, or None."""
        return self.spends[-1].timestamp if self.spends else None


@dataclass(frozen=True)
class BudgetChange:
    """An explicit, recorded change of the node's epsilon budget."""

    timestamp: str
    previous: float
    new: float


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def _checksum(body: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical(body)).hexdigest()


def ledger_key_path(path: str | os.PathLike[str]) -> Path:
    """The node-local key that authenticates the ledger at ``path``: ``<ledger>.key`` beside it.

    The backup ``<ledger>.bak`` is checked with the ledger's own key.
    """
    path = Path(path)
    name = path.name.removesuffix(".bak") if path.name.endswith(".bak") else path.name
    return path.with_name(name + ".key")


def _read_key(path: Path) -> bytes:
    """The ledger's key; LedgerCorrupt when it is missing or malformed (a new key would bless an edited file)."""
    key_path = ledger_key_path(path)
    try:
        text = read_regular_text(key_path, limit=_MAX_KEY_FILE_BYTES, encoding="ascii", what="a ledger key").strip()
        key = bytes.fromhex(text)
    except FileNotFoundError:
        raise LedgerCorrupt(
            f"privacy ledger {path} exists but its key {key_path} does not: the ledger cannot be "
            f"verified. Restore the key from the node's backup. {_fix_hint(path)}"
        ) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise LedgerCorrupt(f"ledger key {key_path} is unreadable or malformed ({reason}). {_fix_hint(path)}") from None
    if len(key) != _KEY_BYTES:
        raise LedgerCorrupt(f"ledger key {key_path} holds {len(key)} bytes, expected {_KEY_BYTES}. {_fix_hint(path)}")
    return key


def _create_key(path: Path) -> bytes:
    """A new random key at ``<ledger>.key``, mode 0600, never over an existing one, never half-made.

    A full disk leaves no key file at all (``create_exclusive`` stages it, then links it), so it
    cannot later pass for the key of a ledger that was "deleted or moved".
    """
    key = os.urandom(_KEY_BYTES)
    key_path = ledger_key_path(path)
    try:
        create_exclusive(key_path, key.hex().encode("ascii") + b"\n", mode=0o600)
    except WriteFailed as exc:
        raise LedgerWriteFailed(f"privacy ledger key {key_path}: {exc.strerror}. No ledger was created.") from exc
    return key


def _mac(key: bytes, body: dict[str, Any]) -> str:
    return hmac.new(key, _canonical(body), hashlib.sha256).hexdigest()


def _fix_hint(path: Path) -> str:
    backup = path.with_name(path.name + ".bak")
    return (
        f"Training on this node is refused until an operator acts. The ledger was not "
        f"modified. Inspect {path}; if {backup} exists and is valid "
        f"(`medalloc privacy --ledger {backup}`), stop all training on this node and restore "
        f"it with `cp {backup} {path}` — note that spends recorded after that backup are then "
        "lost, so add them back from your run logs or lower the budget accordingly. Never "
        "delete the ledger to start again: that would forget the privacy already spent."
    )


def _spend_from_json(raw: Any, where: str) -> Spend:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected an object, got {type(raw).__name__}")
    expected: dict[str, type | tuple[type, ...]] = {
        "timestamp": str,
        "run_id": str,
        "noise_multiplier": (int, float),
        "sample_rate": (int, float),
        "steps": int,
        "epsilon_entry_after": (int, float),
        "epsilon_node_after": (int, float),
    }
    for key, kind in expected.items():
        if key not in raw:
            raise ValueError(f"{where}: missing field {key!r}")
        if isinstance(raw[key], bool) or not isinstance(raw[key], kind):
            raise ValueError(f"{where}: field {key!r} has the wrong type ({raw[key]!r})")
    validate_history_item(float(raw["noise_multiplier"]), float(raw["sample_rate"]), raw["steps"])
    mechanism = raw.get("mechanism", "dp-sgd-window")
    if mechanism not in MECHANISMS:
        raise ValueError(f"{where}: unknown mechanism {mechanism!r}")
    days = raw.get("days")
    if days is not None and (not isinstance(days, list) or len(days) != 2 or not all(isinstance(d, str) for d in days)):
        raise ValueError(f"{where}: days must be [first, last] ISO dates")
    detail = raw.get("detail", {})
    if not isinstance(detail, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in detail.values()
    ):
        raise ValueError(f"{where}: detail must map names to numbers")
    return Spend(
        timestamp=raw["timestamp"],
        run_id=raw["run_id"],
        noise_multiplier=float(raw["noise_multiplier"]),
        sample_rate=float(raw["sample_rate"]),
        steps=int(raw["steps"]),
        epsilon_entry_after=float(raw["epsilon_entry_after"]),
        epsilon_node_after=float(raw["epsilon_node_after"]),
        mechanism=mechanism,
        days=(days[0], days[1]) if days else None,
        detail=tuple(sorted((str(k), float(v)) for k, v in detail.items())),
    )


def _spend_to_json(spend: Spend) -> dict[str, Any]:
    extra: dict[str, Any] = {"mechanism": spend.mechanism}
    if spend.days is not None:
        extra["days"] = list(spend.days)
    if spend.detail:
        extra["detail"] = dict(spend.detail)
    return extra | {
        "timestamp": spend.timestamp,
        "run_id": spend.run_id,
        "noise_multiplier": spend.noise_multiplier,
        "sample_rate": spend.sample_rate,
        "steps": spend.steps,
        "epsilon_entry_after": spend.epsilon_entry_after,
        "epsilon_node_after": spend.epsilon_node_after,
    }


@dataclass(frozen=True)
class _State:
    """A verified, parsed ledger body."""

    created: str
    accountant: AccountantName
    delta: float
    epsilon_budget: float
    budget_changes: tuple[BudgetChange, ...]
    entries: dict[str, tuple[Spend, ...]]
    # What one epsilon protects: "patient" (a stay of <= max_stay_days nights) or "window"
    # (ledgers written before patient-level accounting: their spends bound no patient).
    unit: str = "window"
    max_stay_days: int | None = None
    ledger_id: str = ""  # random, fixed at creation; the node state record remembers it

    @classmethod
    def new(
        cls,
        *,
        epsilon_budget: float,
        delta: float,
        accountant: AccountantName,
        unit: str = "patient",
        max_stay_days: int | None = None,
    ) -> _State:
        return cls(_now(), accountant, delta, epsilon_budget, (), {}, unit, max_stay_days, secrets.token_hex(16))

    def replace(self, **changes: Any) -> _State:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_body(cls, body: Any) -> _State:
        if not isinstance(body, dict):
            raise ValueError("body is not an object")
        for key in ("created", "accountant", "delta", "epsilon_budget", "budget_changes", "entries"):
            if key not in body:
                raise ValueError(f"body lacks field {key!r}")
        if not isinstance(body["created"], str):
            raise ValueError(f"created {body['created']!r} is not a timestamp string")
        accountant = body["accountant"]
        if accountant not in ACCOUNTANTS:
            raise ValueError(f"unknown accountant {accountant!r}")
        delta, budget = body["delta"], body["epsilon_budget"]
        if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < 1:
            raise ValueError(f"delta {delta!r} is not in (0, 1)")
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget > 0:
            raise ValueError(f"epsilon_budget {budget!r} is not > 0")
        if not isinstance(body["budget_changes"], list) or not isinstance(body["entries"], dict):
            raise ValueError("budget_changes must be a list and entries an object")
        changes = []
        for i, raw in enumerate(body["budget_changes"]):
            if not isinstance(raw, dict) or set(raw) != {"timestamp", "previous", "new"}:
                raise ValueError(f"budget_changes[{i}] is malformed")
            changes.append(BudgetChange(str(raw["timestamp"]), float(raw["previous"]), float(raw["new"])))
        entries: dict[str, tuple[Spend, ...]] = {}
        for fingerprint, spends in body["entries"].items():
            if not isinstance(spends, list):
                raise ValueError(f"entry {fingerprint}: spends must be a list")
            entries[fingerprint] = tuple(
                _spend_from_json(raw, f"entry {fingerprint} spend {i}") for i, raw in enumerate(spends)
            )
        unit = body.get("unit", "window")
        if unit not in UNITS:
            raise ValueError(f"unknown unit {unit!r}")
        stay = body.get("max_stay_days")
        if stay is not None and (isinstance(stay, bool) or not isinstance(stay, int) or stay < 1):
            raise ValueError(f"max_stay_days {stay!r} is not a whole number >= 1")
        return cls(
            created=str(body["created"]),
            accountant=accountant,
            delta=float(delta),
            epsilon_budget=float(budget),
            budget_changes=tuple(changes),
            entries=entries,
            unit=unit,
            max_stay_days=stay,
            ledger_id=str(body.get("ledger_id") or f"created:{body['created']}"),
        )

    def to_body(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "accountant": self.accountant,
            "delta": self.delta,
            "epsilon_budget": self.epsilon_budget,
            "budget_changes": [
                {"timestamp": c.timestamp, "previous": c.previous, "new": c.new} for c in self.budget_changes
            ],
            "entries": {fp: [_spend_to_json(s) for s in spends] for fp, spends in self.entries.items()},
            "unit": self.unit,
            "max_stay_days": self.max_stay_days,
            "ledger_id": self.ledger_id,
        }

    def spends(self, fingerprint: str | None = None) -> list[Spend]:
        if fingerprint is not None:
            return list(self.entries.get(fingerprint, ()))
        return [s for spends in self.entries.values() for s in spends]

    def history(self, fingerprint: str | None = None, *, extra: Spend | None = None) -> list[HistoryItem]:
        return composed_history([*self.spends(fingerprint), *([extra] if extra else [])])

    def skellam(self, fingerprint: str | None = None, *, extra: Spend | None = None) -> tuple[SkellamItem, ...]:
        """The Skellam releases (distributed DP) among the spends: they compose by RDP, outside ``history``."""
        return tuple(
            skellam_item(s)
            for s in [*self.spends(fingerprint), *([extra] if extra else [])]
            if s.mechanism == SKELLAM_MECHANISM
        )


def skellam_item(spend: Spend) -> SkellamItem:
    """A ``skellam-device`` spend's accountant item, from its detail; a spend without it is a corrupt record."""
    detail = dict(spend.detail)
    try:
        return SkellamItem(
            mu=detail["skellam-mu"], l2=detail["l2-sensitivity"], l1=detail["l1-sensitivity"], steps=spend.steps
        )
    except (KeyError, ValueError) as exc:
        raise LedgerCorrupt(
            f"spend {spend.run_id!r} is a {SKELLAM_MECHANISM} release without a valid "
            f"{', '.join(_SKELLAM_DETAIL)} ({exc})"
        ) from exc


def composed_history(spends: list[Spend]) -> list[HistoryItem]:
    """The accountant history of ``spends``: every spend's item, except that source releases merge.

    Source releases at one noise multiplier and of one *epoch* whose day ranges are pairwise
    disjoint are ONE Gaussian per patient: a patient's contribution splits over them and the
    parts compose in quadrature to at most the whole (medalloc_core.privacy.release), because the
    node checked that the patient's contributions to all of them together stay within the caps
    (medalloc_core.privacy.continuity). A release whose days could not join (``epoch`` in its
    detail, 0 when absent) counts separately, as do releases that overlap in days or lack day
    ranges (an upper bound).
    """
    items: list[HistoryItem] = []
    layers: dict[tuple[float, int], list[list[tuple[str, str]]]] = {}
    for spend in spends:
        if spend.mechanism == SKELLAM_MECHANISM:
            continue  # not a Gaussian: _State.skellam
        if spend.mechanism != "source-release" or spend.days is None or spend.sample_rate != 1.0:
            items.append(spend.history_item())
            continue
        first, last = spend.days
        groups = layers.setdefault((spend.noise_multiplier, int(dict(spend.detail).get("epoch", 0))), [])
        for group in groups:  # first layer whose ranges this one does not overlap
            if all(last < a or first > b for a, b in group):
                group.append((first, last))
                break
        else:
            groups.append([(first, last)])
            items.append((spend.noise_multiplier, 1.0, 1))
    return items


def upgrade_ledger(path: str | os.PathLike[str]) -> Path:
    """Rewrite a version-1 ledger (unkeyed SHA-256) as version 2 under a new node key; returns the key's path.

    The old checksum must hold, and no key may exist yet (an existing key with a version-1
    file means someone replaced a keyed ledger by an unkeyed one: that is refused). The checks
    run once before the lock is taken, so a refused upgrade leaves no file behind (not even the
    lock file), and again under the lock before anything is written.
    """
    path = Path(path)
    _upgradable_state(path)
    with _exclusive_lock(path):
        state = _upgradable_state(path)
        key = _create_key(path)
        try:
            atomic_write_bytes(path.with_name(path.name + ".v1"), read_regular_bytes(path, limit=MAX_LEDGER_BYTES))
            atomic_write_bytes(path, _serialise(state, key))
        except OSError as exc:
            # The version-1 file is unchanged; a new key beside it would make it look replaced.
            with contextlib.suppress(OSError):
                ledger_key_path(path).unlink()
            raise LedgerWriteFailed(
                f"privacy ledger {path} could not be upgraded ({exc.strerror or exc}); it is unchanged. "
                "Free space on its disk and run the upgrade again."
            ) from exc
    logger.info("upgraded privacy ledger %s to version %d (key %s)", path, LEDGER_VERSION, ledger_key_path(path))
    return ledger_key_path(path)


def _upgradable_state(path: Path) -> _State:
    """The state of an intact, unkeyed version-1 ledger at ``path``; LedgerError saying why it is not one."""
    try:
        document = json.loads(read_regular_bytes(path, limit=MAX_LEDGER_BYTES, what=_LEDGER_FILE).decode("utf-8"))
    except FileNotFoundError:
        raise LedgerMissing(f"no privacy ledger at {path}") from None
    except IsADirectoryError:
        raise LedgerCorrupt(f"privacy ledger {path} is unreadable: it is a folder, not a ledger file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else exc
        raise LedgerCorrupt(f"privacy ledger {path} is unreadable or not JSON ({reason}). {_fix_hint(path)}") from None
    if not isinstance(document, dict) or document.get("format") != LEDGER_FORMAT:
        raise LedgerCorrupt(f"{path} is not a MedAlloc privacy ledger. {_fix_hint(path)}")
    if document.get("version") != _UNKEYED_VERSION:
        raise LedgerError(f"privacy ledger {path} is version {document.get('version')!r}; only version 1 is upgraded")
    if ledger_key_path(path).exists():
        raise LedgerCorrupt(
            f"privacy ledger {path} is version 1 but a ledger key {ledger_key_path(path)} exists: a keyed "
            f"ledger was replaced by an unkeyed one. {_fix_hint(path)}"
        )
    body = document.get("body")
    try:
        ok = isinstance(body, dict) and document.get("body_sha256") == _checksum(body)
    except ValueError:
        ok = False
    if not ok:
        raise LedgerCorrupt(
            f"privacy ledger {path} fails its version-1 checksum: it was edited or damaged. {_fix_hint(path)}"
        )
    try:
        return _State.from_body(body)
    except (ValueError, TypeError) as exc:
        raise LedgerCorrupt(f"privacy ledger {path} is malformed ({exc}). {_fix_hint(path)}") from exc


def _serialise(state: _State, key: bytes) -> bytes:
    body = state.to_body()
    document = {
        "format": LEDGER_FORMAT,
        "version": LEDGER_VERSION,
        "body_hmac_sha256": _mac(key, body),
        "body": body,
    }
    return (json.dumps(document, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


def _read_state(path: Path) -> _State:
    """Read and verify the ledger at ``path``; raise LedgerCorrupt / LedgerMissing."""
    backup = path.with_name(path.name + ".bak")
    if not path.exists():
        if backup.exists():
            raise LedgerCorrupt(
                f"privacy ledger {path} is missing but its backup {backup} exists: the ledger "
                f"was deleted or moved. {_fix_hint(path)}"
            )
        raise LedgerMissing(
            f"no privacy ledger at {path}. Check the path (the node's ledger path is in its "
            "config); a ledger is created by the first DP training run on the node."
        )
    try:
        raw = read_regular_bytes(path, limit=MAX_LEDGER_BYTES, what=_LEDGER_FILE)
    except FileTooLarge:
        raise LedgerCorrupt(
            f"privacy ledger {path} is over the {MAX_LEDGER_BYTES} a ledger can reach "
            f"(bytes, counted as read: about a million spends). {_fix_hint(path)}"
        ) from None
    except NotRegularFile as exc:
        raise LedgerCorrupt(f"privacy ledger {path} is unreadable: it {exc.strerror}. {_fix_hint(path)}") from None
    except IsADirectoryError:
        raise LedgerCorrupt(
            f"privacy ledger {path} is unreadable: it is a folder, not a ledger file. {_fix_hint(path)}"
        ) from None
    except OSError as exc:
        raise LedgerCorrupt(f"privacy ledger {path} is unreadable ({exc.strerror or exc}). {_fix_hint(path)}") from None
    try:
        document = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise LedgerCorrupt(
            f"privacy ledger {path} nests its JSON too deeply to be a ledger. {_fix_hint(path)}"
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LedgerCorrupt(
            f"privacy ledger {path} is not valid JSON ({exc}); it may be truncated. {_fix_hint(path)}"
        ) from exc
    if not isinstance(document, dict) or document.get("format") != LEDGER_FORMAT:
        raise LedgerCorrupt(f"{path} is not a MedAlloc privacy ledger. {_fix_hint(path)}")
    version = document.get("version")
    if version == _UNKEYED_VERSION:
        raise LedgerCorrupt(
            f"privacy ledger {path} is version 1, protected by an unkeyed checksum that anyone "
            f"can recompute. Upgrade it once with `medalloc privacy --ledger {path} --upgrade` "
            "(it checks the old checksum, creates the node's ledger key and rewrites the ledger)."
        )
    if version != LEDGER_VERSION:
        raise LedgerCorrupt(
            f"privacy ledger {path} has version {version!r}; this MedAlloc "
            f"reads version {LEDGER_VERSION}. Use the MedAlloc release that wrote it."
        )
    body = document.get("body")
    stored = document.get("body_hmac_sha256")
    key = _read_key(path)
    try:
        actual = _mac(key, body) if isinstance(body, dict) else None
    except ValueError:  # NaN or infinity smuggled into the body
        actual = None
    if actual is None or not isinstance(stored, str) or not hmac.compare_digest(stored, actual):
        raise LedgerCorrupt(
            f"privacy ledger {path} fails its checksum (an HMAC-SHA256 keyed by {ledger_key_path(path)}): "
            f"it was edited or damaged. {_fix_hint(path)}"
        )
    try:
        return _State.from_body(body)
    except (ValueError, TypeError) as exc:
        raise LedgerCorrupt(f"privacy ledger {path} is malformed ({exc}). {_fix_hint(path)}") from exc


class PrivacyLedger:
    """A node's persistent record of every DP spend on its data, enforcing one budget.

    The budget is enforced on the composition of *all* spends on the node, across every
    dataset entry: a changed dataset (new days appended) still holds the earlier records,
    so composing everything is an upper bound for any record. Per-entry epsilon is reported.

    Every read goes to disk (another process may have spent since), is checksum-verified,
    and a corrupt or unreadable file raises :class:`LedgerCorrupt` instead of starting from
    zero. Writes hold an exclusive ``flock`` on ``<path>.lock``, are atomic (temp file, fsync,
    rename, directory fsync) and keep the previous version as ``<path>.bak``.

    Create or attach with :meth:`open`; read an existing ledger for reporting with :meth:`load`.
    """

    def __init__(self, path: Path, state: _State) -> None:
        self.path = path
        self._state = state
        self._epsilon_cache: dict[tuple[HistoryItem, ...], float] = {}
        self._skellam_cache: dict[tuple[tuple[HistoryItem, ...], tuple[SkellamItem, ...]], float] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        epsilon_budget: float,
        delta: float,
        accountant: AccountantName = DEFAULT_ACCOUNTANT,
        allow_budget_change: bool = False,
        unit: str = "window",
        max_stay_days: int | None = None,
        create: bool = True,
    ) -> PrivacyLedger:
        """Open the ledger at ``path``, creating it if absent.

        Parameters
        ----------
        path
            The ledger file (JSON). Its directory must exist and be writable.
        epsilon_budget
            The node's lifetime epsilon budget (> 0). For an existing ledger it must equal
            the stored budget unless ``allow_budget_change`` is True; the change is then
            recorded in the ledger's ``budget_changes``.
        delta
            The delta all epsilons are reported at; must equal an existing ledger's delta
            (epsilons at different deltas cannot be compared or composed here).
        accountant
            ``"prv"`` (default) or ``"rdp"``; must match an existing ledger's accountant.
        allow_budget_change
            Explicit operator consent to change an existing ledger's budget. Default False.
        unit
            What one epsilon protects: ``"patient"`` (a stay of at most ``max_stay_days``
            nights; what a node opens) or ``"window"`` (default, for research on
            window-level DP-SGD and the audit). Must
            match an existing ledger (ledgers written before patient-level accounting are
            ``"window"``).
        max_stay_days
            The stay cap of a patient ledger; must match an existing one (None: not checked).
        create
            False: an absent ledger raises ``LedgerMissing`` instead of being created (a node
            whose state record says it has a ledger).

        Raises
        ------
        LedgerCorrupt
            The file exists but cannot be trusted, or is missing while its backup exists.
        LedgerConfigMismatch
            delta or accountant differ, or the budget differs without consent.
        """
        path = Path(path)
        if isinstance(epsilon_budget, bool) or not (
            isinstance(epsilon_budget, (int, float)) and math.isfinite(epsilon_budget) and epsilon_budget > 0
        ):
            raise ValueError(f"epsilon_budget must be a finite number > 0, got {epsilon_budget!r}")
        if isinstance(delta, bool) or not (isinstance(delta, (int, float)) and 0 < delta < 1):
            raise ValueError(f"delta must be in (0, 1), got {delta!r}")
        if accountant not in ACCOUNTANTS:
            raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
        if not path.parent.is_dir():
            raise LedgerError(f"directory {path.parent} for the privacy ledger does not exist; create it first")
        with _exclusive_lock(path):
            try:
                state = _read_state(path)
            except LedgerMissing:
                if not create:
                    raise
                if ledger_key_path(path).exists():
                    raise LedgerCorrupt(
                        f"privacy ledger {path} is missing but its key {ledger_key_path(path)} exists: the "
                        f"ledger was deleted or moved. {_fix_hint(path)}"
                    ) from None
                state = _State.new(
                    epsilon_budget=float(epsilon_budget),
                    delta=float(delta),
                    accountant=accountant,
                    unit=unit,
                    max_stay_days=max_stay_days,
                )
                key = _create_key(path)
                try:
                    atomic_write_bytes(path, _serialise(state, key))
                except OSError as exc:
                    # The key alone would make the next start report this ledger as "deleted or
                    # moved": remove it (we created it a moment ago, under the lock; nothing uses it).
                    with contextlib.suppress(OSError):
                        ledger_key_path(path).unlink()
                    raise LedgerWriteFailed(
                        f"privacy ledger {path} could not be created ({exc.strerror or exc}); nothing was "
                        "created or spent. Free space on its disk (or make its folder writable) and start again."
                    ) from exc
                logger.info(
                    "created privacy ledger %s (budget epsilon=%g at delta=%g, %s accountant)",
                    path,
                    epsilon_budget,
                    delta,
                    accountant,
                )
                return cls(path, state)
            _remove_stray_temp_files(path)
            if state.delta != float(delta):
                raise LedgerConfigMismatch(
                    f"privacy ledger {path} accounts at delta={state.delta:g}, but delta={delta:g} "
                    "was requested. Use the ledger's delta; epsilons at different deltas cannot "
                    "be composed. A new delta needs a governance decision, not a new ledger."
                )
            if state.accountant != accountant:
                raise LedgerConfigMismatch(
                    f"privacy ledger {path} uses the {state.accountant!r} accountant, but "
                    f"{accountant!r} was requested; configure the node with "
                    f"accountant={state.accountant!r}."
                )
            if state.unit != unit:
                raise LedgerConfigMismatch(
                    f"privacy ledger {path} counts {state.unit}-level epsilon, but a {unit}-level ledger was "
                    "requested. Spends of a window-level ledger bound no patient: a node moving to patient-level "
                    "privacy starts a new ledger at a new path, keeps the old one, and counts its data as spent."
                )
            if max_stay_days is not None and state.max_stay_days is not None and state.max_stay_days != max_stay_days:
                raise LedgerConfigMismatch(
                    f"privacy ledger {path} protects stays of up to {state.max_stay_days} nights, but "
                    f"max-stay-days={max_stay_days} was requested; configure the node with the ledger's value."
                )
            if state.epsilon_budget != float(epsilon_budget):
                if not allow_budget_change:
                    raise LedgerConfigMismatch(
                        f"privacy ledger {path} has budget epsilon={state.epsilon_budget:g}, but "
                        f"{epsilon_budget:g} was requested. A budget is not changed silently: "
                        "configure the node with the ledger's budget, or, if your governance "
                        "approved a change, pass allow_budget_change=True (it is recorded)."
                    )
                change = BudgetChange(_now(), state.epsilon_budget, float(epsilon_budget))
                state = state.replace(
                    epsilon_budget=float(epsilon_budget), budget_changes=(*state.budget_changes, change)
                )
                _commit(path, state)
                logger.warning(
                    "privacy budget of %s changed from %g to %g (recorded in the ledger)",
                    path,
                    change.previous,
                    change.new,
                )
        return cls(path, state)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PrivacyLedger:
        """Open an existing ledger with its stored budget, delta and accountant (for reports).

        Raises
        ------
        LedgerMissing
            Nothing at ``path`` (and no backup).
        LedgerCorrupt
            As for :meth:`open`.
        """
        path = Path(path)
        return cls(path, _read_state(path))

    # ------------------------------------------------------------------ configuration
    @property
    def epsilon_budget(self) -> float:
        """The node's lifetime epsilon budget."""
        return self._refresh().epsilon_budget

    @property
    def delta(self) -> float:
        """The delta every epsilon in this ledger is reported at."""
        return self._state.delta

    @property
    def accountant(self) -> AccountantName:
        """The accountant (``"prv"`` or ``"rdp"``) this ledger composes with."""
        return self._state.accountant

    @property
    def unit(self) -> str:
        """``"patient"``: each epsilon is per stay of <= ``max_stay_days`` nights; ``"window"``: per training window."""
        return self._state.unit

    @property
    def max_stay_days(self) -> int | None:
        """The stay cap of a patient-level ledger."""
        return self._state.max_stay_days

    @property
    def ledger_id(self) -> str:
        """Random id fixed at creation (the node state record keeps it to detect a replaced ledger)."""
        return self._state.ledger_id

    def spends(self) -> list[Spend]:
        """Every spend on the node, oldest first."""
        return sorted(self._refresh().spends(), key=lambda s: s.timestamp)

    @property
    def created(self) -> str:
        """UTC ISO timestamp of the ledger's creation."""
        return self._state.created

    def budget_changes(self) -> tuple[BudgetChange, ...]:
        """Every recorded budget change, oldest first."""
        return self._refresh().budget_changes

    # ------------------------------------------------------------------ queries
    def history(self, fingerprint: str | None = None) -> list[HistoryItem]:
        """Accountant history of one entry, or of the whole node when ``fingerprint`` is None.

        Pass the node's history to ``noise_multiplier_for(history=...)`` to size the noise
        of the next run so that it fits the remaining budget.
        """
        return self._refresh().history(fingerprint)

    def epsilon_spent(self, fingerprint: str | None = None) -> float:
        """Cumulative epsilon at the ledger's delta: the node's (default) or one entry's."""
        return self._epsilon_of(self._refresh(), fingerprint)

    def remaining(self) -> float:
        """Budget minus the node's cumulative epsilon, floored at 0."""
        state = self._refresh()
        return max(0.0, state.epsilon_budget - self._epsilon_of(state))

    def entries(self) -> list[LedgerEntry]:
        """Dataset entries in order of first spend, each with its spends and own epsilon."""
        state = self._refresh()
        ordered = sorted(state.entries.items(), key=lambda kv: (kv[1][0].timestamp if kv[1] else "", kv[0]))
        return [
            LedgerEntry(fingerprint=fp, spends=spends, epsilon=self._epsilon_of(state, fp)) for fp, spends in ordered
        ]

    def projected_epsilon(
        self,
        fingerprint: str,
        *,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        mechanism: str = "dp-sgd-window",
        days: tuple[str, str] | None = None,
        detail: dict[str, float] | None = None,
    ) -> float:
        """The node's cumulative epsilon if this run were recorded (nothing is written).

        ``fingerprint`` names the data entry; the projection composes every entry on the
        node, since the budget is enforced on that.
        """
        _check_fingerprint(fingerprint)
        validate_history_item(noise_multiplier, sample_rate, steps)
        state = self._refresh()
        probe = Spend(
            "",
            "projection",
            float(noise_multiplier),
            float(sample_rate),
            int(steps),
            0.0,
            0.0,
            mechanism,
            days,
            tuple(sorted((detail or {}).items())),
        )
        return self._epsilon_of(state, extra=probe)

    # ------------------------------------------------------------------ the one write
    def spend(
        self,
        fingerprint: str,
        *,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        run_id: str,
        mechanism: str = "dp-sgd-window",
        days: tuple[str, str] | None = None,
        detail: dict[str, float] | None = None,
    ) -> float:
        """Check the node's budget, then record a DP run; return the new cumulative epsilon.

        Call this *before* training (it reserves the spend): if it raises, train nothing.
        ``mechanism`` (one of ``MECHANISMS``) and ``days`` (source releases: first and last
        ISO date released) decide how the spend composes (``composed_history``); ``detail``
        holds numbers for reports only (e.g. the window-level sigma of a DP-SGD run).

        Raises
        ------
        PrivacyBudgetExceeded
            The projected cumulative epsilon exceeds the budget; nothing was written.
        LedgerCorrupt
            The file on disk cannot be trusted; nothing was written.
        """
        _check_fingerprint(fingerprint)
        validate_history_item(noise_multiplier, sample_rate, steps)
        if not isinstance(run_id, str) or not run_id.strip():
            raise ValueError(f"run_id must be a non-empty string, got {run_id!r}")
        if mechanism not in MECHANISMS:
            raise ValueError(f"mechanism must be one of {MECHANISMS}, got {mechanism!r}")
        item = (float(noise_multiplier), float(sample_rate), int(steps))
        with _exclusive_lock(self.path):
            state = _read_state(self.path)  # fresh: another process may have spent
            self._state = state
            if state.unit == "patient" and mechanism == "dp-sgd-window":
                raise ValueError(
                    f"privacy ledger {self.path} counts patient-level epsilon; a window-level DP-SGD spend bounds no "
                    "patient (use mechanism='dp-sgd-patient' with medalloc_core.privacy.patient, "
                    "or a window-level ledger)"
                )
            spent = self._epsilon_of(state)
            draft = Spend(_now(), run_id, *item, 0.0, 0.0, mechanism, days, tuple(sorted((detail or {}).items())))
            if mechanism == SKELLAM_MECHANISM:
                skellam_item(draft)  # its detail is its accounting: refuse a release that lacks it
            projected = self._epsilon_of(state, extra=draft)
            if projected > state.epsilon_budget:
                raise PrivacyBudgetExceeded(
                    f"refused: run {run_id!r} (noise_multiplier={item[0]:g}, "
                    f"sample_rate={item[1]:g}, steps={item[2]}) would take this node's "
                    f"cumulative epsilon from {spent:.4f} to {projected:.4f} at "
                    f"delta={state.delta:g}, above its budget {state.epsilon_budget:g} "
                    f"(remaining {max(0.0, state.epsilon_budget - spent):.4f}). Nothing was "
                    "recorded or trained. Use more noise, fewer steps or a lower sample rate "
                    "(noise_multiplier_for gives the smallest noise that fits), or stop "
                    "training on this data.",
                    projected_epsilon=projected,
                    epsilon_budget=state.epsilon_budget,
                )
            entry_after = self._epsilon_of(state, fingerprint, extra=draft)
            spend = dataclasses.replace(draft, epsilon_entry_after=entry_after, epsilon_node_after=projected)
            entries = dict(state.entries)
            entries[fingerprint] = (*entries.get(fingerprint, ()), spend)
            new_state = state.replace(entries=entries)
            _commit(self.path, new_state)
            self._state = new_state
        logger.info(
            "privacy spend recorded: run %s on %s, node epsilon %.4f of %g (delta=%g)",
            run_id,
            fingerprint[:19],
            projected,
            new_state.epsilon_budget,
            new_state.delta,
        )
        return projected

    # ------------------------------------------------------------------ internals
    def _refresh(self) -> _State:
        self._state = _read_state(self.path)
        return self._state

    def _epsilon(self, history: list[HistoryItem], skellam: tuple[SkellamItem, ...] = ()) -> float:
        key = tuple(compact_history(history))
        if skellam:  # distributed-DP releases: everything composes by Renyi DP (an upper bound)
            both = (key, skellam)
            if both not in self._skellam_cache:
                self._skellam_cache[both] = epsilon_with_skellam(skellam, key, delta=self._state.delta)
            return self._skellam_cache[both]
        if key not in self._epsilon_cache:
            self._epsilon_cache[key] = epsilon_for(key, delta=self._state.delta, accountant=self._state.accountant)
        return self._epsilon_cache[key]

    def _epsilon_of(self, state: _State, fingerprint: str | None = None, *, extra: Spend | None = None) -> float:
        return self._epsilon(state.history(fingerprint, extra=extra), state.skellam(fingerprint, extra=extra))

    def __repr__(self) -> str:
        return f"PrivacyLedger({str(self.path)!r}, accountant={self._state.accountant!r})"


def _check_fingerprint(fingerprint: str) -> None:
    if not isinstance(fingerprint, str) or not fingerprint.strip():
        raise ValueError(f"fingerprint must be a non-empty string (use fingerprint_frame(df)), got {fingerprint!r}")


def _commit(path: Path, state: _State) -> None:
    """Write ``state`` atomically, keeping the current (verified) file as ``<path>.bak``."""
    backup = path.with_name(path.name + ".bak")
    try:
        if path.exists():
            atomic_write_bytes(backup, read_regular_bytes(path, limit=MAX_LEDGER_BYTES, what=_LEDGER_FILE))
        atomic_write_bytes(path, _serialise(state, _read_key(path)))
    except WriteFailed as exc:
        raise LedgerWriteFailed(
            f"privacy ledger {path} could not be written ({exc.strerror}). Nothing was recorded: the ledger on "
            "disk is unchanged and no noise was drawn or data released. Free space on its disk and retry."
        ) from exc


def _remove_stray_temp_files(path: Path) -> None:
    """Delete temp files a crashed writer left behind (we hold the lock: no writer is live)."""
    for stray in path.parent.glob(f".{path.name}.*.tmp"):
        logger.warning("removing %s left by an interrupted ledger write; %s is intact", stray, path)
        with contextlib.suppress(OSError):
            stray.unlink()


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Hold ``flock(LOCK_EX)`` on ``<path>.lock`` so spends of two processes never interleave."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        handle = open(lock_path, "a+b")  # noqa: SIM115 - closed below, after unlocking
    except OSError as exc:
        raise LedgerError(
            f"cannot open the ledger lock file {lock_path} ({exc}); the ledger's directory must be writable by the node"
        ) from exc
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        handle.close()
