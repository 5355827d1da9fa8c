"""Reply checks: crafted bad replies are dropped before a real Flower strategy aggregates, and cannot move the model."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Error, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg, FedMedian

from medalloc.server.reply_checks import (
    ReplyFilter,
    ReplyLimits,
    check_arrays,
    check_metrics,
    clamp_weights,
    update_norm,
)
from medalloc.server.strategies import aggregate_eval_metrics, aggregate_train_metrics
from medalloc_core import protocol
from tests.fed_fixtures import (
    error_reply,
    record,
    task_identity,
    train_metrics,
    train_reply,
)

GLOBAL = {"w": np.zeros((2, 3), dtype=np.float32), "b": np.zeros(3, dtype=np.float32)}


def honest(i: int) -> dict[str, np.ndarray]:
    return {"w": np.full((2, 3), 0.1 * (i + 1), dtype=np.float32), "b": np.full(3, -0.1 * (i + 1), dtype=np.float32)}


def fedavg() -> FedAvg:
    return FedAvg(
        min_available_nodes=1,
        weighted_by_key=protocol.NUM_EXAMPLES,
        train_metrics_aggr_fn=aggregate_train_metrics,
        evaluate_metrics_aggr_fn=aggregate_eval_metrics,
    )


@pytest.fixture(autouse=True)
def _identity():
    with task_identity():
        yield


class _Grid:
    """configure_train only samples node ids from the grid; this offers fixed ones."""

    def get_node_ids(self):
        return [1, 2, 3, 4, 5, 6, 7, 8, 9]


def _filtered(strategy, limits: ReplyLimits | None = None) -> ReplyFilter:
    f = ReplyFilter(strategy, limits or ReplyLimits(max_update_norm=10.0, max_examples=10_000))
    list(f.configure_train(1, record(GLOBAL), __import__("flwr").app.ConfigRecord(), _Grid()))  # type: ignore[arg-type]
    return f


def bad_replies(g: ArrayRecord) -> dict[str, object]:
    nan = honest(0) | {"w": np.full((2, 3), np.nan, dtype=np.float32)}
    inf = honest(0) | {"b": np.array([0, np.inf, 0], dtype=np.float32)}
    shape = honest(0) | {"w": np.zeros((3, 2), dtype=np.float32)}
    dtype = honest(0) | {"w": np.zeros((2, 3), dtype=np.float64)}
    renamed = {"w": honest(0)["w"], "bias": honest(0)["b"]}
    huge = {"w": np.full((2, 3), 1e6, dtype=np.float32), "b": np.zeros(3, dtype=np.float32)}
    return {
        "nan": train_reply(11, nan, train_metrics(), g),
        "inf": train_reply(12, inf, train_metrics(), g),
        "shape": train_reply(13, shape, train_metrics(), g),
        "dtype": train_reply(14, dtype, train_metrics(), g),
        "key": train_reply(15, renamed, train_metrics(), g),
        "norm": train_reply(16, huge, train_metrics(), g),
        "count": train_reply(17, honest(0), train_metrics(num_examples=1e9), g),
        "zero-count": train_reply(18, honest(0), train_metrics(num_examples=0), g),
        "nan-loss": train_reply(19, honest(0), train_metrics(**{protocol.TRAIN_LOSS: float("nan")}), g),
        "missing-metric": train_reply(20, honest(0), {protocol.NUM_EXAMPLES: 10}, g),
    }


def test_every_crafted_bad_reply_is_dropped_and_the_model_equals_the_honest_average():
    g = record(GLOBAL)
    good = [train_reply(i + 1, honest(i), train_metrics(num_examples=100 * (i + 1)), g) for i in range(3)]
    bad = bad_replies(g)
    f = _filtered(fedavg())
    arrays, metrics = f.aggregate_train(1, [*good[:2], *bad.values(), good[2]])

    # Honest-only FedAvg by hand: weights 100, 200, 300.
    w = np.array([1, 2, 3]) / 6
    expected_w = sum(wi * honest(i)["w"] for i, wi in enumerate(w))
    assert arrays is not None
    np.testing.assert_allclose(arrays["w"].numpy(), expected_w, rtol=1e-6)
    np.testing.assert_allclose(arrays["b"].numpy(), -expected_w[0], rtol=1e-6)
    statuses = {o.node_id: (o.status, o.reason) for o in f.report.train}
    for node in range(11, 21):
        assert statuses[node][0] == "dropped", node
    assert "NaN or Inf" in statuses[11][1] and "NaN or Inf" in statuses[12][1]
    assert "shape (3, 2)" in statuses[13][1]
    assert "dtype float64" in statuses[14][1]
    assert "keys differ" in statuses[15][1]
    assert "update norm" in statuses[16][1]
    assert "1000000000" in statuses[17][1] and "outside [1, 10000]" in statuses[17][1]
    assert metrics is not None and metrics["num-nodes"] == 3


def test_only_bad_replies_leave_no_aggregate_and_a_real_strategy_is_not_called():
    g = record(GLOBAL)
    f = _filtered(fedavg())
    arrays, metrics = f.aggregate_train(1, list(bad_replies(g).values()))
    assert arrays is None and metrics is None


def test_without_the_filter_flower_lets_a_nan_reply_poison_the_model():
    # The reason the filter exists: Flower's FedAvg averages whatever arrives.
    g = record(GLOBAL)
    nan = honest(0) | {"w": np.full((2, 3), np.nan, dtype=np.float32)}
    arrays, _ = fedavg().aggregate_train(
        1, [train_reply(1, honest(0), train_metrics(), g), train_reply(2, nan, train_metrics(), g)]
    )
    assert arrays is not None and np.isnan(arrays["w"].numpy()).all()


def test_refusals_and_failures_are_recorded_not_aggregated():
    g = record(GLOBAL)
    f = _filtered(fedavg())
    replies = [
        train_reply(1, honest(0), train_metrics(), g),
        error_reply(2, int(protocol.Refusal.PRIVACY_BUDGET_EXCEEDED), "privacy-budget-exceeded: ...", g),
        error_reply(3, 2, "ClientApp raised", g),
    ]
    arrays, _ = f.aggregate_train(1, replies)
    assert arrays is not None
    np.testing.assert_allclose(arrays["w"].numpy(), honest(0)["w"])
    assert [(o.node_id, o.status) for o in f.report.train] == [(1, "accepted"), (2, "refused"), (3, "failed")]


def test_an_error_the_superlink_writes_for_an_unavailable_node_names_that_node():
    """Regression: Flower's node-unavailable reply comes from the SuperLink (node id 1), not the node.

    Found on real processes (tests/e2e/test_faults.py): a SuperNode killed mid-round showed up
    in metrics.jsonl as node "1". The reply names the request it answers; the outcome must
    name the request's destination.
    """
    g = record(GLOBAL)
    f = ReplyFilter(fedavg(), ReplyLimits(max_update_norm=10.0, max_examples=10_000))
    sent = list(f.configure_train(1, g, __import__("flwr").app.ConfigRecord(), _Grid()))  # type: ignore[arg-type]
    for message in sent:  # what the Grid does when it pushes them
        message.metadata.__dict__["_message_id"] = message.object_id
    honest_one, lost = [m for m in sent if m.metadata.dst_node_id != 1][:2]  # the sample's order is random
    unavailable = Message(error=Error(code=0, reason="Error: Node Unavailable"), reply_to=lost)
    unavailable.metadata.__dict__["_src_node_id"] = 1  # flwr SUPERLINK_NODE_ID, as the SuperLink writes it
    assert unavailable.metadata.src_node_id == 1 and lost.metadata.dst_node_id != 1
    replies = [train_reply(honest_one.metadata.dst_node_id, honest(0), train_metrics(), g), unavailable]
    f.aggregate_train(1, replies)
    assert [(o.node_id, o.status) for o in f.report.train] == [
        (honest_one.metadata.dst_node_id, "accepted"),
        (lost.metadata.dst_node_id, "failed"),
    ]


def test_inflated_but_plausible_count_is_clamped_to_ratio_times_median():
    g = record(GLOBAL)
    f = _filtered(fedavg(), ReplyLimits(max_update_norm=10, max_examples=100_000, max_weight_ratio=2.0))
    replies = [
        train_reply(1, honest(0), train_metrics(num_examples=100), g),
        train_reply(2, honest(1), train_metrics(num_examples=100), g),
        train_reply(3, honest(2), train_metrics(num_examples=50_000), g),
    ]
    arrays, _ = f.aggregate_train(1, replies)
    # median 100 -> ceiling 200: weights 100, 100, 200
    expected = (100 * honest(0)["w"] + 100 * honest(1)["w"] + 200 * honest(2)["w"]) / 400
    np.testing.assert_allclose(arrays["w"].numpy(), expected, rtol=1e-6)


def test_eval_replies_with_bad_metrics_are_dropped():
    g = record(GLOBAL)
    f = _filtered(fedavg())
    ok = {
        protocol.NUM_EXAMPLES: 10,
        protocol.EVAL_LOSS: 0.2,
        protocol.EVAL_MAE: 3.0,
        protocol.EVAL_WAPE: 0.1,
        protocol.VAL_LOSS: 0.2,
        protocol.VAL_BLOCK_LOSSES: [0.1, 0.3],
    }
    bad = ok | {protocol.EVAL_MAE: float("inf")}
    bad_blocks = ok | {protocol.VAL_BLOCK_LOSSES: [0.1, float("nan")]}
    longer = ok | {protocol.VAL_BLOCK_LOSSES: [0.2, 0.2, 0.2]}  # another node's own number of blocks
    from flwr.app import Message, RecordDict

    from tests.fed_fixtures import request

    replies = [
        Message(RecordDict({protocol.METRICS: MetricRecord(ok)}), reply_to=request(1, g, train=False)),
        Message(RecordDict({protocol.METRICS: MetricRecord(bad)}), reply_to=request(2, g, train=False)),
        Message(RecordDict({protocol.METRICS: MetricRecord(bad_blocks)}), reply_to=request(3, g, train=False)),
        Message(RecordDict({protocol.METRICS: MetricRecord(longer)}), reply_to=request(4, g, train=False)),
    ]
    metrics = f.aggregate_evaluate(1, replies)
    assert metrics is not None and metrics[protocol.EVAL_MAE] == pytest.approx(3.0)
    assert [o.status for o in f.report.evaluate] == ["accepted", "dropped", "dropped", "accepted"]
    # the per-block losses are kept per node, out of Flower's element-wise average (lengths differ)
    assert f.val_blocks == {"1": [0.1, 0.3], "4": [0.2, 0.2, 0.2]}
    assert protocol.VAL_BLOCK_LOSSES not in metrics


def test_robust_strategy_also_only_sees_checked_replies():
    g = record(GLOBAL)
    f = _filtered(FedMedian(min_available_nodes=1, train_metrics_aggr_fn=aggregate_train_metrics))
    good = [train_reply(i + 1, honest(i), train_metrics(), g) for i in range(3)]
    arrays, _ = f.aggregate_train(1, [*good, *bad_replies(g).values()])
    np.testing.assert_allclose(arrays["w"].numpy(), honest(1)["w"])  # the median of 0.1, 0.2, 0.3


# ------------------------------------------------------------------ the pure functions
def test_check_arrays_decodes_rather_than_trusting_declared_metadata():
    g = record(GLOBAL)
    lying = ArrayRecord(
        {"w": Array(dtype="float32", shape=(2, 3), stype="numpy.ndarray", data=b"not numpy"), "b": Array(GLOBAL["b"])}
    )
    assert "cannot be decoded" in check_arrays(lying, g)
    assert check_arrays(record(honest(0)), g) is None


def test_update_norm_is_the_l2_norm_of_the_difference():
    g = record(GLOBAL)
    assert update_norm(record(honest(0)), g) == pytest.approx(np.sqrt(6 * 0.01 + 3 * 0.01), rel=1e-6)


def test_check_metrics_rejects_fractional_and_boolean_counts():
    required = protocol.EVAL_METRIC_KEYS
    base = {
        protocol.NUM_EXAMPLES: 10,
        protocol.EVAL_LOSS: 0.2,
        protocol.EVAL_MAE: 3.0,
        protocol.EVAL_WAPE: 0.1,
        protocol.VAL_LOSS: 0.2,
        protocol.VAL_BLOCK_LOSSES: [0.2],
    }
    assert check_metrics(MetricRecord(base), required=required, max_examples=100) is None
    too_long = [0.2] * (protocol.MAX_VAL_BLOCKS + 1)
    assert "at most" in check_metrics(
        MetricRecord(base | {protocol.VAL_BLOCK_LOSSES: too_long}), required=required, max_examples=100
    )
    assert "whole number" in check_metrics(
        MetricRecord(base | {protocol.NUM_EXAMPLES: 10.5}), required=required, max_examples=100
    )
    assert "outside" in check_metrics(
        MetricRecord(base | {protocol.NUM_EXAMPLES: 101}), required=required, max_examples=100
    )


def test_clamp_weights_leaves_an_honest_spread_alone():
    assert clamp_weights([100, 300, 900], max_ratio=10) == [100, 300, 900]
    assert clamp_weights([100, 100, 10_000], max_ratio=10) == [100, 100, 1000]
    assert clamp_weights([5, 7], max_ratio=0) == [5, 7]


def test_limits_reject_nonsense():
    with pytest.raises(ValueError, match="max_examples"):
        ReplyLimits(max_examples=0)
