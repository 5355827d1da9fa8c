"""The node side of secure aggregation: Flower's ``secaggplus_mod`` around the equipment task's distributed-DP round.

Flower 1.42 runs SecAgg+ only in its legacy workflow: the coordinator's messages are plain
``train`` messages carrying a ``secaggplus`` config record, and ``secaggplus_mod`` expects the
wrapped handler to answer in the legacy ``FitRes`` form. This mod routes exactly those
messages (and, for the benchmark's baseline, legacy requests marked ``distributed-dp``) to the
task that supports secure aggregation; every other message passes through untouched.

The node decides for itself, at the stage where its data would be used (Flower's "collect
masked vectors"): it answers only if its own node config agrees
(``equipment-secure-aggregation = true``), else it refuses (``secure-aggregation-not-agreed``)
and the round goes on without it, as after a dropout (its keys, made in the first two stages
from nothing of its data, let the others' masks be removed). Flower 1.42's SecAgg+ cannot
lose a node *before* the key-sharing stage (its unmask stage then asks the others for key
shares they never received, and the round halts), which is why the refusal waits until then.
Its vector is computed, checked against the task's allow-list and charged to its ledger before
Flower's mod masks it; a refusal is answered at once and nothing is masked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import flwr.compat.common.recorddict_compat as compat
import numpy as np
from flwr.app import Context, Error, Message
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

from medalloc_core import protocol
from medalloc_core.forecast.secure_region import MODULUS_KEY, REGION_SUM
from medalloc_core.protocol import Refusal
from medalloc_core.replies import ReplyNotAllowed, check_refusal, check_reply, node_error
from medalloc_core.tasks import FederatedTask, TaskRefused, get_task, task_names
from medalloc_core.tasks.equipment.secure import DISTRIBUTED_DP

from .config import NodeConfig, NodeConfigError

logger = logging.getLogger(__name__)

__all__ = ["FITINS_CONFIG", "offset", "secure_aggregation_mod"]

FITINS_CONFIG = "fitins.config"  # the legacy FitIns config record (flwr.compat)


def offset(modulus_bits: int) -> float:
    """What a node subtracts from its modular share so Flower's quantisation maps it back to itself.

    Flower's SecAgg+ quantises ``x`` as ``(clip(x, -R, R) + R) * T / (2R)``; with ``T = 2R = M - 1``
    (``server.secure`` sets these) a share ``y`` in ``[0, M)`` sent as ``y - R`` is quantised to
    exactly ``y`` (no rounding: it is already an integer), so the masked sum is the modular sum.
    """
    return (2**modulus_bits - 1) / 2.0


def _secure_task() -> FederatedTask:
    return next(get_task(n) for n in task_names() if get_task(n).secure_aggregation)


def _region_task() -> FederatedTask:
    """The task whose region is summed under SecAgg+ (``region-secure-aggregation``): the one with ``region_share``."""
    return next(get_task(n) for n in task_names() if callable(getattr(get_task(n), "region_share", None)))


def _refusal(message: Message, task: FederatedTask, code: Refusal, detail: str) -> Message:
    checked = check_refusal(task, int(code), detail)
    return Message(error=Error(code=checked.code, reason=checked.reason), reply_to=message)


def _settings(context: Context, run_config: Mapping[str, Any] | None, task: FederatedTask) -> Any:
    try:
        node = NodeConfig.from_context(context, run_config=run_config)
    except NodeConfigError as exc:
        logger.error("node configuration: %s", exc)
        raise TaskRefused(Refusal.NODE_MISCONFIGURED, protocol.REFUSAL_REASONS[Refusal.NODE_MISCONFIGURED]) from exc
    if task.name not in node.tasks:
        raise TaskRefused(
            Refusal.TASK_NOT_SERVED, protocol.REFUSAL_REASONS[Refusal.TASK_NOT_SERVED].format(task=task.name)
        )
    return node, node.task(task.name)


def _answer(
    message: Message, context: Context, run_config: Mapping[str, Any] | None, task: FederatedTask, *, secure: bool
) -> Message:
    """The node's round in the legacy ``FitRes`` form (what ``secaggplus_mod`` reads), or a refusal."""
    try:
        node, settings = _settings(context, run_config, task)
        fitins = compat.recorddict_to_fitins(message.content, keep_input=True)
        request = dict(fitins.config)
        shapes = parameters_to_ndarrays(fitins.parameters)
        from medalloc_core.tasks.equipment.secure import DistributedInstruction

        names = _names(DistributedInstruction.from_dict(request), len(shapes))
        answer = task.train_secure(settings, request, dict(zip(names, shapes, strict=True)), secure=secure)  # type: ignore[attr-defined]
        checked = check_reply(
            task, "train-secure", answer.metrics, answer.arrays, {protocol.HOSPITAL_ID: node.hospital_id}
        )
        assert checked.arrays is not None
        share = np.asarray(checked.arrays["share"], dtype=np.float64)
        bits = int(request["modulus-bits"])
        vector = share - offset(bits) if secure else share
        fitres = FitRes(
            status=Status(Code.OK, ""),
            parameters=ndarrays_to_parameters([vector]),
            num_examples=1,  # Flower's SecAgg+ weight: 1 keeps the sum a plain sum (server.secure)
            metrics={k: v for k, v in checked.metrics.items() if not isinstance(v, list)},
        )
        return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=message)
    except TaskRefused as refused:
        logger.warning("declining %s secure round: %s", task.name, refused.detail)
        return _refusal(message, task, refused.code, refused.detail)
    except (ReplyNotAllowed, Exception) as exc:  # a fixed code out, the details in the node's log only
        logger.exception("%s secure round failed on the node (%s)", task.name, type(exc).__name__)
        checked_error = node_error()
        return Message(error=Error(code=checked_error.code, reason=checked_error.reason), reply_to=message)


def _region_answer(message: Message, context: Context, run_config: Mapping[str, Any] | None) -> Message:
    """The node's released daily totals over the coordinator's window, as ``secaggplus_mod`` reads them, or a refusal.

    The forecasting node's side (``medalloc_core.tasks.forecasting.secure_region``); checked against the
    ``region-sum`` allow-list before Flower's mod masks it.
    """
    task = _region_task()
    try:
        node, settings = _settings(context, run_config, task)
        fitins = compat.recorddict_to_fitins(message.content, keep_input=True)
        request = dict(fitins.config)
        answer = task.region_share(settings, request)  # type: ignore[attr-defined]
        checked = check_reply(
            task, "region-sum", answer.metrics, answer.arrays, {protocol.HOSPITAL_ID: node.hospital_id}
        )
        assert checked.arrays is not None
        share = np.asarray(checked.arrays["share"], dtype=np.float64)
        fitres = FitRes(
            status=Status(Code.OK, ""),
            parameters=ndarrays_to_parameters([share - offset(int(request[MODULUS_KEY]))]),
            num_examples=1,  # Flower's SecAgg+ weight: 1 keeps the sum a plain sum (server.secure)
            metrics={},
        )
        return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=message)
    except TaskRefused as refused:
        logger.warning("declining the region's secure sum: %s", refused.detail)
        return _refusal(message, task, refused.code, refused.detail)
    except (ReplyNotAllowed, Exception) as exc:  # a fixed code out, the details in the node's log only
        logger.exception("the region's secure sum failed on the node (%s)", type(exc).__name__)
        checked_error = node_error()
        return Message(error=Error(code=checked_error.code, reason=checked_error.reason), reply_to=message)


def _names(ask: Any, count: int) -> list[str]:
    from medalloc_core.equipment.model import risk_parameter_shapes

    names = list(risk_parameter_shapes(ask.model_config))
    if len(names) != count:
        raise TaskRefused(
            Refusal.REQUEST_INVALID,
            protocol.REFUSAL_REASONS[Refusal.REQUEST_INVALID].format(what="global arrays do not fit the model config"),
        )
    return names


def secure_aggregation_mod(run_config: Callable[[Context], Mapping[str, Any] | None]) -> Mod:
    """The client mod: SecAgg+ messages to Flower's ``secaggplus_mod`` around the node's distributed-DP round.

    ``run_config`` gives the run-config mapping the node reads (``make_client_app``'s fused one).
    """

    def mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if message.metadata.message_type != MessageType.TRAIN or not message.has_content():
            return call_next(message, context)
        records = message.content.config_records
        task = _secure_task()
        if RECORD_KEY_CONFIGS not in records:
            fitins = records.get(FITINS_CONFIG)
            if fitins is not None and fitins.get(DISTRIBUTED_DP) is True:
                # Not masked: this node's vector is seen alone, so it carries the whole noise.
                return _answer(message, context, run_config(context), task, secure=False)
            return call_next(message, context)
        stage = records[RECORD_KEY_CONFIGS].get(Key.STAGE)
        if stage == Stage.COLLECT_MASKED_VECTORS:
            fitins = records.get(FITINS_CONFIG)
            if fitins is not None and fitins.get(REGION_SUM) is True:
                answer = _region_answer(message, context, run_config(context))
            else:
                answer = _answer(message, context, run_config(context), task, secure=True)
            if answer.has_error():
                return answer  # refused or failed: nothing is masked or sent

            def computed(_message: Message, _context: Context) -> Message:
                return answer

            return secaggplus_mod(message, context, computed)
        return secaggplus_mod(message, context, call_next)

    return mod
