"""The ``medalloc`` command line: one typer app, each command in its own module.

Each module exposes ``register(app)``; the simulate command imports Flower lazily so that
the core commands work where only ``medalloc_core`` is needed.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re

import click
import typer
from typer.core import TyperCommand, TyperGroup

# Every command: its module (which registers it with ``register(app)``) and its one-line help.
# The module is imported only when the command runs (or its own --help is asked), so that
# `medalloc --help` and every command start without importing torch, Flower or pandas for the
# others; tests/test_cli_startup.py checks these lines against each command's own docstring.
COMMANDS: dict[str, tuple[str, str]] = {
    "validate": (
        "validate",
        "Check hospital data against its rules (docs/data.md, docs/equipment.md); never modifies it.",
    ),
    "generate": (
        "generate",
        "Generate a synthetic region: one file per hospital plus region.json with the true parameters.",
    ),
    "privacy": ("privacy", "Show a node's privacy ledger: each dataset, each spend, and the budget left."),
    "forecast": (
        "forecast",
        "Quantile forecasts per unit, day and target for the periods after your data ends (forecast.csv + "
        "forecast.png).",
    ),
    "explain": (
        "explain",
        "Attributions of a forecast to its input days and series (fan chart + heatmap PNG, JSON, plain words).",
    ),
    "share": (
        "share",
        "Add Gaussian DP noise to your census quantiles for the regional plan and record the epsilon in your ledger.",
    ),
    "allocate": (
        "allocate",
        "Staffed beds, nurses per shift and overflow risk per unit and day from a census forecast.",
    ),
    "plan-page": (
        "plan_page",
        "The bed manager's page: staffed beds, nurses and run-out risk per unit for the next 14 days, the fan chart, "
        "the plan's reasons and last week's forecast accountability (one HTML file, offline, phone-sized).",
    ),
    "allocate-region": (
        "allocate",
        "The coordinator's surge-pool and transfer plan from hospitals' shared census quantiles.",
    ),
    "maintenance-plan": (
        "maintenance_plan",
        "Choose this week's preventive services: the devices whose service prevents the most expected failures.",
    ),
    "simulate": (
        "simulate",
        "Simulate a federation of synthetic hospitals and compare it with local-only, centralized and classical "
        "baselines.",
    ),
    "report": (
        "report",
        "Write one HTML page (images inlined, no network needed) with the run's scenario, accuracy, privacy spent per "
        "node, round curves, refusals, forecast fan charts and allocation plan.",
    ),
    "audit": (
        "audit",
        "Audit DP training empirically: train with and without DP on canaries, attack both, compare with the ledger.",
    ),
    "node": (
        "node",
        "A hospital node its data owner controls: approved apps only, checked before joining (docs/hospital.md).",
    ),
    "weekly": (
        "weekly",
        "Run this week's federation from last week's model (flwr run with out-dir and init-from); once a week.",
    ),
    "gateway": (
        "gateway",
        "The Fleet gateway (nginx): the only thing hospitals reach; it forwards the Fleet API and refuses the rest.",
    ),
}


def load_command(name: str) -> click.Command:
    """The click command ``name``, importing only its own module."""
    module = importlib.import_module(f"{__name__}.{COMMANDS[name][0]}")
    holder = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    module.register(holder)
    # a second, hidden command keeps typer from collapsing the holder into its single command
    holder.command("zz-placeholder", hidden=True)(lambda: None)
    group = typer.main.get_command(holder)
    assert isinstance(group, click.Group)
    command = group.get_command(click.Context(group), name)
    if command is None:  # pragma: no cover - COMMANDS names a command its module does not register
        raise LookupError(f"medalloc.cli.{COMMANDS[name][0]} does not register {name!r}")
    for each in (command, *(command.commands.values() if isinstance(command, click.Group) else ())):
        if each.help:
            each.help = reflow(each.help)
    return command


_LIST_ITEM = re.compile(r"([-*•]|\d+[.)])\s")


def reflow(text: str) -> str:
    """A docstring as help text: each paragraph's source line breaks joined, so that the terminal, not the
    docstring's 100-column wrap, decides where lines end (typer keeps single newlines: at 80 columns a
    paragraph otherwise reads as alternating long and short lines). List items keep their own lines."""
    paragraphs = []
    for paragraph in re.split(r"\n\s*\n", inspect.cleandoc(text)):
        if paragraph.startswith("\b"):  # click's "do not rewrap" marker
            paragraphs.append(paragraph)
            continue
        lines: list[str] = []
        for line in paragraph.splitlines():
            stripped = line.strip()
            if lines and not _LIST_ITEM.match(stripped):
                lines[-1] += " " + stripped
            else:
                lines.append(stripped)
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


class _LazyGroup(TyperGroup):
    """The ``medalloc`` group: lists COMMANDS, imports a command's module only to run it."""

    _listing = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        if self._listing:  # the group's own --help: the one-line help, nothing imported
            return TyperCommand(cmd_name, help=COMMANDS[cmd_name][1], callback=None)
        return load_command(cmd_name)

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


app = typer.Typer(
    name="medalloc",
    cls=_LazyGroup,
    help="MedAlloc: federated, differentially private hospital demand forecasting and allocation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug detail.")) -> None:
    from medalloc.cli.terminal import clean_standard_streams

    clean_standard_streams()  # before logging binds stderr: names from files print without bidi controls
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


# The optional extras (pyproject.toml) by the top-level module each brings: a command that reaches
# one that is not installed says which extra to install, in one line, and exits 2.
EXTRA_OF_MODULE = {
    "captum": "explain",
    "fhir": "fhir",
    "sqlalchemy": "omop",
    "psycopg": "omop",
    "gymnasium": "rl",
    "stable_baselines3": "rl",
    "fracast": "zeroshot",
}


def missing_extra(exc: BaseException) -> tuple[str, str] | None:
    """(extra, module) when ``exc`` (or what caused it) is the import of an optional extra's module."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ImportError) and current.name:
            top = current.name.split(".")[0]
            if top in EXTRA_OF_MODULE:
                return EXTRA_OF_MODULE[top], top
        current = current.__cause__ or current.__context__
    return None


def main() -> None:
    """Console-script entry point."""
    import sys

    try:
        app()
    except Exception as exc:
        found = missing_extra(exc)
        if found is None:
            raise
        extra, module = found
        command = next((a for a in sys.argv[1:] if not a.startswith("-")), "")
        print(
            f"error: medalloc {command} needs the '{extra}' extra (Python module '{module}' is not installed):"
            f" in the MedAlloc source folder, python -m pip install -e '.[{extra}]'",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
