"""The federation protocol, free of Flower: record names, one typed instruction and one typed reply per message kind.

Both apps speak through these classes: the ServerApp builds an instruction with
``to_dict()`` (the values of a Flower ``ConfigRecord``), the ClientApp reads it once with
``from_dict()``, and the same holds for replies and ``MetricRecord``s. A missing or malformed
field raises :class:`ProtocolError` naming it; nothing falls back to a default, so the two
sides cannot silently disagree on batch size, learning rate or epochs.

Everything a node sends is listed here: the model arrays, the reply metrics below and its own
hospital id, each on ``REPLY_ALLOW_LIST`` with its privacy treatment, and refusals whose reason
is one of ``REFUSAL_REASONS`` (``tests/test_privacy_patient.py`` enumerates every reply kind).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import IntEnum
from typing import Any, TypeVar

from medalloc_core.contract import COUNT_COLUMNS
from medalloc_core.forecast.features import WindowSpec
from medalloc_core.forecast.models import ForecasterConfig

# --- records inside a Message's RecordDict -------------------------------------------
ARRAYS = "arrays"  # ArrayRecord: model parameters (global in a request, local in a reply)
CONFIG = "config"  # ConfigRecord: what the coordinator proposes for this round
METRICS = "metrics"  # MetricRecord: the node's aggregate metrics
NODE_INFO = "node-info"  # ConfigRecord in replies: {"hospital-id": str}; nothing derived from data
# ConfigRecord in replies of a run whose window spec reads the region (context "region"), unless the node's
# own `share-released-totals = false`: the node's RELEASED daily totals, {"dates": [ISO], column: [float]}
# (medalloc_core.forecast.region.totals_record). Post-processing of its one source release: no new epsilon.
RELEASED_TOTALS = "released-totals"

# --- ConfigRecord keys, coordinator -> node --------------------------------------------
SERVER_ROUND = "server-round"  # injected by every Flower strategy
LOCAL_EPOCHS = "local-epochs"
BATCH_SIZE = "batch-size"
LR = "lr"
PROXIMAL_MU = "proximal-mu"  # injected by FedProx; 0 elsewhere
MODEL_CONFIG = "model-config"  # JSON of the ForecasterConfig the global arrays belong to
WINDOW_SPEC = "window-spec"  # JSON of the WindowSpec the model's inputs are built with
RUN_TAG = "run-tag"  # names the federation run in the node's privacy ledger
SEED = "seed"  # seeds plain training randomness only; a node's DP noise never comes from it (see below)
PRIVACY_MECHANISM = "privacy-mechanism"  # "source": counts released once per stay (the one a node offers)
PATIENT_EPSILON = "patient-epsilon"  # the most this run may spend per patient; the node caps it by its budget
MAX_STAY_DAYS = "max-stay-days"  # proposal; a node protects stays of max(its own, proposed) nights
REPRODUCIBLE_NOISE = "simulation-reproducible-noise"  # research only: DP noise from SEED; a real node refuses it
# JSON of the region this node is sent: the other nodes' released daily totals summed per day
# (medalloc_core.forecast.region.region_to_text); only in runs whose window spec reads the region.
REGION = "region"
# Under secure sums of the region (run config region-secure-aggregation = true; medalloc_core.forecast.secure_region):
# the flag on every request (a node then sends its totals' days only), the regional total (JSON, every node
# the same) and whether this node's vector was in it (the node subtracts its own and has the others' sum).
REGION_SECURE = "region-secure-aggregation"
REGION_TOTAL = "region-total"
REGION_INCLUDED = "region-summed-you"

# --- MetricRecord keys, node -> coordinator --------------------------------------------
NUM_EXAMPLES = "num-examples"  # the FedAvg weight; checked and capped by the coordinator
TRAIN_LOSS = "train-loss"
EPSILON = "epsilon"  # the node's cumulative PATIENT-level epsilon after this round (stays <= stay-cap-days)
EPSILON_BUDGET_LEFT = "epsilon-budget-left"
NOISE_MULTIPLIER = "noise-multiplier"  # the noise the node actually used (0 = no DP)
LOCAL_EPOCHS_USED = "local-epochs-used"
EVAL_LOSS = "eval-loss"  # pinball loss in the model's scaled space on the test split
EVAL_MAE = "eval-mae"  # median forecast, original units (patients / beds)
EVAL_WAPE = "eval-wape"
VAL_LOSS = "val-loss"  # pinball loss on the released validation windows: the coordinator keeps the best round by it
# the same loss per block of validation origins (unit and horizon-long block, sorted): the coordinator keeps the
# start unless a round beats it by more than their paired noise (medalloc_core.forecast.selection)
VAL_BLOCK_LOSSES = "val-block-losses"
#: The most validation blocks one reply may carry.
MAX_VAL_BLOCKS = 10_000
DELTA = "delta"  # the delta EPSILON is at (the node's ledger)
STAY_CAP_DAYS = "stay-cap-days"  # the stay length the node's epsilon covers


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
    LEDGER_CONFIG_MISMATCH = 1006  # the node's budget, delta, accountant or stay cap differ from its ledger's
    LEDGER_RESET_DETECTED = 1007  # the node has had a ledger and the configured one is missing or another one
    TASK_NOT_SERVED = 1008  # the request's task is not one the node's own config names
    NODE_ERROR = 1009  # the node failed in a way it did not foresee: a fixed code, the details in its own log
    APP_NOT_APPROVED = 1010  # the app (FAB hash) is not on the node data owner's approved list: nothing of it ran
    NODE_STORAGE_FAILED = 1011  # the node could not write its own files (a full disk): nothing was spent or released
    SECURE_AGGREGATION_NOT_AGREED = 1012  # secure aggregation was asked for and the node's own config does not agree

    @property
    def slug(self) -> str:
        """Short kebab-case name used at the start of the refusal reason."""
        return self.name.lower().replace("_", "-")


class ProtocolError(ValueError):
    """A message field is missing or malformed; the message names the field and what was expected."""


Scalar = int | float | str | bool
_T = TypeVar("_T")


def _float_list(raw: Mapping[str, Any], key: str, *, limit: int) -> list[float]:
    """``raw[key]`` checked to be a list of at most ``limit`` finite numbers."""
    if key not in raw:
        raise ProtocolError(f"'{key}' is missing")
    value = raw[key]
    if not isinstance(value, list) or len(value) > limit:
        raise ProtocolError(f"'{key}' must be a list of at most {limit} numbers")
    if any(isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) for v in value):
        raise ProtocolError(f"'{key}' must hold finite numbers only")
    return [float(v) for v in value]


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
    if kind is bool:
        if not isinstance(value, bool):
            raise ProtocolError(f"'{key}' must be true or false, got {value!r}")
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
    """What an evaluate request carries besides the global arrays: the model, its windows and the privacy proposal.

    Evaluation reads the node's source release too (the first contact of a run releases it),
    so both kinds carry the proposal.
    """

    server_round: int
    model_config: ForecasterConfig
    window_spec: WindowSpec
    privacy_mechanism: str  # "source"
    patient_epsilon: float  # the most this run may spend per patient (a proposal the node caps)
    max_stay_days: int  # a proposal: the node protects stays of max(its own, this) nights
    reproducible_noise: bool  # research only; a real node refuses True
    seed: int
    run_tag: str  # names the federation run in the node's privacy ledger (its release may come first)

    def to_dict(self) -> dict[str, Scalar]:
        """The ``ConfigRecord`` values of the request."""
        return {
            SERVER_ROUND: self.server_round,
            MODEL_CONFIG: json.dumps(self.model_config.to_dict(), sort_keys=True),
            WINDOW_SPEC: json.dumps(self.window_spec.to_dict(), sort_keys=True),
            PRIVACY_MECHANISM: self.privacy_mechanism,
            PATIENT_EPSILON: self.patient_epsilon,
            MAX_STAY_DAYS: self.max_stay_days,
            REPRODUCIBLE_NOISE: self.reproducible_noise,
            SEED: self.seed,
            RUN_TAG: self.run_tag,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> EvaluateInstruction:
        """Read a request's config; raises ``ProtocolError`` naming the first bad field."""
        return cls(**_evaluate_fields(raw))


@dataclass(frozen=True, kw_only=True)
class TrainInstruction(EvaluateInstruction):
    """A train request's proposals; the node caps them with its own config."""

    local_epochs: int
    batch_size: int
    lr: float
    proximal_mu: float  # FedProx; 0 for every other strategy

    def to_dict(self) -> dict[str, Scalar]:
        """The ``ConfigRecord`` values of the request."""
        return super().to_dict() | {
            LOCAL_EPOCHS: self.local_epochs,
            BATCH_SIZE: self.batch_size,
            LR: self.lr,
            PROXIMAL_MU: self.proximal_mu,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> TrainInstruction:
        """Read a request's config; raises ``ProtocolError`` naming the first bad field."""
        return cls(
            **_evaluate_fields(raw),
            local_epochs=_field(raw, LOCAL_EPOCHS, int, minimum=1),
            batch_size=_field(raw, BATCH_SIZE, int, minimum=1),
            lr=_field(raw, LR, float, above=0),
            proximal_mu=_field(raw, PROXIMAL_MU, float, minimum=0),
        )


def _evaluate_fields(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "server_round": _field(raw, SERVER_ROUND, int, minimum=0),
        "model_config": _model_config(raw),
        "window_spec": _window_spec(raw),
        "privacy_mechanism": _field(raw, PRIVACY_MECHANISM, str),
        "patient_epsilon": _field(raw, PATIENT_EPSILON, float, above=0),
        "max_stay_days": _field(raw, MAX_STAY_DAYS, int, minimum=1),
        "reproducible_noise": _field(raw, REPRODUCIBLE_NOISE, bool),
        "seed": _field(raw, SEED, int),
        "run_tag": _field(raw, RUN_TAG, str),
    }


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

    def metrics(self) -> dict[str, int | float | list[float]]:
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
            elif key == VAL_BLOCK_LOSSES:
                values[f.name] = _float_list(raw, key, limit=MAX_VAL_BLOCKS)
            else:
                values[f.name] = _field(raw, key, float)
        return cls(**values)


@dataclass(frozen=True, kw_only=True)
class TrainReply(_Reply):
    """A node's metrics after a train round."""

    train_loss: float  # on the node's released counts: post-processing
    epsilon: float  # the node's cumulative patient-level epsilon after this round
    epsilon_budget_left: float
    noise_multiplier: float  # the per-stay noise multiplier of the node's source release
    local_epochs_used: float
    delta: float  # the delta of ``epsilon``
    stay_cap_days: float  # the stay length ``epsilon`` covers


@dataclass(frozen=True, kw_only=True)
class EvaluateReply(_Reply):
    """A node's metrics after evaluating the global model on its test split."""

    eval_loss: float  # pinball loss in the model's scaled space, on the node's RELEASED test counts
    eval_mae: float  # median forecast vs released counts (patients / beds)
    eval_wape: float
    # pinball loss, scaled, on the node's RELEASED validation windows (before the test days): what the
    # coordinator picks the model it keeps by, so the test split stays unseen by that choice
    val_loss: float
    # the same per block of validation origins, in a fixed order: how the coordinator tells a gain from noise
    val_block_losses: list[float]


TRAIN_METRIC_KEYS: frozenset[str] = TrainReply.keys()
EVAL_METRIC_KEYS: frozenset[str] = EvaluateReply.keys()


# ------------------------------------------------------------------ what may leave a node, and why
# "public": a function of configuration and the calendar only (which units and days exist),
#           never of a count, so adding or removing a stay cannot change it.
# "post-processing": computed only from the node's source release (each count released once
#           through the Gaussian mechanism and charged to the ledger), so it costs nothing more.
# The example count is public: windows follow from the units and dates, not from counts.
PUBLIC, POST_PROCESSING = "public", "post-processing"
# The released daily totals (optional in a reply; the node's `share-released-totals` decides): the days are
# the node's declared public calendar, each value a sum of its released counts of that day.
_RELEASED_TOTALS: dict[str, str] = {"dates": PUBLIC} | {c: POST_PROCESSING for c in COUNT_COLUMNS}
# Records a reply MAY carry (all others it must carry).
OPTIONAL_REPLY_RECORDS = frozenset({RELEASED_TOTALS})
REPLY_ALLOW_LIST: dict[str, dict[str, dict[str, str]]] = {
    "train": {
        ARRAYS: {"*": POST_PROCESSING},
        METRICS: {
            NUM_EXAMPLES: PUBLIC,
            TRAIN_LOSS: POST_PROCESSING,
            EPSILON: PUBLIC,
            EPSILON_BUDGET_LEFT: PUBLIC,
            NOISE_MULTIPLIER: PUBLIC,
            LOCAL_EPOCHS_USED: PUBLIC,
            DELTA: PUBLIC,
            STAY_CAP_DAYS: PUBLIC,
        },
        NODE_INFO: {HOSPITAL_ID: PUBLIC},
        RELEASED_TOTALS: _RELEASED_TOTALS,
    },
    "evaluate": {
        METRICS: {
            NUM_EXAMPLES: PUBLIC,
            EVAL_LOSS: POST_PROCESSING,
            EVAL_MAE: POST_PROCESSING,
            EVAL_WAPE: POST_PROCESSING,
            VAL_LOSS: POST_PROCESSING,
            VAL_BLOCK_LOSSES: POST_PROCESSING,
        },
        NODE_INFO: {HOSPITAL_ID: PUBLIC},
        RELEASED_TOTALS: _RELEASED_TOTALS,
    },
    # Under secure sums of the region: one integer vector, the node's released daily totals (post-processing of its
    # one release) and a "reported" flag per day of the coordinator's window (public: the node's calendar),
    # only ever sent masked by Flower's SecAgg+ (client.secure).
    "region-sum": {ARRAYS: {"share": POST_PROCESSING}, NODE_INFO: {HOSPITAL_ID: PUBLIC}},
    # Error(code, reason): the code is public; the reason is one of REFUSAL_REASONS, filled in
    # with ledger numbers (budget, epsilon) or a description of the coordinator's own request.
    "refusal": {"error": {"code": PUBLIC, "reason": PUBLIC}},
    # `medalloc share`: the census quantiles a hospital sends for the regional plan.
    "share": {"table": {"hospital": PUBLIC, "date": PUBLIC, "q": PUBLIC, "value": POST_PROCESSING}},
}

# The only reasons a refusal may carry: fixed text per code. Never a count, row, date or value
# from the hospital's file (those stay in the node's log).
REFUSAL_REASONS: dict[Refusal, str] = {
    Refusal.PRIVACY_BUDGET_EXCEEDED: (
        "this would take the node's patient-level epsilon to {projected:.3f}, above its budget {budget:g}"
    ),
    Refusal.LEDGER_CORRUPT: "the node's privacy ledger or release cannot be trusted; its operator must fix it",
    Refusal.DATA_INVALID: "the node's file fails the data contract or cannot be windowed; see the node's log",
    Refusal.REQUEST_INVALID: "the request cannot be honoured: {what}",
    Refusal.NODE_MISCONFIGURED: "the node's own configuration is incomplete; see the node's log",
    Refusal.LEDGER_CONFIG_MISMATCH: (
        "the node's privacy settings differ from its ledger's; its operator must reconcile them"
    ),
    Refusal.LEDGER_RESET_DETECTED: (
        "the node has had a privacy ledger and the configured one is missing or another; its operator must restore it"
    ),
    Refusal.TASK_NOT_SERVED: "this node does not serve the '{task}' task (its own config decides)",
    Refusal.NODE_STORAGE_FAILED: (
        "the node could not write its own files (a full or read-only disk); its operator must free space"
    ),
    Refusal.NODE_ERROR: "the node could not serve this round; its operator has the details in the node's log",
    Refusal.SECURE_AGGREGATION_NOT_AGREED: (
        "the coordinator asked for secure aggregation with distributed DP; this node's own config does not agree to it"
    ),
}


def refusal_reason(code: Refusal, **values: Any) -> str:
    """``"<slug>: <reason>"`` for a refusal, from ``REFUSAL_REASONS`` only."""
    return f"{code.slug}: {REFUSAL_REASONS[code].format(**values)}"


# ------------------------------------------------------------------ for other tasks' messages
# A task's own instructions and replies (medalloc_core.tasks.equipment.protocol) read their fields
# with the same rules and the same ProtocolError messages.
read_field = _field
read_json_field = _json_field
Reply = _Reply
