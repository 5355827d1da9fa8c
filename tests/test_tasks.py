"""The task contract: every registered task runs through the same ServerApp round loop and the same ClientApp.

One set of nodes serves both tasks (each with its own data, ledger and budget); a forecasting
run and an equipment run go through ``make_server_app``/``make_client_app`` code unchanged:
in-process (``LocalGrid``) for the contract, on Flower's Simulation Engine for the slow test.
"""

from __future__ import annotations

import json
import os
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
from medalloc_core.model_io import read_model_files, resolve_model_path
from medalloc_core.privacy.ledger import PrivacyLedger
from medalloc_core.protocol import Refusal
from medalloc_core.simulation import simulated_ledger_path
from medalloc_core.tasks import TASKS, FederatedTask, get_task, task_names, task_of_model
from tests.fed_fixtures import TINY

EQUIPMENT_KEYS = {"task": "equipment", "equipment.batch-size": 16, "equipment.noise-multiplier": 2.0}
# Per registered task: a tiny region (its generator's keyword arguments), the run keys of a quick
# federation, and what one of its rounds spends. A task added to the registry fails the checks below
# until it is given its entries here.
REGIONS = {
    "forecasting": {
        "hospitals": 3, "days": 200, "seed": 0, "short_history_fraction": 0.0, "min_beds": 60, "max_beds": 300,
    },
    "equipment": {"hospitals": 3, "days": 300, "seed": 2, "device_scale": 0.3},
}  # fmt: skip
RUN_KEYS = {"forecasting": {"task": "forecasting"} | TINY, "equipment": EQUIPMENT_KEYS}
SPENDS = {"forecasting": lambda rounds: ["source-release"], "equipment": lambda rounds: ["dp-sgd-device"] * rounds}


def test_every_registered_task_has_its_test_fixtures() -> None:
    assert set(REGIONS) == set(RUN_KEYS) == set(SPENDS) == set(task_names()) == set(TASKS)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tasks")
    for name in task_names():
        get_task(name).generate(folder / name, REGIONS[name])
    return {name: folder / name for name in task_names()}


def node_configs(data: dict[str, Path], ledgers: Path, **budgets: float) -> dict[int, dict]:
    """Three nodes serving every registered task, each with its own data, ledger (``<task><i>.json``), budget."""
    configs: dict[int, dict] = {}
    for i in range(3):
        config: dict = {"tasks": ",".join(task_names())}
        for name in task_names():
            task = get_task(name)
            data_key, ledger_key, budget_key = task.node_keys
            budget = budgets.get("node3", 20.0) if i == 2 and name == "equipment" else budgets.get(name, 20.0)
            path = task.node_data(data[name])[i]
            config |= {
                data_key: str(path),
                ledger_key: str(ledgers / f"{name}{i}.json"),
                budget_key: budget,
            } | task.public_calendar(path)  # a deployed node declares its calendar (issue 20)
        configs[i + 1] = config
    return configs


def run(task: str, grid: LocalGrid, out: Path, rounds: int = 2) -> list[dict]:
    keys = {"out-dir": str(out), "num-server-rounds": rounds, "min-available-nodes": 3, "min-train-nodes": 3}
    with task_identity():
        run_federation(grid, RunConfig.from_mapping(keys | RUN_KEYS[task]), run_id=7)
    return [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]


def _message_types(task: FederatedTask) -> set[str]:
    phases = ("train", "evaluate") if task.evaluates else ("train",)
    return {p if task.action == "default" else f"{p}.{task.action}" for p in phases}


def test_every_registered_task_runs_through_the_same_apps_and_keeps_its_own_ledger(
    data: dict[str, Path], tmp_path: Path
) -> None:
    ledgers = tmp_path / "ledgers"
    ledgers.mkdir()
    grid = LocalGrid(make_client_app(), node_configs(data, ledgers))
    logs = {task: run(task, grid, tmp_path / task) for task in task_names()}
    for log in logs.values():
        trained = [r for r in log if r["round"] > 0]
        assert [r["round"] for r in trained] == [1, 2]
        assert all(r["nodes"] == {"sampled": 3, "accepted": 3} for r in trained), trained
        outcome_keys = {k for r in trained for o in r["outcomes"] for k in o}
        assert "epsilon" in outcome_keys
    # one message type per task and phase (the task's Flower action); a task that reports nothing
    # scored on a node's data (evaluates = False) gets no evaluate round at all
    assert {t for _, t in grid.calls} == set().union(*(_message_types(get_task(t)) for t in task_names()))
    for name, log in logs.items():
        assert bool(log[0]["evaluate"]) == get_task(name).evaluates
    # each task's final model names its task (or, for the task whose files predate tasks, none) and
    # is read back only as that task's model
    for name in task_names():
        meta, _ = read_model_files(resolve_model_path(tmp_path / name))
        assert task_of_model(meta) == name and meta.get("task") == get_task(name).model_file_task()
        get_task(name).parse_model(meta["model-config"], meta["window-spec"])
    # each task spent from its own ledger, in its own unit, with its own budget, never mixed, and
    # each ledger has its own entry in the node state record (reset detection)
    state = json.loads((ledgers / "medalloc-node-state.json").read_text())["nodes"]
    for name in task_names():
        task = get_task(name)
        for i in range(3):
            ledger = PrivacyLedger.load(ledgers / f"{name}{i}.json")
            assert ledger.unit == task.privacy_unit
            assert [s.mechanism for s in ledger.spends()] == SPENDS[name](2)
            assert state[task.node_state_key(f"H00{i}")]["ledger_id"] == ledger.ledger_id
        spent = max(PrivacyLedger.load(ledgers / f"{name}{i}.json").epsilon_spent() for i in range(3))
        assert logs[name][-1]["epsilon-max"] == pytest.approx(spent, rel=1e-9)
    assert len(state) == 3 * len(task_names())
    runs = [s.run_id.split("/", 1)[1] for s in PrivacyLedger.load(ledgers / "equipment0.json").spends()]
    assert runs == ["equipment/round-1", "equipment/round-2"]


def test_the_equipment_nodes_caps_and_budget_hold_whatever_the_coordinator_asks(
    data: dict[str, Path], tmp_path: Path
) -> None:
    configs = node_configs(data, tmp_path, node3=0.05)
    configs[1] |= {"min-noise-multiplier": 4.0, "max-grad-norm": 0.1}
    grid = LocalGrid(make_client_app(), configs)
    log = run("equipment", grid, tmp_path / "out", rounds=1)
    record = log[-1]
    assert record["nodes"] == {"sampled": 3, "accepted": 2, "refused": 1}
    refused = [o for o in record["outcomes"] if o["status"] == "refused"]
    assert refused[0]["reason"].startswith("privacy-budget-exceeded") and "device-level epsilon" in refused[0]["reason"]
    assert not PrivacyLedger.load(tmp_path / "equipment2.json").entries()  # refused before anything was recorded
    spend = PrivacyLedger.load(tmp_path / "equipment0.json").entries()[0].spends[0]
    assert spend.noise_multiplier == 4.0  # the node's own minimum beat the proposal (2.0)
    assert not (tmp_path / "forecasting0.json").exists()  # the forecasting ledger is never touched by equipment


def test_a_node_refuses_a_task_its_config_does_not_name(data: dict[str, Path], tmp_path: Path) -> None:
    configs = node_configs(data, tmp_path)
    configs[2]["tasks"] = "forecasting"
    grid = LocalGrid(make_client_app(), configs)
    record = run("equipment", grid, tmp_path / "out", rounds=1)[-1]
    refused = [o for o in record["outcomes"] if o["status"] == "refused"]
    assert [o["node"] for o in refused] == ["2"]
    assert refused[0]["reason"].startswith(Refusal.TASK_NOT_SERVED.slug)


def test_a_real_node_refuses_reproducible_noise(data: dict[str, Path], tmp_path: Path) -> None:
    grid = LocalGrid(make_client_app(), node_configs(data, tmp_path))
    keys = {"out-dir": str(tmp_path / "out"), "num-server-rounds": 1, "min-available-nodes": 3, "min-train-nodes": 3}
    with task_identity():
        run_federation(grid, RunConfig.from_mapping(keys | EQUIPMENT_KEYS | {"simulation-reproducible-noise": True}))
    record = json.loads((tmp_path / "out" / METRICS_FILE).read_text().splitlines()[-1])
    assert record["nodes"] == {"sampled": 3, "refused": 3} and record["model-updated"] is False


def test_node_config_serves_what_it_names_each_with_its_own_data_ledger_and_budget(data: dict[str, Path]) -> None:
    fleets = data["equipment"]
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
def test_every_task_on_flowers_simulation_engine_with_the_same_apps(tmp_path: Path) -> None:
    """The runner's federation (Ray, one virtual node per hospital) for each registered task."""
    from medalloc.simulations.runner import simulate_federation

    for task in task_names():
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
        # one Ray actor (all the CPUs for one virtual node at a time): a second only imports the apps again
        simulate_federation(keys, len(files), client_cpus=float(os.cpu_count() or 1))
        log = [json.loads(line) for line in (tmp_path / task / "out" / METRICS_FILE).read_text().splitlines()]
        assert log[-1]["nodes"] == {"sampled": 2, "accepted": 2}, log[-1]
        hospitals = [get_task(task).hospital_id_of(p) for p in files]
        assert all(simulated_ledger_path(region, task, h).is_file() for h in hospitals)
        assert np.isfinite(log[-1]["epsilon-max"])
