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
