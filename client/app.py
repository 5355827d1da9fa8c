"""Flower ClientApp: a hospital node that trains the shared forecaster with DP-SGD on its own records.

Per round the node reads its own ``NodeConfig``, loads and validates its file, trains the
global model locally with DP-SGD (asking its privacy ledger first) and replies with the new
arrays and aggregate metrics only. The coordinator proposes epochs, noise and clipping; the
node caps them with its own config, and its ledger has the last word. A round the node
declines (budget exhausted, ledger corrupt, invalid data, a request it cannot honour) is
answered with a Flower ``Error`` carrying a ``protocol.Refusal`` code, never a crash.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from medalloc_core import protocol
from medalloc_core.contract import DataContractError, Frequency
from medalloc_core.features import WindowSpec
from medalloc_core.models import ForecasterConfig, build_from_arrays
from medalloc_core.privacy.accounting import noise_multiplier_for
from medalloc_core.privacy.fingerprint import fingerprint_frame
from medalloc_core.privacy.ledger import LedgerConfigMismatch, LedgerError, PrivacyBudgetExceeded, PrivacyLedger
from medalloc_core.privacy.plan import DPPlan
from medalloc_core.protocol import (
    EvaluateInstruction,
    EvaluateReply,
    ProtocolError,
    Refusal,
    TrainInstruction,
    TrainReply,
)
from medalloc_core.training import DPConfig, TrainConfig, train_local

from .config import NodeConfig, NodeConfigError
from .hints import data_hint, ledger_hint, window_hint
from .task import LocalData, evaluate_local, load_local_data

logger = logging.getLogger(__name__)

_I = TypeVar("_I", bound=EvaluateInstruction)


class _Refused(Exception):
    """Internal: carries a refusal from deep in a handler to the reply."""

    def __init__(self, code: Refusal, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def refusal(message: Message, code: Refusal, detail: str) -> Message:
    """The reply for a declined round: ``Error(code, "<slug>: <detail>")``. ``detail`` must hold no data."""
    return Message(error=Error(code=int(code), reason=f"{code.slug}: {detail}"), reply_to=message)


# ------------------------------------------------------------------ request parsing
def _request(message: Message, kind: type[_I]) -> tuple[ArrayRecord, _I]:
    """The request's global arrays and its typed instruction; a missing or malformed field is a refusal."""
    try:
        arrays = message.content.array_records[protocol.ARRAYS]
        config = message.content.config_records[protocol.CONFIG]
    except KeyError as exc:
        raise _Refused(Refusal.REQUEST_INVALID, f"the request has no {exc} record") from exc
    try:
        return arrays, kind.from_dict(config)  # type: ignore[return-value]
    except ProtocolError as exc:
        raise _Refused(Refusal.REQUEST_INVALID, f"cannot read the request: {exc}") from exc


def _node(context: Context, run_config: Mapping[str, Any] | None) -> NodeConfig:
    try:
        node = NodeConfig.from_context(context, run_config=run_config)
    except NodeConfigError as exc:
        logger.error("node configuration: %s", exc)
        raise _Refused(
            Refusal.NODE_MISCONFIGURED, "the node's own configuration is incomplete; see the node's log"
        ) from exc
    torch.set_num_threads(node.threads)
    if node.simulated:  # a virtual node's ledger folder belongs to the simulation; a real node's operator creates it
        node.ledger_path.parent.mkdir(parents=True, exist_ok=True)
    return node


def _data(node: NodeConfig, spec: WindowSpec) -> LocalData:
    try:
        return load_local_data(node.data_source, spec)
    except NodeConfigError as exc:  # the site mapping file named by data-mapping
        logger.error("node configuration: %s", exc)
        raise _Refused(
            Refusal.NODE_MISCONFIGURED, "the node's own configuration is incomplete; see the node's log"
        ) from exc
    except DataContractError as exc:
        # The problems name rows and values of the hospital's data: they stay in the node's log.
        logger.error("%s\n%s", exc, data_hint(node))
        errors = sum(1 for p in exc.problems if p.severity == "error")
        raise _Refused(
            Refusal.DATA_INVALID, f"{errors} data contract error(s) in the node's data; see the node's log"
        ) from exc
    except (OSError, ValueError) as exc:
        logger.error("%s: %s; %s", node.data_source_display, exc, window_hint(spec.resolved(Frequency.DAILY)))
        raise _Refused(
            Refusal.DATA_INVALID, "the node's data cannot be windowed for this model; see the node's log"
        ) from exc


def _model(model_config: ForecasterConfig, arrays: ArrayRecord, data: LocalData) -> Any:
    if data.dataset.n_features != model_config.n_features or data.dataset.n_targets != model_config.n_targets:
        raise _Refused(
            Refusal.REQUEST_INVALID,
            f"model expects F={model_config.n_features}, T={model_config.n_targets}; "
            f"the node's windows have F={data.dataset.n_features}, T={data.dataset.n_targets}",
        )
    try:
        return build_from_arrays(model_config, {k: v.numpy() for k, v in arrays.items()})
    except (ValueError, TypeError) as exc:
        raise _Refused(Refusal.REQUEST_INVALID, f"global arrays do not fit the model ({exc})") from exc


def _reply(
    message: Message, metrics: Mapping[str, int | float], node: NodeConfig, arrays: ArrayRecord | None = None
) -> Message:
    records: dict[str, Any] = {protocol.METRICS: MetricRecord(dict(metrics))}
    if arrays is not None:
        records[protocol.ARRAYS] = arrays
    records[protocol.NODE_INFO] = ConfigRecord({protocol.HOSPITAL_ID: node.hospital_id})
    return Message(content=RecordDict(records), reply_to=message)


# ------------------------------------------------------------------ the two handlers
def handle_train(message: Message, context: Context, *, run_config: Mapping[str, Any] | None = None) -> Message:
    """Train the global model on this node's data with DP-SGD, within the node's limits and ledger.

    ``run_config`` replaces ``context.run_config`` when given (see ``make_client_app``).
    """
    try:
        node = _node(context, run_config)
        arrays, ask = _request(message, TrainInstruction)
        data = _data(node, ask.window_spec)
        model = _model(ask.model_config, arrays, data)
        epochs = min(ask.local_epochs, node.max_local_epochs)
        noise = max(ask.dp_noise_multiplier, node.min_noise_multiplier)
        clip = min(ask.dp_max_grad_norm, node.max_grad_norm)
        train = data.dataset.train
        plan = DPPlan(n_examples=len(train), batch_size=ask.batch_size, epochs=epochs)
        if ask.dp_target_epsilon > 0:
            noise = max(
                noise,
                noise_multiplier_for(
                    target_epsilon=ask.dp_target_epsilon,
                    delta=node.delta,
                    sample_rate=plan.sample_rate,
                    steps=plan.steps,
                    accountant=node.accountant,
                ),
            )
        seed = _seed(ask.seed, ask.server_round, node.hospital_id)
        try:
            ledger = PrivacyLedger.open(
                node.ledger_path, epsilon_budget=node.epsilon_budget, delta=node.delta, accountant=node.accountant
            )
            result = train_local(
                model,
                train,
                config=TrainConfig(
                    epochs=epochs, batch_size=ask.batch_size, lr=ask.lr, fedprox_mu=ask.proximal_mu, seed=seed
                ),
                dp=DPConfig(noise_multiplier=noise, max_grad_norm=clip, delta=node.delta, accountant=node.accountant),
                ledger=ledger,
                fingerprint=fingerprint_frame(data.records.frame),
                global_params=[p.detach().clone() for p in model.parameters()] if ask.proximal_mu > 0 else None,
                run_id=f"{ask.run_tag}/round-{ask.server_round}",
            )
        except PrivacyBudgetExceeded as exc:
            logger.warning("%s: %s", node.hospital_id, exc)
            raise _Refused(
                Refusal.PRIVACY_BUDGET_EXCEEDED,
                f"this round would take the node's epsilon to {exc.projected_epsilon:.3f}, "
                f"above its budget {exc.epsilon_budget:g}",
            ) from exc
        except LedgerError as exc:
            hint = ledger_hint(node) if isinstance(exc, LedgerConfigMismatch) else ""
            logger.error("%s: privacy ledger %s: %s %s", node.hospital_id, node.ledger_path, exc, hint)
            raise _Refused(
                Refusal.LEDGER_CORRUPT,
                f"{type(exc).__name__}: the node trains nothing until its operator fixes the ledger",
            ) from exc
        epsilon, left = ledger.epsilon_spent(), ledger.remaining()
    except _Refused as refused:
        logger.warning("declining train round: %s", refused.detail)
        return refusal(message, refused.code, refused.detail)

    logger.info(
        "%s round %s: %s windows, loss %.4f, sigma %.3g, node epsilon %.3f (%.3f left)",
        node.hospital_id,
        ask.server_round,
        result.num_examples,
        result.loss,
        noise,
        epsilon,
        left,
    )
    reply = TrainReply(
        num_examples=int(result.num_examples),
        train_loss=float(result.loss),
        epsilon=float(epsilon),
        epsilon_budget_left=float(left),
        noise_multiplier=float(noise),
        local_epochs_used=float(epochs),
    )
    return _reply(message, reply.metrics(), node, ArrayRecord(model.state_dict()))


def handle_evaluate(message: Message, context: Context, *, run_config: Mapping[str, Any] | None = None) -> Message:
    """Score the global model on this node's test split; only aggregate metrics leave the node."""
    try:
        node = _node(context, run_config)
        arrays, ask = _request(message, EvaluateInstruction)
        data = _data(node, ask.window_spec)
        model = _model(ask.model_config, arrays, data)
        scores = evaluate_local(model, data.dataset)
    except _Refused as refused:
        logger.warning("declining evaluate round: %s", refused.detail)
        return refusal(message, refused.code, refused.detail)
    reply = EvaluateReply(
        num_examples=int(scores["n"]), eval_loss=scores["loss"], eval_mae=scores["mae"], eval_wape=scores["wape"]
    )
    return _reply(message, reply.metrics(), node)


def _seed(base: int, server_round: int, hospital_id: str) -> int:
    """Different per node and round, identical across reruns of the same run config."""
    return (base * 1_000_003 + server_round * 10_007 + zlib.crc32(hospital_id.encode())) % (2**31)


# ------------------------------------------------------------------ the app
def make_client_app(run_config: Mapping[str, Any] | None = None, *, mods: Sequence[Mod] = ()) -> ClientApp:
    """Build the ClientApp; ``run_config`` supplies run-config keys Flower's Python simulation API cannot pass.

    ``mods`` are Flower client mods wrapped around both handlers, first = outermost (the
    poisoning tests and benchmark wrap an honest node in ``simulations.attacks.AttackMod``).

    ``flwr.simulation.run_simulation`` gives virtual nodes an empty run config, so the
    simulation runner hands its (simulation-only) keys here. Under ``flwr run`` and on real
    SuperNodes ``run_config`` is ``None`` and Flower's own run config is used unchanged.
    """
    extra = dict(run_config or {})
    app = ClientApp(mods=list(mods))

    def fused(context: Context) -> Mapping[str, Any] | None:
        # Flower forbids changing context.run_config, so the fused mapping is passed along instead.
        return {**context.run_config, **extra} if extra else None

    @app.train()
    def train(message: Message, context: Context) -> Message:
        return handle_train(message, context, run_config=fused(context))

    @app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        return handle_evaluate(message, context, run_config=fused(context))

    return app


app = make_client_app()
