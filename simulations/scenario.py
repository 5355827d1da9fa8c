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
from medalloc_core.simulation import SimulationConfig
from medalloc_core.synthetic import RegionConfig
from medalloc_core.tasks import DEFAULT_TASK, get_task, task_names

from .real_files import DataDirError, DataDirPlan, inspect_data_dir

MAX_SCENARIO_BYTES = 1 * 2**20
# A task's own run-config keys go in a section named after it ([equipment] -> "equipment.<key>").
_SECTIONS = {
    "name",
    "task",
    "region",
    "federation",
    "privacy",
    "comparisons",
    "evaluation",
    "output",
    "simulation",
    *task_names(),
}
_EVALUATION_KEYS = {"weeks", "origins", "validation-days"}
_SIM = SimulationConfig()  # the simulation-* defaults: [privacy] delta, max-stay-days, reproducible-noise
# [federation] keys the runner sets itself: a scenario that sets them would be silently overridden.
_RUNNER_KEYS = {
    "simulation-data-dir": "[region] data-dir",
    "simulation-epsilon-budget": "[privacy] epsilon",
    "simulation-delta": "[privacy] delta",
    "simulation-max-stay-days": "[privacy] max-stay-days",
    "simulation-reproducible-noise": "[privacy] reproducible-noise",
    "patient-epsilon": "[privacy] epsilon",
    "max-stay-days": "[privacy] max-stay-days",
    "privacy-mechanism": "[privacy] mechanism",
    "simulation-days": "[region] days",
    "simulation-region-seed": "[region] seed",
    "test-days": "[evaluation] weeks",
    "validation-days": "[evaluation] validation-days",
    "out-dir": "medalloc simulate --out",
}


class ScenarioError(ValueError):
    """The scenario file is unreadable or names an unknown key or value; the message says which."""


@dataclass(frozen=True)
class Scenario:
    """Everything one simulation run needs; built by ``load_scenario``.

    ``task`` is the federated task (``[task] name``, default: the run config's); ``region`` holds
    the task's generator keyword arguments (checked by the task), ``federation`` run-config keys
    (kebab-case, as in ``[tool.flwr.app.config]``; unset keys take ``RunConfig``'s defaults) and
    ``task_options`` the task's own keys (the ``[<task>]`` section); all are validated on load.
    ``comparisons`` is the raw ``[comparisons]`` section, the task's own (``check_comparisons``).
    """

    name: str
    region: dict[str, Any]
    federation: dict[str, Any]
    task: str = DEFAULT_TASK
    task_options: dict[str, Any] = field(default_factory=dict)
    comparisons: dict[str, Any] = field(default_factory=dict)
    epsilon_budget: float = _SIM.epsilon_budget  # per privacy unit of the task (patient, device): each node's budget
    delta: float = _SIM.delta
    max_stay_days: int = _SIM.max_stay_days
    reproducible_noise: bool = _SIM.reproducible_noise  # research only (logged): noise from the run's seed
    # Rolling-origin evaluation: every unit's last `eval_weeks` weeks are held out from training
    # (nodes included) and scored from `eval_origins` origins; `validation_days` before them too.
    eval_weeks: int = 16
    eval_origins: int = 8
    validation_days: int = 28
    forecast_plots: int = 3
    client_cpus: float = 1.0
    source: str = "embedded default"
    text: str = field(default="", compare=False)  # the TOML as read, copied into the results folder
    data: DataDirPlan | None = None  # [region] data-dir: the researcher's own files instead of a generated region

    @property
    def hospitals(self) -> int:
        """Number of hospitals (= virtual nodes)."""
        if self.data is not None:
            return len(self.data.files)
        return int(self.region.get("hospitals", RegionConfig.hospitals))  # every generator's default: 10

    def region_config(self) -> RegionConfig:
        """The region to generate (not for a scenario with ``[region] data-dir``)."""
        if self.data is not None:
            raise ValueError("this scenario runs on the files of [region] data-dir; it generates no region")
        return RegionConfig(**{k.replace("-", "_"): v for k, v in self.region.items()})

    def run_config(self, *, data_dir: Path, out_dir: Path) -> dict[str, Any]:
        """Run-config keys for the ServerApp/ClientApp of this scenario."""
        keys: dict[str, Any] = {"min-available-nodes": self.hospitals, "min-train-nodes": self.hospitals}
        keys |= self.federation
        keys |= {"task": self.task}
        keys |= {f"{self.task}.{k}": v for k, v in self.task_options.items()}
        keys |= {
            "simulation-data-dir": str(data_dir),
            "simulation-epsilon-budget": self.epsilon_budget,
            "simulation-delta": self.delta,
            "simulation-max-stay-days": self.max_stay_days,
            "simulation-reproducible-noise": self.reproducible_noise,
            "out-dir": str(out_dir),
        }
        task = get_task(self.task)
        if task.privacy_unit == "patient":  # the run's patient-level proposal
            keys |= {"patient-epsilon": self.epsilon_budget, "max-stay-days": self.max_stay_days}
        if task.rolling_origin_evaluation:  # the held-out days of the rolling-origin evaluation
            keys |= {"test-days": 7 * self.eval_weeks, "validation-days": self.validation_days}
        return keys

    def days_needed(self) -> int:
        """The fewest days a unit needs: one training window, then the validation days and the held-out weeks."""
        history = int(self.federation.get("history", RunConfig.history))
        horizon = int(self.federation.get("horizon", RunConfig.horizon))
        return history + horizon + self.validation_days + 7 * self.eval_weeks

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
    evaluation = dict(raw.get("evaluation", {}))
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
    kind = get_task(task)
    rolling = kind.rolling_origin_evaluation  # [evaluation]: rolling origins over held-out weeks
    for name, section, known in (
        ("privacy", privacy, {"mechanism", "epsilon", "delta", "max-stay-days", "reproducible-noise"}),
        ("evaluation", evaluation, _EVALUATION_KEYS),
        ("output", output, {"forecast-plots"}),
        ("simulation", simulation, {"client-cpus"}),
    ):
        extra = set(section) - known
        if extra:
            raise ScenarioError(f"{source}: unknown key(s) {sorted(extra)} in [{name}]; known: {sorted(known)}")
    owned = sorted(set(federation) & set(_RUNNER_KEYS))
    if owned:
        fixes = "; ".join(f"'{k}': use {_RUNNER_KEYS[k]}" for k in owned)
        raise ScenarioError(f"{source}: [federation] must not set {owned}: the runner sets them ({fixes})")
    try:  # [comparisons] are the task's own
        kind.check_comparisons(comparisons)
    except (TypeError, ValueError) as exc:
        raise ScenarioError(f"{source}: {exc}") from None
    for section_name, table, key in (
        ("privacy", privacy, "epsilon"),
        ("privacy", privacy, "delta"),
        ("simulation", simulation, "client-cpus"),
    ):
        value = table.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ScenarioError(f"{source}: [{section_name}] {key} must be a number, got {value!r:.60}")
    stay = privacy.get("max-stay-days", _SIM.max_stay_days)
    if isinstance(stay, bool) or not isinstance(stay, int) or not 1 <= stay <= 366:
        raise ScenarioError(f"{source}: [privacy] max-stay-days must be a whole number from 1 to 366, got {stay!r:.60}")
    if not isinstance(privacy.get("reproducible-noise", _SIM.reproducible_noise), bool):
        raise ScenarioError(
            f"{source}: [privacy] reproducible-noise must be true or false, got {privacy['reproducible-noise']!r:.60}"
        )
    plots = output.get("forecast-plots", 3)
    if isinstance(plots, bool) or not isinstance(plots, int) or not 0 <= plots <= 1000:
        raise ScenarioError(
            f"{source}: [output] forecast-plots must be a whole number from 0 to 1000, got {plots!r:.60}"
        )
    for key in ("history", "horizon"):  # read by the evaluation and data-dir checks before the run config's own
        value = federation.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ScenarioError(f"{source}: [federation] {key} must be a whole number >= 1, got {value!r:.60}")
    for key in sorted(_EVALUATION_KEYS):
        value = evaluation.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ScenarioError(f"{source}: [evaluation] {key} must be a whole number, got {value!r:.60}")
    if evaluation and not rolling:
        raise ScenarioError(
            f"{source}: [evaluation] is the rolling-origin evaluation; the {task} task does not use it: remove it"
        )
    # [region] is the task's generator's keyword arguments (checked by the task below), or, for a
    # task that reads data sources, data-dir: the researcher's own files.
    from_files = kind.reads_data_sources
    if from_files and "data-dir" in region:
        known_region = {f.name for f in fields(RegionConfig)}
        unknown_region = sorted(k for k in region if k != "data-dir" and str(k).replace("-", "_") not in known_region)
        if unknown_region:
            raise ScenarioError(
                f"{source}: unknown key(s) {unknown_region} in [region]; known: {sorted(known_region | {'data-dir'})}"
            )
    if "data-dir" in region and not isinstance(region["data-dir"], str):
        raise ScenarioError(
            f"{source}: [region] data-dir must be a folder path (a string), got {region['data-dir']!r:.60}"
        )
    data: DataDirPlan | None = None
    if "data-dir" in region and from_files:
        unused = sorted(k for k in region if k != "data-dir")
        if unused:
            raise ScenarioError(
                f"{source}: [region] {unused} are generator settings and unused with data-dir; remove them, "
                "or remove data-dir to generate a region"
            )
        folder = Path(str(region["data-dir"])).expanduser()
        if not folder.is_absolute() and Path(source).is_file():
            folder = Path(source).resolve().parent / folder  # relative to the scenario file, as a reader expects
        try:
            data = inspect_data_dir(folder.resolve(), federation, evaluation)
        except DataDirError as exc:
            raise ScenarioError(f"{source}: {exc}") from exc
        federation.setdefault("targets", ",".join(data.targets))  # the targets follow the columns present
    try:
        scenario = Scenario(
            name=str(raw.get("name", Path(source).stem)),
            region=region,
            federation=federation,
            task=task,
            task_options=task_options,
            comparisons=comparisons,
            epsilon_budget=float(privacy.get("epsilon", kind.default_epsilon)),
            delta=float(privacy.get("delta", _SIM.delta)),
            max_stay_days=int(privacy.get("max-stay-days", _SIM.max_stay_days)),
            reproducible_noise=bool(privacy.get("reproducible-noise", _SIM.reproducible_noise)),
            eval_weeks=int(evaluation.get("weeks", 16)),
            eval_origins=int(evaluation.get("origins", 8)),
            validation_days=int(evaluation.get("validation-days", 28)),
            forecast_plots=int(output.get("forecast-plots", 3)),
            client_cpus=float(simulation.get("client-cpus", 1.0)),
            source=source,
            text=text,
            data=data,
        )
        if data is None:
            kind.check_region(region)
        if rolling:
            _check_evaluation(scenario)  # before the run config, whose test-days it sets
        run = scenario.federation_config(data_dir=Path("."), out_dir=Path("."))
        kind.check_run(run, kind.options(run.task_options))  # e.g. a shape the pretrained weights do not fit
    except ScenarioError:
        raise
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


def _check_evaluation(scenario: Scenario) -> None:
    """The rolling-origin evaluation fits the horizon and, for a generated region, its shortest hospital."""
    source, horizon = scenario.source, int(scenario.federation.get("horizon", 14))
    weeks, origins, val = scenario.eval_weeks, scenario.eval_origins, scenario.validation_days
    if weeks < 1 or origins < 1 or val < horizon:
        raise ScenarioError(
            f"{source}: [evaluation] needs weeks >= 1, origins >= 1 and validation-days >= horizon {horizon}"
        )
    if origins - 1 + horizon > 7 * weeks:
        raise ScenarioError(
            f"{source}: [evaluation] {origins} origins of {horizon}-day forecasts do not fit in {weeks} weeks; "
            "hold out more weeks or ask for fewer origins"
        )
    if scenario.data is not None:
        return  # inspect_data_dir checked every unit of every file
    region = scenario.region_config()
    # A hospital that "joined late" starts at most 60 % into the period (medalloc_core.synthetic.region).
    shortest = region.days if region.short_history_fraction == 0 else max(region.days - int(0.6 * region.days), 28)
    need = scenario.days_needed()
    if shortest < need:
        fits = (shortest - need + 7 * weeks) // 7
        raise ScenarioError(
            f"{source}: every unit needs {need} days (history + horizon + [evaluation] validation-days {val} + "
            f"{weeks} held-out weeks), but [region] days = {region.days}"
            + (
                f" with short_history_fraction > 0 gives hospitals as short as {shortest} days"
                if shortest < region.days
                else ""
            )
            + f"; raise [region] days, or set [evaluation] weeks = {fits} or fewer (and origins to fit)"
            + (", or short_history_fraction = 0" if shortest < region.days else "")
        )
