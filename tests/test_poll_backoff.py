"""The waits between pulls grow while nothing comes, and start short again at the next message.

The SuperNode's pull for messages (medalloc.node.supernode.BackoffClock, patched into Flower's
loop) and the ServerApp's pull for replies (server.grid_io.next_wait): each pull costs CPU on
both sides of the connection, so a node or a ServerApp that waits a long time pulls less often,
and a message that follows soon after the last one is still picked up within the short wait."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from medalloc.node.supernode import BackoffClock, CappedClock
from server.grid_io import POLL_S, next_wait

REPO = Path(__file__).resolve().parents[1]


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def test_the_nodes_empty_pulls_wait_longer_the_longer_no_message_comes() -> None:
    t = FakeTime()
    clock = BackoffClock(0.5, most=2.0, fraction=0.2, sleep=t.sleep, clock=lambda: t.now)
    for _ in range(40):
        clock.sleep(3)  # Flower's wait after a pull that found no message
    assert t.waits[0] == 0.5 and t.waits == sorted(t.waits) and t.waits[-1] == 2.0
    assert all(w == pytest.approx(max(0.5, min(2.0, 0.2 * sum(t.waits[:i])))) for i, w in enumerate(t.waits))
    # 60 s without a message: far fewer pulls than at a fixed 0.5 s (120)
    t.waits.clear()
    while t.now < 100:
        clock.sleep(3)
    assert len(t.waits) <= 25


def test_a_message_resets_the_wait_and_its_own_short_waits_are_kept() -> None:
    t = FakeTime()
    clock = BackoffClock(0.5, sleep=t.sleep, clock=lambda: t.now)
    for _ in range(30):
        clock.sleep(3)
    assert t.waits[-1] == 2.0
    clock.sleep(0.5)  # the node handles a message: waits for its ClientApp's reply
    clock.sleep(0.2)
    clock.sleep(3)  # the next empty pull
    assert t.waits[-3:] == [0.5, 0.2, 0.5]
    assert isinstance(clock, CappedClock) and clock.monotonic() > 0  # the rest is the time module


def test_the_servers_wait_for_replies_grows_to_one_second() -> None:
    assert next_wait(0.0) == POLL_S == 0.2
    assert next_wait(0.5) == 0.2 and next_wait(2.5) == pytest.approx(0.5) and next_wait(60.0) == 1.0
    # a reply that took w seconds to come is collected at most max(0.2, w/5) (and 1 s) after it arrived
    waits, waited = [], 0.0
    while waited < 40:
        waits.append(next_wait(waited))
        waited += waits[-1]
    assert len(waits) < 60  # 200 pulls at a fixed 0.2 s


def test_node_start_patches_flowers_loop_with_the_backoff_clock() -> None:
    code = (
        "from medalloc.node.supernode import BackoffClock, shorten_poll\n"
        "from flwr.supernode import start_client_internal as node\n"
        "assert shorten_poll(0.5)\n"
        "assert type(node.time) is BackoffClock and node.time.cap == 0.5\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr
