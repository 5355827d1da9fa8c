"""``medalloc validate SOURCE...``: check hospital files, OMOP databases and FHIR exports, read-only."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from medalloc.cli.tables import Table
from medalloc_core.contract import Problem
from medalloc_core.display import clean_display
from medalloc_core.equipment.validation import equipment_reports
from medalloc_core.sources import FORMATS, DataSource, MappingError, SourceData, inspect_source
from medalloc_core.validation import ValidationReport

# Lines of problems shown per file; the rest are counted, so a broken million-row file
# does not flood the terminal.
SHOWN_PER_FILE = 50
EXIT_INVALID = 2

logger = logging.getLogger(__name__)


def register(app: typer.Typer) -> None:
    """Add the ``validate`` command to the ``medalloc`` app."""
    app.command(name="validate")(validate)


def validate(
    sources: list[str] = typer.Argument(
        ...,
        help="Unit-records or encounter files (CSV/Parquet), equipment inventories, event logs or fleet folders "
        "(devices + events), OMOP CDM databases (sqlite:///FILE, "
        "postgresql://USER@HOST/DB, an SQLite file) or export folders, FHIR Bulk Data folders, NDJSON or Bundle files.",
        show_default=False,
        metavar="SOURCE...",
    ),
    source_format: str = typer.Option(
        "auto", "--format", help=f"What the sources are: {', '.join(FORMATS)} (auto tells them apart)."
    ),
    mapping: Path | None = typer.Option(
        None,
        "--mapping",
        help="Site mapping file (TOML, sections [omop]/[fhir]): which visits are stays, which care sites are units.",
    ),
    daily_out: Path | None = typer.Option(
        None,
        "--daily-out",
        help="Also write the daily unit records derived from the one SOURCE to this new CSV file (what forecast, "
        "allocate, share and explain read); only when SOURCE is valid, never over an existing file.",
    ),
) -> None:
    """Check hospital data against its rules (docs/data.md, docs/equipment.md); never modifies it.

    Databases are opened read-only. A fleet folder is checked file by file and the event log
    against the inventory. Exits 0 when every source is valid (warnings allowed) and 2 when any has an error.
    """
    console = Console(soft_wrap=True, highlight=False)
    if source_format not in FORMATS:
        console.print(
            f"[red]error: --format must be one of {', '.join(FORMATS)}, got {escape(repr(source_format))}[/red]"
        )
        raise typer.Exit(EXIT_INVALID)
    if daily_out is not None:
        _check_daily_out(console, daily_out, sources)
    try:
        named = [DataSource.of(s, format=source_format, mapping=mapping) for s in sources]  # type: ignore[arg-type]
    except MappingError as exc:
        console.print(f"[red]error: {escape(str(exc))}[/red]")
        raise typer.Exit(EXIT_INVALID) from None
    failed = checked = 0
    data: SourceData | None = None  # the last source's records, kept for --daily-out (one source)
    for source in named:
        data = None
        try:
            reports = _equipment(source)
            if not reports:
                report, data = inspect_source(source)
                reports = [report]
        except Exception as exc:  # noqa: BLE001 - a bug must still end as one line and exit 2, not a traceback
            logger.debug("validating %s failed", source.display, exc_info=True)
            message = f"could not be validated ({type(exc).__name__}: {exc}); run with --verbose for details"
            reports = [ValidationReport(source.display, [Problem(source.display, message)])]
        for report in reports:
            _show_report(console, report)
            failed += not report.ok
            checked += 1
    if checked > 1:
        style = "red" if failed else "green"
        console.print(f"[{style}]{checked - failed} of {checked} file(s) valid[/{style}]")
    if failed:
        raise typer.Exit(EXIT_INVALID)
    if daily_out is not None:
        _write_daily(console, named[0], data, daily_out)


def _fail(console: Console, message: str) -> NoReturn:
    console.print(f"[red]error: {escape(message)}[/red]")
    raise typer.Exit(EXIT_INVALID)


def _check_daily_out(console: Console, daily_out: Path, sources: list[str]) -> None:
    """Refuse an output that cannot be written before any source is read."""
    if len(sources) != 1:
        _fail(console, f"--daily-out writes one source's records; give one SOURCE, not {len(sources)}")
    if daily_out.exists() or daily_out.is_symlink():
        _fail(console, f"--daily-out {daily_out} already exists; choose a new file (nothing is overwritten)")
    parent = daily_out.parent
    if not parent.is_dir():
        _fail(console, f"--daily-out {daily_out}: folder {parent} does not exist; create it or choose another file")


def _write_daily(console: Console, source: DataSource, data: SourceData | None, daily_out: Path) -> None:
    """The valid source's daily unit records as a contract CSV (the derivation the node itself uses)."""
    from medalloc_core.allocation.forecast_io import write_dated_csv

    if data is None:  # valid, yet no records read: equipment data
        _fail(console, f"--daily-out: {source.display} is equipment data; it has no daily unit records")
    frame = data.records.frame
    try:
        write_dated_csv(frame, daily_out, columns=tuple(frame.columns), what="daily unit records")
    except OSError as exc:
        _fail(console, f"cannot write --daily-out {daily_out}: {exc}")
    console.print(f"wrote {escape(str(daily_out))}: {len(frame)} daily unit records of {escape(source.display)}")
    from medalloc_core.privacy.ledger import LedgerError
    from medalloc_core.privacy.source_registry import record_derived

    try:  # `medalloc share --data` on this file then spends from the source's ledger (issue 20)
        record_derived(daily_out, source.location)
    except (LedgerError, OSError) as exc:  # reset detected, or the record not written (a full disk)
        _fail(console, f"wrote {daily_out} but could not record where it comes from: {exc}")


def _equipment(source: DataSource) -> list[ValidationReport] | None:
    """Equipment data (a fleet folder, an inventory or an event log) by its own rules; None for anything else."""
    if source.format not in ("auto", "contract") or source.is_url:
        return None
    return equipment_reports(Path(source.location))


def _show_report(console: Console, report: ValidationReport) -> None:
    name = escape(str(report.path))
    errors, warnings = report.errors, report.warnings
    if report.ok:
        console.print(f"[green]OK[/green] {escape(name)}")
        console.print(_summary_table(report.summary))
    else:
        console.print(f"[red]INVALID[/red] {escape(name)}: {len(errors)} error(s), {len(warnings)} warning(s)")
    ordered = sorted(errors, key=_position) + sorted(warnings, key=_position)
    shown = ordered[:SHOWN_PER_FILE]
    # The per-check "... and N more row(s)" counts say how big the damage is: always show them.
    counts = [p for p in ordered[SHOWN_PER_FILE:] if p.row is None and p.column is not None]
    for problem in shown + counts:
        style = "red" if problem.severity == "error" else "yellow"
        console.print(f"[{style}]{escape(clean_display(problem))}[/{style}]")
    hidden = len(ordered) - len(shown) - len(counts)
    if hidden:
        console.print(f"... and {hidden} more problem(s) in {escape(name)} (fix the ones above and run again)")


def _position(problem: Problem) -> tuple[int, int, str]:
    """File-wide problems first, then by row, then the per-column "... and N more" counts."""
    if problem.row is None:
        return (2 if problem.column else 0, 0, problem.column or "")
    return (1, problem.row, problem.column or "")


def _summary_table(summary: dict[str, object]) -> Table:
    table = Table(show_header=False, box=None, padding=(0, 2))
    units = summary.get("units", [])
    shown = {
        "format": summary.get("format"),
        "shape": summary.get("shape"),
        "frequency": summary.get("frequency"),
        "units": f"{len(units)}: {', '.join(map(str, units))}" if isinstance(units, list) and units else None,
        "date range": f"{summary.get('date_start')} .. {summary.get('date_end')}",
        "rows": summary.get("rows"),
        "gaps": summary.get("gaps"),
    }
    events, types = summary.get("events"), summary.get("device_types")
    if isinstance(events, dict):
        shown["events"] = ", ".join(f"{k} {v}" for k, v in events.items())
    if isinstance(types, list):
        shown["devices"] = f"{summary.get('devices')} of types {', '.join(map(str, types))}"
        shown["date range"] = f"installed {summary.get('date_start')} .. {summary.get('date_end')}"
    elif "devices" in summary:
        shown["devices"] = summary["devices"]
    if "encounters" in summary:
        shown["stays (open)"] = f"{summary['encounters']} ({summary['open_stays']} open)"
    if summary.get("columns_ignored"):
        shown["ignored columns"] = ", ".join(map(str, summary["columns_ignored"]))  # type: ignore[call-overload]
    details = summary.get("details")
    if isinstance(details, list):  # OMOP and FHIR: what was read, what counts as a stay, what was left out
        shown.update({str(label): text for label, text in details})
    for key, value in shown.items():
        if value is not None:  # an equipment file has no frequency or gaps
            table.add_row(key, escape(str(value)))
    return table
