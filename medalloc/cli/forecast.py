"""`medalloc forecast`: apply the federation's shared model to this hospital's own records."""

from __future__ import annotations

import logging
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import numpy as np
import pandas as pd
import typer
from rich.console import Console
from rich.markup import escape

from medalloc.cli.data_option import DATA_HELP, MAPPING_HELP, is_path_input, one_line, read_records
from medalloc.cli.tables import Table
from medalloc_core.contract import DATE, UNIT, DataContractError

if TYPE_CHECKING:
    from medalloc_core.forecast.region_store import StoredRegion

logger = logging.getLogger(__name__)
_out = Console()
_err = Console(stderr=True)


def _fail(message: str) -> NoReturn:
    _err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def _summary(frame: pd.DataFrame, levels: tuple[float, ...]) -> Table:
    from medalloc_core.allocation.forecast_io import TARGET, VALUE, Q

    lo, hi = levels[0], levels[-1]
    mid = min(levels, key=lambda q: abs(q - 0.5))
    table = Table(title="Forecast (mean over the horizon)")
    for name in ("unit", "target", "from", "to", f"P{lo * 100:g}", f"P{mid * 100:g}", f"P{hi * 100:g}"):
        table.add_column(name, justify="left" if name in ("unit", "target") else "right")
    for (unit, target), g in frame.groupby([UNIT, TARGET], sort=True):
        means = g.groupby(Q)[VALUE].mean()
        table.add_row(
            escape(str(unit)),
            escape(str(target)),
            str(g[DATE].min().date()),
            str(g[DATE].max().date()),
            f"{means[lo]:.1f}",
            f"{means[mid]:.1f}",
            f"{means[hi]:.1f}",
        )
    return table


def forecast(
    model: Path = typer.Option(
        ...,
        "--model",
        "-m",
        help="The shared model: final_model.safetensors, a results folder or a checkpoint (file or folder).",
    ),
    data: str = typer.Option(..., "--data", "-d", help=DATA_HELP, show_default=False),
    mapping: Path | None = typer.Option(None, "--mapping", help=MAPPING_HELP),
    out: Path = typer.Option(Path("forecast"), "--out", "-o", help="Folder for forecast.csv and forecast.png."),
    hospital: str | None = typer.Option(
        None, "--hospital", help="Name in the hospital column (default: the data file's name without extension)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing forecast.csv / forecast.png in --out."),
    release: Path | None = typer.Option(
        None,
        "--release",
        help="This node's released-counts file (<ledger>.released.csv): the bands, learned on released counts, "
        "are scaled to the true counts' as measured on the validation days, as the evaluation scores them. "
        "Without it the bands are as learned.",
    ),
    node_config: Path | None = typer.Option(
        None,
        "--node-config",
        help="The node's node.toml: the run is added to the node's forecast log (<ledger-path>.forecasts.json, "
        "local, never sent) with the model version, and its hospital-id names the hospital.",
    ),
    forecast_log: Path | None = typer.Option(
        None,
        "--forecast-log",
        help="Add the run to this forecast log instead (default with --node-config: beside the ledger).",
    ),
    region: Path | None = typer.Option(
        None,
        "--region",
        help="For a model trained with the region (context 'region'): the node's stored region, the other "
        "hospitals' released totals its coordinator last sent (default: <release>.region.json beside --release, "
        "or beside the release of --node-config).",
    ),
    zero_shot_weight: float = typer.Option(
        0.0,
        "--zero-shot-weight",
        min=0.0,
        max=1.0,
        help="Mix the model's quantiles with the free zero-shot model fracast's, computed here from the same "
        "records: fracast's share, 0 to 1 (the benchmarks score 0.5; needs the zeroshot extra: "
        "python -m pip install -e '.[zeroshot]'). 0: the model alone.",
    ),
) -> None:
    """Quantile forecasts per unit, day and target for the periods after your data ends
    (forecast.csv + forecast.png)."""
    from medalloc_core.allocation.forecast_io import write_forecast
    from medalloc_core.forecast.plot import plot_forecast
    from medalloc_core.forecast.predict import ModelDataMismatch, forecast_records
    from medalloc_core.forecast.region_store import RegionStoreError, join_stored_region, reads_region
    from medalloc_core.model_io import ModelFileError, load_model

    csv_path, png_path = out / "forecast.csv", out / "forecast.png"
    taken = next((a for a in (out, *out.parents) if a.exists()), None)
    if taken is not None and not taken.is_dir():
        _fail(f"--out {out}: {taken} is a file, not a folder; choose another --out")
    for path in (csv_path, png_path):
        if path.resolve() in {p.resolve() for p in (is_path_input(data), model) if p is not None}:
            _fail(f"{path} is one of the inputs; choose another --out")
        if path.exists() and not force:
            _fail(f"{path} already exists; pass --force to replace it, or choose another --out")
    log_path, node_hospital, node_release = _forecast_log(node_config, forecast_log)
    if log_path is not None:
        from medalloc_core.forecast.history import ForecastLogError, read_log

        try:
            read_log(log_path)  # a damaged log stops the run before anything is written
        except ForecastLogError as exc:
            _fail(str(exc))
    hospital = hospital or node_hospital
    noise_sd = released = None
    if release is not None:
        from medalloc_core.privacy.release import ReleaseStore, ReleaseStoreError

        if not release.is_file():
            from medalloc_core.paths import why_not_a_file

            _fail(f"--release {release}: {why_not_a_file(release)}; give the node's <ledger>.released.csv")
        try:
            store = ReleaseStore.open(release)
            plan = store.plan
            if plan is None:
                _fail(f"--release {release}: no release plan beside it ({release}.json); the node has released nothing")
                return
            released = store.records()
        except (ReleaseStoreError, ValueError, OSError) as exc:
            _fail(f"--release {release}: {exc}")
            return
        noise_sd = dict(plan.noise_sd)
    stored = None
    try:
        saved = load_model(model)
        read = read_records(data, mapping)
        records = read.records
        if reads_region(saved.spec):
            # what the node's rounds read: the region its coordinator last sent, kept beside its release
            stored = _stored_region(region, release or node_release)
            records = join_stored_region(records, saved.spec, stored)
            released = join_stored_region(released, saved.spec, stored) if released is not None else None
        frame = forecast_records(
            saved.model,
            saved.spec,
            records,
            hospital=hospital or read.name,
            noise_sd=noise_sd,
            released=released,
            zero_shot_weight=zero_shot_weight,
        )
        if not np.isfinite(frame["value"].to_numpy(dtype=float)).all():
            raise ModelDataMismatch(
                f"{saved.path}: the model's forecast for {read.source.display} is not finite (NaN or infinite values); "
                "its weights do not fit these records"
            )
    except DataContractError as exc:
        _fail(one_line(data, exc))
        return
    except (ModelFileError, ModelDataMismatch, RegionStoreError, ImportError) as exc:
        _fail(str(exc))
        return
    try:
        write_forecast(frame, csv_path, overwrite=force)
        plot_forecast(records.frame, frame, png_path, history_periods=2 * saved.config.history)
    except OSError as exc:
        _fail(f"cannot write the forecast to {out}: {exc}")
    logged = ""
    if log_path is not None:
        logged = _log_run(log_path, frame, records.frame[DATE].max().date(), str(saved.metadata.get("sha256", "")))
    _out.print(_summary(frame, saved.config.quantiles))
    _out.print(
        f"model {saved.path} ({saved.config.model}, L={saved.config.history}, H={saved.config.horizon}); "
        + (f"bands calibrated with the release {release}; " if release is not None else "")
        + (f"mixed with fracast (zero-shot) at weight {zero_shot_weight:g}; " if zero_shot_weight else "")
        + (
            f"region from {stored.path} (received {stored.received}, to {stored.last_day.date()}); "
            if stored is not None and stored.last_day is not None
            else ""
        )
        + f"wrote {csv_path} ({len(frame)} rows) and {png_path}"
        + logged,
        highlight=False,
        markup=False,
    )


def _forecast_log(node_config: Path | None, forecast_log: Path | None) -> tuple[Path | None, str | None, Path | None]:
    """The forecast log to add the run to (--forecast-log, else beside the node's ledger), the node's hospital-id
    and its release path (where its stored region lies beside)."""
    if node_config is None:
        return forecast_log, None, None
    from medalloc.cli.node_files import read_node_config, release_path_of
    from medalloc_core.forecast.history import log_path_for_ledger

    try:
        config = read_node_config(node_config)
    except ValueError as exc:
        _fail(str(exc))
    return forecast_log or log_path_for_ledger(config.ledger_path), config.hospital_id, release_path_of(config)


def _stored_region(region: Path | None, release: Path | None) -> StoredRegion:
    """The region a region model reads: --region, else the one kept beside the node's release; else exit 2."""
    from medalloc_core.forecast.region_store import RegionStoreError, read_region, region_path

    if region is None and release is None:
        _fail(
            "the model reads the region (context 'region': the other hospitals' released daily totals), which a "
            "node keeps from the federation's last round beside its release; give --release (the node's "
            "<ledger>.released.csv), --node-config or --region <release>.region.json. Without it the forecast "
            "would read no region, which is not the model that was scored"
        )
    path = region if region is not None else region_path(release)  # type: ignore[arg-type]
    try:
        return read_region(path)
    except RegionStoreError as exc:
        _fail(f"{'--region ' if region is not None else ''}{exc}")


def _log_run(path: Path, frame: pd.DataFrame, origin: date, arrays_sha256: str) -> str:
    """Append the run to the forecast log; the words the summary line ends with."""
    from medalloc_core.forecast.history import ForecastLogError, ForecastRun, append_run, model_version

    try:
        run = ForecastRun.from_frame(frame, origin=origin, model_version=model_version(arrays_sha256))
        runs = append_run(path, run)
    except (ForecastLogError, ValueError, OSError) as exc:
        _fail(f"the forecast was written, but not added to the forecast log: {exc}")
    return f"; logged as model {run.model_version}, origin {origin} in {path} ({len(runs)} runs)"


def register(app: typer.Typer) -> None:
    """Add `forecast` to the medalloc app."""
    # The docstring wraps its one-sentence summary; typer's rich command list would keep that
    # line break, so it gets the sentence on one line.
    app.command("forecast", help=" ".join((forecast.__doc__ or "").split()))(forecast)
