"""A simulation scenario: one TOML file (or the embedded default) read into a frozen ``Scenario``."""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from medalloc.server.config import RunConfig, RunConfigError
from medalloc_core.synthetic import RegionConfig
from medalloc_core.tasks import DEFAULT_TASK, get_task, task_names

MAX_SCENARIO_BYTES = 1 * 2**20
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
        source = str(path)
        try:
            if Path(path).stat().st_size > MAX_SCENARIO_BYTES:
                raise ScenarioError(f"{path}: over {MAX_SCENARIO_BYTES:,} bytes; a scenario is a short TOML file")
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ScenarioError(f"{path}: cannot read the scenario ({exc.strerror or exc})") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ScenarioError(
                f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); save it as UTF-8"
            ) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{source}: not valid TOML ({exc})") from None
    except RecursionError:
        raise ScenarioError(f"{source}: not valid TOML (nested too deeply)") from None
    return parse_scenario(raw, source=source, text=text)


def parse_scenario(raw: dict[str, Any], *, source: str = "scenario", text: str = "") -> Scenario:
    """Validate a parsed TOML document and build the ``Scenario``."""
    unknown = set(raw) - _SECTIONS
    if unknown:
        raise ScenarioError(f"{source}: unknown section(s) {sorted(unknown)}; known: {sorted(_SECTIONS)}")
    for heading in sorted(_SECTIONS - {"name"}):
        if heading in raw and not isinstance(raw[heading], dict):
            raise ScenarioError(
                f"{source}: [{heading}] must be a table of keys, got {type(raw[heading]).__name__} {raw[heading]!r:.60}"
            )
    if "name" in raw and not isinstance(raw["name"], str):
        raise ScenarioError(f"{source}: name must be a string, got {raw['name']!r:.60}")
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
    if forecasting:
        listed = comparisons.get("baselines", ["seasonal_naive", "holt_winters"])
        if not isinstance(listed, list) or not all(isinstance(b, str) for b in listed):
            raise ScenarioError(
                f"{source}: [comparisons] baselines must be a list of names such as {list(_BASELINES)}, "
                f"got {listed!r:.60}"
            )
        baselines: tuple[str, ...] = tuple(listed)
    else:  # another task's [comparisons] are its own (FederatedTask.check_comparisons)
        baselines = ()
    bad = [b for b in baselines if b not in _BASELINES]
    if bad:
        raise ScenarioError(
            f"{source}: [comparisons] baselines: unknown baseline(s) {bad}; choose from {list(_BASELINES)}"
        )
    for key in ("local-only", "local-only-dp", "centralized"):
        if key in comparisons and not isinstance(comparisons[key], bool):
            raise ScenarioError(f"{source}: [comparisons] {key} must be true or false, got {comparisons[key]!r:.60}")
    for section_name, table, key in (
        ("privacy", privacy, "epsilon"),
        ("privacy", privacy, "delta"),
        ("simulation", simulation, "client-cpus"),
    ):
        value = table.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ScenarioError(f"{source}: [{section_name}] {key} must be a number, got {value!r:.60}")
    stay = privacy.get("max-stay-days", 14)
    if isinstance(stay, bool) or not isinstance(stay, int) or not 1 <= stay <= 366:
        raise ScenarioError(f"{source}: [privacy] max-stay-days must be a whole number from 1 to 366, got {stay!r:.60}")
    if not isinstance(privacy.get("reproducible-noise", False), bool):
        raise ScenarioError(
            f"{source}: [privacy] reproducible-noise must be true or false, got {privacy['reproducible-noise']!r:.60}"
        )
    plots = output.get("forecast-plots", 3)
    if isinstance(plots, bool) or not isinstance(plots, int) or not 0 <= plots <= 1000:
        raise ScenarioError(
            f"{source}: [output] forecast-plots must be a whole number from 0 to 1000, got {plots!r:.60}"
        )
    # Another task's [region] is its generator's keyword arguments, checked by the task below.
    known_region = {f.name for f in fields(RegionConfig)}
    unknown_region = sorted(k for k in region if str(k).replace("-", "_") not in known_region) if forecasting else []
    if unknown_region:
        raise ScenarioError(f"{source}: unknown key(s) {unknown_region} in [region]; known: {sorted(known_region)}")
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
    # `not 0 < x` also refuses NaN; a NaN budget let every node refuse and the run end "done".
    if not 0 < scenario.delta < 1 or not 0 < scenario.epsilon_budget < math.inf:
        raise ScenarioError(
            f"{source}: [privacy] needs a finite epsilon > 0 and 0 < delta < 1, "
            f"got epsilon {scenario.epsilon_budget} and delta {scenario.delta}"
        )
    if privacy.get("mechanism", "source") != "source":
        raise ScenarioError(
            f"{source}: [privacy] mechanism must be 'source' (docs/privacy.md: patient-level DP-SGD is studied, "
            "not offered)"
        )
    cpus = os.cpu_count() or 1
    if not 0 < scenario.client_cpus <= cpus:
        # Ray waits forever for a node that needs more CPUs than it has (or NaN of them).
        raise ScenarioError(
            f"{source}: [simulation] client-cpus must be a number > 0 and at most this machine's {cpus} CPUs, "
            f"got {scenario.client_cpus}"
        )
    return scenario
