"""An in-process Flower Grid: each message goes straight to a ClientApp with that node's Context, no transport.

Used by the federation-scale benchmark as the "plain loop" that does exactly the nodes' work
without Flower's runtime, and by tests of the round loop. Flower's Simulation Engine is the
real thing; this only removes messaging and scheduling.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity


@contextmanager
def task_identity(run_id: int = 1, node_id: int = 1, task_id: int = 1) -> Iterator[None]:
    """Messages need the task identity Flower's runtime normally sets; set one and restore the old one."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)  # noqa: SLF001
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, node_id, task_id
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved  # noqa: SLF001


class LocalGrid(Grid):
    """Delivers each message to ``app`` with the Context of its destination node, sequentially.

    A ClientApp exception becomes an error reply (code 2, as Flower's runtime reports a
    ClientApp that raised).
    """

    def __init__(self, app: ClientApp, node_configs: Mapping[int, Mapping[str, Any]]) -> None:
        self.app = app
        self.contexts = {
            node: Context(run_id=1, node_id=node, node_config=dict(cfg), state=RecordDict(), run_config={})
            for node, cfg in node_configs.items()
        }
        self.calls: list[tuple[int, str]] = []

    def set_run(self, run: Run) -> None:  # pragma: no cover - the round loop does not use it
        raise NotImplementedError

    @property
    def run(self) -> Any:
        """Only the run id: Flower's legacy workflow (SecAgg+, server.secure) reads it to register the nodes."""
        return SimpleNamespace(run_id=1)

    def create_message(self, *args: Any, **kwargs: Any) -> Message:  # pragma: no cover
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # pragma: no cover
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # pragma: no cover
        raise NotImplementedError

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            self.calls.append((node, message.metadata.message_type))
            try:
                replies.append(self.app(message, self.contexts[node]))
            except Exception as exc:  # as Flower's runtime: an exception in the ClientApp is an error reply
                replies.append(Message(error=Error(code=2, reason=f"{type(exc).__name__}: {exc}"), reply_to=message))
        return replies
