"""A full disk on every write path (issue 22), on a real small filesystem: a tmpfs of 320 KiB.

Each write (ledger creation and key, a spend, the release store, a model, a command's results)
must fail with a clear error, lose nothing already saved, and leave no half-made file that
changes what the node believes on its next start (an empty ``.key`` once made a node report its
ledger as "deleted or moved"). Skipped, with the reason, where a tmpfs cannot be mounted (not root).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medalloc_core.atomic import WriteFailed, atomic_write_bytes, create_exclusive
from medalloc_core.contract import Frequency, UnitRecords
from medalloc_core.privacy.ledger import LedgerWriteFailed, PrivacyLedger, ledger_key_path
from medalloc_core.privacy.node_state import open_node_ledger
from medalloc_core.privacy.release import ReleasePlan, ReleaseStore, release_records

DISK_BYTES = 320 * 1024


class Disk:
    """A mounted tmpfs and a filler file that takes (almost) all of its space."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.filler = root / "filler"

    def fill(self, leave: int = 0) -> None:
        """Fill the disk, then give back ``leave`` bytes (tmpfs counts whole 4 KiB pages)."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)
        if leave:
            size = self.filler.stat().st_size
            os.truncate(self.filler, max(0, size - leave))

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def names(self, folder: Path | None = None) -> list[str]:
        return sorted(p.name for p in (folder or self.root).iterdir() if p.name != "filler")


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES},mode=0755", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a {DISK_BYTES // 1024} KiB tmpfs (needs root): {done.stderr.strip()}")
    try:
        yield Disk(mount)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _open(path: Path) -> PrivacyLedger:
    return PrivacyLedger.open(path, epsilon_budget=4.0, delta=1e-5, unit="patient", max_stay_days=14)


def _spend(ledger: PrivacyLedger, i: int) -> float:
    return ledger.spend(f"sha256:{i:064x}", noise_multiplier=20.0, sample_rate=1.0, steps=1, run_id=f"run-{i}",
                        mechanism="source-release", days=("2024-01-01", "2024-01-31"))  # fmt: skip


@pytest.mark.parametrize("leave", [0, 4096])  # no room at all; room for the key alone
def test_creating_a_ledger_on_a_full_disk_leaves_nothing_that_changes_the_next_start(disk: Disk, leave: int) -> None:
    """No key without its ledger (that read as "deleted or moved"), no temp file; after freeing space it works."""
    path = disk.root / "ledger.json"
    disk.fill(leave)
    with pytest.raises(LedgerWriteFailed, match="No space left on device") as raised:
        _open(path)
    assert "nothing was created" in str(raised.value) or "No ledger was created" in str(raised.value)
    assert not ledger_key_path(path).exists() and not path.exists()
    assert [n for n in disk.names() if n.endswith(".tmp")] == []
    disk.free()
    ledger = _open(path)  # a fresh node: created now, no "deleted or moved"
    assert ledger.spends() == [] and ledger_key_path(path).stat().st_size == 65


def test_the_node_state_record_never_believes_a_ledger_that_was_never_made(disk: Disk) -> None:
    """Through the node's own entry point: a failed creation, then a start with space, is a first start."""
    state, path = disk.root / "node-state.json", disk.root / "ledger.json"
    disk.fill()
    with pytest.raises(LedgerWriteFailed):
        open_node_ledger(state_path=state, hospital_id="H1", ledger_path=path, epsilon_budget=4.0, delta=1e-5,
                         accountant="prv", max_stay_days=14)  # fmt: skip
    assert not state.exists()
    disk.free()
    ledger = open_node_ledger(state_path=state, hospital_id="H1", ledger_path=path, epsilon_budget=4.0, delta=1e-5,
                              accountant="prv", max_stay_days=14)  # fmt: skip
    assert json.loads(state.read_text())["nodes"]["H1"]["ledger_id"] == ledger.ledger_id


def test_a_spend_on_a_full_disk_is_refused_and_the_ledger_is_unchanged(disk: Disk) -> None:
    path = disk.root / "ledger.json"
    ledger = _open(path)
    for i in range(3):
        _spend(ledger, i)
    before = {n: (disk.root / n).read_bytes() for n in ("ledger.json", "ledger.json.bak", "ledger.json.key")}
    disk.fill()
    with pytest.raises(LedgerWriteFailed, match="No space left on device.*Nothing was recorded"):
        _spend(ledger, 3)
    after = {n: (disk.root / n).read_bytes() for n in before}
    assert after == before
    assert [n for n in disk.names() if n.endswith(".tmp")] == []
    assert len(PrivacyLedger.load(path).spends()) == 3
    disk.free()
    _spend(ledger, 3)
    assert len(PrivacyLedger.load(path).spends()) == 4


def test_a_key_is_never_half_made(disk: Disk) -> None:
    disk.fill()
    with pytest.raises(WriteFailed, match="No space left"):
        create_exclusive(disk.root / "k.key", b"k" * 65)
    assert not (disk.root / "k.key").exists() and disk.names() == []


def _records(days: int, start: str = "2024-01-01") -> UnitRecords:
    dates = pd.date_range(start, periods=days, freq="D")
    frame = pd.DataFrame(
        {"date": np.tile(dates, 2), "unit": np.repeat(["icu", "med"], days), "admissions": 5, "census": 20}
    )
    return UnitRecords(frame, Frequency.DAILY, Path("H1.csv"), "daily")


def test_the_release_store_on_a_full_disk_keeps_what_was_released(disk: Disk) -> None:
    plan = ReleasePlan.calibrate(epsilon=1.0, delta=1e-5)
    store = ReleaseStore.open(disk.root / "released.csv")
    store.add(release_records(_records(60), plan), plan)
    before = {n: (disk.root / n).read_bytes() for n in disk.names()}
    disk.fill()
    with pytest.raises(WriteFailed, match="No space left"):
        store.add(release_records(_records(400, "2024-03-01"), plan), plan)
    assert {n: (disk.root / n).read_bytes() for n in disk.names()} == before
    assert len(ReleaseStore.open(disk.root / "released.csv").frame) == 120


def test_a_model_written_on_a_full_disk_leaves_the_previous_pair(disk: Disk) -> None:
    from medalloc_core.forecast.features import federation_window_spec
    from medalloc_core.forecast.models import ForecasterConfig, build_model, state_arrays
    from medalloc_core.model_io import read_model_files, write_model_files

    spec = federation_window_spec(history=14, horizon=7, targets=["admissions"], model="mlp")
    config = ForecasterConfig.for_spec(spec, model="mlp", hidden=16)
    path = disk.root / "final_model.safetensors"
    old = state_arrays(build_model(config, seed=1))
    sidecar = write_model_files(path, old, config=config, spec=spec)
    disk.fill(leave=4096)  # room for one of the two files, not both
    new = {k: v + 1 for k, v in old.items()}
    with pytest.raises(WriteFailed, match="No space left"):
        write_model_files(path, new, config=config, spec=spec)
    _, arrays = read_model_files(sidecar)  # verifies the pair's SHA-256: not torn
    assert all(np.array_equal(arrays[k], old[k]) for k in old)
    assert [n for n in disk.names() if n.endswith(".tmp")] == []


def test_results_on_a_full_disk_are_refused_with_the_file_named(disk: Disk) -> None:
    target = disk.root / "out" / "forecast.csv"
    target.parent.mkdir()
    atomic_write_bytes(target, b"old,results\n")
    disk.fill()
    with pytest.raises(WriteFailed) as raised:
        atomic_write_bytes(target, b"x" * 100_000)
    assert str(target) in str(raised.value) and "the previous forecast.csv, if any, is intact" in str(raised.value)
    assert target.read_bytes() == b"old,results\n"


def test_the_machines_data_source_record_on_a_full_disk_is_a_clear_refusal(disk: Disk, tmp_path: Path) -> None:
    """``$MEDALLOC_STATE_DIR/data-sources.json`` on a full disk: `share` ended in a traceback (a bare WriteFailed)
    and a node saw an error that was no ledger refusal.
    Now: exit 2, the file named, nothing spent; with space, it works.
    """
    import sys

    from fuzz import fixtures
    from medalloc_core.privacy.source_registry import check_source_ledger

    work = tmp_path / "node"
    work.mkdir()
    files = {"forecast.csv": fixtures.forecast_csv(), "H000.csv": fixtures.hospital_csv(), **fixtures.ledger_files()}
    for name, data in files.items():
        (work / name).write_bytes(data)
    state = disk.root / "state"
    disk.fill()
    with pytest.raises(LedgerWriteFailed, match="data-sources.json could not be written"):  # the node's refusal
        check_source_ledger(str(work / "H000.csv"), work / "ledger.json", "id", path=state / "data-sources.json")
    argv = [sys.executable, "-m", "medalloc", "share", "--forecast", "forecast.csv", "--data", "H000.csv"]
    argv += ["--ledger", "ledger.json", "--epsilon", "1"]
    env = {**os.environ, "MEDALLOC_STATE_DIR": str(state)}
    result = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    said = " ".join(result.stderr.split())
    assert "data-sources.json could not be written" in said and "No space left on device" in said, said
    assert "Nothing was spent" in said
    assert all((work / name).read_bytes() == data for name, data in files.items())  # the ledger did not move
    assert not (work / "shared.csv").exists() and disk.names(state) == []
    disk.free()
    again = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode == 0, again.stderr
    assert (state / "data-sources.json").is_file() and (work / "shared.csv").is_file()
