"""Paths that are not regular files (issue 22): every command refuses them with exit 2, never blocks.

A FIFO blocks ``open()`` until a writer comes, ``/dev/zero`` and ``/dev/urandom`` never end and
have ``st_size`` 0, a socket cannot be opened: ``medalloc_core.paths`` checks what a path is
before it is read and counts size limits on the bytes read. The generators of every kind are in
``fuzz/gen_nonfiles.py``; here each command meets each kind at least once.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fuzz.commands import GENERATORS
from fuzz.registry import SPECIAL_KINDS, Case, run_case
from medalloc_core.contract import DataContractError
from medalloc_core.io import read_table
from medalloc_core.model_io import ModelFileError, read_sidecar
from medalloc_core.paths import FileTooLarge, NotRegularFile, open_regular, read_regular_bytes
from medalloc_core.privacy.ledger import LedgerCorrupt, PrivacyLedger
from medalloc_core.privacy.release import ReleaseStore, ReleaseStoreError

NON_FILE_GENERATORS = sorted(k for k in GENERATORS if k.endswith("/not-a-file"))


def _make(path: Path, kind: str, keep: list[socket.socket]) -> None:
    from fuzz.registry import make_special

    make_special(path, kind, keep)


@pytest.fixture
def sockets() -> list[socket.socket]:
    keep: list[socket.socket] = []
    yield keep
    for s in keep:
        s.close()


def test_every_command_that_reads_files_has_a_non_file_generator() -> None:
    commands = {k.split("/")[0] for k in NON_FILE_GENERATORS}
    assert {"validate", "privacy", "forecast", "allocate", "share", "explain", "node check", "node approve"} <= commands


@pytest.mark.parametrize("key", NON_FILE_GENERATORS)
@pytest.mark.parametrize("kind", SPECIAL_KINDS)
def test_each_command_refuses_each_kind_with_exit_2(key: str, kind: str) -> None:
    """The generator's case with its special path forced to ``kind``: exit 2, the path named, no hang."""
    make = GENERATORS[key][1]
    for i in range(200):  # the first case whose path is of this kind
        case = make(random.Random(f"kind-{key}-{kind}-{i}"))
        if kind in case.specials.values():
            break
    else:
        pytest.skip(f"{key} drew no {kind} in 200 cases")
    outcome = run_case(case, timeout=30)
    assert outcome.passed, f"{case.detail}: {outcome.failures} | {outcome.message}"
    assert "regular file" in outcome.message or "Not a directory" not in outcome.message


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "dev-urandom", "socket", "folder"])
def test_open_regular_refuses_without_blocking(tmp_path: Path, kind: str, sockets: list[socket.socket]) -> None:
    path = tmp_path / "x.csv"
    _make(path, kind, sockets)
    done: list[BaseException] = []

    def attempt() -> None:
        try:
            open_regular(path)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            done.append(exc)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), f"open_regular blocked on {kind}"
    assert len(done) == 1 and isinstance(done[0], NotRegularFile), done
    assert "not a regular file" in done[0].strerror and str(path) == done[0].filename


def test_size_limits_count_the_bytes_read_not_st_size(tmp_path: Path) -> None:
    zero = tmp_path / "zero"
    zero.symlink_to("/dev/zero")
    assert os.stat(zero).st_size == 0  # what a size check on stat would have passed
    with pytest.raises(NotRegularFile):
        read_regular_bytes(zero, limit=10)
    big = tmp_path / "big"
    big.write_bytes(b"x" * 11)
    with pytest.raises(FileTooLarge, match="10 bytes"):
        read_regular_bytes(big, limit=10)
    assert read_regular_bytes(big, limit=11) == b"x" * 11


@pytest.mark.parametrize("kind", ["fifo", "dev-urandom", "socket"])
def test_library_readers_raise_their_own_clear_error(tmp_path: Path, kind: str, sockets: list[socket.socket]) -> None:
    """The contract reader, the ledger, the model sidecar and the release store each name the kind."""
    table = tmp_path / "H000.csv"
    _make(table, kind, sockets)
    with pytest.raises(DataContractError, match="not a regular file"):
        read_table(table)
    ledger = tmp_path / "ledger.json"
    _make(ledger, kind, sockets)
    with pytest.raises(LedgerCorrupt, match="not a regular file"):
        PrivacyLedger.load(ledger)
    sidecar = tmp_path / "m.json"
    _make(sidecar, kind, sockets)
    with pytest.raises(ModelFileError, match="not a regular file"):
        read_sidecar(sidecar)
    release = tmp_path / "r.csv"
    _make(release, kind, sockets)
    (tmp_path / "r.csv.json").write_text("{}")
    with pytest.raises(ReleaseStoreError):
        ReleaseStore.open(release)


def test_an_ndjson_link_to_urandom_ends(tmp_path: Path) -> None:
    """The issue's case: ``validate`` on a .ndjson link to /dev/urandom used to run for ever."""
    link = tmp_path / "enc.ndjson"
    link.symlink_to("/dev/urandom")
    outcome = run_case(Case("validate", (str(link),), expect=("enc.ndjson", "character device")), timeout=30)
    assert outcome.passed, outcome.failures


def _run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """A real process, bounded: a reader that blocks on a FIFO shows as a timeout, not a hung test."""
    return subprocess.run(
        argv, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=300, check=False
    )


def test_a_fifo_as_the_machines_data_source_record_is_refused_not_waited_on(tmp_path: Path) -> None:
    """``$MEDALLOC_STATE_DIR/data-sources.json`` is read by every node and ``share``: a FIFO there blocked both."""
    from fuzz import fixtures

    for name, data in {"forecast.csv": fixtures.forecast_csv(), "H000.csv": fixtures.hospital_csv()}.items():
        (tmp_path / name).write_bytes(data)
    for name, data in fixtures.ledger_files().items():
        (tmp_path / name).write_bytes(data)
    state = tmp_path / "state"
    state.mkdir()
    os.mkfifo(state / "data-sources.json")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    argv = [sys.executable, "-m", "medalloc", "share", "--forecast", "forecast.csv", "--data", "H000.csv"]
    result = _run([*argv, "--ledger", "ledger.json", "--epsilon", "1"], tmp_path, {"MEDALLOC_STATE_DIR": str(state)})
    assert result.returncode == 2, result.stdout + result.stderr
    assert "data-sources.json" in result.stderr and "FIFO" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before  # nothing spent
    assert not (tmp_path / "shared.csv").exists()


@pytest.mark.parametrize("name", ["ca.key", "ca.crt"])
def test_renewing_certificates_with_a_fifo_in_the_ca_folder_ends(tmp_path: Path, name: str) -> None:
    """``python -m medalloc.server.certs --ca`` read ca.key with ``read_bytes``: a FIFO there blocked it."""
    made = _run([sys.executable, "-m", "medalloc.server.certs", "--host", "localhost", "--out", "ca"], tmp_path)
    assert made.returncode == 0, made.stderr
    (tmp_path / "ca" / name).unlink()
    os.mkfifo(tmp_path / "ca" / name)
    result = _run(
        [sys.executable, "-m", "medalloc.server.certs", "--host", "localhost", "--out", "new", "--ca", "ca"], tmp_path
    )
    assert result.returncode != 0 and "FIFO" in result.stderr and name in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "new" / "server.pem").exists()


def test_the_gateway_says_what_a_certificate_path_is(tmp_path: Path) -> None:
    """A certificate linked to /dev/zero is "a character device", not "no such file"."""
    made = _run([sys.executable, "-m", "medalloc.server.certs", "--host", "localhost", "--out", "certs"], tmp_path)
    assert made.returncode == 0, made.stderr
    (tmp_path / "certs" / "server.pem").unlink()
    (tmp_path / "certs" / "server.pem").symlink_to("/dev/zero")
    result = _run(
        [sys.executable, "-m", "medalloc", "gateway", "config", "--listen", "127.0.0.1:19092", "--certs", "certs"],
        tmp_path,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "server.pem: is a character device, not a regular file" in " ".join(result.stderr.split())
