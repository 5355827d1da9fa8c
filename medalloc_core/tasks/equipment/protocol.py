"""The equipment task's messages: what the coordinator proposes each round and exactly what a node replies.

The same record names and field rules as the forecasting protocol (``medalloc_core.protocol``:
``arrays``, ``config``, ``metrics``, ``node-info``; a missing or malformed field raises
``ProtocolError`` naming it). The model config and snapshot spec travel as JSON under the same
keys (``model-config``, ``window-spec``). A node's train reply carries no loss and no score:
nothing computed from the node's devices leaves it except the DP-trained arrays.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from medalloc_core import protocol as p
from medalloc_core.equipment.features import SnapshotSpec
from medalloc_core.equipment.model import RiskModelConfig
from medalloc_core.protocol import (
    REPRODUCIBLE_NOISE,
    ProtocolError,
    Refusal,
    Reply,
    Scalar,
    read_field,
    read_json_field,
)

# Device-level DP-SGD proposals (ConfigRecord keys): the node raises the noise to its own minimum
# and lowers the clipping bound to its own maximum. Equipment's own: the forecasting task trains
# on the source release and sends no DP-SGD settings.
DP_NOISE_MULTIPLIER = "dp-noise-multiplier"
DP_MAX_GRAD_NORM = "dp-max-grad-norm"

PRIVACY_UNIT = "device"  # what one epsilon of the equipment ledger protects: a device's whole history
MECHANISM = "dp-sgd-device"  # the ledger's name for device-level DP-SGD


def _model_config(raw: Mapping[str, Any]) -> RiskModelConfig:
    try:
        return RiskModelConfig.from_dict(read_json_field(raw, p.MODEL_CONFIG))
    except ProtocolError:
        raise
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"'{p.MODEL_CONFIG}' is not a valid risk model config ({exc})") from exc


def _spec(raw: Mapping[str, Any]) -> SnapshotSpec:
    try:
        return SnapshotSpec.from_dict(read_json_field(raw, p.WINDOW_SPEC))
    except ProtocolError:
        raise
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"'{p.WINDOW_SPEC}' is not a valid snapshot spec ({exc})") from exc


@dataclass(frozen=True, kw_only=True)
class EquipmentInstruction:
    """A train request's proposals for the risk model; the node caps epochs, noise and clipping with its own config."""

    server_round: int
    model_config: RiskModelConfig
    spec: SnapshotSpec
    local_epochs: int
    batch_size: int  # expected devices per DP-SGD step
    lr: float
    proximal_mu: float  # FedProx; 0 for every other strategy
    dp_noise_multiplier: float  # a proposal: the node raises it to its own minimum
    dp_max_grad_norm: float  # per-device clipping bound; the node lowers it to its own maximum
    run_tag: str  # names the federation run in the node's ledger
    seed: int
    reproducible_noise: bool  # research only; a real node refuses True

    def __post_init__(self) -> None:
        if self.model_config.n_features != self.spec.n_features:
            raise ProtocolError(
                f"'{p.MODEL_CONFIG}' expects {self.model_config.n_features} features, "
                f"'{p.WINDOW_SPEC}' makes {self.spec.n_features}"
            )

    def to_dict(self) -> dict[str, Scalar]:
        """The ``ConfigRecord`` values of the request."""
        return {
            p.SERVER_ROUND: self.server_round,
            p.MODEL_CONFIG: json.dumps(self.model_config.to_dict(), sort_keys=True),
            p.WINDOW_SPEC: json.dumps(self.spec.to_dict(), sort_keys=True),
            p.LOCAL_EPOCHS: self.local_epochs,
            p.BATCH_SIZE: self.batch_size,
            p.LR: self.lr,
            p.PROXIMAL_MU: self.proximal_mu,
            DP_NOISE_MULTIPLIER: self.dp_noise_multiplier,
            DP_MAX_GRAD_NORM: self.dp_max_grad_norm,
            p.RUN_TAG: self.run_tag,
            p.SEED: self.seed,
            REPRODUCIBLE_NOISE: self.reproducible_noise,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> EquipmentInstruction:
        """Read a request's config; raises ``ProtocolError`` naming the first bad field."""
        return cls(
            server_round=read_field(raw, p.SERVER_ROUND, int, minimum=0),
            model_config=_model_config(raw),
            spec=_spec(raw),
            local_epochs=read_field(raw, p.LOCAL_EPOCHS, int, minimum=1),
            batch_size=read_field(raw, p.BATCH_SIZE, int, minimum=1),
            lr=read_field(raw, p.LR, float, above=0),
            proximal_mu=read_field(raw, p.PROXIMAL_MU, float, minimum=0),
            dp_noise_multiplier=read_field(raw, DP_NOISE_MULTIPLIER, float, above=0),
            dp_max_grad_norm=read_field(raw, DP_MAX_GRAD_NORM, float, above=0),
            run_tag=read_field(raw, p.RUN_TAG, str),
            seed=read_field(raw, p.SEED, int),
            reproducible_noise=read_field(raw, REPRODUCIBLE_NOISE, bool),
        )


@dataclass(frozen=True, kw_only=True)
class EquipmentTrainReply(Reply):
    """A node's metrics after a train round: bookkeeping only, no loss (it would be data the ledger did not charge)."""

    epsilon: float  # the node's cumulative device epsilon on the equipment ledger after this round
    epsilon_budget_left: float
    delta: float  # the ledger's delta
    noise_multiplier: float  # the noise the node actually used
    local_epochs_used: float


TRAIN_KEYS: frozenset[str] = EquipmentTrainReply.keys()


# ------------------------------------------------------------------ what may leave a node, and why
# "public": configuration and the fleet's size only, never a device's events. "dp-sgd-device":
# the arrays after device-level DP-SGD charged to the node's equipment ledger. No loss and no
# score on the node's devices is sent (they would be releases the ledger did not charge).
DP_SGD_DEVICE = "dp-sgd-device"
SKELLAM_DEVICE = "skellam-device"
REPLY_ALLOW_LIST: dict[str, dict[str, dict[str, str]]] = {
    "train": {
        p.ARRAYS: {"*": DP_SGD_DEVICE},
        p.METRICS: {key: p.PUBLIC for key in sorted(TRAIN_KEYS)},
        p.NODE_INFO: {p.HOSPITAL_ID: p.PUBLIC},
    },
    # Under secure aggregation (medalloc_core.tasks.equipment.secure): one integer vector, the node's
    # clipped gradient sum plus its Skellam noise share, charged to the ledger as "skellam-device"
    # and only ever sent masked by Flower's SecAgg+.
    "train-secure": {
        p.ARRAYS: {"share": SKELLAM_DEVICE},
        p.METRICS: {key: p.PUBLIC for key in sorted(TRAIN_KEYS)},
        p.NODE_INFO: {p.HOSPITAL_ID: p.PUBLIC},
    },
    "refusal": {"error": {"code": p.PUBLIC, "reason": p.PUBLIC}},
}

# The refusal reasons of the equipment task: the protocol's, with the budget in device epsilon.
REFUSAL_REASONS: dict[Refusal, str] = dict(p.REFUSAL_REASONS) | {
    Refusal.PRIVACY_BUDGET_EXCEEDED: (
        "this would take the node's device-level epsilon to {projected:.3f}, above its budget {budget:g}"
    ),
    Refusal.DATA_INVALID: "the node's fleet files fail the data contract or cannot be snapshotted; see the node's log",
}


def reason(code: Refusal, **values: Any) -> str:
    """A refusal's detail: the code's fixed text, never data from the node's files."""
    return REFUSAL_REASONS[code].format(**values)
