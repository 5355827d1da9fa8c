"""The ``medalloc`` command line: one typer app, each command in its own module.

Each module exposes ``register(app)``; the simulate command imports Flower lazily so that
the core commands work where only ``medalloc_core`` is needed.
"""

from __future__ import annotations

import importlib
import logging

import typer

app = typer.Typer(
    name="medalloc",
    help="MedAlloc: federated, differentially private hospital demand forecasting and allocation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_COMMAND_MODULES = (
    "validate",
    "generate",
    "privacy",
    "forecast",
    "explain",
    "share",
    "allocate",
    "maintenance_plan",
    "simulate",
    "report",
    "audit",
    "node",
    "gateway",
)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug detail.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


for _name in _COMMAND_MODULES:
    importlib.import_module(f"{__name__}.{_name}").register(app)


def main() -> None:
    """Console-script entry point."""
    app()
