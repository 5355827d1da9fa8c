"""A node runs only the app versions its data owner approved: real SuperLink, SuperNodes and ``medalloc node exec``.

Two hospitals run ``flower-supernode --isolation process`` with the approved-apps gate as
their SuperExec (H000 as the two processes, H001 through ``medalloc node start``, which runs
both), each having approved the toy app (``medalloc node approve --app``). The
approved app trains on both, each message in a process forked from the gate's warm
launcher. An altered copy (one extra line that would copy the hospital's
records out) is refused by both: never unpacked, never imported, never trained, and each
node's log names the hash and the file to approve it in. A third SuperNode uses Flower's own
``--trusted-entities``: it refuses even the approved app, because Flower 1.42 verifies only
Flower Hub signatures and ``flwr run`` uploads none (why the project uses a hash allow-list).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.harness import Proc, ProcessHarness, free_port, wait_for_run
from tests.fed_fixtures import calendar_toml

REPO = Path(__file__).resolve().parents[2]
TOY_APP = Path(__file__).parent / "toy_app"
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow

# An altered app: the same train step, plus a line that copies the hospital's records out.
TRAIN = "def train(msg: Message, context: Context) -> Message:\n    data = _admissions(context)\n"
ALTERED_TRAIN = (
    TRAIN + '    Path(str(context.node_config["ledger-path"])).with_name("EXFILTRATED").write_text(str(data))\n'
)


class Nodes:
    """One SuperLink and its hospitals on loopback, all started through the harness."""

    def __init__(self, harness: ProcessHarness, root: Path) -> None:
        self.harness = harness
        self.root = root
        self.link_port = free_port()
        self.coord_home = root / "coordinator"
        self.coord_home.mkdir()
        (self.coord_home / "config.toml").write_text(
            f'[superlink.local]\naddress = "127.0.0.1:{self.link_port}"\ninsecure = true\n'
        )

    def env(self, home: Path, **extra: str) -> dict[str, str]:
        return self.harness.env(
            PATH=f"{BIN}:/usr/bin:/bin", FLWR_HOME=str(home), HOME=str(home), PYTHONPATH=str(REPO), **extra
        )

    def start_superlink(self) -> Proc:
        link = self.harness.start(
            "superlink",
            [str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(self.link_port)],
            cwd=self.root,
            env=self.env(self.coord_home),
        )
        link.wait_for_log(r"Uvicorn running on http://", timeout=60)
        return link

    def medalloc(self, name: str, *args: str, home: Path) -> str:
        result = self.harness.run(
            name, [sys.executable, "-m", "medalloc.cli", *args], cwd=self.root, env=self.env(home), timeout=120
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def start_gated_node(
        self, hospital: str, data: Path, approve: Path, *, one_command: bool
    ) -> tuple[Path, Proc, Proc]:
        """A hospital whose node runs only what it approved: ``medalloc node start`` (``one_command``), or the two
        processes it combines, ``flower-supernode --isolation process`` and ``medalloc node exec``."""
        home = self.root / f"node-{hospital}"
        home.mkdir()
        approved = home / "approved-apps.toml"
        self.medalloc(
            f"approve-{hospital}", "node", "approve", "--app", str(approve), "--approved-apps", str(approved), home=home
        )
        node_toml = home / "node.toml"
        node_toml.write_text(
            f'data-path = "{data}"\nledger-path = "{home / "ledger.jsonl"}"\napproved-apps = "{approved}"\n'
            + calendar_toml(data)
        )
        port = free_port()
        env = self.env(home, FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1")
        superlink = ["--insecure", "--superlink", f"127.0.0.1:{self.link_port}"]
        if one_command:
            argv = [sys.executable, "-m", "medalloc.cli", "node", "start", *superlink]
            argv += ["--node-config", str(node_toml), "--port", str(port)]
            node = self.harness.start(f"node-{hospital}", argv, cwd=home, env=env)
            return home, node, node
        node_argv = [str(BIN / "flower-supernode"), *superlink, "--isolation", "process", "--port", str(port)]
        node = self.harness.start(
            f"supernode-{hospital}", [*node_argv, "--node-config", str(node_toml)], cwd=home, env=env
        )
        gate_argv = [sys.executable, "-m", "medalloc.cli", "node", "exec", "--node-config", str(node_toml)]
        gate = self.harness.start(
            f"exec-{hospital}", [*gate_argv, "--runtime-api-address", f"127.0.0.1:{port}"], cwd=home, env=env
        )
        return home, node, gate

    def run(self, app: Path) -> str:
        out = self.root / f"results-{app.name}"
        result = self.harness.run(
            f"flwr-run-{app.name}",
            [str(BIN / "flwr"), "run", str(app), "local", "--run-config", f"num-server-rounds=1 out-dir='{out}'"],
            cwd=app,
            env=self.env(self.coord_home),
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return re.search(r"Successfully started run (\d+)", result.stdout)[1]  # type: ignore[index]

    def wait_finished(self, run_id: str, timeout: float = 150) -> dict[str, str]:
        def status() -> dict:
            result = self.harness.run(
                "flwr-list",
                [str(BIN / "flwr"), "list", "local", "--run-id", run_id, "--format", "json"],
                cwd=self.root,
                env=self.env(self.coord_home),
            )
            text = result.stdout
            return json.loads(text[text.index("{") :])["runs"][0]

        if (run := wait_for_run(status, self.harness.tag, timeout=timeout)) is None:
            raise AssertionError(f"run {run_id} did not finish in {timeout}s")
        return run


def test_only_the_approved_app_runs_on_a_gated_node(harness: ProcessHarness, tmp_path: Path) -> None:
    approved_app = tmp_path / "toyapp"
    shutil.copytree(TOY_APP, approved_app)
    altered_app = tmp_path / "toyapp-altered"
    shutil.copytree(TOY_APP, altered_app)
    client = altered_app / "toyapp" / "client_app.py"
    assert TRAIN in client.read_text()
    client.write_text(client.read_text().replace(TRAIN, ALTERED_TRAIN))

    nodes = Nodes(harness, tmp_path)
    region = tmp_path / "region"
    nodes.medalloc("generate", "generate", "-n", "3", "-d", "40", "--out", str(region), home=tmp_path)
    nodes.start_superlink()
    homes, supernodes, gates = {}, {}, {}
    for k, hospital in enumerate(("H000", "H001")):
        homes[hospital], supernodes[hospital], gates[hospital] = nodes.start_gated_node(
            hospital, region / f"H00{k}.csv", approved_app, one_command=hospital == "H001"
        )

    # Flower's own signature check, for comparison: it refuses an app `flwr run` uploads.
    trusting = tmp_path / "node-H002"
    trusting.mkdir()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    public = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    (trusting / "trusted-entities.yaml").write_text(f'fpk_data_owner: "{public.decode()}"\n')
    flower_signed_only = harness.start(
        "supernode-H002",
        [
            str(BIN / "flower-supernode"),
            "--insecure",
            "--superlink",
            f"127.0.0.1:{nodes.link_port}",
            "--port",
            str(free_port()),
            "--trusted-entities",
            str(trusting / "trusted-entities.yaml"),
            "--node-config",
            f"data-path='{region / 'H002.csv'}' ledger-path='{trusting / 'ledger.jsonl'}'",
        ],
        cwd=trusting,
        env=nodes.env(trusting),
    )
    for proc in (*supernodes.values(), flower_signed_only):
        proc.wait_for_log(r"SuperNode ID: \d+", timeout=90)
    for gate in gates.values():
        gate.wait_for_log(r"running only the 1 app\(s\) approved in", timeout=60)

    # 1. The approved app: both gated hospitals train, the trusted-entities node refuses it.
    good = nodes.run(approved_app)
    assert nodes.wait_finished(good)["status"] == "finished:completed"
    for hospital, home in homes.items():
        lines = (home / "ledger.jsonl").read_text().splitlines()
        assert [json.loads(line)["run"] for line in lines] == [int(good)], hospital
        assert [p.name.rsplit(".", 1)[0] for p in (home / "apps").iterdir()] == ["medalloc-tests.toyapp.0.1.0"]
    assert "App verification is not supported by the connected SuperLink" in flower_signed_only.read_log()
    for gate in gates.values():  # the approved messages ran in processes forked from the node's warm launcher
        assert re.search(r"app \w+ is approved; flwr-clientapp in process \d+ \(warm\)", gate.read_log())
    assert not (trusting / "ledger.jsonl").exists()

    # 2. The altered app: refused on both gated nodes before any of it is unpacked or run.
    from medalloc.node.approved import fab_of_app, sha256

    altered_hash = sha256(fab_of_app(altered_app)[0])
    bad = nodes.run(altered_app)
    deadline = time.monotonic() + 120
    answered = f"answered app-not-approved: this node's data owner has not approved app sha256 {altered_hash}"
    while time.monotonic() < deadline and not all(gate.read_log().count(answered) >= 2 for gate in gates.values()):
        time.sleep(1)
    for hospital, gate in gates.items():
        log = gate.read_log()
        assert f"run {bad}: refusing app sha256 {altered_hash}: not in the approved list" in log, log[-2000:]
        assert f"medalloc node approve --sha256 {altered_hash} --approved-apps {homes[hospital]}" in log
        assert log.count(answered) == 2, log[-2000:]  # the train and the evaluate message, each answered
    run = nodes.wait_finished(bad)
    for hospital, home in homes.items():
        assert not (home / "EXFILTRATED").exists(), hospital
        assert len((home / "ledger.jsonl").read_text().splitlines()) == 1, hospital  # still only the good run
        assert len(list((home / "apps").iterdir())) == 1, hospital  # the altered FAB was never unpacked
    assert run["status"].startswith("finished"), run
