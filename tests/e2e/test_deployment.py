"""End to end on real Flower processes, driven by the commands in docs/deploy.md and docs/hospital.md.

A SuperLink with TLS, a persistent database and node authentication behind the Fleet
gateway; hospital SuperNodes with generated keys; a run started with ``flwr run``; an
unregistered node refused; the Control API refused through the gateway. Each ``bash
e2e:NAME`` block of the two pages is executed as written, after a small table of asserted
substitutions (free ports for the documented ones, temporary directories for ``/srv/medalloc``
and ``/opt/medalloc-node``), so the pages cannot drift from what works. Here MedAlloc itself runs on
it; tests/e2e/test_toy_deployment.py runs a throwaway app on one such deployment, shared by its tests.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from medalloc.cli import app as medalloc_app
from tests.e2e.harness import ONE_SHOT_TIMEOUT_S, Proc, ProcessHarness, free_port, wait_for_run, wait_port
from tests.test_security import leak_patterns

REPO = Path(__file__).resolve().parents[2]
TOY_APP = Path(__file__).parent / "toy_app"
BIN = Path(sys.executable).parent
COORD_DOC_DIR = "/srv/medalloc"
NODE_DOC_DIR = "/opt/medalloc-node"
# docs/hospital.md's OMOP database and reviewed release, swapped for the test's data and app folder.
DOC_DATA_URL = "postgresql://medalloc_reader@omop-db.hospital.local/omop"
DOC_RELEASE = "/opt/medalloc-node/medalloc-0.1.0"
# flwr.supercore.exit.ExitCode.SUPERNODE_CONNECTION_ERROR; Flower logs this code, but the
# process exit status is 1 for every error code (flwr/supercore/exit/exit.py, flwr_exit).
SUPERNODE_CONNECTION_ERROR = "Exit Code: 305"


def doc_blocks(page: Path) -> dict[str, str]:
    """The ``bash e2e:NAME`` code blocks of a docs page, by name."""
    text = page.read_text(encoding="utf-8")
    blocks = {m[1]: m[2] for m in re.finditer(r"^```bash e2e:(\S+)\n(.*?)^```", text, re.M | re.S)}
    assert blocks, f"no e2e blocks in {page}"
    return blocks


def adapt(block: str, substitutions: dict[str, str]) -> str:
    """Apply the test's substitutions, each of which must occur in the documented command.

    Ports and addresses are asserted so that a changed page fails here instead of running
    something else; the documented directories are swapped for temporary ones where they occur.
    """
    for old, new in substitutions.items():
        assert old in block, f"the docs no longer contain {old!r} in:\n{block}"
        block = block.replace(old, new)
    return block


DOC_CALENDAR = (
    'calendar-units = "icu,medical,surgical"',
    'calendar-start = "2023-01-01"',
    'calendar-end = "2023-12-31"',
)


def own_calendar(node_toml: Path, location: str, mapping: Path) -> None:
    """The hospital's own calendar in place of the page's H000 one, as its operator declares it from what
    ``medalloc node check`` shows (issue 20: every deployed node declares one). Stays: their whole months;
    a daily-count file: exactly its units and days."""
    from medalloc_core.privacy.calendar import suggested_calendar
    from medalloc_core.sources import DataSource, SourceMapping, load_source

    text = node_toml.read_text()
    assert all(line in text for line in DOC_CALENDAR), f"the page's node.toml no longer declares {DOC_CALENDAR}"
    data = load_source(DataSource(location, "auto", SourceMapping.from_toml(mapping)))
    stays = data.stays
    if stays is None:
        frame = data.records.frame
        units = ",".join(sorted(frame["unit"].astype(str).unique()))
        days = pd.to_datetime(frame["date"])
        own = [
            f'calendar-units = "{units}"',
            f'calendar-start = "{days.min():%Y-%m-%d}"',
            f'calendar-end = "{days.max():%Y-%m-%d}"',
        ]
    else:
        events = pd.concat([pd.to_datetime(stays["admit_time"]), pd.to_datetime(stays["discharge_time"])]).dropna()
        values = suggested_calendar(
            first_event=events.min(), last_event=events.max(), data_units=stays["unit"].astype(str).unique()
        )
        own = [f'{k} = "{v}"' for k, v in values.items()]
    for doc, line in zip(DOC_CALENDAR, own, strict=True):
        text = text.replace(doc, line)
    node_toml.write_text(text)


def exec_last(block: str) -> str:
    """Make bash ``exec`` the block's last command, so the started PID is that process."""
    commands = re.split(r"(?<!\\)\n", block.strip())
    commands[-1] = "exec " + commands[-1]
    return "\n".join(commands)


@dataclass
class Federation:
    """One coordinator and its hospitals on loopback, set up through the documented commands."""

    harness: ProcessHarness
    root: Path
    deploy: dict[str, str] = field(default_factory=lambda: doc_blocks(REPO / "docs" / "deploy.md"))
    hospital: dict[str, str] = field(default_factory=lambda: doc_blocks(REPO / "docs" / "hospital.md"))
    link_port: int = field(default_factory=free_port)
    gateway_port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        self.coord = self.root / "coordinator"
        self.coord.mkdir(parents=True)
        shim = self.root / "bin"
        shim.mkdir()
        # What `pip install .` would put on PATH: the `medalloc` console script.
        (shim / "medalloc").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m medalloc.cli "$@"\n')
        (shim / "medalloc").chmod(0o755)
        self.path = f"{shim}:{BIN}:/usr/bin:/bin"

    # ---------------------------------------------------------------- environments
    def coord_env(self) -> dict[str, str]:
        return self.harness.env(HOME=str(self.root / "coordinator-home"), PATH=self.path, PYTHONPATH=str(REPO))

    def node_dir(self, hospital: str) -> Path:
        return self.root / f"node-{hospital}"

    def node_env(self, hospital: str) -> dict[str, str]:
        return self.harness.env(HOME=str(self.root / f"home-{hospital}"), PATH=self.path, PYTHONPATH=str(REPO))

    def coord_block(self, name: str, extra: dict[str, str] | None = None) -> str:
        return adapt(self.deploy[name], extra or {}).replace(COORD_DOC_DIR, str(self.coord))

    def node_block(self, name: str, hospital: str, extra: dict[str, str] | None = None) -> str:
        block = adapt(self.hospital[name], extra or {})
        return block.replace(NODE_DOC_DIR, str(self.node_dir(hospital))).replace("H000", hospital)

    def sh(
        self, name: str, script: str, env: dict[str, str], *, cwd: Path, timeout: float = ONE_SHOT_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        return self.harness.run(name, ["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env, timeout=timeout)

    def ok(self, name: str, script: str, env: dict[str, str], *, cwd: Path, timeout: float = ONE_SHOT_TIMEOUT_S) -> str:
        result = self.sh(name, script, env, cwd=cwd, timeout=timeout)
        assert result.returncode == 0, f"{name} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        return result.stdout

    # ---------------------------------------------------------------- coordinator
    def start_coordinator(self) -> None:
        env = self.coord_env()
        self.ok("workdir", self.coord_block("workdir"), env, cwd=self.root)
        self.ok("certs", self.coord_block("certs"), env, cwd=self.root)
        self.start_superlink()
        gateway = self.coord_block(
            "gateway", {"0.0.0.0:9092": f"127.0.0.1:{self.gateway_port}", "9091": str(self.link_port)}
        )
        self.gateway = self.harness.start("gateway", ["bash", "-c", exec_last(gateway)], cwd=self.root, env=env)
        wait_port(self.gateway_port, self.gateway, timeout=60)
        self.ok("flwr-config", self.coord_block("flwr-config", {"9091": str(self.link_port)}), env, cwd=self.root)

    def start_superlink(self) -> None:
        block = self.coord_block("superlink", {"--port 9091": f"--port {self.link_port}"})
        name = f"superlink-{sum(p.name.startswith('superlink') for p in self.harness.procs)}"
        self.superlink = self.harness.start(name, ["bash", "-c", exec_last(block)], cwd=self.root, env=self.coord_env())
        self.superlink.wait_for_log(r"Uvicorn running on https://", timeout=60)
        wait_port(self.link_port, self.superlink, timeout=30)

    def register(self, hospital: str) -> str:
        shutil.copy(self.node_dir(hospital) / "keys" / f"{hospital}.pub", self.coord / "hospital-keys")
        out = self.ok(
            f"register-{hospital}",
            self.coord_block("register").replace("H000", hospital),
            self.coord_env(),
            cwd=self.root,
        )
        return re.search(r"SuperNode (\d+) registered successfully", out)[1]

    def flwr_json(self, name: str, args: str, *, cwd: Path | None = None) -> dict:
        out = self.ok(name, f"flwr {args} --format json", self.coord_env(), cwd=cwd or self.coord)
        return json.loads(out[out.index("{") :])

    def node_ids(self) -> dict[str, str]:
        nodes = self.flwr_json("list-json", "supernode list medalloc")["nodes"]
        return {n["node-id"]: n["status"] for n in nodes}

    # ---------------------------------------------------------------- hospitals
    def prepare_hospital(
        self, hospital: str, data: Path | str, *, validate: bool, app: Path, check: tuple[int, int] | None = None
    ) -> None:
        """The hospital page's steps 1-5: node config, data check, key pair, app approval, node check.

        ``data`` is a hospital file (copied into the node's folder) or a database URL; either
        takes the place of the page's OMOP database URL. ``app`` is the source folder the
        coordinator will ``flwr run`` (the release the hospital reviewed). ``check``
        (history, horizon) runs ``medalloc node check`` against the running coordinator.
        """
        node = self.node_dir(hospital)
        (node / "data").mkdir(parents=True)
        location = data if isinstance(data, str) else str(shutil.copy(data, node / "data" / f"{hospital}.csv"))
        shutil.copy(self.coord / "certs" / "ca.crt", node / "ca.crt")
        env = self.node_env(hospital)
        source = {DOC_DATA_URL: location}
        self.ok(f"node-config-{hospital}", self.node_block("node-config", hospital, source), env, cwd=node)
        own_calendar(node / "node.toml", location, node / "mapping.toml")
        if validate:
            self.ok(f"validate-{hospital}", self.node_block("validate", hospital, source), env, cwd=node)
        out = self.ok(f"keys-{hospital}", self.node_block("keys", hospital), env, cwd=node)
        assert "SHA256:" in out
        out = self.ok(
            f"approve-{hospital}", self.node_block("approve", hospital, {DOC_RELEASE: str(app)}), env, cwd=node
        )
        assert re.search(r"approved: sha256 [0-9a-f]{64} ", out), out
        if check is not None:
            block = self.node_block(
                "check",
                hospital,
                {
                    "superlink.example.org:9092": f"127.0.0.1:{self.gateway_port}",
                    "--history 28 --horizon 14": f"--history {check[0]} --horizon {check[1]}",
                },
            )
            out = self.ok(f"check-{hospital}", block, env, cwd=node, timeout=180)
            assert "READY: the node can join" in out, out

    def start_supernode(self, hospital: str) -> Proc:
        block = self.node_block(
            "supernode",
            hospital,
            {
                "superlink.example.org:9092": f"127.0.0.1:{self.gateway_port}",
                "--port 9094": f"--port {free_port()}",
            },
        )
        return self.harness.start(
            f"supernode-{hospital}", ["bash", "-c", exec_last(block)], cwd=self.root, env=self.node_env(hospital)
        )

    # ---------------------------------------------------------------- runs
    def run(self, app_dir: Path, extra_run_config: str) -> str:
        block = self.coord_block("run").rstrip() + f" --run-config '{extra_run_config}'"
        out = self.ok("flwr-run", block, self.coord_env(), cwd=app_dir, timeout=120)
        return re.search(r"Successfully started run (\d+)", out)[1]

    def wait_run(self, run_id: str, *, timeout: float) -> tuple[dict, set[str]]:
        """Wait until the run finishes; also note which Flower processes carried our tag meanwhile."""
        seen: set[str] = set()
        status = lambda: self.flwr_json("list-run", f"list medalloc --run-id {run_id}")["runs"][0]  # noqa: E731
        if (run := wait_for_run(status, self.harness.tag, timeout=timeout, seen=seen)) is not None:
            return run, seen
        log = self.sh("log", f"flwr log {run_id} medalloc --show", self.coord_env(), cwd=self.coord).stdout
        raise AssertionError(f"run {run_id} did not finish in {timeout}s; ServerApp log:\n{log[-4000:]}")


def _deploy(
    fed: Federation,
    data: dict[str, Path] | dict[str, str],
    *,
    validate: bool,
    app: Path,
    check: tuple[int, int] | None = None,
) -> tuple[dict[str, str], Proc]:
    """Coordinator up, hospitals keyed and their app approved, all but the last registered and started; node ids.

    The last (unregistered) hospital's node is started first, as soon as it is set up: ``medalloc node start``
    retries its refusal for 90 s before it stops (assert_refused_node_gone), and these pass while the others are set
    up instead of after."""
    fed.start_coordinator()
    *members, intruder = data
    nodes = {}
    for hospital in (intruder, *members):
        fed.prepare_hospital(
            hospital,
            data[hospital],
            validate=validate and hospital != intruder,
            app=app,
            check=check if hospital == members[0] else None,
        )
        if hospital == intruder:
            nodes[intruder] = fed.start_supernode(intruder)
    ids = {hospital: fed.register(hospital) for hospital in members}
    nodes |= {hospital: fed.start_supernode(hospital) for hospital in members}
    for hospital in members:
        logged = nodes[hospital].wait_for_log(r"SuperNode ID: (\d+)", timeout=90)[1]
        assert logged == ids[hospital]

    # The unregistered hospital is refused at activation (it exits by itself later: assert_refused_node_gone).
    refused = nodes[intruder]
    refused.wait_for_log(r"Failed to activate SuperNode", timeout=90)
    assert SUPERNODE_CONNECTION_ERROR in refused.read_log()
    assert "SuperNode ID" not in refused.read_log()

    # The SuperLink knows exactly the registered nodes, all online.
    deadline = time.monotonic() + 30
    while set((listed := fed.node_ids()).values()) != {"online"} and time.monotonic() < deadline:
        time.sleep(1)
    assert listed == {ids[h]: "online" for h in members}
    fed.ok("list", fed.coord_block("list"), fed.coord_env(), cwd=fed.coord)

    # Through the gateway the Control API is refused, 404 (so is registering a key there).
    conf = fed.root / "coordinator-home" / ".flwr" / "config.toml"
    with conf.open("a", encoding="utf-8") as f:
        f.write(
            f'\n[superlink.via-gateway]\naddress = "127.0.0.1:{fed.gateway_port}"\n'
            f'root-certificates = "{fed.coord / "certs" / "ca.crt"}"\n'
        )
    for args in (
        "supernode list via-gateway",
        f"supernode register {fed.node_dir(intruder) / 'keys' / (intruder + '.pub')} via-gateway",
    ):
        refused_cli = fed.sh("via-gateway", f"flwr {args}", fed.coord_env(), cwd=fed.coord)
        assert refused_cli.returncode != 0
        assert "404" in refused_cli.stdout + refused_cli.stderr
    assert len(fed.node_ids()) == len(members)
    return ids, refused


def assert_refused_node_gone(refused: Proc) -> None:
    """The unregistered hospital's node has stopped by itself, refused, never activated.

    ``medalloc node start`` retries a refusal for up to 90 s (medalloc.node.supervisor.ACTIVATION_PATIENCE_S),
    then stops: a test checks this after its run, so that those 90 s pass during the run instead of before it.
    """
    refused.popen.wait(timeout=180)
    assert refused.popen.returncode == 1, refused.read_log()[-2000:]
    assert SUPERNODE_CONNECTION_ERROR in refused.read_log()
    assert "Failed to activate SuperNode" in refused.read_log()
    assert "SuperNode ID" not in refused.read_log()


def _check_restart_keeps_registrations(fed: Federation, ids: dict[str, str]) -> None:
    """``--database``: a restarted SuperLink still knows the registered hospitals."""
    fed.superlink.popen.terminate()
    fed.superlink.popen.wait(timeout=30)
    fed.start_superlink()
    assert set(fed.node_ids()) == set(ids.values())


def omop_databases(fed: Federation, hospitals: int, days: int, stack: contextlib.ExitStack) -> dict[str, str]:
    """The generated hospitals' stays as OMOP CDMs in schema ``cdm`` (docs/hospital.md's mapping), one database each.

    A throwaway PostgreSQL server (tests/pg_server.py) when one can start here, else SQLite
    files; the URL takes the place of the page's database URL.
    """
    import psycopg
    from sqlalchemy import create_engine

    from medalloc_core.sources.synthetic import create_omop_database
    from tests import pg_server

    out = fed.root / "region-omop"
    fed.ok(
        "generate-omop",
        f"medalloc generate --hospitals {hospitals} --days {days} --seed 0 --shape omop --out {out}",
        fed.coord_env(),
        cwd=fed.root,
        timeout=240,  # 45 s alone at load 12 and over 60 s at load 22 on the shared 2-core machine
    )
    server = None if pg_server.unavailable_reason() else stack.enter_context(pg_server.postgres_server(fed.root / "pg"))
    urls = {}
    for i in range(hospitals):
        hospital = f"H{i:03d}"
        cdm = out / f"{hospital}.sqlite"
        if server is None:
            urls[hospital] = f"sqlite:///{cdm}"  # SQLite has no schemas: the mapping's schema is ignored
            continue
        engine = create_engine(f"sqlite:///{cdm}")
        tables = {t: pd.read_sql_table(t, engine) for t in ("care_site", "visit_occurrence", "visit_detail")}
        engine.dispose()
        url = pg_server.create_database(server, f"omop_{hospital.lower()}")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE SCHEMA cdm")
        create_omop_database(tables, url, schema="cdm")
        urls[hospital] = url
    return urls


def generate_region(fed: Federation, hospitals: int, days: int) -> dict[str, Path]:
    """Hospital files from the project's own generator (``medalloc generate``)."""
    out = fed.root / "region"
    fed.ok(
        "generate",
        f"medalloc generate --hospitals {hospitals} --days {days} --seed 0 --out {out}",
        fed.coord_env(),
        cwd=fed.root,
    )
    return {f"H{i:03d}": out / f"H{i:03d}.csv" for i in range(hospitals)}


COPY_IGNORE = (".git", ".venv", "results", "__pycache__", ".pytest_cache", ".hypothesis", "*.egg-info", "build", "dist")
# Small and quick: the documented run is 20 rounds of the default model. Only the keys the
# app's [tool.flwr.app.config] declares are passed (Flower refuses unknown keys), so a
# renamed model-size key makes the run slower, not the test wrong.
FAST_HISTORY, FAST_HORIZON = 14, 7
REAL_APP_FAST_CONFIG = {
    # DP-SGD noise on a mean gradient is noise-multiplier x clip / batch: batches of 128 keep
    # it well under the signal, so two rounds reliably beat the initial model.
    "num-server-rounds": 2,
    # the small model from scratch: main's defaults (the pretrained hybrid) need history 28, horizon 14
    "model": "mlp",
    "init": "none",
    "local-epochs": 2,
    "batch-size": 128,
    "lr": 0.05,
    "history": FAST_HISTORY,
    "lookback": FAST_HISTORY,
    "horizon": FAST_HORIZON,
    "hidden": 16,
    "hidden-size": 16,
}


def fast_run_config(app_dir: Path) -> str:
    import tomllib

    declared = tomllib.loads((app_dir / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert "num-server-rounds" in declared
    return " ".join(
        f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in REAL_APP_FAST_CONFIG.items() if k in declared
    )


# Its own waits are the bound (the run 420 s); 218 s at -n 2, 670 s at -n 4 under load 14, past the default 600 s
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_medalloc_through_documented_deployment(harness: ProcessHarness, tmp_path: Path) -> None:
    """The documented commands with MedAlloc itself: `flwr run .` from the project directory.

    The run must complete, the global model must evaluate better on the hospitals' held-out
    weeks at the end than at the start (round 0, the initial model, when the ServerApp
    reports it; otherwise the first round), and every registered hospital's privacy ledger
    must show the rounds it trained, within its budget; the refused hospital has no ledger.
    """
    with contextlib.ExitStack() as stack:
        _medalloc_through_documented_deployment(harness, tmp_path, stack)


def _medalloc_through_documented_deployment(
    harness: ProcessHarness, tmp_path: Path, stack: contextlib.ExitStack
) -> None:
    fed = Federation(harness, tmp_path)
    data = generate_region(fed, hospitals=4, days=365)  # daily CSVs: what the leak scan looks for
    # The hospitals keep the same stays in OMOP CDM databases, as docs/hospital.md's hospital does.
    databases = omop_databases(fed, hospitals=4, days=365, stack=stack)

    # `flwr run .` rewrites the app's pyproject.toml when it has an active
    # [tool.flwr.federations] table (flwr/cli/config_migration.py): it runs on a copy,
    # never on the checkout. The hospitals approve that copy (docs/hospital.md, step 4).
    app = tmp_path / "medalloc-src"
    shutil.copytree(REPO, app, ignore=shutil.ignore_patterns(*COPY_IGNORE))
    ids, refused = _deploy(fed, databases, validate=True, app=app, check=(FAST_HISTORY, FAST_HORIZON))
    checkout_pyproject = (REPO / "pyproject.toml").read_bytes()
    run_id = fed.run(app, fast_run_config(app))
    assert (REPO / "pyproject.toml").read_bytes() == checkout_pyproject
    run, seen = fed.wait_run(run_id, timeout=420)
    log = fed.sh("log", f"flwr log {run_id} medalloc --show", fed.coord_env(), cwd=fed.coord).stdout
    assert run["status"] == "finished:completed", f"{run}\n{log[-4000:]}"
    assert "flwr-serverapp" in seen

    out = fed.coord / "results" / "run-001"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = {r["round"]: (r.get("evaluate") or {}).get("eval-loss") for r in rows}
    evals = {rnd: loss for rnd, loss in evals.items() if loss is not None}
    assert 0 in evals and max(evals) == 2, f"expected round 0 (the initial model) to round 2: {rows}"
    assert evals[2] < evals[0], evals
    assert (out / "final_model.safetensors").is_file()
    assert sorted(p.name for p in (out / "checkpoints").glob("round-*.json")) == ["round-0001.json", "round-0002.json"]

    # Each registered hospital that trained released its counts once (charged to its ledger at
    # the run's patient-epsilon, 1.0), and every round after that cost nothing more.
    for hospital in ("H000", "H001", "H002"):
        trained = [
            r["round"]
            for r in rows
            for o in r.get("outcomes", [])
            if o["node"] == ids[hospital] and o["status"] in ("accepted", "dropped")
        ]
        ledger = fed.node_dir(hospital) / "privacy-ledger.json"
        env = fed.node_env(hospital)
        if hospital == "H000":  # the documented command, once, as a process; the JSON form for the checks
            fed.ok(f"privacy-{hospital}", fed.node_block("privacy", hospital), env, cwd=fed.node_dir(hospital))
        # `medalloc privacy --json` in this process (typer's runner): the same command, without the ~4 s of CPU a
        # fresh interpreter spends importing PyTorch and Opacus for it, three times.
        shown = CliRunner().invoke(medalloc_app, ["privacy", "--ledger", str(ledger), "--json"])
        assert shown.exit_code == 0, shown.output
        report = json.loads(shown.stdout)
        spends = [s for entry in report["entries"] for s in entry["spends"]]
        assert trained, f"{hospital} trained in no round: {rows}"
        assert [s["mechanism"] for s in spends] == ["source-release"], (hospital, trained, spends, rows)
        assert all(run_id in s["run_id"] for s in spends), spends
        assert report["unit"] == "patient" and report["max_stay_days"] == 14
        assert report["epsilon_budget"] == 1.5
        assert report["epsilon_spent"] == pytest.approx(1.0, abs=1e-3)
    assert not (fed.node_dir("H003") / "privacy-ledger.json").exists()
    assert_refused_node_gone(refused)

    # No record of a hospital's file and no private key line reaches any process's log (nodes,
    # SuperLink, gateway, ServerApp) or any file the coordinator keeps.
    texts = [p.read_text(errors="replace") for p in harness.root.rglob("*.log")]
    texts += [p.read_text(errors="replace") for p in out.rglob("*") if p.is_file() and p.suffix in {".json", ".jsonl"}]
    assert texts and any("round" in t.lower() for t in texts)  # the logs are there to scan
    patterns = leak_patterns(pd.read_csv(data["H000"]))
    assert [p.pattern for p in patterns if any(p.search(t) for t in texts)] == []
    key = (fed.node_dir("H000") / "keys" / "H000").read_text().splitlines()
    secret_lines = [line for line in key if line.strip() and not line.startswith("-----")]
    assert secret_lines and not any(line in t for t in texts for line in secret_lines)
