"""The registry of the command fuzz campaign: seeded case generators and the check each case must pass.

A generator turns a ``random.Random`` into one :class:`Case`: a ``medalloc`` command, its
arguments, the files to put in an empty folder first, and the substrings (file, field) the
error must contain. :func:`run_case` runs the command in-process in that folder and lists
every promise it breaks: exit status 2, an ``error`` message naming what ``expect`` lists,
no traceback or escaped exception, every input byte-identical, no file added, and no hang.

Add a generator anywhere under ``fuzz/gen_*.py`` with ``@generator("command",
"name")``; :mod:`fuzz.commands` imports every such module (see
/work/notes/security-notes.md and docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from typer.testing import CliRunner

EXIT_INVALID = 2
# A bad input must be refused before any real work starts; a case still running after this
# long is reported as a hang (`simulate` with client-cpus = nan used to wait forever on Ray).
CASE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Case:
    """One invalid input for one command.

    Attributes
    ----------
    command
        The ``medalloc`` subcommand, words separated by spaces (``"gateway config"``).
    argv
        Its arguments; paths are relative to the case's folder (the working directory).
    files
        Files written into the folder first (relative path -> bytes); they must stay byte-identical.
    expect
        Substrings the output must contain (whitespace-normalised): the file and the field.
    detail
        What was broken, for failure reports.
    """

    command: str
    argv: tuple[str, ...]
    files: dict[str, bytes] = field(default_factory=dict)
    expect: tuple[str, ...] = ()
    detail: str = ""


Generator = Callable[[random.Random], Case]
GENERATORS: dict[str, tuple[str, Generator]] = {}  # "command/name" -> (command, generator)


def generator(command: str, name: str) -> Callable[[Generator], Generator]:
    """Register the decorated function as the generator ``name`` of ``command``."""

    def register(fn: Generator) -> Generator:
        key = f"{command}/{name}"
        if key in GENERATORS:
            raise ValueError(f"generator {key} registered twice")
        GENERATORS[key] = (command, fn)
        return fn

    return register


@dataclass(frozen=True)
class Outcome:
    """What running one case found; ``failures`` is empty when every promise held."""

    case: Case
    failures: tuple[str, ...]
    message: str

    @property
    def passed(self) -> bool:
        return not self.failures


@contextlib.contextmanager
def _cwd(path: Path) -> Iterator[None]:
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


class CaseTimeout(Exception):
    """Raised inside a case that runs past :data:`CASE_TIMEOUT_S`."""


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Interrupt the main thread after ``seconds`` (SIGALRM); a no-op off the main thread."""

    def _raise(signum: int, frame: FrameType | None) -> None:
        raise CaseTimeout(f"still running after {seconds:g} s")

    try:
        previous = signal.signal(signal.SIGALRM, _raise)
    except ValueError:  # not the main thread
        yield
        return
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


def run_case(case: Case, *, timeout: float = CASE_TIMEOUT_S) -> Outcome:
    """Run ``medalloc <command> <argv>`` in-process in a fresh folder; list every broken promise."""
    from medalloc.cli import app

    failures: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, data in case.files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
        before = _snapshot(root)
        with _cwd(root), _deadline(timeout):
            result = CliRunner().invoke(app, [*case.command.split(), *case.argv])
        output = result.output
        if isinstance(result.exception, CaseTimeout):
            failures.append(f"hung: {result.exception}")
        elif result.exception is not None and not isinstance(result.exception, SystemExit):
            failures.append(f"raised {type(result.exception).__name__}: {result.exception}")
        if "Traceback" in output:
            failures.append("printed a traceback")
        if result.exit_code != EXIT_INVALID:
            failures.append(f"exit {result.exit_code}, expected {EXIT_INVALID}")
        flat = " ".join(output.split())
        if "error" not in flat.lower():
            failures.append("no error message")
        for wanted in case.expect:
            if " ".join(wanted.split()) not in flat:
                failures.append(f"message does not name {wanted!r}")
        after = _snapshot(root)
        changed = sorted(k for k in before if after.get(k) != before[k])
        added = sorted(set(after) - set(before))
        if changed:
            failures.append(f"inputs changed: {changed[:3]}")
        if added:
            failures.append(f"wrote {added[:3]}")
    return Outcome(case, tuple(failures), flat[:400])


def cases(total: int, seed: int, only: str | None = None) -> Iterator[tuple[str, Case]]:
    """``total`` cases, generators in turn (sorted by key), each seeded by (seed, index, key)."""
    keys = sorted(k for k in GENERATORS if only is None or k.startswith(only))
    if not keys:
        raise ValueError(f"no generator key starts with {only!r}")
    for index in range(total):
        key = keys[index % len(keys)]
        yield key, GENERATORS[key][1](random.Random(f"{seed}-{index}-{key}"))


# ---------------------------------------------------------------------------- helpers for generators

# Numbers no option of a count, rate or size accepts (typer turns "nan"/"inf" into floats).
BAD_FLOATS: tuple[str, ...] = ("nan", "inf", "-inf", "-1", "0", "1e309", "-0", "abc", "", "1e-320")


def pick(rng: random.Random, values: Sequence[str]) -> str:
    """One of ``values``."""
    return values[rng.randrange(len(values))]


def argv(options: Mapping[str, str | None]) -> tuple[str, ...]:
    """``{"--a": "1", "--flag": None}`` -> ``("--a", "1", "--flag")``."""
    out: list[str] = []
    for option, value in options.items():
        out.append(option)
        if value is not None:
            out.append(value)
    return tuple(out)
