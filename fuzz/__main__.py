"""Fuzz campaign: thousands of malformed files through the loaders and ``medalloc validate``,
a table per mutation class (unit records, and equipment inventories and event logs in their fleet folders).

Run ``python -m fuzz --files 1400 --sources 460 --seed 0``. Every file is a seeded
mutation of a valid generated daily or encounter file (CSV or Parquet); it passes when
validate_file, load_unit_records and the CLI give a clear error naming the file (and the
row/column the class has) with exit 2, or exit 0 where an oracle shows the mutation left
the file valid, never a traceback, and the file is byte-identical afterwards. Every source
is a seeded malformed OMOP CDM (SQLite database, CSV export) or FHIR export (NDJSON folder,
Bundle); it passes when validate_source, load_source and the CLI name the file, the
row/line/entry, the record and the field, exit 2, and leave every file as it was. Exits 1
if anything failed.
"""

from __future__ import annotations

import argparse
import logging
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from .checks import Outcome, check, check_fleet, write_mutant
from .equipment import EQUIPMENT_MUTATIONS, mutate_equipment, write_fleet_mutant
from .mutations import MUTATIONS, Mutant, mutate
from .source_checks import SourceOutcome, check_source
from .source_mutations import SOURCE_MUTATIONS, mutate_source, write_source

#: Unit-record classes, then equipment classes (a fleet folder with one broken file).
CLASSES = (*MUTATIONS, *EQUIPMENT_MUTATIONS)


def mutate_any(mutation: str, rnd: random.Random) -> Mutant:
    """A mutant of any class of the campaign."""
    return mutate_equipment(mutation, rnd) if mutation in EQUIPMENT_MUTATIONS else mutate(mutation, rnd)


def check_any(mutant: Mutant, directory: Path, stem: str) -> tuple[Outcome, Path]:
    """Write and check one mutant (an equipment mutant inside its fleet folder); returns the outcome and its path."""
    if mutant.mutation in EQUIPMENT_MUTATIONS:
        folder, path = write_fleet_mutant(mutant, directory, stem)
        return check_fleet(mutant, folder, path), path
    path = write_mutant(mutant, directory, stem)
    return check(mutant, path), path


EXAMPLE_WIDTH = 100


def run_campaign(files: int, seed: int, progress: Progress | None = None) -> list[tuple[Outcome, float, str]]:
    """Mutate, write and check ``files`` files, classes in turn; returns (outcome, seconds, first error) per file."""
    classes = list(CLASSES)
    results = []
    task = progress.add_task("fuzzing", total=files) if progress else None
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(files):
            mutant = mutate_any(classes[k % len(classes)], random.Random(f"{seed}-{k}"))
            start = time.perf_counter()
            outcome, path = check_any(mutant, Path(tmp), f"file{k}")
            seconds = time.perf_counter() - start
            results.append((outcome, seconds, outcome.first_error.replace(str(path), "FILE")))
            if path.parent.name == f"file{k}":
                shutil.rmtree(path.parent)
            else:
                path.unlink()
            if progress and task is not None:
                progress.advance(task)
    return results


def run_source_campaign(
    count: int, seed: int, progress: Progress | None = None
) -> list[tuple[SourceOutcome, float, str]]:
    """Mutate, write and check ``count`` OMOP/FHIR sources, classes in turn."""
    classes = list(SOURCE_MUTATIONS)
    results = []
    task = progress.add_task("fuzzing sources", total=count) if progress else None
    for k in range(count):
        mutant = mutate_source(classes[k % len(classes)], random.Random(f"{seed}-source-{k}"))
        with tempfile.TemporaryDirectory() as tmp:
            location = write_source(mutant, Path(tmp))
            start = time.perf_counter()
            outcome = check_source(mutant, Path(tmp), location)
            seconds = time.perf_counter() - start
        results.append((outcome, seconds, outcome.first_error))
        if progress and task is not None:
            progress.advance(task)
    return results


def _source_table(results: list[tuple[SourceOutcome, float, str]]) -> Table:
    by_class: dict[str, list[tuple[SourceOutcome, float, str]]] = defaultdict(list)
    for result in results:
        by_class[result[0].mutant.mutation].append(result)
    table = Table(title="medalloc validate under malformed OMOP and FHIR records")
    for name, justify in (
        ("mutation class", "left"),
        ("sources", "left"),
        ("tried", "right"),
        ("passed", "right"),
        ("failed", "right"),
        ("ms/source", "right"),
        ("example error (or failure)", "left"),
    ):
        last = name.startswith("example")
        table.add_column(name, justify=justify, no_wrap=True, overflow="ellipsis" if last else "fold")  # type: ignore[arg-type]
    for name in SOURCE_MUTATIONS:
        rows = by_class.get(name, [])
        failed = [o for o, _, _ in rows if not o.passed]
        kinds = ", ".join(sorted({o.mutant.kind for o, _, _ in rows}))
        example = failed[0].failures[0] if failed else next((e for _, _, e in rows if e), "")
        table.add_row(
            name,
            kinds,
            str(len(rows)),
            str(len(rows) - len(failed)),
            f"[red]{len(failed)}[/red]" if failed else "0",
            f"{statistics.median(s for _, s, _ in rows) * 1000:.0f}" if rows else "-",
            escape(example[:EXAMPLE_WIDTH]),
        )
    passed = sum(o.passed for o, _, _ in results)
    table.add_section()
    median = f"{statistics.median(s for _, s, _ in results) * 1000:.0f}" if results else "-"
    table.add_row("all", "", str(len(results)), str(passed), str(len(results) - passed), median, "")
    return table


def _table(results: list[tuple[Outcome, float, str]]) -> Table:
    by_class: dict[str, list[tuple[Outcome, float, str]]] = defaultdict(list)
    for result in results:
        by_class[result[0].mutant.mutation].append(result)
    table = Table(title="medalloc validate under malformed input")
    for name, justify in (
        ("mutation class", "left"),
        ("tried", "right"),
        ("must fail", "right"),
        ("may pass", "right"),
        ("passed", "right"),
        ("failed", "right"),
        ("ms/file", "right"),
        ("example error (or failure)", "left"),
    ):
        last = name.startswith("example")
        table.add_column(name, justify=justify, no_wrap=True, overflow="ellipsis" if last else "fold")  # type: ignore[arg-type]
    for name in CLASSES:
        rows = by_class.get(name, [])
        failed = [o for o, _, _ in rows if not o.passed]
        must_fail = sum(o.mutant.expect.valid is False for o, _, _ in rows)
        example = failed[0].failures[0] if failed else next((e for _, _, e in rows if e), "")
        table.add_row(
            name,
            str(len(rows)),
            str(must_fail),
            str(len(rows) - must_fail),
            str(len(rows) - len(failed)),
            f"[red]{len(failed)}[/red]" if failed else "0",
            f"{statistics.median(s for _, s, _ in rows) * 1000:.0f}" if rows else "-",
            escape(example[:EXAMPLE_WIDTH]),
        )
    passed = sum(o.passed for o, _, _ in results)
    must_fail = sum(o.mutant.expect.valid is False for o, _, _ in results)
    table.add_section()
    table.add_row(
        "all",
        str(len(results)),
        str(must_fail),
        str(len(results) - must_fail),
        str(passed),
        str(len(results) - passed),
        f"{statistics.median(s for _, s, _ in results) * 1000:.0f}",
        "",
    )
    return table


def _base_table(results: list[tuple[Outcome, float, str]]) -> Table:
    table = Table(title="by base file")
    for name in ("base", "tried", "passed", "reported valid (exit 0)"):
        table.add_column(name, justify="left" if name == "base" else "right")
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for outcome, _, _ in results:
        row = counts[f"{outcome.mutant.kind} {outcome.mutant.fmt}"]
        row[0] += 1
        row[1] += outcome.passed
        row[2] += outcome.valid is True
    for base, (tried, passed, valid) in sorted(counts.items()):
        table.add_row(base, str(tried), str(passed), str(valid))
    return table


def main() -> None:
    """Run the campaign and print the per-class table, the per-base table and every failure."""
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--files", type=int, default=1400, help="files to generate and check (default 1400)")
    parser.add_argument("--seed", type=int, default=0, help="campaign seed; same seed, same files (default 0)")
    parser.add_argument(
        "--sources", type=int, default=460, help="malformed OMOP/FHIR sources to generate and check (default 460)"
    )
    args = parser.parse_args()
    if args.files < 1:
        parser.error("--files must be at least 1")
    if args.sources < 0:
        parser.error("--sources must be at least 0")
    # Accidentally valid files log their warnings on load; the table is the output here.
    logging.getLogger("medalloc_core.validation").setLevel(logging.ERROR)
    # Piped output (CI logs, reports) gets a wide table instead of one folded to 80 columns.
    console = Console(width=None if sys.stdout.isatty() else 220)
    start = time.perf_counter()
    logging.getLogger("medalloc_core.sources").setLevel(logging.ERROR)
    with Progress(console=console, transient=True) as progress:
        results = run_campaign(args.files, args.seed, progress)
        source_results = run_source_campaign(args.sources, args.seed, progress)
    elapsed = time.perf_counter() - start
    console.print(_table(results))
    console.print(_base_table(results))
    if source_results:
        console.print(_source_table(source_results))
    failed_sources = [o for o, _, _ in source_results if not o.passed]
    for source_outcome in failed_sources[:30]:
        sm = source_outcome.mutant
        console.print(
            f"[red]FAILED[/red] {sm.mutation} ({sm.kind}: {escape(sm.detail)}): "
            f"{escape('; '.join(source_outcome.failures))}"
        )
    failed = [o for o, _, _ in results if not o.passed]
    for outcome in failed[:30]:
        m = outcome.mutant
        console.print(
            f"[red]FAILED[/red] {m.mutation} ({m.kind} {m.fmt}: {escape(m.detail)}): "
            f"{escape('; '.join(outcome.failures))}"
        )
    console.print(
        f"tried {len(results)} files, passed {len(results) - len(failed)}, failed {len(failed)}; "
        f"{len(source_results)} sources, passed {len(source_results) - len(failed_sources)}, "
        f"failed {len(failed_sources)} (seed {args.seed}, {elapsed:.0f} s)"
    )
    sys.exit(1 if failed or failed_sources else 0)


if __name__ == "__main__":
    main()
