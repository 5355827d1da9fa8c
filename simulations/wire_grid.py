"""An in-process Grid whose messages cross Flower's wire format: serialised to protobuf and back, bytes counted.

``LocalGrid`` hands a node the coordinator's very Message object; Flower's SecAgg+ workflow
sends one shared RecordDict to every node and ``secaggplus_mod`` edits what it receives, so a
real round needs each node to get its own copy, as over the network. This grid gives it that
(``message_to_proto`` / ``message_from_proto``, what the SuperLink transports) and counts the
serialised bytes each node receives and sends: the secure-aggregation benchmark's bytes per node.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from flwr.app import Error, Message
from flwr.common.serde import message_from_proto, message_to_proto

from .local_grid import LocalGrid

__all__ = ["WireGrid"]


class WireGrid(LocalGrid):
    """``LocalGrid`` over Flower's protobuf messages; ``received[node]`` / ``sent[node]``: bytes per node."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.received: dict[int, int] = defaultdict(int)
        self.sent: dict[int, int] = defaultdict(int)
        self.down: set[int] = set()  # nodes that no longer answer (a dropout)

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self.contexts if n not in self.down]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            wire = message_to_proto(message)
            self.received[node] += wire.ByteSize()
            self.calls.append((node, message.metadata.message_type))
            if node in self.down:
                replies.append(Message(error=Error(code=3, reason="node unreachable"), reply_to=message))
                continue
            delivered = message_from_proto(wire)
            try:
                reply = self.app(delivered, self.contexts[node])
            except Exception as exc:  # as Flower's runtime: an exception in the ClientApp is an error reply
                reply = Message(error=Error(code=2, reason=f"{type(exc).__name__}: {exc}"), reply_to=delivered)
            back = message_to_proto(reply)
            self.sent[node] += back.ByteSize()
            replies.append(message_from_proto(back))
        return replies
