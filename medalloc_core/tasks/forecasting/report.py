"""The forecasting task's research report: ``medalloc simulate``'s comparisons, plots and summary part.

Every method is scored at the same rolling origins of every hospital (``comparisons``): the
federated model as the federation left it, the model it started from, each hospital alone,
centralized training and the classical baselines the scenario's ``[comparisons]`` names. The
runner calls :func:`forecast_report` through ``FederatedTask.report``, as it calls every task's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medalloc_core import simulation_plots as plots
from medalloc_core.forecast.models import ForecasterConfig, state_arrays
from medalloc_core.model_io import FINAL_MODEL_NAME, read_model_files, sidecar_of
from medalloc_core.privacy.ledger import PrivacyLedger
from medalloc_core.simulation import simulated_ledger_path
from medalloc_core.tasks.base import SimulationRun
from medalloc_core.tasks.forecasting import comparisons as cmp

#: One sentence for every place that shows the headline epsilon (simulate table, summary, docs).
PRIVACY_MEANING = (
    "whether or not any one patient's stay of up to {n} nights is in a hospital's records changes the probability "
    "of anything the hospital ever releases by at most a factor e^epsilon (except with probability delta)"
)
BASELINES = ("seasonal_naive", "moving_average", "holt_winters")


@dataclass(frozen=True)
class ForecastComparisons:
    """A scenario's ``[comparisons]`` for the forecasting task (every key optional)."""

    local_only: bool = True  # each hospital alone, without DP
    local_only_dp: bool = True  # each hospital alone on its own release (the same patient-level epsilon)
    centralized: bool = True  # pooled true counts: the no-privacy upper bound
    baselines: tuple[str, ...] = ("seasonal_naive", "holt_winters")

    @classmethod
    def from_section(cls, raw: Mapping[str, Any]) -> ForecastComparisons:
        """Validate ``[comparisons]``; ``ValueError`` names the key and what it takes."""
        known = {"local-only", "local-only-dp", "centralized", "baselines"}
        extra = set(raw) - known
        if extra:
            raise ValueError(f"unknown key(s) {sorted(extra)} in [comparisons]; known: {sorted(known)}")
        listed = raw.get("baselines", list(cls.baselines))
        if not isinstance(listed, list) or not all(isinstance(b, str) for b in listed):
            raise ValueError(
                f"[comparisons] baselines must be a list of names such as {list(BASELINES)}, got {listed!r:.60}"
            )
        bad = [b for b in listed if b not in BASELINES]
        if bad:
            raise ValueError(f"[comparisons] baselines: unknown baseline(s) {bad}; choose from {list(BASELINES)}")
        for key in ("local-only", "local-only-dp", "centralized"):
            if key in raw and not isinstance(raw[key], bool):
                raise ValueError(f"[comparisons] {key} must be true or false, got {raw[key]!r:.60}")
        return cls(
            local_only=bool(raw.get("local-only", True)),
            local_only_dp=bool(raw.get("local-only-dp", True)),
            centralized=bool(raw.get("centralized", True)),
            baselines=tuple(listed),
        )


def _patient_epsilon(path: Path) -> float | None:
    """A node's patient-level epsilon from its ledger; None when it never got one (refused everything)."""
    if not path.exists():
        return None
    return float(PrivacyLedger.load(path).epsilon_spent())


def forecast_report(sim: SimulationRun, *, task: Any) -> dict[str, Any]:
    """Score every compared method at the same rolling origins, draw the plots; the summary's forecasting part."""
    from medalloc_core.tasks.forecasting.task import run_initial_model, run_window_spec

    config, out, region_dir = sim.run, sim.out, sim.region_dir
    compare = ForecastComparisons.from_section(sim.comparisons)
    eval_origins = int(sim.evaluation.get("origins", 8))
    files = task.node_data(region_dir)
    final_arrays = read_model_files(sidecar_of(out / FINAL_MODEL_NAME))[1]

    # --- rolling-origin evaluation: the same origins for every method -----------------------
    # The nodes' own window spec: its held-out weeks ([evaluation] weeks) are days no node
    # trained on, and every other method trains on the same days before them.
    spec = run_window_spec(config)
    mconfig = ForecasterConfig.for_spec(spec, model=config.model, hidden=config.hidden)
    quantiles = tuple(mconfig.quantiles)
    sim.phase("rolling-origin evaluation: loading files and releases", 1)
    ledgers = {p.stem: simulated_ledger_path(region_dir, task.name, p.stem) for p in files}
    evaluation = cmp.evaluation_data({p.stem: p for p in files}, ledgers, spec, n_origins=eval_origins)
    epsilons = {hid: _patient_epsilon(ledgers[hid]) for hid in evaluation.truth}
    sim.advance()
    compared = cmp.methods(
        model=config.model,
        hidden=config.hidden,
        init=config.init,
        epochs=config.num_server_rounds * config.local_epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        seed=config.seed,
        final=final_arrays,
        initial=state_arrays(run_initial_model(config, mconfig)),
        local_only=compare.local_only,
        local_only_dp=compare.local_only_dp,
        centralized=compare.centralized,
        baselines=compare.baselines,
        quantiles=quantiles,
    )
    methods: dict[str, dict[str, dict[str, Any]]] = {}
    forecasts: dict[str, np.ndarray] = {}
    method_epsilon: dict[str, dict[str, float]] = {}
    for name, method in compared.items():
        learns = "each node's release" if method.trains_on == "released" else "true counts"
        sim.phase(f"{name} (from {learns})", 1)
        predicted = cmp.run_method(method, evaluation)
        methods[name] = {hid: cmp.score(evaluation.actuals[hid], q, quantiles) for hid, q in predicted.items()}
        if method.trains_on == "released":  # the node's own release: its patient-level epsilon, nothing more
            method_epsilon[name] = {hid: float(epsilons[hid] or 0.0) for hid in predicted if hid in evaluation.released}
        if name == "federated":
            forecasts = predicted
        sim.advance()

    # --- plots -------------------------------------------------------------------------
    hospitals = list(evaluation.truth)
    sim.phase("plots", 2 + min(sim.forecast_plots, len(hospitals)))
    plot_dir = out / "plots"
    plot_dir.mkdir(exist_ok=True)
    for hid in hospitals[: sim.forecast_plots]:
        plots.forecast_plot(
            plot_dir / f"forecast_{hid}.png",
            hid,
            evaluation.origins[hid],
            evaluation.actuals[hid],
            forecasts[hid],
            quantiles,
            spec.targets,
        )
        sim.advance()
    plots.rounds_plot(plot_dir / "metrics_per_round.png", sim.rounds)
    sim.advance()
    plots.comparison_plot(plot_dir / "comparison_wape.png", {m: v for m, v in methods.items() if m != "initial model"})
    sim.advance()

    return {
        "hospitals": hospitals,
        "federation_epsilon_per_hospital": epsilons,
        # Rolling-origin evaluation: every unit's last `weeks` weeks held out from all training
        # (the nodes' included) and forecast from `origins` origins, the same for every method.
        "evaluation": {
            "weeks": int(sim.evaluation.get("weeks", 16)),
            "validation_days": int(sim.evaluation.get("validation-days", 28)),
            "origins_per_unit": eval_origins,
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
            "delta": sim.delta,
            "max_stay_days": sim.max_stay_days,
            "reproducible_noise": sim.reproducible_noise,
            "meaning": PRIVACY_MEANING.format(n=sim.max_stay_days),
        },
        "methods": {
            name: {"overall": cmp.overall(per_h), "per_hospital": per_h} for name, per_h in methods.items() if per_h
        },
        # Per private method and hospital: the patient-level epsilon of the release it trained on.
        "method_epsilon": method_epsilon,
        "local_only_dp_epsilon": method_epsilon.get("local only DP", {}),
    }
