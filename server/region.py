"""The coordinator's regional series: the nodes' released daily totals, summed, sent back to each node.

In a run whose window spec reads the region (run config ``context`` with ``"region"``) every node
adds its *released* daily totals to its replies (``protocol.RELEASED_TOTALS``; a node may refuse
with ``share-released-totals = false``). They are post-processing of each node's one source
release, so they cost no privacy; the coordinator already receives a model trained on them. This
module keeps the latest totals per node, and before every train and evaluate request stamps
each message with the region of the *other* nodes (``protocol.REGION``): the sum per day and
count column over the nodes that reported that day (docs/coordinator.md, "The region").

What the coordinator sees: each sharing node's released totals per day, which it could not
compute before (docs/privacy.md, "The region"). With ``region-secure-aggregation = true`` it
sees only the sum instead (``server.secure_region``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import pandas as pd
from flwr.app import ConfigRecord, Message, RecordDict

from medalloc_core import protocol
from medalloc_core.contract import COUNT_COLUMNS
from medalloc_core.forecast.region import parse_totals, region_to_text, region_totals

# Under Flower's logger, like the coordinator's round lines: who shares shows in `flwr log`.
logger = logging.getLogger("flwr.medalloc.region")

__all__ = ["RegionCollector"]


def released_totals(replies: Iterable[Message], *, what: str) -> Iterator[tuple[int, pd.DataFrame]]:
    """``(node id, its released daily totals)`` of every reply that carries them; a malformed record is logged
    and skipped (the reply's other content is judged by the reply checks as before)."""
    for message in replies:
        if message.has_error():
            continue
        record = message.content.config_records.get(protocol.RELEASED_TOTALS)
        if record is None:
            continue
        node = int(message.metadata.src_node_id)
        try:
            yield node, parse_totals(dict(record), COUNT_COLUMNS, what=f"node {node}'s {what}")
        except ValueError as exc:
            logger.warning("%s; ignored", exc)


class RegionCollector:
    """The latest released totals of each node (by Flower node id) and the region each node is sent."""

    def __init__(self) -> None:
        self.totals: dict[int, pd.DataFrame] = {}

    def __len__(self) -> int:
        return len(self.totals)

    def collect(self, replies: Iterable[Message]) -> int:
        """Read the released totals of every reply that carries them; return how many were read.

        A malformed record is logged and ignored (the node's other content is judged by the reply
        checks as before); a node's newer totals replace its older ones.
        """
        read = 0
        for node, frame in released_totals(replies, what="released totals"):
            if node not in self.totals:
                logger.info("region: node %s shares its released totals (%d days)", node, len(frame))
            self.totals[node] = frame
            read += 1
        return read

    def region(self, exclude: int | None = None) -> pd.DataFrame:
        """Per day and count column, the sum of the totals of every node but ``exclude`` (NaN: none reported).

        A day is the sum over the nodes that released that day, so a node whose series starts later
        (or ends earlier) counts only on its own days; each value is a sum of releases of that same day.
        """
        frames = {str(n): t for n, t in self.totals.items() if n != exclude}
        return region_totals(frames)

    def stamp(self, messages: Iterable[Message]) -> list[Message]:
        """Give every request its node's region (the others' totals) under ``protocol.REGION`` in its config.

        Flower's strategies send one shared ``RecordDict`` to every node: each message gets its own copy
        of the config record (the arrays are shared, not copied). Nothing is added before any node shared.
        """
        out = list(messages)
        if not self.totals:
            return out
        for message in out:
            region = self.region(exclude=int(message.metadata.dst_node_id))
            if region.empty:
                continue
            content = message.content
            records: dict[str, object] = {}
            for name, record in content.items():
                if name == protocol.CONFIG and isinstance(record, ConfigRecord):
                    record = ConfigRecord({**dict(record), protocol.REGION: region_to_text(region)})
                records[name] = record
            message.content = RecordDict(records)  # type: ignore[arg-type]
        return out
