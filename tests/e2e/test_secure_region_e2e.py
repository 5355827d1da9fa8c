"""The region under secure aggregation on real Flower processes: a SuperLink, three SuperNodes, ``flwr run``.

The forecasting task with context ``region`` and ``region-secure-aggregation = true``: the nodes'
released totals are summed by Flower's SecAgg+ (server/secure_region.py, client/secure.py), each node
having agreed in its own ``--node-config``. The run must train with the region on every node, each
node must have masked its totals for the sum and read the total back, and no ledger may be charged
for it (one source release each).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.e2e.harness import GatedNodes, ProcessHarness
from tests.e2e.harness import jsonl as _lines
from tests.fed_fixtures import file_calendar, small_region

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]  # its own deadline is 1200 s

NODES = 3


def test_the_region_is_summed_under_secagg_on_real_processes(harness: ProcessHarness, tmp_path: Path) -> None:
    region = small_region(tmp_path / "region", hospitals=NODES, days=240)
    federation = GatedNodes(harness, tmp_path)  # as a hospital starts a node, as in the SecAgg+ e2e
    for i in range(NODES):
        own = tmp_path / f"node{i}"
        config = {
            "data-path": str(region / f"H00{i}.csv"),
            "ledger-path": str(own / "ledger.json"),
            "privacy-epsilon-budget": 4.0,
            "node-state-path": str(own / "node-state.json"),
            "region-secure-aggregation": True,  # the node's own consent
        } | file_calendar(region / f"H00{i}.csv")
        federation.start_node(str(i), own, config)
    nodes = {int(name): proc for name, proc in federation.nodes.items()}
    superlink = federation.superlink
    out = tmp_path / "out"
    federation.run(  # every node registered before the run
        {
            "num-server-rounds": 1,
            "min-available-nodes": NODES,
            "min-train-nodes": NODES,
            "round-timeout": 300.0,
            "out-dir": str(out),
            "context": "region",
            "region-secure-aggregation": True,
            "model": "hybrid",
            "init": "none",
            "history": 28,
            "horizon": 7,
            "hidden": 8,
            "batch-size": 64,
            "patient-epsilon": 4.0,
            "test-days": 28,
            "validation-days": 28,
        }
    )

    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 1200  # round 0's evaluation, the SecAgg+ sum (4 stages), round 1
    while time.monotonic() < deadline and not any(r.get("round") == 1 for r in _lines(metrics)):
        time.sleep(0.5)
    logs = {i: p.read_log() for i, p in nodes.items()}
    rounds = _lines(metrics)
    assert any(r["round"] == 1 and r["model-updated"] for r in rounds), f"{rounds}\n{superlink.read_log()[-3000:]}"
    for i, log in logs.items():
        assert "summed under SecAgg+" in log, f"node {i} never masked its totals:\n{log[-3000:]}"
        assert "the region from the coordinator" in log, f"node {i} never read the region:\n{log[-3000:]}"
        assert "declining" not in log
        spends = json.loads((tmp_path / f"node{i}" / "ledger.json").read_text())["body"]["entries"]
        assert len(spends) == 1  # the one source release; the secure sum is post-processing
