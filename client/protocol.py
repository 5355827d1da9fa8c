"""The names a hospital node and the coordinator exchange: record keys, config keys, metric keys, refusal codes.

One place for the strings both sides use, so that the ClientApp, the ServerApp, the reply
checks and the tests cannot drift apart. Everything listed here is *all* that a node sends:
the model arrays, the metrics below and (optionally) its own hospital id. No record, window,
prediction or data statistic other than the example count ever appears in a reply.
"""

from __future__ import annotations

from enum import IntEnum

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

TRAIN_METRIC_KEYS: frozenset[str] = frozenset(
    {NUM_EXAMPLES, TRAIN_LOSS, EPSILON, EPSILON_BUDGET_LEFT, NOISE_MULTIPLIER, LOCAL_EPOCHS_USED}
)
EVAL_METRIC_KEYS: frozenset[str] = frozenset({NUM_EXAMPLES, EVAL_LOSS, EVAL_MAE, EVAL_WAPE})

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

    @property
    def slug(self) -> str:
        """Short kebab-case name used at the start of the refusal reason."""
        return self.name.lower().replace("_", "-")
