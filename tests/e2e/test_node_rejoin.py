"""Issue 24: a node rejoins on its own. ``medalloc node start`` keeps a real ``flower-supernode`` in the federation:
started before the SuperLink is up (Exit Code 305), and killed while connected, it is started again with a
backoff, says what it waits for, and is back; an approved app then trains on it.

Real processes on loopback: ``flower-superlink``, ``medalloc node start`` (``flower-supernode
--isolation process`` + the approved-apps gate), ``flwr run`` of the toy app. The 305 of a
SuperLink that still counts a killed node online (node authentication, 2 x 30 s heartbeats) is
exercised with the full deployment in tests/e2e/test_faults.py.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
from pathlib import Path

import pytest

from tests.e2e.harness import ProcessHarness, free_port
from tests.e2e.test_approved_apps import TOY_APP, Nodes
from tests.fed_fixtures import calendar_toml

pytestmark = pytest.mark.slow


def test_a_supernode_that_cannot_connect_or_is_killed_is_started_again(harness: ProcessHarness, tmp_path: Path):
    app = tmp_path / "toyapp"
    shutil.copytree(TOY_APP, app)
    nodes = Nodes(harness, tmp_path)
    region = tmp_path / "region"
    nodes.medalloc("generate", "generate", "-n", "2", "-d", "40", "--out", str(region), home=tmp_path)

    started = {}
    for k, hospital in enumerate(("H000", "H001")):
        home = tmp_path / f"node-{hospital}"
        home.mkdir()
        approved = home / "approved-apps.toml"
        nodes.medalloc(
            f"approve-{hospital}", "node", "approve", "--app", str(app), "--approved-apps", str(approved), home=home
        )
        node_toml = home / "node.toml"
        node_toml.write_text(
            f'data-path = "{region / f"H00{k}.csv"}"\nledger-path = "{home / "ledger.jsonl"}"\n'
            f'approved-apps = "{approved}"\n' + calendar_toml(region / f"H00{k}.csv")
        )
        env = nodes.env(home, FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1")
        argv = [sys.executable, "-m", "medalloc.cli", "node", "start", "--insecure"]
        argv += ["--superlink", f"127.0.0.1:{nodes.link_port}", "--max-retries", "1"]  # flower-supernode's own
        argv += ["--node-config", str(node_toml), "--port", str(free_port()), "--max-backoff", "5"]
        started[hospital] = (home, harness.start(f"node-{hospital}", argv, cwd=home, env=env))

    # 1. No SuperLink yet: the SuperNode gives up (305); the supervisor says why and starts it again.
    for _, proc in started.values():
        proc.wait_for_log(r"Exit Code: 305", timeout=120)
        proc.wait_for_log(
            r"waiting \d+ s before starting the SuperNode again \(restart \d+\): .*could not be reached", timeout=120
        )
    nodes.start_superlink()
    for _, proc in started.values():
        proc.wait_for_log(r"SuperNode ID: \d+", timeout=120)

    # 2. H001's SuperNode is killed (not the supervisor): it is started again and connects again.
    home, proc = started["H001"]
    pid = int(re.findall(r"SuperNode pid (\d+)", proc.read_log())[-1])
    os.kill(pid, signal.SIGKILL)
    proc.wait_for_log(r"killed by signal 9", timeout=60)
    deadline_log = r"(?s)killed by signal 9.*SuperNode ID: \d+"
    proc.wait_for_log(deadline_log, timeout=120)
    assert proc.popen.poll() is None, "the supervisor must keep running"

    # 3. Both are in the federation: the approved toy app trains on both (min-train-nodes = 2).
    run_id = nodes.run(app)
    assert nodes.wait_finished(run_id, timeout=240)["status"] == "finished:completed"
    for hospital, (node_home, _) in started.items():
        assert (node_home / "ledger.jsonl").exists(), f"{hospital} did not train"
