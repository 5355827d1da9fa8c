"""The federation protocol, free of Flower: record names, one typed instruction and one typed reply per message kind.

Both apps speak through these classes: the ServerApp builds an instruction with
``to_dict()`` (the values of a Flower ``ConfigRecord``), the ClientApp reads it once with
``from_dict()``, and the same holds for replies and ``MetricRecord``s. A missing or malformed
field raises :class:`ProtocolError` naming it; nothing falls back to a default, so the two
sides cannot silently disagree on batch size, learning rate or epochs.

Everything a node sends is listed here: the model arrays, the reply metrics below and its own
hospital id.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import IntEnum
from typing import Any, TypeVar

from medalloc_core.features import WindowSpec
from medalloc_core.models import ForecasterConfig

# --- records inside a Message's RecordDict -------------------------------------------
ARRAYS = "arrays"  # ArrayRecord: model parameters (global in a request, local in a reply)
CONFIG = "config"  # ConfigRecord: what the coordinator proposes for this round
METRICS = "metrics"  # MetricRecord: the node's aggregate metrics
NODE_INFO = "node-info"  # ConfigRecord in replies: {"hospital-id": str}; nothing derived from data

# --- ConfigRecord keys, coordinator -> node --------------------------------------------
SERVER_ROUND = "server-round"  # injected by every Flower strategy
LOCAL_EPOCHS = "local-epochs"
BATCH_SIZE = "batch-size"
LR = "lr"
PROXIMAL_MU = "proximal-mu"  # injected by FedProx; 0 elsewhere
DP_NOISE_MULTIPLIER = "dp-noise-multiplier"  # a proposal: the node raises it to its own minimum
DP_MAX_GRAD_NORM = "dp-max-grad-norm"
DP_TARGET_EPSILON = "dp-target-epsilon"  # per-round target; 0 = use the noise multiplier
MODEL_CONFIG = "model-config"  # JSON of the ForecasterConfig the global arrays belong to
WINDOW_SPEC = "window-spec"  # JSON of the WindowSpec the model's inputs are built with
RUN_TAG = "run-tag"  # names the federation run in the node's privacy ledger
SEED = "seed"

# --- MetricRecord keys, node -> coordinator --------------------------------------------
NUM_EXAMPLES = "num-examples"  # the FedAvg weight; checked and capped by the coordinator
TRAIN_LOSS = "train-loss"
EPSILON = "epsilon"  # the node's cumulative epsilon on this data after this round
EPSILON_BUDGET_LEFT = "epsilon-budget-left"
NOISE_MULTIPLIER = "noise-multiplier"  # the noise the node actually used (0 = no DP)
LOCAL_EPOCHS_USED = "local-epochs-used"
EVAL_LOSS = "eval-loss"  # pinball loss in the model's scaled space on the test split
EVAL_MAE = "eval-mae"  # median forecast, original units (patients / beds)
EVAL_WAPE = "eval-wape"


HOSPITAL_ID = "hospital-id"


class Refusal(IntEnum):
    """Error codes a node puts in its reply when it declines a round on its own authority.

    Flower's own codes are 0-8 (``flwr.common.constant.ErrorCode``); ours start at 1000 so
    the coordinator can tell a deliberate refusal from a crash.
    """

    PRIVACY_BUDGET_EXCEEDED = 1001  # the ledger says this round would exceed the node's budget
    LEDGER_CORRUPT = 1002  # the ledger cannot be trusted: the node trains nothing until fixed
    DATA_INVALID = 1003  # the node's records fail the data contract
    REQUEST_INVALID = 1004  # the coordinator's request cannot be honoured (wrong model, bad config)
    NODE_MISCONFIGURED = 1005  # the node's own config is incomplete (its operator must fix it)
    TASK_NOT_SERVED = 1008  # the request's task is not one the node's own config names

    @property
    def slug(self) -> str:
        """Short kebab-case name used at the start of the refusal reason."""
        return self.name.lower().replace("_", "-")


class ProtocolError(ValueError):
    """A message field is missing or malformed; the message names the field and what was expected."""


Scalar = int | float | str | bool
_T = TypeVar("_T")


def _field(
    raw: Mapping[str, Any], key: str, kind: type[_T], *, minimum: float | None = None, above: float | None = None
) -> _T:
    """``raw[key]`` checked to be of ``kind`` (ints accepted for floats), finite, and within bounds."""
    if key not in raw:
        raise ProtocolError(f"'{key}' is missing")
    value = raw[key]
    if kind is str:
        if not isinstance(value, str):
            raise ProtocolError(f"'{key}' must be a string, got {type(value).__name__}")
        return value  # type: ignore[return-value]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(f"'{key}' must be a number, got {value!r}")
    if kind is int and (isinstance(value, float) and not value.is_integer()):
        raise ProtocolError(f"'{key}' must be a whole number, got {value!r}")
    if not math.isfinite(value):
        raise ProtocolError(f"'{key}' must be finite, got {value!r}")
    if minimum is not None and value < minimum:
        raise ProtocolError(f"'{key}' must be >= {minimum:g}, got {value!r}")
    if above is not None and value <= above:
        raise ProtocolError(f"'{key}' must be > {above:g}, got {value!r}")
    return kind(value)  # type: ignore[call-arg]


def _json_field(raw: Mapping[str, Any], key: str) -> Any:
    text = _field(raw, key, str)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"'{key}' is not valid JSON ({exc.msg})") from exc


def _model_config(raw: Mapping[str, Any]) -> ForecasterConfig:
    value = _json_field(raw, MODEL_CONFIG)
    try:
        if not isinstance(value, dict):
            raise TypeError(f"a JSON object is expected, got {type(value).__name__}")
        return ForecasterConfig.from_dict(value)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"'{MODEL_CONFIG}' is not a valid model config ({exc})") from exc


def _window_spec(raw: Mapping[str, Any]) -> WindowSpec:
    try:
        return WindowSpec.from_dict(_json_field(raw, WINDOW_SPEC))
    except ValueError as exc:
        if isinstance(exc, ProtocolError):
            raise
        raise ProtocolError(f"'{WINDOW_SPEC}' is not a valid window spec ({exc})") from exc


# ------------------------------------------------------------------ coordinator -> node
@dataclass(frozen=True, kw_only=True)
class EvaluateInstruction:
    """What an evaluate request carries besides the global arrays: the model and its windows."""

    server_round: int
    model_config: ForecasterConfig
    window_spec: WindowSpec

    def to_dict(self) -> dict[str, Scalar]:
        """The ``ConfigRecord`` values of the request."""
        return {
            SERVER_ROUND: self.server_round,
            MODEL_CONFIG: json.dumps(self.model_config.to_dict(), sort_keys=True),
            WINDOW_SPEC: json.dumps(self.window_spec.to_dict(), sort_keys=True),
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> EvaluateInstruction:
        """Read a request's config; raises ``ProtocolError`` naming the first bad field."""
        return cls(
            server_round=_field(raw, SERVER_ROUND, int, minimum=0),
            model_config=_model_config(raw),
            window_spec=_window_spec(raw),
        )


@dataclass(frozen=True, kw_only=True)
class TrainInstruction(EvaluateInstruction):
    """A train request's proposals; the node caps epochs, noise and clipping with its own config."""

    local_epochs: int
    batch_size: int
    lr: float
    proximal_mu: float  # FedProx; 0 for every other strategy
    dp_noise_multiplier: float  # a proposal: the node raises it to its own minimum
    dp_target_epsilon: float  # per round; 0 = use the noise multiplier
    dp_max_grad_norm: float
    run_tag: str  # names the federation run in the node's privacy ledger
    seed: int

    def to_dict(self) -> dict[str, Scalar]:
        """The ``ConfigRecord`` values of the request."""
        return super().to_dict() | {
            LOCAL_EPOCHS: self.local_epochs,
            BATCH_SIZE: self.batch_size,
            LR: self.lr,
            PROXIMAL_MU: self.proximal_mu,
            DP_NOISE_MULTIPLIER: self.dp_noise_multiplier,
            DP_TARGET_EPSILON: self.dp_target_epsilon,
            DP_MAX_GRAD_NORM: self.dp_max_grad_norm,
            RUN_TAG: self.run_tag,
            SEED: self.seed,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> TrainInstruction:
        """Read a request's config; raises ``ProtocolError`` naming the first bad field."""
        base = EvaluateInstruction.from_dict(raw)
        return cls(
            server_round=base.server_round,
            model_config=base.model_config,
            window_spec=base.window_spec,
            local_epochs=_field(raw, LOCAL_EPOCHS, int, minimum=1),
            batch_size=_field(raw, BATCH_SIZE, int, minimum=1),
            lr=_field(raw, LR, float, above=0),
            proximal_mu=_field(raw, PROXIMAL_MU, float, minimum=0),
            dp_noise_multiplier=_field(raw, DP_NOISE_MULTIPLIER, float, minimum=0),
            dp_target_epsilon=_field(raw, DP_TARGET_EPSILON, float, minimum=0),
            dp_max_grad_norm=_field(raw, DP_MAX_GRAD_NORM, float, above=0),
            run_tag=_field(raw, RUN_TAG, str),
            seed=_field(raw, SEED, int),
        )


# ------------------------------------------------------------------ node -> coordinator
_R = TypeVar("_R", bound="_Reply")


@dataclass(frozen=True, kw_only=True)
class _Reply:
    """Shared reading and writing of a reply's ``MetricRecord``; subclasses list their fields."""

    num_examples: int  # the FedAvg weight; checked and capped by the coordinator

    @classmethod
    def keys(cls) -> frozenset[str]:
        """The metric keys of this reply, exactly."""
        return frozenset(f.name.replace("_", "-") for f in fields(cls))

    def metrics(self) -> dict[str, int | float]:
        """The ``MetricRecord`` values of the reply."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_metrics(cls: type[_R], raw: Mapping[str, Any]) -> _R:
        """Read a reply's metrics: exactly ``keys()``, every value a finite number."""
        extra = sorted(set(raw) - cls.keys())
        if extra:
            raise ProtocolError(f"unexpected metric key(s) {extra}; a reply carries exactly {sorted(cls.keys())}")
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = f.name.replace("_", "-")
            if f.name == "num_examples":
                values[f.name] = _field(raw, key, int, minimum=1)
            else:
                values[f.name] = _field(raw, key, float)
        return cls(**values)


@dataclass(frozen=True, kw_only=True)
class TrainReply(_Reply):
    """A node's metrics after a train round."""

    train_loss: float
    epsilon: float  # the node's cumulative epsilon on this data after this round
    epsilon_budget_left: float
    noise_multiplier: float  # the noise the node actually used
    local_epochs_used: float


@dataclass(frozen=True, kw_only=True)
class EvaluateReply(_Reply):
    """A node's metrics after evaluating the global model on its test split."""

    eval_loss: float  # pinball loss in the model's scaled space
    eval_mae: float  # median forecast, original units (patients / beds)
    eval_wape: float


TRAIN_METRIC_KEYS: frozenset[str] = TrainReply.keys()
EVAL_METRIC_KEYS: frozenset[str] = EvaluateReply.keys()


# ------------------------------------------------------------------ for other tasks' messages
# A task's own instructions and replies (medalloc_core.equipment.protocol) read their fields
# with the same rules and the same ProtocolError messages.
read_field = _field
read_json_field = _json_field
Reply = _Reply
