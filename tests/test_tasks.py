"""The task contract: every registered task runs through the same ServerApp round loop and the same ClientApp.

One set of nodes serves both tasks (each with its own data, ledger and budget); a forecasting
run and an equipment run go through ``make_server_app``/``make_client_app`` code unchanged:
in-process (``LocalGrid``) for the contract, on Flower's Simulation Engine for the slow test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from medalloc.client.app import make_client_app
from medalloc.client.config import NodeConfig, NodeConfigError
from medalloc.server.app import METRICS_FILE, run_federation
from medalloc.server.config import RunConfig, RunConfigError
from medalloc.simulations.local_grid import LocalGrid, task_identity
from medalloc.simulations.scenario import ScenarioError, parse_scenario
from medalloc_core.equipment.model import load_risk_model
from medalloc_core.equipment.synthetic import FleetConfig, generate_fleets, write_fleets
from medalloc_core.model_io import load_model
from medalloc_core.privacy.ledger import PrivacyLedger
from medalloc_core.protocol import Refusal
from medalloc_core.tasks import TASKS, get_task
from tests.fed_fixtures import TINY, small_region

EQUIPMENT_KEYS = {"task": "equipment", "equipment.batch-size": 16, "equipment.noise-multiplier": 2.0}
RUN_KEYS = {"forecasting": TINY, "equipment": EQUIPMENT_KEYS}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tasks")
    region = small_region(folder / "region")
    write_fleets(generate_fleets(FleetConfig(hospitals=3, days=300, seed=2, device_scale=0.3)), folder / "fleets")
    return region, folder / "fleets"


def node_configs(data: tuple[Path, Path], ledgers: Path, **budgets: float) -> dict[int, dict]:
    region, fleets = data
    return {
        i + 1: {
            "tasks": "forecasting,equipment",
            "data-path": str(region / f"H00{i}.csv"),
            "ledger-path": str(ledgers / f"patients{i}.json"),
            "privacy-epsilon-budget": budgets.get("forecasting", 20.0),
            "equipment-data-path": str(fleets / f"H00{i}"),
            "equipment-ledger-path": str(ledgers / f"devices{i}.json"),
            "equipment-epsilon-budget": budgets.get("equipment", 20.0) if i != 2 else budgets.get("node3", 20.0),
        }
        for i in range(3)
    }


def run(task: str, grid: LocalGrid, out: Path, rounds: int = 2) -> list[dict]:
    keys = {"out-dir": str(out), "num-server-rounds": rounds, "min-available-nodes": 3, "min-train-nodes": 3}
    with task_identity():
        run_federation(grid, RunConfig.from_mapping(keys | RUN_KEYS[task]), run_id=7)
    return [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]


def test_every_registered_task_runs_through_the_same_apps_and_keeps_its_own_ledger(
    data: tuple[Path, Path], tmp_path: Path
) -> None:
    assert set(TASKS) == {"forecasting", "equipment"}
    ledgers = tmp_path / "ledgers"
    ledgers.mkdir()
    grid = LocalGrid(make_client_app(), node_configs(data, ledgers))
    logs = {task: run(task, grid, tmp_path / task) for task in TASKS}
    for log in logs.values():
        trained = [r for r in log if r["round"] > 0]
        assert [r["round"] for r in trained] == [1, 2]
        assert all(r["nodes"] == {"sampled": 3, "accepted": 3} for r in trained), trained
        outcome_keys = {k for r in trained for o in r["outcomes"] for k in o}
        assert "epsilon" in outcome_keys
    # one message type per task: forecasting keeps Flower's plain types (its wire is unchanged)
    types = {t for _, t in grid.calls}
    assert types == {"train", "evaluate", "train.equipment"}
    # the equipment task reports nothing scored on a node's devices: no evaluate round at all
    assert all(not r["evaluate"] for r in logs["equipment"]) and logs["forecasting"][0]["evaluate"]
    # each task's final model, in its own format, readable by its own loader only
    assert load_model(tmp_path / "forecasting").config.model == "mlp"
    risk = load_risk_model(tmp_path / "equipment")
    assert risk.metadata["task"] == "equipment" and risk.metadata["rounds"] == 2
    # each task spent from its own ledger, in its own unit, with its own budget, never mixed: the
    # patients' ledger holds the one source release, the devices' one DP-SGD spend per round
    state = json.loads((ledgers / "medalloc-node-state.json").read_text())["nodes"]
    for i in range(3):
        patients = PrivacyLedger.load(ledgers / f"patients{i}.json")
        devices = PrivacyLedger.load(ledgers / f"devices{i}.json")
        assert (patients.unit, devices.unit) == ("patient", "device")
        assert [s.mechanism for s in patients.spends()] == ["source-release"]
        assert [s.mechanism for s in devices.spends()] == ["dp-sgd-device", "dp-sgd-device"]
        runs = [s.run_id.split("/", 1)[1] for s in devices.spends()]
        assert runs == ["equipment/round-1", "equipment/round-2"]
        hospital = f"H00{i}"  # each ledger has its own entry in the node state record (reset detection)
        assert state[hospital]["ledger_id"] == patients.ledger_id
        assert state[f"{hospital}/equipment"]["ledger_id"] == devices.ledger_id
    spent = max(PrivacyLedger.load(ledgers / f"devices{i}.json").epsilon_spent() for i in range(3))
    assert logs["equipment"][-1]["epsilon-max"] == pytest.approx(spent, rel=1e-9)


def test_the_equipment_nodes_caps_and_budget_hold_whatever_the_coordinator_asks(
    data: tuple[Path, Path], tmp_path: Path
) -> None:
    configs = node_configs(data, tmp_path, node3=0.05)
    configs[1] |= {"min-noise-multiplier": 4.0, "max-grad-norm": 0.1}
    grid = LocalGrid(make_client_app(), configs)
    log = run("equipment", grid, tmp_path / "out", rounds=1)
    record = log[-1]
    assert record["nodes"] == {"sampled": 3, "accepted": 2, "refused": 1}
    refused = [o for o in record["outcomes"] if o["status"] == "refused"]
    assert refused[0]["reason"].startswith("privacy-budget-exceeded") and "device-level epsilon" in refused[0]["reason"]
    assert not PrivacyLedger.load(tmp_path / "devices2.json").entries()  # refused before anything was recorded
    spend = PrivacyLedger.load(tmp_path / "devices0.json").entries()[0].spends[0]
    assert spend.noise_multiplier == 4.0  # the node's own minimum beat the proposal (2.0)
    assert not (tmp_path / "patients0.json").exists()  # the forecasting ledger is never touched by equipment


def test_a_node_refuses_a_task_its_config_does_not_name(data: tuple[Path, Path], tmp_path: Path) -> None:
    configs = node_configs(data, tmp_path)
    configs[2]["tasks"] = "forecasting"
    grid = LocalGrid(make_client_app(), configs)
    record = run("equipment", grid, tmp_path / "out", rounds=1)[-1]
    refused = [o for o in record["outcomes"] if o["status"] == "refused"]
    assert [o["node"] for o in refused] == ["2"]
    assert refused[0]["reason"].startswith(Refusal.TASK_NOT_SERVED.slug)


def test_a_real_node_refuses_reproducible_noise(data: tuple[Path, Path], tmp_path: Path) -> None:
    grid = LocalGrid(make_client_app(), node_configs(data, tmp_path))
    keys = {"out-dir": str(tmp_path / "out"), "num-server-rounds": 1, "min-available-nodes": 3, "min-train-nodes": 3}
    with task_identity():
        run_federation(grid, RunConfig.from_mapping(keys | EQUIPMENT_KEYS | {"simulation-reproducible-noise": True}))
    record = json.loads((tmp_path / "out" / METRICS_FILE).read_text().splitlines()[-1])
    assert record["nodes"] == {"sampled": 3, "refused": 3} and record["model-updated"] is False


def test_node_config_serves_what_it_names_each_with_its_own_data_ledger_and_budget(data: tuple[Path, Path]) -> None:
    region, fleets = data
    config = {
        "equipment-data-path": str(fleets / "H001"),
        "equipment-ledger-path": "/l/devices.json",
        "equipment-epsilon-budget": 6.0,
        "privacy-delta": 1e-6,
    }
    node = NodeConfig.from_context(Context(1, 5, config, RecordDict(), {}))
    assert list(node.tasks) == ["equipment"] and node.task("equipment").epsilon_budget == 6.0
    assert node.task("equipment").delta == 1e-6 and node.hospital_id == "H001"
    with pytest.raises(NodeConfigError, match="does not serve the 'forecasting' task"):
        node.task("forecasting")
    with pytest.raises(NodeConfigError, match="has no 'equipment-ledger-path'"):
        NodeConfig.from_context(Context(1, 5, {"tasks": "equipment", "equipment-data-path": "/x"}, RecordDict(), {}))
    with pytest.raises(NodeConfigError, match="unknown task"):
        NodeConfig.from_context(Context(1, 5, {"tasks": "weather", "data-path": "/x"}, RecordDict(), {}))


def test_run_config_task_and_its_own_keys_are_checked() -> None:
    config = RunConfig.from_mapping({"task": "equipment", "equipment.hidden": 8, "forecasting.ignored": 1})
    assert get_task(config.task).options(config.task_options).hidden == 8
    assert config.to_dict()["equipment.hidden"] == 8
    assert RunConfig.from_mapping(config.to_dict()) == config
    with pytest.raises(RunConfigError, match="unknown run-config key 'equipment.hiden'"):
        RunConfig.from_mapping({"task": "equipment", "equipment.hiden": 8})
    with pytest.raises(RunConfigError, match="must be like"):
        RunConfig.from_mapping({"task": "equipment", "equipment.noise-multiplier": "high"})
    with pytest.raises(RunConfigError, match="task 'weather' is unknown"):
        RunConfig.from_mapping({"task": "weather"})


def test_scenario_task_section_and_the_tasks_own_sections() -> None:
    scenario = parse_scenario(
        {
            "task": {"name": "equipment"},
            "region": {"hospitals": 4, "days": 400},
            "equipment": {"noise-multiplier": 5.0},
            "comparisons": {"plan-weeks": 1},
        }
    )
    keys = scenario.run_config(data_dir=Path("d"), out_dir=Path("o"))
    assert keys["task"] == "equipment" and keys["equipment.noise-multiplier"] == 5.0 and scenario.hospitals == 4
    for bad, match in (
        ({"task": {"name": "weather"}}, "is unknown"),
        ({"equipment": {"hidden": 2}}, "this scenario's task is forecasting"),
        ({"task": {"name": "equipment"}, "comparisons": {"baselines": ["holt_winters"]}}, "unknown key 'baselines'"),
        ({"task": {"name": "equipment"}, "region": {"days": 10}}, "days from 60"),
        ({"task": {"name": "equipment"}, "equipment": {"lr": -1.0}}, "lr > 0"),
    ):
        with pytest.raises(ScenarioError, match=match):
            parse_scenario(bad)


@pytest.mark.slow
def test_both_tasks_on_flowers_simulation_engine_with_the_same_apps(tmp_path: Path) -> None:
    """The runner's federation (Ray, one virtual node per hospital) for each registered task."""
    from medalloc.simulations.runner import simulate_federation

    for task in TASKS:
        region = tmp_path / task / "region"
        files = get_task(task).generate(region, {"hospitals": 2, "days": 300, "seed": 1})
        keys = {
            "out-dir": str(tmp_path / task / "out"),
            "num-server-rounds": 1,
            "min-available-nodes": 2,
            "min-train-nodes": 2,
            "simulation-data-dir": str(region),
            "simulation-epsilon-budget": 50.0,
        } | RUN_KEYS[task]
        simulate_federation(keys, len(files))
        log = [json.loads(line) for line in (tmp_path / task / "out" / METRICS_FILE).read_text().splitlines()]
        assert log[-1]["nodes"] == {"sampled": 2, "accepted": 2}, log[-1]
        suffix = "" if task == "forecasting" else f"-{task}"
        assert all((region / "ledgers" / f"{p.stem}{suffix}.json").is_file() for p in files)
        assert np.isfinite(log[-1]["epsilon-max"])
