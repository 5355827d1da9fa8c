"""The strategy registry: one place that maps a run-config name to a Flower strategy, plus the wrappers.

``build_strategy(config)`` returns the strategy a run uses: Flower's own aggregation class,
optionally wrapped in Flower's client-level DP wrapper, always wrapped in the reply checks
(outermost, so DP clipping and the aggregation only ever see checked replies).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Krum,
    Strategy,
)

from medalloc_core import protocol
from medalloc_core.privacy.accounting import epsilon_for
from medalloc_core.tasks import FederatedTask, get_task

from .config import RunConfig
from .reply_checks import ReplyFilter, ReplyLimits, TaskReplies

logger = logging.getLogger(__name__)

StrategyBuilder = Callable[[RunConfig, dict], Strategy]


# ------------------------------------------------------------------ metric aggregation
def aggregate_train_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Weighted mean train loss; epsilon as max and mean across nodes (a privacy bound is never averaged away).

    Flower's default weights every metric by the example count, which would turn a node's
    cumulative epsilon into a meaningless weighted mean; here epsilon is reported as the worst
    node (``epsilon-max``) and the plain mean, and the budget left as the minimum.
    """
    metrics = [next(iter(r.metric_records.values())) for r in records]
    weights = np.array([float(m[weight_key]) for m in metrics])  # type: ignore[arg-type]
    epsilons = np.array([float(m[protocol.EPSILON]) for m in metrics])  # type: ignore[arg-type]
    left = np.array([float(m[protocol.EPSILON_BUDGET_LEFT]) for m in metrics])  # type: ignore[arg-type]
    out = MetricRecord(
        {
            "epsilon-max": float(epsilons.max()),
            "epsilon-mean": float(epsilons.mean()),
            "epsilon-budget-left-min": float(left.min()),
            "num-nodes": len(metrics),
            "num-examples-total": int(weights.sum()),
        }
    )
    if all(protocol.TRAIN_LOSS in m for m in metrics):  # a task whose nodes report no loss has none to average
        losses = np.array([float(m[protocol.TRAIN_LOSS]) for m in metrics])  # type: ignore[arg-type]
        out[protocol.TRAIN_LOSS] = float(np.average(losses, weights=weights))
    return out


def aggregate_eval_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Example-weighted mean of each evaluation metric (every key but the weight) across nodes.

    The reply checks have already held each reply to exactly its task's evaluate keys.
    """
    metrics = [next(iter(r.metric_records.values())) for r in records]
    weights = np.array([float(m[weight_key]) for m in metrics])  # type: ignore[arg-type]
    out = MetricRecord({"num-nodes": len(metrics)})
    keys = sorted(set.intersection(*(set(m) for m in metrics)) - {weight_key}) if metrics else []
    for key in keys:
        out[key] = float(np.average([float(m[key]) for m in metrics], weights=weights))  # type: ignore[arg-type]
    return out


def client_dp_epsilon(*, noise_multiplier: float, releases: int, delta: float) -> float:
    """Client-level epsilon after ``releases`` noisy aggregates, exact for composed Gaussians, without amplification.

    Each round releases the mean of updates clipped to C plus N(0, (sigma C / n)^2) noise: a
    Gaussian mechanism of noise multiplier sigma for adding or removing one hospital. Rounds
    compose; no subsampling amplification is claimed (q = 1), which is an upper bound whatever
    fraction of nodes a round samples.
    """
    return epsilon_for([(noise_multiplier, 1.0, releases)], delta=delta, accountant="rdp")


# ------------------------------------------------------------------ registry
def _common(config: RunConfig) -> dict:
    return {
        "fraction_train": config.fraction_train,
        "fraction_evaluate": config.fraction_evaluate,
        "min_train_nodes": min(config.min_train_nodes, config.min_available_nodes),
        "min_evaluate_nodes": min(config.min_train_nodes, config.min_available_nodes),
        "min_available_nodes": config.min_available_nodes,
        "weighted_by_key": protocol.NUM_EXAMPLES,
        "arrayrecord_key": protocol.ARRAYS,
        "configrecord_key": protocol.CONFIG,
        "train_metrics_aggr_fn": aggregate_train_metrics,
        "evaluate_metrics_aggr_fn": aggregate_eval_metrics,
    }


STRATEGIES: dict[str, StrategyBuilder] = {
    "fedavg": lambda c, kw: FedAvg(**kw),
    "fedprox": lambda c, kw: FedProx(**kw, proximal_mu=c.proximal_mu),
    "fedadam": lambda c, kw: FedAdam(
        **kw, eta=c.server_lr, eta_l=c.lr, beta_1=c.server_beta1, beta_2=c.server_beta2, tau=c.server_tau
    ),
    "fedmedian": lambda c, kw: FedMedian(**kw),
    "fedtrimmedavg": lambda c, kw: FedTrimmedAvg(**kw, beta=c.trimmed_beta),
    "krum": lambda c, kw: Krum(**kw, num_malicious_nodes=c.krum_malicious_nodes),
}
"""Name -> builder of the bare Flower strategy. Adding a strategy means adding one line here."""


@dataclass(frozen=True)
class BuiltStrategy:
    """The strategy to run and the pieces of it the ServerApp reads from."""

    strategy: ReplyFilter  # outermost: what the round loop calls
    base: Strategy  # the Flower aggregation strategy (holds FedAdam's moments)
    dp: DifferentialPrivacyServerSideFixedClipping | None


def build_strategy(
    config: RunConfig, *, num_sampled_nodes: int | None = None, task: FederatedTask | None = None
) -> BuiltStrategy:
    """Build the run's strategy from its config.

    Parameters
    ----------
    config : RunConfig
        The run configuration (``strategy``, sampling, DP and reply-check keys).
    num_sampled_nodes : int, optional
        Nodes sampled per round; needed by client-level DP to calibrate the noise
        (``stdev = noise_multiplier * clip / n``). Defaults to ``min-available-nodes``.
    task : FederatedTask, optional
        The run's task (default: ``config.task``): its Flower action names the requests, its
        reply keys are what the checks accept.
    """
    task = task or get_task(config.task)
    base = STRATEGIES[config.strategy](config, _common(config))
    inner: Strategy = base
    dp = None
    if config.client_dp:
        n = num_sampled_nodes or config.min_available_nodes
        dp = DifferentialPrivacyServerSideFixedClipping(
            base,
            noise_multiplier=config.client_dp_noise_multiplier,
            clipping_norm=config.client_dp_clipping_norm,
            num_sampled_clients=n,
        )
        inner = dp
    limits = ReplyLimits(
        max_update_norm=config.max_update_norm,
        max_examples=config.max_examples_weight,
        max_weight_ratio=config.max_weight_ratio,
    )
    replies = TaskReplies(task.action, task.train_keys, task.evaluate_keys)
    return BuiltStrategy(ReplyFilter(inner, limits, uniform_weights=config.client_dp, task=replies), base, dp)
