"""Fuzz campaign over every `medalloc` command's inputs: CLI arguments, scenario TOML, model files and
sidecars, forecast/capacity/unit-config/shared tables, ledgers.

Run ``python -m fuzz.commands --cases 3000 --seed 0``. Each registered generator
(:mod:`fuzz.registry`) turns a seed into one invalid input for one command; a case
passes when the command, run in-process in an empty folder holding only the case's files,
exits 2 with an ``error`` message naming the expected file and field, prints no traceback,
leaves every input byte-identical, writes nothing and does not hang. Generators take turns, so
the cases spread evenly over them. Exits 1 if any case failed.

To cover a new command, add a ``gen_<area>.py`` module with ``@generator("command", "name")``
functions and list it in :data:`GENERATOR_MODULES` (``tests/test_fuzz_commands.py`` fails for a
command without a generator).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
from collections import defaultdict

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from .registry import GENERATORS, Case, Outcome, cases, generator, run_case

__all__ = ["GENERATORS", "GENERATOR_MODULES", "Case", "Outcome", "cases", "generator", "run_campaign", "run_case"]

# Every module that registers generators; importing this module registers them all.
GENERATOR_MODULES: tuple[str, ...] = (
    "gen_args",
    "gen_privacy",
    "gen_forecast",
    "gen_allocate",
    "gen_simulate",
    "gen_explain",
    "gen_node",
    "gen_equipment",
    "gen_nonfiles",
    "gen_plan_page",
)
for _module in GENERATOR_MODULES:
    importlib.import_module(f"{__package__}.{_module}")

EXAMPLE_WIDTH = 110


def run_campaign(total: int, seed: int, only: str | None = None, progress: Progress | None = None) -> list[Outcome]:
    """Run ``total`` cases (generators in turn, seeded by ``seed``); returns one outcome per case."""
    task = progress.add_task("fuzzing commands", total=total) if progress else None
    outcomes = []
    for _, case in cases(total, seed, only):
        outcomes.append(run_case(case))
        if progress is not None and task is not None:
            progress.advance(task)
    return outcomes


def _table(by_key: dict[str, list[Outcome]]) -> Table:
    table = Table(title="medalloc commands under invalid input")
    for name in ("generator", "cases", "exit 2, named, clean", "failed", "example message (or failure)"):
        last = name.startswith("example")
        table.add_column(
            name, justify="left" if name in ("generator",) or last else "right", no_wrap=True, overflow="ellipsis"
        )
    for key in sorted(by_key):
        outcomes = by_key[key]
        failed = [o for o in outcomes if not o.passed]
        example = "; ".join(failed[0].failures) if failed else outcomes[0].message
        table.add_row(
            key,
            str(len(outcomes)),
            str(len(outcomes) - len(failed)),
            f"[red]{len(failed)}[/red]" if failed else "0",
            escape(example[:EXAMPLE_WIDTH]),
        )
    every = [o for group in by_key.values() for o in group]
    failed_all = sum(not o.passed for o in every)
    table.add_section()
    table.add_row("all", str(len(every)), str(len(every) - failed_all), str(failed_all), "")
    return table


def main() -> None:
    """Run the campaign and print a table per generator, a table per command and every failure."""
    parser = argparse.ArgumentParser(description=" ".join((__doc__ or "").split("\n\n")[0].split()))
    parser.add_argument("--cases", type=int, default=3000, help="cases to run (default 3000)")
    parser.add_argument("--seed", type=int, default=0, help="campaign seed; same seed, same cases (default 0)")
    parser.add_argument("--only", default=None, help="only generators whose key starts with this (e.g. 'allocate/')")
    args = parser.parse_args()
    if args.cases < 1:
        parser.error("--cases must be at least 1")
    logging.disable(logging.WARNING)  # refused inputs log their warnings; the table is the output here
    console = Console(width=None if sys.stdout.isatty() else 220)
    start = time.perf_counter()
    by_key: dict[str, list[Outcome]] = defaultdict(list)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("fuzzing commands", total=args.cases)
        for key, case in cases(args.cases, args.seed, args.only):
            by_key[key].append(run_case(case))
            progress.advance(task)
    elapsed = time.perf_counter() - start
    console.print(_table(by_key))
    by_command: dict[str, list[Outcome]] = defaultdict(list)
    for key, outcomes in by_key.items():
        by_command[GENERATORS[key][0]].extend(outcomes)
    commands = Table(title="by command")
    for name in ("command", "generators", "cases", "passed"):
        commands.add_column(name, justify="left" if name == "command" else "right")
    for command in sorted(by_command):
        outcomes = by_command[command]
        generators = sum(GENERATORS[k][0] == command for k in by_key)
        commands.add_row(command, str(generators), str(len(outcomes)), str(sum(o.passed for o in outcomes)))
    console.print(commands)
    failed = [o for group in by_key.values() for o in group if not o.passed]
    for outcome in failed[:40]:
        case = outcome.case
        console.print(
            f"[red]FAILED[/red] {case.command} {escape(' '.join(case.argv))} ({escape(case.detail)}): "
            f"{escape('; '.join(outcome.failures))} | {escape(outcome.message)}",
            highlight=False,
        )
    total = sum(len(group) for group in by_key.values())
    console.print(
        f"tried {total} cases over {len(by_key)} generators and {len(by_command)} commands, "
        f"passed {total - len(failed)}, failed {len(failed)} (seed {args.seed}, {elapsed:.0f} s)",
        highlight=False,
    )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
