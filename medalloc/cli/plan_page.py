"""`medalloc plan-page`: the bed manager's page — 14 days of beds, nurses and run-out risk, and how last week did."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

_out = Console()
_err = Console(stderr=True)


def _fail(message: str) -> NoReturn:
    _err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def plan_page(
    forecast: Path = typer.Option(..., "--forecast", help="This hospital's forecast.csv (from `medalloc forecast`)."),
    data: Path = typer.Option(
        ...,
        "--data",
        help="This hospital's true daily records (CSV or Parquet): last week's forecasts are scored on them, "
        "locally. Also the default --capacity-from.",
    ),
    out: Path = typer.Option(Path("plan.html"), "--out", "-o", help="The page to write."),
    node_config: Path | None = typer.Option(
        None, "--node-config", help="The node's node.toml: its forecast log (<ledger-path>.forecasts.json) is read."
    ),
    forecast_log: Path | None = typer.Option(
        None, "--forecast-log", help="Read this forecast log instead of the node config's."
    ),
    capacity: Path | None = typer.Option(None, "--capacity", help="Capacity CSV: unit, beds[, staffed]."),
    capacity_from: Path | None = typer.Option(
        None, "--capacity-from", help="Records whose largest capacity (or census) per unit are the physical beds."
    ),
    under_cost: float = typer.Option(10.0, "--under-cost", help="Cost of an unserved patient-day."),
    over_cost: float = typer.Option(1.0, "--over-cost", help="Cost of an idle staffed bed-day."),
    nurse_ratio: str | None = typer.Option(
        None, "--nurse-ratio", help="Patients per nurse per shift, e.g. ICU=2,medical=5,surgical=5,paediatric=4."
    ),
    default_nurse_ratio: float = typer.Option(4.0, "--default-nurse-ratio", help="Ratio for units not named."),
    shifts: int = typer.Option(3, "--shifts", help="Nursing shifts per day."),
    risk_threshold: float = typer.Option(
        0.05, "--risk-threshold", help="Mark a day when P(demand > physical beds) exceeds this."
    ),
    force: bool = typer.Option(False, "--force", help="Replace a file at --out that is not an earlier plan page."),
) -> None:
    """The bed manager's page: staffed beds, nurses and run-out risk per unit for the next 14 days, the fan chart,
    the plan's reasons and last week's forecast accountability (one HTML file, offline, phone-sized)."""
    from medalloc.cli.allocate import _BadInput, _check_range, _parse_mapping
    from medalloc_core.allocation.forecast_io import capacity_from_records, read_capacity, read_forecast
    from medalloc_core.allocation.newsvendor import (
        DEFAULT_NURSE_RATIOS,
        MAX_COST,
        MAX_NURSE_RATIO,
        MIN_COST,
        MIN_NURSE_RATIO,
        PlanConfig,
        UnitCosts,
        plan_hospital,
    )
    from medalloc_core.contract import DATE, DataContractError
    from medalloc_core.forecast.accountability import account
    from medalloc_core.forecast.history import ForecastLogError, log_path_for_ledger, read_log
    from medalloc_core.report.plan_page import PlanPage, fan_charts, write_plan_page
    from medalloc_core.validation import load_unit_records

    if capacity is not None and capacity_from is not None:
        _fail("give at most one of --capacity CAP.csv or --capacity-from DATA.csv (default: --data)")
    if out.resolve() in {p.resolve() for p in (forecast, data, capacity, capacity_from) if p is not None}:
        _fail(f"--out {out} is one of the inputs; choose another --out")
    log_path = forecast_log
    hospital_id = None
    if node_config is not None:
        from medalloc.cli.node_files import read_node_config

        try:
            node = read_node_config(node_config)
        except ValueError as exc:
            _fail(str(exc))
        log_path = log_path or log_path_for_ledger(node.ledger_path)
        hospital_id = node.hospital_id
    try:
        for option, value, low, high in (
            ("--under-cost", under_cost, MIN_COST, MAX_COST),
            ("--over-cost", over_cost, MIN_COST, MAX_COST),
            ("--default-nurse-ratio", default_nurse_ratio, MIN_NURSE_RATIO, MAX_NURSE_RATIO),
            ("--shifts", shifts, 1, 24),
        ):
            _check_range(option, value, low, high)
        if not 0 < risk_threshold < 1:
            raise _BadInput(f"--risk-threshold must be in (0, 1), got {risk_threshold}")
        ratios = dict(DEFAULT_NURSE_RATIOS)
        for name, value in _parse_mapping(nurse_ratio, "--nurse-ratio").items():
            _check_range(f"--nurse-ratio {name}", value, MIN_NURSE_RATIO, MAX_NURSE_RATIO)
            ratios[name] = value
        config = PlanConfig(
            costs=UnitCosts(under_cost, over_cost),
            nurse_ratios=ratios,
            default_nurse_ratio=default_nurse_ratio,
            shifts_per_day=shifts,
            physical_risk_threshold=risk_threshold,
        )
        frame = read_forecast(forecast)
        hospitals = sorted(frame["hospital"].astype(str).unique().tolist())
        if len(hospitals) != 1:
            raise _BadInput(f"{forecast}: the page is one hospital's; the forecast holds {hospitals}")
        beds = read_capacity(capacity) if capacity is not None else capacity_from_records(capacity_from or data)
        plan = plan_hospital(frame, beds, config)
        records = load_unit_records(data)
    except (_BadInput, DataContractError, ValueError) as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot read the inputs: {exc}")
    notes = []
    accountability, runs = None, []
    if log_path is not None:
        try:
            runs = read_log(log_path)
        except ForecastLogError as exc:
            _fail(str(exc))
        accountability = account(runs, records.frame)
        if not runs:
            notes.append(
                f"The forecast log {log_path} holds no forecast yet: `medalloc forecast --node-config` adds one."
            )
    first_day = min(frame[DATE]).date()
    # The run this forecast came from: the newest logged run of this hospital that forecasts the same days.
    days = tuple(sorted(frame[DATE].dt.date.unique().tolist()))
    logged = next((r for r in reversed(runs) if r.dates == days and r.hospital == hospitals[0]), None)
    page = PlanPage(
        hospital=hospital_id or hospitals[0],
        plan=plan,
        config=config,
        accountability=accountability,
        fan_charts=fan_charts(plan),
        origin=logged.origin if logged is not None else first_day - timedelta(days=1),
        model_version=logged.model_version if logged is not None else None,
        made_on=date.today(),
        notes=notes,
    )
    try:
        path = write_plan_page(page, out, force=force)
    except (FileExistsError, ValueError) as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot write the page: {exc}")
    alarms = accountability.alarms if accountability is not None else []
    _out.print(
        f"wrote {path} ({path.stat().st_size // 1024} KiB): {plan['unit'].nunique()} units x {len(days)} days"
        + (
            f"; last week {accountability.week_start} – {accountability.week_end} scored"
            if accountability and accountability.scores
            else ""
        )
        + (f"; DRIFT ALARM: {', '.join(f'{a.unit} {a.target}' for a in alarms)}" if alarms else ""),
        highlight=False,
        markup=False,
    )


def register(app: typer.Typer) -> None:
    """Add `plan-page` to the medalloc app."""
    app.command("plan-page", help=" ".join((plan_page.__doc__ or "").split()))(plan_page)
