"""The week's service plan: the integer programme is optimal and feasible, the oracle bounds it, the CLI is safe."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from medalloc.cli import app
from medalloc_core.equipment.contract import Fleet
from medalloc_core.equipment.features import SnapshotSpec
from medalloc_core.equipment.model import RiskModelConfig, build_risk_model, save_risk_model
from medalloc_core.equipment.oracle import oracle_value, plan_value, simulate_futures
from medalloc_core.equipment.plan import PlanInputs, plan_week, rule_plan
from tests.equipment_fixtures import fleet_copy, small_region

runner = CliRunner()
SPEC = SnapshotSpec()
HOURS = (
    "ventilator=3,infusion_pump=1,syringe_pump=0.5,patient_monitor=0.75,defibrillator=1,"
    "dialysis_machine=2.5,ultrasound=2,anaesthesia_machine=3"
)


def random_inputs(rng: np.random.Generator, n: int) -> PlanInputs:
    now = rng.uniform(0, 0.4, n)
    return PlanInputs(
        device_id=np.array([f"D{i}" for i in range(n)]),
        device_type=rng.choice(["pump", "vent"], n),
        unit=rng.choice(["ICU", "MED"], n),
        service_hours=rng.choice([0.5, 1.0, 2.0, 3.0], n),
        risk_now=now,
        risk_serviced=now * rng.uniform(0.2, 1.2, n),  # some services make things worse (the model says)
        available=rng.random(n) > 0.15,
        weight=np.ones(n),
    )


def brute_force(inputs: PlanInputs, hours: float, share: float) -> float:
    n, best = len(inputs.device_id), 0.0
    groups = {}
    for i in range(n):
        groups.setdefault((inputs.unit[i], inputs.device_type[i]), []).append(i)
    limits = {g: max(1, int(np.floor(share * len(m)))) for g, m in groups.items()}
    for choice in itertools.product((0, 1), repeat=n):
        x = np.array(choice, dtype=bool)
        if (x & ~inputs.available).any() or inputs.service_hours[x].sum() > hours + 1e-9:
            continue
        if any(x[m].sum() > limits[g] for g, m in groups.items()):
            continue
        best = max(best, float(inputs.benefit[x].sum()))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_the_integer_programme_finds_the_brute_force_optimum(seed: int) -> None:
    rng = np.random.default_rng(seed)
    inputs = random_inputs(rng, 11)
    hours = float(rng.uniform(1.5, 8))
    plan = plan_week(inputs, hours=hours, max_share_away=0.5)
    assert plan.expected_prevented == pytest.approx(brute_force(inputs, hours, 0.5), abs=1e-9)
    x = plan.selected
    assert inputs.service_hours[x].sum() <= hours + 1e-9 and not (x & ~inputs.available).any()
    assert (inputs.benefit[x] > 0).all()


def test_the_age_rule_takes_the_oldest_devices_that_fit_within_the_same_constraints() -> None:
    inputs = random_inputs(np.random.default_rng(3), 30)
    age = np.arange(30, dtype=float)
    plan = rule_plan(inputs, age, hours=6.0)
    assert inputs.service_hours[plan.selected].sum() <= 6.0
    assert not (plan.selected & ~inputs.available).any()
    chosen = np.flatnonzero(plan.selected)
    oldest_available = max(i for i in range(30) if inputs.available[i] and inputs.service_hours[i] <= 6.0)
    assert oldest_available in chosen


def test_futures_share_their_draws_so_service_only_prevents_and_the_oracle_bounds_every_plan() -> None:
    hospital = small_region().hospitals[0]
    futures = simulate_futures(hospital.states[300], hospital.params, day=300, start="2023-01-01", worlds=100, seed=2)
    assert futures.left.shape == (100, hospital.params.n)
    assert futures.true_risk_serviced.sum() < futures.true_risk_left.sum()
    assert (futures.prevented >= 0).mean() > 0.999  # a failure is rarely *caused* by shifting the clock
    inputs = PlanInputs(
        device_id=hospital.devices["device_id"].to_numpy(),
        device_type=hospital.devices["device_type"].to_numpy(),
        unit=hospital.devices["unit"].to_numpy(),
        service_hours=hospital.service_hours,
        risk_now=futures.true_risk_left,
        risk_serviced=futures.true_risk_serviced,
        available=futures.available,
        weight=np.ones(hospital.params.n),
    )
    hours = 0.1 * hospital.service_hours.sum()
    oracle = oracle_value(inputs, futures, hours=hours)
    for plan in (plan_week(inputs, hours=hours), rule_plan(inputs, np.arange(hospital.params.n), hours=hours)):
        assert plan_value(plan, futures).prevented <= oracle.prevented + 1e-9


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    model = build_risk_model(RiskModelConfig(n_features=SPEC.n_features), seed=1)
    save_risk_model(tmp_path / "model" / "final_model.safetensors", model, spec=SPEC)
    return tmp_path / "model"


def test_cli_writes_the_plan_and_its_figure_within_the_hours(tmp_path: Path, model_dir: Path) -> None:
    fleet = fleet_copy(tmp_path) / "H000"
    out = tmp_path / "plan.csv"
    args = ["maintenance-plan", "--model", str(model_dir), "--fleet", str(fleet), "--hours", "6"]
    result = runner.invoke(app, [*args, "--service-hours", HOURS, "--out", str(out), "--date", "2023-11-01"])
    assert result.exit_code == 0, result.output
    plan = pd.read_csv(out)
    assert plan.loc[plan["selected"], "service_hours"].sum() <= 6
    assert (plan.loc[plan["selected"], "benefit"] > 0).all()
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert "The age rule (oldest first) on the same hours" in result.output


def digest(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--service-hours", "ventilator=3"], "no service hours for device type(s)"),
        (["--service-hours", HOURS, "--date", "2031-01-01"], "is outside the event log"),
        (["--service-hours", HOURS, "--date", ""], "--date '' is not a date"),  # was an AttributeError on NaT
        (["--service-hours", "ventilator=three"], "is not TYPE=HOURS"),
        (["--service-hours", HOURS, "--hours", "-1"], "--hours must be a number >= 0"),
        (["--service-hours", HOURS, "--objective", "profit"], "objective must be one of failures, downtime"),
    ],
)
def test_cli_bad_input_exits_2_with_a_message_and_writes_nothing(
    tmp_path: Path, model_dir: Path, extra: list[str], message: str
) -> None:
    fleet = fleet_copy(tmp_path) / "H000"
    out = tmp_path / "plan.csv"
    args = ["maintenance-plan", "--model", str(model_dir), "--fleet", str(fleet), "--hours", "6", "--out", str(out)]
    result = runner.invoke(app, [*args, *extra])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output
    assert not out.exists() and not out.with_suffix(".png").exists()


def test_cli_refuses_a_broken_fleet_or_a_forecaster_and_leaves_the_files_untouched(
    tmp_path: Path, model_dir: Path
) -> None:
    fleet = fleet_copy(tmp_path) / "H000"
    events = fleet / "events.csv"
    events.write_text(events.read_text().replace(",usage,", ",usgae,", 1))
    before = digest(fleet)
    out = tmp_path / "plan.csv"
    args = ["maintenance-plan", "--fleet", str(fleet), "--hours", "6", "--service-hours", HOURS, "--out", str(out)]
    result = runner.invoke(app, [*args, "--model", str(model_dir)])
    assert result.exit_code == 2 and "'usgae' is not an event kind" in result.output, result.output
    assert digest(fleet) == before and not out.exists()
    result = runner.invoke(app, [*args, "--model", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "no such file or folder" in result.output


def test_the_plan_uses_the_same_device_order_as_the_truth() -> None:
    hospital = small_region().hospitals[0]
    loaded = Fleet(hospital.devices, hospital.events, Path("H000"))
    assert list(loaded.devices["device_id"]) == sorted(loaded.devices["device_id"])
