"""Send a round's messages and collect the replies, polling the SuperLink every ``POLL_S`` seconds.

Flower 1.42's deployment grid (``flwr.superlink.grid.HttpGrid``) waits a fixed 3 s between its
pulls for replies (``send_and_receive`` in ``flwr/superlink/grid/http_grid.py``): a round of two
messages (train, evaluate) then waits up to 6 s after the last node has answered. This is the
same loop, push then pull until every reply is in or ``timeout`` passes, with a short wait that
grows while no reply comes (``next_wait``). A pull is one small request to the SuperLink's own
process, which costs CPU on both sides. Other grids (the Simulation Engine's,
the in-process ``LocalGrid``) keep their own ``send_and_receive``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid

POLL_S = 0.2
# While replies are slow to come the wait between pulls grows: BACKOFF_FRACTION of the seconds since
# the push or the last reply, from POLL_S up to BACKOFF_MOST_S. Each pull costs the ServerApp and
# the SuperLink CPU (simulations/benchmarks/deployment.py, "Where the CPU goes"); at a fixed 0.2 s a
# round that waits 40 s for its slowest node pulled 200 times. A reply is then collected within
# about a tenth of the time it took to come, and never more than 1 s late.
BACKOFF_FRACTION = 0.2
BACKOFF_MOST_S = 1.0


def next_wait(waited: float, *, poll_s: float = POLL_S, most: float = BACKOFF_MOST_S) -> float:
    """Seconds to wait before the next pull when the last reply (or the push) came ``waited`` seconds ago."""
    return max(poll_s, min(most, BACKOFF_FRACTION * waited))


def send_and_receive(
    grid: Grid, messages: Iterable[Message], *, timeout: float | None, poll_s: float = POLL_S
) -> list[Message]:
    """``grid.send_and_receive(messages, timeout=timeout)``; on Flower's HttpGrid, pulling every ``poll_s`` s at
    first, then less often while no reply comes (``next_wait``)."""
    from flwr.superlink.grid import HttpGrid

    if not isinstance(grid, HttpGrid):
        return list(grid.send_and_receive(messages, timeout=timeout))
    waiting = set(grid.push_messages(messages))
    end = time.monotonic() + (timeout if timeout is not None else 0.0)
    replies: list[Message] = []
    progress = time.monotonic()
    while waiting and (timeout is None or time.monotonic() < end):
        pulled = list(grid.pull_messages(waiting))
        replies.extend(pulled)
        waiting.difference_update(m.metadata.reply_to_message_id for m in pulled)
        now = time.monotonic()
        if pulled:
            progress = now
        if waiting:
            wait = next_wait(now - progress, poll_s=poll_s)
            time.sleep(wait if timeout is None else max(0.0, min(wait, end - now)))
    return replies
