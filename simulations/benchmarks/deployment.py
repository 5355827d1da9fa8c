"""Round overhead of a real deployment: a SuperLink and N nodes on loopback against the same rounds in process.

For each N (default 2 and 5; ``--nodes 2,5,10``) it generates N small synthetic hospitals, starts
``flower-superlink`` and N nodes (insecure, loopback: TLS and the gateway add a handshake per
connection, not per round), records each node's memory while idle, submits the project with
``flwr run`` and waits for ``metrics.jsonl``; meanwhile it samples each node's peak memory (the
node's processes summed, PSS). Then it runs the same rounds on the same data with the
ServerApp's round loop in process (``simulations.local_grid.LocalGrid``: the nodes' work, no
transport, no processes). ``--node`` picks the nodes, side by side in one run:

- ``flower``: Flower's ``flower-supernode`` (``--isolation subprocess``): a fresh
  ``flwr-clientapp`` process per train and per evaluate message, which imports PyTorch, pandas,
  SciPy, Opacus and Flower before its one message (``flwr/supernode/runtime/run_clientapp.py``);
  the SuperNode sleeps 3 s whenever a pull finds no message
  (``flwr/supernode/start_client_internal.py``), its SuperExec polls every second;
- ``medalloc``: ``medalloc node start`` with the project approved, what hospital.md runs: the
  approved-apps gate forks each message's process from a warm launcher that imported those
  libraries once (``medalloc.node.warm``), the SuperNode pulls every 0.5 s
  (``medalloc.node.supernode``), the SuperExec polls every 0.5 s.

In both the ServerApp collects replies every 0.2 s (``server.grid_io``; Flower's grid waits 3 s) and
sends each message's model as one packed array (``medalloc_core.wire``; Flower moves every array as
objects of its own, a request each at every hop); ``medalloc`` nodes also try a message's objects
again after 0.1-0.5 s, not Flower's 1-10 s (``medalloc.node.supernode.shorten_pull_backoff``).

It prints seconds per round deployed and in process, their difference (the overhead) and ratio,
and node memory idle and peak; then where the CPU goes: CPU seconds per round of one node (its
SuperNode, gate, launcher and ClientApp processes) against the same node's work in process, of
the SuperLink with its SuperExec and the ServerApp, and what an idle node and the SuperLink use
while waiting (their pulls; measured 10 s after the nodes started, so a slow start still counts).
CPU seconds are what the processes used whatever else the machine ran, which wall-clock seconds
on a shared machine are not. Last, how long ``medalloc --help`` and an import of the ClientApp
(what every fresh ``flwr-clientapp`` process does before its one message) take.

Run: ``python -m simulations.benchmarks.deployment [--nodes 2,5,10] [--rounds 3] [--node flower,medalloc]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TINY = {
    "model": "mlp",
    "init": "none",
    "history": 14,
    "horizon": 7,
    "hidden": 16,
    "batch-size": 64,
    "lr": 0.01,
    "local-epochs": 1,
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tree(pid: int) -> list[int]:
    """``pid`` and every descendant (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _pss_mb(pid: int) -> float:
    """Memory of ``pid`` and its descendants (PSS: a page shared by k of them counts 1/k to each, so pages
    that forked processes share with their parent are counted once, not once per process)."""
    total = 0
    for p in _tree(pid):
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            continue
    return total / 1024


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and its descendants, those alive and those already reaped.

    A process's own time plus its waited-for children's (``/proc/PID/stat`` fields 14-17): a ClientApp
    process that has ended counts in the launcher or SuperExec that reaped it. On a machine shared
    with other work, CPU seconds are what a process used, whatever the wall clock did meanwhile.
    """
    total = 0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return total / _TICK


def _copy_project(dest: Path) -> Path:
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        source = REPO / name.decode()
        if source.is_file() and not name.startswith((b"tests/", b"docs/")):
            target = dest / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return dest


def _region(folder: Path, hospitals: int) -> list[Path]:
    from medalloc_core.synthetic import RegionConfig, generate_region, write_region

    config = RegionConfig(hospitals=hospitals, days=200, seed=0, short_history_fraction=0.0, specialty_centres=0)
    return sorted(p for p in write_region(generate_region(config), folder) if p.suffix == ".csv")


def _node_config(data: Path, ledger: Path, hospital: str) -> dict[str, Any]:
    import pandas as pd

    rows = pd.read_csv(data, usecols=["date", "unit"], dtype=str)  # the node's declared calendar: its file's span
    return {
        "data-path": str(data),
        "ledger-path": str(ledger),
        "privacy-epsilon-budget": 10.0,
        "hospital-id": hospital,
        "calendar-units": ",".join(sorted(rows["unit"].unique())),
        "calendar-start": rows["date"].min(),
        "calendar-end": rows["date"].max(),
    }


def _run_config(nodes: int, rounds: int, out: Path) -> dict[str, Any]:
    return {
        "num-server-rounds": rounds,
        "min-available-nodes": nodes,
        "min-train-nodes": nodes,
        "out-dir": str(out),
        "simulation-days": 200,
    } | TINY


def in_process(files: list[Path], rounds: int, root: Path) -> tuple[float, float]:
    """Seconds and CPU seconds per round of the same rounds through the ServerApp's loop, every node in this
    process (CPU from the end of round 0's evaluation to the end of the last round)."""
    from medalloc.client.app import make_client_app
    from medalloc.server.app import run_federation
    from medalloc.server.config import RunConfig

    from ..local_grid import LocalGrid, task_identity
    from ..logs import quiet_flower

    nodes = {
        i + 1: _node_config(f, root / f"inproc-ledger-{i}.json", f.stem)
        | {"node-state-path": str(root / f"st{i}.json")}
        for i, f in enumerate(files)
    }
    config = RunConfig.from_mapping(_run_config(len(files), rounds, root / "inproc-out"))
    quiet_flower()  # the deployed run's log is the nodes' and the SuperLink's; this one would only repeat it
    cpu: dict[int, float] = {}
    with task_identity():
        result = run_federation(
            LocalGrid(make_client_app(), nodes), config, run_id=1,
            on_round=lambda record: cpu.__setitem__(record.round, time.process_time()),
        )  # fmt: skip
    seconds = [r.seconds for r in result.rounds if r.round > 0 and r.seconds is not None]
    return sum(seconds) / len(seconds), (cpu[rounds] - cpu[0]) / rounds


def _node_argv(mode: str, link: int, pairs: str, approved: Path) -> list[str]:
    """One hospital's node: Flower's own SuperNode (``flower``), or what hospital.md runs (``medalloc``)."""
    port = str(_free_port())
    if mode == "flower":
        return ["flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link}", "--port", port,
                "--node-config", pairs]  # fmt: skip
    return [str(BIN / "medalloc"), "node", "start", "--insecure", "--superlink", f"127.0.0.1:{link}", "--port", port,
            "--node-config", f"{pairs} approved-apps={json.dumps(str(approved))}"]  # fmt: skip


def deployed(files: list[Path], rounds: int, root: Path, timeout: float, mode: str = "medalloc") -> dict[str, float]:
    """Seconds per round and node memory of a real SuperLink and len(files) SuperNodes on loopback.

    ``mode``: ``flower`` starts ``flower-supernode`` (subprocess isolation: a fresh ``flwr-clientapp``
    per message, no approved-apps gate); ``medalloc`` starts ``medalloc node start`` (the approved-apps
    gate, its warm launcher and the shorter pull interval), each node with the project approved.
    """
    env = dict(os.environ)
    env |= {
        "HOME": str(root / "home"),
        "PATH": f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    }
    (root / "home").mkdir(parents=True, exist_ok=True)
    project = _copy_project(root / "project")
    approved = root / "approved-apps.toml"
    if mode == "medalloc":
        subprocess.run(
            [str(BIN / "medalloc"), "node", "approve", "--app", str(project), "--approved-apps", str(approved)],
            env=env, cwd=root, capture_output=True, check=True, timeout=300,
        )  # fmt: skip
    link = _free_port()  # Flower 1.42: the Fleet, Control and Runtime APIs share one HTTP port
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, argv: list[str], **extra_env: str) -> subprocess.Popen[bytes]:
        log = (logs / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=env | extra_env, cwd=root, start_new_session=True
        )
        procs.append(proc)
        return proc

    try:
        start(
            "superlink",
            ["flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(link),
             "--disable-runtime-dependency-installation", "--database", str(root / "superlink.db")],
        )  # fmt: skip
        nodes = []
        for i, data in enumerate(files):
            config = _node_config(data, root / f"ledger-{i}.json", data.stem)
            pairs = " ".join(f"{k}={json.dumps(v)}" for k, v in config.items())
            home = root / f"flwr-home-{i}"  # each hospital installs the app on its own machine
            nodes.append(start(f"node-{i}", _node_argv(mode, link, pairs, approved), FLWR_HOME=str(home)))
        time.sleep(10)  # started and registered
        superlink = procs[0]  # and, once a run starts, its SuperExec and ServerApp processes
        idle_began, idle_cpu = time.monotonic(), [_cpu_s(p.pid) for p in [*nodes, superlink]]
        time.sleep(10)  # idle: what a waiting node holds, and what its polling costs
        idle_s = time.monotonic() - idle_began
        idle_cpu = [(_cpu_s(p.pid) - c) / idle_s for p, c in zip([*nodes, superlink], idle_cpu)]
        idle = [_pss_mb(n.pid) for n in nodes]
        (root / "home" / ".flwr").mkdir(parents=True, exist_ok=True)
        (root / "home" / ".flwr" / "config.toml").write_text(
            f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\naddress = "127.0.0.1:{link}"\ninsecure = true\n'
        )
        out = root / "deployed-out"
        overrides = " ".join(f"{k}={json.dumps(v)}" for k, v in _run_config(len(files), rounds, out).items())
        submitted = subprocess.run(
            ["flwr", "run", str(project), "bench", "--run-config", overrides],
            env=env, cwd=root, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if submitted.returncode != 0:
            raise RuntimeError(f"flwr run failed: {submitted.stdout[-2000:]}{submitted.stderr[-2000:]}")
        peak = list(idle)
        deadline = time.monotonic() + timeout
        metrics = out / "metrics.jsonl"
        cpu_from: list[float] | None = None  # at the end of round 0 (the initial model's evaluation)
        while time.monotonic() < deadline:
            peak = [max(p, _pss_mb(n.pid)) for p, n in zip(peak, nodes)]
            lines = metrics.read_text().splitlines() if metrics.is_file() else []
            if cpu_from is None and lines:
                cpu_from = [_cpu_s(p.pid) for p in [*nodes, superlink]]
            if len(lines) >= rounds + 1 and (out / "final_model.json").is_file():
                cpu_to = [_cpu_s(p.pid) for p in [*nodes, superlink]]
                break
            time.sleep(0.25)
        else:
            raise RuntimeError(f"{len(files)} nodes: the run did not finish in {timeout:.0f} s (logs in {logs})")
        records = [json.loads(line) for line in metrics.read_text().splitlines()]
        seconds = [r["seconds"] for r in records if r["round"] > 0]
        assert cpu_from is not None
        used = [(b - a) / rounds for a, b in zip(cpu_from, cpu_to)]
        return {
            "seconds": sum(seconds) / len(seconds),
            "idle_mb": max(idle),
            "peak_mb": max(peak),
            "node_cpu": sum(used[:-1]) / len(nodes),  # CPU s per round, one node (mean over nodes)
            "link_cpu": used[-1],  # CPU s per round: SuperLink, its SuperExec and the ServerApp
            "idle_node_cpu": sum(idle_cpu[:-1]) / len(nodes),  # CPU s per s of one idle node (its polling)
            "idle_link_cpu": idle_cpu[-1],
        }
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def startup_seconds() -> dict[str, float]:
    """`medalloc --help` and one ClientApp import in fresh interpreters (what each message's process pays first)."""

    def timed(argv: list[str]) -> float:
        began = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True, timeout=300, cwd=REPO)
        return time.perf_counter() - began

    return {
        "medalloc --help": timed([str(BIN / "medalloc"), "--help"]),
        "python -c pass": timed([sys.executable, "-c", "pass"]),
        "import the ClientApp": timed([sys.executable, "-c", "import medalloc.client.app"]),
    }


MODES = ("flower", "medalloc")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="2,5", help="comma-separated node counts (e.g. 2,5,10)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--node", default="flower,medalloc", help="which nodes, comma-separated: flower (flower-supernode), "
        "medalloc (medalloc node start: the approved-apps gate, warm launcher, 0.5 s pulls)",
    )  # fmt: skip
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for one deployed run")
    parser.add_argument("--keep", action="store_true", help="keep each run's folder (logs, results) and print it")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.node.split(",")]
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--node takes {' and/or '.join(MODES)}, comma-separated; got {args.node!r}")
    console = Console(width=120)
    import torch

    torch.set_num_threads(1)
    starts = startup_seconds()
    table = Table(title=f"Real SuperLink + SuperNodes on loopback against the same {args.rounds} rounds in process")
    for column in ("nodes", "node", "s/round deployed", "s/round in process", "overhead s/round", "ratio",
                   "node MB idle", "node MB peak"):  # fmt: skip
        table.add_column(column, justify="right")
    cpu_table = Table(title="Where the CPU goes (CPU seconds: what the processes used, whatever else the machine ran)")
    for column in ("nodes", "node", "node CPU s/round", "in-process CPU s/round per node",
                   "SuperLink+ServerApp CPU s/round", "idle node CPU %", "idle SuperLink CPU %"):  # fmt: skip
        cpu_table.add_column(column, justify="right")
    for n in (int(x) for x in args.nodes.split(",")):
        root = Path(tempfile.mkdtemp(prefix=f"medalloc-deploy-{n}-"))
        try:
            files = _region(root / "region", n)
            with console.status(f"{n} nodes: in process"):
                local, local_cpu = in_process(files, args.rounds, root)
            for mode in modes:
                with console.status(f"{n} nodes: SuperLink + {n} {mode} nodes, flwr run"):
                    real = deployed(files, args.rounds, root / mode, args.timeout, mode)
                table.add_row(
                    str(n), mode, f"{real['seconds']:.1f}", f"{local:.2f}", f"{real['seconds'] - local:.1f}",
                    f"{real['seconds'] / local:.1f}x", f"{real['idle_mb']:.0f}", f"{real['peak_mb']:.0f}",
                )  # fmt: skip
                cpu_table.add_row(
                    str(n), mode, f"{real['node_cpu']:.2f}", f"{local_cpu / n:.2f}", f"{real['link_cpu']:.2f}",
                    f"{100 * real['idle_node_cpu']:.1f}", f"{100 * real['idle_link_cpu']:.1f}",
                )  # fmt: skip
                console.print(table)
                console.print(cpu_table)
        finally:
            if args.keep:
                console.print(f"{n} nodes: kept {root}", highlight=False)
            else:
                shutil.rmtree(root, ignore_errors=True)
    for what, seconds in starts.items():
        console.print(f"{what}: {seconds:.2f} s (fresh interpreter)", highlight=False)
    console.print(
        "node MB: the node's processes at that moment (SuperNode, SuperExec or medalloc's gate and its warm "
        "launcher, ClientApp processes), PSS summed: a page shared by forked processes counts once. flower: a "
        "fresh flwr-clientapp per train and evaluate message (Flower 1.42 subprocess isolation); medalloc: a "
        "process forked per message from a launcher that imported the libraries once",
        highlight=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
