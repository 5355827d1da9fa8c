"""``flower-supernode``, with a shorter wait between the node's pulls for messages (what ``medalloc node start`` runs).

Flower 1.42's SuperNode asks the SuperLink for a message and, when there is none, sleeps a fixed
3 s before it asks again (``time.sleep(3)`` in ``flwr/supernode/start_client_internal.py``; no
option sets it). A round has two messages per node (train, then evaluate), and each usually
arrives just after the node's last pull: up to 6 s per round of pure waiting, more than the
model's compute. This entry point runs Flower's own ``flower-supernode`` unchanged but for that
wait, which it caps at ``--poll-interval`` seconds (and the 0.5 s the SuperNode waits for its
ClientApp's reply, when shorter). One pull is one small request to the SuperLink: at 0.5 s, a
node asks twice a second while it is idle.

It also shortens the wait between tries for a message's objects (``shorten_pull_backoff``): a
node sees a message as soon as the ServerApp has pushed it, before its arrays are uploaded, and
Flower then waits 1 s, 2 s, 4 s ... between tries for each object not yet there
(``PULL_INITIAL_BACKOFF = 1``, ``PULL_BACKOFF_CAP = 10`` in ``flwr/supercore/constant.py``, lines
48-49; no option sets them): measured, 1-2.5 s of a round's train message and 1 s of the ClientApp
process's own pull from its SuperNode went to that wait. The node tries again after 0.1 s, doubling
to at most 0.5 s, with as much patience in total as Flower's (more tries, the same time limit).

If Flower's module no longer looks as described (another version), the SuperNode runs
unpatched and a warning says so: slower rounds, never a different node.

Run: ``python -m medalloc.node.supernode [--poll-interval S] <flower-supernode options>``.
"""

from __future__ import annotations

import inspect
import logging
import math
import sys
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

POLL_S = 0.5
_FLOWER_WAIT = "time.sleep(3)"
# Wait before the 2nd try for an object not yet uploaded, and the longest wait between tries (Flower: 1 s, 10 s).
PULL_BACKOFF_S = (0.1, 0.5)
_BACKOFF_KEYS = frozenset({"initial_backoff", "backoff_cap", "max_tries_per_object"})


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


def shorten_pull_backoff(initial_s: float = PULL_BACKOFF_S[0], cap_s: float = PULL_BACKOFF_S[1]) -> bool:
    """Retry a message's objects after ``initial_s`` (doubling, at most ``cap_s``), not Flower's 1 s (at most 10 s).

    Sets the keyword defaults of Flower's two pull functions (``pull_objects``, and
    ``pull_and_inflate_object_from_tree``, which passes its own on) for this process: the
    SuperNode's pulls from the SuperLink and, in the warm launcher's children, the ClientApp's
    pulls from its SuperNode. The tries per object grow so that a missing object is waited for as
    long as before (Flower's ``PULL_MAX_TIME`` still bounds it). False (and a warning) if Flower's
    functions do not take these keywords.

    ``server.grid_io`` holds the ServerApp's copy: the ServerApp runs from the FAB, which does not
    hold this package, and the warm launcher may import no app module (``server``, ``medalloc_core``).
    """
    from flwr.supercore.inflatable import inflatable_utils as objects

    functions = (objects.pull_objects, objects.pull_and_inflate_object_from_tree)
    if not all(_BACKOFF_KEYS <= set(f.__kwdefaults__ or {}) for f in functions):
        logger.warning(
            "flwr.supercore.inflatable.inflatable_utils.pull_objects does not take %s as Flower 1.42's does: "
            "the node keeps Flower's own wait between tries for a message's objects (rounds take longer)",
            ", ".join(sorted(_BACKOFF_KEYS)),
        )
        return False
    if not 0 < initial_s <= cap_s:
        raise ValueError(f"pull backoff: need 0 < initial <= cap seconds, got {initial_s!r}, {cap_s!r}")
    for function in functions:
        defaults = function.__kwdefaults__
        assert defaults is not None
        patience = defaults["max_tries_per_object"] * defaults["backoff_cap"]  # about Flower's time per object
        defaults |= {
            "initial_backoff": initial_s,
            "backoff_cap": cap_s,
            "max_tries_per_object": max(defaults["max_tries_per_object"], math.ceil(patience / cap_s)),
        }
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
    shorten_pull_backoff()
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *args]
    flower_supernode()


if __name__ == "__main__":
    main()
