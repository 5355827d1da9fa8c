"""Checks every hospital reply before aggregation: a strategy wrapper over pure check functions.

Flower's strategies trust what nodes send: an update with a NaN, a wrong shape, a huge norm or
an inflated example count goes straight into the global model (or crashes the round). Here
each reply is checked against the global model the coordinator sent, and a bad one is dropped
with a log line naming the node and the reason, before the wrapped strategy sees it.

The checks are plain functions over ``ArrayRecord``/``MetricRecord`` so they can be tested
without a server; :class:`ReplyFilter` wraps any Flower strategy (the way
``DifferentialPrivacyServerSideFixedClipping`` does) and applies them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from medalloc_core import protocol

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplyLimits:
    """What the coordinator accepts from a node.

    Parameters
    ----------
    max_update_norm : float (default: 100.0)
        Largest accepted L2 norm of (reply - global) over all arrays; 0 disables the bound.
        The forecaster works in scaled space, so an honest local update is a few units at
        most; 100 only stops garbage.
    max_examples : int (default: 1_000_000)
        Largest example count a node may claim; a larger claim is dropped as implausible.
    max_weight_ratio : float (default: 10.0)
        A claim above this multiple of the median claim of the round's accepted replies is
        clamped to it, so one node cannot outweigh the others by inflating its count;
        0 disables the clamp.
    """

    max_update_norm: float = 100.0
    max_examples: int = 1_000_000
    max_weight_ratio: float = 10.0

    def __post_init__(self) -> None:
        if self.max_update_norm < 0 or not math.isfinite(self.max_update_norm):
            raise ValueError(f"max_update_norm must be finite and >= 0 (0 disables), got {self.max_update_norm}")
        if self.max_examples < 1:
            raise ValueError(f"max_examples must be >= 1, got {self.max_examples}")
        if self.max_weight_ratio < 0:
            raise ValueError(f"max_weight_ratio must be >= 0 (0 disables), got {self.max_weight_ratio}")


# ----------------------------------------------------------------------- pure checks
def check_arrays(reply: ArrayRecord, reference: ArrayRecord) -> str | None:
    """Return why ``reply`` cannot be aggregated with ``reference``, or ``None`` if it can.

    Same keys, and per key the same shape and dtype (as decoded, not as declared) and only
    finite values.
    """
    missing = sorted(set(reference.keys()) - set(reply.keys()))
    extra = sorted(set(reply.keys()) - set(reference.keys()))
    if missing or extra:
        return f"array keys differ from the global model (missing {missing[:3]}, unexpected {extra[:3]})"
    for key, ref in reference.items():
        try:
            value = reply[key].numpy()
        except Exception as exc:  # undecodable bytes: never let it reach numpy arithmetic
            return f"array '{key}' cannot be decoded ({type(exc).__name__})"
        expected = ref.numpy()
        if value.shape != expected.shape:
            return f"array '{key}' has shape {value.shape}, expected {expected.shape}"
        if value.dtype != expected.dtype:
            return f"array '{key}' has dtype {value.dtype}, expected {expected.dtype}"
        if not np.all(np.isfinite(value)):
            return f"array '{key}' contains NaN or Inf"
    return None


def update_norm(reply: ArrayRecord, reference: ArrayRecord) -> float:
    """L2 norm of (reply - reference) over all arrays, in float64; both must pass ``check_arrays``."""
    total = 0.0
    for key, ref in reference.items():
        diff = reply[key].numpy().astype(np.float64) - ref.numpy().astype(np.float64)
        total += float(np.sum(diff * diff))
    return math.sqrt(total)


def check_metrics(metrics: MetricRecord, *, required: frozenset[str], max_examples: int) -> str | None:
    """Return why a reply's metrics are unacceptable, or ``None``.

    The keys must be exactly ``required`` (Flower aborts a whole round's aggregation when
    replies disagree on keys, so a node speaking another protocol version is dropped here
    instead), every value finite, and the example count an integer in ``[1, max_examples]``.
    """
    keys = set(metrics.keys())
    if keys != required:
        return f"metric keys {sorted(keys)} differ from the expected {sorted(required)}"
    for key, value in metrics.items():
        values = value if isinstance(value, list) else [value]
        if len(values) > protocol.MAX_VAL_BLOCKS:
            return f"metric '{key}' holds {len(values)} values; at most {protocol.MAX_VAL_BLOCKS}"
        if any(isinstance(v, bool) or not math.isfinite(float(v)) for v in values):
            return f"metric '{key}' is not a finite number"
    count = metrics[protocol.NUM_EXAMPLES]
    if isinstance(count, list) or float(count) != int(count):
        return f"'{protocol.NUM_EXAMPLES}' must be a single whole number, got {count!r}"
    if not 1 <= int(count) <= max_examples:
        return f"'{protocol.NUM_EXAMPLES}' = {int(count)} is outside [1, {max_examples}]"
    return None


def clamp_weights(counts: list[int], *, max_ratio: float) -> list[int]:
    """Clamp each count to ``max_ratio`` times the median count; ``max_ratio=0`` returns them unchanged.

    With the median as reference a single node cannot raise its own ceiling, and an honest
    spread of hospital sizes (well under 10x around the median) is left alone.
    """
    if max_ratio == 0 or not counts:
        return list(counts)
    ceiling = max(1, int(max_ratio * float(np.median(counts))))
    return [min(c, ceiling) for c in counts]


# ------------------------------------------------------------------- round bookkeeping
@dataclass(frozen=True)
class TaskReplies:
    """The run's task as the reply checks see it: its Flower action and exactly its reply metric keys."""

    action: str = "default"  # "default": Flower's plain train/evaluate messages (the forecasting task)
    train_keys: frozenset[str] = protocol.TRAIN_METRIC_KEYS
    evaluate_keys: frozenset[str] = protocol.EVAL_METRIC_KEYS

    def addressed(self, messages: Iterable[Message]) -> list[Message]:
        """The strategy's requests under the task's action (``train.<action>``); unchanged for the default."""
        if self.action == "default":
            return list(messages)
        return [
            Message(
                content=m.content,
                dst_node_id=m.metadata.dst_node_id,
                message_type=f"{m.metadata.message_type.split('.')[0]}.{self.action}",
                group_id=m.metadata.group_id,
            )
            for m in messages
        ]


@dataclass
class NodeOutcome:
    """What happened to one node's reply in one round."""

    node_id: int
    status: str  # "accepted", "dropped", "refused" (the node declined) or "failed" (Flower error)
    reason: str = ""
    hospital_id: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    update_norm: float | None = None


@dataclass
class RoundReport:
    """Per-node outcomes of the latest train and evaluate phases, read by the ServerApp's round log."""

    train: list[NodeOutcome] = field(default_factory=list)
    evaluate: list[NodeOutcome] = field(default_factory=list)


def _untrusted(text: object, limit: int = 80) -> str:
    """A node-supplied string made safe for one log line: control characters escaped, at most ``limit`` characters.

    A hostile node chooses its hospital id, record names and error reasons; unescaped, a
    newline in them would forge coordinator log lines, and their length is unbounded.
    """
    value = str(text)
    clipped = value[:limit] + ("..." if len(value) > limit else "")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in clipped)


def _hospital_id(message: Message) -> str:
    info = message.content.config_records.get(protocol.NODE_INFO)
    value = info.get(protocol.HOSPITAL_ID, "") if info is not None else ""
    return _untrusted(value) if value else ""


def _only_metric_record(message: Message) -> MetricRecord | None:
    records = list(message.content.metric_records.values())
    return records[0] if len(records) == 1 else None


def _error_outcome(message: Message, node_id: int) -> NodeOutcome:
    code = message.error.code
    reason = _untrusted(message.error.reason or "", limit=300)
    status = "refused" if code in {r.value for r in protocol.Refusal} else "failed"
    return NodeOutcome(node_id, status, reason)


# ------------------------------------------------------------------------- the wrapper
class ReplyFilter(Strategy):
    """Strategy wrapper that drops malformed or implausible replies before the wrapped strategy sees them.

    Parameters
    ----------
    strategy : Strategy
        Any Flower strategy (possibly itself a DP wrapper); it receives only checked replies.
    limits : ReplyLimits
        The bounds applied to every reply.
    uniform_weights : bool (default: False)
        Set every accepted example count to 1. Client-level DP noise is calibrated for an
        unweighted mean (sensitivity ``clip / n``), so the DP option turns this on.
    task : TaskReplies (default: the forecasting task)
        The run's task: its action addresses the requests, its keys are the only reply keys accepted.
    """

    def __init__(
        self,
        strategy: Strategy,
        limits: ReplyLimits,
        *,
        uniform_weights: bool = False,
        task: TaskReplies | None = None,
    ) -> None:
        super().__init__()
        self.strategy = strategy
        self.limits = limits
        self.uniform_weights = uniform_weights
        self.task = task or TaskReplies()
        self.report = RoundReport()
        self._global: ArrayRecord | None = None
        self._sent: list[Message] = []
        # the last evaluation's per-node validation losses per block (protocol.VAL_BLOCK_LOSSES), by hospital
        # id (node id where a node names none): taken out of the metrics before Flower averages them
        self.val_blocks: dict[str, list[float]] = {}

    def __repr__(self) -> str:
        return f"ReplyFilter({self.strategy!r})"

    def summary(self) -> None:
        """Log the limits, then the wrapped strategy's summary."""
        logger.info(
            "reply checks: max update norm %s, max examples %s, max weight ratio %s, uniform weights %s",
            self.limits.max_update_norm,
            self.limits.max_examples,
            self.limits.max_weight_ratio,
            self.uniform_weights,
        )
        self.strategy.summary()

    # -- train ------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global arrays each reply is checked against, then delegate."""
        self._global = arrays
        self.report = RoundReport()
        self._sent = self.task.addressed(self.strategy.configure_train(server_round, arrays, config, grid))
        return self._sent

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Drop bad replies (logged), clamp weights, and aggregate the rest with the wrapped strategy."""
        if self._global is None:
            raise RuntimeError("aggregate_train called before configure_train: no global model to check against")
        accepted = self._screen(server_round, list(replies), train=True)
        if not accepted:
            logger.warning("round %s: no acceptable training reply; the global model is unchanged", server_round)
            return None, None
        return self.strategy.aggregate_train(server_round, accepted)

    # -- evaluate ---------------------------------------------------------------------
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Delegate, remembering the messages (see ``_addressee``)."""
        self.val_blocks = {}
        self._sent = self.task.addressed(self.strategy.configure_evaluate(server_round, arrays, config, grid))
        return self._sent

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Drop replies with bad metrics and aggregate the rest with the wrapped strategy."""
        accepted = self._screen(server_round, list(replies), train=False)
        if not accepted:
            return None
        return self.strategy.aggregate_evaluate(server_round, accepted)

    # -- shared -----------------------------------------------------------------------
    def _addressees(self) -> dict[str, int]:
        """Message id -> destination node of the requests last sent (ids are set when the Grid pushes them)."""
        return {m.metadata.message_id: m.metadata.dst_node_id for m in self._sent if m.metadata.message_id}

    def _screen(self, server_round: int, replies: list[Message], *, train: bool) -> list[Message]:
        phase = "train" if train else "evaluate"
        outcomes: list[NodeOutcome] = []
        accepted: list[Message] = []
        addressee = self._addressees()
        for message in replies:
            node = message.metadata.src_node_id
            if message.has_error():
                # Errors the SuperLink writes itself (node unavailable, message expired) come
                # from the SuperLink's own node id: name the node the request went to.
                node = addressee.get(message.metadata.reply_to_message_id, node)
                outcome = _error_outcome(message, node)
                logger.warning("round %s %s: node %s %s: %s", server_round, phase, node, outcome.status, outcome.reason)
                outcomes.append(outcome)
                continue
            reason, norm = self._check(message, train=train)
            hospital = _hospital_id(message)
            if reason is not None:
                reason = _untrusted(reason, limit=300)  # may quote node-chosen keys and names
                logger.warning(
                    "round %s %s: dropped reply from node %s%s: %s",
                    server_round,
                    phase,
                    node,
                    f" ({hospital})" if hospital else "",
                    reason,
                )
                outcomes.append(NodeOutcome(node, "dropped", reason, hospital, update_norm=norm))
                continue
            metrics = _only_metric_record(message)
            assert metrics is not None  # _check guarantees it
            if protocol.VAL_BLOCK_LOSSES in metrics:
                # one list per node, of the node's own length: Flower would average them element by element
                self.val_blocks[hospital or str(node)] = [float(v) for v in metrics.pop(protocol.VAL_BLOCK_LOSSES)]  # type: ignore[union-attr]
            outcomes.append(
                NodeOutcome(node, "accepted", "", hospital, {k: float(v) for k, v in metrics.items()}, norm)  # type: ignore[arg-type]
            )
            accepted.append(message)
        self._reweight(server_round, accepted)
        if train:
            self.report.train = outcomes
        else:
            self.report.evaluate = outcomes
        return accepted

    def _check(self, message: Message, *, train: bool) -> tuple[str | None, float | None]:
        content = message.content
        metrics = _only_metric_record(message)
        if metrics is None:
            return f"expected exactly one MetricRecord, got {len(content.metric_records)}", None
        if protocol.METRICS not in content.metric_records:
            # Flower reads every reply's records under the *first* reply's record name: one node
            # naming its record differently would make it reject the whole round's aggregation.
            return (
                f"MetricRecord is named '{_untrusted(next(iter(content.metric_records)))}', "
                f"expected '{protocol.METRICS}'",
                None,
            )
        required = self.task.train_keys if train else self.task.evaluate_keys
        reason = check_metrics(metrics, required=required, max_examples=self.limits.max_examples)
        if reason is not None or not train:
            return reason, None
        if len(content.array_records) != 1:
            return f"expected exactly one ArrayRecord, got {len(content.array_records)}", None
        if protocol.ARRAYS not in content.array_records:
            return (
                f"ArrayRecord is named '{_untrusted(next(iter(content.array_records)))}', expected '{protocol.ARRAYS}'",
                None,
            )
        assert self._global is not None
        arrays = next(iter(content.array_records.values()))
        reason = check_arrays(arrays, self._global)
        if reason is not None:
            return reason, None
        norm = update_norm(arrays, self._global)
        if self.limits.max_update_norm and norm > self.limits.max_update_norm:
            return f"update norm {norm:.4g} exceeds the bound {self.limits.max_update_norm:.4g}", norm
        if self.uniform_weights and norm == 0.0:
            # Flower's DP clipping divides by the update norm (flwr 1.42): a no-op update would
            # crash the round's aggregation, and it carries nothing to aggregate anyway.
            return "update is exactly zero (nothing trained)", norm
        return None, norm

    def _reweight(self, server_round: int, accepted: list[Message]) -> None:
        metrics = [_only_metric_record(m) for m in accepted]
        counts = [int(m[protocol.NUM_EXAMPLES]) for m in metrics if m is not None]  # type: ignore[arg-type]
        if self.uniform_weights:
            new_counts = [1] * len(counts)
        else:
            new_counts = clamp_weights(counts, max_ratio=self.limits.max_weight_ratio)
        for message, record, old, new in zip(accepted, metrics, counts, new_counts, strict=True):
            if new != old and record is not None:
                if not self.uniform_weights:
                    logger.warning(
                        "round %s: node %s claimed %s examples; weight clamped to %s",
                        server_round,
                        message.metadata.src_node_id,
                        old,
                        new,
                    )
                record[protocol.NUM_EXAMPLES] = new


def outcomes_by_status(outcomes: Iterable[NodeOutcome]) -> Mapping[str, int]:
    """Count outcomes per status, e.g. ``{"accepted": 3, "dropped": 1}``."""
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    return counts
