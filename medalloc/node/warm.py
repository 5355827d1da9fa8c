"""A warm start for the node's ClientApp processes: the libraries imported once, a fresh process forked per message.

With ``flower-supernode --isolation process`` Flower's SuperExec starts ``flwr-clientapp`` for
every message (one per train and one per evaluate step), and each of those processes imports
PyTorch, pandas and Flower before it handles its one message and exits
(``flwr/supernode/runtime/run_clientapp.py``): on a busy two-core machine that import, not the
model, is most of a round. Flower's warm executors exist only for Kubernetes and not for
ClientApps, so the approved-apps gate (``medalloc.node.gate``) keeps its own: a small launcher
process that has imported the node's *installed libraries* and, for each approved task the gate
hands it (its token, over a private pipe instead of a command line), forks a child that runs
exactly what ``flwr-clientapp`` runs (``run_clientapp``), for that one message, and exits.

What stays as it was, on purpose:

- one process per message: a child starts from the launcher's state (imports only; the launcher
  never handles a message, opens a file of the node's or connects anywhere), so nothing of one
  message — a model, a PrivacyEngine, a ledger object, a cache — can reach the next; the ledger
  and the release store on disk remain the only state across rounds;
- the app's own code: the launcher never imports the app (``client``, ``server``,
  ``medalloc_core`` from the FAB), nor the node's installed copy of MedAlloc; each child loads the
  app from the folder Flower installed, which the gate has just checked against the approved FAB,
  exactly as ``flwr-clientapp`` does (a test holds that the launcher's modules contain none of it);
- randomness: a child gets a fresh OS-seeded NumPy global generator, as a fresh process would
  (Python's ``random`` reseeds itself at fork; PyTorch's default generator is untouched in the
  launcher, so a child starts from PyTorch's default like a fresh process). DP noise comes from
  the OS CSPRNG in any case.

The launcher is started at the first approved message and stopped after ``IDLE_S`` seconds
without one, so an idle node does not hold PyTorch in memory. If it cannot take a task (it
died, or did not answer in ``ACK_TIMEOUT_S``) the gate falls back to Flower's own launch.

Run by the gate as ``python -m medalloc.node.warm --ack-fd N``; tasks arrive as JSON lines on stdin.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import logging
import os
import select
import signal
import stat
import subprocess
import sys
import threading
import time
from typing import Any

from .supernode import shorten_pull_backoff

logger = logging.getLogger(__name__)

# The node's installed libraries every ClientApp message imports (`python -X importtime -c "import
# client.app"`: 2.5 s of CPU for these, 2.2 s more for Opacus (which pulls in torch.distributed and
# sympy) and SciPy, all before the first line of the app runs). Never app code: see APP_PACKAGES.
PRELOAD = (
    "numpy",
    "pandas",
    "pyarrow.parquet",
    "pyarrow.csv",
    "tomllib",
    "httpx",  # Flower's REST transport, which a child's connection to its SuperNode imports
    "httpcore",
    "torch",
    # What torch.optim's first optimizer imports (its constructor is wrapped to keep TorchDynamo out): 0.4 s of CPU
    # here, and over half of a train message's process in a profile of the deployed round (issue 25).
    "torch._dynamo",
    "opacus",
    "scipy.optimize",
    "scipy.sparse",
    "scipy.special",
    "scipy.stats",
    "safetensors.numpy",
    "flwr.app",
    "flwr.clientapp",
    "flwr.supernode.runtime.run_clientapp",
    "flwr.supercore.tls",
)
# Top-level packages a MedAlloc FAB ships (pyproject.toml's fab-include): the launcher must hold
# none of them, or a child would run the launcher's copy instead of the approved FAB's.
APP_PACKAGES = ("client", "server", "medalloc_core")
IDLE_S = 300.0
# Where a child keeps the byte code of the app it compiled (``sys.pycache_prefix``), under Flower's home
# (``$FLWR_HOME``, private to the node like the installed apps); see ``_cache_byte_code``.
BYTE_CODE_DIR = "medalloc-bytecode"
START_TIMEOUT_S = 300.0  # the launcher's imports, on a busy machine
FIRST_WAIT_S = 20.0  # how long a task waits for a starting launcher (Flower takes a token back after 30 s)


class LauncherStarting(RuntimeError):
    """The launcher is still starting: decline this launch; Flower offers the task again shortly."""


ACK_TIMEOUT_S = 10.0  # a fork and a line on a pipe


def app_modules_loaded() -> list[str]:
    """Modules of the app's own packages already imported in this process (must be none in the launcher)."""
    return sorted(m for m in sys.modules if m.split(".")[0] in APP_PACKAGES)


# ------------------------------------------------------------------ the launcher process
def serve(ack_fd: int) -> int:
    """Import PRELOAD, then fork one child per task line on stdin; write each child's pid to ``ack_fd``."""
    # `python -m` put the working folder first on sys.path; flwr-clientapp (a console script) has no
    # such entry, and a child must find modules exactly where flwr-clientapp would.
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:  # an optional library this node does not have: its children import what they need
            logger.debug("warm launcher: %s is not installed", name)
    # A child's pull of its message from the SuperNode waits 0.1-0.5 s between tries, not Flower's 1-10 s
    # (the SuperNode may still be receiving that message's arrays when the child asks).
    shorten_pull_backoff()
    loaded = app_modules_loaded()
    if loaded:  # never fork children that would run something other than the approved FAB
        logger.error("warm launcher: app modules imported in the launcher (%s); not starting", ", ".join(loaded))
        return 1
    # Opacus's import-time logging.basicConfig gave the root logger a handler: Flower's lines would be
    # written twice (its own console handler, then the root's), as client.app explains.
    logging.getLogger("flwr").propagate = False
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel; none turns zombie
    # The libraries' objects (millions) are never freed: out of the collector's sight, a child's first full
    # collection no longer touches, and so copies, every page it shares with the launcher (profiled: a third of
    # an evaluate message's process went to one such collection).
    gc.collect()
    gc.freeze()
    ack = os.fdopen(ack_fd, "w", buffering=1)
    ack.write("ready\n")
    for line in sys.stdin:
        spec = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(spec, ack_fd)  # never returns
        ack.write(f"{pid}\n")
    return 0


def _child(spec: dict[str, Any], ack_fd: int) -> None:
    """Run one ClientApp message as ``flwr-clientapp`` would (``flwr/supernode/cli/flwr_clientapp.py``), then exit."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.close(ack_fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        if "numpy" in sys.modules:  # a fresh process's NumPy global generator is OS-seeded; a fork's is a copy
            sys.modules["numpy"].random.seed()
        # What Flower's own process is called: client.app.show_node_log_in_flower_log reads it.
        sys.argv = ["flwr-clientapp"]
        _cache_byte_code()
        from flwr.common.logger import log
        from flwr.supercore.tls import validate_and_resolve_root_certificates
        from flwr.supernode.runtime.run_clientapp import run_clientapp

        log(logging.INFO, "Start `flwr-clientapp` process (forked from the node's warm launcher)")
        run_clientapp(
            runtime_api_address=spec["runtime_api_address"],
            token=spec["token"],
            insecure=bool(spec["insecure"]),
            certificates=validate_and_resolve_root_certificates(spec["root_certificates_path"], spec["insecure"]),
            parent_pid=spec["parent_pid"],
            runtime_dependency_install=bool(spec["runtime_dependency_install"]),
        )
        code = 0
    except SystemExit as exc:  # run_clientapp ends with flwr_exit -> sys.exit(code)
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - the child must end here, never return into the launcher's loop
        logger.exception("warm launcher: the ClientApp process failed")
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _cache_byte_code() -> None:
    """Let this child keep the app's compiled modules in the node's own byte-code folder, and reuse them.

    Without it every message's process compiled the app's sources again (a third of an evaluate
    message's process in the deployed round's profile) wherever Python writes no byte code, or
    wrote ``__pycache__`` into the installed app, where a planted ``.pyc`` would run instead of the
    source the gate checked. With ``sys.pycache_prefix`` Python reads and writes byte code only under
    ``$FLWR_HOME/medalloc-bytecode`` (mirroring the source paths, checked against each source's time
    and size as usual) and never reads a cache beside the sources. A folder that is not this user's
    own plain directory is not used: the child then compiles as before, writing nothing.
    """
    home = os.environ.get("FLWR_HOME") or os.path.join(os.path.expanduser("~"), ".flwr")
    folder = os.path.join(home, BYTE_CODE_DIR)
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        info = os.lstat(folder)
        private = stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o022
        if not private:
            logger.warning("warm launcher: %s is not this user's own private folder: no byte-code cache", folder)
    except OSError as exc:
        logger.debug("warm launcher: no byte-code cache (%s)", exc)
        private = False
    # Without a private folder: write no byte code, and read none beside the sources (a prefix that holds none).
    sys.pycache_prefix = folder if private else os.path.join(os.sep, "nonexistent-medalloc-bytecode")
    sys.dont_write_bytecode = not private


# ------------------------------------------------------------------ the gate's side
class WarmLauncher:
    """The gate's handle on its launcher process: started on first use, stopped after ``idle_s`` without one."""

    def __init__(
        self,
        *,
        idle_s: float = IDLE_S,
        ack_timeout_s: float = ACK_TIMEOUT_S,
        start_timeout_s: float = START_TIMEOUT_S,
        first_wait_s: float = FIRST_WAIT_S,
    ) -> None:
        self.first_wait_s = first_wait_s
        self.idle_s = idle_s
        self.ack_timeout_s = ack_timeout_s
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._ack_fd = -1
        self._last = time.monotonic()
        self._lock = threading.Lock()
        self._starting = False
        self._retry_at = 0.0
        self._ready = threading.Event()
        threading.Thread(target=self._stop_when_idle, name="warm-launcher-idle", daemon=True).start()

    def launch(self, spec: Any) -> int | None:
        """Hand one ClientApp task (Flower's ``ExecutionSpec``) to the launcher; the child's pid, or None if it
        cannot take it now (the caller then launches the task Flower's own way).

        A launcher that is not running is started, and waited for up to ``first_wait_s``: the
        SuperNode takes a task back when its process has not called in within 30 s. If it is not
        ready by then this raises ``LauncherStarting``: the gate declines the launch and Flower
        offers the task again once that token has expired, by when the launcher is usually ready.
        (Launching the message Flower's way meanwhile would import the same libraries a second
        time, on the same cores, and on a busy machine miss those 30 s as well.)
        """
        line = json.dumps(
            {
                "runtime_api_address": spec.runtime_api_address,
                "token": spec.token,
                "insecure": bool(spec.insecure),
                "root_certificates_path": spec.root_certificates_path,
                "parent_pid": spec.parent_pid,
                "runtime_dependency_install": bool(spec.runtime_dependency_install),
            }
        )
        with self._lock:
            self._last = time.monotonic()
            if self._proc is None or self._proc.poll() is not None:
                self._close()
                if time.monotonic() < self._retry_at:  # it failed to start lately: Flower's way
                    return None
                if not self._starting:
                    self._starting = True
                    self._ready.clear()
                    threading.Thread(target=self._start, name="warm-launcher-start", daemon=True).start()
        if not self._ready.wait(self.first_wait_s):
            raise LauncherStarting("the node's warm launcher is still importing its libraries")
        with self._lock:
            if self._proc is None:  # it failed to start
                return None
            proc = self._proc
            try:
                assert proc.stdin is not None
                proc.stdin.write(line.encode() + b"\n")
                proc.stdin.flush()
                answer = self._read_ack()
                return int(answer)
            except (OSError, ValueError, TimeoutError) as exc:
                logger.warning("warm launcher unavailable (%s): starting this message's process the usual way", exc)
                self._close()
                return None

    def close(self) -> None:
        with self._lock:
            self._close()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self) -> bool:
        """Start the launcher and wait until it has imported PRELOAD; True if it is ready."""
        with self._lock:
            self._starting = True
        self._start()
        return self.pid is not None

    def _start(self) -> None:
        read_fd, write_fd = os.pipe()
        try:
            proc = subprocess.Popen(  # noqa: S603 - our own module, no shell
                [sys.executable, "-m", __name__, "--ack-fd", str(write_fd)],
                stdin=subprocess.PIPE,
                pass_fds=(write_fd,),
            )
        except OSError as exc:
            logger.warning("warm ClientApp launcher not started (%s): messages start their own processes", exc)
            os.close(read_fd)
            with self._lock:
                self._starting = False
                self._retry_at = time.monotonic() + self.idle_s
            self._ready.set()
            return
        finally:
            os.close(write_fd)
        try:
            ready = _read_line(read_fd, self.start_timeout_s) == "ready"
        except (OSError, TimeoutError):
            ready = False
        with self._lock:
            self._starting = False
            if not ready:
                self._retry_at = time.monotonic() + self.idle_s
                logger.warning("warm ClientApp launcher did not start: messages start their own processes (next "
                               "try in %.0f s)", self.idle_s)  # fmt: skip
                os.close(read_fd)
                if proc.stdin is not None:
                    proc.stdin.close()
                proc.kill()
                proc.wait()
                self._ready.set()
                return
            self._proc, self._ack_fd, self._last = proc, read_fd, time.monotonic()
        self._ready.set()
        logger.info("warm ClientApp launcher ready (pid %s): PyTorch, pandas and Flower imported once", proc.pid)

    def _read_ack(self) -> str:
        return _read_line(self._ack_fd, self.ack_timeout_s)

    def _close(self) -> None:
        proc, self._proc = self._proc, None
        if self._ack_fd >= 0:
            os.close(self._ack_fd)
            self._ack_fd = -1
        if proc is None:
            return
        if proc.stdin is not None:
            try:
                proc.stdin.close()  # end of input: the launcher exits (its running children finish on their own)
            except OSError:
                pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def _stop_when_idle(self) -> None:
        while True:
            time.sleep(min(5.0, self.idle_s))
            with self._lock:
                if self._proc is not None and time.monotonic() - self._last > self.idle_s:
                    logger.info("warm ClientApp launcher idle for %.0f s: stopped (started again on the next message)",
                                self.idle_s)  # fmt: skip
                    self._close()


def _read_line(fd: int, timeout_s: float) -> str:
    """One line from the launcher's answer pipe within ``timeout_s`` (byte by byte: no buffer to lose)."""
    deadline = time.monotonic() + timeout_s
    out = b""
    while not out.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError(f"no answer from the launcher in {timeout_s:.0f} s")
        byte = os.read(fd, 1)
        if not byte:
            raise OSError("the launcher exited")
        out += byte
    return out.decode().strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--ack-fd", type=int, required=True)
    args = parser.parse_args(argv)
    return serve(args.ack_fd)


if __name__ == "__main__":
    sys.exit(main())
