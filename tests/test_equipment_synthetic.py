"""Synthetic fleets: seeded, true parameters beside the files, and the failure process behaves as documented."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medalloc.cli import app
from medalloc_core.equipment.fleet_sim import DayDraws, DeviceParams, DeviceState, advance, cumulative_wear, service
from medalloc_core.equipment.synthetic import DEVICE_TYPES, FleetConfig, generate_fleets, write_fleets
from medalloc_core.equipment.validation import validate_fleet
from tests.equipment_fixtures import SMALL, small_region

runner = CliRunner()


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def test_same_config_same_bytes_and_another_seed_other_bytes(tmp_path: Path) -> None:
    config = FleetConfig(hospitals=1, days=120, seed=3, device_scale=0.2, warmup_days=200)
    write_fleets(generate_fleets(config), tmp_path / "a")
    write_fleets(generate_fleets(config), tmp_path / "b")
    write_fleets(generate_fleets(FleetConfig(**{**config.__dict__, "seed": 4})), tmp_path / "c")
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    assert tree_digest(tmp_path / "a")["H000/events.csv"] != tree_digest(tmp_path / "c")["H000/events.csv"]


def test_true_parameters_are_written_beside_the_files(tmp_path: Path) -> None:
    paths = write_fleets(small_region(), tmp_path / "fleets")
    meta = json.loads(paths[-1].read_text())
    assert paths[-1].name == "fleet.json"
    assert meta["device_types"]["ventilator"]["shape"] == DEVICE_TYPES["ventilator"].shape
    assert {"defective", "fault_mult", "wear_mult"} <= set(meta["batches"][0])
    hospital = meta["hospitals"][0]
    assert {"mean_fleet_age_years", "usage_intensity", "service_compliance"} <= set(hospital)
    devices = meta["devices"][0]["devices"]
    inventory = (tmp_path / "fleets" / "H000" / "devices.csv").read_text().splitlines()
    assert len(devices) == len(inventory) - 1
    assert {"batch", "defective_batch", "frailty", "intensity", "pm_interval_days"} <= set(devices[0])
    assert all(r.ok for r in validate_fleet(tmp_path / "fleets" / "H000"))


def test_hospitals_differ_in_fleet_age_and_usage_intensity() -> None:
    region = generate_fleets(FleetConfig(hospitals=6, days=90, seed=1, device_scale=0.2, warmup_days=100))
    ages = [h.meta["mean_fleet_age_years"] for h in region.hospitals]
    intensity = [h.meta["usage_intensity"] for h in region.hospitals]
    assert max(ages) - min(ages) > 1.5 and max(intensity) - min(intensity) > 0.2
    # hours on a day of use, relative to the type's typical day, follow the hospital's intensity
    relative = []
    for h in region.hospitals:
        usage = h.events[h.events["event"] == "usage"]
        types = h.devices.set_index("device_id")["device_type"]
        nominal = usage["device_id"].map(types).map(lambda t: DEVICE_TYPES[t].nominal_hours)
        relative.append(float((usage["hours"] / nominal).mean()))
    ranks = np.argsort(np.argsort(intensity)), np.argsort(np.argsort(relative))
    assert np.corrcoef(*ranks)[0, 1] > 0.7, (intensity, relative)


def one_type(name: str, n: int, **over: float) -> DeviceParams:
    p = DEVICE_TYPES[name]
    values = {
        "shape": p.shape,
        "scale": p.scale,
        "age_effect": p.age_effect,
        "frailty": 1.0,
        "wear_mult": 1.0,
        "fault_rate": p.fault_rate,
        "fault_mult": 1.0,
        "pf_days": p.pf_days,
        "rho_pm": p.rho_pm,
        "rho_repair": p.rho_repair,
        "fault_detect": p.fault_detect,
        "repair_days": p.repair_days,
        "nominal_hours": p.nominal_hours,
        "idle_prob": p.idle_prob,
        "intensity": 1.0,
        "install_day": -1000,
    } | over
    return DeviceParams(
        **{k: np.full(n, v, dtype=np.int64 if k == "install_day" else float) for k, v in values.items()}
    )


def failures(params: DeviceParams, state: DeviceState, days: int, seed: int) -> int:
    rng = np.random.default_rng(seed)
    total = 0
    for day in range(days):
        state, out = advance(state, params, day, DayDraws.draw(rng, (params.n,)), weekday=day % 7)
        total += int(out.failed.sum())
    return total


def test_weibull_shapes_differ_by_type_wear_out_rises_infant_mortality_falls() -> None:
    v = np.array([100.0, 400.0, 800.0])
    for name, rising in (("ventilator", True), ("patient_monitor", False)):
        params = one_type(name, 3)
        hazard = cumulative_wear(v + 1, params) - cumulative_wear(v, params)
        assert bool(np.all(np.diff(hazard) > 0)) is rising, (name, hazard)


def test_a_defective_batch_fails_more_and_service_prevents_failures() -> None:
    n, days = 400, 365
    sound = one_type("infusion_pump", n)
    defective = one_type("infusion_pump", n, fault_mult=5.0, wear_mult=1.6)
    worn = DeviceState(np.full(n, 1500.0), np.zeros(n, dtype=bool), np.zeros(n, dtype=np.int64))
    assert failures(defective, worn.copy(), days, 0) > 1.5 * failures(sound, worn.copy(), days, 0)
    # the same devices and the same random draws, once serviced on day 0
    serviced = service(worn.copy(), sound, np.ones(n, dtype=bool), np.zeros(n))
    assert failures(sound, serviced, 60, 1) < failures(sound, worn.copy(), 60, 1)


def test_cli_generate_equipment_writes_valid_fleets_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "fleets"
    args = ["generate", "--task", "equipment", "--hospitals", "2", "--days", "90", "--seed", "2", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["H000", "H001", "fleet.json"]
    assert all(r.ok for r in validate_fleet(out / "H001"))
    before = tree_digest(out)
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "already holds fleets" in again.output
    assert tree_digest(out) == before


@pytest.mark.parametrize("bad", [["--task", "weather"], ["--days", "10"]])
def test_cli_generate_equipment_rejects_bad_options_with_exit_2(tmp_path: Path, bad: list[str]) -> None:
    result = runner.invoke(app, ["generate", "--task", "equipment", "--out", str(tmp_path / "x"), *bad])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and not (tmp_path / "x").exists()


def test_small_fixture_is_what_the_other_tests_assume() -> None:
    region = small_region()
    assert len(region.hospitals) == SMALL.hospitals
    assert 300 in region.hospitals[0].states
