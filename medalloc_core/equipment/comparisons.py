"""What an equipment federation is compared with, scored on every hospital's same test period and planning weeks.

- *local only*: each hospital trains the same model alone, with device-level DP at the same
  noise and number of steps as its federated training (so the same epsilon), and without DP;
- *pooled*: every hospital's snapshots in one place, no privacy (the upper bound);
- the *age rule* and the *interval rule* a biomedical engineering team has today
  (:mod:`medalloc_core.equipment.baselines`);
- for the week's service plan, on synthetic fleets whose truth is known: the model's plan, the
  age rule's plan (oldest first), the plan of the true risks and the perfect-foresight oracle
  (:mod:`medalloc_core.equipment.oracle`), all with the same technician hours.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from medalloc_core.equipment.baselines import BandRule
from medalloc_core.equipment.decide import WeekInputs, age_priority, week_inputs
from medalloc_core.equipment.features import Snapshots, SnapshotSpec, device_days
from medalloc_core.equipment.local import LocalFleet
from medalloc_core.equipment.metrics import risk_scores
from medalloc_core.equipment.model import (
    DeviceBatches,
    DeviceDP,
    RiskModelConfig,
    RiskTrainConfig,
    build_risk_model,
    predict_proba,
    train_risk,
)
from medalloc_core.equipment.oracle import oracle_value, plan_value, simulate_futures
from medalloc_core.equipment.plan import PlanInputs, plan_week, rule_plan
from medalloc_core.equipment.synthetic import HospitalFleet

logger = logging.getLogger(__name__)

RULES: tuple[str, ...] = ("age rule", "interval rule")


def train_alone(
    config: RiskModelConfig,
    local: LocalFleet,
    *,
    train: RiskTrainConfig,
    dp: DeviceDP | None,
    rng: np.random.Generator,
    seed: int = 0,
) -> nn.Module:
    """One hospital on its own: the same model and optimiser, ``train.epochs`` passes in one call."""
    model = build_risk_model(config, seed=seed)
    train_risk(model, local.batches, config=train, dp=dp, rng=rng)
    return model


def train_pooled(
    config: RiskModelConfig,
    locals_: Mapping[str, LocalFleet],
    *,
    train: RiskTrainConfig,
    rng: np.random.Generator,
    seed: int = 0,
) -> nn.Module:
    """Every hospital's training snapshots in one place, no privacy: what sharing the logs would give."""
    parts = list(locals_.values())
    offset = np.cumsum([0] + [local.dataset.n_devices for local in parts[:-1]])
    pooled = Snapshots(
        X=np.concatenate([p.dataset.train.X for p in parts]),
        y=np.concatenate([p.dataset.train.y for p in parts]),
        device=np.concatenate([p.dataset.train.device + o for p, o in zip(parts, offset)]),
        day=np.concatenate([p.dataset.train.day for p in parts]),
        dates=parts[0].dataset.train.dates,
    )
    model = build_risk_model(config, seed=seed)
    train_risk(model, DeviceBatches.from_snapshots(pooled), config=train, dp=None, rng=rng)
    return model


def rule_predictions(locals_: Mapping[str, LocalFleet], clock: str) -> dict[str, np.ndarray]:
    """Each hospital's own rule (fitted on its training snapshots) applied to its test snapshots."""
    out = {}
    for hid, local in locals_.items():
        rule = BandRule(clock).fit(local.dataset.train, local.fleet.devices)
        out[hid] = rule.predict_proba(local.dataset.test, local.fleet.devices)
    return out


def model_predictions(models: Callable[[str], nn.Module], locals_: Mapping[str, LocalFleet]) -> dict[str, np.ndarray]:
    """``models(hospital)``'s test-period probabilities for each hospital."""
    return {hid: predict_proba(models(hid), local.dataset.test.X).astype(float) for hid, local in locals_.items()}


def score_predictions(
    locals_: Mapping[str, LocalFleet], predictions: Mapping[str, np.ndarray]
) -> dict[str, dict[str, float]]:
    """Scores over all hospitals' test snapshots together (``"overall"``) and per hospital."""
    y = np.concatenate([locals_[h].dataset.test.y for h in predictions])
    p = np.concatenate([predictions[h] for h in predictions])
    out = {"overall": risk_scores(y, p)}
    for hid, pred in predictions.items():
        out[hid] = risk_scores(locals_[hid].dataset.test.y, pred)
    return out


# ----------------------------------------------------------------------------- plans on synthetic fleets
@dataclass
class PlanTally:
    """True failures prevented and technician hours used, summed over planning weeks."""

    prevented: float = 0.0
    hours: float = 0.0
    weeks: int = 0

    def add(self, prevented: float, hours: float) -> None:
        self.prevented += prevented
        self.hours += hours
        self.weeks += 1

    @property
    def per_hour(self) -> float:
        """True failures prevented per technician hour."""
        return self.prevented / self.hours if self.hours > 0 else 0.0


@dataclass
class PlanComparison:
    """Every plan's tally over the same weeks, hospitals and hours."""

    tallies: dict[str, PlanTally] = field(default_factory=dict)
    hours_share: float = 0.0
    worlds: int = 0

    def tally(self, name: str) -> PlanTally:
        return self.tallies.setdefault(name, PlanTally())

    def ratio(self, name: str, reference: str) -> float:
        """``name``'s prevented per hour over ``reference``'s."""
        ref = self.tallies[reference].per_hour
        return self.tallies[name].per_hour / ref if ref > 0 else float("nan")


def weekly_hours(service_hours: np.ndarray, share: float) -> float:
    """Technician hours of a week: ``share`` of the hours it would take to service the whole fleet once."""
    return float(share * np.sum(service_hours))


def compare_plans(
    hospitals: Mapping[str, tuple[LocalFleet, HospitalFleet]],
    models: Mapping[str, Callable[[str], nn.Module]],
    spec: SnapshotSpec,
    *,
    days: tuple[int, ...],
    start: str,
    hours_share: float = 0.04,
    worlds: int = 200,
    max_share_away: float = 0.5,
    seed: int = 0,
) -> PlanComparison:
    """Plan each hospital's weeks with every model, the age rule, the true risks and the oracle; tally the truth.

    ``days`` are log-day indices whose hidden states the generator kept (``keep_states``).
    The true-risk plan estimates each device's risks from futures simulated with other draws
    than the ones that judge it, so it is not fitted to the outcome it is scored on.
    """
    comparison = PlanComparison(hours_share=hours_share, worlds=worlds)
    for hid, (local, truth) in hospitals.items():
        dd = device_days(local.fleet)
        hours = weekly_hours(truth.service_hours, hours_share)
        for day in days:
            state = truth.states[day]
            judge = simulate_futures(
                state, truth.params, day=day, start=start, horizon=spec.horizon_days, worlds=worlds, seed=seed + day
            )
            estimate = simulate_futures(
                state, truth.params, day=day, start=start, horizon=spec.horizon_days, worlds=worlds, seed=seed + day + 1
            )
            date = dd.days[day]
            first: WeekInputs | None = None
            for name, model in models.items():
                week = week_inputs(local.fleet, model(hid), spec, service_hours=truth.service_hours, date=date, days=dd)
                first = first or week
                plan = plan_week(week.inputs, hours=hours, max_share_away=max_share_away, method=name)
                value = plan_value(plan, judge)
                comparison.tally(name).add(value.prevented, value.hours_used)
            assert first is not None
            base = first.inputs
            age = rule_plan(base, age_priority(first), hours=hours, max_share_away=max_share_away)
            value = plan_value(age, judge)
            comparison.tally("age rule").add(value.prevented, value.hours_used)
            true_risk = PlanInputs(
                device_id=base.device_id,
                device_type=base.device_type,
                unit=base.unit,
                service_hours=base.service_hours,
                risk_now=estimate.true_risk_left,
                risk_serviced=estimate.true_risk_serviced,
                available=base.available,
                weight=np.ones(len(base.device_id)),
            )
            value = plan_value(plan_week(true_risk, hours=hours, max_share_away=max_share_away), judge)
            comparison.tally("true risk").add(value.prevented, value.hours_used)
            oracle = oracle_value(base, judge, hours=hours, max_share_away=max_share_away)
            comparison.tally("perfect foresight").add(oracle.prevented, oracle.hours_used)
    return comparison
