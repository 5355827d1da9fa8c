"""Secure aggregation with distributed DP on real Flower processes: a SuperLink, four SuperNodes, one killed mid-run.

The equipment task with ``secure-aggregation = true`` (Flower's SecAgg+ in its legacy workflow,
server/secure.py; each node's consent in its own node config, client/secure.py), each node started as
docs/equipment.md starts it: ``medalloc node start`` with the app approved. After round 1 one node's whole
process group is killed (as a crashed machine) while round 2 starts.
Whatever stage of SecAgg+ it dies in, every round must either sum at least ``sa-min-survivors``
nodes' vectors or be refused as a whole (the model kept), and every ledger must stay consistent:
at most one spend per round, the epsilon it reports is the Skellam composition of its spends,
and each summed round is charged on at least as many ledgers as vectors were summed.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from medalloc_core.privacy.distributed import MECHANISM, SkellamItem, epsilon_with_skellam
from medalloc_core.privacy.ledger import PrivacyLedger
from medalloc_core.tasks import get_task
from tests.e2e.harness import GatedNodes, ProcessHarness
from tests.e2e.harness import jsonl as _lines

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]  # its own deadline is 1200 s

NODES, MIN_SURVIVORS, ROUNDS, DELTA = 4, 3, 3, 1e-6


def _fleets(folder: Path) -> list[Path]:
    from medalloc_core.equipment.synthetic import FleetConfig, generate_fleets, write_fleets

    config = FleetConfig(hospitals=NODES, days=400, seed=5, device_scale=0.3, min_beds=200, max_beds=300)
    write_fleets(generate_fleets(config), folder)
    return sorted(p for p in folder.iterdir() if p.is_dir())


def test_secagg_rounds_on_real_processes_survive_a_killed_node(harness: ProcessHarness, tmp_path: Path) -> None:
    fleets = _fleets(tmp_path / "fleets")
    federation = GatedNodes(harness, tmp_path)  # each node as docs/equipment.md starts it
    for i, fleet in enumerate(fleets):
        own = tmp_path / f"node{i}"
        config = {
            "tasks": "equipment",
            "hospital-id": fleet.name,
            "equipment-data-path": str(fleet),
            "equipment-ledger-path": str(own / "equipment-ledger.json"),
            "equipment-epsilon-budget": 50.0,
            "privacy-delta": DELTA,
            "node-state-path": str(own / "node-state.json"),
            "equipment-secure-aggregation": True,
            "equipment-min-survivors": MIN_SURVIVORS,
        } | get_task("equipment").public_calendar(fleet)  # a deployed node declares its fleet (issue 20)
        federation.start_node(fleet.name, own, config)
    nodes = federation.nodes
    out = tmp_path / "out"
    federation.run(  # every node registered before the run: round 1 must sum all four
        {
            "task": "equipment",
            "secure-aggregation": True,
            "num-server-rounds": ROUNDS,
            "min-available-nodes": NODES - 1,
            "round-timeout": 90.0,
            "out-dir": str(out),
            # equipment.sa-min-survivors keeps its default, MIN_SURVIVORS: `flwr run --run-config` overrides
            # only the keys pyproject.toml declares, and the tasks' own keys are not among them
        }
    )

    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 1200  # each SecAgg+ stage starts a ClientApp process per node
    while time.monotonic() < deadline and len(_lines(metrics)) < 1:
        time.sleep(0.2)
    assert _lines(metrics), f"round 1 never finished; superlink log:\n{federation.superlink.read_log()[-3000:]}"
    killed = fleets[-1].name
    os.killpg(nodes[killed].pid, signal.SIGKILL)  # the machine dies while round 2 starts
    while time.monotonic() < deadline and len(_lines(metrics)) < ROUNDS:
        time.sleep(0.5)
    rounds = _lines(metrics)
    assert [r["round"] for r in rounds] == list(range(1, ROUNDS + 1)), rounds

    # Round 1: all four summed. Every round: summed by >= MIN_SURVIVORS nodes, or refused as a whole.
    logs = "\n".join(f"--- {p.name}\n{p.read_log()[-1500:]}" for p in harness.procs)
    assert rounds[0]["model-updated"] and rounds[0]["nodes"]["accepted"] == NODES, f"{rounds}\n{logs}"
    for r in rounds:
        assert (r["model-updated"] and r["nodes"]["accepted"] >= MIN_SURVIVORS) or (
            not r["model-updated"] and r.get("nodes", {}).get("accepted", 0) in (0, *range(MIN_SURVIVORS))
        ), r
    spends_per_round: dict[int, int] = {}
    for fleet in fleets:
        ledger = PrivacyLedger.load(tmp_path / f"node{fleets.index(fleet)}" / "equipment-ledger.json")
        spends = ledger.spends()
        assert all(s.mechanism == MECHANISM for s in spends)
        numbers = [int(s.run_id.rsplit("-", 1)[1]) for s in spends]
        assert len(numbers) == len(set(numbers)), f"{fleet.name}: a round charged twice"
        for n in numbers:
            spends_per_round[n] = spends_per_round.get(n, 0) + 1
        detail = dict(spends[0].detail)
        item = SkellamItem(
            mu=detail["skellam-mu"], l2=detail["l2-sensitivity"], l1=detail["l1-sensitivity"], steps=len(spends)
        )
        assert ledger.epsilon_spent() == pytest.approx(epsilon_with_skellam([item], delta=DELTA))
        if fleet.name == killed:
            assert max(numbers) <= 2  # it never computed after it died
    for r in rounds:
        if r["model-updated"]:
            assert spends_per_round.get(r["round"], 0) >= r["nodes"]["accepted"]
    assert (out / "final_model.safetensors").exists()
