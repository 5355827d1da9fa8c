"""A node killed at every step of its source release (issue 22): the restart finishes the same release
or refuses saying what happened; it never releases the same days again.

Each kill is real: the node's round runs in its own process (``tests/release_node.py``, the
ClientApp's own handler) with ``MEDALLOC_FAULT_POINT`` naming a step, where it SIGKILLs itself.
Then the node is started again (this process) on the same folder. On main, a kill after the spend
made the next round spend again at the budget's remainder (noise multiplier 512 instead of 4.22)
and a kill after the plan refused every later round as ``ledger-corrupt``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from medalloc_core.privacy.ledger import PrivacyLedger
from medalloc_core.privacy.release import ReleaseStore
from medalloc_core.privacy.transaction import FAULT_ENV, FAULT_POINTS
from medalloc_core.protocol import Refusal
from tests.fed_fixtures import small_region
from tests.release_node import round_reply

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_region(tmp_path_factory.mktemp("crash") / "r", hospitals=1, days=120)


def _start(folder: Path, data: Path, fault: str | None, kind: str = "evaluate") -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    if fault:
        env[FAULT_ENV] = fault
    return subprocess.Popen(
        [sys.executable, "-m", "tests.release_node", str(folder), str(data), kind],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _killed_at(folder: Path, data: Path, fault: str) -> None:
    node = _start(folder, data, fault)
    try:
        _, err = node.communicate(timeout=300)
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
    assert node.returncode == -signal.SIGKILL, (
        f"the node was not killed at {fault}: rc {node.returncode}\n{err[-2000:]}"
    )


def _release_spends(folder: Path) -> list:
    return [s for s in PrivacyLedger.load(folder / "ledger.json").spends() if s.mechanism == "source-release"]


def _pending(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".pending." in p.name)


@pytest.mark.parametrize("fault", FAULT_POINTS)
def test_a_node_killed_at_each_step_finishes_the_same_release_once(tmp_path: Path, region: Path, fault: str) -> None:
    folder, data = tmp_path / "node", region / "H000.csv"
    _killed_at(folder, data, fault)
    spent_before = _release_spends(folder) if (folder / "ledger.json").exists() else []
    assert len(spent_before) == (0 if fault == "release:intent" else 1)
    staged = folder / "ledger.json.released.csv.pending.csv"
    staged_counts = pd.read_csv(staged) if staged.exists() else None

    reply = round_reply(folder, data, "train")  # the restart: one round of the real handler

    assert "error" not in reply, reply
    spends = _release_spends(folder)
    assert len(spends) == 1, f"released {len(spends)} times"
    if spent_before:
        assert spends[0].run_id == spent_before[0].run_id  # the same release, not a new one
    store = ReleaseStore.open(folder / "ledger.json.released.csv")
    assert store.plan is not None
    assert store.plan.noise_multiplier == spends[0].noise_multiplier == reply["metrics"]["noise-multiplier"]
    assert store.plan.noise_multiplier < 10  # the first plan's noise, not what a second release could afford
    truth = pd.read_csv(data)
    assert len(store.frame) == len(truth) and not store.frame.duplicated(["date", "unit"]).any()
    if staged_counts is not None:  # counts already drawn and staged: those are the ones released
        merged = store.frame.assign(date=store.frame["date"].dt.strftime("%Y-%m-%d")).merge(
            staged_counts, on=["date", "unit"], suffixes=("", "_staged")
        )
        assert len(merged) == len(staged_counts)
        assert (merged["admissions"] - merged["admissions_staged"]).abs().max() < 1e-6
    assert _pending(folder) == []
    again = round_reply(folder, data, "train")
    assert "error" not in again and len(_release_spends(folder)) == 1


def test_a_release_that_cannot_be_finished_is_refused_with_what_to_do(
    tmp_path: Path, region: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Charged, then killed before the counts, then the data lost those days: refused, never re-released."""
    folder, data = tmp_path / "node", region / "H000.csv"
    _killed_at(folder, data, "release:spent")
    shorter = tmp_path / "H000.csv"
    frame = pd.read_csv(data)
    frame[frame["date"] > frame["date"].min()].to_csv(shorter, index=False)
    # The node's data-path changes file: keep the same path so the state record still matches.
    backup = tmp_path / "original.csv"
    backup.write_bytes(data.read_bytes())
    node_data = tmp_path / "node-data.csv"
    node_data.write_bytes(shorter.read_bytes())
    # The killed run used `data`; a restart on a file without the first day:
    with caplog.at_level(logging.ERROR):
        reply = round_reply(folder, node_data, "evaluate")
    assert reply.get("error") == int(Refusal.LEDGER_CORRUPT)
    text = caplog.text
    assert "the node was stopped before its counts were stored" in text
    assert "Restore data-path" in text and "without charging it again" in text
    assert len(_release_spends(folder)) == 1 and _pending(folder) != []
    reply = round_reply(folder, data, "evaluate")  # the data restored: the same release is finished
    assert "error" not in reply and len(_release_spends(folder)) == 1 and _pending(folder) == []


def test_kill_9_at_random_moments_never_releases_twice(tmp_path: Path, region: Path) -> None:
    """Real kills at no chosen step: after each, a restart finishes with one release and no pending files."""
    folder, data = tmp_path / "node", region / "H000.csv"
    for delay in (3.0, 6.0, 9.0):
        node = _start(folder, data, None)
        time.sleep(delay)
        node.send_signal(signal.SIGKILL)
        node.communicate()
    reply = round_reply(folder, data, "train")
    assert "error" not in reply, reply
    assert len(_release_spends(folder)) == 1 and _pending(folder) == []
    assert json.loads(json.dumps(reply))["metrics"]["noise-multiplier"] < 10
