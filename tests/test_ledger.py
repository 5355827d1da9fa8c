"""PrivacyLedger: enforcement, persistence, corruption, crash safety, fingerprints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medalloc_core.privacy.accounting import epsilon_for, noise_multiplier_for
from medalloc_core.privacy.fingerprint import fingerprint_frame
from medalloc_core.privacy.ledger import (
    LedgerConfigMismatch,
    LedgerCorrupt,
    LedgerMissing,
    PrivacyBudgetExceeded,
    PrivacyLedger,
)

DELTA = 1e-5
FP_A = "sha256:" + "a" * 64
FP_B = "sha256:" + "b" * 64
REPO = Path(__file__).resolve().parents[1]


def open_rdp(path: Path, budget: float = 4.0) -> PrivacyLedger:
    # RDP keeps these tests fast; one test below runs the PRV default end to end.
    return PrivacyLedger.open(path, epsilon_budget=budget, delta=DELTA, accountant="rdp")


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.json"


# ---------------------------------------------------------------- accounting through the ledger
def test_ledger_epsilon_matches_accountant_prv_default(ledger_path: Path) -> None:
    ledger = PrivacyLedger.open(ledger_path, epsilon_budget=8.0, delta=DELTA)
    assert ledger.accountant == "prv"
    after = ledger.spend(FP_A, noise_multiplier=1.0, sample_rate=0.01, steps=1000, run_id="r1")
    assert after == pytest.approx(1.8383716370172951, rel=1e-6)  # Opacus PRV upper bound
    assert ledger.epsilon_spent() == after == ledger.epsilon_spent(FP_A)
    assert ledger.remaining() == pytest.approx(8.0 - after)


def test_ledger_epsilon_matches_accountant_rdp(ledger_path: Path) -> None:
    ledger = open_rdp(ledger_path, budget=8.0)
    first = ledger.spend(FP_A, noise_multiplier=1.0, sample_rate=0.01, steps=1000, run_id="r1")
    assert first == pytest.approx(2.1013652716430564, rel=1e-9)
    second = ledger.spend(FP_A, noise_multiplier=2.0, sample_rate=0.1, steps=200, run_id="r2")
    assert second == pytest.approx(epsilon_for([(1.0, 0.01, 1000), (2.0, 0.1, 200)], delta=DELTA, accountant="rdp"))
    assert ledger.history() == [(1.0, 0.01, 1000), (2.0, 0.1, 200)]


def test_projected_epsilon_writes_nothing(ledger_path: Path) -> None:
    ledger = open_rdp(ledger_path)
    before = ledger_path.read_bytes()
    projected = ledger.projected_epsilon(FP_A, noise_multiplier=1.0, sample_rate=0.01, steps=1000)
    assert projected == pytest.approx(2.1013652716430564, rel=1e-9)
    assert ledger_path.read_bytes() == before
    assert ledger.epsilon_spent() == 0.0


def test_noise_from_accounting_fits_the_remaining_budget(ledger_path: Path) -> None:
    ledger = open_rdp(ledger_path, budget=3.0)
    ledger.spend(FP_A, noise_multiplier=1.0, sample_rate=0.01, steps=1000, run_id="r1")
    sigma = noise_multiplier_for(
        target_epsilon=3.0,
        delta=DELTA,
        sample_rate=0.05,
        steps=300,
        accountant="rdp",
        history=ledger.history(),
    )
    after = ledger.spend(FP_A, noise_multiplier=sigma, sample_rate=0.05, steps=300, run_id="r2")
    assert 2.99 - 0.01 <= after <= 3.0


# ---------------------------------------------------------------- refusal
def test_over_budget_spend_is_refused_before_anything_is_written(ledger_path: Path) -> None:
    ledger = open_rdp(ledger_path, budget=3.0)
    ledger.spend(FP_A, noise_multiplier=1.0, sample_rate=0.01, steps=1000, run_id="r1")
    files_before = {p.name: p.read_bytes() for p in ledger_path.parent.iterdir()}
    with pytest.raises(PrivacyBudgetExceeded, match="above its budget 3") as refused:
        ledger.spend(FP_A, noise_multiplier=1.0, sample_rate=0.01, steps=2000, run_id="r2")
    assert refused.value.projected_epsilon > 3.0
    assert "Nothing was recorded" in str(refused.value)
    files_after = {p.name: p.read_bytes() for p in ledger_path.parent.iterdir()}
    assert files_after == files_before
    assert ledger.epsilon_spent() == pytest.approx(2.1013652716430564, rel=1e-9)


# ---------------------------------------------------------------- persistence
def test_ledger_survives_restart_and_keeps_composing(ledger_path: Path) -> None:
    first = open_rdp(ledger_path, budget=10.0)
    first.spend(FP_A, noise_multiplier=1.0, sample_rate=0.01, steps=1000, run_id="r1")
    spent = first.epsilon_spent()
    del first
    reopened = open_rdp(ledger_path, budget=10.0)
    assert reopened.epsilon_spent() == spent
    after = reopened.spend(FP_A, noise_multiplier=1.0, sample_rate=0.01, steps=1000, run_id="r2")
    assert after == pytest.approx(epsilon_for([(1.0, 0.01, 2000)], delta=DELTA, accountant="rdp"))
    assert after > spent
    assert [s.run_id for s in PrivacyLedger.load(ledger_path).entries()[0].spends] == ["r1", "r2"]


def test_two_handles_see_each_others_spends(ledger_path: Path) -> None:
    one, two = open_rdp(ledger_path, budget=3.0), open_rdp(ledger_path, budget=3.0)
    one.spend(FP_A, noise_multiplier=1.0, sample_rate=0.01, steps=1000, run_id="r1")
    # the second handle must not enforce a stale, empty history
    with pytest.raises(PrivacyBudgetExceeded):
        two.spend(FP_A, noise_multiplier=1.0, sample_rate=0.01, steps=2000, run_id="r2")


def test_budget_cannot_change_silently(ledger_path: Path) -> None:
    open_rdp(ledger_path, budget=3.0)
    with pytest.raises(LedgerConfigMismatch, match="allow_budget_change=True"):
        open_rdp(ledger_path, budget=5.0)
    with pytest.raises(LedgerConfigMismatch, match="delta"):
        PrivacyLedger.open(ledger_path, epsilon_budget=3.0, delta=1e-6, accountant="rdp")
    with pytest.raises(LedgerConfigMismatch, match="accountant"):
        PrivacyLedger.open(ledger_path, epsilon_budget=3.0, delta=DELTA, accountant="prv")
    raised = PrivacyLedger.open(
        ledger_path, epsilon_budget=5.0, delta=DELTA, accountant="rdp", allow_budget_change=True
    )
    assert raised.epsilon_budget == 5.0
    changes = PrivacyLedger.load(ledger_path).budget_changes()
    assert [(c.previous, c.new) for c in changes] == [(3.0, 5.0)]
    assert json.loads(ledger_path.read_text())["body"]["budget_changes"][0]["new"] == 5.0


def test_load_of_missing_ledger_is_an_error(ledger_path: Path) -> None:
    with pytest.raises(LedgerMissing, match="no privacy ledger"):
        PrivacyLedger.load(ledger_path)


def test_deleted_ledger_with_backup_is_not_recreated(ledger_path: Path) -> None:
    ledger = open_rdp(ledger_path)
    ledger.spend(FP_A, noise_multiplier=1.0, sample_rate=0.01, steps=100, run_id="r1")
    ledger.spend(FP_A, noise_multiplier=1.0, sample_rate=0.01, steps=100, run_id="r2")
    ledger_path.unlink()
    with pytest.raises(LedgerCorrupt, match="missing but its backup"):
        open_rdp(ledger_path)
    assert not ledger_path.exists()


# ---------------------------------------------------------------- corruption
def _flip_byte(raw: bytes) -> bytes:
    # flip a digit inside a recorded epsilon: still valid JSON, wrong checksum
    i = raw.index(b'"steps": 1000') + len(b'"steps": ')
    return raw[:i] + b"9" + raw[i + 1 :]


def _wrong_checksum(raw: bytes) -> bytes:
    document = json.loads(raw)
    document["body"]["entries"][FP_A][0]["steps"] = 1  # "fewer steps spent": the dangerous edit
    return json.dumps(document, indent=2).encode()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda raw: raw[: len(raw) // 2], "not valid JSON"),
        (lambda raw: b"", "not valid JSON"),
        (_flip_byte, "checksum"),
        (lambda raw: raw.replace(b"{", b"[", 1), "not valid JSON"),
        (_wrong_checksum, "checksum"),
        (lambda raw: b'{"format": "something else"}', "not a MedAlloc privacy ledger"),
        (lambda raw: b"\xff\xfe garbage", "not valid JSON"),
    ],
    ids=["truncated", "empty", "flipped-byte", "invalid-json", "edited-body", "foreign", "binary"],
)
def test_corrupt_ledger_refuses_and_is_left_untouched(ledger_path: Path, damage, reason) -> None:
    ledger = open_rdp(ledger_path)
    ledger.spend(FP_A, noise_multiplier=1.0, sample_rate=0.01, steps=1000, run_id="r1")
    damaged = damage(ledger_path.read_bytes())
    ledger_path.write_bytes(damaged)
    with pytest.raises(LedgerCorrupt, match=reason) as error:
        open_rdp(ledger_path)
    assert "never delete" in str(error.value).lower() and ".bak" in str(error.value)
    with pytest.raises(LedgerCorrupt):
        ledger.spend(FP_A, noise_multiplier=5.0, sample_rate=0.01, steps=1, run_id="r2")
    with pytest.raises(LedgerCorrupt):
        ledger.epsilon_spent()
    with pytest.raises(LedgerCorrupt):
        PrivacyLedger.load(ledger_path)
    assert ledger_path.read_bytes() == damaged


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of permissions")
def test_unreadable_ledger_is_corrupt_not_reset(ledger_path: Path) -> None:
    open_rdp(ledger_path)
    ledger_path.chmod(0)
    try:
        with pytest.raises(LedgerCorrupt, match="unreadable"):
            open_rdp(ledger_path)
    finally:
        ledger_path.chmod(0o644)


def test_backup_holds_the_previous_version(ledger_path: Path) -> None:
    ledger = open_rdp(ledger_path)
    ledger.spend(FP_A, noise_multiplier=1.0, sample_rate=0.01, steps=100, run_id="r1")
    previous = ledger_path.read_bytes()
    ledger.spend(FP_A, noise_multiplier=1.0, sample_rate=0.01, steps=100, run_id="r2")
    backup = ledger_path.with_name("ledger.json.bak")
    assert backup.read_bytes() == previous
    assert len(PrivacyLedger.load(backup).entries()[0].spends) == 1


# ---------------------------------------------------------------- crash safety
CRASH_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from medalloc_core.privacy import ledger as module
    path = sys.argv[1]
    real_replace = os.replace
    def crash_before_replacing_the_ledger(src, dst):
        if os.fspath(dst) == path:   # temp file written and fsynced, rename not yet done
            os._exit(9)
        real_replace(src, dst)
    module.os.replace = crash_before_replacing_the_ledger
    ledger = module.PrivacyLedger.open(path, epsilon_budget=4.0, delta=1e-5, accountant="rdp")
    ledger.spend("sha256:" + "a" * 64, noise_multiplier=1.0, sample_rate=0.01, steps=500,
                 run_id="crashing")
    """
)


def test_crash_between_temp_write_and_replace_keeps_previous_ledger(ledger_path: Path) -> None:
    ledger = open_rdp(ledger_path)
    ledger.spend(FP_A, noise_multiplier=1.0, sample_rate=0.01, steps=1000, run_id="r1")
    before = ledger_path.read_bytes()
    result = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT, str(ledger_path)],
        cwd=REPO,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 9, result.stderr.decode()
    strays = list(ledger_path.parent.glob(".ledger.json.*.tmp"))
    assert len(strays) == 1  # the crashed writer's complete but never-renamed temp file
    assert ledger_path.read_bytes() == before
    reopened = open_rdp(ledger_path)
    assert [s.run_id for e in reopened.entries() for s in e.spends] == ["r1"]
    assert reopened.epsilon_spent() == pytest.approx(2.1013652716430564, rel=1e-9)
    assert not list(ledger_path.parent.glob(".ledger.json.*.tmp"))  # cleaned under the lock


def test_stray_garbage_temp_file_does_not_affect_the_ledger(ledger_path: Path) -> None:
    ledger = open_rdp(ledger_path)
    ledger.spend(FP_A, noise_multiplier=1.0, sample_rate=0.01, steps=1000, run_id="r1")
    (ledger_path.parent / ".ledger.json.x1y2.tmp").write_bytes(b'{"body": {"entr')
    assert open_rdp(ledger_path).epsilon_spent() == pytest.approx(2.1013652716430564, rel=1e-9)


# ---------------------------------------------------------------- datasets and composition
def test_changed_dataset_gets_new_entry_but_budget_composes(ledger_path: Path) -> None:
    ledger = open_rdp(ledger_path, budget=3.0)
    ledger.spend(FP_A, noise_multiplier=1.0, sample_rate=0.01, steps=1000, run_id="r1")
    after = ledger.spend(FP_B, noise_multiplier=1.0, sample_rate=0.01, steps=500, run_id="r2")
    entries = {e.fingerprint: e for e in ledger.entries()}
    assert set(entries) == {FP_A, FP_B}
    assert entries[FP_B].epsilon == pytest.approx(epsilon_for([(1.0, 0.01, 500)], delta=DELTA, accountant="rdp"))
    # the node total composes both entries: more than either alone
    assert after == pytest.approx(epsilon_for([(1.0, 0.01, 1500)], delta=DELTA, accountant="rdp"))
    assert after > entries[FP_A].epsilon
    # a third dataset cannot start from a fresh budget
    with pytest.raises(PrivacyBudgetExceeded):
        ledger.spend("sha256:" + "c" * 64, noise_multiplier=1.0, sample_rate=0.01, steps=1000, run_id="r3")


def _frame(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    dates = pd.date_range("2024-01-01", periods=30, freq="D")
    return pd.DataFrame(
        {
            "date": np.tile(dates, 2),
            "unit": np.repeat(["ICU", "ward-1"], 30),
            "admissions": rng.integers(0, 20, 60),
            "census": rng.integers(5, 40, 60).astype(float),
            "occupancy": rng.random(60).round(6),
        }
    )


def test_fingerprint_ignores_row_order_column_order_and_file_format(tmp_path: Path) -> None:
    frame = _frame()
    key = fingerprint_frame(frame)
    assert key.startswith("sha256:") and len(key) == 7 + 64
    shuffled = frame.sample(frac=1.0, random_state=3).reset_index(drop=True)
    assert fingerprint_frame(shuffled[list(reversed(frame.columns))]) == key
    frame.to_csv(tmp_path / "data.csv", index=False)
    frame.to_parquet(tmp_path / "data.parquet", index=False)
    as_strings = pd.read_csv(tmp_path / "data.csv", dtype=str)  # how read_table reads CSV
    typed_csv = pd.read_csv(tmp_path / "data.csv")
    parquet = pd.read_parquet(tmp_path / "data.parquet")
    assert fingerprint_frame(as_strings) == key
    assert fingerprint_frame(typed_csv) == key
    assert fingerprint_frame(parquet) == key
    # CSV -> parquet round trip of the shuffled strings
    as_strings.sample(frac=1.0, random_state=1).to_parquet(tmp_path / "rt.parquet", index=False)
    assert fingerprint_frame(pd.read_parquet(tmp_path / "rt.parquet")) == key


def test_fingerprint_changes_with_the_data() -> None:
    frame = _frame()
    key = fingerprint_frame(frame)
    changed = frame.copy()
    changed.loc[5, "admissions"] = changed.loc[5, "admissions"] + 1
    appended = pd.concat([frame, frame.iloc[[0]].assign(date=pd.Timestamp("2024-02-01"))])
    renamed = frame.rename(columns={"census": "beds"})
    keys = {key, fingerprint_frame(changed), fingerprint_frame(appended), fingerprint_frame(renamed)}
    assert len(keys) == 4
    assert fingerprint_frame(_frame(seed=1)) != key


def test_refingerprinting_same_data_never_gives_a_fresh_budget(tmp_path: Path) -> None:
    frame = _frame()
    ledger = open_rdp(tmp_path / "ledger.json", budget=3.0)
    ledger.spend(fingerprint_frame(frame), noise_multiplier=1.0, sample_rate=0.01, steps=1000, run_id="r1")
    frame.to_csv(tmp_path / "again.csv", index=False)
    again = fingerprint_frame(pd.read_csv(tmp_path / "again.csv", dtype=str).iloc[::-1])
    assert [e.fingerprint for e in ledger.entries()] == [again]
    with pytest.raises(PrivacyBudgetExceeded):
        ledger.spend(again, noise_multiplier=1.0, sample_rate=0.01, steps=2000, run_id="r2")


# ---------------------------------------------------------------- the property
OPERATIONS = st.lists(
    st.one_of(
        st.tuples(
            st.just("spend"),
            st.sampled_from([FP_A, FP_B]),
            st.floats(0.7, 4.0),
            st.sampled_from([0.005, 0.02, 0.1]),
            st.integers(1, 800),
        ),
        st.tuples(st.just("reopen")),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=OPERATIONS, budget=st.floats(0.5, 6.0))
def test_random_spends_and_reopens_never_exceed_budget(tmp_path: Path, operations, budget) -> None:
    path = tmp_path / f"prop-{abs(hash((tuple(operations), budget)))}.json"
    for stale in path.parent.glob(path.name + "*"):
        stale.unlink()
    ledger = open_rdp(path, budget=budget)
    accepted: list[tuple[float, float, int]] = []
    for i, op in enumerate(operations):
        if op[0] == "reopen":
            ledger = open_rdp(path, budget=budget)
            continue
        _, fingerprint, noise, rate, steps = op
        before = path.read_bytes()
        try:
            after = ledger.spend(fingerprint, noise_multiplier=noise, sample_rate=rate, steps=steps, run_id=f"r{i}")
        except PrivacyBudgetExceeded:
            assert path.read_bytes() == before
            assert epsilon_for([*accepted, (noise, rate, steps)], delta=DELTA, accountant="rdp") > budget
            continue
        accepted.append((noise, rate, steps))
        assert after <= budget
        # an independent recomputation of everything accepted agrees and stays within budget
        assert epsilon_for(accepted, delta=DELTA, accountant="rdp") == pytest.approx(after)
        assert PrivacyLedger.load(path).epsilon_spent() <= budget
    assert sorted(PrivacyLedger.load(path).history()) == sorted(accepted)


def test_ledger_path_that_cannot_be_read_as_a_file_is_corrupt(tmp_path: Path) -> None:
    # Runs as root too (where chmod 0 does not stop reads): a directory in the ledger's place.
    path = tmp_path / "ledger.json"
    path.mkdir()
    with pytest.raises(LedgerCorrupt, match="unreadable"):
        open_rdp(path)
    assert path.is_dir() and not any(path.iterdir())


SPENDER_SCRIPT = textwrap.dedent(
    """
    import sys
    from medalloc_core.privacy.ledger import PrivacyLedger
    path, name = sys.argv[1], sys.argv[2]
    ledger = PrivacyLedger.open(path, epsilon_budget=1000.0, delta=1e-5, accountant="rdp")
    for i in range(15):
        ledger.spend("sha256:" + "a" * 64, noise_multiplier=2.0, sample_rate=0.01, steps=10,
                     run_id=f"{name}-{i}")
    """
)


@pytest.mark.slow  # two interpreters importing torch/opacus: ~10-20 s on a loaded machine
def test_two_processes_spending_at_once_lose_no_spend(ledger_path: Path) -> None:
    open_rdp(ledger_path, budget=1000.0)
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", SPENDER_SCRIPT, str(ledger_path), name], cwd=REPO, stderr=subprocess.PIPE
        )
        for name in ("p", "q")
    ]
    for worker in workers:
        _, stderr = worker.communicate(timeout=120)
        assert worker.returncode == 0, stderr.decode()
    runs = [s.run_id for e in PrivacyLedger.load(ledger_path).entries() for s in e.spends]
    assert sorted(runs) == sorted([f"{n}-{i}" for n in ("p", "q") for i in range(15)])
    assert PrivacyLedger.load(ledger_path).history() == [(2.0, 0.01, 10)] * 30
