"""A throwaway PostgreSQL server for tests: its own cluster (initdb), a free port on 127.0.0.1, stopped by PID.

Debian's ``postgresql`` package (``make test`` installs it) provides the binaries under
``/usr/lib/postgresql/<version>/bin``. PostgreSQL refuses to run as root, so as root the
cluster belongs to the package's ``postgres`` account: its folder is a fresh directory that
account owns (a pytest ``tmp_path`` sits under a root-only folder it cannot enter), removed
afterwards. A test skips, saying why, only when the binaries are missing or no non-root
account exists to run them.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 60


@dataclass(frozen=True)
class PostgresServer:
    """A running server: ``url(db)`` gives a SQLAlchemy URL to database ``db`` as the superuser."""

    port: int
    user: str
    pid: int
    data_dir: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"


def binaries() -> Path | None:
    """The folder holding initdb and postgres (newest installed version), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _demote(account: pwd.struct_passwd | None) -> Callable[[], None] | None:
    if account is None:
        return None

    def run_as() -> None:
        os.setgid(account.pw_gid)
        os.setuid(account.pw_uid)

    return run_as


@contextmanager
def postgres_server(base: Path) -> Iterator[PostgresServer]:
    """Start a cluster under ``base`` (or, as root, a folder the ``postgres`` account owns); stop it after.

    Raises ``RuntimeError`` with the server's log when it does not come up; callers turn a
    missing binary or account into a skip with :func:`unavailable_reason`.
    """
    bin_dir = binaries()
    assert bin_dir is not None, unavailable_reason()
    account = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="medalloc-pg-")) if account else base
    data, sockets, log = root / "data", root / "sockets", root / "server.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        sockets.mkdir(parents=True, exist_ok=True)
        if account:
            for path in (root, sockets):
                os.chown(path, account.pw_uid, account.pw_gid)
        user = "medalloc"
        init = subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8", "--locale=C"],
            capture_output=True,
            text=True,
            preexec_fn=_demote(account),
            timeout=120,
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed ({init.returncode}):\n{init.stdout}\n{init.stderr}")
        port = _free_port()
        with log.open("wb") as handle:
            proc = subprocess.Popen(
                [
                    str(bin_dir / "postgres"),
                    "-D",
                    str(data),
                    "-p",
                    str(port),
                    "-h",
                    "127.0.0.1",  # loopback only
                    "-k",
                    str(sockets),
                    "-c",
                    "fsync=off",  # a throwaway cluster: durability costs time and buys nothing
                    "-c",
                    "full_page_writes=off",
                ],
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_demote(account),
                start_new_session=True,
            )
        _wait_ready(port, proc, log)
        yield PostgresServer(port=port, user=user, pid=proc.pid, data_dir=data)
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # PostgreSQL's "fast" shutdown
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if account:
            shutil.rmtree(root, ignore_errors=True)


def _wait_ready(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    import psycopg

    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            psycopg.connect(host="127.0.0.1", port=port, user="medalloc", dbname="postgres", connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            time.sleep(0.2)
    text = log.read_text(errors="replace") if log.exists() else ""
    raise RuntimeError(f"PostgreSQL did not accept connections on 127.0.0.1:{port}:\n{text[-3000:]}")


def unavailable_reason() -> str | None:
    """Why no server can be started here, or None when one can."""
    if binaries() is None:
        return "PostgreSQL server binaries not found (make test installs Debian's postgresql package as root)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' account to run the server as"
    return None


def create_database(server: PostgresServer, name: str) -> str:
    """Create database ``name`` and return its URL."""
    import psycopg

    with psycopg.connect(server.url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server.url(name)
