"""``medalloc maintenance-plan``: which devices to service this week within the technician hours (a HiGHS MILP)."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from medalloc.cli.tables import Table

logger = logging.getLogger(__name__)
EXIT_INVALID = 2
_out = Console()
_err = Console(stderr=True, soft_wrap=True, highlight=False)


class _BadInput(Exception):
    """Input the user must fix; shown as one message, exit status 2."""


def _parse_hours(text: str | None, file: Path | None) -> dict[str, float]:
    """Per-type service hours from 'ventilator=3,infusion_pump=1' and/or a CSV ``device_type,service_hours``."""
    out: dict[str, float] = {}
    if file is not None:
        import pandas as pd

        from medalloc_core.contract import DataContractError
        from medalloc_core.io import read_table

        try:
            frame = read_table(file)
        except DataContractError as exc:
            raise _BadInput("; ".join(str(p) for p in exc.problems)) from None
        columns = {c.strip().lower(): c for c in frame.columns}
        if "device_type" not in columns or "service_hours" not in columns:
            raise _BadInput(
                f"{file}: needs the columns device_type and service_hours (found: {', '.join(frame.columns)})"
            )
        for label, row in frame.iterrows():
            where = f"{file}, row {int(label) + 2}"
            raw_name = row[columns["device_type"]]
            name = "" if pd.isna(raw_name) else str(raw_name).strip()  # an empty cell reads as NaN, not ""
            value = row[columns["service_hours"]]
            try:
                hours = float(value)
            except (TypeError, ValueError):
                raise _BadInput(f"{where}, column 'service_hours': {value!r} is not a number of hours") from None
            if not name:
                raise _BadInput(f"{where}, column 'device_type': empty; expected a device type")
            out[name] = hours
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise _BadInput(
                f"--service-hours: '{item}' is not TYPE=HOURS (e.g. ventilator=3,infusion_pump=1)"
            ) from None
    return out


def maintenance_plan(
    model: Path = typer.Option(
        ..., "--model", "-m", help="Equipment risk model (final_model.safetensors or a results folder)."
    ),
    fleet: Path = typer.Option(..., "--fleet", "-f", help="The hospital's fleet folder (devices.csv + events.csv)."),
    hours: float = typer.Option(..., "--hours", help="Technician hours available for preventive service this week."),
    service_hours: str | None = typer.Option(
        None, "--service-hours", help="Hours one service takes, per device type: 'ventilator=3,infusion_pump=1'."
    ),
    service_hours_file: Path | None = typer.Option(
        None,
        "--service-hours-file",
        help="CSV with columns device_type, service_hours (combined with --service-hours).",
    ),
    default_service_hours: float | None = typer.Option(
        None, "--default-service-hours", help="Hours for device types not listed (default: every type must be listed)."
    ),
    date: str | None = typer.Option(None, "--date", help="Planning day YYYY-MM-DD (default: the log's last day)."),
    objective: str = typer.Option(
        "failures", "--objective", help="'failures' or 'downtime' (failures x mean downtime)."
    ),
    max_share_away: float = typer.Option(
        0.5, "--max-share-away", help="Most of a unit's devices of one type away for service at once (at least 1)."
    ),
    out: Path = typer.Option(Path("maintenance_plan.csv"), "--out", "-o", help="Plan table (CSV)."),
    plot: Path | None = typer.Option(None, "--plot", help="Plan figure (PNG; default: beside --out)."),
    explain: bool = typer.Option(
        False,
        "--explain",
        help="Also write each device's top risk factors (risk minus risk at the fleet average) beside --out.",
    ),
    force: bool = typer.Option(False, "--force", help="Replace existing output files."),
) -> None:
    """Choose this week's preventive services: the devices whose service prevents the most expected failures.

    Solves an integer programme (HiGHS) over the fleet's devices with the model's risk of failing
    within the horizon, left alone and if serviced; compares it with the age rule (oldest first)
    on the same hours. Writes the plan (CSV) and a figure; exit 2 on bad input, nothing written.
    """
    import numpy as np

    from medalloc_core.atomic import atomic_write_bytes
    from medalloc_core.contract import DataContractError
    from medalloc_core.equipment.decide import PlanInputError, age_priority, service_hours_for, week_inputs
    from medalloc_core.equipment.model import load_risk_model
    from medalloc_core.equipment.plan import PlanError, plan_frame, plan_week, rule_plan
    from medalloc_core.equipment.plots import plan_plot
    from medalloc_core.equipment.validation import load_fleet
    from medalloc_core.model_io import ModelFileError

    plot = plot or out.with_suffix(".png")
    factors_out = out.with_name(f"{out.stem}_factors.csv")
    try:
        if not (np.isfinite(hours) and hours >= 0):
            raise _BadInput(f"--hours must be a number >= 0, got {hours}")
        if not 0 < max_share_away <= 1:
            raise _BadInput(f"--max-share-away must be in (0, 1], got {max_share_away}")
        for path in (out, plot, *([factors_out] if explain else [])):
            if path.exists() and not force:
                raise _BadInput(f"{path} exists; choose another path or pass --force to replace it")
        per_type = _parse_hours(service_hours, service_hours_file)
        saved = load_risk_model(model)
        loaded = load_fleet(fleet)
        durations = service_hours_for(loaded, per_type, default_service_hours)
        week = week_inputs(loaded, saved.model, saved.spec, service_hours=durations, date=date, objective=objective)
        plan = plan_week(week.inputs, hours=hours, max_share_away=max_share_away, method="risk model")
        rule = rule_plan(week.inputs, age_priority(week), hours=hours, max_share_away=max_share_away)
    except DataContractError as exc:
        for problem in exc.problems[:50]:
            _err.print(f"[red]{escape(str(problem))}[/red]")
        _err.print(f"[bold red]error:[/] {fleet}: the fleet breaks the data contract; run `medalloc validate {fleet}`")
        raise typer.Exit(EXIT_INVALID) from None
    except (_BadInput, PlanInputError, ModelFileError, PlanError) as exc:
        _err.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(EXIT_INVALID) from None

    frame = plan_frame(week.inputs, plan)
    atomic_write_bytes(out, frame.to_csv(index=False, float_format="%.6g").encode())
    if explain:
        from medalloc_core.equipment.explain import risk_attributions
        from medalloc_core.equipment.features import feature_matrix

        now = feature_matrix(week.days, loaded.devices, saved.spec)[:, week.day]
        top = risk_attributions(saved.model, now, saved.spec).top(week.inputs.device_id)
        atomic_write_bytes(factors_out, top.to_csv(index=False, float_format="%.6g").encode())
    plan_plot(
        plot,
        week.inputs,
        {"risk model": plan, "age rule": rule},
        title=f"{fleet.name}: preventive services for the week after {week.days.days[week.day]:%Y-%m-%d}",
    )
    _out.print(_table(frame))
    unit = "failures" if objective == "failures" else "downtime days"
    horizon = saved.spec.horizon_days
    _out.print(
        f"{int(plan.selected.sum())} devices, {plan.hours_used:.1f} of {hours:g} h: expected {unit} in the next "
        f"{horizon} days {plan.expected_without:.2f} -> {plan.expected_without - plan.expected_prevented:.2f} "
        f"(prevents {plan.expected_prevented:.2f}; {plan.prevented_per_hour:.3f} per hour). "
        f"The age rule (oldest first) on the same hours: prevents {rule.expected_prevented:.2f} "
        f"({rule.prevented_per_hour:.3f} per hour), by the same model.",
        highlight=False,
    )
    written = f"{out}, {plot} and {factors_out}" if explain else f"{out} and {plot}"
    _out.print(f"wrote {written}", highlight=False, markup=False)


def _table(frame: object, rows: int = 20) -> Table:
    import pandas as pd

    assert isinstance(frame, pd.DataFrame)
    chosen = frame[frame["selected"]].head(rows)
    table = Table(title=f"Service this week ({int(frame['selected'].sum())} devices; first {len(chosen)} shown)")
    # Readable at 80 columns: a device type is shown with spaces (`anaesthesia machine`; the CSV keeps
    # `anaesthesia_machine`) so that it wraps between words; the number columns' headers wrap to
    # their numbers' width, which leaves the type column its longest word (`defibrillator`); a
    # device id longer than 10 characters (a hospital's own asset number) folds onto a second line.
    # Rich would otherwise shrink the widest column first and cut it to "…".
    table.add_column("device", overflow="fold", max_width=10)
    table.add_column("type", overflow="fold")
    table.add_column("unit", overflow="fold")
    for name, width in (("hours", 5), ("risk now", 5), ("if serviced", 8), ("prevented", 9)):
        table.add_column(name, justify="right", max_width=width)
    for _, r in chosen.iterrows():
        table.add_row(
            escape(str(r["device_id"])),
            escape(str(r["device_type"]).replace("_", " ")),
            escape(str(r["unit"])),
            f"{r['service_hours']:g}",
            f"{r['risk_now']:.3f}",
            f"{r['risk_serviced']:.3f}",
            f"{r['benefit']:.3f}",
        )
    return table


def register(app: typer.Typer) -> None:
    """Add ``maintenance-plan`` to the ``medalloc`` app."""
    app.command(name="maintenance-plan")(maintenance_plan)
