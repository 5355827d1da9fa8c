"""`medalloc allocate` (a hospital's bed/staff plan) and `medalloc allocate-region` (the coordinator's surge plan)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import typer
from rich.console import Console
from rich.markup import escape

from medalloc.cli.data_option import MAPPING_HELP, is_path_input, one_line, read_records
from medalloc.cli.tables import Table
from medalloc_core.contract import DATE, UNIT, DataContractError

if TYPE_CHECKING:  # imported where used, to keep the CLI's start fast
    from medalloc_core.allocation.newsvendor import UnitCosts
    from medalloc_core.allocation.quantiles import Tail
    from medalloc_core.allocation.regional import RegionalPlan

logger = logging.getLogger(__name__)
PLAN_EXPLANATION = "plan_explanation.txt"
_TAILS: tuple[Tail, ...] = ("normal", "clamp")
_out = Console()
_err = Console(stderr=True)


class _BadInput(Exception):
    """Input the user must fix; shown as one message, exit status 2."""


def _parse_mapping(text: str | None, option: str) -> dict[str, float]:
    """Parse 'ICU=2,medical=5' into {'ICU': 2.0, 'medical': 5.0}."""
    if not text:
        return {}
    out: dict[str, float] = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise _BadInput(f"{option}: '{item}' is not NAME=NUMBER (e.g. ICU=2,medical=5)") from None
    return out


def _read_unit_config(path: Path) -> tuple[dict[str, UnitCosts], dict[str, float]]:
    """Per-unit costs and nurse ratios from a CSV or Parquet table: unit[, under_cost, over_cost, nurse_ratio].

    Costs come in pairs: a table (or a row) with one of under_cost/over_cost and not the other
    is refused rather than half applied. Every problem names the file, row and column.
    """
    from medalloc_core.allocation.newsvendor import MAX_COST, MAX_NURSE_RATIO, MIN_COST, MIN_NURSE_RATIO, UnitCosts
    from medalloc_core.io import read_table

    frame = read_table(path)
    known = {UNIT, "under_cost", "over_cost", "nurse_ratio"}
    if UNIT not in frame.columns:
        raise _BadInput(f"{path}: unit config needs a 'unit' column (plus under_cost, over_cost, nurse_ratio)")
    unknown = [c for c in frame.columns if c not in known]
    if unknown:
        raise _BadInput(f"{path}: unknown column(s) {unknown}; a unit config has columns {sorted(known)}")
    cost_columns = {"under_cost", "over_cost"} & set(frame.columns)
    if len(cost_columns) == 1:
        (given,) = cost_columns
        other = ({"under_cost", "over_cost"} - cost_columns).pop()
        raise _BadInput(f"{path}: has the column '{given}' but not '{other}'; give both costs of a unit, or neither")
    if frame.empty:
        raise _BadInput(f"{path}: unit config has a header but no rows")
    costs: dict[str, UnitCosts] = {}
    ratios: dict[str, float] = {}
    seen: set[str] = set()
    for index, row in frame.iterrows():
        where = f"{path}, row {int(str(index)) + 2}"
        unit = str(row[UNIT]).strip() if pd.notna(row[UNIT]) else ""
        if not unit:
            raise _BadInput(f"{where}, column 'unit': is empty; expected a unit name")
        if unit.lower() in seen:
            raise _BadInput(f"{where}, column 'unit': '{unit}' appears twice; one row per unit")
        seen.add(unit.lower())
        values = {}
        for column, low, high in (
            ("under_cost", MIN_COST, MAX_COST),
            ("over_cost", MIN_COST, MAX_COST),
            ("nurse_ratio", MIN_NURSE_RATIO, MAX_NURSE_RATIO),
        ):
            if column not in frame.columns or pd.isna(row[column]) or not str(row[column]).strip():
                continue
            try:
                value = float(row[column])
            except ValueError:
                raise _BadInput(f"{where}, column '{column}': '{row[column]}' is not a number") from None
            if not low <= value <= high:
                raise _BadInput(f"{where}, column '{column}': {row[column]} must be a number from {low:g} to {high:g}")
            values[column] = value
        if ("under_cost" in values) != ("over_cost" in values):
            missing = "over_cost" if "under_cost" in values else "under_cost"
            raise _BadInput(
                f"{where}, column '{missing}': is empty while the other cost is given; give both or neither"
            )
        if "under_cost" in values:
            costs[unit] = UnitCosts(values["under_cost"], values["over_cost"])
        if "nurse_ratio" in values:
            ratios[unit] = values["nurse_ratio"]
    return costs, ratios


def _check_range(option: str, value: float, low: float, high: float) -> None:
    """Refuse a number option outside [low, high] (NaN included) naming the option."""
    if not low <= value <= high:
        raise _BadInput(f"{option} must be a number from {low:g} to {high:g}, got {value}")


def _check_units(path: Path, named: set[str], forecast_units: set[str]) -> None:
    """Every unit a table names must be in the forecast: a misspelt unit would be silently ignored."""
    lowered = {u.lower() for u in forecast_units}
    stray = sorted(u for u in named if u.lower() not in lowered)
    if stray:
        raise _BadInput(f"{path}: unit(s) {stray} are not in the forecast (its units: {sorted(forecast_units)})")


def _fail(message: str) -> None:
    _err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def _guard_outputs(outputs: list[Path], inputs: list[Path], force: bool) -> None:
    resolved_inputs = {p.resolve() for p in inputs}
    for folder in {p.parent for p in outputs}:
        taken = next((a for a in (folder, *folder.parents) if a.exists()), None)
        if taken is not None and not taken.is_dir():
            raise _BadInput(f"--out {folder}: {taken} is a file, not a folder; choose another --out")
    for path in outputs:
        if path.resolve() in resolved_inputs:
            raise _BadInput(f"{path} is one of the inputs; choose another --out")
        if path.exists() and not force:
            raise _BadInput(f"{path} already exists; pass --force to replace it, or choose another --out")


def _summary_table(plan: pd.DataFrame) -> Table:
    table = Table(title="Bed and staff plan", show_lines=False)
    # staffed: min–max over the days; nurses: the most per shift; risk: mean P(demand > staffed)
    for name in ("hospital", "unit", "days", "P50", "staffed", "beds", "nurses", "risk", "flagged"):
        table.add_column(name, justify="right" if name not in ("hospital", "unit") else "left")
    for (hospital, unit), g in plan.groupby(["hospital", UNIT], sort=True):
        flagged = int(g["flag_physical"].sum())
        table.add_row(
            escape(str(hospital)),
            escape(str(unit)),
            str(len(g)),
            f"{g['demand_p50'].mean():.1f}",
            f"{g['staffed_beds'].min()}–{g['staffed_beds'].max()}",
            str(int(g["physical_beds"].max())),
            str(int(g["nurses_per_shift"].max())),
            f"{g['p_overflow'].mean():.1%}",
            f"[red]{flagged}[/]" if flagged else "0",
        )
    return table


def allocate(
    forecast: Path = typer.Option(
        ..., "--forecast", help="Forecast frame CSV (hospital, unit, date, target, q, value)."
    ),
    out: Path = typer.Option(..., "--out", help="Directory for plan.csv and plan.png."),
    capacity: Path | None = typer.Option(None, "--capacity", help="Capacity CSV: unit, beds[, staffed, hospital]."),
    capacity_from: str | None = typer.Option(
        None,
        "--capacity-from",
        help="The hospital's records (a daily records or encounter file, an OMOP CDM or a FHIR export, read as the "
        "node reads it); physical beds = largest capacity (or census) per unit.",
    ),
    mapping: Path | None = typer.Option(None, "--mapping", help=MAPPING_HELP),
    under_cost: float = typer.Option(
        10.0, "--under-cost", help="Cost of an unserved patient-day (overflow, diversion)."
    ),
    over_cost: float = typer.Option(1.0, "--over-cost", help="Cost of an idle staffed bed-day (nurse time)."),
    nurse_ratio: str | None = typer.Option(
        None, "--nurse-ratio", help="Patients per nurse per shift, e.g. ICU=2,medical=5,surgical=5,paediatric=4."
    ),
    default_nurse_ratio: float = typer.Option(4.0, "--default-nurse-ratio", help="Ratio for units not named."),
    unit_config: Path | None = typer.Option(
        None,
        "--unit-config",
        help="CSV with unit[, under_cost, over_cost, nurse_ratio] per unit (overrides the flags).",
    ),
    shifts: int = typer.Option(3, "--shifts", help="Nursing shifts per day."),
    risk_threshold: float = typer.Option(
        0.05, "--risk-threshold", help="Flag a day when P(demand > physical beds) exceeds this."
    ),
    tail: str = typer.Option("normal", "--tail", help="Beyond the outer quantiles: 'normal' (fitted) or 'clamp'."),
    force: bool = typer.Option(False, "--force", help="Replace an existing plan in --out."),
) -> None:
    """Staffed beds, nurses per shift and overflow risk per unit and day from a census forecast."""
    from medalloc_core.allocation.explain_plans import hospital_plan_reasons
    from medalloc_core.allocation.forecast_io import capacity_from_frame, read_capacity, read_forecast
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
    from medalloc_core.allocation.plots import plot_plan
    from medalloc_core.atomic import atomic_write_bytes

    try:
        if (capacity is None) == (capacity_from is None):
            raise _BadInput("give exactly one of --capacity CAP.csv or --capacity-from DATA.csv")
        if tail not in _TAILS:
            raise _BadInput(f"--tail must be 'normal' or 'clamp', got '{tail}'")
        _check_range("--under-cost", under_cost, MIN_COST, MAX_COST)
        _check_range("--over-cost", over_cost, MIN_COST, MAX_COST)
        _check_range("--default-nurse-ratio", default_nurse_ratio, MIN_NURSE_RATIO, MAX_NURSE_RATIO)
        _check_range("--shifts", shifts, 1, 24)
        if not 0 < risk_threshold < 1:
            raise _BadInput(f"--risk-threshold must be in (0, 1), got {risk_threshold}")
        plan_csv, plan_png, plan_txt = out / "plan.csv", out / "plan.png", out / PLAN_EXPLANATION
        from_path = is_path_input(capacity_from) if capacity_from is not None else None
        inputs = [p for p in (forecast, capacity, from_path, unit_config) if p is not None]
        _guard_outputs([plan_csv, plan_png, plan_txt], inputs, force)
        flags = _parse_mapping(nurse_ratio, "--nurse-ratio")
        for name, value in flags.items():
            _check_range(f"--nurse-ratio {name}", value, MIN_NURSE_RATIO, MAX_NURSE_RATIO)
        ratios = {**DEFAULT_NURSE_RATIOS, **flags}
        unit_costs: dict[str, UnitCosts] = {}
        unit_ratios: dict[str, float] = {}
        if unit_config is not None:
            unit_costs, unit_ratios = _read_unit_config(unit_config)
            ratios.update(unit_ratios)
        config = PlanConfig(
            costs=UnitCosts(under_cost, over_cost),
            unit_costs=unit_costs,
            nurse_ratios=ratios,
            default_nurse_ratio=default_nurse_ratio,
            shifts_per_day=shifts,
            physical_risk_threshold=risk_threshold,
            tail=tail,
        )
        frame = read_forecast(forecast)
        if unit_config is not None:
            _check_units(unit_config, set(unit_costs) | set(unit_ratios), set(frame[UNIT]))
        if capacity is not None:
            beds = read_capacity(capacity)
        else:
            assert capacity_from is not None
            try:
                read = read_records(capacity_from, mapping)
            except DataContractError as exc:
                raise _BadInput(f"--capacity-from {one_line(capacity_from, exc)}") from None
            beds = capacity_from_frame(read.records.frame, read.source.display)
        plan = plan_hospital(frame, beds, config)
    except (_BadInput, DataContractError, ValueError) as exc:
        _fail(str(exc))
        return
    written = plan.copy()
    written[DATE] = pd.to_datetime(written[DATE]).dt.strftime("%Y-%m-%d")
    try:
        atomic_write_bytes(plan_csv, written.to_csv(index=False, float_format="%.4f").encode("utf-8"))
        plot_plan(plan, plan_png)
        reasons = hospital_plan_reasons(plan, config)
        atomic_write_bytes(plan_txt, ("\n\n".join(reasons) + "\n").encode("utf-8"))
    except OSError as exc:
        _fail(f"cannot write the plan to {out}: {exc}")
    _out.print(_summary_table(plan))
    for line in reasons:
        _out.print(escape(line), highlight=False)
    _out.print(f"wrote {plan_csv}, {plan_png} and {plan_txt}", highlight=False, markup=False)


def allocate_region(
    forecast: list[Path] = typer.Option(
        ..., "--forecast", help="Shared forecast CSV(s): hospital, date, q, value (or full forecast frames)."
    ),
    capacity: Path = typer.Option(
        ...,
        "--capacity",
        help="CSV with hospital, beds[, staffed]: staffed (else beds) is the base; surge fills beds - staffed.",
    ),
    out: Path = typer.Option(..., "--out", help="Directory for the regional plan."),
    pool: float = typer.Option(20.0, "--pool", help="Surge beds-with-staff that can be moved, per day."),
    under_cost: float = typer.Option(10.0, "--under-cost"),
    surge_cost: float = typer.Option(1.0, "--surge-cost", help="Cost of a deployed surge bed-day."),
    transfer_cost: float = typer.Option(2.0, "--transfer-cost", help="Fixed cost per transferred patient-day."),
    transfer_limit: float | None = typer.Option(
        None,
        "--transfer-limit",
        help="Most patient-days one corridor (from, to) can take per day; default unlimited. "
        "With a limit the plan prices one more transfer slot.",
    ),
    neighbours: int = typer.Option(5, "--neighbours", help="Transfers only between each hospital's k nearest."),
    scenarios: int = typer.Option(20, "--scenarios"),
    correlation: float = typer.Option(
        0.5, "--correlation", help="Copula correlation of demand across hospitals (0..1)."
    ),
    seed: int = typer.Option(0, "--seed"),
    force: bool = typer.Option(False, "--force", help="Replace an existing regional plan in --out."),
) -> None:
    """The coordinator's surge-pool and transfer plan from hospitals' shared census quantiles."""
    from medalloc_core.allocation.explain_plans import (
        REGIONAL_EXPLANATION_FILES,
        regional_reasons,
        write_regional_explanation,
    )
    from medalloc_core.allocation.forecast_io import BEDS, HOSPITAL, STAFFED, read_capacity, read_noise_sd, read_shared
    from medalloc_core.allocation.plots import plot_regional
    from medalloc_core.allocation.regional import (
        MAX_COST,
        MAX_SCENARIOS,
        RegionalConfig,
        RegionalSolveError,
        plan_region,
        write_regional_plan,
    )
    from medalloc_core.io import read_table

    try:
        names = (
            "surge.csv",
            "transfers.csv",
            "hospital_days.csv",
            "costs.csv",
            "regional.png",
            *REGIONAL_EXPLANATION_FILES,
        )
        if transfer_limit is not None and not transfer_limit >= 0:
            raise _BadInput(f"--transfer-limit must be a number of patient-days >= 0, got {transfer_limit}")
        _guard_outputs([out / n for n in names], [*forecast, capacity], force)
        _check_range("--pool", pool, 0, MAX_COST)
        _check_range("--under-cost", under_cost, 1e-6, MAX_COST)
        _check_range("--surge-cost", surge_cost, 0, MAX_COST)
        _check_range("--transfer-cost", transfer_cost, 0, MAX_COST)
        _check_range("--neighbours", neighbours, 0, 1000)
        _check_range("--scenarios", scenarios, 1, MAX_SCENARIOS)
        _check_range("--correlation", correlation, 0, 1)
        given: dict[Path, Path] = {}
        for path in forecast:
            if path.resolve() in given:
                raise _BadInput(
                    f"{path}: given twice with --forecast (as {given[path.resolve()]}); give each file once"
                )
            given[path.resolve()] = path
        frames = []
        source: dict[str, Path] = {}  # hospital -> the file that holds its forecast
        noise_sd: dict[str, float] = {}  # the sd each hospital's share was released with (its noise_sd column)
        for path in forecast:
            frame = read_shared(path)
            noise_sd |= read_noise_sd(path)
            for hospital in sorted(frame[HOSPITAL].unique()):
                if hospital in source:
                    raise _BadInput(
                        f"{path}: hospital '{hospital}' is also in {source[hospital]}; each hospital's forecast "
                        "must come from one file"
                    )
                source[hospital] = path
            frames.append(frame)
        header = read_table(capacity).columns
        caps = read_capacity(capacity, key=UNIT if UNIT in header else HOSPITAL)
        if HOSPITAL not in caps.columns:
            raise _BadInput(f"{capacity}: the regional capacity table needs a 'hospital' column")
        without_forecast = sorted(set(caps[HOSPITAL]) - set(source))
        if without_forecast:
            raise _BadInput(
                f"{capacity}: hospital(s) {without_forecast} have capacity but no forecast in "
                f"{', '.join(str(p) for p in forecast)}; add their shared forecasts or remove them from the table"
            )
        without_capacity = sorted(set(source) - set(caps[HOSPITAL]))
        if without_capacity:
            raise _BadInput(f"{capacity}: no capacity for hospital(s) {without_capacity}, which have a forecast")
        # Each hospital's own staffed beds are its base; surge can fill its empty physical beds.
        totals = caps.groupby(HOSPITAL)[[BEDS, STAFFED]].sum()
        cap_map = totals[STAFFED].astype(float).to_dict()
        room = (totals[BEDS] - totals[STAFFED]).astype(float).to_dict()
        config = RegionalConfig(
            surge_pool=pool,
            under_cost=under_cost,
            surge_cost=surge_cost,
            transfer_cost=transfer_cost,
            transfer_limit=math.inf if transfer_limit is None else transfer_limit,
            neighbours=neighbours,
            scenarios=scenarios,
            correlation=correlation,
            seed=seed,
            max_surge=room if any(v > 0 for v in room.values()) else None,
            noise_sd=noise_sd or None,
        )
        plan = plan_region(pd.concat(frames, ignore_index=True), cap_map, config)
    except (_BadInput, DataContractError, ValueError, RegionalSolveError) as exc:
        _fail(str(exc))
        return
    try:
        write_regional_plan(plan, out, overwrite=force)
        plot_regional(plan, out / "regional.png")
        write_regional_explanation(plan, out, overwrite=force)
    except OSError as exc:
        _fail(f"cannot write the regional plan to {out}: {exc}")
    table = Table(
        title=f"Regional plan: {plan.hospital_days[HOSPITAL].nunique()} hospitals, {plan.scenarios} scenarios"
    )
    for name in ("cost part", "expected cost"):
        table.add_column(name, justify="right")
    for part in ("surge", "unserved", "transfer", "total"):
        table.add_row(part, f"{plan.costs[part]:.1f}")
    _out.print(table)
    _out.print(_binding_table(plan))
    for line in regional_reasons(plan):
        _out.print(escape(line), highlight=False)
    if noise_sd:
        _out.print(
            "planned knowing the sharing noise (sd per hospital, beds): "
            + ", ".join(f"{h} {s:.1f}" for h, s in sorted(noise_sd.items())),
            highlight=False,
            markup=False,
        )
    for line in plan.warnings:
        _out.print(f"[yellow]warning:[/] {escape(line)}", highlight=False)
    _out.print(f"wrote {', '.join(str(out / n) for n in names)}", highlight=False, markup=False)


def _binding_table(plan: RegionalPlan, rows: int = 10) -> Table:
    """The binding constraints with the largest shadow prices: what one more unit of each would save."""
    binding = plan.shadow.binding() if plan.shadow is not None else pd.DataFrame()
    table = Table(title=f"Binding constraints ({len(binding)}; largest shadow prices first)")
    for name in ("constraint", "where", "date", "limit", "used", "saves per +1"):
        table.add_column(name, justify="left" if name in ("constraint", "where") else "right")
    for row in binding.head(rows).itertuples(index=False):
        table.add_row(
            escape(str(row.constraint)),
            escape(str(row.where)),
            str(pd.Timestamp(row.date).date()),
            f"{row.limit:g}",
            f"{row.used:.1f}",
            f"{row.shadow_price:.2f}",
        )
    if len(binding) > rows:
        table.caption = f"{len(binding) - rows} more in binding_constraints.csv"
    return table


def register(app: typer.Typer) -> None:
    """Add `allocate` and `allocate-region` to the medalloc app."""
    app.command("allocate")(allocate)
    app.command("allocate-region")(allocate_region)
