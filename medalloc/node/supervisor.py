"""``medalloc node start``: Flower's SuperNode and the approved-apps gate, started and stopped as one.

``flower-supernode --isolation process`` runs no app by itself; it waits for a SuperExec to
take its tasks. This supervisor starts the SuperNode with that option and ``medalloc node
exec`` (the gate) on its Runtime API, in one session, with their output on its own. It exits
with the SuperNode's exit status when the SuperNode stops (e.g. ``Exit Code: 305`` when the
coordinator does not know the node's key), stops the gate with it, and on SIGTERM/SIGINT stops
both. If the gate dies the SuperNode is stopped too: a node never keeps taking tasks that no
one checks.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

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


def supervise(supernode: list[str], gate: list[str]) -> int:
    """Run both processes until the SuperNode exits (its status is returned) or a signal stops us."""
    import os

    node = subprocess.Popen(supernode, stdin=subprocess.DEVNULL)
    # The gate asks the SuperNode's Runtime API for tasks; it retries until the API is up.
    checker = subprocess.Popen(gate, stdin=subprocess.DEVNULL)
    stopping = {"signal": 0}

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping["signal"] = signum

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    logger.info("SuperNode pid %s, approved-apps gate pid %s (supervisor pid %s)", node.pid, checker.pid, os.getpid())
    status = 0
    try:
        while True:
            if stopping["signal"]:
                status = 128 + stopping["signal"]
                break
            code = node.poll()
            if code is not None:
                status = code
                break
            if checker.poll() is not None:
                logger.error(
                    "the approved-apps gate exited (status %s): stopping the SuperNode, which must not take "
                    "tasks no one checks; see the lines above",
                    checker.returncode,
                )
                status = checker.returncode or 1
                break
            time.sleep(POLL_S)
    finally:
        _stop(node)
        _stop(checker)
    return status


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
