"""Fuzz campaign over every `medalloc` command's inputs: a registry of seeded case generators.

Run ``python -m medalloc.fuzz.commands --cases 2000 --seed 0``. Each generator turns a
seed into one bad input for one command (arguments, and the files it reads: ledgers, model
files, CSVs, TOML) together with what the error must name. A case passes when the command,
run in-process in an empty folder holding only the case's files, exits 2 with an
``error:`` line naming the expected file/field, prints no traceback, leaves every input
byte-identical and writes nothing. Exits 1 if any case failed.

Adding a command: write a generator function ``(rng: random.Random) -> Case`` and decorate it
with ``@generator("command", "name")`` in this module or one that imports it
(/work/notes/security-notes.md; ``test_every_command_has_a_generator`` fails until you do).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import os
import random
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.testing import CliRunner

EXIT_INVALID = 2


@dataclass(frozen=True)
class Case:
    """One bad input for one command.

    Attributes
    ----------
    command
        The ``medalloc`` subcommand (``"share"``, ``"gateway start"`` is ``"gateway"``).
    argv
        Its arguments; paths are relative to the case's folder (the working directory).
    files
        Files to write into the folder first (relative path -> bytes).
    expect
        Substrings the error output must contain (the file and the field it names).
    detail
        What was done, for failure reports.
    """

    command: str
    argv: tuple[str, ...]
    files: dict[str, bytes] = field(default_factory=dict)
    expect: tuple[str, ...] = ()
    detail: str = ""


Generator = Callable[[random.Random], Case]
GENERATORS: dict[str, tuple[str, Generator]] = {}  # "command/name" -> (command, generator)


def generator(command: str, name: str) -> Callable[[Generator], Generator]:
    """Register ``fn`` as the generator ``name`` of ``command``."""

    def register(fn: Generator) -> Generator:
        key = f"{command}/{name}"
        if key in GENERATORS:
            raise ValueError(f"generator {key} registered twice")
        GENERATORS[key] = (command, fn)
        return fn

    return register


# ---------------------------------------------------------------------------- running a case


@dataclass(frozen=True)
class Outcome:
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


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


def run_case(case: Case) -> Outcome:
    """Run ``medalloc <command> <argv>`` in-process in a fresh folder; list every broken promise."""
    from medalloc.cli import app

    failures: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, data in case.files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
        before = _snapshot(root)
        with _cwd(root):
            result = CliRunner().invoke(app, [*case.command.split(), *case.argv])
        output = result.output
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            failures.append(f"raised {type(result.exception).__name__}: {result.exception}")
        if "Traceback" in output:
            failures.append("printed a traceback")
        if result.exit_code != EXIT_INVALID:
            failures.append(f"exit {result.exit_code}, expected {EXIT_INVALID}")
        flat = " ".join(output.split())
        if "error" not in flat.lower():
            failures.append("no error message")
        for wanted in case.expect:
            if wanted not in flat:
                failures.append(f"message does not name {wanted!r}")
        after = _snapshot(root)
        changed = sorted(k for k in before if after.get(k) != before[k])
        added = sorted(set(after) - set(before))
        if changed:
            failures.append(f"inputs changed: {changed[:3]}")
        if added:
            failures.append(f"wrote {added[:3]}")
    return Outcome(case, tuple(failures), " ".join(output.split())[:300])


def cases(total: int, seed: int, only: str | None = None) -> Iterator[tuple[str, Case]]:
    """``total`` cases, generators in turn, each seeded by (seed, index)."""
    keys = [k for k in GENERATORS if only is None or k.startswith(only)]
    for index in range(total):
        key = keys[index % len(keys)]
        yield key, GENERATORS[key][1](random.Random(f"{seed}-{index}-{key}"))


# ---------------------------------------------------------------------------- shared bad values

BAD_FLOATS = ("nan", "inf", "-inf", "-1", "0", "1e309", "-0", "abc", "", "1e-320")


def _pick(rng: random.Random, values: tuple[str, ...]) -> str:
    return values[rng.randrange(len(values))]


# ---------------------------------------------------------------------------- generate


@generator("generate", "args")
def _generate_args(rng: random.Random) -> Case:
    field_name, values = rng.choice(
        [
            ("--hospitals", ("0", "-3", "100000000", "1001", "1.5", "x")),
            ("--days", ("0", "27", "100000000", "-1", "x", "18263")),
            ("--start", ("9999-12-01", "0001-01-01", "2023-02-30", "yesterday", "", "1678-06-01", "2261-12-30")),
            ("--shape", ("weekly", "", "DAILY")),
            ("--format", ("xlsx", "", "CSV")),
            ("--seed", ("-1", "x", "1.5")),
        ]
    )
    value = _pick(rng, values)
    argv = {"--hospitals": "2", "--days": "60", "--out": "region"}
    argv[field_name] = value
    expect = (field_name.lstrip("-").split("-")[0],) if field_name not in ("--seed",) else ()
    return Case(
        "generate", tuple(x for kv in argv.items() for x in kv), expect=expect, detail=f"{field_name} {value!r}"
    )


# ---------------------------------------------------------------------------- audit


@generator("audit", "args")
def _audit_args(rng: random.Random) -> Case:
    option = rng.choice(["--noise-multiplier", "--max-grad-norm"])
    value = _pick(rng, ("nan", "inf", "-inf", "-1", "0", "1e309", "-0"))
    return Case("audit", ("--quick", "--out", "audit", option, value), expect=(option,), detail=f"{option} {value}")


# ---------------------------------------------------------------------------- ledgers (privacy, share)


def _ledger_files(
    rng: random.Random, mutate: Callable[[dict], None] | None, *, raw: bytes | None = None, keep_key: bool = True
) -> dict[str, bytes]:
    """A real version-2 ledger (one spend) as files, its body mutated and re-authenticated with its own key.

    Re-authenticating means the bad values reach the parser behind the checksum, as they
    would from a buggy writer; ``raw`` replaces the whole file instead.
    """
    from medalloc_core.privacy.ledger import PrivacyLedger, ledger_key_path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ledger.json"
        ledger = PrivacyLedger.open(path, epsilon_budget=8.0, delta=1e-5, accountant="rdp")
        ledger.spend("a" * 64, noise_multiplier=1.0, sample_rate=0.05, steps=100, run_id="r1")
        key_text = ledger_key_path(path).read_bytes()
        document = json.loads(path.read_text())
    if mutate is not None:
        mutate(document["body"])
        key = bytes.fromhex(key_text.decode().strip())
        canonical = json.dumps(document["body"], sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
        document["body_hmac_sha256"] = hmac.new(key, canonical, hashlib.sha256).hexdigest()
    data = raw if raw is not None else json.dumps(document).encode()
    files = {"ledger.json": data}
    if keep_key:
        files["ledger.json.key"] = key_text
    return files


def _set_spend(name: str, value: object) -> Callable[[dict], None]:
    def mutate(body: dict) -> None:
        next(iter(body["entries"].values()))[0][name] = value

    return mutate


def _set_body(name: str, value: object) -> Callable[[dict], None]:
    def mutate(body: dict) -> None:
        body[name] = value

    return mutate


def _bad_ledger(rng: random.Random) -> tuple[dict[str, bytes], str]:
    kind = rng.randrange(9)
    if kind == 0:
        return _ledger_files(rng, None, raw=b"[" * rng.choice([1000, 100_000])), "deep nesting"
    if kind == 1:
        good = _ledger_files(rng, None)["ledger.json"]
        return _ledger_files(rng, None, raw=good[: rng.randrange(len(good))]), "truncated"
    if kind == 2:
        return _ledger_files(rng, None, raw=os.urandom(rng.randrange(1, 2000))), "random bytes"
    if kind == 3:
        return _ledger_files(rng, None, keep_key=False), "key missing"
    if kind == 4:  # an edit without the key (the recomputed-SHA-256 attack)
        good = json.loads(_ledger_files(rng, None)["ledger.json"])
        good["body"]["entries"] = {}
        return {
            "ledger.json": json.dumps(good).encode(),
            "ledger.json.key": _ledger_files(rng, None)["ledger.json.key"],
        }, "edited without the key"
    if kind == 5:
        name = rng.choice(["noise_multiplier", "sample_rate", "steps"])
        value = rng.choice(
            {
                "noise_multiplier": [1e-300, 0, -1, 1e308, "x", None, True],
                "sample_rate": [0, -1, 1.5, 1e308, "x", None, True, 1e-320 * 0],
                "steps": [-1, 1.5, "x", None, True, 2**70],
            }[name]
        )
        return _ledger_files(rng, _set_spend(name, value)), f"spend {name}={value!r}"
    if kind == 6:
        name = rng.choice(["delta", "epsilon_budget", "accountant", "created", "entries", "budget_changes"])
        # Only values the field cannot hold ({} is an empty, valid entries table, [] a valid change list).
        invalid = {
            "entries": [0, "x", None, [], 1.5],
            "budget_changes": [0, "x", None, {}, [1]],
            "created": [0, None, [], {}, 1.5],
            "epsilon_budget": [0, -1, "x", None, [], {}, True],
        }.get(name, [0, -1, 1e308, "x", None, [], {}, True])
        value = rng.choice(invalid)
        return _ledger_files(rng, _set_body(name, value)), f"body {name}={value!r}"
    if kind == 7:
        return _ledger_files(rng, _set_spend("run_id", 7)), "run_id not a string"
    return _ledger_files(
        rng, None, raw=b'{"format": "medalloc-privacy-ledger", "version": 2, "body": {}, "body_hmac_sha256": "00"}'
    ), "empty body"


@generator("privacy", "ledger")
def _privacy_ledger(rng: random.Random) -> Case:
    files, detail = _bad_ledger(rng)
    return Case("privacy", ("--ledger", "ledger.json"), files, expect=("ledger.json",), detail=detail)


@generator("privacy", "args")
def _privacy_args(rng: random.Random) -> Case:
    target = rng.choice(["missing.json", "folder", "ledger.json"])
    files = {"folder/x": b""} if target == "folder" else {}
    if target == "ledger.json":
        files, detail = _bad_ledger(rng)
        return Case(
            "privacy", ("--ledger", "ledger.json", "--json"), files, expect=("ledger.json",), detail=f"--json, {detail}"
        )
    return Case("privacy", ("--ledger", target), files, expect=(target,), detail=f"--ledger {target}")


# ---------------------------------------------------------------------------- share


@generator("share", "args")
def _share_args(rng: random.Random) -> Case:
    option, values = rng.choice(
        [
            ("--epsilon", ("0", "-1", "nan", "inf", "710", "1e308", "100.5")),
            ("--sensitivity", ("inf", "nan", "0", "-1", "-inf")),
            ("--delta", ("0", "1", "nan", "-1", "2", "inf")),
            ("--epsilon-budget", ("0", "-1", "nan", "inf")),
        ]
    )
    value = _pick(rng, values)
    argv = {
        "--forecast": "forecast.csv",
        "--data": "H000.csv",
        "--ledger": "ledger.json",
        "--epsilon": "1.0",
        "--out": "shared.csv",
        option: value,
    }
    files = {"forecast.csv": b"hospital,unit,date,target,q,value\n", "H000.csv": b"date,unit,census\n"}
    return Case(
        "share", tuple(x for kv in argv.items() for x in kv), files, expect=(option,), detail=f"{option} {value}"
    )


# ---------------------------------------------------------------------------- campaign


def main() -> None:
    """Run the campaign and print a table per generator and every failure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2000, help="cases to run (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="campaign seed (default 0)")
    parser.add_argument("--only", default=None, help="run only generators whose key starts with this (e.g. 'share')")
    args = parser.parse_args()
    import logging

    logging.disable(logging.WARNING)
    console = Console(width=None if sys.stdout.isatty() else 200)
    start = time.perf_counter()
    by_key: dict[str, list[Outcome]] = defaultdict(list)
    for key, case in cases(args.cases, args.seed, args.only):
        by_key[key].append(run_case(case))
    table = Table(title="medalloc commands under bad input")
    for name in ("generator", "cases", "passed", "failed", "example message (or failure)"):
        table.add_column(name, justify="left" if name in ("generator", "example message (or failure)") else "right")
    for key, outcomes in by_key.items():
        failed = [o for o in outcomes if not o.passed]
        example = "; ".join(failed[0].failures) if failed else outcomes[0].message
        table.add_row(
            key,
            str(len(outcomes)),
            str(len(outcomes) - len(failed)),
            f"[red]{len(failed)}[/red]" if failed else "0",
            escape(example[:110]),
        )
    every = [o for os_ in by_key.values() for o in os_]
    failed = [o for o in every if not o.passed]
    console.print(table)
    for outcome in failed[:40]:
        console.print(
            f"FAILED {outcome.case.command} {escape(' '.join(outcome.case.argv))} ({escape(outcome.case.detail)}): "
            f"{escape('; '.join(outcome.failures))} | {escape(outcome.message)}",
            highlight=False,
        )
    console.print(
        f"tried {len(every)} cases, passed {len(every) - len(failed)}, failed {len(failed)} "
        f"(seed {args.seed}, {time.perf_counter() - start:.0f} s)"
    )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
