"""`medalloc simulate`: run a whole federation of synthetic hospitals on Flower's Simulation Engine and compare it."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Column

from medalloc.cli.tables import Table
from medalloc_core.rounds import RoundRecord


def _fail(console: Console, message: str) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def _fmt(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _title(summary: dict[str, Any]) -> str:
    ev = summary["evaluation"]
    return (
        f"Rolling-origin accuracy, {len(summary['hospitals'])} hospitals: {ev['origins_per_unit']} origins per unit "
        f"over its last {ev['weeks']} weeks, held out from all training (volume-weighted over hospitals)"
    )


def _results_table(summary: dict[str, Any]) -> Table:
    fed, pv = summary["federation"], summary["privacy"]
    # Per patient where the hospitals' files carry patient ids (bounded before counting); per STAY for
    # daily-count files (docs/privacy.md gives the readmission figures).
    header = f"epsilon per patient (ids) / per stay (daily counts), stays <= {pv['max_stay_days']} d"
    table = Table(title=_title(summary))
    for name in ("method", "MAE", "WAPE", "pinball", "P10-P90 coverage", header):
        table.add_column(name, justify="left" if name == "method" else "right")
    # Each private method spends exactly its nodes' release: the largest patient-level epsilon over them.
    privacy: dict[str, float | None] = {
        method: max(per.values(), default=None) for method, per in summary["method_epsilon"].items()
    }
    privacy["initial model"] = 0.0
    for method, result in summary["methods"].items():
        m = result["overall"]["volume_weighted"]
        eps = privacy.get(method)
        table.add_row(
            method,
            _fmt(m["mae"], ".2f"),
            _fmt(m["wape"]),
            _fmt(m["pinball"], ".2f"),
            _fmt(m["coverage"], ".2f"),
            _fmt(eps, ".2f") if method in privacy else "no DP" if method in ("local only", "centralized") else "-",
        )
    table.caption = (
        f"epsilon per patient (per STAY for daily-count files: a patient with k stays is covered less, "
        f"docs/privacy.md has the readmission figures) at delta={pv['delta']:g}, the largest over the nodes, "
        f"for the node's whole life "
        f"(each node's budget {fed['epsilon_budget']:g}): {pv['meaning']}. "
        + ("Noise seeded for reproducibility: research only. " if pv["reproducible_noise"] else "")
        + "Lower MAE/WAPE/pinball is better."
        + (f" {few}" if (few := too_few_origins(summary)) else "")
    )
    return table


MIN_RANKING_ORIGINS = 4  # fewer forecast origins per unit than this cannot rank methods (docs/simulate.md)


def too_few_origins(summary: dict[str, Any]) -> str | None:
    """The table's warning when a unit has fewer origins than ``MIN_RANKING_ORIGINS``: too few to rank methods."""
    ev = summary.get("evaluation", {})
    origins = int(ev.get("origins_per_unit", MIN_RANKING_ORIGINS))
    if origins >= MIN_RANKING_ORIGINS:
        return None
    return (
        f"ONLY {origins} ORIGIN(S) PER UNIT: too few to rank methods (at least {MIN_RANKING_ORIGINS} are needed); "
        "the rows are not evidence that one method is better. Longer files, or more [evaluation] weeks, give more."
    )


def verdict(summary: dict[str, Any]) -> str | None:
    """One sentence: is the federated model at or below Holt-Winters on WAPE and pinball, and by how much."""
    methods = summary["methods"]
    if "federated" not in methods or "holt_winters" not in methods:
        return None
    fed, hw = methods["federated"]["overall"]["volume_weighted"], methods["holt_winters"]["overall"]["volume_weighted"]
    eps = max(summary["method_epsilon"].get("federated", {}).values(), default=0.0)
    parts = []
    for key, label in (("wape", "WAPE"), ("pinball", "pinball loss")):
        ratio = fed[key] / hw[key]
        how = f"{100 * (1 - ratio):.1f} % below" if ratio <= 1 else f"MISSES by {100 * (ratio - 1):.1f} %"
        parts.append(f"{label} {fed[key]:.3f} vs {hw[key]:.3f} ({ratio:.3f}x, {how})")
    few = " (too few origins to rank methods: see the table's note)" if too_few_origins(summary) else ""
    return f"Federated at patient-level epsilon {eps:.2f} against Holt-Winters{few}: " + "; ".join(parts) + "."


def _task_tables(summary: dict[str, Any]) -> list[Table]:
    """The "risk-calibration" report layout's tables: each method's scores, then (when judged) the service plans."""
    fed = summary["federation"]
    eps = max(fed["epsilon_per_hospital"].values(), default=None)
    eps_local = max(summary.get("local_only_dp_epsilon", {}).values(), default=None)
    privacy = {"federated DP": eps, "local only DP": eps_local}
    table = Table(title=f"Failure within 30 days, {len(summary['hospitals'])} hospitals (all test device-days)")
    for name in ("method", "AUROC", "Brier", "ECE", "log loss", "device epsilon"):
        table.add_column(name, justify="left" if name == "method" else "right")
    for method, result in summary["methods"].items():
        m = result["overall"]
        table.add_row(
            method,
            _fmt(m["auroc"]),
            _fmt(m["brier"], ".4f"),
            _fmt(m["ece"], ".4f"),
            _fmt(m["log_loss"], ".4f"),
            _fmt(privacy[method], ".2f") if method in privacy else "none" if "no " in method else "-",
        )
    table.caption = (
        f"epsilon per device at delta={fed['delta']:g} (max over nodes); each node's budget {fed['epsilon_budget']:g}. "
        "Higher AUROC, lower Brier/ECE/log loss is better."
    )
    tables = [table]
    plans = summary.get("plans") or {}
    if plans.get("plans"):
        plan_table = Table(
            title=f"Service plans judged on the true futures ({plans['weeks_per_hospital']} week(s) per hospital, "
            f"{plans['hours_share']:.0%} of a full fleet service per week)"
        )
        for name in ("plan", "failures prevented", "hours", "per hour", "/ oracle", "/ age rule"):
            plan_table.add_column(name, justify="left" if name == "plan" else "right")
        for name, p in plans["plans"].items():
            plan_table.add_row(
                name,
                _fmt(p["failures_prevented"], ".1f"),
                _fmt(p["hours_used"], ".0f"),
                _fmt(p["per_hour"], ".4f"),
                _fmt(p["ratio_to_oracle"]),
                _fmt(p["ratio_to_age_rule"], ".2f"),
            )
        tables.append(plan_table)
    return tables


class _RichProgress:
    """Renders the runner's phases and the federation's rounds with a rich progress bar (``runner.Progress``)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: Any = None

    def phase(self, name: str, total: int | None = None) -> None:
        if self.task is not None:
            self.progress.update(
                self.task, completed=self.progress.tasks[-1].total or 1, total=self.progress.tasks[-1].total or 1
            )
        self.task = self.progress.add_task(name, total=total)

    def advance(self, description: str | None = None) -> None:
        self.progress.advance(self.task)
        if description:
            self.progress.update(self.task, description=description)

    def round(self, record: RoundRecord) -> None:
        r = record.round
        if r == 0:
            ev = record.evaluate
            self.progress.update(
                self.task, description=f"federation: initial model, test MAE {_fmt(ev.get('eval-mae'), '.2f')}"
            )
            return
        nodes = record.nodes
        ev, tr = record.evaluate, record.train
        self.progress.update(
            self.task,
            advance=1,
            description=(
                f"federation round {r}: {nodes.get('accepted', 0)}/{nodes.get('sampled', 0)} nodes, "
                f"loss {_fmt(tr.get('train-loss'))}, test MAE {_fmt(ev.get('eval-mae'), '.2f')}, "
                f"epsilon max {_fmt(record.epsilon_max, '.2f')}"
            ),
        )


def simulate(
    config: Path | None = typer.Option(
        None, "--config", "-c", help="Scenario TOML; without it the embedded default scenario runs."
    ),
    out: Path = typer.Option(
        Path("results/default"), "--out", "-o", help="Results folder (must not exist unless --force)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing results folder of an earlier simulation."),
    show_default: bool = typer.Option(False, "--show-default", help="Print the embedded default scenario and exit."),
    report: bool = typer.Option(
        True,
        "--report/--no-report",
        help="After the run, plan beds and the region from the final model (allocation/) and write report.html.",
    ),
) -> None:
    """Simulate a federation of synthetic hospitals and compare it with local-only, centralized and classical baselines.

    Writes metrics.jsonl, summary.json, the final model (safetensors + JSON) and PNG plots to --out.
    """
    console = Console()
    # Flower and Ray are heavy: import them only when this command runs.
    from medalloc.simulations.logs import quiet_flower
    from medalloc.simulations.runner import FederationFailed, ResultsExist, run_scenario
    from medalloc.simulations.scenario import ScenarioError, default_scenario_text, load_scenario

    if show_default:
        typer.echo(default_scenario_text(), nl=False)  # verbatim: rich would wrap long lines and break the TOML
        return
    try:
        scenario = load_scenario(config)
    except ScenarioError as exc:
        _fail(console, str(exc))
    if out.exists() and any(out.iterdir()) and not force:
        _fail(console, f"{out} already exists and is not empty; choose another --out or pass --force to replace it")

    handler = RichHandler(console=console, show_path=False, markup=False)
    root = logging.getLogger()
    root.handlers = [handler]
    quiet_flower()  # Flower's own INFO lines would bury the display
    # The generated region has overflow days by design; the validator's per-file warnings about
    # them are for hospitals checking real data (`medalloc validate`), not for this display.
    logging.getLogger("medalloc_core.validation").setLevel(logging.ERROR)
    console.print(
        f"[bold]MedAlloc simulation[/] '{escape(scenario.name)}' ({escape(scenario.source)}): "
        f"{escape(scenario.task)} task, {scenario.hospitals} hospitals, "
        f"{scenario.federation.get('num-server-rounds', 5)} rounds of "
        f"{escape(str(scenario.federation.get('strategy', 'fedavg')))} -> {escape(str(out))}",
        highlight=False,
    )
    began = time.perf_counter()
    # At 80 columns a long step ("federation round 2: 3/3 nodes, loss ..., epsilon max ...") wraps onto a
    # second line; without the fold it took the whole width and cut the bar, the count and the time to "…".
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}", table_column=Column(overflow="fold")),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=console) as progress:
            summary = run_scenario(scenario, out, force=force, progress=_RichProgress(progress))
    except ResultsExist as exc:
        _fail(console, str(exc))
    except FederationFailed as exc:
        table = Table(title="why nodes did not contribute (node-rounds)")
        table.add_column("outcome: reason")
        table.add_column("count", justify="right")
        for reason, count in sorted(exc.refusals.items(), key=lambda kv: -kv[1]):
            table.add_row(reason, str(count))
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        if exc.refusals:
            console.print(table)
        raise typer.Exit(code=1) from None
    page = ""
    from medalloc_core.tasks import get_task

    # The tables follow the task's report layout (FederatedTask.report_layout), never its name.
    if get_task(summary["task"]).report_layout == "risk-calibration":
        for table in _task_tables(summary):
            console.print(table)
    else:  # "forecast-accuracy"
        console.print(_results_table(summary))
        line = verdict(summary)
        if line:
            console.print(line, highlight=False)
        if report:
            from medalloc.simulations.plans import write_run_plans
            from medalloc_core.report import write_report

            with console.status("planning beds and the region from the final model; writing the report"):
                planned = write_run_plans(out, plots=scenario.forecast_plots)
                plan = (
                    f", the allocation plan in {planned}"
                    if planned is not None
                    else " (no allocation plan: beds are planned from census forecasts, and this run forecasts none)"
                )
                page = f"{plan}, the one-page report {write_report(out)}"
    console.print(
        f"done in {time.perf_counter() - began:.0f} s: {out}/summary.json, {out}/metrics.jsonl, "
        f"{out}/final_model.safetensors, plots in {out}/plots{page}",
        highlight=False,
        markup=False,
    )


def register(app: typer.Typer) -> None:
    """Add ``medalloc simulate`` to the CLI."""
    app.command(name="simulate")(simulate)
