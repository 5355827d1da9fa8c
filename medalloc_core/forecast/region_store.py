"""The node's last region: the regional totals its coordinator sent, kept so that a forecast reads what was scored.

In a run with ``context = "region"`` every train and evaluate request carries the node's region
(the other nodes' released daily totals, summed per day: ``forecast.region``). A model trained
on it reads a region channel; without the region a forecast would read that channel as zeros and
give something else than what the evaluation scored. So the node keeps the most recent region it
received beside its release, ``<release-path>.region.json`` (:func:`region_path`), rewritten
atomically on every request that carries one, and ``medalloc forecast`` / ``explain`` /
``node adopt`` join it to the records for a region model (:func:`join_stored_region`) or refuse.

The file is local: it holds the other hospitals' *released* totals (post-processing of their DP
releases, nothing from this node's own counts) and is never sent. A file that is damaged or not
this format is refused with its path and what is wrong (:class:`RegionStoreError`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from medalloc_core.atomic import atomic_write_bytes
from medalloc_core.contract import DATE, UnitRecords
from medalloc_core.forecast.features import REGION_PREFIX, WindowSpec
from medalloc_core.forecast.region import region_from_text, region_to_text, with_region
from medalloc_core.paths import read_regular_bytes

logger = logging.getLogger(__name__)

__all__ = [
    "REGION_CONTEXT",
    "RegionStoreError",
    "StoredRegion",
    "join_stored_region",
    "reads_region",
    "read_region",
    "region_path",
    "store_region",
]

REGION_CONTEXT = "region"  # the WindowSpec.context entry of a model that reads the region channel
STORE_FORMAT = "medalloc-node-region"
STORE_VERSION = 1
MAX_STORE_BYTES = 16 << 20  # 40 years of days of two columns is about 1 MiB; anything far larger is not ours


class RegionStoreError(ValueError):
    """The node's stored region is missing, damaged or not this format (the message names the file)."""


@dataclass(frozen=True)
class StoredRegion:
    """The region a node was last sent: per day and count column, the other nodes' released totals."""

    region: pd.DataFrame  # index: date; one float column per count column (NaN: no node reported that day)
    received: str  # UTC time the node received it (ISO 8601)
    run_tag: str  # the run whose request carried it
    path: Path

    @property
    def last_day(self) -> pd.Timestamp | None:
        """The last day the region reports (None: an empty region)."""
        return pd.Timestamp(self.region.index.max()) if len(self.region) else None


def region_path(release_path: Path) -> Path:
    """Where a node keeps its last region: ``<release-path>.region.json`` (beside ``<ledger>.released.csv``)."""
    return release_path.with_name(release_path.name + ".region.json")


def reads_region(spec: WindowSpec) -> bool:
    """Whether a model of this window spec reads the region channel."""
    return REGION_CONTEXT in tuple(spec.context)


def store_region(path: Path, region: pd.DataFrame, *, run_tag: str) -> None:
    """Replace the stored region with ``region`` (atomic: the old file or the new one, never half)."""
    body = {
        "format": STORE_FORMAT,
        "version": STORE_VERSION,
        "received": datetime.now(UTC).isoformat(timespec="seconds"),
        "run": run_tag,
        "region": json.loads(region_to_text(region)),
    }
    atomic_write_bytes(path, (json.dumps(body, separators=(",", ":")) + "\n").encode("utf-8"), mode=0o600)


def read_region(path: Path) -> StoredRegion:
    """The stored region at ``path``; :class:`RegionStoreError` naming the file when it is missing or damaged."""
    if not path.exists():
        raise RegionStoreError(f"{path}: no stored region (the node has not been sent one)")
    try:
        raw = json.loads(read_regular_bytes(path, limit=MAX_STORE_BYTES, what="the node's stored region (JSON)"))
    except (OSError, ValueError) as exc:
        raise RegionStoreError(
            f"{path} cannot be read ({exc}); the next round of a region run writes it again"
        ) from exc
    if not isinstance(raw, dict) or raw.get("format") != STORE_FORMAT or raw.get("version") != STORE_VERSION:
        raise RegionStoreError(f"{path} is not a MedAlloc node region (format {STORE_FORMAT} v{STORE_VERSION})")
    try:
        region = region_from_text(json.dumps(raw.get("region")), what=str(path))
    except ValueError as exc:
        raise RegionStoreError(str(exc)) from exc
    return StoredRegion(region, str(raw.get("received", "")), str(raw.get("run", "")), path)


def join_stored_region(records: UnitRecords, spec: WindowSpec, stored: StoredRegion | None) -> UnitRecords:
    """``records`` with the stored region joined by date, as the node's rounds joined it (a region model only).

    A model that does not read the region gets ``records`` unchanged. A region model without a
    stored region raises :class:`RegionStoreError`: its region channel would read zeros, which is
    not the model that was scored. A region that ends before the records do is logged as a
    warning: the channel carries its last known day forward until the next round refreshes it.
    """
    if not reads_region(spec):
        return records
    if stored is None:
        raise RegionStoreError(
            "the model reads the region (context 'region': the other hospitals' released totals) but no stored "
            "region was given; a node keeps the last one its coordinator sent in <release-path>.region.json"
        )
    present = [c for c in spec.targets if c in stored.region.columns]
    if not present or stored.last_day is None:
        raise RegionStoreError(f"{stored.path}: the stored region has no days of {list(spec.targets)}")
    last_record = pd.Timestamp(records.frame[DATE].max())
    if stored.last_day < last_record:
        logger.warning(
            "the stored region (%s, received %s) ends %s, %d day(s) before the records (%s): its last day is "
            "carried forward until the next round of the federation sends a newer one",
            stored.path,
            stored.received or "?",
            stored.last_day.date(),
            (last_record - stored.last_day).days,
            last_record.date(),
        )
    joined = with_region(records, stored.region)
    missing = [REGION_PREFIX + t for t in spec.targets if REGION_PREFIX + t not in joined.frame.columns]
    if missing:
        raise RegionStoreError(f"{stored.path}: the stored region lacks {missing}")
    return joined
