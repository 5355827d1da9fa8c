"""``flower-supernode``, with a shorter wait between the node's pulls for messages (what ``medalloc node start`` runs).

Flower 1.42's SuperNode asks the SuperLink for a message and, when there is none, sleeps a fixed
3 s before it asks again (``time.sleep(3)`` in ``flwr/supernode/start_client_internal.py``; no
option sets it). A round has two messages per node (train, then evaluate), and each usually
arrives just after the node's last pull: up to 6 s per round of pure waiting, more than the
model's compute. This entry point runs Flower's own ``flower-supernode`` unchanged but for that
wait, which starts at ``--poll-interval`` seconds after each message and grows while none comes
(``BackoffClock``: a fifth of the idle time, at most 2 s), and the 0.5 s the SuperNode waits for
its ClientApp's reply, when shorter. One pull is one small request to the SuperLink: at 0.5 s, a
node asks twice a second while it is idle.

If Flower's module no longer looks as described (another version), the SuperNode runs
unpatched and a warning says so: slower rounds, never a different node.

Run: ``python -m medalloc.node.supernode [--poll-interval S] <flower-supernode options>``.
"""

from __future__ import annotations

import inspect
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

POLL_S = 0.5
_FLOWER_WAIT = "time.sleep(3)"


class CappedClock:
    """The ``time`` module, but ``sleep`` waits at most ``cap`` seconds."""

    def __init__(self, cap: float, sleep: Callable[[float], None] = time.sleep) -> None:
        if not cap > 0:
            raise ValueError(f"the poll interval must be positive seconds, got {cap!r}")
        self.cap = cap
        self._sleep = sleep

    def sleep(self, seconds: float) -> None:
        self._sleep(min(seconds, self.cap))

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


# How the wait between empty pulls grows while no message comes: ``BACKOFF_FRACTION`` of the time
# since the last message, from ``--poll-interval`` up to ``BACKOFF_MOST_S``. Measured on a two-core
# machine (simulations/benchmarks/deployment.py, "Where the CPU goes"): every pull costs the node and
# the SuperLink CPU, and at 0.5 s fixed, N nodes waiting through a long round pulled 2N times a
# second, CPU the training then lacked. Growing the wait keeps a message that follows soon after
# the last one (evaluate after train) within about 0.5 s, and one that comes after a long wait
# within a fifth of that wait (at most 2 s), at a fraction of the pulls.
BACKOFF_FRACTION = 0.2
BACKOFF_MOST_S = 2.0


class BackoffClock(CappedClock):
    """The ``time`` module for Flower's SuperNode loop: its no-message wait grows while no message comes.

    Flower waits ``idle_wait`` (3 s) after a pull that found no message and less (0.5 s) while it
    handles one. A wait of ``idle_wait`` or more becomes ``fraction`` of the seconds since the node
    last handled a message, between ``cap`` and ``most``; any shorter wait means a message is being
    handled, and the next empty pull waits ``cap`` again.
    """

    def __init__(
        self,
        cap: float,
        *,
        most: float = BACKOFF_MOST_S,
        fraction: float = BACKOFF_FRACTION,
        idle_wait: float = 3.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(cap, sleep)
        self.most, self.fraction, self.idle_wait = most, fraction, idle_wait
        self._clock = clock
        self._idle_since: float | None = None

    def sleep(self, seconds: float) -> None:
        if seconds < self.idle_wait:  # handling a message
            self._idle_since = None
            super().sleep(seconds)
            return
        now = self._clock()
        if self._idle_since is None:
            self._idle_since = now
        grown = max(self.cap, min(self.most, self.fraction * (now - self._idle_since)))
        self._sleep(min(seconds, grown))


def shorten_poll(poll_s: float) -> bool:
    """Cap the SuperNode's waits between pulls at ``poll_s`` (growing while idle, ``BackoffClock``); False (and a
    warning) if Flower's code differs."""
    from flwr.supernode import start_client_internal as node

    if getattr(node, "time", None) is not time or _FLOWER_WAIT not in inspect.getsource(node):
        logger.warning(
            "flwr.supernode.start_client_internal does not wait with %s as Flower 1.42 does: the SuperNode "
            "keeps Flower's own wait between pulls (rounds take longer)",
            _FLOWER_WAIT,
        )
        return False
    node.time = BackoffClock(poll_s)  # type: ignore[assignment]
    return True


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    poll_s = POLL_S
    if args[:1] == ["--poll-interval"]:
        if len(args) < 2:
            sys.exit("--poll-interval needs a number of seconds")
        try:
            poll_s = float(args[1])
            CappedClock(poll_s)
        except ValueError as exc:
            sys.exit(f"--poll-interval: {exc}")
        args = args[2:]
    shorten_poll(poll_s)
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *args]
    flower_supernode()


if __name__ == "__main__":
    main()
