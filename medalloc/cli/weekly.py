"""``medalloc weekly``: this week's federation against the long-running SuperNodes, from last week's model.

The coordinator's schedule (docs/coordinator.md, "Every week"): a cron line or a systemd timer
runs this once a week. It names the week's results folder ``<results>/week-<ISO year>-W<week>``,
starts ``flwr run <app> <federation>`` with ``out-dir`` there and ``init-from`` the newest earlier
week that finished (its ``final_model``), so each week's model carries into the next; if this
week's folder already holds an unfinished run (a crash, a reboot) it continues it
(``resume=true``) instead, and a finished week is left alone. It waits for the run to end and
exits 0 only when it finished.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

EXIT_INVALID = 2
FINAL_MODEL_NAME = "final_model.safetensors"  # medalloc_core.model_io's name; not imported: it loads torch
_WEEK = re.compile(r"^week-(\d{4})-W(\d{2})$")
_out = Console(highlight=False, soft_wrap=True)


@dataclass(frozen=True)
class WeekPlan:
    """What this week's run does: its folder, the model it starts from, or that it continues or is done."""

    week: str  # "2026-W49"
    out_dir: Path
    init_from: Path | None  # the newest earlier finished week's folder
    resume: bool  # this week's run was started and did not finish
    done: bool  # this week's run finished already

    def run_config(self, extra: str = "") -> str:
        """The ``--run-config`` string for ``flwr run`` (TOML values)."""
        parts = [f"out-dir='{self.out_dir}'"]
        if self.resume:
            parts.append("resume=true")
        elif self.init_from is not None:
            parts.append(f"init-from='{self.init_from}'")
        return " ".join([*parts, *([extra] if extra.strip() else [])])


def iso_week(day: date) -> str:
    """``YYYY-Www`` of ``day`` (ISO 8601 week: the week's Monday decides the year)."""
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


def plan_week(results: Path, week: str) -> WeekPlan:
    """This week's plan from the folders in ``results`` (see the module doc); ``ValueError`` for a bad ``week``."""
    if not re.fullmatch(r"\d{4}-W\d{2}", week):
        raise ValueError(f"--week {week!r}: expected YYYY-Www, e.g. 2026-W49")
    out = results / f"week-{week}"
    done = (out / FINAL_MODEL_NAME).is_file()
    started = (out / "metrics.jsonl").is_file()
    earlier = sorted(
        (p for p in results.glob("week-*") if _WEEK.match(p.name) and p.name < out.name),
        key=lambda p: p.name,
    )
    finished = [p for p in earlier if (p / FINAL_MODEL_NAME).is_file()]
    return WeekPlan(
        week=week,
        out_dir=out,
        init_from=finished[-1] if finished else None,
        resume=started and not done,
        done=done,
    )


def _fail(message: str) -> None:
    Console(stderr=True, soft_wrap=True, highlight=False).print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(EXIT_INVALID)


def _status(flwr: str, federation: str, run_id: str, cwd: Path) -> str:
    result = subprocess.run(
        [flwr, "list", federation, "--run-id", run_id, "--format", "json"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    text = result.stdout
    try:
        return str(json.loads(text[text.index("{") :])["runs"][0]["status"])
    except (ValueError, KeyError, IndexError):
        return "unknown"


def weekly(
    app: Path = typer.Option(Path("."), "--app", help="The app's source folder (the release the hospitals approved)."),
    federation: str = typer.Option(..., "--federation", help="The SuperLink connection in flwr's config.toml."),
    results: Path = typer.Option(..., "--results", help="Folder holding one week-YYYY-Www folder per week."),
    run_config: str = typer.Option(
        "", "--run-config", help="More run-config keys for flwr run, e.g. 'num-server-rounds=3'."
    ),
    week: str | None = typer.Option(None, "--week", help="The week to run, YYYY-Www (default: this week, UTC)."),
    wait: float = typer.Option(6 * 3600.0, "--wait", help="Seconds to wait for the run to finish (0: do not wait)."),
    flwr: str = typer.Option("flwr", "--flwr", help="The flwr command."),
) -> None:
    """Run this week's federation from last week's model (flwr run with out-dir and init-from); once a week."""
    try:
        plan = plan_week(results, week or iso_week(datetime.now(UTC).date()))
    except ValueError as exc:
        _fail(str(exc))
        return
    if plan.done:
        _out.print(f"week {plan.week}: finished already ({plan.out_dir / FINAL_MODEL_NAME}); nothing to do")
        return
    if not (app / "pyproject.toml").is_file():
        _fail(f"--app {app}: no pyproject.toml; give the app's source folder")
    results.mkdir(parents=True, exist_ok=True)
    start = (
        f"continuing its unfinished run in {plan.out_dir}"
        if plan.resume
        else f"from {plan.init_from}"
        if plan.init_from
        else "from the run config's init (no earlier finished week)"
    )
    _out.print(f"week {plan.week}: starting the federation on {federation}, {start}")
    argv = [flwr, "run", str(app), federation, "--run-config", plan.run_config(run_config)]
    try:
        result = subprocess.run(argv, cwd=app, capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _fail(f"{' '.join(argv[:4])}: {exc}")
        return
    match = re.search(r"Successfully started run (\d+)", result.stdout)
    if result.returncode != 0 or match is None:
        _fail(f"flwr run failed (status {result.returncode}):\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
        return
    run_id = match[1]
    _out.print(f"week {plan.week}: run {run_id} started; results in {plan.out_dir}")
    if wait <= 0:
        return
    deadline = time.monotonic() + wait
    status = "unknown"
    while time.monotonic() < deadline:
        status = _status(flwr, federation, run_id, app)
        if status.startswith("finished"):
            break
        time.sleep(10)
    _out.print(f"week {plan.week}: run {run_id} {status}")
    if status != "finished:completed":
        # What the ServerApp said last (flwr log), so that the timer's log tells why the week failed.
        try:
            log = subprocess.run(
                [flwr, "log", run_id, federation, "--show"],
                cwd=app,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            _out.print("\n".join((log.stdout + log.stderr).splitlines()[-40:]), markup=False)
        except (OSError, subprocess.TimeoutExpired):
            pass
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``weekly`` to the medalloc app."""
    app.command("weekly")(weekly)
