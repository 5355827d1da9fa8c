"""Process harness for end-to-end tests on real Flower processes.

Every process a test starts gets its own session (process group) and a log file under
``tmp_path``, and carries an environment tag that its children inherit (the SuperLink's
SuperExec runs in a session of its own and outlives a SIGKILLed parent, so the process
tree alone is not enough to find everything). At teardown, whatever happened, every
tagged process is stopped by PID — SIGTERM, then SIGKILL after a grace period — and the
test fails if any Flower process carrying the tag is still running.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

_TAG_VAR = "MEDALLOC_E2E_TAG"
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
        self, name: str, argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 60
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
