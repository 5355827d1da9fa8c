"""`medalloc explain`: why the shared model forecasts what it does for this hospital, computed on this machine."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pandas as pd
import typer
from rich.console import Console
from rich.markup import escape

from medalloc.cli.data_option import DATA_HELP, MAPPING_HELP, is_path_input, one_line, read_records
from medalloc.cli.tables import Table
from medalloc_core.contract import CENSUS, DataContractError

logger = logging.getLogger(__name__)
_out = Console()
_err = Console(stderr=True)
EXPLANATION_FILE = "explanation.json"


def _fail(message: str) -> None:
    _err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def _png_name(unit: str, taken: set[str]) -> str:
    """explain_<unit>.png with anything but letters, digits, '.', '_' and '-' replaced (unit names are free text)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", unit).strip("._") or "unit"
    name, k = f"explain_{stem}.png", 2
    while name in taken:
        name, k = f"explain_{stem}_{k}.png", k + 1
    taken.add(name)
    return name


def explain(
    model: Path = typer.Option(
        ..., "--model", "-m", help="The shared model: final_model.safetensors, a results folder or a checkpoint."
    ),
    data: str = typer.Option(..., "--data", "-d", help=DATA_HELP, show_default=False),
    mapping: Path | None = typer.Option(None, "--mapping", help=MAPPING_HELP),
    unit: list[str] | None = typer.Option(
        None, "--unit", "-u", help="Unit to explain (repeatable); default every unit."
    ),
    date: str | None = typer.Option(
        None, "--date", help="Forecast origin YYYY-MM-DD: the last day the model reads (default: the file's last day)."
    ),
    target: str = typer.Option(CENSUS, "--target", help="What to explain: census (default) or admissions."),
    level: float | None = typer.Option(
        None, "--level", help="Quantile level to explain, e.g. 0.9 for the P90 (default: the model's highest)."
    ),
    method: str = typer.Option(
        "integrated-gradients", "--method", help="integrated-gradients (default) or occlusion (blocks of 7 days)."
    ),
    out: Path = typer.Option(
        Path("explain"), "--out", "-o", help="Folder for explanation.json and explain_<unit>.png."
    ),
    hospital: str | None = typer.Option(None, "--hospital", help="Name in the forecast (default: the file's name)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing explanation in --out."),
    region: Path | None = typer.Option(
        None,
        "--region",
        help="For a model trained with the region (context 'region'): the node's stored region, "
        "<ledger>.released.csv.region.json (the other hospitals' released totals its coordinator last sent).",
    ),
) -> None:
    """Attributions of a forecast to its input days and series (fan chart + heatmap PNG, JSON, plain words)."""
    from medalloc_core.atomic import atomic_write_bytes
    from medalloc_core.forecast.explain import METHODS, ExplainError, explain_forecast
    from medalloc_core.forecast.explain.plot import plot_explanation
    from medalloc_core.forecast.predict import ModelDataMismatch
    from medalloc_core.forecast.region_store import RegionStoreError, join_stored_region, read_region, reads_region
    from medalloc_core.model_io import ModelFileError, load_model

    if method not in METHODS:
        _fail(f"--method must be one of {list(METHODS)}, got '{method}'")
    if level is not None and not 0 < level < 1:
        _fail(f"--level must be a quantile level in (0, 1), e.g. 0.9; got {level}")
    origin = None
    if date is not None:
        origin = pd.to_datetime(date, format="%Y-%m-%d", errors="coerce")
        if pd.isna(origin):
            _fail(f"--date '{date}' is not a date YYYY-MM-DD")
    json_path = out / EXPLANATION_FILE
    inputs = {p.resolve() for p in (is_path_input(data), model) if p is not None}
    if json_path.resolve() in inputs:
        _fail(f"{json_path} is one of the inputs; choose another --out")
    if json_path.exists() and not force:
        _fail(f"{json_path} already exists; pass --force to replace it, or choose another --out")
    try:
        saved = load_model(model)
        read = read_records(data, mapping)
        records = read.records
        if reads_region(saved.spec):  # the region the node's rounds read, kept beside its release
            if region is None:
                _fail(
                    "the model reads the region (context 'region'); give --region, the node's stored region "
                    "(<ledger>.released.csv.region.json): without it the explanation would be of another forecast"
                )
                return
            records = join_stored_region(records, saved.spec, read_region(region))
        explanations = explain_forecast(
            saved.model,
            saved.spec,
            records,
            hospital=hospital or read.name,
            units=list(unit) if unit else None,
            date=origin,
            target=target,
            level=level,
            method=method,
        )
    except DataContractError as exc:
        _fail(one_line(data, exc))
        return
    except (ModelFileError, ModelDataMismatch, ExplainError, RegionStoreError) as exc:
        _fail(str(exc))
        return
    taken: set[str] = set()
    names = [_png_name(ex.unit, taken) for ex in explanations]
    for name in names:
        if (out / name).resolve() in inputs:
            _fail(f"{out / name} is one of the inputs; choose another --out")
        if (out / name).exists() and not force:
            _fail(f"{out / name} already exists; pass --force to replace it, or choose another --out")
    payload = {
        "model": str(saved.path),
        "data": read.source.display,
        "computed": "on this machine; nothing was sent anywhere",
        "explanations": [ex.to_dict() | {"png": name} for ex, name in zip(explanations, names)],
    }
    try:
        for ex, name in zip(explanations, names):
            plot_explanation(ex, out / name)
        atomic_write_bytes(json_path, (json.dumps(payload, indent=2, allow_nan=False) + "\n").encode("utf-8"))
    except OSError as exc:
        _fail(f"cannot write the explanation to {out}: {exc}")
    for ex, name in zip(explanations, names):
        table = Table(
            title=f"{ex.unit}: what drives the {ex.level_name} of {ex.target} (forecast from {ex.origin.date()})"
        )
        for column in ("inputs", "share", ex.unit_of_measure):
            table.add_column(column, justify="left" if column == "inputs" else "right")
        for g in ex.groups[:5]:
            table.add_row(escape(g.phrase), f"{g.share:.0%}", f"{g.contribution:+.1f}")
        _out.print(table)
        for line in ex.words:
            _out.print(escape(line), highlight=False)
        _out.print(f"picture: {out / name}", highlight=False)
    _out.print(f"wrote {json_path}; computed on this machine, nothing was sent anywhere", highlight=False)


def register(app: typer.Typer) -> None:
    """Add `explain` to the medalloc app."""
    app.command("explain")(explain)
