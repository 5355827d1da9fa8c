"""``flower-supernode``, with a shorter wait between the node's pulls for messages (what ``medalloc node start`` runs).

Flower 1.42's SuperNode asks the SuperLink for a message and, when there is none, sleeps a fixed
3 s before it asks again (``time.sleep(3)`` in ``flwr/supernode/start_client_internal.py``; no
option sets it). A round has two messages per node (train, then evaluate), and each usually
arrives just after the node's last pull: up to 6 s per round of pure waiting, more than the
model's compute. This entry point runs Flower's own ``flower-supernode`` unchanged but for that
wait, which it caps at ``--poll-interval`` seconds (and the 0.5 s the SuperNode waits for its
ClientApp's reply, when shorter). One pull is one small request to the SuperLink: at 0.5 s, a
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


def shorten_poll(poll_s: float) -> bool:
    """Cap the SuperNode's waits between pulls at ``poll_s``; False (and a warning) if Flower's code differs."""
    from flwr.supernode import start_client_internal as node

    if getattr(node, "time", None) is not time or _FLOWER_WAIT not in inspect.getsource(node):
        logger.warning(
            "flwr.supernode.start_client_internal does not wait with %s as Flower 1.42 does: the SuperNode "
            "keeps Flower's own wait between pulls (rounds take longer)",
            _FLOWER_WAIT,
        )
        return False
    node.time = CappedClock(poll_s)  # type: ignore[assignment]
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
