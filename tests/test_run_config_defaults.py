"""One set of defaults: ``RunConfig``'s dataclass defaults are the product's, and every way in gets them.

``pyproject.toml``'s ``[tool.flwr.app.config]`` (what ``flwr run .`` uses), the embedded default
scenario, a minimal user scenario (only ``[region] data-dir``) and a virtual node all agree with
the typed config dataclasses; no code outside a task's folder names a task.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

from medalloc.server.config import RunConfig
from medalloc.simulations.scenario import load_scenario, parse_scenario
from medalloc_core.simulation import SimulationConfig
from medalloc_core.tasks import DEFAULT_TASK, get_task, task_names
from tests.fed_fixtures import small_region

REPO = Path(__file__).resolve().parents[1]
MODEL_KEYS = ("model", "init", "lr", "history", "horizon", "hidden", "targets", "local-epochs", "batch-size", "seed")


def test_pyproject_run_config_is_the_dataclass_defaults_key_for_key() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["flwr"]["app"]["config"]
    defaults = RunConfig().to_dict()
    assert sorted(pyproject) == sorted(defaults), "pyproject.toml and RunConfig name different keys"
    different = {k: (pyproject[k], defaults[k]) for k in defaults if pyproject[k] != defaults[k]}
    assert not different, f"pyproject.toml differs from RunConfig's defaults: {different}"
    assert RunConfig.from_mapping(pyproject) == RunConfig()


def test_the_simulation_keys_have_one_set_of_defaults() -> None:
    # RunConfig's simulation-* fields are SimulationConfig's, and the nodes read them through it.
    assert RunConfig().simulation == SimulationConfig()
    assert SimulationConfig.from_run_config(RunConfig().to_dict()) == SimulationConfig()
    assert SimulationConfig.from_run_config({}) == SimulationConfig()
    assert RunConfig().patient_epsilon == SimulationConfig().epsilon_budget == get_task(DEFAULT_TASK).default_epsilon


def test_a_minimal_scenario_trains_what_the_default_scenario_trains(tmp_path: Path) -> None:
    region = small_region(tmp_path / "files", days=400)
    embedded = load_scenario()
    minimal = parse_scenario({"region": {"data-dir": str(region)}}, source=str(tmp_path / "minimal.toml"))
    embedded_run = embedded.federation_config(data_dir=tmp_path, out_dir=tmp_path)
    minimal_run = minimal.federation_config(data_dir=tmp_path, out_dir=tmp_path)
    default = RunConfig()
    for key in MODEL_KEYS:
        name = key.replace("-", "_")
        assert getattr(minimal_run, name) == getattr(embedded_run, name) == getattr(default, name), key
    assert (default.model, default.init) == ("hybrid", "pretrained")  # the product default, not a bare MLP
    assert minimal.epsilon_budget == embedded.epsilon_budget == RunConfig().patient_epsilon
    # the embedded default scenario states nothing the run config already says
    assert not set(embedded.federation) & set(MODEL_KEYS), embedded.federation


def test_a_task_other_than_the_default_gets_its_own_budget_default() -> None:
    for name in task_names():
        scenario = parse_scenario({"task": {"name": name}})
        assert scenario.epsilon_budget == get_task(name).default_epsilon


# Code outside a task's folder never names a task: what differs between tasks is a task attribute.
_OUTSIDE = ("client", "server", "simulations", "medalloc", "medalloc_core")


def _task_literals(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in task_names() and id(node) not in docstrings
    ]


@pytest.mark.parametrize("folder", _OUTSIDE)
def test_no_code_outside_a_task_folder_names_a_task(folder: str) -> None:
    allowed = {REPO / "medalloc_core" / "tasks" / "__init__.py"}  # the registry and the run-config default
    rooms = [REPO / "medalloc_core" / "tasks" / name for name in task_names()]
    # a task's domain library may name its own task (medalloc_core/equipment names "equipment")
    libraries = {REPO / "medalloc_core" / name: name for name in task_names()}
    benchmarks = REPO / "simulations" / "benchmarks"  # a benchmark of one task says which
    found = []
    for path in sorted((REPO / folder).rglob("*.py")):
        if path in allowed or benchmarks in path.parents or any(room in path.parents for room in rooms):
            continue
        own = next((name for lib, name in libraries.items() if lib in path.parents), None)
        found += [f"{path.relative_to(REPO)}:{line} {value!r}" for line, value in _task_literals(path) if value != own]
    assert not found, "task names outside the task folders:\n" + "\n".join(found)
