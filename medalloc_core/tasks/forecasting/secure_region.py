"""A forecasting node's side of the region under secure aggregation (``medalloc_core.forecast.secure_region``).

The coordinator proposes (run config ``region-secure-aggregation = true``); the node agrees in its
own node config (``region-secure-aggregation = true``; a virtual node of a simulation follows the
run), else it refuses the sum with ``secure-aggregation-not-agreed`` and is left out of it. Three
things change on a node in such a run:

- its train and evaluate replies carry its released totals' *days* only (public: its calendar),
  never the values (``totals_record``);
- in the SecAgg+ round it encodes its released daily totals over the coordinator's window
  (``region_share``), read from its release store: post-processing of its one release, no epsilon;
- a later request carries the regional total; the node subtracts its own share and joins the
  others' sum to its records as the region (``region_from_total``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from medalloc_core import protocol
from medalloc_core.contract import DATE
from medalloc_core.forecast.secure_region import RegionWindow, dates_only, encode, others, total_from_text
from medalloc_core.privacy.release import ReleaseStore, ReleaseStoreError
from medalloc_core.protocol import Refusal
from medalloc_core.tasks.base import NodeReply, NodeTask, TaskRefused

logger = logging.getLogger(__name__)

__all__ = ["NODE_AGREES", "node_agrees", "own_totals", "region_from_total", "region_share", "secure_totals"]

NODE_AGREES = "region-secure-aggregation"  # node config: the node's consent, never the coordinator's


def node_agrees(settings: Mapping[str, Any], *, simulated: bool) -> bool:
    """Whether the node's own config consents to summing its released totals under SecAgg+ (a virtual node: yes)."""
    if simulated:
        return True
    value = settings.get(NODE_AGREES, False)
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def secure_totals(request: Mapping[str, Any], settings: Mapping[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """The totals record a reply carries: the days only when the run sums the region securely or the node insists."""
    if request.get(protocol.REGION_SECURE) is True or node_agrees(settings, simulated=False):
        return dates_only(record)
    return record


def own_totals(release_path: Any, columns: tuple[str, ...]) -> pd.DataFrame:
    """The node's released daily totals from its release store (index date, ``columns`` it released).

    The store is the one release every later round post-processes; reading it here gives the
    SecAgg+ round and the subtraction afterwards the very same numbers. Days where a column is not
    known are left out, as ``region.totals_record`` does.
    """
    store = ReleaseStore.open(release_path)
    if store.plan is None or store.frame.empty:
        return pd.DataFrame(columns=list(columns), dtype="float64")
    kept = [c for c in columns if c in store.plan.columns]
    totals = store.frame.groupby(DATE)[kept].sum(min_count=1).astype("float64").dropna(how="any")
    totals.index = pd.DatetimeIndex(totals.index)
    return totals


def region_share(node: Any, settings: NodeTask, request: Mapping[str, Any]) -> NodeReply:
    """The node's vector for the SecAgg+ sum of the region; ``node`` is its ``ForecastNode``.

    Raises ``TaskRefused`` when the node does not agree, has not released yet, or the proposal is malformed.
    """
    if not node_agrees(node.settings, simulated=node.simulated):
        raise TaskRefused(
            Refusal.SECURE_AGGREGATION_NOT_AGREED, protocol.REFUSAL_REASONS[Refusal.SECURE_AGGREGATION_NOT_AGREED]
        )
    try:
        window = RegionWindow.from_dict(request)
    except ValueError as exc:
        raise TaskRefused(
            Refusal.REQUEST_INVALID, protocol.REFUSAL_REASONS[Refusal.REQUEST_INVALID].format(what=str(exc))
        ) from exc
    try:
        totals = own_totals(node.release_path, tuple(c for c in node.release_columns if c in window.columns))
    except ReleaseStoreError as exc:
        logger.error("%s: %s", node.hospital_id, exc)
        raise TaskRefused(Refusal.LEDGER_CORRUPT, protocol.REFUSAL_REASONS[Refusal.LEDGER_CORRUPT]) from exc
    try:
        share = encode(totals, window)
    except ValueError as exc:
        logger.error("%s: %s", node.hospital_id, exc)
        raise TaskRefused(Refusal.DATA_INVALID, protocol.REFUSAL_REASONS[Refusal.DATA_INVALID]) from exc
    logger.info(
        "%s: released totals of %d days summed under SecAgg+ (%d-day window from %s); the coordinator sees the sum",
        node.hospital_id,
        len(totals),
        window.days,
        window.first.date(),
    )
    return NodeReply({}, {"share": share.astype(np.float64)})


def region_from_total(node: Any, request: Mapping[str, Any]) -> pd.DataFrame | None:
    """The others' sum from the regional total a request carries (None: the request carries none).

    A total that is not what ``total_to_text`` writes is the coordinator's malformed request.
    """
    text = request.get(protocol.REGION_TOTAL)
    if text is None:
        return None
    what = f"'{protocol.REGION_TOTAL}'"
    try:
        if not isinstance(text, str):
            raise ValueError(f"{what} must be a string")
        total = total_from_text(text, what=what)
        own = own_totals(node.release_path, tuple(c for c in node.release_columns if c in total.window.columns))
    except ValueError as exc:
        raise TaskRefused(
            Refusal.REQUEST_INVALID, protocol.REFUSAL_REASONS[Refusal.REQUEST_INVALID].format(what=str(exc))
        ) from exc
    return others(total, own, included=request.get(protocol.REGION_INCLUDED) is True)
