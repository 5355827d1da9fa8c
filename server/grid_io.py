"""Send a round's messages and collect the replies, polling the SuperLink every ``POLL_S`` seconds.

Flower 1.42's deployment grid (``flwr.superlink.grid.HttpGrid``) waits a fixed 3 s between its
pulls for replies (``send_and_receive`` in ``flwr/superlink/grid/http_grid.py``): a round of two
messages (train, evaluate) then waits up to 6 s after the last node has answered. This is the
same loop, push then pull until every reply is in or ``timeout`` passes, with a short wait. A
pull is one small request to the SuperLink's own process. Other grids (the Simulation Engine's,
the in-process ``LocalGrid``) keep their own ``send_and_receive``.

A reply is listed as soon as its node has pushed the message, before its arrays are uploaded;
Flower then waits 1 s, 2 s, 4 s ... between tries for each object not yet there
(``PULL_INITIAL_BACKOFF = 1``, ``PULL_BACKOFF_CAP = 10``, ``flwr/supercore/constant.py`` lines 48-49;
no option sets them), and a round's replies arrived up to 1 s after their upload had ended. On
the HttpGrid this process tries again after 0.1 s, doubling to at most 0.5 s, as the node does
(``medalloc.node.supernode.shorten_pull_backoff``, which the node's installed package holds; the
ServerApp runs from the FAB and cannot import it).

Each message's model goes out as one array (``medalloc_core.wire``): Flower moves every array
as objects of its own, one request each at every hop, and a four-array model's train message
was 13 objects. ``pack_messages`` packs what this process sends (the nodes' ``client.wire``
mod unpacks it and packs the reply); ``unpack_replies`` restores the replies' named arrays
before the strategy or the reply checks see them. Only on the HttpGrid: simulations and the
in-process grid move no objects.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable

from flwr.app import Array, ArrayRecord, Message
from flwr.common.constant import SType
from flwr.serverapp import Grid

from medalloc_core.wire import PACKED_NAME, WireError, pack_arrays, unpack_arrays

logger = logging.getLogger(__name__)

POLL_S = 0.2
# Wait before the 2nd try for a reply's object not yet uploaded, and the longest wait between tries (Flower: 1 s, 10 s).
PULL_BACKOFF_S = (0.1, 0.5)
_BACKOFF_KEYS = frozenset({"initial_backoff", "backoff_cap", "max_tries_per_object"})


def shorten_pull_backoff(initial_s: float = PULL_BACKOFF_S[0], cap_s: float = PULL_BACKOFF_S[1]) -> bool:
    """Retry a reply's objects after ``initial_s`` (doubling, at most ``cap_s``), not Flower's 1 s (at most 10 s).

    Sets the keyword defaults of Flower's ``pull_objects`` (what ``HttpGrid.pull_messages`` calls)
    for this process; the tries per object grow so that a missing object is waited for as long as
    before (Flower's ``PULL_MAX_TIME`` still bounds it). False (and a warning) if the function does
    not take these keywords.
    """
    from flwr.supercore.inflatable import inflatable_utils as objects

    defaults = objects.pull_objects.__kwdefaults__
    if defaults is None or not _BACKOFF_KEYS <= defaults.keys():
        logger.warning(
            "flwr.supercore.inflatable.inflatable_utils.pull_objects does not take %s as Flower 1.42's does: "
            "replies are collected with Flower's own wait between tries for their objects",
            ", ".join(sorted(_BACKOFF_KEYS)),
        )
        return False
    if not 0 < initial_s <= cap_s:
        raise ValueError(f"pull backoff: need 0 < initial <= cap seconds, got {initial_s!r}, {cap_s!r}")
    patience = defaults["max_tries_per_object"] * defaults["backoff_cap"]  # about Flower's time per object
    defaults |= {
        "initial_backoff": initial_s,
        "backoff_cap": cap_s,
        "max_tries_per_object": max(defaults["max_tries_per_object"], math.ceil(patience / cap_s)),
    }
    return True


def pack_record(record: ArrayRecord) -> ArrayRecord | None:
    """``record``'s arrays as one packed array; None when there is nothing to gain (one array) or it is not numpy."""
    if len(record) < 2 or any(a.stype != SType.NUMPY for a in record.values()):
        return None
    return ArrayRecord({PACKED_NAME: Array(pack_arrays({k: a.numpy() for k, a in record.items()}))})


def unpack_record(record: ArrayRecord) -> ArrayRecord | None:
    """The named arrays of a packed ``record``; None if it is not packed. Raises ``WireError`` if it does not unpack."""
    if list(record.keys()) != [PACKED_NAME]:
        return None
    return ArrayRecord({k: Array(v) for k, v in unpack_arrays(record[PACKED_NAME].numpy()).items()})


def pack_messages(messages: Iterable[Message]) -> list[Message]:
    """``messages`` with each ArrayRecord of two or more arrays packed into one (each distinct record packed once)."""
    done: list[tuple[ArrayRecord, ArrayRecord | None]] = []  # a round's messages share the global model's record
    out = list(messages)
    for message in out:
        if not message.has_content():
            continue
        for key, record in list(message.content.array_records.items()):
            packed = next((p for r, p in done if r is record), record)
            if packed is record:
                packed = pack_record(record)
                done.append((record, packed))
            if packed is not None:
                message.content[key] = packed
    return out


def unpack_replies(replies: Iterable[Message]) -> list[Message]:
    """``replies`` with their packed ArrayRecords unpacked. One that does not unpack is left packed (and logged):
    the reply checks then refuse it for its arrays, as any malformed update."""
    out = list(replies)
    for reply in out:
        if not reply.has_content():
            continue
        for key, record in list(reply.content.array_records.items()):
            try:
                unpacked = unpack_record(record)
            except WireError as exc:
                logger.warning("reply from node %s: record %r: %s", reply.metadata.src_node_id, key, exc)
                continue
            if unpacked is not None:
                reply.content[key] = unpacked
    return out


def send_and_receive(
    grid: Grid, messages: Iterable[Message], *, timeout: float | None, poll_s: float = POLL_S
) -> list[Message]:
    """``grid.send_and_receive(messages, timeout=timeout)``; on Flower's HttpGrid, pulling every ``poll_s`` s."""
    from flwr.superlink.grid import HttpGrid

    if not isinstance(grid, HttpGrid):
        return list(grid.send_and_receive(messages, timeout=timeout))
    shorten_pull_backoff()
    waiting = set(grid.push_messages(pack_messages(messages)))
    end = time.monotonic() + (timeout if timeout is not None else 0.0)
    replies: list[Message] = []
    while waiting and (timeout is None or time.monotonic() < end):
        pulled = unpack_replies(grid.pull_messages(waiting))
        replies.extend(pulled)
        waiting.difference_update(m.metadata.reply_to_message_id for m in pulled)
        if waiting:
            time.sleep(poll_s)
    return replies
