"""`medalloc generate`: write a synthetic hospital region for experiments and demos."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from medalloc_core import contract as c
from medalloc_core.equipment import contract as ec
from medalloc_core.equipment.synthetic import (
    EquipmentRegion,
    FleetConfig,
    existing_fleet_files,
    generate_fleets,
    write_fleets,
)
from medalloc_core.synthetic import Region, RegionConfig, existing_region_files, generate_region, write_region
from medalloc_core.synthetic.writer import SHAPE_FORMATS, SHAPES
from medalloc_core.tasks import DEFAULT_TASK, get_task, task_names

_FLEET_FORMATS = ("csv", "parquet")  # --task equipment: devices.<fmt> and events.<fmt> per fleet folder


def _fail(console: Console, message: str) -> NoReturn:
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


_UNIT_CODES = {"icu": "I", "medical": "M", "surgical": "S", "paediatric": "P"}


def _progress(console: Console) -> Progress:
    """The bar shown while hospitals (or fleets) are simulated and written."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def _summary_table(region: Region) -> Table:
    """One row per hospital: size, units, days and what a planner looks at first."""
    table = Table(title=f"Synthetic region: {len(region.hospitals)} hospitals (seed {region.config.seed})")
    for name, justify in (
        ("hospital", "left"),
        ("beds", "right"),
        ("units", "left"),
        ("mix", "left"),
        ("days", "right"),
        ("adm/day", "right"),
        ("census", "right"),
        ("overflow", "right"),
    ):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for hospital, meta in zip(region.hospitals, region.metadata["hospitals"], strict=True):
        daily = hospital.daily
        per_day = daily.groupby(c.DATE)[[c.ADMISSIONS, c.CENSUS]].sum()
        over = int((daily[c.CENSUS] > daily[c.CAPACITY]).sum())
        table.add_row(
            hospital.hospital_id,
            str(hospital.beds),
            "".join(_UNIT_CODES.get(u, u) for u in meta["units"]),
            {"general": "gen", "paediatric": "paed", "surgical": "surg"}.get(meta["case_mix"], meta["case_mix"]),
            str(len(per_day)),
            f"{per_day[c.ADMISSIONS].mean():.1f}",
            f"{per_day[c.CENSUS].mean():.1f}",
            f"{over / len(daily):.1%}",
        )
    table.caption = (
        "units: I=ICU M=medical S=surgical P=paediatric; mix: general or specialty centre; "
        "days: records (short histories start later); overflow: unit-days with census > capacity"
    )
    return table


def _fleet_table(region: EquipmentRegion) -> Table:
    """One row per hospital: fleet size, age, use and what its log holds."""
    table = Table(title=f"Synthetic fleets: {len(region.hospitals)} hospitals (seed {region.config.seed})")
    for name in (
        "hospital",
        "beds",
        "devices",
        "mean age (y)",
        "use x",
        "service done",
        "failures",
        "services",
        "errors",
    ):
        table.add_column(name, justify="left" if name == "hospital" else "right", no_wrap=True)
    for hospital in region.hospitals:
        meta, events = hospital.meta, hospital.events[ec.EVENT]
        table.add_row(
            hospital.hospital_id,
            str(meta["beds"]),
            str(meta["devices"]),
            f"{meta['mean_fleet_age_years']:.1f}",
            f"{meta['usage_intensity']:.2f}",
            f"{meta['service_compliance']:.0%}",
            str(int((events == ec.EventKind.FAILURE).sum())),
            str(int((events == ec.EventKind.PREVENTIVE).sum())),
            str(int((events == ec.EventKind.ERROR).sum())),
        )
    table.caption = (
        "mean age: devices' mean age at the start; use x: usage intensity; service done: share of due preventive "
        "services carried out; failures/services/errors: events in the log. True parameters: fleet.json"
    )
    return table


def _generate_fleets(
    console: Console, *, hospitals: int, days: int, seed: int, out: Path, fmt: str, start: str, force: bool
) -> None:
    earlier = existing_fleet_files(out)
    if earlier and not force:
        _fail(
            console,
            f"{out} already holds fleets ({len(earlier)} entries, e.g. {earlier[0].name}); "
            "choose another --out or pass --force to replace them",
        )
    try:
        config = FleetConfig(hospitals=hospitals, days=days, seed=seed, start=start)
    except ValueError as exc:
        _fail(console, str(exc))
    with _progress(console) as bar:
        task = bar.add_task("simulating fleets", total=hospitals)
        region = generate_fleets(config, progress=lambda _hid: bar.advance(task))
        bar.update(task, description="writing files")
        try:
            paths = write_fleets(region, out, fmt=fmt, overwrite=force)
        except OSError as exc:
            _fail(console, f"cannot write the fleets to {out}: {exc}")
    Console().print(_fleet_table(region))
    console.print(
        f"wrote {len(paths) - 1} fleet folders (devices.{fmt}, events.{fmt}) and {paths[-1].name} to {out}",
        highlight=False,
        soft_wrap=True,
    )


def generate(
    hospitals: int = typer.Option(10, "--hospitals", "-n", help="Number of hospitals in the region."),
    days: int = typer.Option(730, "--days", "-d", help="Days of records per full-history hospital."),
    seed: int = typer.Option(0, "--seed", "-s", help="Random seed: same seed, same bytes."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for H000.csv, ... and region.json."),
    shape: str = typer.Option(
        "daily",
        "--shape",
        help="'daily' unit records, 'encounters' (patient stays), 'omop' (an OMOP CDM v5.4), 'fhir' (FHIR R4 "
        "Encounters) or 'mixed' (hospitals cycle through all of them: nodes that read different formats).",
    ),
    fmt: str | None = typer.Option(
        None,
        "--format",
        "-f",
        help="daily/encounters: 'csv' (default) or 'parquet'; omop: 'sqlite' (default, H000.sqlite), 'csv' or "
        "'parquet' (H000.omop/ export folder); fhir: 'ndjson' (default, H000.fhir/ Bulk Data export) or 'bundle' "
        "(H000.fhir.json).",
    ),
    start: str = typer.Option("2023-01-01", "--start", help="First date, YYYY-MM-DD."),
    force: bool = typer.Option(False, "--force", help="Replace a region already in --out."),
    task_name: str = typer.Option(
        DEFAULT_TASK,
        "--task",
        help=f"One of {', '.join(task_names())}: what the task's nodes read (unit records, device fleets and "
        "event logs).",
    ),
) -> None:
    """Generate a synthetic region: one file per hospital plus region.json with the true parameters.

    With --task equipment: one folder per hospital (devices and events files) plus fleet.json.
    """
    console = Console(stderr=True)
    if task_name not in task_names():
        _fail(console, f"--task must be one of {', '.join(repr(t) for t in task_names())}, got {task_name!r}")
    # What is written follows the task's kind of data (FederatedTask.data_kind), never its name.
    kind = get_task(task_name).data_kind
    if kind not in ("unit-records", "device-fleets"):
        _fail(console, f"medalloc generate cannot write the {task_name} task's data ({kind})")
    if kind == "device-fleets":
        if shape != "daily":
            _fail(console, f"--shape {shape!r} is for unit records; --task {task_name} writes fleet folders")
        fmt = _FLEET_FORMATS[0] if fmt is None else fmt  # an empty --format is refused, not read as the default
        if fmt not in _FLEET_FORMATS:
            _fail(console, f"--format must be one of {', '.join(_FLEET_FORMATS)} for --task {task_name}, got {fmt!r}")
        if out.exists() and not out.is_dir():
            _fail(console, f"--out {out} is a file; give a directory")
        _generate_fleets(console, hospitals=hospitals, days=days, seed=seed, out=out, fmt=fmt, start=start, force=force)
        return
    if shape not in SHAPES:
        _fail(console, f"--shape must be one of {', '.join(SHAPES)}, got {shape!r}")
    formats = SHAPE_FORMATS[shape]
    fmt = formats[0] if fmt is None else fmt  # an empty --format is refused below, not read as the default
    if fmt not in formats:
        _fail(console, f"--format must be one of {', '.join(formats)} for --shape {shape}, got {fmt!r}")
    if out.exists() and not out.is_dir():
        _fail(console, f"--out {out} is a file; give a directory")
    earlier = existing_region_files(out)
    if earlier and not force:
        _fail(
            console,
            f"{out} already holds a region ({len(earlier)} files, e.g. {earlier[0].name}); "
            "choose another --out or pass --force to replace it",
        )
    try:
        # Every shape but daily is written from the patient stays behind the counts.
        config = RegionConfig(
            hospitals=hospitals, days=days, seed=seed, start=start, shape="daily" if shape == "daily" else "encounters"
        )
    except ValueError as exc:
        _fail(console, str(exc))

    with _progress(console) as bar:
        task = bar.add_task("simulating hospitals", total=hospitals)
        region = generate_region(config, progress=lambda _hid: bar.advance(task))
        bar.update(task, description="writing files")
        try:
            paths = write_region(region, out, shape=shape, fmt=fmt, overwrite=force, seed=seed)  # type: ignore[arg-type]
        except OSError as exc:
            _fail(console, f"cannot write the region to {out}: {exc}")

    Console().print(_summary_table(region))
    what = f"{shape} {fmt}" if shape != "mixed" else "mixed-format"
    console.print(
        f"wrote {len(paths) - 1} {what} hospital sources and {paths[-1].name} to {out}",
        highlight=False,
        soft_wrap=True,
        markup=False,
    )


def register(app: typer.Typer) -> None:
    """Add ``generate`` to the ``medalloc`` app."""
    app.command("generate")(generate)
