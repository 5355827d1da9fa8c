"""The coordinator's region under secure aggregation: the nodes' released totals summed by Flower's SecAgg+.

With ``region-secure-aggregation = true`` (and context ``"region"``) the coordinator never holds a
node's daily series. The nodes' replies carry only the *days* of their released totals (public:
their calendars); from those the coordinator proposes a window, runs one SecAgg+ round in
Flower's legacy workflow (as ``server.secure`` does for the equipment task) in which every
consenting node's vector is its totals over that window (``medalloc_core.forecast.secure_region``),
and learns only the modular sum: the regional total and, per day, how many nodes reported. It
stamps that total on every later request; each node subtracts its own share.

A sum over fewer than ``MIN_NODES`` vectors would be one node's series: Flower's reconstruction
threshold halts such a round and, should it not, it is refused here; the region then stays
unchanged (or absent) and the run trains without it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server import ServerConfig
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow import DefaultWorkflow
from flwr.serverapp import Grid

from medalloc_core import protocol
from medalloc_core.contract import COUNT_COLUMNS
from medalloc_core.forecast.secure_region import RegionTotal, RegionWindow, decode, total_to_text

from .region import released_totals
from .secure import decode_sum, secagg_workflow

logger = logging.getLogger("flwr.medalloc.region")

__all__ = ["MIN_NODES", "SecureRegion"]

MIN_NODES = 2  # fewer vectors in a sum would hand the coordinator one node's series


@dataclass
class RegionSumStrategy(Strategy):
    """A legacy strategy for one SecAgg+ round whose vectors are the nodes' totals over ``window``."""

    window: RegionWindow
    run_tag: str
    min_nodes: int
    wait: float
    total: RegionTotal | None = None
    summed: set[int] = field(default_factory=set)

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return ndarrays_to_parameters([np.zeros(1)])  # nothing global: the nodes send their own totals

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        client_manager.num_available()  # Flower's legacy manager registers the connected nodes on this call
        if not client_manager.wait_for(self.min_nodes, timeout=int(self.wait)):
            logger.error("region: fewer than %s nodes connected; no secure sum", self.min_nodes)
            return []
        config: dict[str, Scalar] = {**self.window.to_dict(), protocol.RUN_TAG: self.run_tag}
        clients = client_manager.sample(num_clients=client_manager.num_available(), min_num_clients=self.min_nodes)
        return [(c, FitIns(parameters, config)) for c in clients]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        if len(results) < self.min_nodes:
            logger.error(
                "region: %s vectors summed, fewer than %s: the sum would be one node's series; refused",
                len(results),
                self.min_nodes,
            )
            return None, {}
        modular = decode_sum(
            parameters_to_ndarrays(results[0][1].parameters)[0],
            survivors=len(results),
            modulus_bits=self.window.modulus_bits,
        )
        self.total = decode(modular, self.window)
        self.summed = {int(proxy.node_id) for proxy, _ in results}
        return None, {}

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        return []

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        return None


class SecureRegion:
    """The region of a run with secure sums: each node's calendar, the latest regional total, who was in it.

    The same three calls as ``RegionCollector`` (``collect``, ``stamp``) plus ``refresh``, which runs the
    SecAgg+ round when the nodes' calendars changed since the last sum.
    """

    def __init__(self, *, columns: Iterable[str], run_tag: str, wait: float, min_nodes: int = MIN_NODES) -> None:
        self.columns = tuple(c for c in columns if c in COUNT_COLUMNS)
        self.run_tag = run_tag
        self.wait = wait
        self.min_nodes = max(MIN_NODES, min_nodes)
        self.calendars: dict[int, pd.DatetimeIndex] = {}
        self.total: RegionTotal | None = None
        self.summed: set[int] = set()
        self.seconds: list[float] = []  # each secure sum's wall time
        self._summed_window: RegionWindow | None = None

    @property
    def totals(self) -> dict[int, pd.DatetimeIndex]:
        """The nodes whose calendars the coordinator holds (a truthy check, as ``RegionCollector.totals``)."""
        return self.calendars

    def collect(self, replies: Iterable[Message]) -> int:
        """Read the days each reply's released totals cover (values, should a node send any, are dropped)."""
        read = 0
        for node, frame in released_totals(replies, what="released days"):
            if len(frame.columns):
                logger.warning(
                    "region: node %s sent its totals' values under secure sums; only its days are kept", node
                )
            self.calendars[node] = pd.DatetimeIndex(frame.index)
            read += 1
        return read

    def refresh(self, grid: Grid, *, run_id: int) -> bool:
        """Run the SecAgg+ sum when the window changed (or no sum holds yet); True when a new total was learnt."""
        window = RegionWindow.covering(self.calendars.values(), self.columns)
        if window is None or (window == self._summed_window and self.total is not None):
            return False
        began = time.perf_counter()
        strategy = RegionSumStrategy(window, self.run_tag, self.min_nodes, self.wait)
        base = Context(run_id=run_id, node_id=0, node_config={}, state=RecordDict(), run_config={})
        legacy = LegacyContext(base, config=ServerConfig(num_rounds=1), strategy=strategy)
        DefaultWorkflow(fit_workflow=secagg_workflow(min_survivors=self.min_nodes, timeout=self.wait))(grid, legacy)
        self.seconds.append(time.perf_counter() - began)
        if strategy.total is None:
            logger.error("region: the secure sum did not complete; the region stays as it was")
            return False
        self.total, self.summed, self._summed_window = strategy.total, strategy.summed, window
        logger.info(
            "region: %s nodes' released totals summed under SecAgg+ (%d days from %s); the coordinator holds the "
            "regional total only",
            len(self.summed),
            window.days,
            window.first.date(),
        )
        return True

    def stamp(self, messages: Iterable[Message]) -> list[Message]:
        """Every request gets the secure flag; once a sum holds, the regional total and whether its node was in it."""
        out = list(messages)
        text = total_to_text(self.total) if self.total is not None else None
        for message in out:
            extra: dict[str, Any] = {protocol.REGION_SECURE: True}
            if text is not None:
                extra[protocol.REGION_TOTAL] = text
                extra[protocol.REGION_INCLUDED] = int(message.metadata.dst_node_id) in self.summed
            content = message.content
            records: dict[str, object] = {}
            for name, record in content.items():
                if name == protocol.CONFIG and isinstance(record, ConfigRecord):
                    record = ConfigRecord({**dict(record), **extra})
                records[name] = record
            message.content = RecordDict(records)  # type: ignore[arg-type]
        return out
