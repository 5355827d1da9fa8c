"""Process harness for end-to-end tests on real Flower processes.

Every process a test starts gets its own session (process group) and a log file under
``tmp_path``, and carries an environment tag that its children inherit (the SuperLink's
SuperExec runs in a session of its own and outlives a SIGKILLed parent, so the process
tree alone is not enough to find everything). At teardown, whatever happened, every
tagged process is stopped by PID — SIGTERM, then SIGKILL after a grace period — and the
test fails if any Flower process carrying the tag is still running.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

_TAG_VAR = "MEDALLOC_E2E_TAG"
# How long a one-shot command (a `medalloc` or `flwr` command) may take before the test fails: a guard against a hang,
# never a measure. A `medalloc forecast` that takes 10 s alone took over 60 s with 4 xdist workers on 2 loaded cores.
ONE_SHOT_TIMEOUT_S = 300.0
FLOWER_PROCESS = re.compile(r"flower-superlink|flower-supernode|flower-superexec|flwr-serverapp|flwr-clientapp|nginx")


def free_port() -> int:
    """A TCP port that was free a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _proc_state(pid: int) -> str | None:
    """The one-letter state from /proc/PID/stat, or None when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2]


def _alive(pid: int) -> bool:
    state = _proc_state(pid)
    return state is not None and state not in ("Z", "X")


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def tagged_pids(tag: str) -> list[int]:
    """Live processes whose environment carries ``MEDALLOC_E2E_TAG=tag`` (same user only)."""
    needle = f"{_TAG_VAR}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and _alive(int(entry.name)):
            found.append(int(entry.name))
    return found


@dataclass
class Proc:
    """A started process and its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def read_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for_log(self, pattern: str, *, timeout: float) -> re.Match[str]:
        """Poll the log until ``pattern`` appears; fail with the log tail if it does not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if match := re.search(pattern, self.read_log()):
                return match
            if self.popen.poll() is not None:
                break
            time.sleep(0.2)
        if match := re.search(pattern, self.read_log()):
            return match
        raise AssertionError(
            f"{self.name} (pid {self.pid}, exit {self.popen.poll()}) never logged {pattern!r}; "
            f"log tail:\n{self.read_log()[-3000:]}"
        )


@dataclass
class ProcessHarness:
    """Starts processes for one test and stops every one of them by PID afterwards."""

    root: Path
    tag: str = field(default_factory=lambda: uuid.uuid4().hex)
    procs: list[Proc] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        """The environment every harness process gets: the caller's, plus the tag."""
        env = {
            **os.environ,
            _TAG_VAR: self.tag,
            "PYTHONUNBUFFERED": "1",
            # Tests never call out to Flower Labs (telemetry, update check).
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
        }
        env.update(extra)
        return env

    def start(self, name: str, argv: list[str], *, cwd: Path, env: dict[str, str]) -> Proc:
        """Start a long-running process in its own session, output into ``<root>/logs/<name>.log``."""
        log = self.root / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as handle:
            popen = subprocess.Popen(
                argv,
                cwd=cwd,
                env={**env, _TAG_VAR: self.tag},
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def run(
        self, name: str, argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float = ONE_SHOT_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        """Run a one-shot command to completion; its output is also kept in the log dir."""
        result = subprocess.run(
            argv,
            cwd=cwd,
            env={**env, _TAG_VAR: self.tag},
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        log = self.root / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"$ {' '.join(argv)}\nexit {result.returncode}\n{result.stdout}\n{result.stderr}")
        return result

    def stop_all(self, *, grace: float = 10.0) -> list[str]:
        """Stop every started and tagged process; return what is still running afterwards."""
        # Newest first: SuperNodes before the SuperLink, so they deregister cleanly.
        for proc in reversed(self.procs):
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs:
            try:
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(timeout=5)
        # Children (SuperExec, flwr-serverapp, flwr-clientapp) exit when they see their
        # parent gone; give them the same grace, then stop any stragglers by PID.
        _stop_pids(tagged_pids(self.tag), grace=grace)
        return [f"{pid}: {cmdline(pid)}" for pid in tagged_pids(self.tag) if FLOWER_PROCESS.search(cmdline(pid))]


def _stop_pids(pids: list[int], *, grace: float) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.2)
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.1)


# Flower's per-run processes; the ServerApp's is there for as long as its run goes on.
RUN_PROCESS = re.compile(r"flwr-serverapp|flwr-clientapp|flower-superexec")


def wait_for_run(
    status: Callable[[], dict], tag: str, *, timeout: float, seen: set[str] | None = None, every: float = 15.0
) -> dict | None:
    """Wait until ``status()`` (a run's row from ``flwr list``) says finished; that row, or None at the timeout.

    Each ``flwr`` command costs about 1.5 s of CPU (it imports Flower and gRPC): asked every 2 s it takes most of a
    core from the run it waits for, on a 2-core machine. So it is asked when the run may have ended: the run's
    ServerApp process (carrying ``tag``) was seen and is gone, and every ``every`` seconds in case it was never
    seen; between these, a scan of /proc every 0.25 s, which also notes in ``seen`` the Flower run processes
    (ServerApp, ClientApp, SuperExec) that carried the tag.
    """
    seen = set() if seen is None else seen
    deadline = time.monotonic() + timeout
    asked = time.monotonic()
    serverapp_up = False
    while time.monotonic() < deadline:
        names = {m[0] for pid in tagged_pids(tag) if (m := RUN_PROCESS.search(cmdline(pid)))}
        seen |= names
        ended = serverapp_up and "flwr-serverapp" not in names
        serverapp_up = "flwr-serverapp" in names
        if ended or time.monotonic() - asked >= every:
            run = status()
            asked = time.monotonic()  # from its answer: on a loaded machine one takes 5-10 s
            if run["status"].startswith("finished"):
                return run
            if ended:  # the ServerApp is gone; the SuperLink records the end a moment later
                every = min(every, 2.0)
        time.sleep(0.25)
    return None


def wait_port(port: int, proc: Proc, *, timeout: float) -> None:
    """Poll until something listens on ``port`` of 127.0.0.1; fail with the log tail if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.popen.poll() is None, f"{proc.name} exited early:\n{proc.read_log()[-3000:]}"
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"{proc.name} never listened on {port}:\n{proc.read_log()[-3000:]}")


def jsonl(path: Path) -> list[dict]:
    """The JSON lines of a file, or none while it does not exist yet."""
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@dataclass
class GatedNodes:
    """An insecure SuperLink on loopback and SuperNodes started as a hospital starts them, with the app approved.

    The set-up of the SecAgg+ e2e tests (tests/e2e/test_secure_aggregation_e2e.py, test_secure_region_e2e.py):
    ``flower-superlink --insecure --database``; the project's tracked files (the app ``flwr run`` sends), approved
    by the hospitals as docs/hospital.md says; each node ``medalloc node start`` (Flower's SuperNode, its wait
    between pulls 0.5 s, and the approved-apps gate, whose warm launcher forks each message's ClientApp process:
    SecAgg+ sends every node one message per stage, and a cold ``flwr-clientapp`` imports PyTorch for each), in a
    folder and home of its own, as on a hospital's own machine (the gates of nodes sharing one would replace each
    other's installed copy). Killing a node's process group kills all of it, as a crashed machine.
    """

    harness: ProcessHarness
    root: Path
    env: dict[str, str] = field(init=False)
    link: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        from tests.e2e.test_flwr_run import _copy_project

        home = self.root / "home"
        (home / ".flwr").mkdir(parents=True)
        (home / ".flwr" / "config.toml").write_text(
            f'[superlink]\ndefault = "e2e"\n\n[superlink.e2e]\naddress = "127.0.0.1:{self.link}"\ninsecure = true\n'
        )
        self.env = self.harness.env(
            HOME=str(home),
            PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        )
        self.superlink = self.harness.start(
            "superlink",
            ["flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(self.link),
             "--disable-runtime-dependency-installation", "--database", str(self.root / "superlink.db")],
            cwd=self.root, env=self.env,
        )  # fmt: skip
        wait_port(self.link, self.superlink, timeout=120)
        self.project = _copy_project(self.root / "project")
        self.approved = self.root / "approved-apps.toml"  # the hospitals approve the app they will run
        approval = self.harness.run(
            "approve",
            [sys.executable, "-m", "medalloc.cli", "node", "approve", "--app", str(self.project), "--approved-apps",
             str(self.approved)],
            cwd=self.root, env=self.env, timeout=120,
        )  # fmt: skip
        assert approval.returncode == 0, approval.stdout + approval.stderr
        self.nodes: dict[str, Proc] = {}

    def start_node(self, name: str, own: Path, config: dict[str, object]) -> Proc:
        """``medalloc node start`` in ``own`` (made here, with its copy of the approval) with ``config`` as its
        ``--node-config`` (``approved-apps`` added)."""
        own.mkdir()
        shutil.copyfile(self.approved, own / "approved-apps.toml")
        pairs = " ".join(
            f"{k}={json.dumps(v)}" for k, v in {**config, "approved-apps": str(own / "approved-apps.toml")}.items()
        )
        self.nodes[name] = self.harness.start(
            f"node-{name}",
            [sys.executable, "-m", "medalloc.cli", "node", "start", "--insecure", "--superlink",
             f"127.0.0.1:{self.link}", "--node-config", pairs, "--port", str(free_port())],
            cwd=own, env={**self.env, "HOME": str(own), "FLWR_HOME": str(own / ".flwr")},
        )  # fmt: skip
        return self.nodes[name]

    def run(self, run_config: dict[str, object]) -> None:
        """``flwr run`` of the project once every node has connected (registered before the run)."""
        for node in self.nodes.values():
            node.wait_for_log(r"SuperNode ID: \d+", timeout=180)
        overrides = " ".join(f"{k}={json.dumps(v)}" for k, v in run_config.items())
        submitted = self.harness.run(
            "flwr-run",
            ["flwr", "run", str(self.project), "e2e", "--run-config", overrides],
            cwd=self.root, env=self.env, timeout=300,
        )  # fmt: skip
        assert submitted.returncode == 0, submitted.stdout[-2000:] + submitted.stderr[-2000:]
