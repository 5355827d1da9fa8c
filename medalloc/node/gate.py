"""The node runs only apps its data owner approved: Flower's SuperExec with an allow-list of FAB hashes.

Flower 1.42 can make a SuperNode refuse unsigned apps (``--trusted-entities``), but the only
signatures it knows come from Flower Hub: ``flwr run .`` submits a FAB with no verification
record (``flwr/cli/run/run.py`` builds ``Fab(hash, bytes, {})``), and the SuperNode refuses
any FAB without a ``valid_license`` entry before it looks at a key
(``flwr/supernode/start_client_internal.py``). A federation that runs its own app therefore
cannot use it; a hash allow-list enforced on the node can.

Where it is enforced: with ``flower-supernode --isolation process`` the SuperNode does not
start app processes itself; a separate SuperExec asks it for tasks and launches
``flwr-clientapp`` for each. The data owner runs this module's SuperExec instead of Flower's:
the same loop (``flwr.supercore.superexec.run_superexec``), with a launch step that first
compares the task's FAB hash with the approved list. Approved: Flower's own launch, unchanged.
Not approved: the app is never installed or imported; a small process of ours answers the
round with an ``app-not-approved`` error (so the coordinator learns at once, rather than
waiting for its round timeout) and the refusal is logged with the hash and the file to add it
to. The task's FAB hash is the content hash of the bytes ``flwr-clientapp`` would receive: the
SuperNode stores FABs by their computed SHA-256 and refuses a mismatch
(``flwr/supercore/corestate/in_memory_corestate.py``, ``store_fab``).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from .approved import ApprovalError, approved_hashes
from .installed import check_installed
from .warm import LauncherStarting, WarmLauncher

logger = logging.getLogger(__name__)

REFUSE_MODULE = "medalloc.node.refuse"
# flwr/supercore/superexec/run_superexec.py reads it once at start (default 1 s, at least 0.01 s)
TASK_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
TASK_POLL_S = 0.2  # a request to the node's own SuperNode, on loopback: an idle node pays little for it


def gated_plugin(approved_apps: Path, warm: WarmLauncher | None = None) -> Any:
    """A Flower SuperExec plugin class that launches only tasks whose FAB hash is in ``approved_apps``.

    The file is read again for every task, so an approval takes effect without a restart and a
    file that becomes unreadable refuses everything (never allows everything). With ``warm`` an
    approved ClientApp task runs in a process forked from the node's warm launcher
    (``medalloc.node.warm``) instead of a fresh ``flwr-clientapp``; every check above comes first.
    """
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor import LaunchResult
    from flwr.supercore.superexec.plugin import AutoExecPlugin

    class ApprovedAppsPlugin(AutoExecPlugin):
        """Flower's task-driven plugin, with the data owner's allow-list in front of every launch."""

        def launch_task(self, token: str, task: Any) -> Any:
            fab_hash = str(getattr(task, "fab_hash", "") or "")
            try:
                approved = approved_hashes(approved_apps)
                problem = "" if fab_hash in approved else "not in the approved list"
            except ApprovalError as exc:
                problem = f"the approved list cannot be read ({exc})"
            if not problem:  # the folder Flower would reuse must be the approved FAB, file by file
                try:
                    problem = check_installed(fab_hash, approved_apps) or ""
                except OSError as exc:
                    problem = f"its installed copy cannot be checked ({exc})"
            if not problem:
                if warm is not None and TaskType(task.type) is TaskType.CLIENT_APP:
                    spec = self._build_execution_spec(
                        token=token, task_type=TaskType.CLIENT_APP, task_id=task.task_id, fab_hash=fab_hash
                    )
                    try:
                        pid = warm.launch(spec)
                    except LauncherStarting as exc:
                        logger.info("run %s: %s; the task is taken again shortly", task.run_id, exc)
                        return LaunchResult.capacity_rejected(str(exc))
                    if pid is not None:
                        logger.info("run %s: app %s is approved; %s in process %s (warm)", task.run_id,
                                    fab_hash[:12], task.type, pid)  # fmt: skip
                        return LaunchResult.accepted()
                logger.info("run %s: app %s is approved; launching %s", task.run_id, fab_hash[:12], task.type)
                return super().launch_task(token, task)
            if problem.startswith(("its installed copy", "the manifest")):  # approved, but not as installed
                logger.error(
                    "run %s: refusing app sha256 %s: %s. Nothing of it was run.", task.run_id, fab_hash, problem
                )
            else:
                logger.error(
                    "run %s: refusing app sha256 %s: %s (node-config 'approved-apps' = %s). Nothing of it was "
                    "installed or run. If your data owner approves it after review: "
                    "medalloc node approve --sha256 %s --approved-apps %s",
                    task.run_id,
                    fab_hash or "(none)",
                    problem,
                    approved_apps,
                    fab_hash or "HASH",
                    approved_apps,
                )
            if TaskType(task.type) is not TaskType.CLIENT_APP:
                return LaunchResult.failed(f"app {fab_hash[:12]} not approved by this node's data owner")
            _answer_refused(self, token, fab_hash)
            return LaunchResult.accepted()

    return ApprovedAppsPlugin


def _answer_refused(plugin: Any, token: str, fab_hash: str) -> None:
    """Answer the task with an ``app-not-approved`` error, from a process that loads no app code."""
    argv = [sys.executable, "-m", REFUSE_MODULE, "--runtime-api-address", plugin.runtime_api_address]
    argv += ["--token", token, "--expected-sha256", fab_hash]
    if plugin.insecure:
        argv.append("--insecure")
    elif plugin.root_certificates_path:
        argv += ["--root-certificates", plugin.root_certificates_path]
    subprocess.Popen(argv, stdin=subprocess.DEVNULL)  # noqa: S603 - our own module, no shell


def run_gated_superexec(
    *,
    approved_apps: Path,
    runtime_api_address: str,
    insecure: bool,
    root_certificates: str | None = None,
    parent_pid: int | None = None,
    health_server_address: str | None = None,
    warm: bool = True,
) -> None:
    """Run Flower's SuperExec loop for this node's SuperNode with the approved-apps gate (never returns).

    ``warm``: approved ClientApp messages run in processes forked from a warm launcher
    (``medalloc.node.warm``); False: a fresh ``flwr-clientapp`` each, as Flower does.
    """
    from flwr.supercore.superexec import run_superexec as superexec

    # Flower builds its plugin by name inside run_superexec and offers no option for another:
    # the gate takes that name's place for this process only. Fail loudly if Flower moved it.
    if not hasattr(superexec, "AutoExecPlugin"):
        raise RuntimeError("flwr.supercore.superexec.run_superexec has no AutoExecPlugin: unsupported Flower version")
    setattr(superexec, "AutoExecPlugin", gated_plugin(approved_apps, WarmLauncher() if warm else None))  # noqa: B010
    # Flower polls its SuperNode for tasks every second by default; a message waits for that poll.
    os.environ.setdefault(TASK_POLL_ENV, str(TASK_POLL_S))
    superexec.run_superexec(
        runtime_api_address=runtime_api_address,
        insecure=insecure,
        root_certificates_path=root_certificates,
        parent_pid=parent_pid,
        health_server_address=health_server_address,
        runtime_dependency_install=False,  # an approved app may not install anything either
    )
