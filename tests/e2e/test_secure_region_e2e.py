"""The region under secure aggregation on real Flower processes: a SuperLink, three SuperNodes, ``flwr run``.

The forecasting task with context ``region`` and ``region-secure-aggregation = true``: the nodes'
released totals are summed by Flower's SecAgg+ (server/secure_region.py, client/secure.py), each node
having agreed in its own ``--node-config``. The run must train with the region on every node, each
node must have masked its totals for the sum and read the total back, and no ledger may be charged
for it (one source release each).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.harness import ProcessHarness, free_port
from tests.e2e.test_deployment import wait_port
from tests.e2e.test_flwr_run import BIN, _copy_project
from tests.fed_fixtures import file_calendar, small_region

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]  # its own deadline is 1200 s

NODES = 3


def test_the_region_is_summed_under_secagg_on_real_processes(harness: ProcessHarness, tmp_path: Path) -> None:
    region = small_region(tmp_path / "region", hospitals=NODES, days=240)
    home = tmp_path / "home"
    (home / ".flwr").mkdir(parents=True)
    env = harness.env(
        HOME=str(home),
        PATH=f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
    )
    link = free_port()
    superlink = harness.start(
        "superlink",
        ["flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(link),
         "--disable-runtime-dependency-installation", "--database", str(tmp_path / "superlink.db")],
        cwd=tmp_path, env=env,
    )  # fmt: skip
    wait_port(link, superlink, timeout=120)
    project = _copy_project(tmp_path / "project")
    approved = tmp_path / "approved-apps.toml"  # the hospitals approve the app they will run (docs/hospital.md)
    approval = harness.run(
        "approve",
        [sys.executable, "-m", "medalloc.cli", "node", "approve", "--app", str(project), "--approved-apps",
         str(approved)],
        cwd=tmp_path, env=env, timeout=120,
    )  # fmt: skip
    assert approval.returncode == 0, approval.stdout + approval.stderr
    nodes = {}
    for i in range(NODES):
        own = tmp_path / f"node{i}"
        own.mkdir()
        shutil.copyfile(approved, own / "approved-apps.toml")
        config = {
            "data-path": str(region / f"H00{i}.csv"),
            "ledger-path": str(own / "ledger.json"),
            "privacy-epsilon-budget": 4.0,
            "node-state-path": str(own / "node-state.json"),
            "region-secure-aggregation": True,  # the node's own consent
            "approved-apps": str(own / "approved-apps.toml"),
        } | file_calendar(region / f"H00{i}.csv")
        pairs = " ".join(f"{k}={json.dumps(v)}" for k, v in config.items())
        # As a hospital starts it (`medalloc node start`: the approved-apps gate's warm launcher forks each SecAgg+
        # stage's ClientApp instead of a cold process per message), in its own home, as in the SecAgg+ e2e.
        nodes[i] = harness.start(
            f"node-{i}",
            [sys.executable, "-m", "medalloc.cli", "node", "start", "--insecure", "--superlink", f"127.0.0.1:{link}",
             "--node-config", pairs, "--port", str(free_port())],
            cwd=own, env={**env, "HOME": str(own), "FLWR_HOME": str(own / ".flwr")},
        )  # fmt: skip
    (home / ".flwr" / "config.toml").write_text(
        f'[superlink]\ndefault = "e2e"\n\n[superlink.e2e]\naddress = "127.0.0.1:{link}"\ninsecure = true\n'
    )
    out = tmp_path / "out"
    run_config = {
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
    overrides = " ".join(f"{k}={json.dumps(v)}" for k, v in run_config.items())
    for node in nodes.values():  # every node registered before the run
        node.wait_for_log(r"SuperNode ID: \d+", timeout=180)
    submitted = harness.run(
        "flwr-run", ["flwr", "run", str(project), "e2e", "--run-config", overrides], cwd=tmp_path, env=env, timeout=300
    )
    assert submitted.returncode == 0, submitted.stdout[-2000:] + submitted.stderr[-2000:]

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


def _lines(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
