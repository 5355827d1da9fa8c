"""Send a round's messages and collect the replies, polling the SuperLink every ``POLL_S`` seconds.

Flower 1.42's deployment grid (``flwr.superlink.grid.HttpGrid``) waits a fixed 3 s between its
pulls for replies (``send_and_receive`` in ``flwr/superlink/grid/http_grid.py``): a round of two
messages (train, evaluate) then waits up to 6 s after the last node has answered. This is the
same loop, push then pull until every reply is in or ``timeout`` passes, with a short wait. A
pull is one small request to the SuperLink's own process. Other grids (the Simulation Engine's,
the in-process ``LocalGrid``) keep their own ``send_and_receive``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid

POLL_S = 0.2


def send_and_receive(
    grid: Grid, messages: Iterable[Message], *, timeout: float | None, poll_s: float = POLL_S
) -> list[Message]:
    """``grid.send_and_receive(messages, timeout=timeout)``; on Flower's HttpGrid, pulling every ``poll_s`` s."""
    from flwr.superlink.grid import HttpGrid

    if not isinstance(grid, HttpGrid):
        return list(grid.send_and_receive(messages, timeout=timeout))
    waiting = set(grid.push_messages(messages))
    end = time.monotonic() + (timeout if timeout is not None else 0.0)
    replies: list[Message] = []
    while waiting and (timeout is None or time.monotonic() < end):
        pulled = list(grid.pull_messages(waiting))
        replies.extend(pulled)
        waiting.difference_update(m.metadata.reply_to_message_id for m in pulled)
        if waiting:
            time.sleep(poll_s)
    return replies
