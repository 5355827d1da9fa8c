"""``medalloc node start``: Flower's SuperNode and the approved-apps gate, started and stopped as one, kept up.

``flower-supernode --isolation process`` runs no app by itself; it waits for a SuperExec to
take its tasks. This supervisor starts the SuperNode with that option and ``medalloc node
exec`` (the gate) on its Runtime API, in one session, with their output on its own. On
SIGTERM/SIGINT it stops both. If the gate dies the SuperNode is stopped too: a node never keeps
taking tasks that no one checks.

A node runs for months, so the supervisor also brings it back. When the SuperNode exits with
``Exit Code: 305`` (it could not connect: the SuperLink is down or restarting, or it still
counts this node as online — Flower 1.42 marks a node offline only after 2 missed heartbeats of
30 s, so a node restarted 15 s after a kill is refused — or it does not know this node's key) or
is killed by a signal, both processes are started again after a backoff (5 s, doubling, at most
``max_backoff_s``), and the supervisor logs what it waits for. Configuration errors (other exit
codes) end it with the SuperNode's status: retrying would not fix them. ``retries`` bounds the
restarts (0: no limit); a SuperNode that stayed up ``STABLE_S`` resets the backoff.

A SuperLink that answers but refuses to activate the node ("Failed to activate SuperNode") either
still counts it online (over within two heartbeats, 60 s) or does not know its public key, which
waiting never fixes. Such refusals are retried at most every ``REFUSED_BACKOFF_S`` for
``ACTIVATION_PATIENCE_S`` after the first; then the supervisor stops and says to register the key.
"""

from __future__ import annotations

import logging
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType
from typing import IO

logger = logging.getLogger(__name__)

STOP_GRACE_S = 15.0
POLL_S = 0.5
POLL_INTERVAL_S = 0.5  # the SuperNode's wait between pulls for messages (Flower's: 3 s); medalloc.node.supernode


def supernode_argv(
    flower_args: Sequence[str], *, node_config: str, port: int, poll_interval: float = POLL_INTERVAL_S
) -> list[str]:
    """The flower-supernode command line: the operator's options plus process isolation, the port and node config.

    Flower's own SuperNode, started through ``medalloc.node.supernode``, which only caps its wait
    between pulls for messages at ``poll_interval`` seconds (Flower waits 3 s).
    """
    args = list(flower_args)
    for option in ("--isolation", "--port", "--node-config"):
        if option in args or any(a.startswith(option + "=") for a in args):
            raise ValueError(f"{option} is set by medalloc node start itself; leave it out of the SuperNode options")
    return [
        sys.executable,
        "-m",
        "medalloc.node.supernode",
        "--poll-interval",
        str(poll_interval),
        *args,
        "--isolation",
        "process",
        "--port",
        str(port),
        "--node-config",
        node_config,
    ]


def gate_argv(*, node_config: str, port: int, parent_pid: int, warm: bool = True) -> list[str]:
    return [
        sys.executable,
        "-m",
        "medalloc.cli",
        "node",
        "exec",
        "--node-config",
        node_config,
        "--runtime-api-address",
        f"127.0.0.1:{port}",
        "--parent-pid",
        str(parent_pid),
        "--warm" if warm else "--no-warm",
    ]


# Flower's SuperNode exit codes (flwr.supercore.exit.ExitCode): 305 = could not connect or was refused.
CONNECTION_ERROR = 305
FIRST_BACKOFF_S = 5.0
STABLE_S = 120.0  # a SuperNode up this long was connected: the next failure starts the backoff again
# Flower forgets a stopped node after 2 missed heartbeats of 30 s: a refusal that lasts longer is an unknown key.
ACTIVATION_PATIENCE_S = 90.0
REFUSED_BACKOFF_S = 15.0
_REFUSED = "Failed to activate SuperNode"


@dataclass(frozen=True)
class RetryPolicy:
    """When ``supervise`` starts the SuperNode again: ``retries`` restarts at most (0: no limit), backoff capped."""

    retries: int = 0
    max_backoff_s: float = 60.0
    first_backoff_s: float = FIRST_BACKOFF_S

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0 (0: no limit), got {self.retries}")
        if not 0 < self.first_backoff_s <= self.max_backoff_s:
            raise ValueError(
                f"the backoff must be > 0 and at most max-backoff ({self.max_backoff_s:g} s), got "
                f"{self.first_backoff_s:g} s"
            )


def retryable(status: int) -> bool:
    """Whether a SuperNode that ended with ``status`` may succeed when started again (see the module doc).

    ``status`` is Flower's exit code (the ``Exit Code: N`` line the SuperNode prints; its process
    status is 1 for every error) or, killed by a signal, the negative signal number.
    """
    return status == CONNECTION_ERROR or status < 0


_EXIT_CODE = re.compile(r"Exit Code: (\d+)")


class _Echo:
    """Copy a child's output to ours line by line, remembering the last ``Exit Code: N`` Flower printed."""

    def __init__(self, stream: IO[str]) -> None:
        self.code: int | None = None
        self.refused = False  # the SuperLink answered and refused to activate this node
        self._thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._thread.start()

    def _run(self, stream: IO[str]) -> None:
        for line in stream:
            sys.stdout.write(line)
            sys.stdout.flush()
            if match := _EXIT_CODE.search(line):
                self.code = int(match[1])
            if _REFUSED in line:
                self.refused = True

    def join(self) -> None:
        self._thread.join(timeout=5)


def _waiting_for(status: int, superlink: str) -> str:
    if status == CONNECTION_ERROR:
        return (
            f"the SuperLink {superlink} refused this node or could not be reached (Exit Code: 305): it is down or "
            "restarting, still counts this node online (a stopped node is marked offline after 2 missed "
            "heartbeats of 30 s), or does not know this node's public key"
        )
    return f"the SuperNode was killed by signal {-status}"


def supervise(
    supernode: list[str], gate: list[str], *, retry: RetryPolicy | None = None, superlink: str = "the SuperLink"
) -> int:
    """Run both processes until a signal stops us, the gate dies, or the SuperNode ends for good; returns the status.

    With ``retry`` (what ``medalloc node start`` passes) a SuperNode that could not connect or was
    killed is started again, with the gate, after a backoff; without it the first exit ends both.
    """
    stopping = {"signal": 0}

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping["signal"] = signum

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    restarts, backoff = 0, (retry.first_backoff_s if retry else 0.0)
    refused_since: float | None = None
    while True:
        started = time.monotonic()
        status, node_ended, refused = _run_once(supernode, gate, stopping)
        if not node_ended or retry is None or not retryable(status):
            return _exit_status(status)
        wait = backoff
        if refused:
            refused_since = refused_since if refused_since is not None else time.monotonic()
            wait = min(backoff, REFUSED_BACKOFF_S)
            if time.monotonic() + wait - refused_since > ACTIVATION_PATIENCE_S:
                logger.error(
                    "the SuperLink %s has refused to activate this node for %.0f s: it does not know this node's "
                    "public key (a stopped node is forgotten after 2 missed heartbeats of 30 s). Register the key "
                    "with the coordinator (docs/hospital.md, '3. Make the node's key pair'), then start the node again",
                    superlink,
                    time.monotonic() - refused_since,
                )
                return _exit_status(status)
        else:
            refused_since = None
        if retry.retries and restarts >= retry.retries:
            logger.error(
                "the SuperNode exited (status %s) %d time(s); giving up (--retries %d)",
                status,
                restarts + 1,
                retry.retries,
            )
            return _exit_status(status)
        if time.monotonic() - started >= STABLE_S:
            backoff = retry.first_backoff_s
        restarts += 1
        logger.warning(
            "waiting %.0f s before starting the SuperNode again (restart %d%s): %s",
            wait,
            restarts,
            f" of {retry.retries}" if retry.retries else "",
            _waiting_for(status, superlink),
        )
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if stopping["signal"]:
                return 128 + stopping["signal"]
            time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
        backoff = min(backoff * 2, retry.max_backoff_s)


def _exit_status(status: int) -> int:
    """A process exit status for ``status``: a signal as 128 + N, Flower's codes (>= 256) as 1, as the SuperNode."""
    if status < 0:
        return 128 - status
    return status if status <= 255 else 1


def _run_once(supernode: list[str], gate: list[str], stopping: dict[str, int]) -> tuple[int, bool, bool]:
    """One life of the SuperNode and its gate: (status, whether it ended because the SuperNode exited, whether
    the SuperLink refused to activate it)."""
    import os

    node = subprocess.Popen(
        supernode, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    assert node.stdout is not None
    echo = _Echo(node.stdout)
    # The gate asks the SuperNode's Runtime API for tasks; it retries until the API is up.
    checker = subprocess.Popen(gate, stdin=subprocess.DEVNULL)
    logger.info("SuperNode pid %s, approved-apps gate pid %s (supervisor pid %s)", node.pid, checker.pid, os.getpid())
    try:
        while True:
            if stopping["signal"]:
                return 128 + stopping["signal"], False, False
            code = node.poll()
            if code is not None:
                echo.join()
                flower = echo.code if code > 0 and echo.code is not None else code
                logger.warning(
                    "the SuperNode (pid %s) exited with status %s%s",
                    node.pid,
                    code,
                    f" (Flower exit code {flower})" if flower != code else "",
                )
                return flower, True, echo.refused
            if checker.poll() is not None:
                logger.error(
                    "the approved-apps gate exited (status %s): stopping the SuperNode, which must not take "
                    "tasks no one checks; see the lines above",
                    checker.returncode,
                )
                return checker.returncode or 1, False, False
            time.sleep(POLL_S)
    finally:
        _stop(node)
        _stop(checker)


def _stop(proc: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
