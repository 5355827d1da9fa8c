"""``medalloc privacy``: the report a hospital's IT team reads, and its failure modes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medalloc.cli import app
from medalloc_core.privacy.accounting import epsilon_for
from medalloc_core.privacy.ledger import PrivacyLedger

FP_A = "sha256:" + "a1" * 32
FP_B = "sha256:" + "b2" * 32
runner = CliRunner()


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    path = tmp_path / "node" / "privacy-ledger.json"
    path.parent.mkdir()
    ledger = PrivacyLedger.open(path, epsilon_budget=5.0, delta=1e-5, accountant="rdp")
    ledger.spend(FP_A, noise_multiplier=1.0, sample_rate=0.01, steps=1000, run_id="run-2024-w01")
    ledger.spend(FP_B, noise_multiplier=1.5, sample_rate=0.02, steps=250, run_id="run-2024-w02")
    return path


def test_table_shows_entries_spends_and_totals(ledger_path: Path) -> None:
    result = runner.invoke(app, ["privacy", "--ledger", str(ledger_path)], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    total = epsilon_for([(1.0, 0.01, 1000), (1.5, 0.02, 250)], delta=1e-5, accountant="rdp")
    assert "a1a1a1a1a1a1" in result.output and "b2b2b2b2b2b2" in result.output
    assert "run-2024-w01" in result.output and "run-2024-w02" in result.output
    assert f"ε per training window {total:.3f} of budget 5" in result.output
    assert "bounds no patient" in result.output  # a window-level ledger says so first
    assert f"{5.0 - total:.3f} left" in result.output
    assert "δ=1e-05" in result.output and "RDP" in result.output


def test_json_report_matches_the_ledger(ledger_path: Path) -> None:
    result = runner.invoke(app, ["privacy", "--ledger", str(ledger_path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    ledger = PrivacyLedger.load(ledger_path)
    assert report["epsilon_spent"] == ledger.epsilon_spent()
    assert report["epsilon_remaining"] == pytest.approx(5.0 - ledger.epsilon_spent())
    assert report["delta"] == 1e-5 and report["epsilon_budget"] == 5.0
    assert [e["fingerprint"] for e in report["entries"]] == [FP_A, FP_B]
    first = report["entries"][0]["spends"][0]
    assert (first["noise_multiplier"], first["sample_rate"], first["steps"]) == (1.0, 0.01, 1000)
    assert first["epsilon_node_after"] == pytest.approx(2.1013652716430564, rel=1e-9)


def test_missing_ledger_exits_2_with_message(tmp_path: Path) -> None:
    result = runner.invoke(app, ["privacy", "--ledger", str(tmp_path / "absent.json")])
    assert result.exit_code == 2
    assert "no privacy ledger" in result.output
    assert "Traceback" not in result.output


def test_corrupt_ledger_exits_2_and_is_left_untouched(ledger_path: Path) -> None:
    damaged = ledger_path.read_bytes()[:-40]
    ledger_path.write_bytes(damaged)
    result = runner.invoke(app, ["privacy", "--ledger", str(ledger_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert "not valid JSON" in result.output and "privacy-ledger.json.bak" in result.output
    assert "Traceback" not in result.output
    assert ledger_path.read_bytes() == damaged


def test_empty_ledger_reports_zero(tmp_path: Path) -> None:
    path = tmp_path / "fresh.json"
    PrivacyLedger.open(path, epsilon_budget=3.0, delta=1e-6)
    result = runner.invoke(app, ["privacy", "--ledger", str(path)], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "No spends recorded yet" in result.output
    assert "ε per training window 0.000 of budget 3" in result.output and "3.000 left" in result.output


def test_a_patient_ledger_leads_with_epsilon_per_patient(tmp_path: Path) -> None:
    from medalloc_core.privacy.release import ReleasePlan

    plan = ReleasePlan.calibrate(epsilon=1.0, delta=1e-6, max_stay_days=14)
    path = tmp_path / "ledger.json"
    ledger = PrivacyLedger.open(path, epsilon_budget=2.0, delta=1e-6, unit="patient", max_stay_days=14)
    detail = {f"sd-{c}": sd for c, sd in plan.noise_sd.items()} | {"max-stay-days": 14.0}
    for days in (("2024-01-01", "2024-06-30"), ("2024-07-01", "2024-07-31")):  # a later month at the same noise
        ledger.spend(
            FP_A,
            noise_multiplier=plan.noise_multiplier,
            sample_rate=1.0,
            steps=1,
            run_id="r",
            mechanism="source-release",
            days=days,
            detail=detail,
        )
    result = CliRunner().invoke(app, ["privacy", "--ledger", str(path)], terminal_width=200)
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    assert first.startswith("ε per patient (stays up to 14 nights): 1.000 of budget 2, δ = 1e-06")
    assert "changes the probability of anything the node has released" in " ".join(result.output.split())
    flat = " ".join(result.output.split())
    assert "28 nights → ε 1.305" in flat and "source-relea" in flat  # (the narrow test terminal cuts it)
