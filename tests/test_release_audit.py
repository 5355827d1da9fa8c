"""Issue 20: `medalloc audit`'s release checks fail at 2x miscalibrated noise and on a planted calendar leak,
and pass on the shipped mechanism."""

from __future__ import annotations

import dataclasses

import pytest

from medalloc_core.forecast.release_audit import run_release_checks
from medalloc_core.privacy.release import release_records


def _scaled(factor: float):
    def release(records, plan, rng=None):
        smaller = dataclasses.replace(plan, noise_sd={c: s / factor for c, s in plan.noise_sd.items()})
        return release_records(records, smaller, rng=rng)

    return release


def _leaky(records, stays, settings, *, default_nights):
    """A planted leak: the counts on the calendar the stays themselves span (the old behaviour)."""
    return records, None


@pytest.fixture(scope="module")
def shipped():
    return run_release_checks(seed=1)


def test_the_shipped_release_passes(shipped):
    assert shipped.passed, shipped.to_dict()
    assert 0.9 < shipped.noise.measured_epsilon < 1.1


@pytest.mark.parametrize("factor", [2.0, 1.25])
def test_miscalibrated_noise_fails(factor: float):
    checks = run_release_checks(seed=1, release=_scaled(factor))
    assert not checks.noise.passed and not checks.passed
    assert checks.noise.measured_epsilon > 1.15


def test_a_planted_calendar_leak_fails():
    checks = run_release_checks(seed=1, public=_leaky)
    assert checks.noise.passed and not checks.calendar.passed
    assert not all(checks.calendar.cases.values())


def test_an_undeclared_unit_list_is_reported_as_a_leak():
    checks = run_release_checks(seed=1, declared=False)
    assert not checks.calendar.cases["a unit nobody else used"]


def test_the_exit_status_covers_the_release_checks(monkeypatch: pytest.MonkeyPatch):
    """`medalloc audit` exits 1 when only a release check fails (the other rows pass)."""
    from typer.testing import CliRunner

    import medalloc_core.forecast.release_audit as release_audit
    from medalloc.cli import app

    real = release_audit.run_release_checks
    monkeypatch.setattr(release_audit, "run_release_checks", lambda seed=0: real(seed=seed, release=_scaled(2.0)))
    result = CliRunner().invoke(app, ["audit", "--quick"], env={"COLUMNS": "200"})
    assert result.exit_code == 1, result.output
    assert "FAIL: the measured noise gives" in result.output


# ------------------------------------------------------------------ the exit status covers every row
PASSING_PATIENT = {  # the shape of a passing patient-level audit (numbers as docs/audit.md measured them)
    "epsilon": 1.0,
    "delta": 1e-6,
    "max_stay_days": 14,
    "replay_diff_secure": 0.278,
    "replay_diff_seeded": 0.0,
    "canaries": 100,
    "canary_bound": 0.0,
    "canary_bound_power": 2.3,
    "canary_auc": 0.54,
    "eval_trials": 40,
    "eval_auc_released": 0.55,
    "eval_auc_true_counts": 1.0,
}
FAILING = {
    "nothing": {},
    "the coordinator's replay matches": {"replay_diff_secure": 0.0},
    "canary soundness": {"canary_bound": 1.4},
    "canary power": {"canary_bound_power": 0.2},
    "membership via evaluation replies": {"eval_auc_released": 0.9},
    "noise calibration": {},
    "calendar": {},
}


@pytest.fixture(scope="module")
def release_results(shipped):
    return {
        "shipped": shipped,
        "noise calibration": run_release_checks(seed=1, release=_scaled(2.0)),
        "calendar": run_release_checks(seed=1, public=_leaky),
    }


@pytest.mark.parametrize("failing", list(FAILING))
def test_medalloc_audit_exits_1_when_any_one_check_fails_and_0_when_none_does(
    monkeypatch: pytest.MonkeyPatch, release_results, failing: str
):
    """Each row of `medalloc audit` in turn is the only one failing: exit 1 every time; all passing: exit 0.

    The patient-level attacks' results are given (their power and soundness are tests/test_privacy_patient.py's);
    what is under test is that every verdict reaches the exit status."""
    from typer.testing import CliRunner

    import medalloc.simulations.patient_audit as patient_audit
    import medalloc_core.forecast.release_audit as release_audit
    from medalloc.cli import app

    audit = patient_audit.PatientAudit(**(PASSING_PATIENT | FAILING[failing]))
    checks = release_results.get(failing, release_results["shipped"])
    monkeypatch.setattr(patient_audit, "run_patient_audit", lambda **_: audit)
    monkeypatch.setattr(release_audit, "run_release_checks", lambda **_: checks)
    result = CliRunner().invoke(app, ["audit", "--quick"], env={"COLUMNS": "200"})
    assert result.exit_code == (0 if failing == "nothing" else 1), result.output
    assert ("FAIL" in result.output) == (failing != "nothing"), result.output
    assert "Privacy audit:" not in result.output  # the window-level DP-SGD audit runs only with --window
