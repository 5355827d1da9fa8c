"""An equipment simulation's comparisons, scores, plots and summary: what ``medalloc simulate`` adds after training.

Every method is scored on every hospital's same test period (AUROC, Brier, calibration error,
log loss), and the week's service plans are judged on the synthetic fleets' own futures. The
federated model is the federation's final model file; local-only DP gets exactly the noise and
the number of steps each node's ledger recorded, so the same device epsilon.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from medalloc_core.equipment.comparisons import (
    compare_plans,
    model_predictions,
    rule_predictions,
    score_predictions,
    train_alone,
    train_pooled,
    weekly_hours,
)
from medalloc_core.equipment.decide import age_priority, week_inputs
from medalloc_core.equipment.local import LocalFleet, load_local_fleet
from medalloc_core.equipment.model import (
    DeviceDP,
    RiskModelConfig,
    RiskTrainConfig,
    build_risk_model,
    load_risk_model,
    risk_plan,
)
from medalloc_core.equipment.plan import plan_week, rule_plan
from medalloc_core.equipment.plots import plan_plot, reliability_plot
from medalloc_core.equipment.synthetic import FleetConfig, generate_fleets
from medalloc_core.privacy.accounting import epsilon_for
from medalloc_core.privacy.ledger import LedgerError, PrivacyLedger
from medalloc_core.simulation import simulated_ledger_path
from medalloc_core.tasks.base import SimulationRun

logger = logging.getLogger(__name__)


class ComparisonOptionsError(ValueError):
    """An unknown or invalid key in a scenario's ``[comparisons]`` for the equipment task."""


@dataclass(frozen=True)
class EquipmentComparisons:
    """The scenario's ``[comparisons]`` for an equipment federation (kebab-case keys)."""

    local_only: bool = True  # each hospital alone, no DP
    local_only_dp: bool = True  # each hospital alone, its federated noise and steps: the same device epsilon
    centralized: bool = True  # all hospitals' snapshots pooled, no privacy
    rules: bool = True  # the age rule and the interval rule
    plan_weeks: int = 2  # planning weeks per hospital judged on the truth (0: none)
    plan_worlds: int = 100  # simulated futures per planning week
    hours_share: float = 0.04  # technician hours per week, as a share of servicing the whole fleet once
    plan_plots: int = 2  # hospitals with a plan figure

    @classmethod
    def from_section(cls, raw: Mapping[str, Any]) -> EquipmentComparisons:
        """Read ``[comparisons]``; unknown keys and wrong types raise ``ComparisonOptionsError``."""
        known = {f.name.replace("_", "-"): f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if key not in known:
                raise ComparisonOptionsError(
                    f"unknown key '{key}' in [comparisons] of an equipment scenario; known: {sorted(known)}"
                )
            default: Any = known[key].default
            if isinstance(default, bool) != isinstance(value, bool) or not isinstance(value, type(default) | int):
                raise ComparisonOptionsError(f"[comparisons] {key} must be like {default!r}, got {value!r}")
            values[known[key].name] = float(value) if isinstance(default, float) else value
        options = cls(**values)
        if options.plan_weeks < 0 or options.plan_worlds < 1 or not 0 < options.hours_share <= 1:
            raise ComparisonOptionsError("[comparisons] needs plan-weeks >= 0, plan-worlds >= 1, 0 < hours-share <= 1")
        return options


def _ledger(path: Path) -> tuple[list[tuple[float, float, int]], float]:
    try:
        ledger = PrivacyLedger.load(path)
    except LedgerError:
        return [], 0.0
    return [tuple(h) for h in ledger.history()], float(ledger.epsilon_spent())  # type: ignore[misc]


def _plan_days(locals_: Mapping[str, LocalFleet], weeks: int) -> tuple[int, ...]:
    """Planning days inside every hospital's test period, five weeks apart, the last one first."""
    local = next(iter(locals_.values()))
    last = int(local.dataset.test.day.max()) if len(local.dataset.test) else 0
    return tuple(sorted(last - 35 * k for k in range(weeks) if last - 35 * k > 0))


def equipment_report(sim: SimulationRun) -> dict[str, Any]:
    """Comparisons, plots and the summary's task part of an equipment simulation (written under ``sim.out``)."""
    options = sim.options
    comparisons = EquipmentComparisons.from_section(sim.comparisons)
    spec = options.spec
    paths = sorted(p for p in sim.region_dir.iterdir() if p.is_dir() and p.name.startswith("H"))
    sim.phase("loading the fleets", len(paths))
    locals_: dict[str, LocalFleet] = {}
    for path in paths:
        locals_[path.name] = load_local_fleet(path, spec)
        sim.advance()
    saved = load_risk_model(sim.out)
    config: RiskModelConfig = saved.config
    federated = saved.model
    histories = {h: _ledger(simulated_ledger_path(sim.region_dir, sim.run.task, h)) for h in locals_}
    epsilons = {h: eps for h, (_, eps) in histories.items()}
    rng = np.random.default_rng(sim.run.seed)
    epochs = sim.run.num_server_rounds * sim.run.local_epochs
    alone = RiskTrainConfig(epochs=epochs, batch_size=options.batch_size, lr=options.lr)
    models: dict[str, Callable[[str], nn.Module]] = {"federated DP": lambda h: federated}
    local_dp_epsilon: dict[str, float] = {}
    if comparisons.local_only_dp:
        sim.phase("local-only (device-level DP, the same spend)", len(locals_))
        local_dp: dict[str, nn.Module] = {}
        for hid, local in locals_.items():
            history = histories[hid][0]
            if history:  # the node's own recorded noise and steps, in one run: the same epsilon
                sigma, steps = history[0][0], sum(h[2] for h in history)
                per_epoch = risk_plan(local.batches.n_devices, alone)
                train = RiskTrainConfig(
                    epochs=max(1, steps // per_epoch.steps_per_epoch), batch_size=options.batch_size, lr=options.lr
                )
                dp = DeviceDP(noise_multiplier=sigma, max_grad_norm=options.max_grad_norm)
                local_dp[hid] = train_alone(config, local, train=train, dp=dp, rng=rng, seed=sim.run.seed)
                local_dp_epsilon[hid] = epsilon_for(
                    [risk_plan(local.batches.n_devices, train).history_item(sigma)], delta=sim.delta
                )
            sim.advance()
        if local_dp:
            models["local only DP"] = lambda h: local_dp.get(h, build_risk_model(config, seed=sim.run.seed))
    if comparisons.local_only:
        sim.phase("local-only (no DP)", len(locals_))
        local_plain: dict[str, nn.Module] = {}
        for hid, local in locals_.items():
            local_plain[hid] = train_alone(config, local, train=alone, dp=None, rng=rng, seed=sim.run.seed)
            sim.advance()
        models["local only (no DP)"] = lambda h: local_plain[h]
    if comparisons.centralized:
        sim.phase("pooled (no privacy)", 1)
        pooled_train = RiskTrainConfig(epochs=epochs, batch_size=options.batch_size * 4, lr=options.lr)
        pooled = train_pooled(config, locals_, train=pooled_train, rng=rng, seed=sim.run.seed)
        models["pooled (no privacy)"] = lambda h: pooled
        sim.advance()
    sim.phase("scoring", len(models) + 2)
    predictions = {}
    for name, model in models.items():
        predictions[name] = model_predictions(model, locals_)
        sim.advance()
    if comparisons.rules:
        predictions["age rule"] = rule_predictions(locals_, "age")
        predictions["interval rule"] = rule_predictions(locals_, "service")
    methods = {}
    for name, pred in predictions.items():
        scores = score_predictions(locals_, pred)
        methods[name] = {"overall": scores.pop("overall"), "per_hospital": scores}

    plots = sim.out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    outcomes = {
        name: (np.concatenate([locals_[h].dataset.test.y for h in pred]), np.concatenate(list(pred.values())))
        for name, pred in predictions.items()
    }
    reliability_plot(plots / "reliability.png", outcomes)
    _comparison_plot(plots / "comparison_auroc.png", methods)

    plans: dict[str, Any] = {}
    if comparisons.plan_weeks:
        days = _plan_days(locals_, comparisons.plan_weeks)
        sim.phase("service plans against the fleets' true futures", 1)
        fleet_config = FleetConfig(**{k.replace("-", "_"): v for k, v in sim.region.items()})
        truth = generate_fleets(fleet_config, keep_states=days)  # the same seed: the same fleets, hidden state kept
        judged = compare_plans(
            {h.hospital_id: (locals_[h.hospital_id], h) for h in truth.hospitals},
            {"federated DP model": lambda h: federated}
            | ({"pooled model": models["pooled (no privacy)"]} if "pooled (no privacy)" in models else {}),
            spec,
            days=days,
            start=fleet_config.start,
            hours_share=comparisons.hours_share,
            worlds=comparisons.plan_worlds,
            seed=sim.run.seed,
        )
        plans = {
            "weeks_per_hospital": len(days),
            "hours_share": comparisons.hours_share,
            "worlds": comparisons.plan_worlds,
            "plans": {
                name: {
                    "failures_prevented": t.prevented,
                    "hours_used": t.hours,
                    "per_hour": t.per_hour,
                    "ratio_to_oracle": judged.ratio(name, "perfect foresight"),
                    "ratio_to_age_rule": judged.ratio(name, "age rule"),
                }
                for name, t in judged.tallies.items()
            },
        }
        sim.advance()
        for h in truth.hospitals[: comparisons.plan_plots]:
            local = locals_[h.hospital_id]
            week = week_inputs(
                local.fleet, federated, spec, service_hours=h.service_hours, date=local.dataset.test.dates[days[-1]]
            )
            hours = weekly_hours(h.service_hours, comparisons.hours_share)
            plan_plot(
                plots / f"plan_{h.hospital_id}.png",
                week.inputs,
                {
                    "federated DP model": plan_week(week.inputs, hours=hours),
                    "age rule": rule_plan(week.inputs, age_priority(week), hours=hours),
                },
                title=f"{h.hospital_id}: services for the week after {local.dataset.test.dates[days[-1]]:%Y-%m-%d}",
            )
    return {
        "methods": methods,
        "plans": plans,
        "federation_epsilon_per_hospital": epsilons,
        "local_only_dp_epsilon": local_dp_epsilon,
        "privacy_unit": "device (a device's whole history: inventory row and every event)",
    }


def _comparison_plot(path: Path, methods: Mapping[str, Mapping[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(methods)
    hospitals = sorted({h for m in methods.values() for h in m["per_hospital"]})
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(max(8, 1.2 * len(hospitals) * max(1, len(names) / 4)), 4))
    x = np.arange(len(hospitals))
    for i, name in enumerate(names):
        values = [methods[name]["per_hospital"].get(h, {}).get("auroc", np.nan) for h in hospitals]
        ax.bar(x + i * width - 0.4 + width / 2, values, width, label=name)
    ax.axhline(0.5, color="grey", lw=0.8, linestyle=":")
    ax.set_xticks(x, hospitals)
    ax.set_ylim(0.4, 1.0)
    ax.set_ylabel("AUROC")
    ax.set_title("test AUROC per hospital: failure within 30 days (higher is better)")
    ax.legend(fontsize=8, ncols=min(len(names), 4), loc="upper center", bbox_to_anchor=(0.5, -0.1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
