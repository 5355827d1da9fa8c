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

import numpy as np
import torch

from medalloc.client.app import make_client_app
from medalloc.client.config import hospital_files
from medalloc.server.app import FINAL_MODEL, initial_model, make_server_app, refusal_summary, window_spec
from medalloc.server.config import RunConfig
from medalloc_core.forecast.models import ForecasterConfig, state_arrays
from medalloc_core.model_io import read_model_files, sidecar_of
from medalloc_core.privacy.ledger import PrivacyLedger
from medalloc_core.rounds import METRICS_FILE, RoundRecord, read_rounds
from medalloc_core.synthetic import generate_region, write_region
from medalloc_core.tasks import DEFAULT_TASK, get_task
from medalloc_core.tasks.base import SimulationRun

from . import comparisons as cmp
from . import plots
from .scenario import Scenario, default_scenario_text

logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
# One sentence for every place that shows the headline epsilon (simulate table, summary, docs).
PRIVACY_MEANING = (
    "whether or not any one patient's stay of up to {n} nights is in a hospital's records changes the probability "
    "of anything the hospital ever releases by at most a factor e^epsilon (except with probability delta)"
)
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


def _patient_epsilon(path: Path) -> float | None:
    """A node's patient-level epsilon from its ledger; None when it never got one (refused everything)."""
    if not path.exists():
        return None
    return float(PrivacyLedger.load(path).epsilon_spent())


def run_scenario(
    scenario: Scenario, out: Path, *, force: bool = False, progress: Progress | None = None
) -> dict[str, Any]:
    """Run ``scenario`` and write its results folder; returns the summary (also in ``summary.json``).

    Raises ``ResultsExist`` when ``out`` holds anything and ``force`` is false.
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
    if scenario.task != DEFAULT_TASK:
        progress.phase(f"generating {scenario.hospitals} hospitals")
        files = task.generate(region_dir, scenario.region)
    elif scenario.data is not None:
        # Copies: the virtual nodes keep their ledgers beside their files, never in the researcher's folder.
        progress.phase(f"copying {scenario.hospitals} hospital files")
        region_dir.mkdir()
        for path in scenario.data.files:
            shutil.copy2(path, region_dir / path.name)
        files = hospital_files(region_dir)
    else:
        progress.phase(f"generating {scenario.hospitals} hospitals")
        write_region(generate_region(scenario.region_config()), region_dir)
        files = hospital_files(region_dir)
    timings["region"] = time.perf_counter() - began

    # --- the federation ---------------------------------------------------------------
    run_config = scenario.run_config(data_dir=region_dir, out_dir=out)
    config = scenario.federation_config(data_dir=region_dir, out_dir=out)
    began = time.perf_counter()
    progress.phase("federation (starting Ray)", total=config.num_server_rounds)
    simulate_federation(run_config, len(files), client_cpus=scenario.client_cpus, on_round=progress.round)
    timings["federation"] = time.perf_counter() - began
    rounds = read_rounds(out / METRICS_FILE)
    if not (out / FINAL_MODEL).exists():
        refusals = refusal_summary(rounds)
        raise FederationFailed(
            f"no round of the federation aggregated any update, so there is no trained model (and no "
            f"{FINAL_MODEL} was written); {out / METRICS_FILE} has every round's node outcomes",
            refusals,
        )
    if scenario.task != DEFAULT_TASK:
        return _task_report(scenario, out, region_dir, config, rounds, timings, progress)
    final_arrays = read_model_files(sidecar_of(out / FINAL_MODEL))[1]

    # --- rolling-origin evaluation: the same origins for every method -----------------------
    # The nodes' own window spec: its held-out weeks ([evaluation] weeks) are days no node
    # trained on, and every other method trains on the same days before them.
    began = time.perf_counter()
    spec = window_spec(config)
    mconfig = ForecasterConfig.for_spec(spec, model=config.model, hidden=config.hidden)
    quantiles = tuple(mconfig.quantiles)
    progress.phase("rolling-origin evaluation: loading files and releases", total=1)
    ledgers = region_dir / "ledgers"
    evaluation = cmp.evaluation_data({p.stem: p for p in files}, ledgers, spec, n_origins=scenario.eval_origins)
    epsilons = {hid: _patient_epsilon(ledgers / f"{hid}.json") for hid in evaluation.truth}
    progress.advance()
    compared = cmp.methods(
        model=config.model,
        hidden=config.hidden,
        init=config.init,
        epochs=config.num_server_rounds * config.local_epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        seed=config.seed,
        final=final_arrays,
        initial=state_arrays(initial_model(config, mconfig)),
        local_only=scenario.local_only,
        local_only_dp=scenario.local_only_dp,
        centralized=scenario.centralized,
        baselines=scenario.baselines,
        quantiles=quantiles,
    )
    methods: dict[str, dict[str, dict[str, Any]]] = {}
    forecasts: dict[str, np.ndarray] = {}
    method_epsilon: dict[str, dict[str, float]] = {}
    for name, method in compared.items():
        learns = "each node's release" if method.trains_on == "released" else "true counts"
        progress.phase(f"{name} (from {learns})", total=1)
        predicted = cmp.run_method(method, evaluation)
        methods[name] = {hid: cmp.score(evaluation.actuals[hid], q, quantiles) for hid, q in predicted.items()}
        if method.trains_on == "released":  # the node's own release: its patient-level epsilon, nothing more
            method_epsilon[name] = {hid: float(epsilons[hid] or 0.0) for hid in predicted if hid in evaluation.released}
        if name == "federated":
            forecasts = predicted
        progress.advance()
    timings["comparisons"] = time.perf_counter() - began

    # --- plots -------------------------------------------------------------------------
    hospitals = list(evaluation.truth)
    progress.phase("plots", total=2 + min(scenario.forecast_plots, len(hospitals)))
    plot_dir = out / "plots"
    plot_dir.mkdir()
    for hid in hospitals[: scenario.forecast_plots]:
        plots.forecast_plot(
            plot_dir / f"forecast_{hid}.png",
            hid,
            evaluation.origins[hid],
            evaluation.actuals[hid],
            forecasts[hid],
            quantiles,
            spec.targets,
        )
        progress.advance()
    plots.rounds_plot(plot_dir / "metrics_per_round.png", rounds)
    progress.advance()
    plots.comparison_plot(plot_dir / "comparison_wape.png", {m: v for m, v in methods.items() if m != "initial model"})
    progress.advance()

    body = {
        # Rolling-origin evaluation: every unit's last `weeks` weeks held out from all training
        # (the nodes' included) and forecast from `origins` origins, the same for every method.
        "evaluation": {
            "weeks": scenario.eval_weeks,
            "validation_days": scenario.validation_days,
            "origins_per_unit": scenario.eval_origins,
            "origins_per_hospital": {hid: len(o) for hid, o in evaluation.origins.items()},
            "first_origin": {
                hid: str(np.min(o.target_start).astype("datetime64[D]"))
                for hid, o in evaluation.origins.items()
                if len(o)
            },
            "horizon": config.horizon,
        },
        # The headline: epsilon per patient (a stay of up to max_stay_days nights) at delta, the
        # largest over the nodes, lifetime; every private method spends exactly this.
        "privacy": {
            "unit": "patient",
            "mechanism": "source",
            "epsilon_max": max((e for e in epsilons.values() if e is not None), default=None),
            "delta": scenario.delta,
            "max_stay_days": scenario.max_stay_days,
            "reproducible_noise": scenario.reproducible_noise,
            "meaning": PRIVACY_MEANING.format(n=scenario.max_stay_days),
        },
        "methods": {
            name: {"overall": cmp.overall(per_h), "per_hospital": per_h} for name, per_h in methods.items() if per_h
        },
        # Per private method and hospital: the patient-level epsilon of the release it trained on.
        "method_epsilon": method_epsilon,
        "local_only_dp_epsilon": method_epsilon.get("local only DP", {}),
    }
    return _write_summary(scenario, out, config, rounds, hospitals, epsilons, body, timings)


def _task_report(
    scenario: Scenario,
    out: Path,
    region_dir: Path,
    config: RunConfig,
    rounds: list[RoundRecord],
    timings: dict[str, float],
    progress: Progress,
) -> dict[str, Any]:
    """The comparisons, plots and summary of a task other than forecasting: the task's own report."""
    task = get_task(scenario.task)
    began = time.perf_counter()
    options = task.options(config.task_options)
    report = task.report(
        SimulationRun(
            out=out,
            region_dir=region_dir,
            region=scenario.region,
            run=config,
            options=options,
            comparisons=scenario.comparisons,
            epsilon_budget=scenario.epsilon_budget,
            delta=scenario.delta,
            phase=lambda name, total: progress.phase(name, total=total),
            advance=progress.advance,
        )
    )
    timings["comparisons"] = time.perf_counter() - began
    plots.privacy_rounds_plot(out / "plots" / "metrics_per_round.png", rounds)
    epsilons = report.pop("federation_epsilon_per_hospital", {})
    hospitals = sorted(epsilons) or [p.name for p in task.node_data(region_dir)]
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
