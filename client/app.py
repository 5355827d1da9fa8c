"""Flower ClientApp: a hospital node that serves the federated tasks its own config names.

Per request the node reads its own ``NodeConfig``, checks it serves the request's task, and
hands the task (``medalloc_core.tasks``) the coordinator's proposal, the global arrays and its
own settings for that task: data path, privacy ledger, budget and caps. The task loads and
validates the data, trains with DP under the ledger (which has the last word) and says what to
reply: the new arrays and exactly the task's metrics. Each task has its own Flower action —
forecasting the plain ``train``/``evaluate`` messages, any other task ``train.<task>`` /
``evaluate.<task>`` — so one app serves all of them. A round the node declines (budget
exhausted, ledger corrupt, invalid data, a task it does not serve, a request it cannot honour)
is answered with a Flower ``Error`` carrying a ``protocol.Refusal`` code, never a crash.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from medalloc_core import protocol
from medalloc_core.protocol import Refusal
from medalloc_core.replies import CheckedRefusal, ReplyNotAllowed, check_refusal, check_reply, node_error
from medalloc_core.tasks import DEFAULT_TASK, FederatedTask, NodeReply, TaskRefused, get_task, task_names

from .config import NodeConfig, NodeConfigError
from .secure import secure_aggregation_mod
from .wire import wire_mod

logger = logging.getLogger(__name__)


def show_node_log_in_flower_log() -> None:
    """Route the library's INFO lines (the release: when, what it spent, what is left; each round's
    epsilon) to Flower's console handler, the one log a SuperNode's operator reads.

    Only in a real ClientApp process (``flwr-clientapp``), where nothing else configures logging:
    the root logger has no handler there, so the library's lines would be dropped below WARNING.
    The library logger does not propagate then, so each line is written once.
    """
    import sys
    from pathlib import Path

    if Path(sys.argv[0]).name != "flwr-clientapp":
        return
    from flwr.common.logger import console_handler

    # Opacus's import-time logging.basicConfig gives the root logger a handler too: Flower's lines
    # would be written twice (its console handler, then the root's); see server.app.one_line_each
    logging.getLogger("flwr").propagate = False
    core = logging.getLogger("medalloc_core")
    if console_handler not in core.handlers:
        core.setLevel(logging.INFO)
        core.addHandler(console_handler)
        core.propagate = False


show_node_log_in_flower_log()


def refusal(message: Message, code: Refusal, detail: str, *, task: FederatedTask | str = DEFAULT_TASK) -> Message:
    """The reply for a declined round: ``Error(code, "<slug>: <detail>")``, checked (``medalloc_core.replies``):
    a detail that is not its code's fixed text goes out as ``node-error``."""
    return _error(message, check_refusal(task, int(code), detail))


def _error(message: Message, checked: CheckedRefusal) -> Message:
    return Message(error=Error(code=checked.code, reason=checked.reason), reply_to=message)


def _reason(code: Refusal, **values: Any) -> str:
    """A refusal's detail: the code's fixed text in ``protocol.REFUSAL_REASONS``, never data from the files."""
    return protocol.REFUSAL_REASONS[code].format(**values)


# ------------------------------------------------------------------ request parsing
def _request(message: Message) -> tuple[ArrayRecord, ConfigRecord]:
    """The request's global arrays and its config record; a missing record is a refusal."""
    try:
        return message.content.array_records[protocol.ARRAYS], message.content.config_records[protocol.CONFIG]
    except KeyError as exc:
        raise TaskRefused(Refusal.REQUEST_INVALID, _reason(Refusal.REQUEST_INVALID, what=f"no {exc} record")) from exc


def _node(context: Context, run_config: Mapping[str, Any] | None) -> NodeConfig:
    try:
        node = NodeConfig.from_context(context, run_config=run_config)
    except NodeConfigError as exc:
        logger.error("node configuration: %s", exc)
        raise TaskRefused(Refusal.NODE_MISCONFIGURED, _reason(Refusal.NODE_MISCONFIGURED)) from exc
    torch.set_num_threads(node.threads)
    return node


def _reply(message: Message, answer: NodeReply, node: NodeConfig, *, task: FederatedTask, train: bool) -> Message:
    """The one place a node's answer becomes a message: checked against the task's allow-list first."""
    checked = check_reply(
        task,
        "train" if train else "evaluate",
        answer.metrics,
        answer.arrays,
        {protocol.HOSPITAL_ID: node.hospital_id},
        answer.records,
    )
    records: dict[str, Any] = {protocol.METRICS: MetricRecord(dict(checked.metrics))}
    if checked.arrays is not None:
        records[protocol.ARRAYS] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in checked.arrays.items()})
    records[protocol.NODE_INFO] = ConfigRecord(dict(checked.node_info))
    for name, values in checked.records.items():  # optional allow-listed records (the released totals)
        records[name] = ConfigRecord(dict(values))
    return Message(content=RecordDict(records), reply_to=message)


# ------------------------------------------------------------------ the handlers
def handle(
    message: Message, context: Context, *, task: FederatedTask, train: bool, run_config: Mapping[str, Any] | None = None
) -> Message:
    """Serve one train or evaluate request of ``task`` within the node's own limits and ledger.

    ``run_config`` replaces ``context.run_config`` when given (see ``make_client_app``).
    """
    phase = "train" if train else "evaluate"
    try:
        node = _node(context, run_config)
        if task.name not in node.tasks:
            logger.warning("a %s request for task '%s', which this node does not serve", phase, task.name)
            raise TaskRefused(Refusal.TASK_NOT_SERVED, _reason(Refusal.TASK_NOT_SERVED, task=task.name))
        arrays, config = _request(message)
        global_arrays = {k: v.numpy() for k, v in arrays.items()}
        settings = node.task(task.name)
        answer = (
            task.train(settings, dict(config), global_arrays)
            if train
            else task.evaluate(settings, dict(config), global_arrays)
        )
        return _reply(message, answer, node, task=task, train=train)
    except TaskRefused as refused:
        logger.warning("declining %s %s round: %s", task.name, phase, refused.detail)
        return refusal(message, refused.code, refused.detail, task=task)
    except ReplyNotAllowed as exc:
        logger.error("%s %s reply not sent: %s", task.name, phase, exc)
        return _error(message, node_error())
    except Exception:  # anything unforeseen: a fixed code out, the traceback (paths, values) in the node's log only
        logger.exception("%s %s round failed on the node", task.name, phase)
        return _error(message, node_error())


def plain_task() -> FederatedTask:
    """The task served under Flower's plain ``train`` / ``evaluate`` messages (its ``action`` is ``"default"``)."""
    return next(get_task(name) for name in task_names() if get_task(name).action == "default")


def handle_train(message: Message, context: Context, *, run_config: Mapping[str, Any] | None = None) -> Message:
    """A plain ``train`` request (the :func:`plain_task`'s): see :func:`handle`."""
    return handle(message, context, task=plain_task(), train=True, run_config=run_config)


def handle_evaluate(message: Message, context: Context, *, run_config: Mapping[str, Any] | None = None) -> Message:
    """A plain ``evaluate`` request (the :func:`plain_task`'s): see :func:`handle`."""
    return handle(message, context, task=plain_task(), train=False, run_config=run_config)


# ------------------------------------------------------------------ the app
def make_client_app(run_config: Mapping[str, Any] | None = None, *, mods: Sequence[Mod] = ()) -> ClientApp:
    """Build the ClientApp with a train and an evaluate handler per registered task.

    ``run_config`` supplies run-config keys Flower's Python simulation API cannot pass.
    ``mods`` are Flower client mods wrapped around every handler, first = outermost (the
    poisoning tests and benchmark wrap an honest node in ``simulations.attacks.AttackMod``).

    ``flwr.simulation.run_simulation`` gives virtual nodes an empty run config, so the
    simulation runner hands its (simulation-only) keys here. Under ``flwr run`` and on real
    SuperNodes ``run_config`` is ``None`` and Flower's own run config is used unchanged.
    """
    extra = dict(run_config or {})

    def fused(context: Context) -> Mapping[str, Any] | None:
        # Flower forbids changing context.run_config, so the fused mapping is passed along instead.
        return {**context.run_config, **extra} if extra else None

    # Outermost: a deployed ServerApp's model packed into one array is unpacked before anything else
    # runs, and the reply packed again (client/wire.py). Innermost: Flower's SecAgg+ messages (plain
    # `train` with a secaggplus record) go to the task that supports secure aggregation; every other
    # message passes through (client/secure.py).
    app = ClientApp(mods=[wire_mod, *mods, secure_aggregation_mod(fused)])

    for name in task_names():
        _register(app, get_task(name), fused)
    return app


def _register(app: ClientApp, task: FederatedTask, fused: Any) -> None:
    # One function per task and phase, registered under the task's Flower action.
    def train(message: Message, context: Context) -> Message:
        return handle(message, context, task=task, train=True, run_config=fused(context))

    def evaluate(message: Message, context: Context) -> Message:
        return handle(message, context, task=task, train=False, run_config=fused(context))

    app.train(task.action)(train)
    app.evaluate(task.action)(evaluate)


app = make_client_app()
