"""Runs a scenario end to end: region, federation on Flower's Simulation Engine, comparisons, summary and plots.

``run_scenario(scenario, out)`` is what ``medalloc simulate`` calls. The federation runs the
project's real ServerApp and ClientApp (the same code a deployment runs) on
``flwr.simulation.run_simulation`` with one virtual node per hospital; each virtual node reads
its *own* hospital file and keeps its own privacy ledger in ``<out>/region/ledgers``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from medalloc.client.app import make_client_app
from medalloc.server.app import make_server_app
from medalloc.server.config import RunConfig
from medalloc_core.model_io import FINAL_MODEL_NAME
from medalloc_core.rounds import METRICS_FILE, RoundRecord, read_rounds, refusal_summary
from medalloc_core.tasks import get_task
from medalloc_core.tasks.base import SimulationRun

from .scenario import Scenario, default_scenario_text

logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
SCENARIO_FILE = "scenario.toml"


class FederationFailed(RuntimeError):
    """No round aggregated anything (every node refused or failed): there is no trained model to compare.

    ``refusals`` counts each reason a node gave; the results folder keeps ``metrics.jsonl``.
    """

    def __init__(self, message: str, refusals: dict[str, int]) -> None:
        super().__init__(message)
        self.refusals = refusals


class ResultsExist(FileExistsError):
    """The results folder exists; it is replaced only with ``force`` and only if it is a MedAlloc results folder."""


class Progress(Protocol):
    """What the runner reports while it works; the CLI renders it with rich (``NoProgress`` does nothing)."""

    def phase(self, name: str, total: int | None = None) -> None:
        """A new phase starts (``total`` steps when known)."""

    def advance(self, description: str | None = None) -> None:
        """One step of the current phase is done."""

    def round(self, record: RoundRecord) -> None:
        """A federated round finished (its metrics.jsonl record)."""


class NoProgress:
    """The silent ``Progress``: for callers without a display."""

    def phase(self, name: str, total: int | None = None) -> None:
        """Nothing to show."""

    def advance(self, description: str | None = None) -> None:
        """Nothing to show."""

    def round(self, record: RoundRecord) -> None:
        """Nothing to show."""


def prepare_out_dir(out: Path, *, force: bool) -> None:
    """Create ``out``; an existing non-empty folder needs ``force`` and must hold a previous run's scenario.toml."""
    if out.exists() and any(out.iterdir()):
        if not force:
            raise ResultsExist(
                f"{out} already exists and is not empty; choose another --out or pass --force to replace it"
            )
        if not (out / SCENARIO_FILE).is_file():
            raise ResultsExist(
                f"{out} is not a MedAlloc results folder (no {SCENARIO_FILE}); refusing to delete it, even with --force"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def simulate_federation(
    run_config: dict[str, Any],
    num_nodes: int,
    *,
    client_cpus: float = 1.0,
    on_round: Callable[[RoundRecord], None] | None = None,
) -> None:
    """Run the project's ServerApp and ClientApp on Flower's Simulation Engine (Ray backend),
    one virtual node per hospital."""
    from flwr.simulation import run_simulation

    # No accelerators are used; this opts in to Ray's future behaviour and silences its warning about it.
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    backend = {
        "client_resources": {"num_cpus": client_cpus, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": os.cpu_count() or 1,
            "include_dashboard": False,
            "logging_level": "ERROR",
            "log_to_driver": False,  # node logs stay with the nodes; refusals reach the server as replies
        },
    }
    run_simulation(
        server_app=make_server_app(run_config, on_round=on_round),
        client_app=make_client_app(run_config),
        num_supernodes=num_nodes,
        backend_config=backend,  # type: ignore[arg-type]
    )


def run_scenario(
    scenario: Scenario, out: Path, *, force: bool = False, progress: Progress | None = None
) -> dict[str, Any]:
    """Run ``scenario`` and write its results folder; returns the summary (also in ``summary.json``).

    Every task goes the same way: its region (generated, or the researcher's files copied),
    the federation, then the task's own research report (``FederatedTask.report``: comparisons,
    plots, the summary's task part). Raises ``ResultsExist`` when ``out`` holds anything and
    ``force`` is false.
    """
    progress = progress or NoProgress()
    prepare_out_dir(out, force=force)
    torch.set_num_threads(1)  # the comparisons' models are small; more threads only contend on a shared CPU
    timings: dict[str, float] = {}
    (out / SCENARIO_FILE).write_text(scenario.text or default_scenario_text(), encoding="utf-8")

    # --- the region: one file (or fleet folder) per hospital ------------------------------
    began = time.perf_counter()
    region_dir = out / "region"
    task = get_task(scenario.task)
    if scenario.data is not None:
        # Copies: the virtual nodes keep their ledgers beside their files, never in the researcher's folder.
        progress.phase(f"copying {scenario.hospitals} hospital files")
        region_dir.mkdir()
        for path in scenario.data.files:
            shutil.copy2(path, region_dir / path.name)
        files = task.node_data(region_dir)
    else:
        progress.phase(f"generating {scenario.hospitals} hospitals")
        files = task.generate(region_dir, scenario.region)
    timings["region"] = time.perf_counter() - began

    # --- the federation ---------------------------------------------------------------
    run_config = scenario.run_config(data_dir=region_dir, out_dir=out)
    config = scenario.federation_config(data_dir=region_dir, out_dir=out)
    began = time.perf_counter()
    progress.phase("federation (starting Ray)", total=config.num_server_rounds)
    simulate_federation(run_config, len(files), client_cpus=scenario.client_cpus, on_round=progress.round)
    timings["federation"] = time.perf_counter() - began
    rounds = read_rounds(out / METRICS_FILE)
    if not (out / FINAL_MODEL_NAME).exists():
        refusals = refusal_summary(rounds)
        raise FederationFailed(
            f"no round of the federation aggregated any update, so there is no trained model (and no "
            f"{FINAL_MODEL_NAME} was written); {out / METRICS_FILE} has every round's node outcomes",
            refusals,
        )

    # --- the task's report: comparisons, plots, its part of the summary ---------------------
    began = time.perf_counter()
    (out / "plots").mkdir(exist_ok=True)
    report = task.report(
        SimulationRun(
            out=out,
            region_dir=region_dir,
            region=scenario.region,
            run=config,
            options=task.options(config.task_options),
            comparisons=scenario.comparisons,
            epsilon_budget=scenario.epsilon_budget,
            delta=scenario.delta,
            max_stay_days=scenario.max_stay_days,
            reproducible_noise=scenario.reproducible_noise,
            evaluation={
                "weeks": scenario.eval_weeks,
                "origins": scenario.eval_origins,
                "validation-days": scenario.validation_days,
            },
            forecast_plots=scenario.forecast_plots,
            rounds=rounds,
            phase=lambda name, total: progress.phase(name, total=total),
            advance=progress.advance,
        )
    )
    timings["comparisons"] = time.perf_counter() - began
    epsilons = report.pop("federation_epsilon_per_hospital", {})
    hospitals = report.pop("hospitals", None) or sorted(epsilons) or [p.name for p in files]
    return _write_summary(scenario, out, config, rounds, hospitals, epsilons, report, timings)


def _write_summary(
    scenario: Scenario,
    out: Path,
    config: RunConfig,
    rounds: list[RoundRecord],
    hospitals: list[str],
    epsilons: dict[str, Any],
    body: dict[str, Any],
    timings: dict[str, float],
) -> dict[str, Any]:
    """Write ``summary.json``: what every run has (scenario, federation, timings, files) around its task's ``body``."""
    summary = {
        "scenario": scenario.name,
        "task": scenario.task,
        "source": scenario.source,
        "hospitals": hospitals,
        "federation": {
            "strategy": config.strategy,
            "rounds": config.num_server_rounds,
            "local_epochs": config.local_epochs,
            "last_round": rounds[-1].to_dict() if rounds else None,
            "epsilon_budget": scenario.epsilon_budget,
            "delta": scenario.delta,
            "epsilon_per_hospital": epsilons,
        },
        **body,
        "timing_seconds": {k: round(v, 2) for k, v in timings.items()},
        "files": sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and "region" not in p.parts),
    }
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=float) + "\n", encoding="utf-8")
    return summary
