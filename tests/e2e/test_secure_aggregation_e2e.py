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

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest

from medalloc_core.privacy.distributed import MECHANISM, SkellamItem, epsilon_with_skellam
from medalloc_core.privacy.ledger import PrivacyLedger
from medalloc_core.tasks import get_task
from tests.e2e.harness import ProcessHarness, free_port
from tests.e2e.test_deployment import wait_port
from tests.e2e.test_flwr_run import BIN, _copy_project

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]  # its own deadline is 1200 s

NODES, MIN_SURVIVORS, ROUNDS, DELTA = 4, 3, 3, 1e-6


def _fleets(folder: Path) -> list[Path]:
    from medalloc_core.equipment.synthetic import FleetConfig, generate_fleets, write_fleets

    config = FleetConfig(hospitals=NODES, days=400, seed=5, device_scale=0.3, min_beds=200, max_beds=300)
    write_fleets(generate_fleets(config), folder)
    return sorted(p for p in folder.iterdir() if p.is_dir())


def test_secagg_rounds_on_real_processes_survive_a_killed_node(harness: ProcessHarness, tmp_path: Path) -> None:
    fleets = _fleets(tmp_path / "fleets")
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
    for i, fleet in enumerate(fleets):
        own = tmp_path / f"node{i}"
        own.mkdir()
        shutil.copyfile(approved, own / "approved-apps.toml")  # the same approval, in each node's own folder
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
            "approved-apps": str(own / "approved-apps.toml"),
        } | get_task("equipment").public_calendar(fleet)  # a deployed node declares its fleet (issue 20)
        pairs = " ".join(f"{k}={json.dumps(v)}" for k, v in config.items())
        # The node as docs/equipment.md starts it: `medalloc node start` (Flower's SuperNode, its wait between pulls
        # 0.5 s, and the approved-apps gate, whose warm launcher forks each message's ClientApp process: SecAgg+ sends
        # every node one message per stage, and a cold `flwr-clientapp` imports PyTorch and Opacus for each). Each
        # node has its own home (the Flower folder its apps are installed in), as on a hospital's own machine: the
        # gates of nodes sharing one would replace each other's installed copy. Killing its process group kills all
        # of it, as a crashed machine.
        nodes[fleet.name] = harness.start(
            f"node-{fleet.name}",
            [sys.executable, "-m", "medalloc.cli", "node", "start", "--insecure", "--superlink", f"127.0.0.1:{link}",
             "--node-config", pairs, "--port", str(free_port())],
            cwd=own, env={**env, "HOME": str(own), "FLWR_HOME": str(own / ".flwr")},
        )  # fmt: skip
    (home / ".flwr" / "config.toml").write_text(
        f'[superlink]\ndefault = "e2e"\n\n[superlink.e2e]\naddress = "127.0.0.1:{link}"\ninsecure = true\n'
    )
    out = tmp_path / "out"
    run_config = {
        "task": "equipment",
        "secure-aggregation": True,
        "num-server-rounds": ROUNDS,
        "min-available-nodes": NODES - 1,
        "round-timeout": 90.0,
        "out-dir": str(out),
        # equipment.sa-min-survivors keeps its default, MIN_SURVIVORS: `flwr run --run-config` overrides
        # only the keys pyproject.toml declares, and the tasks' own keys are not among them
    }
    overrides = " ".join(f"{k}={json.dumps(v)}" for k, v in run_config.items())
    for node in nodes.values():  # every node registered before the run: round 1 must sum all four
        node.wait_for_log(r"SuperNode ID: \d+", timeout=180)
    submitted = harness.run(
        "flwr-run", ["flwr", "run", str(project), "e2e", "--run-config", overrides], cwd=tmp_path, env=env, timeout=300
    )
    assert submitted.returncode == 0, submitted.stdout[-2000:] + submitted.stderr[-2000:]

    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 1200  # each SecAgg+ stage starts a ClientApp process per node
    while time.monotonic() < deadline and len(_lines(metrics)) < 1:
        time.sleep(0.2)
    assert _lines(metrics), f"round 1 never finished; superlink log:\n{harness.procs[0].read_log()[-3000:]}"
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


def _lines(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
