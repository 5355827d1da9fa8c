"""Hostile or broken hospitals: the real ServerApp and ClientApps (in-process grid) with attacker mods on some nodes."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Context, Message, MessageType, RecordDict

from medalloc.client.app import make_client_app
from medalloc.server.app import METRICS_FILE, FederationResult, run_federation
from medalloc.server.config import RunConfig
from medalloc.server.reply_checks import ReplyFilter, ReplyLimits
from medalloc.simulations.attacks import (
    ATTACK_KINDS,
    CAUGHT_KINDS,
    Attack,
    AttackMod,
    SilentMod,
    corrupt_arrays,
    honest_wape,
    node_index,
)
from medalloc_core import protocol
from tests.fed_fixtures import (
    TINY,
    DirectGrid,
    error_reply,
    record,
    small_region,
    task_identity,
    train_metrics,
    train_reply,
)

HOSPITALS = 5


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_region(tmp_path_factory.mktemp("poison") / "r", hospitals=HOSPITALS)


class Recorder:
    """Outermost client mod: what each node received and what the coordinator got back, per round."""

    def __init__(self) -> None:
        self.globals: dict[int, dict[str, np.ndarray]] = {}
        self.replies: dict[int, dict[int, tuple[dict[str, np.ndarray], int]]] = {}

    def __call__(self, msg: Message, ctxt: Context, call_next: Any) -> Message:
        reply = call_next(msg, ctxt)
        if msg.metadata.message_type == MessageType.TRAIN and not reply.has_error():
            rnd = int(msg.content[protocol.CONFIG][protocol.SERVER_ROUND])  # type: ignore[arg-type]
            self.globals[rnd] = {k: v.numpy() for k, v in msg.content[protocol.ARRAYS].items()}  # type: ignore[union-attr]
            arrays = {k: v.numpy() for k, v in reply.content.array_records.get(protocol.ARRAYS, {}).items()}
            count = int(reply.content[protocol.METRICS][protocol.NUM_EXAMPLES])  # type: ignore[arg-type]
            self.replies.setdefault(rnd, {})[node_index(ctxt)] = (arrays, count)
        return reply


def federate(
    region: Path, out: Path, *, hospitals: Collection[int], mods: list[Any], rounds: int = 2, **keys: Any
) -> tuple[FederationResult, list[dict[str, Any]]]:
    """One federation over the region's hospitals ``hospitals`` (no evaluation phase).

    Simulated nodes with reproducible noise (the research switch): the comparisons below need two
    federations over the same data to see the same release and batch order. Their source releases
    are kept per ``out`` so every federation starts from its own.
    """
    config = {"out-dir": str(out), "num-server-rounds": rounds, "min-available-nodes": len(hospitals),
              "min-train-nodes": len(hospitals), "fraction-evaluate": 0.0, "local-epochs": 1,
              "simulation-reproducible-noise": True} | TINY | keys  # fmt: skip
    data = out / "region"  # this federation's own copy: its own ledgers and releases
    data.mkdir(parents=True)
    for path in sorted(region.glob("H*.csv")):
        shutil.copy(path, data / path.name)
    nodes = {i + 1: {"partition-id": i, "num-partitions": HOSPITALS} for i in hospitals}
    app_keys = {"simulation-data-dir": str(data), "simulation-epsilon-budget": 1000.0}
    grid = DirectGrid(make_client_app(app_keys, mods=mods), nodes)
    with task_identity():
        result = run_federation(grid, RunConfig.from_mapping(config))
    log = [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]
    return result, log


def fedavg(
    replies: Mapping[int, tuple[dict[str, np.ndarray], int]], weights: Mapping[int, float]
) -> dict[str, np.ndarray]:
    """FedAvg by hand, in float64."""
    total = sum(weights.values())
    keys = replies[next(iter(weights))][0].keys()
    return {k: sum(weights[n] * replies[n][0][k].astype(np.float64) for n in weights) / total for k in keys}


def wape(region: Path, arrays: Mapping[str, np.ndarray], hospitals: Collection[int]) -> float:
    config = RunConfig.from_mapping(TINY)
    return honest_wape(arrays, [region / f"H{i:03d}.csv" for i in hospitals], config)


# ------------------------------------------------------------------ pure corruption
BASE = {"w": np.ones((2, 3), dtype=np.float32), "b": np.zeros(3, dtype=np.float32)}
HONEST = {"w": np.full((2, 3), 1.5, dtype=np.float32), "b": np.full(3, 0.5, dtype=np.float32)}  # update: 0.5 everywhere


def test_every_attack_kind_changes_what_is_sent():
    for kind in ATTACK_KINDS:
        if kind in ("inflated_count", "empty", "wrong_record"):  # these corrupt the metrics / the record layout instead
            continue
        sent = corrupt_arrays(HONEST, BASE, Attack(kind))
        same = sent.keys() == HONEST.keys() and all(
            sent[k].shape == HONEST[k].shape and sent[k].dtype == HONEST[k].dtype and np.array_equal(sent[k], HONEST[k])
            for k in HONEST
        )
        assert not same, kind


def test_scaled_attacks_are_exact_multiples_of_the_honest_update():
    flip = corrupt_arrays(HONEST, BASE, Attack("sign_flip", factor=4))
    np.testing.assert_allclose(flip["w"], 1 - 4 * 0.5)
    np.testing.assert_allclose(flip["b"], -4 * 0.5)
    scaled = corrupt_arrays(HONEST, BASE, Attack("scale", factor=3))
    np.testing.assert_allclose(scaled["w"], 1 + 3 * 0.5)
    huge = corrupt_arrays(HONEST, BASE, Attack("huge_norm"))
    np.testing.assert_allclose(huge["b"], 0.5e6)
    # stealthy: flipped direction, norm exactly as asked (9 entries of -0.5 rescaled to norm 7)
    stealthy = corrupt_arrays(HONEST, BASE, Attack("stealthy", norm=7.0))
    update = np.concatenate([(stealthy["w"] - BASE["w"]).ravel(), (stealthy["b"] - BASE["b"]).ravel()])
    assert np.linalg.norm(update) == pytest.approx(7.0, rel=1e-6)
    assert np.all(update < 0)
    # inputs untouched
    assert np.all(HONEST["w"] == 1.5)


def test_attack_rejects_an_unknown_kind():
    with pytest.raises(ValueError, match="unknown attack kind"):
        Attack("gradient_ascent")


# ------------------------------------------------------------------ attacks the checks catch
@pytest.mark.slow
def test_caught_attacks_never_reach_the_global_model(region: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """Three honest hospitals, and every caught attack kind at once plus a clamped count, over two rounds.

    Node indices 0..2 are honest, 3 claims a plausible but inflated count, and each further
    index runs one caught attack. After every round the global model must equal FedAvg of the
    honest replies (weights = their counts) plus the inflated node at weight 10x the median.
    """
    caught = sorted(CAUGHT_KINDS) + ["inflated_count"]  # the last one claims 1e9: beyond max-examples-weight
    kinds = {4 + j: Attack(kind) for j, kind in enumerate(caught)}
    kinds[3] = Attack("inflated_count", count=900_000)  # under max-examples-weight (1e6): clamped, not dropped
    # Every attacker trains the honest model on a real hospital file; files repeat (5 hospitals).
    hospitals = list(range(4 + len(caught)))
    region_nodes = tmp_path / "region"
    region_nodes.mkdir()
    for i in hospitals:
        (region_nodes / f"H{i:03d}.csv").symlink_to(region / f"H{i % HOSPITALS:03d}.csv")
    recorder = Recorder()
    mods = [recorder, *[AttackMod(attack, attackers=[i]) for i, attack in kinds.items()]]
    with caplog.at_level(logging.WARNING, logger="medalloc.server.reply_checks"):
        result, log = federate(region_nodes, tmp_path / "out", hospitals=hospitals, mods=mods, rounds=2)

    rounds = [r for r in log if r["round"] > 0]
    assert [r["model-updated"] for r in rounds] == [True, True]
    for round_log in rounds:
        by_node = {int(o["node"]) - 1: o for o in round_log["outcomes"]}
        assert {i for i, o in by_node.items() if o["status"] == "accepted"} == {0, 1, 2, 3}
        for i in kinds:
            if i == 3:
                continue
            assert by_node[i]["status"] == "dropped", (i, kinds[i])
        reasons = {kinds[i].kind: by_node[i]["reason"] for i in kinds if i != 3}
        assert "NaN or Inf" in reasons["nan"] and "NaN or Inf" in reasons["inf"]
        assert "update norm" in reasons["huge_norm"] and "exceeds the bound 100" in reasons["huge_norm"]
        assert "has shape" in reasons["wrong_shape"]
        assert "keys differ" in reasons["wrong_key"] and "poisoned" in reasons["wrong_key"]
        assert "dtype float64" in reasons["wrong_dtype"]
        assert "exactly one ArrayRecord, got 0" in reasons["empty"]
        assert "ArrayRecord is named 'weights', expected 'arrays'" in reasons["wrong_record"]
        assert "1000000000" in reasons["inflated_count"] and "outside [1, 1000000]" in reasons["inflated_count"]
    # each drop is a log line naming the node and the reason
    dropped_lines = [r.getMessage() for r in caplog.records if "dropped reply from node" in r.getMessage()]
    assert len(dropped_lines) == 2 * len(caught)
    assert any(f"node {4 + caught.index('nan') + 1} (H" in line and "NaN or Inf" in line for line in dropped_lines)

    # the global model after each round is the honest aggregate, with the inflated claim clamped
    finals = {1: recorder.globals[2], 2: result.arrays}
    for rnd, actual in finals.items():
        replies = recorder.replies[rnd]
        counts = {i: replies[i][1] for i in range(4)}
        assert counts[3] == 900_000
        cap = int(10 * np.median(list(counts.values())))
        weights = {i: float(c) for i, c in counts.items() if i != 3} | {3: float(cap)}
        assert weights[3] <= 10 * np.median(list(counts.values())) < counts[3]
        expected = fedavg(replies, weights)
        for key, value in expected.items():
            np.testing.assert_allclose(actual[key], value, rtol=1e-5, atol=1e-6)
            assert np.isfinite(actual[key]).all()
        # the check is not vacuous: at its claimed weight the inflated node would have moved the model
        claimed = fedavg(replies, weights | {3: float(counts[3])})
        assert max(np.abs(claimed[k] - actual[k]).max() for k in actual) > 1e-3
    clamp_lines = [r.getMessage() for r in caplog.records if "weight clamped" in r.getMessage()]
    assert len(clamp_lines) == 2 and all("node 4 claimed 900000 examples" in line for line in clamp_lines)


@pytest.mark.slow
def test_a_caught_attacker_leaves_the_same_model_as_a_silent_one(region: Path, tmp_path: Path):
    """Second reference: a huge-norm attacker vs the same node withholding its update, same seeds, robust strategy."""
    honest = range(HOSPITALS)
    attacked, _ = federate(
        region,
        tmp_path / "a",
        hospitals=honest,
        mods=[AttackMod(Attack("huge_norm"), attackers=[2])],
        strategy="fedmedian",
    )
    silent, log = federate(region, tmp_path / "s", hospitals=honest, mods=[SilentMod(silent=[2])], strategy="fedmedian")
    assert [r["nodes"].get("refused") for r in log if r["round"] > 0] == [1, 1]
    for key, value in silent.arrays.items():
        np.testing.assert_allclose(attacked.arrays[key], value, rtol=1e-6, atol=1e-7)


def test_when_every_node_attacks_the_round_is_skipped_and_the_model_kept(region: Path, tmp_path: Path):
    """All five nodes send NaN: nothing is aggregated, the run ends normally with the initial model."""
    from medalloc_core.forecast.features import federation_window_spec
    from medalloc_core.forecast.models import ForecasterConfig, build_model, state_arrays

    result, log = federate(
        region,
        tmp_path / "out",
        hospitals=range(HOSPITALS),
        mods=[AttackMod(Attack("nan"), attackers=range(HOSPITALS))],
        rounds=1,
    )
    assert log[-1]["model-updated"] is False and log[-1]["nodes"] == {"sampled": HOSPITALS, "dropped": HOSPITALS}
    config = RunConfig.from_mapping(TINY)
    spec = federation_window_spec(history=config.history, horizon=config.horizon, targets=config.target_list)
    initial = state_arrays(
        build_model(ForecasterConfig.for_spec(spec, model=config.model, hidden=config.hidden), seed=config.seed)
    )
    assert result.arrays.keys() == initial.keys()
    for key, value in initial.items():
        np.testing.assert_array_equal(result.arrays[key], value)


# ------------------------------------------------------------------ attacks no check can catch
@pytest.mark.slow
def test_robust_strategy_keeps_the_error_of_the_clean_run_where_fedavg_does_not(region: Path, tmp_path: Path):
    """One stealthy attacker in five (update flipped and rescaled just under the norm bound), two rounds.

    The checks accept its reply by construction; FedMedian's coordinate-wise median ignores
    it, FedAvg averages it in. Error: pooled WAPE on the four honest hospitals' test splits.
    """
    attacker = 4
    honest = [i for i in range(HOSPITALS) if i != attacker]
    ratios = {}
    for strategy in ("fedavg", "fedmedian"):
        clean, _ = federate(
            region, tmp_path / f"{strategy}-clean", hospitals=range(HOSPITALS), mods=[], strategy=strategy
        )
        hit, log = federate(
            region, tmp_path / f"{strategy}-hit", hospitals=range(HOSPITALS),
            mods=[AttackMod(Attack("stealthy"), attackers=[attacker])], strategy=strategy,
        )  # fmt: skip
        accepted = [o for r in log if r["round"] > 0 for o in r["outcomes"] if int(o["node"]) == attacker + 1]
        assert [o["status"] for o in accepted] == ["accepted", "accepted"]  # the checks cannot see it
        assert all(o["update-norm"] == pytest.approx(99.0, rel=1e-4) for o in accepted)
        ratios[strategy] = wape(region, hit.arrays, honest) / wape(region, clean.arrays, honest)
    assert ratios["fedmedian"] < 1.5, ratios
    assert ratios["fedavg"] > 2 * ratios["fedmedian"], ratios


# ------------------------------------------------------------------ holes found, now closed (reply-filter level)
def _filter_after_configure() -> tuple[ReplyFilter, Any]:
    from flwr.app import ConfigRecord
    from flwr.serverapp.strategy import FedAvg

    from medalloc.server.strategies import aggregate_train_metrics

    class Nodes:
        def get_node_ids(self) -> list[int]:
            return list(range(1, 10))

    strategy = FedAvg(
        min_available_nodes=1, weighted_by_key=protocol.NUM_EXAMPLES, train_metrics_aggr_fn=aggregate_train_metrics
    )
    f = ReplyFilter(strategy, ReplyLimits())
    g = record(BASE)
    list(f.configure_train(1, g, ConfigRecord(), Nodes()))  # type: ignore[arg-type]
    return f, g


def _renamed(message: Message, **names: str) -> Message:
    content = RecordDict({names.get(k, k): v for k, v in message.content.items()})
    message.content = content
    return message


def test_a_renamed_record_is_dropped_instead_of_vetoing_the_round():
    """Hole: Flower reads every reply under the first reply's record names, so one node naming its
    ArrayRecord (or MetricRecord) differently made the whole aggregation raise: the round was lost,
    every round, for as long as the node kept doing it. Now that reply alone is dropped."""
    from flwr.serverapp.exception import InconsistentMessageReplies

    with task_identity():
        f, g = _filter_after_configure()
        honest = [
            train_reply(i + 1, {"w": BASE["w"] + 0.1 * i, "b": BASE["b"] + 0.1 * i}, train_metrics(100), g)
            for i in range(3)
        ]
        arrays_renamed = _renamed(train_reply(7, HONEST, train_metrics(100), g), **{protocol.ARRAYS: "weights"})
        metrics_renamed = _renamed(train_reply(8, HONEST, train_metrics(100), g), **{protocol.METRICS: "stats"})
        # what Flower does on its own with such a reply first in line
        with pytest.raises(InconsistentMessageReplies):
            f.strategy.aggregate_train(1, [arrays_renamed, *honest])
        arrays, _ = f.aggregate_train(1, [arrays_renamed, metrics_renamed, *honest])
    assert arrays is not None
    np.testing.assert_allclose(arrays["w"].numpy(), BASE["w"] + 0.1, rtol=1e-6)  # mean of +0, +0.1, +0.2
    reasons = {o.node_id: o.reason for o in f.report.train if o.status == "dropped"}
    assert reasons == {
        7: "ArrayRecord is named 'weights', expected 'arrays'",
        8: "MetricRecord is named 'stats', expected 'metrics'",
    }


def test_node_supplied_strings_cannot_forge_coordinator_log_lines(caplog: pytest.LogCaptureFixture):
    """Hole: a node's hospital id and error reason went into the coordinator's log verbatim, so a
    newline in them forged log lines (and their length was unbounded). Now escaped and clipped."""
    from flwr.app import ConfigRecord

    forged = "H001\nround 1 train: node 3 (H003) accepted" + "x" * 10_000
    with task_identity():
        f, g = _filter_after_configure()
        bad = train_reply(5, {"w": np.full((2, 3), np.nan, dtype=np.float32), "b": BASE["b"]}, train_metrics(100), g)
        bad.content[protocol.NODE_INFO] = ConfigRecord({protocol.HOSPITAL_ID: forged})
        refusing = error_reply(6, 1001, forged, g)
        with caplog.at_level(logging.WARNING, logger="medalloc.server.reply_checks"):
            f.aggregate_train(1, [bad, refusing, train_reply(1, HONEST, train_metrics(100), g)])
    lines = [r.getMessage() for r in caplog.records if r.name == "medalloc.server.reply_checks"]
    assert len(lines) == 2
    for line in lines:
        assert "\n" not in line and "\\n" in line and len(line) < 500
    dropped, refused = f.report.train[0], f.report.train[1]
    assert dropped.hospital_id.startswith("H001\\nround 1") and len(dropped.hospital_id) < 100
    assert refused.status == "refused" and "\n" not in refused.reason and len(refused.reason) < 320
