"""Helpers for the federation tests: build Flower request/reply Messages directly, without a server."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client import protocol


@contextmanager
def task_identity(run_id: int = 1, node_id: int = 1, task_id: int = 1) -> Iterator[None]:
    """Messages need a task identity (set by Flower's runtime); set one for the test and restore it."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, node_id, task_id
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


def request(node_id: int, arrays: ArrayRecord, config: Mapping | None = None, *, train: bool = True) -> Message:
    content = RecordDict({protocol.ARRAYS: arrays, protocol.CONFIG: ConfigRecord(dict(config or {}))})
    return Message(content, dst_node_id=node_id, message_type=MessageType.TRAIN if train else MessageType.EVALUATE)


def train_metrics(num_examples: float = 100, **overrides: float) -> dict[str, float]:
    values = {
        protocol.NUM_EXAMPLES: num_examples,
        protocol.TRAIN_LOSS: 0.5,
        protocol.EPSILON: 1.0,
        protocol.EPSILON_BUDGET_LEFT: 9.0,
        protocol.NOISE_MULTIPLIER: 1.0,
        protocol.LOCAL_EPOCHS_USED: 1,
    }
    values.update(overrides)
    return values


def train_reply(node_id: int, arrays: Mapping[str, np.ndarray], metrics: Mapping[str, float], global_arrays: ArrayRecord) -> Message:
    req = request(node_id, global_arrays)
    content = RecordDict({protocol.ARRAYS: record(arrays), protocol.METRICS: MetricRecord(dict(metrics))})  # type: ignore[arg-type]
    return Message(content, reply_to=req)


def error_reply(node_id: int, code: int, reason: str, global_arrays: ArrayRecord) -> Message:
    return Message(error=Error(code=code, reason=reason), reply_to=request(node_id, global_arrays))


# ------------------------------------------------------------------ an in-process grid
from collections.abc import Iterable  # noqa: E402
from pathlib import Path  # noqa: E402

from flwr.app import Context  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid  # noqa: E402


class DirectGrid(Grid):
    """Delivers each message straight to a real ClientApp with that node's Context; no transport.

    The end-to-end simulation test covers Flower's transport; this lets the round loop,
    checkpoints and resume be tested in seconds. A ClientApp exception becomes an error reply,
    as Flower's runtime does.
    """

    def __init__(self, app: ClientApp, node_configs: dict[int, dict]) -> None:
        self.app = app
        self.contexts = {
            node: Context(run_id=1, node_id=node, node_config=cfg, state=RecordDict(), run_config={})
            for node, cfg in node_configs.items()
        }
        self.calls: list[tuple[int, str]] = []

    def set_run(self, run_id: int) -> None:  # pragma: no cover - not used by the round loop
        pass

    @property
    def run(self):  # pragma: no cover
        raise NotImplementedError

    def create_message(self, *args, **kwargs):  # pragma: no cover
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages):  # pragma: no cover
        raise NotImplementedError

    def pull_messages(self, message_ids):  # pragma: no cover
        raise NotImplementedError

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            self.calls.append((node, message.metadata.message_type))
            try:
                replies.append(self.app(message, self.contexts[node]))
            except Exception as exc:  # as Flower: an exception in the ClientApp is an error reply
                replies.append(Message(error=Error(code=2, reason=f"{type(exc).__name__}: {exc}"), reply_to=message))
        return replies


def small_region(folder: Path, *, hospitals: int = 3, days: int = 200, seed: int = 0) -> Path:
    """A tiny synthetic region (one CSV per hospital) for federation tests."""
    from medalloc_core.synthetic import RegionConfig, generate_region, write_region

    region = generate_region(RegionConfig(hospitals=hospitals, days=days, seed=seed, short_history_fraction=0.0, min_beds=60, max_beds=300))
    write_region(region, folder)
    return folder


#: Run-config keys for a tiny, fast model used by the federation tests.
TINY = {"history": 14, "horizon": 7, "hidden": 8, "batch-size": 32, "lr": 0.01}
