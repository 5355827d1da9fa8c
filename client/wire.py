"""The node's side of one array per model on the wire (``medalloc_core.wire``): a Flower client mod.

A deployed ServerApp sends each message's model packed into one array (``server.grid_io``):
Flower moves every array as objects of its own, one request each between SuperLink, SuperNode
and this process. This mod, outermost on the ClientApp, unpacks such a request before anything
else of the node sees it — the tasks, their data and privacy checks and the ledger run on the
same named arrays as before — and packs the reply's arrays the same way, only when the request
came packed (simulations and the in-process grid send named arrays and get them back). A packed
model that does not unpack is declined as an invalid request; nothing of the node runs for it.
"""

from __future__ import annotations

import logging

from flwr.app import Array, ArrayRecord, Context, Error, Message
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import SType

from medalloc_core import protocol
from medalloc_core.protocol import Refusal
from medalloc_core.replies import check_refusal
from medalloc_core.tasks import DEFAULT_TASK
from medalloc_core.wire import PACKED_NAME, WireError, pack_arrays, unpack_arrays

logger = logging.getLogger(__name__)


def _is_packed(record: ArrayRecord) -> bool:
    return list(record.keys()) == [PACKED_NAME]


def wire_mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Unpack a packed request's arrays, run the app, pack the reply's arrays (see the module docstring)."""
    packed = [k for k, r in message.content.array_records.items() if _is_packed(r)] if message.has_content() else []
    if not packed:
        return call_next(message, context)
    for key in packed:
        try:
            arrays = unpack_arrays(message.content.array_records[key][PACKED_NAME].numpy())
        except WireError as exc:
            logger.warning("the request's record %r does not unpack (%s): declined", key, exc)
            what = "its packed model does not unpack"
            checked = check_refusal(
                DEFAULT_TASK,
                int(Refusal.REQUEST_INVALID),
                protocol.REFUSAL_REASONS[Refusal.REQUEST_INVALID].format(what=what),
            )
            return Message(error=Error(code=checked.code, reason=checked.reason), reply_to=message)
        message.content[key] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    reply = call_next(message, context)
    if reply.has_content():
        for key, record in list(reply.content.array_records.items()):
            if len(record) > 1 and all(a.stype == SType.NUMPY for a in record.values()):
                reply.content[key] = ArrayRecord(
                    {PACKED_NAME: Array(pack_arrays({k: a.numpy() for k, a in record.items()}))}
                )
    return reply
