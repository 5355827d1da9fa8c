"""The command fuzz campaign (fuzz/commands.py) as a test: every generator, fixed seeds, no broken promise."""

from __future__ import annotations

import random

import pytest
import typer.main

from fuzz.commands import GENERATORS, Case, run_case
from fuzz.gen_simulate import default_text, drop_section, set_key
from fuzz.registry import run_case as registry_run_case
from medalloc.cli import app

# x generators; `python -m fuzz.commands --cases 3000` is the full campaign (docs/reliability.md).
PER_GENERATOR = 12

# Commands whose bad input is proven elsewhere, with where.
COVERED_ELSEWHERE = {
    "validate": "fuzz/__main__.py, tests/test_fuzz_validate.py and tests/test_fuzz_sources.py "
    "(the malformed-file campaign, OMOP and FHIR sources included)",
    "gateway start": "tests/test_gateway.py (runs nginx); its arguments are the generator 'gateway config/args'",
    "gateway stop": "takes only --dir; tests/test_gateway.py::test_gateway_stop_stops_the_one_it_started",
}


@pytest.mark.parametrize("key", sorted(GENERATORS))
def test_generator_cases_exit_2_cleanly(key: str) -> None:
    command, make = GENERATORS[key]
    failed = []
    for i in range(PER_GENERATOR):
        case = make(random.Random(f"test-{key}-{i}"))
        assert case.command == command
        outcome = run_case(case)
        if not outcome.passed:
            failed.append(f"{case.detail}: {'; '.join(outcome.failures)} | {outcome.message}")
    assert not failed, f"{len(failed)} of {PER_GENERATOR} cases broke a promise:\n" + "\n".join(failed[:10])


def test_the_checker_catches_every_broken_promise() -> None:
    """A valid command (exit 0, files written) and a missing name are reported: the campaign can fail."""
    outcome = registry_run_case(Case("generate", ("--hospitals", "1", "--days", "28", "--out", "r")))
    assert not outcome.passed
    assert any("exit 0" in f for f in outcome.failures) and any("wrote" in f for f in outcome.failures)
    outcome = registry_run_case(Case("generate", ("--hospitals", "0", "--out", "r"), expect=("no-such-word",)))
    assert outcome.failures == ("message does not name 'no-such-word'",)


def test_a_hang_is_reported_not_waited_for() -> None:
    """The registry's deadline turns a command that never returns into a failure (Ray on client-cpus = nan did)."""
    outcome = registry_run_case(Case("generate", ("--hospitals", "1000", "--days", "18262", "--out", "r")), timeout=1)
    assert any(f.startswith("hung") for f in outcome.failures), outcome.failures


def test_the_scenario_edits_start_from_a_valid_default() -> None:
    """The simulate generators edit the embedded default: it must itself load, or every case fails for one reason."""
    import tomllib

    from medalloc.simulations.scenario import parse_scenario

    text = default_text()
    parse_scenario(tomllib.loads(text), source="default")
    edited = tomllib.loads(set_key(text, "simulation", "client-cpus", "nan"))
    assert edited["simulation"]["client-cpus"] != edited["simulation"]["client-cpus"]  # NaN
    assert tomllib.loads(set_key(text, "federation", "new-key", "1"))["federation"]["new-key"] == 1
    assert "region" not in tomllib.loads(drop_section(text, "region"))


def test_every_command_has_a_generator() -> None:
    """A new `medalloc` command fails here until it has a generator (or a named reason it has none)."""
    group = typer.main.get_command(app)
    commands: set[str] = set()
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        sub = getattr(command, "commands", None)
        commands |= {f"{name} {s}" for s in sub} if sub else {name}
    covered = {command for command, _ in GENERATORS.values()} | set(COVERED_ELSEWHERE)
    assert commands - covered == set()
    assert len(GENERATORS) >= 40
