"""The privacy audit on the real training path: soundness against the ledger, power without DP, the command."""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medalloc.cli import app
from medalloc_core.forecast.models import ForecasterConfig, build_model, pinball_loss_per_sample
from medalloc_core.forecast.training import DPConfig, TrainConfig, train_local
from medalloc_core.privacy.accounting import epsilon_for
from medalloc_core.privacy.audit import (
    DEFAULT_AUDIT_DP,
    LEDGER_NAME,
    QUICK_SETTING,
    AuditReport,
    AuditSetting,
    audit_run,
    build_audit_data,
    run_audit,
)
from medalloc_core.privacy.audit_stats import one_run_audit
from medalloc_core.privacy.ledger import PrivacyLedger

runner = CliRunner()
# A few seconds of training: for plumbing, not for conclusions.
TINY = AuditSetting(days=365, real_windows=60, canaries=40, hidden=16, epochs=2)


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[AuditReport, Path]:
    workdir = tmp_path_factory.mktemp("audit")
    return run_audit(QUICK_SETTING, workdir=workdir), workdir


# ----------------------------------------------------------------------------- the audit itself


@pytest.mark.slow
def test_audit_is_sound_and_the_attack_has_power(quick: tuple[AuditReport, Path]) -> None:
    report, workdir = quick
    dp, no_dp = report.dp, report.no_dp
    # the DP run is the project's default DP setting; the other has no noise and no clipping
    assert (dp.noise_multiplier, dp.max_grad_norm, dp.delta) == (1.0, 1.0, 1e-5)
    assert (no_dp.noise_multiplier, no_dp.max_grad_norm, no_dp.ledger_epsilon) == (0.0, None, None)
    assert dp.steps == no_dp.steps and dp.steps % QUICK_SETTING.epochs == 0

    # The ledger's epsilon is Opacus' accounting of exactly the steps taken, nothing else.
    assert PrivacyLedger.load(workdir / LEDGER_NAME).history() == [(1.0, dp.sample_rate, dp.steps)]
    assert dp.ledger_epsilon == pytest.approx(
        epsilon_for([(1.0, dp.sample_rate, dp.steps)], delta=1e-5, accountant="prv")
    )

    # Soundness: the empirical lower bound stays below what the ledger claims.
    assert dp.ledger_epsilon is not None and dp.epsilon_lower_bound <= dp.ledger_epsilon
    # Power: without DP the same attack proves a clearly larger epsilon.
    assert no_dp.epsilon_lower_bound >= 2.0
    assert no_dp.epsilon_lower_bound >= dp.epsilon_lower_bound + 1.0
    assert no_dp.canary_auc > 0.95 and no_dp.canary_tpr_at_low_fpr > 0.8
    assert dp.canary_auc < no_dp.canary_auc - 0.2
    assert no_dp.member_canary_loss < 0.5 * no_dp.nonmember_canary_loss  # memorised, so detectable
    assert report.sound and report.powerful

    # the reported bound is what the statistics give for the stored per-canary losses
    again = one_run_audit(-np.asarray(no_dp.canary_losses), np.asarray(report.canary_included), beta=0.05, delta=1e-5)
    assert again == no_dp.one_run


class _UnderReportingLedger:
    """Fault injection: a broken node that trains with one noise and records another."""

    def __init__(self, ledger: PrivacyLedger, claimed_noise: float) -> None:
        self.ledger, self.claimed_noise = ledger, claimed_noise

    def spend(self, fingerprint: str, *, noise_multiplier: float, sample_rate: float, steps: int, run_id: str) -> float:
        return self.ledger.spend(
            fingerprint, noise_multiplier=self.claimed_noise, sample_rate=sample_rate, steps=steps, run_id=run_id
        )


@pytest.fixture
def one_thread() -> Iterator[None]:
    """As run_audit does: a small MLP trains fastest on one thread of a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_the_soundness_check_catches_training_that_spends_more_than_recorded(tmp_path: Path) -> None:
    """Train without noise but record sigma = 8: the attack proves more than the ledger claims."""
    setting = QUICK_SETTING
    data = build_audit_data(setting)
    train = data.train_set()
    model = build_model(
        ForecasterConfig(
            model="mlp",
            history=setting.history,
            horizon=setting.horizon,
            n_features=train.X.shape[2],
            n_targets=train.y.shape[2],
            hidden=setting.hidden,
            layers=setting.layers,
        ),
        seed=setting.seed,
    )
    ledger = PrivacyLedger.open(tmp_path / "ledger.json", epsilon_budget=100.0, delta=1e-5)
    config = TrainConfig(epochs=setting.epochs, batch_size=setting.batch_size, lr=setting.lr, seed=setting.seed)
    train_local(
        model,
        train,
        config=config,
        dp=DPConfig(noise_multiplier=0.0),
        ledger=_UnderReportingLedger(ledger, 8.0),
        fingerprint="sha256:broken",
        run_id="bug",
    )
    claimed = ledger.epsilon_spent()
    with torch.no_grad():
        losses = pinball_loss_per_sample(model(data.canary_X), data.canary_y, model.config.quantiles).numpy()
    proved = one_run_audit(-losses, data.canary_in, beta=0.05, delta=1e-5).epsilon_lower_bound
    assert claimed < 2.0  # what the broken node would report
    assert proved > claimed + 1.0  # and what the audit proves it really spent, at 95 %


@pytest.mark.slow
def test_medalloc_audit_writes_the_same_numbers_and_never_overwrites(
    quick: tuple[AuditReport, Path], tmp_path: Path
) -> None:
    report, _ = quick
    out = tmp_path / "audit"
    result = runner.invoke(app, ["audit", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "soundness PASS" in result.output and "power     PASS" in result.output
    assert "no DP" in result.output and "DP σ=1 C=1" in result.output

    written = json.loads((out / "audit.json").read_text())
    expected = json.loads(json.dumps(report.to_dict()))
    for run in (*written["runs"], *expected["runs"]):
        del run["seconds"]  # wall time: the one thing allowed to differ
    assert written == expected  # same seed, same numbers: the audit is deterministic
    rows = (out / "canaries.csv").read_text().splitlines()
    assert rows[0] == "canary,included,loss_no_dp,loss_dp" and len(rows) == QUICK_SETTING.canaries + 1
    assert sum(int(r.split(",")[1]) for r in rows[1:]) == sum(report.canary_included)
    assert (out / "canary-losses.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = runner.invoke(app, ["audit", "--quick", "--out", str(out)])
    assert again.exit_code == 2 and "already holds audit results" in again.output
    assert "Traceback" not in again.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# ----------------------------------------------------------------------------- data and plumbing (fast)


def test_the_command_and_the_library_agree_on_names_and_defaults() -> None:
    from medalloc.cli import audit as cli_audit
    from medalloc_core.privacy import audit as library

    assert cli_audit.LEDGER_NAME == library.LEDGER_NAME
    defaults = {p.name: p.default for p in inspect.signature(cli_audit.audit).parameters.values()}
    assert defaults["noise_multiplier"].default == DEFAULT_AUDIT_DP.noise_multiplier
    assert defaults["max_grad_norm"].default == DEFAULT_AUDIT_DP.max_grad_norm


def test_audit_data_is_seeded_and_canaries_are_out_of_distribution() -> None:
    a, b = build_audit_data(TINY), build_audit_data(TINY)
    assert torch.equal(a.canary_X, b.canary_X) and torch.equal(a.canary_y, b.canary_y)
    assert np.array_equal(a.canary_in, b.canary_in) and np.array_equal(a.real_in, b.real_in)
    assert a.fingerprint() == b.fingerprint()
    other = build_audit_data(replace(TINY, seed=1))
    assert not np.array_equal(other.canary_in, a.canary_in)

    assert a.canary_X.shape == (40, TINY.history, a.real_X.shape[2])
    assert set(a.canary_y.abs().unique().tolist()) == {TINY.canary_level}  # +-6, far outside real targets
    assert a.real_y.abs().max() < TINY.canary_level
    real_rows = {tuple(x.flatten().tolist()) for x in a.real_X}
    assert not any(tuple(x.flatten().tolist()) in real_rows for x in a.canary_X)  # no canary input is a real input
    train = a.train_set()
    assert len(train) == int(a.real_in.sum() + a.canary_in.sum())


@pytest.mark.usefixtures("one_thread")
def test_a_dp_run_spends_through_a_fresh_ledger(tmp_path: Path) -> None:
    data = build_audit_data(TINY)
    ledger = tmp_path / LEDGER_NAME
    run = audit_run(data, TINY, dp=DEFAULT_AUDIT_DP, ledger_path=ledger)
    assert PrivacyLedger.load(ledger).history() == [(1.0, run.sample_rate, run.steps)]
    assert run.ledger_epsilon == pytest.approx(PrivacyLedger.load(ledger).epsilon_spent())
    assert run.one_run.canaries == 40 and run.one_run.delta == DEFAULT_AUDIT_DP.delta
    with pytest.raises(FileExistsError, match="fresh ledger"):
        audit_run(data, TINY, dp=DEFAULT_AUDIT_DP, ledger_path=ledger)
    with pytest.raises(ValueError, match="ledger_path"):
        audit_run(data, TINY, dp=None, ledger_path=tmp_path / "other.json")
    with pytest.raises(ValueError, match="ledger_path"):
        audit_run(data, TINY, dp=DPConfig(noise_multiplier=2.0), ledger_path=None)


def test_settings_that_cannot_work_are_refused() -> None:
    with pytest.raises(ValueError, match="canaries"):
        AuditSetting(canaries=0)
    with pytest.raises(ValueError, match="beta"):
        AuditSetting(beta=1.0)
    with pytest.raises(ValueError, match="seed"):
        AuditSetting(seed=-1)
    with pytest.raises(ValueError, match="fewer than canaries=5000"):
        build_audit_data(replace(TINY, canaries=5000))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--noise-multiplier", "0"], "--noise-multiplier must be a finite number > 0"),
        (["--max-grad-norm", "-1"], "--max-grad-norm must be a finite number > 0"),
        (["--seed", "-3"], "--seed must be >= 0"),
    ],
)
def test_medalloc_audit_refuses_bad_arguments(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["audit", "--quick", *args])
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output


def test_medalloc_audit_refuses_a_file_or_earlier_results_as_out(tmp_path: Path) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    result = runner.invoke(app, ["audit", "--quick", "--out", str(a_file)])
    assert result.exit_code == 2 and "is a file" in result.output
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / LEDGER_NAME).write_text("{}")
    result = runner.invoke(app, ["audit", "--quick", "--out", str(earlier)])
    assert result.exit_code == 2 and "already holds audit results" in result.output
    assert a_file.read_text() == "mine" and (earlier / LEDGER_NAME).read_text() == "{}"
