"""`medalloc report RESULTS_DIR`: one self-contained HTML page of a run, for planners and coordinators."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

_out = Console()
_err = Console(stderr=True)


def report(
    results: Path = typer.Argument(..., help="The results folder of `medalloc simulate` (holds summary.json)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Where to write the page (default RESULTS/report.html)."),
    force: bool = typer.Option(False, "--force", help="Replace a file at --out that is not an earlier report."),
) -> None:
    """Write one HTML page (images inlined, no network needed) with the run's scenario, accuracy, privacy spent per
    node, round curves, refusals, forecast fan charts and allocation plan."""
    from medalloc_core.report import ReportError, write_report

    try:
        path = write_report(results, out, force=force)
    except ReportError as exc:
        _err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None
    except OSError as exc:
        _err.print(f"[bold red]error:[/] cannot write the report: {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None
    _out.print(f"wrote {path} ({path.stat().st_size // 1024} KiB); open it in any browser, offline", highlight=False)


def register(app: typer.Typer) -> None:
    """Add `report` to the medalloc app."""
    app.command("report", help=" ".join((report.__doc__ or "").split()))(report)
