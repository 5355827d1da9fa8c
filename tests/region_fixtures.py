"""What the region's federation tests share (tests/test_region_federation.py, tests/test_secure_region.py).

A run of the forecasting task with context ``region`` over real ClientApps in process: the nodes' configs (each
with a ledger folder of its own), the run's keys for a small hybrid model, and a grid that keeps every request
and reply, as the nodes and the coordinator see them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from flwr.app import Message

from medalloc.simulations.local_grid import LocalGrid
from medalloc.simulations.wire_grid import WireGrid
from tests.fed_fixtures import file_calendar

#: The smallest hybrid model (the region channel is the hybrid's): a few seconds a round.
HYBRID = {"model": "hybrid", "init": "none", "history": 28, "horizon": 7, "hidden": 8, "batch-size": 64, "lr": 0.01}


class _Recording:
    """Keeps every request (``requests``) and every reply (``replies``) of the grid it is mixed into."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.requests: list[Message] = []
        self.replies: list[Message] = []

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        self.requests += messages
        replies = list(super().send_and_receive(messages, timeout=timeout))  # type: ignore[misc]
        self.replies += replies
        return replies


class RecordingGrid(_Recording, LocalGrid):
    """The in-process grid (real ClientApps, no transport), recording."""


class RecordingWireGrid(_Recording, WireGrid):
    """The wire-format grid (every message through Flower's protobuf), recording."""


def region_nodes(
    region: Path, folder: Path, count: int, extra: Callable[[int], dict[str, Any]] = lambda i: {}
) -> dict[int, dict[str, Any]]:
    """Node id (1, 2, ...) -> node config: hospital ``H00<i>``'s file of ``region``, its own ledger under ``folder``
    (the ledger's folder made), a budget of 4, the file's calendar (a deployed node declares one), and ``extra(i)``."""
    nodes = {
        i + 1: {
            "data-path": str(region / f"H00{i}.csv"),
            "ledger-path": str(folder / f"n{i}" / "ledger.json"),
            "privacy-epsilon-budget": 4.0,
        }
        | file_calendar(region / f"H00{i}.csv")
        | extra(i)
        for i in range(count)
    }
    for cfg in nodes.values():
        Path(cfg["ledger-path"]).parent.mkdir()
    return nodes


def region_run(out: Path, nodes: int, **extra: Any) -> dict[str, Any]:
    """The run's keys: two rounds of the region context on every node, the small hybrid, then ``extra``."""
    return (
        {
            "out-dir": str(out),
            "num-server-rounds": 2,
            "min-available-nodes": nodes,
            "min-train-nodes": nodes,
            "context": "region",
            "patient-epsilon": 4.0,
            "test-days": 28,
            "validation-days": 28,
        }
        | HYBRID
        | {k.replace("_", "-"): v for k, v in extra.items()}
    )
