"""A simulation scenario: one TOML file (or the embedded default) read into a frozen ``Scenario``."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from medalloc.server.config import RunConfig, RunConfigError
from medalloc_core.synthetic import RegionConfig
from medalloc_core.tasks import DEFAULT_TASK, get_task, task_names

# A task's own run-config keys go in a section named after it ([equipment] -> "equipment.<key>").
_SECTIONS = {"name", "task", "region", "federation", "privacy", "comparisons", "output", "simulation", *task_names()}
# A task other than forecasting protects another unit (a device): its default budget differs.
DEVICE_EPSILON = 10.0
_COMPARISON_KEYS = {"local-only", "local-only-dp", "centralized", "baselines"}
_BASELINES = ("seasonal_naive", "moving_average", "holt_winters")


class ScenarioError(ValueError):
    """The scenario file is unreadable or names an unknown key or value; the message says which."""


@dataclass(frozen=True)
class Scenario:
    """Everything one simulation run needs; built by ``load_scenario``.

    ``task`` is the federated task (``[task] name``, default forecasting); ``region`` holds the
    task's generator keyword arguments (``RegionConfig`` for forecasting, ``FleetConfig`` for
    equipment), ``federation`` run-config keys (kebab-case, as in ``[tool.flwr.app.config]``) and
    ``task_options`` the task's own keys (the ``[<task>]`` section); all are validated on load.
    ``comparisons`` is the raw ``[comparisons]`` section (a task other than forecasting reads it).
    """

    name: str
    region: dict[str, Any]
    federation: dict[str, Any]
    task: str = DEFAULT_TASK
    task_options: dict[str, Any] = field(default_factory=dict)
    comparisons: dict[str, Any] = field(default_factory=dict)
    epsilon_budget: float = 1.0  # per privacy unit of the task (patient, device): each node's budget
    delta: float = 1e-6
    max_stay_days: int = 14
    reproducible_noise: bool = False  # research only (logged): noise from the run's seed
    local_only: bool = True
    local_only_dp: bool = True
    centralized: bool = True
    baselines: tuple[str, ...] = ("seasonal_naive", "holt_winters")
    forecast_plots: int = 3
    client_cpus: float = 1.0
    source: str = "embedded default"
    text: str = field(default="", compare=False)  # the TOML as read, copied into the results folder

    @property
    def hospitals(self) -> int:
        """Number of hospitals (= virtual nodes)."""
        if self.task != DEFAULT_TASK:
            return int(self.region.get("hospitals", 10))
        return int(self.region_config().hospitals)

    def region_config(self) -> RegionConfig:
        """The region to generate."""
        return RegionConfig(**{k.replace("-", "_"): v for k, v in self.region.items()})

    def run_config(self, *, data_dir: Path, out_dir: Path) -> dict[str, Any]:
        """Run-config keys for the ServerApp/ClientApp of this scenario."""
        keys: dict[str, Any] = {"min-available-nodes": self.hospitals, "min-train-nodes": self.hospitals}
        keys |= self.federation
        keys |= {"task": self.task} if self.task != DEFAULT_TASK else {}
        keys |= {f"{self.task}.{k}": v for k, v in self.task_options.items()}
        keys |= {
            "simulation-data-dir": str(data_dir),
            "simulation-epsilon-budget": self.epsilon_budget,
            "simulation-delta": self.delta,
            "simulation-max-stay-days": self.max_stay_days,
            "simulation-reproducible-noise": self.reproducible_noise,
            "out-dir": str(out_dir),
        }
        if self.task == DEFAULT_TASK:  # the patient-level proposal of the forecasting task
            keys |= {"patient-epsilon": self.epsilon_budget, "max-stay-days": self.max_stay_days}
        return keys

    def federation_config(self, *, data_dir: Path, out_dir: Path) -> RunConfig:
        """The typed run config (validates every key)."""
        return RunConfig.from_mapping(self.run_config(data_dir=data_dir, out_dir=out_dir))


def default_scenario_text() -> str:
    """The embedded default scenario (package data), as TOML text."""
    return (
        resources.files(__package__ or "medalloc.simulations")
        .joinpath("scenarios/default.toml")
        .read_text(encoding="utf-8")
    )


def load_scenario(path: Path | None = None) -> Scenario:
    """Read a scenario file, or the embedded default when ``path`` is None; raises ``ScenarioError``."""
    if path is None:
        text, source = default_scenario_text(), "embedded default"
    else:
        try:
            text, source = Path(path).read_text(encoding="utf-8"), str(path)
        except OSError as exc:
            raise ScenarioError(f"{path}: cannot read the scenario ({exc.strerror or exc})") from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{source}: not valid TOML ({exc})") from exc
    return parse_scenario(raw, source=source, text=text)


def parse_scenario(raw: dict[str, Any], *, source: str = "scenario", text: str = "") -> Scenario:
    """Validate a parsed TOML document and build the ``Scenario``."""
    unknown = set(raw) - _SECTIONS
    if unknown:
        raise ScenarioError(f"{source}: unknown section(s) {sorted(unknown)}; known: {sorted(_SECTIONS)}")
    region = dict(raw.get("region", {}))
    federation = dict(raw.get("federation", {}))
    privacy = dict(raw.get("privacy", {}))
    comparisons = dict(raw.get("comparisons", {}))
    output = dict(raw.get("output", {}))
    simulation = dict(raw.get("simulation", {}))
    task_section = dict(raw.get("task", {}))
    extra = set(task_section) - {"name"}
    if extra:
        raise ScenarioError(f"{source}: unknown key(s) {sorted(extra)} in [task]; known: ['name']")
    task = str(task_section.get("name", DEFAULT_TASK))
    if task not in task_names():
        raise ScenarioError(f"{source}: [task] name '{task}' is unknown; choose one of {', '.join(task_names())}")
    for other in task_names():
        if other != task and other in raw:
            raise ScenarioError(
                f"{source}: [{other}] holds the {other} task's keys, but this scenario's task is {task}"
            )
    task_options = dict(raw.get(task, {}))
    forecasting = task == DEFAULT_TASK
    for name, section, known in (
        ("privacy", privacy, {"mechanism", "epsilon", "delta", "max-stay-days", "reproducible-noise"}),
        ("comparisons", comparisons, _COMPARISON_KEYS if forecasting else set(comparisons)),
        ("output", output, {"forecast-plots"}),
        ("simulation", simulation, {"client-cpus"}),
    ):
        extra = set(section) - known
        if extra:
            raise ScenarioError(f"{source}: unknown key(s) {sorted(extra)} in [{name}]; known: {sorted(known)}")
    baselines = tuple(comparisons.get("baselines", ("seasonal_naive", "holt_winters"))) if forecasting else ()
    bad = [b for b in baselines if b not in _BASELINES]
    if bad:
        raise ScenarioError(f"{source}: unknown baseline(s) {bad} in [comparisons]; choose from {list(_BASELINES)}")
    try:
        scenario = Scenario(
            name=str(raw.get("name", Path(source).stem)),
            region=region,
            federation=federation,
            task=task,
            task_options=task_options,
            comparisons=comparisons,
            epsilon_budget=float(privacy.get("epsilon", 1.0 if forecasting else DEVICE_EPSILON)),
            delta=float(privacy.get("delta", 1e-6)),
            max_stay_days=int(privacy.get("max-stay-days", 14)),
            reproducible_noise=bool(privacy.get("reproducible-noise", False)),
            local_only=bool(comparisons.get("local-only", True)),
            local_only_dp=bool(comparisons.get("local-only-dp", True)),
            centralized=bool(comparisons.get("centralized", True)),
            baselines=baselines,
            forecast_plots=int(output.get("forecast-plots", 3)),
            client_cpus=float(simulation.get("client-cpus", 1.0)),
            source=source,
            text=text,
        )
        if forecasting:
            scenario.region_config()
        else:
            get_task(task).check_region(region)
            get_task(task).check_comparisons(comparisons)
        scenario.federation_config(data_dir=Path("."), out_dir=Path("."))
    except (TypeError, ValueError, RunConfigError) as exc:
        raise ScenarioError(f"{source}: {exc}") from exc
    if not 0 < scenario.delta < 1 or scenario.epsilon_budget <= 0 or scenario.max_stay_days < 1:
        raise ScenarioError(f"{source}: [privacy] needs epsilon > 0, 0 < delta < 1 and max-stay-days >= 1")
    if privacy.get("mechanism", "source") != "source":
        raise ScenarioError(
            f"{source}: [privacy] mechanism must be 'source' (docs/privacy.md: patient-level DP-SGD is studied, "
            "not offered)"
        )
    if scenario.client_cpus <= 0:
        raise ScenarioError(f"{source}: [simulation] client-cpus must be > 0")
    return scenario
