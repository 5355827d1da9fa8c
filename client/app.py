"""Flower ClientApp: a hospital node that trains the shared forecaster on its own records, privately per patient.

Per round the node reads its own ``NodeConfig``, loads and validates its file and opens its
patient-level privacy ledger through the node state record (so a deleted or replaced ledger is
noticed). Its one privacy mechanism is the *source release*: each day's counts are released
once through the Gaussian mechanism, calibrated per patient stay, charged to the ledger before
any noise is drawn, with noise from the OS CSPRNG. Training and evaluation then read only the
released counts: every round is post-processing and spends nothing. Replies carry only the
fields of ``protocol.REPLY_ALLOW_LIST``; a round the node declines is answered with a Flower
``Error`` carrying a ``protocol.Refusal`` code and one of ``protocol.REFUSAL_REASONS``.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from medalloc_core import protocol
from medalloc_core.contract import DataContractError, Frequency, UnitRecords
from medalloc_core.features import WindowSpec, prepare_hospital
from medalloc_core.models import ForecasterConfig, build_from_arrays
from medalloc_core.privacy.accounting import TargetUnreachable, noise_multiplier_for
from medalloc_core.privacy.fingerprint import fingerprint_frame
from medalloc_core.privacy.ledger import LedgerConfigMismatch, LedgerError, PrivacyBudgetExceeded, PrivacyLedger
from medalloc_core.privacy.node_state import LedgerResetDetected, open_node_ledger
from medalloc_core.privacy.release import (
    ReleasePlan,
    ReleaseStore,
    ReleaseStoreError,
    release_records,
    secure_generator,
)
from medalloc_core.protocol import (
    EvaluateInstruction,
    EvaluateReply,
    ProtocolError,
    Refusal,
    TrainInstruction,
    TrainReply,
)
from medalloc_core.training import TrainConfig, adaptive_batch_size, train_local

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
    """The reply for a declined round: ``Error(code, "<slug>: <detail>")``; ``detail`` comes from ``_reason``."""
    return Message(error=Error(code=int(code), reason=f"{code.slug}: {detail}"), reply_to=message)


def _reason(code: Refusal, **values: Any) -> str:
    """A refusal's detail: the code's fixed text in ``protocol.REFUSAL_REASONS``, never data from the file."""
    return protocol.REFUSAL_REASONS[code].format(**values)


# ------------------------------------------------------------------ request parsing
def _request(message: Message, kind: type[_I]) -> tuple[ArrayRecord, _I]:
    """The request's global arrays and its typed instruction; a missing or malformed field is a refusal."""
    try:
        arrays = message.content.array_records[protocol.ARRAYS]
        config = message.content.config_records[protocol.CONFIG]
    except KeyError as exc:
        raise _Refused(Refusal.REQUEST_INVALID, _reason(Refusal.REQUEST_INVALID, what=f"no {exc} record")) from exc
    try:
        return arrays, kind.from_dict(config)  # type: ignore[return-value]
    except ProtocolError as exc:
        raise _Refused(Refusal.REQUEST_INVALID, _reason(Refusal.REQUEST_INVALID, what=str(exc))) from exc


def _node(context: Context, run_config: Mapping[str, Any] | None) -> NodeConfig:
    try:
        node = NodeConfig.from_context(context, run_config=run_config)
    except NodeConfigError as exc:
        logger.error("node configuration: %s", exc)
        raise _Refused(Refusal.NODE_MISCONFIGURED, _reason(Refusal.NODE_MISCONFIGURED)) from exc
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
        # The problems name rows and values of the hospital's data (and how many there are is a
        # statistic of it too): they stay in the node's log.
        logger.error("%s\n%s", exc, data_hint(node))
        raise _Refused(Refusal.DATA_INVALID, _reason(Refusal.DATA_INVALID)) from exc
    except (OSError, ValueError) as exc:
        logger.error("%s: %s; %s", node.data_source_display, exc, window_hint(spec.resolved(Frequency.DAILY)))
        raise _Refused(Refusal.DATA_INVALID, _reason(Refusal.DATA_INVALID)) from exc


def _model(model_config: ForecasterConfig, arrays: ArrayRecord, data: LocalData) -> Any:
    if data.dataset.n_features != model_config.n_features or data.dataset.n_targets != model_config.n_targets:
        raise _Refused(
            Refusal.REQUEST_INVALID,
            _reason(
                Refusal.REQUEST_INVALID,
                what=f"the model expects F={model_config.n_features}, T={model_config.n_targets}; the window spec "
                f"gives F={data.dataset.n_features}, T={data.dataset.n_targets}",
            ),
        )
    try:
        return build_from_arrays(model_config, {k: v.numpy() for k, v in arrays.items()})
    except (ValueError, TypeError) as exc:
        raise _Refused(
            Refusal.REQUEST_INVALID,
            _reason(Refusal.REQUEST_INVALID, what=f"global arrays do not fit the model ({exc})"),
        ) from exc


def _reply(
    message: Message, metrics: Mapping[str, int | float], node: NodeConfig, arrays: ArrayRecord | None = None
) -> Message:
    records: dict[str, Any] = {protocol.METRICS: MetricRecord(dict(metrics))}
    if arrays is not None:
        records[protocol.ARRAYS] = arrays
    records[protocol.NODE_INFO] = ConfigRecord({protocol.HOSPITAL_ID: node.hospital_id})
    return Message(content=RecordDict(records), reply_to=message)


# ------------------------------------------------------------------ privacy: ledger, randomness, release
def _ledger(node: NodeConfig) -> PrivacyLedger:
    """The node's patient-level ledger, through its state record; each ledger problem is its own refusal."""
    assert node.node_state_path is not None
    try:
        return open_node_ledger(
            state_path=node.node_state_path,
            hospital_id=node.hospital_id,
            ledger_path=node.ledger_path,
            epsilon_budget=node.epsilon_budget,
            delta=node.delta,
            accountant=node.accountant,
            max_stay_days=node.max_stay_days,
        )
    except LedgerResetDetected as exc:
        logger.error("%s: %s", node.hospital_id, exc)
        raise _Refused(Refusal.LEDGER_RESET_DETECTED, _reason(Refusal.LEDGER_RESET_DETECTED)) from exc
    except LedgerConfigMismatch as exc:
        logger.error("%s: %s %s", node.hospital_id, exc, ledger_hint(node))
        raise _Refused(Refusal.LEDGER_CONFIG_MISMATCH, _reason(Refusal.LEDGER_CONFIG_MISMATCH)) from exc
    except LedgerError as exc:
        logger.error("%s: privacy ledger %s: %s", node.hospital_id, node.ledger_path, exc)
        raise _Refused(Refusal.LEDGER_CORRUPT, _reason(Refusal.LEDGER_CORRUPT)) from exc


def _noise_rng(node: NodeConfig, ask: EvaluateInstruction) -> np.random.Generator:
    """The node's DP noise: the OS CSPRNG, unless a *simulated* node is told to be reproducible.

    A real node refuses the switch: whoever knows the seed can subtract the noise, and the
    coordinator chose it (docs/privacy.md, "Randomness").
    """
    if not ask.reproducible_noise:
        return secure_generator()
    if not node.simulated:
        logger.error(
            "%s: the coordinator asked for reproducible (coordinator-known) DP noise; refused", node.hospital_id
        )
        raise _Refused(
            Refusal.REQUEST_INVALID,
            _reason(
                Refusal.REQUEST_INVALID,
                what=f"a real node never uses DP noise the coordinator can recompute ({protocol.REPRODUCIBLE_NOISE})",
            ),
        )
    logger.warning(
        "%s: DP noise from the run's seed: reproducible, NOT private against the coordinator (simulation only)",
        node.hospital_id,
    )
    return np.random.default_rng([ask.seed, zlib.crc32(node.hospital_id.encode())])


def _release_plan(
    node: NodeConfig, ask: EvaluateInstruction, ledger: PrivacyLedger, columns: Sequence[str]
) -> ReleasePlan:
    """The plan of a node's first release: the proposal capped by the budget, sized with the ledger's history."""
    if ask.privacy_mechanism != "source":
        raise _Refused(
            Refusal.REQUEST_INVALID,
            _reason(
                Refusal.REQUEST_INVALID,
                what=f"privacy-mechanism '{ask.privacy_mechanism}' is not offered; use 'source'",
            ),
        )
    target = min(ask.patient_epsilon, ledger.epsilon_budget)
    try:
        # docs/privacy.md: the noise is the least that keeps everything spent so far plus this
        # release within the target (shares or metrics spent earlier are composed in).
        z = noise_multiplier_for(
            target_epsilon=target,
            delta=ledger.delta,
            sample_rate=1.0,
            steps=1,
            accountant=ledger.accountant,
            history=ledger.history(),
            epsilon_tolerance=1e-4,
        )
    except TargetUnreachable as exc:
        spent = ledger.epsilon_spent()
        raise PrivacyBudgetExceeded(str(exc), projected_epsilon=spent, epsilon_budget=ledger.epsilon_budget) from exc
    stay = max(node.max_stay_days, ask.max_stay_days)
    return ReleasePlan.from_noise_multiplier(z, delta=ledger.delta, max_stay_days=stay, columns=columns)


def _release_columns(node: NodeConfig, ask: EvaluateInstruction, data: LocalData, store: ReleaseStore) -> None:
    """Refuse, before anything is spent, a release or a request the node's columns cannot serve.

    The release covers the node's ``release-columns`` that its file has (an admissions-only
    clinic releases admissions alone; the per-stay sensitivity then counts admissions only); a
    stored release keeps the columns it was made with. Targets outside them cannot be trained on.
    """
    present = set(data.records.count_columns)
    columns = store.plan.columns if store.plan is not None else _columns_to_release(node, data)
    lost = [c for c in columns if c not in present]
    if not columns or lost:
        logger.error(
            "%s: the file (columns %s) cannot serve the release of %s",
            node.hospital_id,
            sorted(present),
            list(columns or node.release_columns),
        )
        raise _Refused(Refusal.DATA_INVALID, _reason(Refusal.DATA_INVALID))
    unreleased = [t for t in ask.window_spec.targets if t not in columns]
    if unreleased:
        raise _Refused(
            Refusal.REQUEST_INVALID,
            _reason(
                Refusal.REQUEST_INVALID,
                what=f"target(s) {unreleased} are not among the columns this node releases ({', '.join(columns)})",
            ),
        )


def _columns_to_release(node: NodeConfig, data: LocalData) -> tuple[str, ...]:
    """The node's ``release-columns`` that its file has, in the configured order."""
    return tuple(c for c in node.release_columns if c in data.records.count_columns)


def _released(
    node: NodeConfig, ask: EvaluateInstruction, ledger: PrivacyLedger, data: LocalData, run_tag: str
) -> LocalData:
    """The node's released counts, extended to days not released yet (charged first, then drawn)."""
    assert node.release_path is not None
    try:
        store = ReleaseStore.open(node.release_path)
        _release_columns(node, ask, data, store)
        missing = store.missing_days(data.records)
        if len(missing):
            rng = _noise_rng(node, ask)
            plan = store.plan or _release_plan(node, ask, ledger, _columns_to_release(node, data))  # fixed for life
            frame = missing.sort_values(["unit", "date"]).reset_index(drop=True)
            days = (str(frame["date"].min().date()), str(frame["date"].max().date()))
            ledger.spend(
                fingerprint_frame(frame),
                noise_multiplier=plan.noise_multiplier,
                sample_rate=1.0,
                steps=1,
                run_id=f"{run_tag}/source-release",
                mechanism="source-release",
                days=days,
                detail={f"sd-{c}": sd for c, sd in plan.noise_sd.items()}
                | {"max-stay-days": float(plan.max_stay_days)},
            )
            part = UnitRecords(frame, data.records.frequency, data.records.source, data.records.shape)
            store.add(release_records(part, plan, rng=rng), plan)
            logger.info(
                "%s: released %d unit-days (%s..%s), per-stay noise multiplier %.4g",
                node.hospital_id,
                len(frame),
                days[0],
                days[1],
                plan.noise_multiplier,
            )
        records = store.records()
    except PrivacyBudgetExceeded as exc:
        logger.warning("%s: %s", node.hospital_id, exc)
        raise _Refused(
            Refusal.PRIVACY_BUDGET_EXCEEDED,
            _reason(Refusal.PRIVACY_BUDGET_EXCEEDED, projected=exc.projected_epsilon, budget=exc.epsilon_budget),
        ) from exc
    except ReleaseStoreError as exc:
        logger.error("%s: %s", node.hospital_id, exc)
        raise _Refused(Refusal.LEDGER_CORRUPT, _reason(Refusal.LEDGER_CORRUPT)) from exc
    except LedgerError as exc:
        logger.error("%s: privacy ledger %s: %s", node.hospital_id, node.ledger_path, exc)
        raise _Refused(Refusal.LEDGER_CORRUPT, _reason(Refusal.LEDGER_CORRUPT)) from exc
    try:
        return LocalData(records, prepare_hospital(records, data.dataset.spec))
    except ValueError as exc:
        logger.error("%s: released counts cannot be windowed: %s", node.hospital_id, exc)
        raise _Refused(Refusal.DATA_INVALID, _reason(Refusal.DATA_INVALID)) from exc


def _prepare(
    message: Message, context: Context, run_config: Mapping[str, Any] | None, kind: type[_I]
) -> tuple[NodeConfig, _I, Any, LocalData, PrivacyLedger]:
    """What both handlers do first: config, request, data, model, ledger, release."""
    node = _node(context, run_config)
    arrays, ask = _request(message, kind)
    if ask.reproducible_noise:
        _noise_rng(node, ask)  # a real node refuses before touching anything
    data = _data(node, ask.window_spec)
    model = _model(ask.model_config, arrays, data)
    ledger = _ledger(node)
    released = _released(node, ask, ledger, data, ask.run_tag)
    return node, ask, model, released, ledger


# ------------------------------------------------------------------ the two handlers
def handle_train(message: Message, context: Context, *, run_config: Mapping[str, Any] | None = None) -> Message:
    """Train the global model on this node's released counts: post-processing of its one source release.

    ``run_config`` replaces ``context.run_config`` when given (see ``make_client_app``).
    """
    try:
        node, ask, model, released, ledger = _prepare(message, context, run_config, TrainInstruction)
        epochs = min(ask.local_epochs, node.max_local_epochs)
        # The batch order needs no secrecy (no noise is added here): a reproducible simulation
        # repeats it, a real node draws it from its own generator.
        order = np.random.default_rng([ask.seed, ask.server_round]) if ask.reproducible_noise else secure_generator()
        seed = int(order.integers(2**31))
        train = released.dataset.train
        # A few windows in one batch would give one step per epoch; the batch size costs no
        # privacy under the source release, so it adapts (logged).
        batch_size = adaptive_batch_size(len(train), ask.batch_size)
        result = train_local(
            model,
            train,
            config=TrainConfig(epochs=epochs, batch_size=batch_size, lr=ask.lr, fedprox_mu=ask.proximal_mu, seed=seed),
            global_params=[p.detach().clone() for p in model.parameters()] if ask.proximal_mu > 0 else None,
        )
        plan = ReleaseStore.open(node.release_path).plan  # type: ignore[arg-type]
        epsilon, left = ledger.epsilon_spent(), ledger.remaining()
    except _Refused as refused:
        logger.warning("declining train round: %s", refused.detail)
        return refusal(message, refused.code, refused.detail)

    logger.info(
        "%s round %s: %s windows, loss %.4f on released counts, node patient epsilon %.3f (%.3f left)",
        node.hospital_id,
        ask.server_round,
        result.num_examples,
        result.loss,
        epsilon,
        left,
    )
    reply = TrainReply(
        num_examples=int(result.num_examples),
        train_loss=float(result.loss),
        epsilon=float(epsilon),
        epsilon_budget_left=float(left),
        noise_multiplier=float(plan.noise_multiplier if plan else 0.0),
        local_epochs_used=float(epochs),
        delta=float(ledger.delta),
        stay_cap_days=float(plan.max_stay_days if plan else node.max_stay_days),
    )
    return _reply(message, reply.metrics(), node, ArrayRecord(model.state_dict()))


def handle_evaluate(message: Message, context: Context, *, run_config: Mapping[str, Any] | None = None) -> Message:
    """Score the global model on this node's RELEASED test split: post-processing, nothing charged."""
    try:
        node, _, model, released, _ = _prepare(message, context, run_config, EvaluateInstruction)
        scores = evaluate_local(model, released.dataset)
    except _Refused as refused:
        logger.warning("declining evaluate round: %s", refused.detail)
        return refusal(message, refused.code, refused.detail)
    reply = EvaluateReply(
        num_examples=int(scores["n"]), eval_loss=scores["loss"], eval_mae=scores["mae"], eval_wape=scores["wape"]
    )
    return _reply(message, reply.metrics(), node)


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
