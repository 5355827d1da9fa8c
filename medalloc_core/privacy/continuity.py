"""A node that keeps going: new days join its release; released days that changed, vanished or never came are told.

A node's source (a daily-count file, an encounter file, an OMOP or FHIR export) grows every week.
Each (unit, day) is released once (``ReleaseStore``); new days are released later at the *same*
noise, and the ledger composes releases at one noise multiplier over disjoint days as ONE
Gaussian (``ledger.composed_history``). That costs no extra epsilon per patient exactly when the
union of the releases moves, for every patient, at most what one release may move: at most
``A`` admission and ``A`` discharge counts and ``N`` census counts (per stay: one stay's), each
by 1 (docs/privacy.md, "A node that keeps going"). Disjoint days make the coordinates distinct,
so a stay that spans the boundary between two releases is fine: its nights before and after
compose in quadrature, within its one cap. What can break it is the per-patient cut: it runs over
the node's whole current data at each release, so if records of already released days change
(a late record, a correction, a file that shrinks) a patient's cut may now keep other stays, and
the old release plus the new days could exceed the caps.

This module, before new days are released:

* **patients** (sources with patient ids): keeps a pseudonymous tally ``<release>.patients.json``
  of what each patient has contributed to the released days (admissions, discharges, census
  nights) and cuts each patient's contributions to the new days to what the caps leave. The
  union of all releases then moves, per patient, at most what one release may: the releases
  compose as one Gaussian, exactly, whatever happened to the records of released days. The cut
  is per patient and inside the noise, so nothing sent (the ledger's epsilon included) depends
  on it. Without a tally (releases made before tallies were kept, or a lost tally) the new days
  start a new *epoch*: the ledger charges them as a separate release, a decision made on the
  presence of a file, never on the data.
* **days** ``<release>.days.csv``: keeps a digest of every released (unit, day)'s true counts as
  released. A digest that differs now is a late correction, a released day missing from the data
  is a file that shrank: the released value stays (never released twice), the correction is not
  released, and the node says so. For daily-count files (no patient ids, privacy per stay) this is
  all it can do: docs/privacy.md says what a corrected stay then gets.
* **gaps**: days between a unit's last released day and its first new one that are not in the
  data are released when they arrive, as disjoint days (no extra charge); the node says so.

Nothing here leaves the node. The tally keys patients by a salted hash (the salt is random and
kept in the tally file); the digests are hashes of counts. What happened is appended to
``<release>.events.jsonl``, which ``medalloc privacy`` shows. The tally and digests of a release
are staged beside its intent record and committed with it (``privacy.transaction``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medalloc_core.atomic import atomic_write_bytes
from medalloc_core.contract import ADMISSIONS, ADMIT_TIME, CENSUS, DATE, DISCHARGE_TIME, DISCHARGES, PATIENT_ID, UNIT
from medalloc_core.paths import read_regular_bytes

__all__ = [
    "Continuation",
    "PatientContributions",
    "commit_pending",
    "continuation",
    "drop_pending",
    "read_events",
]

logger = logging.getLogger(__name__)

_MAX_TALLY_BYTES = 256 * 2**20
_MAX_EVENTS_BYTES = 16 * 2**20
_HASH_KEY_CHARS = 16  # pandas' hash_key is 16 bytes


def tally_path(store_path: Path) -> Path:
    """The patient tally of the current epoch: ``<release>.patients.json``."""
    return store_path.with_name(store_path.name + ".patients.json")


def days_path(store_path: Path) -> Path:
    """Digests of the released days: ``<release>.days.csv``."""
    return store_path.with_name(store_path.name + ".days.csv")


def events_path(store_path: Path) -> Path:
    """What happened to the release over time, one JSON line per event: ``<release>.events.jsonl``."""
    return store_path.with_name(store_path.name + ".events.jsonl")


def _pending(path: Path) -> Path:
    return path.with_name(path.name + ".pending")


# ----------------------------------------------------------------------------- contributions
class PatientContributions:
    """Every count one patient adds to the node's counts after the per-patient cut: one row per (patient, unit,
    day, column) in :attr:`frame`. Built from the kept stays (``contribution.bound_contributions``) on the node's
    calendar, and only when new days are released (a round with nothing new never builds it)."""

    def __init__(
        self, kept: pd.DataFrame, *, start: pd.Timestamp, end: pd.Timestamp, admissions_cap: int, nights_cap: int
    ) -> None:
        self._kept, self._start, self._end = kept, start, end
        self.admissions_cap = admissions_cap  # A = max-patient-stays + max-patient-transfers
        self.nights_cap = nights_cap  # N = max-patient-nights

    @classmethod
    def of_stays(
        cls, kept: pd.DataFrame, *, start: pd.Timestamp, end: pd.Timestamp, admissions_cap: int, nights_cap: int
    ) -> PatientContributions:
        """The contributions of ``kept`` stays (``patient_id``, ``unit``, ``admit_time``, ``discharge_time``)."""
        return cls(kept, start=start, end=end, admissions_cap=admissions_cap, nights_cap=nights_cap)

    @functools.cached_property
    def frame(self) -> pd.DataFrame:
        """Columns patient_id, unit, date (midnight), column; days in [start, end].

        Census: the nights d with admit day <= d < discharge day (open stays: through ``end``), as
        ``encounters_to_daily`` counts them.
        """
        kept, start, end = self._kept, self._start, self._end
        pid = kept[PATIENT_ID].astype(str).to_numpy()
        unit = kept[UNIT].astype(str).to_numpy()
        admit = pd.to_datetime(kept[ADMIT_TIME]).dt.normalize()
        discharge = pd.to_datetime(kept[DISCHARGE_TIME]).dt.normalize()
        parts = []
        for column, day in ((ADMISSIONS, admit), (DISCHARGES, discharge)):
            inside = ((day >= start) & (day <= end) & day.notna()).to_numpy()
            parts.append(
                pd.DataFrame(
                    {PATIENT_ID: pid[inside], UNIT: unit[inside], DATE: day.to_numpy()[inside], "column": column}
                )
            )
        first = admit.clip(lower=start)
        last = (discharge - pd.Timedelta(days=1)).fillna(end).clip(upper=end)
        nights = ((last - first).dt.days + 1).clip(lower=0).to_numpy().astype(int)
        rows = np.repeat(np.arange(len(kept)), nights)
        offsets = np.arange(len(rows)) - np.repeat(np.cumsum(nights) - nights, nights)
        parts.append(
            pd.DataFrame(
                {
                    PATIENT_ID: pid[rows],
                    UNIT: unit[rows],
                    DATE: first.to_numpy()[rows] + offsets.astype("timedelta64[D]"),
                    "column": CENSUS,
                }
            )
        )
        frame = pd.concat(parts, ignore_index=True)
        frame[DATE] = pd.to_datetime(frame[DATE]).astype("datetime64[ns]")
        return frame

    def on(self, keys: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
        """The rows on the (date, unit) ``keys`` and in the released ``columns``."""
        wanted = pd.MultiIndex.from_frame(keys[[UNIT, DATE]].assign(**{DATE: pd.to_datetime(keys[DATE])}))
        frame = self.frame[self.frame["column"].isin(columns)]
        return frame[pd.MultiIndex.from_frame(frame[[UNIT, DATE]]).isin(wanted)]


def _pseudonyms(ids: pd.Series, salt: str) -> pd.Series:
    hashed = pd.util.hash_pandas_object(ids.astype(str), index=False, hash_key=salt)
    return pd.Series([f"{int(h):016x}" for h in hashed.to_numpy()], index=ids.index)


# ----------------------------------------------------------------------------- day digests
def day_digests(records: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """One digest per (unit, day): a hash of its true counts of ``columns`` (columns unit, date ISO, digest)."""
    frame = records[[UNIT, DATE, *columns]].copy()
    values = frame[list(columns)].astype("int64")
    hashed = pd.util.hash_pandas_object(values, index=False)
    return pd.DataFrame(
        {
            UNIT: frame[UNIT].astype(str).to_numpy(),
            DATE: pd.to_datetime(frame[DATE]).dt.strftime("%Y-%m-%d").to_numpy(),
            "digest": [f"{int(h):016x}" for h in hashed.to_numpy()],
        }
    )


def _read_days(path: Path) -> pd.DataFrame:
    if not path.exists():
        return pd.DataFrame({UNIT: [], DATE: [], "epoch": [], "digest": []}).astype(
            {UNIT: str, DATE: str, "epoch": "int64", "digest": str}
        )
    frame = pd.read_csv(path, dtype={UNIT: str, DATE: str, "digest": str}, keep_default_na=False, na_values=[])
    frame["epoch"] = frame["epoch"].astype("int64")
    return frame


def _days_bytes(frame: pd.DataFrame) -> bytes:
    return str(frame[[UNIT, DATE, "epoch", "digest"]].to_csv(index=False)).encode()


def _read_tally(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    raw = json.loads(read_regular_bytes(path, limit=_MAX_TALLY_BYTES, what="a patient tally (JSON)"))
    if not isinstance(raw, dict) or raw.get("format") != "medalloc-patient-tally":
        raise ValueError(f"{path} is not a MedAlloc patient tally")
    return raw


# ----------------------------------------------------------------------------- the check
@dataclass
class Continuation:
    """What a release of new days finds (``continuation``): its epoch, what to report, what to stage with it."""

    epoch: int
    missing: pd.DataFrame | None = None  # the true counts to release (patient sources: cut to the tally's room)
    events: list[dict[str, Any]] = field(default_factory=list)
    staged: dict[Path, bytes] = field(default_factory=dict)  # pending tally and digests, committed with the release

    @property
    def lines(self) -> list[str]:
        """The events in plain words (the node log and ``medalloc privacy``)."""
        return [str(e["message"]) for e in self.events]


def _span(keys: Sequence[tuple[str, str]]) -> str:
    first, last = min(keys, key=lambda k: k[1]), max(keys, key=lambda k: k[1])
    units = sorted({u for u, _ in keys})
    shown = ", ".join(units[:4]) + (f" and {len(units) - 4} more" if len(units) > 4 else "")
    return f"{len(keys)} unit-day(s) between {first[1]} and {last[1]} (unit(s) {shown})"


def _last_epoch(ledger_spends: Sequence[Any]) -> int:
    epochs = [int(dict(s.detail).get("epoch", 0)) for s in ledger_spends if s.mechanism == "source-release"]
    return max(epochs, default=0)


def continuation(
    store_path: Path,
    *,
    released: pd.DataFrame,
    records: pd.DataFrame,
    missing: pd.DataFrame,
    columns: Sequence[str],
    ledger_spends: Sequence[Any],
    contributions: PatientContributions | None,
) -> Continuation:
    """Check the node's current data against what it released; decide the epoch of the release of ``missing``.

    ``released``: the store's rows (date, unit, ...); ``records``: the node's true counts now;
    ``missing``: the rows of ``records`` not released yet (what is about to be released);
    ``contributions``: per-patient rows (None for daily counts: privacy per stay).
    """
    epoch = _last_epoch(ledger_spends)
    result = Continuation(epoch)
    first_release = released.empty
    days = _read_days(days_path(store_path))
    now = day_digests(records, columns)
    # ---- released days: corrected, vanished, unchecked
    if not first_release:
        released_keys = pd.DataFrame(
            {UNIT: released[UNIT].astype(str), DATE: pd.to_datetime(released[DATE]).dt.strftime("%Y-%m-%d")}
        )
        joined = released_keys.merge(days, on=[UNIT, DATE], how="left").merge(
            now.rename(columns={"digest": "now"}), on=[UNIT, DATE], how="left"
        )
        unchecked = joined[joined["digest"].isna()]
        vanished = joined[joined["digest"].notna() & joined["now"].isna()]
        corrected = joined[joined["digest"].notna() & joined["now"].notna() & (joined["digest"] != joined["now"])]
        if len(corrected):
            keys = list(zip(corrected[UNIT], corrected[DATE], strict=True))
            result.events.append(
                {
                    "event": "corrected",
                    "count": len(keys),
                    "message": f"late correction: {_span(keys)} already released now hold other counts in the node's "
                    "data; their released values stay (a day is never released twice) and the correction is not "
                    "released",
                }
            )
        if len(vanished):
            keys = list(zip(vanished[UNIT], vanished[DATE], strict=True))
            result.events.append(
                {
                    "event": "vanished",
                    "count": len(keys),
                    "message": f"the node's data shrank: {_span(keys)} already released are no longer in it; their "
                    "released values stay and are still trained on; nothing is released for them again",
                }
            )
        if len(unchecked):
            keys = list(zip(unchecked[UNIT], unchecked[DATE], strict=True))
            result.events.append(
                {
                    "event": "unchecked",
                    "count": len(keys),
                    "message": f"{_span(keys)} were released before this node kept digests of released days: "
                    "a change to them cannot be seen",
                }
            )
    # ---- gaps: days between a unit's last released day and its first new day, absent from the data
    if not first_release and len(missing):
        last = released.assign(**{DATE: pd.to_datetime(released[DATE])}).groupby(UNIT)[DATE].max()
        first_new = missing.assign(**{DATE: pd.to_datetime(missing[DATE])}).groupby(UNIT)[DATE].min()
        gaps = []
        for unit_name, start in first_new.items():
            if unit_name in last.index and (start - last[unit_name]).days > 1:
                gaps.append((str(unit_name), last[unit_name] + pd.Timedelta(days=1), start - pd.Timedelta(days=1)))
        if gaps:
            words = "; ".join(f"unit {u}: {a:%Y-%m-%d}..{b:%Y-%m-%d}" for u, a, b in gaps[:4])
            result.events.append(
                {
                    "event": "gap",
                    "count": sum((b - a).days + 1 for _, a, b in gaps),
                    "message": f"a gap: no data for {words}{' and more' if len(gaps) > 4 else ''}; the days after it "
                    "are released now, the missing ones when they arrive (disjoint days: no extra charge)",
                }
            )
    if not len(missing):
        return result
    new_keys = missing[[UNIT, DATE]]
    result.missing = missing
    # ---- patients: the new days' contributions cut to what the caps leave (daily counts: per stay, see module doc)
    if contributions is not None:
        result.epoch, result.missing = _patient_trim(
            store_path, result, contributions, missing, columns, epoch, first_release
        )
    # ---- stage the digests of the new days (and the tally, above), committed with the release
    new_digests = now.merge(
        pd.DataFrame(_key_list(new_keys), columns=[UNIT, DATE]), on=[UNIT, DATE], how="inner"
    ).assign(epoch=result.epoch)
    result.staged[_pending(days_path(store_path))] = _days_bytes(pd.concat([days, new_digests], ignore_index=True))
    return result


def _key_list(keys: pd.DataFrame) -> list[tuple[str, str]]:
    return list(zip(keys[UNIT].astype(str), pd.to_datetime(keys[DATE]).dt.strftime("%Y-%m-%d"), strict=True))


def _patient_trim(
    store_path: Path,
    result: Continuation,
    contributions: PatientContributions,
    missing: pd.DataFrame,
    columns: Sequence[str],
    epoch: int,
    first_release: bool,
) -> tuple[int, pd.DataFrame]:
    """The epoch and true counts of the new days for a patient source: each patient's new contributions cut to
    what the caps leave after the epoch's earlier releases (the tally), so the union never exceeds the caps.

    The cut is a function of each patient's own records only, so the released counts stay the Gaussian
    mechanism of the one per-patient sensitivity: nothing data-dependent decides a charge.
    """
    tally = None
    if not first_release:
        try:
            tally = _read_tally(tally_path(store_path))
        except (OSError, ValueError) as exc:
            result.events.append(
                {"event": "tally-unreadable", "count": 0, "message": f"the patient tally cannot be read ({exc})"}
            )
        if tally is not None and int(tally.get("epoch", -1)) != epoch:
            tally = None  # a tally of another epoch (e.g. a ledger restored from backup): cannot be used
    salt = str(tally["salt"]) if tally else secrets.token_hex(_HASH_KEY_CHARS // 2)
    rows = contributions.on(missing[[UNIT, DATE]], columns)
    rows = rows.assign(p=_pseudonyms(rows[PATIENT_ID], salt)).sort_values(["p", "column", DATE], kind="stable")
    caps = {ADMISSIONS: contributions.admissions_cap, DISCHARGES: contributions.admissions_cap}
    caps[CENSUS] = contributions.nights_cap
    old = pd.DataFrame(columns=[ADMISSIONS, DISCHARGES, CENSUS], dtype="int64")
    next_epoch = epoch
    if not first_release and tally is None:
        # Which patients the earlier release counted is unknown: the new days are a separate release,
        # charged apart (a decision on the presence of a file, never on the data).
        result.events.append(
            {
                "event": "no-tally",
                "count": 0,
                "message": "the node has no tally of what each patient contributed to its earlier releases (they "
                "were made before tallies were kept, or the tally was lost): the new days are charged as a "
                f"separate release (epoch {epoch + 1}), composed with the earlier ones in the ledger",
            }
        )
        next_epoch = epoch + 1
    elif tally is not None:
        old = pd.DataFrame.from_dict(
            tally["patients"], orient="index", columns=[ADMISSIONS, DISCHARGES, CENSUS]
        ).astype("int64")
    # Allowance per (patient, column): what the caps leave; the patient's latest rows beyond it are cut.
    left = pd.Series(
        [caps[c] - int(old[c].get(p, 0)) for p, c in zip(rows["p"], rows["column"], strict=True)], index=rows.index
    )
    rank = rows.groupby(["p", "column"], sort=False).cumcount()
    cut = rows[rank >= left.clip(lower=0)]
    frame = missing.copy()
    if len(cut):
        drop = cut.groupby([UNIT, DATE, "column"]).size()
        index = pd.MultiIndex.from_frame(frame[[UNIT, DATE]].assign(**{DATE: pd.to_datetime(frame[DATE])}))
        for column in columns:
            sub = drop.xs(column, level="column") if column in drop.index.get_level_values("column") else None
            if sub is not None:
                frame[column] = frame[column].to_numpy() - sub.reindex(index, fill_value=0).to_numpy()
        result.events.append(
            {
                "event": "tally-cut",
                "count": len(cut),
                "message": f"{cut['p'].nunique()} patient(s) had already contributed to the released days what the "
                f"per-patient caps allow (admissions {caps[ADMISSIONS]}, census nights {caps[CENSUS]}): "
                f"{len(cut)} of their counts on the new days are left out (a late record or a correction of "
                "released days, or a stay spanning the boundary)",
            }
        )
    kept = rows.drop(index=cut.index)
    new = kept.groupby(["p", "column"]).size().unstack(fill_value=0)
    for column in (ADMISSIONS, DISCHARGES, CENSUS):
        if column not in new.columns:
            new[column] = 0
    joined = new[[ADMISSIONS, DISCHARGES, CENSUS]].astype("int64")
    if next_epoch == epoch:
        joined = old.add(joined, fill_value=0).astype("int64")
    body = {
        "format": "medalloc-patient-tally",
        "epoch": next_epoch,
        "salt": salt,
        "patients": {str(k): [int(v) for v in row] for k, row in joined.iterrows()},
        # the cut's effect on the new days' counts: a release redrawn after a kill applies it again
        "cuts": [
            [str(u), pd.Timestamp(d).strftime("%Y-%m-%d"), str(c), int(n)]
            for (u, d, c), n in (cut.groupby([UNIT, DATE, "column"]).size().items() if len(cut) else [])
        ],
    }
    result.staged[_pending(tally_path(store_path))] = (json.dumps(body, sort_keys=True) + "\n").encode()
    return next_epoch, frame


def apply_pending_cuts(store_path: Path, frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` (true counts of an interrupted release, redrawn now) with its staged tally cuts applied."""
    try:
        tally = _read_tally(_pending(tally_path(store_path)))
    except (OSError, ValueError):
        tally = None
    if not tally or not tally.get("cuts"):
        return frame
    frame = frame.copy()
    dates = pd.to_datetime(frame[DATE]).dt.strftime("%Y-%m-%d")
    for unit_name, day, column, n in tally["cuts"]:
        mask = (frame[UNIT].astype(str) == unit_name) & (dates == day)
        if column in frame.columns:
            frame.loc[mask, column] = frame.loc[mask, column] - int(n)
    return frame


# ----------------------------------------------------------------------------- staging with the transaction
def stage(continuation_: Continuation | None) -> Mapping[Path, bytes]:
    """The files to write with the release's intent record (pending tally and digests)."""
    return {} if continuation_ is None else dict(continuation_.staged)


def commit_pending(store_path: Path) -> None:
    """After the release joined the store: the pending tally and digests become the current ones."""
    for path in (tally_path(store_path), days_path(store_path)):
        pending = _pending(path)
        if pending.exists():
            os.replace(pending, path)


def drop_pending(store_path: Path) -> None:
    """A release that was never charged: its pending tally and digests go."""
    for path in (tally_path(store_path), days_path(store_path)):
        with contextlib.suppress(FileNotFoundError):
            _pending(path).unlink()


def record_events(store_path: Path, hospital_id: str, events: Sequence[Mapping[str, Any]]) -> None:
    """Append ``events`` to ``<release>.events.jsonl`` (read by ``medalloc privacy``) and log them."""
    path = events_path(store_path)
    # Every round reads the data again: an event told already (same kind, same words) is not told again.
    told = {(e.get("event"), e.get("message")) for e in read_events(store_path)[-50:]} if path.exists() else set()
    events = [e for e in events if (e.get("event"), e.get("message")) not in told]
    if not events:
        return
    when = datetime.now(UTC).isoformat(timespec="seconds")
    lines = [json.dumps({"time": when, **dict(e)}, sort_keys=True) for e in events]
    old = read_regular_bytes(path, limit=_MAX_EVENTS_BYTES) if path.exists() else b""
    atomic_write_bytes(path, old + ("\n".join(lines) + "\n").encode())
    for e in events:
        logger.warning("%s: %s", hospital_id, e["message"])


def read_events(store_path: Path) -> list[dict[str, Any]]:
    """The events recorded for the release at ``store_path`` (empty when none)."""
    path = events_path(store_path)
    if not path.exists():
        return []
    return [
        json.loads(line)
        for line in read_regular_bytes(path, limit=_MAX_EVENTS_BYTES).decode().splitlines()
        if line.strip()
    ]
