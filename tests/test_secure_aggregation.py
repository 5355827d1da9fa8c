"""Secure aggregation (Flower's SecAgg+) with distributed DP for the equipment task: real ClientApps, in process.

The coordinator's SecAgg+ round (server.secure) and each node's mod (client.secure) run Flower's
own protocol over an in-process grid: the sum the coordinator decodes is checked against the
nodes' own vectors, a node whose config does not agree refuses with its code, and every
ledger is charged once per round for the release that holds with the minimum of survivors.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.common.secure_aggregation.quantization import quantize

from medalloc.client.app import make_client_app
from medalloc.client.secure import offset
from medalloc.server.config import RunConfig, RunConfigError
from medalloc.server.secure import decode_sum, run_secure_federation
from medalloc.simulations.local_grid import task_identity
from medalloc.simulations.wire_grid import WireGrid as LocalGrid
from medalloc_core.privacy.distributed import MECHANISM, SkellamPlan, epsilon_with_skellam
from medalloc_core.privacy.ledger import PrivacyLedger
from medalloc_core.protocol import Refusal
from medalloc_core.tasks import get_task
from tests.equipment_fixtures import SMALL, fleet_copy

DELTA = 1e-6


def test_flower_quantisation_carries_a_share_exactly_and_decode_inverts_the_unmask() -> None:
    """The arithmetic of Flower's SecAgg+ (its own quantize, and its unmask-stage formula) on our ranges."""
    bits, m = 31, 2**31
    rng = np.random.default_rng(0)
    shares = [np.mod(rng.integers(-(10**7), 10**7, size=40), m) for _ in range(5)]
    r = offset(bits)
    quantised = [quantize([s.astype(np.float64) - r], r, m - 1)[0] for s in shares]
    assert all(np.array_equal(q, s) for q, s in zip(quantised, shares, strict=True))
    n = len(shares)
    masked_sum = np.mod(sum(q.astype(np.int64) for q in quantised), m)
    # flwr secaggplus_workflow.unmask_stage: dequantize, offset, times T / q_total (weight 1: q_total = n (M-1) mod M)
    flower = (masked_sum.astype(float) - r - (n - 1) * r) * ((m - 1) / ((n * (m - 1)) % m))
    assert np.array_equal(decode_sum(flower, survivors=n), np.mod(sum(shares), m))


def _run_keys(out: Path, fleets: Path, **extra: Any) -> dict[str, Any]:
    return {
        "task": "equipment",
        "secure-aggregation": True,
        "num-server-rounds": 2,
        "min-available-nodes": 3,
        "out-dir": str(out),
        "round-timeout": 120.0,
        "equipment.sa-min-survivors": 2,
        "equipment.sa-noise-multiplier": 5.0,
        "simulation-data-dir": str(fleets),
    } | extra


def _real_nodes(tmp_path: Path, fleets: Path, agree: dict[int, bool]) -> dict[int, dict[str, Any]]:
    """Node configs as a hospital writes them (not simulated): own data, own ledger, own consent."""
    folders = sorted(p for p in fleets.iterdir() if p.is_dir())
    nodes = {}
    for node_id, consent in agree.items():
        folder = folders[(node_id - 1) % len(folders)]
        home = tmp_path / f"node{node_id}"
        home.mkdir()
        nodes[node_id] = {
            "tasks": "equipment",
            "hospital-id": f"N{node_id}",
            "equipment-data-path": str(folder),
            "equipment-ledger-path": str(home / "equipment-ledger.json"),
            "equipment-epsilon-budget": 50.0,
            "privacy-delta": DELTA,
            "max-grad-norm": 1.0,
            "equipment-secure-aggregation": consent,
            "equipment-min-survivors": 2,
        } | get_task("equipment").public_calendar(folder)  # a deployed node declares its fleet (issue 20)
    return nodes


@pytest.fixture
def fleets(tmp_path: Path) -> Path:
    assert SMALL.hospitals == 2
    return fleet_copy(tmp_path)


def test_a_secagg_round_sums_the_nodes_vectors_and_charges_every_ledger(tmp_path: Path, fleets: Path) -> None:
    keys = _run_keys(tmp_path / "out", fleets)
    nodes = _real_nodes(tmp_path, fleets, {1: True, 2: True, 3: True})
    grid = LocalGrid(make_client_app(), nodes)
    with task_identity():
        strategy = run_secure_federation(grid, RunConfig.from_mapping(keys), out=tmp_path / "out", run_id=7)
    assert [r.model_updated for r in strategy.records] == [True, True]
    assert all(r.nodes["accepted"] == 3 for r in strategy.records)
    # every stage of Flower's protocol went to every node, as plain `train` messages
    assert sum(1 for _, kind in grid.calls if kind == "train") == 2 * 4 * 3
    plan = SkellamPlan(clip=0.2, dimension=strategy.model.spec.n_features + 1, noise_multiplier=5.0, min_survivors=2)
    expected = epsilon_with_skellam([plan.item(2)], delta=DELTA)
    for node in nodes.values():
        ledger = PrivacyLedger.load(node["equipment-ledger-path"])
        spends = ledger.spends()
        assert [s.mechanism for s in spends] == [MECHANISM, MECHANISM]
        assert dict(spends[0].detail)["min-survivors"] == 2
        assert ledger.epsilon_spent() == pytest.approx(expected)
    lines = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epsilon-max"] for x in lines] == pytest.approx([ledger.spends()[0].epsilon_node_after, expected])
    assert (tmp_path / "out" / "final_model.safetensors").exists()
    assert not np.allclose(strategy._weights, 0)  # noqa: SLF001


def test_the_decoded_sum_is_the_sum_of_what_the_nodes_computed(tmp_path: Path, fleets: Path, monkeypatch) -> None:
    """Record every node's modular share before SecAgg+ masks it; the coordinator's decoded sum must equal their sum."""
    import medalloc.server.secure as server_secure
    import medalloc_core.equipment.distributed as dist
    import medalloc_core.tasks.equipment.secure as secure_task

    sent: list[np.ndarray] = []
    decoded: list[np.ndarray] = []
    real_node_sum, real_mean = secure_task.node_sum, server_secure.mean_gradient

    def spy_node_sum(*args: Any, **kwargs: Any) -> np.ndarray:
        out = real_node_sum(*args, **kwargs)
        sent.append(np.mod(out, 2**31))
        return out

    def spy_mean(total: np.ndarray, plan: Any, devices: int) -> np.ndarray:
        decoded.append(np.asarray(total).copy())
        return real_mean(total, plan, devices)

    monkeypatch.setattr(secure_task, "node_sum", spy_node_sum)
    monkeypatch.setattr(server_secure, "mean_gradient", spy_mean)
    keys = _run_keys(tmp_path / "out", fleets, **{"num-server-rounds": 1})
    nodes = _real_nodes(tmp_path, fleets, {1: True, 2: True, 3: True})
    with task_identity():
        run_secure_federation(LocalGrid(make_client_app(), nodes), RunConfig.from_mapping(keys), out=tmp_path / "out")
    assert len(sent) == 3 and len(decoded) == 1
    assert np.array_equal(decoded[0], np.mod(sum(sent), 2**31))
    assert dist is not None


def test_a_node_that_does_not_agree_refuses_with_its_code(tmp_path: Path, fleets: Path) -> None:
    keys = _run_keys(tmp_path / "out", fleets, **{"num-server-rounds": 1})
    nodes = _real_nodes(tmp_path, fleets, {1: True, 2: True, 3: False})
    app = make_client_app()
    grid = LocalGrid(app, nodes)
    refusals: list[int] = []
    original = grid.send_and_receive

    def spy(messages: Any, *, timeout: float | None = None) -> Any:
        replies = list(original(messages, timeout=timeout))
        refusals.extend(int(r.error.code) for r in replies if r.has_error())
        return replies

    grid.send_and_receive = spy  # type: ignore[method-assign]
    with task_identity():
        strategy = run_secure_federation(grid, RunConfig.from_mapping(keys), out=tmp_path / "out")
    assert refusals == [int(Refusal.SECURE_AGGREGATION_NOT_AGREED)]
    assert strategy.records[0].model_updated and strategy.records[0].nodes["accepted"] == 2
    assert not Path(nodes[3]["equipment-ledger-path"]).exists()  # the refusing node spent nothing


def test_the_forecasting_task_is_refused_under_secure_aggregation() -> None:
    from medalloc.server.config import RunConfigError

    with pytest.raises(RunConfigError, match="has no secure-aggregation round"):
        RunConfig.from_mapping({"secure-aggregation": True})


# ------------------------------------------------------------------ Flower's Simulation Engine
def test_secure_aggregation_on_the_simulation_engine(tmp_path: Path) -> None:
    """The same ServerApp and ClientApp on ``run_simulation`` (Ray), three virtual nodes, two rounds."""
    from medalloc.simulations.runner import simulate_federation
    from medalloc_core.equipment.synthetic import FleetConfig, generate_fleets, write_fleets
    from medalloc_core.simulation import simulated_ledger_path

    region = tmp_path / "region"
    write_fleets(
        generate_fleets(FleetConfig(hospitals=3, days=400, seed=5, device_scale=0.3, min_beds=200, max_beds=300)),
        region,
    )
    keys = _run_keys(tmp_path / "out", region, **{"simulation-epsilon-budget": 50.0, "simulation-delta": DELTA})
    keys["equipment.sa-min-survivors"] = 3  # a virtual node keeps the default floor of 3
    # one Ray actor (all the CPUs for one virtual node at a time): a second only imports the apps again
    simulate_federation(keys, 3, client_cpus=float(os.cpu_count() or 1))
    lines = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [x["model-updated"] for x in lines] == [True, True]
    assert all(x["nodes"]["accepted"] == 3 and x["strategy"] == "distributed-dp-secagg+" for x in lines)
    for hospital in ("H000", "H001", "H002"):
        ledger = PrivacyLedger.load(simulated_ledger_path(region, "equipment", hospital))
        assert [s.mechanism for s in ledger.spends()] == [MECHANISM, MECHANISM]
    assert (tmp_path / "out" / "final_model.safetensors").exists()


def test_a_neighbourhood_of_shares_sums_every_node(tmp_path: Path, fleets: Path, monkeypatch) -> None:
    """``equipment.sa-num-shares = 3`` at 6 nodes: Flower's SecAgg+ shares each node's keys with 3 nodes, 2 unmask,
    and the decoded sum is still exactly the sum of all 6 vectors (the masks cancel only in the whole sum)."""
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

    import medalloc.server.secure as server_secure
    import medalloc_core.tasks.equipment.secure as secure_task

    sent: list[np.ndarray] = []
    decoded: list[np.ndarray] = []
    real_node_sum, real_mean = secure_task.node_sum, server_secure.mean_gradient

    def spy_node_sum(*args: Any, **kwargs: Any) -> np.ndarray:
        out = real_node_sum(*args, **kwargs)
        sent.append(np.mod(out, 2**31))
        return out

    def spy_mean(total: np.ndarray, plan: Any, devices: int) -> np.ndarray:
        decoded.append(np.asarray(total).copy())
        return real_mean(total, plan, devices)

    monkeypatch.setattr(secure_task, "node_sum", spy_node_sum)
    monkeypatch.setattr(server_secure, "mean_gradient", spy_mean)

    keys = _run_keys(
        tmp_path / "out",
        fleets,
        **{"num-server-rounds": 1, "min-available-nodes": 6, "equipment.sa-num-shares": 3},
    )
    nodes = _real_nodes(tmp_path, fleets, dict.fromkeys(range(1, 7), True))
    grid = LocalGrid(make_client_app(), nodes)
    setups: list[dict[str, Any]] = []
    original = grid.send_and_receive

    def spy(messages: Any, *, timeout: float | None = None) -> Any:
        messages = list(messages)
        for m in messages:
            configs = m.content.config_records.get(RECORD_KEY_CONFIGS)
            if configs is not None and configs.get(Key.STAGE) == Stage.SETUP:
                setups.append(dict(configs))
        return original(messages, timeout=timeout)

    grid.send_and_receive = spy  # type: ignore[method-assign]
    with task_identity():
        strategy = run_secure_federation(grid, RunConfig.from_mapping(keys), out=tmp_path / "out")
    assert len(setups) == 6 and {(s[Key.SHARE_NUMBER], s[Key.THRESHOLD]) for s in setups} == {(3, 2)}
    assert strategy.records[0].model_updated and strategy.records[0].nodes["accepted"] == 6
    assert len(sent) == 6 and np.array_equal(decoded[0], np.mod(sum(sent), 2**31))
    with pytest.raises(RunConfigError, match="sa-num-shares must be 0"):
        RunConfig.from_mapping(_run_keys(tmp_path / "o2", fleets, **{"equipment.sa-num-shares": 4}))
