"""Run one malformed OMOP or FHIR source through the library and ``medalloc validate`` and list every broken promise.

The same promises as for files (checks.py): validating never raises and reports an error
naming the file, the record and the field the mutation class says; loading raises
``DataContractError`` and nothing else; the CLI exits 2 with an ``error:`` line, no
traceback, no crash fallback; and nothing in the source's folder changes or appears.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner

from medalloc.cli import app
from medalloc_core.contract import DataContractError
from medalloc_core.sources import load_source, validate_source

from .source_mutations import SourceMutant

_RUNNER = CliRunner()
_CRASH_MARKER = "could not be validated"


@dataclass(frozen=True)
class SourceOutcome:
    """What checking one source mutant found; ``failures`` is empty when every promise held."""

    mutant: SourceMutant
    failures: tuple[str, ...]
    first_error: str = ""

    @property
    def passed(self) -> bool:
        return not self.failures


def check_source(mutant: SourceMutant, root: Path, location: Path) -> SourceOutcome:
    """Check the mutant written under ``root`` (``location`` is what is validated)."""
    before = _snapshot(root)
    failures: list[str] = []
    names = tuple(n.replace("{root}", str(root)) for n in mutant.names)
    first = ""
    try:
        report = validate_source(str(location))
    except Exception as exc:  # noqa: BLE001 - any exception here is the bug being hunted
        failures.append(f"validate_source raised {type(exc).__name__}: {exc}")
    else:
        errors = [str(p) for p in report.errors]
        first = errors[0] if errors else ""
        if report.ok:
            failures.append("malformed source reported valid")
        elif not any(all(n in e for n in names) for e in errors):
            failures.append(f"no error names all of {list(names)}; got {first or '(none)'}")
        foreign = [p for p in report.problems if not p.file.startswith(str(location))]
        if foreign:
            failures.append(f"a problem names something outside the source: {foreign[0]}")
        if any(_CRASH_MARKER in e for e in errors):
            failures.append("validate_source fell back to the crash message")
    try:
        load_source(str(location))
    except DataContractError:
        pass
    except Exception as exc:  # noqa: BLE001 - only DataContractError may leave the loader
        failures.append(f"load_source raised {type(exc).__name__}: {exc}")
    else:
        failures.append("load_source accepted a malformed source")
    result = _RUNNER.invoke(app, ["validate", str(location)])
    output = " ".join(result.output.split())
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        failures.append(f"CLI raised {type(result.exception).__name__}: {result.exception}")
    if result.exit_code != 2:
        failures.append(f"CLI exit {result.exit_code}, expected 2: {output[:200]}")
    if "Traceback" in output or _CRASH_MARKER in output:
        failures.append(f"CLI printed a traceback or the crash fallback: {output[:200]}")
    if f"error: {location}" not in output:
        failures.append("CLI output has no 'error: SOURCE' line")
    if _snapshot(root) != before:
        failures.append("the source's files changed, or a file appeared beside them")
    return SourceOutcome(mutant, tuple(failures), first.replace(str(root), "ROOT"))


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its content hash."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }
