"""Run one mutant through the library and the CLI and list every way the result breaks the bad-input promise."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner

from medalloc.cli import app
from medalloc_core.contract import DataContractError, Problem
from medalloc_core.validation import ValidationReport, load_unit_records, validate_file

from .mutations import Expect, Mutant

EXIT_OK, EXIT_INVALID = 0, 2
_RUNNER = CliRunner()
# What the CLI prints when validate_file itself crashed: exit 2 but no useful message, so a bug.
_CRASH_MARKER = "could not be validated"


@dataclass(frozen=True)
class Outcome:
    """What checking one mutant found; ``failures`` is empty when every promise held."""

    mutant: Mutant
    valid: bool | None  # what validate_file said (None: it raised)
    failures: tuple[str, ...]
    first_error: str = ""  # the first error validate_file reported, as the CLI prints it

    @property
    def passed(self) -> bool:
        return not self.failures


def write_mutant(mutant: Mutant, directory: Path, stem: str = "mutant") -> Path:
    """Write the mutant's bytes as ``directory/stem.csv|parquet``."""
    path = directory / f"{stem}{mutant.suffix}"
    path.write_bytes(mutant.data)
    return path


def check(mutant: Mutant, path: Path) -> Outcome:
    """validate_file, load_unit_records and ``medalloc validate`` (in-process) on the written mutant.

    Promises checked: the library never raises for bad input and its errors name the file
    and what the mutation class must name; loading raises DataContractError exactly when
    the report has errors; the CLI exits 2 with ``error:`` lines (0 for a valid file) and
    never shows a traceback or a crash; the file and its directory are left untouched.
    """
    before = _fingerprint(path)
    failures: list[str] = []
    report = _library(mutant, path, failures)
    valid = None if report is None else report.ok
    _cli(mutant, path, valid, failures)
    if _fingerprint(path) != before:
        failures.append("the input file or its directory changed")
    first = str(report.errors[0]) if report is not None and report.errors else ""
    return Outcome(mutant, valid, tuple(failures), first)


def check_subprocess(paths: list[Path], expected_exit: int = EXIT_INVALID, timeout: float = 120) -> list[str]:
    """``python -m medalloc.cli validate PATHS`` in a real process: no traceback, the expected exit,
    an error per file."""
    result = subprocess.run(
        [sys.executable, "-m", "medalloc.cli", "validate", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=Path(__file__).resolve().parents[2],
    )
    output = result.stdout + result.stderr
    failures = []
    if result.returncode != expected_exit:
        failures.append(f"exit {result.returncode}, expected {expected_exit}")
    if "Traceback" in output:
        failures.append("a traceback was printed")
    if _CRASH_MARKER in output:
        failures.append("validate_file crashed (CLI fallback message)")
    for path in paths:
        if expected_exit == EXIT_INVALID and f"error: {path}" not in output:
            failures.append(f"no 'error: {path}' line")
    return failures


def _library(mutant: Mutant, path: Path, failures: list[str]) -> ValidationReport | None:
    try:
        report = validate_file(path)
    except Exception as exc:  # noqa: BLE001 - any exception here is the bug being hunted
        failures.append(f"validate_file raised {type(exc).__name__}: {exc}")
        return None
    expect = mutant.expect
    if expect.valid is True and not report.ok:
        failures.append(f"valid file reported invalid: {_first(report.errors)}")
    if expect.valid is False:
        if report.ok:
            failures.append("malformed file reported valid")
        elif not any(_names(p, expect) for p in report.errors):
            failures.append(f"no error names {_wanted(expect)}; got {_first(report.errors)}")
    foreign = [p for p in report.problems if p.file != str(path)]
    if foreign:
        failures.append(f"a problem does not name the file: {foreign[0]}")
    try:
        load_unit_records(path)
    except DataContractError as exc:
        if report.ok:
            failures.append(f"load_unit_records refused a file validate_file passed: {exc}")
    except Exception as exc:  # noqa: BLE001 - only DataContractError is allowed out of the loader
        failures.append(f"load_unit_records raised {type(exc).__name__}: {exc}")
    else:
        if not report.ok:
            failures.append("load_unit_records accepted a file validate_file rejected")
    return report


def _cli(mutant: Mutant, path: Path, valid: bool | None, failures: list[str]) -> None:
    result = _RUNNER.invoke(app, ["validate", str(path)])
    output = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        failures.append(f"CLI raised {type(result.exception).__name__}: {result.exception}")
    if "Traceback" in output:
        failures.append("CLI printed a traceback")
    if _CRASH_MARKER in output:
        failures.append(f"CLI fell back to the crash message: {output.strip()[:200]}")
    should_fail = mutant.expect.valid is False or valid is False
    expected_exit = EXIT_INVALID if should_fail else EXIT_OK
    if mutant.expect.valid is None and valid is None:
        expected_exit = EXIT_INVALID
    if result.exit_code != expected_exit:
        failures.append(f"CLI exit {result.exit_code}, expected {expected_exit}: {output.strip()[:200]}")
    if expected_exit == EXIT_INVALID and f"error: {path}" not in output:
        failures.append("CLI output has no 'error: FILE' line")


def _names(problem: Problem, expect: Expect) -> bool:
    return (
        (expect.row is None or problem.row == expect.row)
        and (expect.column is None or problem.column == expect.column)
        and (not expect.keywords or any(k in problem.message for k in expect.keywords))
    )


def _wanted(expect: Expect) -> str:
    parts = [f"row {expect.row}" if expect.row else "", f"column {expect.column!r}" if expect.column else ""]
    parts += [f"one of {list(expect.keywords)}"] if expect.keywords else []
    return ", ".join(p for p in parts if p) or "anything"


def _first(problems: list[Problem]) -> str:
    return str(problems[0]) if problems else "(none)"


def _fingerprint(path: Path) -> tuple[str, int, int, tuple[str, ...]]:
    """Content hash, mtime and size of the file, and the names in its directory (nothing written beside it)."""
    stat = os.stat(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest, stat.st_mtime_ns, stat.st_size, tuple(sorted(os.listdir(path.parent)))


def check_fleet(mutant: Mutant, folder: Path, path: Path) -> Outcome:
    """An equipment mutant in its fleet folder: validate_fleet, load_fleet and ``medalloc validate FOLDER``.

    The same promises as :func:`check`: the mutated file's errors name what the class must
    name; loading fails exactly when a report has an error; the CLI exits 2 (0 when valid) with
    an ``error:`` line for the mutated file and no traceback; the folder is left untouched.
    """
    from medalloc_core.equipment.validation import load_fleet, validate_fleet

    before = _folder_fingerprint(folder)
    failures: list[str] = []
    report: ValidationReport | None = None
    valid: bool | None = None
    try:
        reports = validate_fleet(folder)
    except Exception as exc:  # noqa: BLE001 - any exception here is the bug being hunted
        failures.append(f"validate_fleet raised {type(exc).__name__}: {exc}")
    else:
        valid = all(r.ok for r in reports)
        report = next((r for r in reports if r.path == path), None)
        own = report.errors if report is not None else []
        expect = mutant.expect
        if expect.valid is True and not valid:
            failures.append(f"valid fleet reported invalid: {_first([p for r in reports for p in r.errors])}")
        if expect.valid is False:
            if report is None or report.ok:
                failures.append("malformed file reported valid")
            elif not any(_names(p, expect) for p in own):
                failures.append(f"no error names {_wanted(expect)}; got {_first(own)}")
        foreign = [p for r in reports for p in r.problems if p.file not in (str(r.path), str(folder))]
        if foreign:
            failures.append(f"a problem does not name its file: {foreign[0]}")
        try:
            load_fleet(folder)
        except DataContractError as exc:
            if valid:
                failures.append(f"load_fleet refused a fleet validate_fleet passed: {exc}")
        except Exception as exc:  # noqa: BLE001 - only DataContractError is allowed out of the loader
            failures.append(f"load_fleet raised {type(exc).__name__}: {exc}")
        else:
            if not valid:
                failures.append("load_fleet accepted a fleet validate_fleet rejected")
    result = _RUNNER.invoke(app, ["validate", str(folder)])
    output = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        failures.append(f"CLI raised {type(result.exception).__name__}: {result.exception}")
    if "Traceback" in output or _CRASH_MARKER in output:
        failures.append(f"CLI printed a traceback or its crash message: {output.strip()[:200]}")
    expected_exit = EXIT_OK if valid else EXIT_INVALID
    if result.exit_code != expected_exit:
        failures.append(f"CLI exit {result.exit_code}, expected {expected_exit}: {output.strip()[:200]}")
    if mutant.expect.valid is False and f"error: {path}" not in " ".join(output.split()):
        failures.append("CLI output has no 'error: FILE' line for the mutated file")
    if _folder_fingerprint(folder) != before:
        failures.append("a file of the fleet folder or the folder itself changed")
    first = str(report.errors[0]) if report is not None and report.errors else ""
    return Outcome(mutant, valid, tuple(failures), first)


def _folder_fingerprint(folder: Path) -> tuple[tuple[str, ...], ...]:
    return tuple((p.name, *map(str, _fingerprint(p))) for p in sorted(folder.iterdir())) + (
        (str(sorted(os.listdir(folder))),),
    )
