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
from medalloc.client.task import LocalData, load_local_data, test_forecasts
from medalloc.server.app import FINAL_MODEL, make_server_app
from medalloc.server.config import RunConfig
from medalloc_core.features import federation_window_spec
from medalloc_core.model_io import read_model_files, sidecar_of
from medalloc_core.models import ForecasterConfig, build_from_arrays, build_model
from medalloc_core.privacy.ledger import PrivacyLedger
from medalloc_core.privacy.release import ReleaseStore
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
    progress.phase(f"generating {scenario.hospitals} hospitals")
    region_dir = out / "region"
    task = get_task(scenario.task)
    if scenario.task == DEFAULT_TASK:
        write_region(generate_region(scenario.region_config()), region_dir)
        files = hospital_files(region_dir)
    else:
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
    if scenario.task != DEFAULT_TASK:
        return _task_report(scenario, out, region_dir, config, rounds, timings, progress)
    final_arrays = read_model_files(sidecar_of(out / FINAL_MODEL))[1]

    # --- the same test windows for every method ------------------------------------------
    began = time.perf_counter()
    spec = federation_window_spec(history=config.history, horizon=config.horizon, targets=config.target_list)
    mconfig = ForecasterConfig.for_spec(spec, model=config.model, hidden=config.hidden)
    quantiles = tuple(mconfig.quantiles)
    progress.phase("scoring the federated model", total=len(files))
    data: dict[str, LocalData] = {p.stem: load_local_data(p, spec) for p in files}
    methods: dict[str, dict[str, dict[str, Any]]] = {}
    forecasts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    epsilons: dict[str, float | None] = {}
    released: dict[str, cmp.ReleasedHospital] = {}
    federated = build_from_arrays(mconfig, final_arrays)
    initial = build_model(mconfig, seed=config.seed)
    methods["federated"], methods["initial model"] = {}, {}
    for hid, d in data.items():
        ledger_path = region_dir / "ledgers" / f"{hid}.json"
        epsilons[hid] = _patient_epsilon(ledger_path)
        store = ReleaseStore.open(ledger_path.with_name(ledger_path.name + ".released.csv"))
        if store.plan is not None:
            # The model learned from the node's release; scored on the truth, from true inputs.
            released[hid] = cmp.released_hospital(d, store)
            y, q = cmp.score_on_truth(federated, released[hid])
        else:
            y, q = test_forecasts(federated, d.dataset)
        forecasts[hid] = (y, q)
        methods["federated"][hid] = cmp.score(y, q, quantiles)
        y0, q0 = test_forecasts(initial, d.dataset)
        methods["initial model"][hid] = cmp.score(y0, q0, quantiles)
        progress.advance()
    epochs = config.num_server_rounds * config.local_epochs
    train_kwargs: dict[str, Any] = {
        "epochs": epochs,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "seed": config.seed,
    }

    if scenario.local_only:
        progress.phase("local-only (no DP)", total=len(data))
        methods["local only"] = {}
        for hid, d in data.items():
            methods["local only"][hid] = cmp.score(*cmp.local_only(mconfig, d, **train_kwargs), quantiles)
            progress.advance()
    local_dp_eps: dict[str, float] = {}
    if scenario.local_only_dp:
        progress.phase("local-only (its own release, same epsilon)", total=len(data))
        methods["local only DP"] = {}
        for hid in data:
            if hid in released:  # the same release the node federated with: the same patient-level epsilon
                y, q = cmp.local_only_dp(mconfig, released[hid], **train_kwargs)
                methods["local only DP"][hid] = cmp.score(y, q, quantiles)
                local_dp_eps[hid] = float(epsilons[hid] or 0.0)
            progress.advance()
    if scenario.centralized:
        progress.phase("centralized (pooled, no privacy)", total=1)
        pooled = cmp.centralized(mconfig, data, **train_kwargs)
        methods["centralized"] = {}
        for hid, d in data.items():
            y, q = test_forecasts(pooled, d.dataset)
            methods["centralized"][hid] = cmp.score(y, q, quantiles)
        progress.advance()
    for name in scenario.baselines:
        progress.phase(f"baseline: {name}", total=len(data))
        methods[name] = {}
        for hid, d in data.items():
            y = forecasts[hid][0]
            methods[name][hid] = cmp.score(y, cmp.baseline_forecasts(name, d, quantiles), quantiles)
            progress.advance()
    timings["comparisons"] = time.perf_counter() - began

    # --- plots -------------------------------------------------------------------------
    progress.phase("plots", total=2 + min(scenario.forecast_plots, len(data)))
    plot_dir = out / "plots"
    plot_dir.mkdir()
    for hid in list(data)[: scenario.forecast_plots]:
        plots.forecast_plot(plot_dir / f"forecast_{hid}.png", hid, data[hid].dataset, *forecasts[hid], quantiles)
        progress.advance()
    plots.rounds_plot(plot_dir / "metrics_per_round.png", rounds)
    progress.advance()
    plots.comparison_plot(plot_dir / "comparison_wape.png", {m: v for m, v in methods.items() if m != "initial model"})
    progress.advance()

    summary = {
        "scenario": scenario.name,
        "source": scenario.source,
        "hospitals": list(data),
        "federation": {
            "strategy": config.strategy,
            "rounds": config.num_server_rounds,
            "local_epochs": config.local_epochs,
            "last_round": rounds[-1].to_dict() if rounds else None,
            "epsilon_budget": scenario.epsilon_budget,
            "delta": scenario.delta,
            "epsilon_per_hospital": epsilons,
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
        "local_only_dp_epsilon": local_dp_eps,
        "timing_seconds": {k: round(v, 2) for k, v in timings.items()},
        "files": sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and "region" not in p.parts),
    }
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=float) + "\n", encoding="utf-8")
    return summary


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
    summary = {
        "scenario": scenario.name,
        "task": scenario.task,
        "source": scenario.source,
        "hospitals": sorted(epsilons) or [p.name for p in task.node_data(region_dir)],
        "federation": {
            "strategy": config.strategy,
            "rounds": config.num_server_rounds,
            "local_epochs": config.local_epochs,
            "last_round": rounds[-1].to_dict() if rounds else None,
            "epsilon_budget": scenario.epsilon_budget,
            "delta": scenario.delta,
            "epsilon_per_hospital": epsilons,
        },
        **report,
        "timing_seconds": {k: round(v, 2) for k, v in timings.items()},
        "files": sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and "region" not in p.parts),
    }
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=float) + "\n", encoding="utf-8")
    return summary
