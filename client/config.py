"""A hospital node's own configuration: read once from the SuperNode's node config into a frozen ``NodeConfig``.

On a real node everything comes from ``flower-supernode --node-config "data-path='...'
ledger-path='...' privacy-epsilon-budget=8.0"``; the coordinator's run config cannot change
any of it. A node serves the tasks its config names (``tasks="forecasting,equipment"``, or by
default every task whose data path it sets), each with its own data, ledger and budget:
the forecasting task under ``data-path``, ``ledger-path``, ``privacy-epsilon-budget``, any
other task ``T`` under ``T-data-path``, ``T-ledger-path``, ``T-epsilon-budget``. The
delta, accountant and training caps are the node's, shared by its tasks.

Only in simulation, where Flower gives a virtual node nothing but
``partition-id``/``num-partitions``, are the data, ledger and budget taken from the
simulation-only run-config keys (``simulation-data-dir``, ``simulation-epsilon-budget``,
``simulation-delta``): partition ``i`` is the ``i``-th hospital of that folder for the run's
task, the node's *own* data, never a slice of a shared dataset.

The forecasting task's ``data-path`` may be a contract file, an OMOP CDM (SQLite file,
database URL or export folder) or a FHIR export, read with the site's ``data-mapping``
(``data-format`` says which, ``auto`` tells them apart; docs/data.md). ``approved-apps`` is
the node's, not a task's: the data owner's list of app hashes the node may run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import Context

from medalloc_core.privacy.accounting import ACCOUNTANTS, AccountantName
from medalloc_core.simulation import (
    SimulationConfig,
    SimulationConfigError,
    ensure_simulation_region,
    simulated_ledger_path,
)
from medalloc_core.sources import FORMATS, DataSource, MappingError, SourceMapping
from medalloc_core.tasks import DEFAULT_TASK, NodeTask, get_task, task_names

__all__ = ["NodeConfig", "NodeConfigError", "task_keys"]


class NodeConfigError(ValueError):
    """The node's configuration is incomplete or invalid; the message says which key to set."""


def _accountant(value: object) -> AccountantName:
    """``value`` as the ledger's accountant name, or a ``NodeConfigError`` naming the choices."""
    if value not in ACCOUNTANTS:
        raise NodeConfigError(f"privacy-accountant must be 'prv' or 'rdp', got {value!r}")
    return value


def task_keys(task: str) -> tuple[str, str, str]:
    """The node-config keys of a task's data path, ledger path and budget (the task's ``node_keys``)."""
    return get_task(task).node_keys


def _source_task() -> str:
    """The registered task whose ``data-path`` may be any data source (contract, OMOP, FHIR, a database URL)."""
    return next(name for name in task_names() if get_task(name).reads_data_sources)


@dataclass(frozen=True)
class NodeConfig:
    """What a hospital node decides for itself: the tasks it serves, each with its own data, ledger and budget.

    Parameters
    ----------
    tasks : Mapping[str, NodeTask]
        The tasks the node serves, by name.
    hospital_id : str
        Name used in logs and in the reply's node info (default: the first task's data name: a
        file's stem, an OMOP/FHIR export's or database's name).
    threads : int (default: 1)
        CPU threads torch may use while training. The models are small: one thread is fastest,
        and more oversubscribe a shared machine (one DP round took 0.2 s on one thread and 7 s
        on two on the 2-core development box).
    simulated : bool
        True when the values came from simulation run-config keys.
    approved_apps : Path or None (default: None)
        Node-config ``approved-apps``: the data owner's list of app hashes the node may run
        (enforced by ``medalloc node exec``, checked by ``medalloc node check``; docs/hospital.md).

    Every ``NodeTask`` carries the shared node keys too: ``privacy-delta`` (default 1e-6),
    ``privacy-accountant`` ("prv"), ``max-local-epochs`` (5: the most local epochs per round
    the node accepts), ``min-noise-multiplier`` (0.5: the least DP-SGD noise; a smaller
    proposal is raised to it), ``max-grad-norm`` (1.0: the largest clipping bound) and
    ``node-state-path`` (default ``medalloc-node-state.json`` in the task's ledger folder: the
    record that notices a deleted or replaced ledger; keep it outside the ledger's folder, beside
    the node's keys, so that removing that folder is noticed too; every task's ledger has its
    own entry in it). The forecasting task also reads ``max-stay-days`` (14: the stay length the
    patient-level epsilon covers), ``release-path`` (``<ledger>.released.csv``: the node's source
    release), ``release-columns`` (admissions, census), ``data-format`` ("auto", "contract",
    "omop" or "fhir": what ``data-path`` is) and ``data-mapping`` (the site's mapping file, TOML,
    for OMOP/FHIR; docs/data.md). ``data-path`` is kept verbatim (``data_location``): a database
    URL is not a path.
    """

    tasks: Mapping[str, NodeTask] = field(default_factory=dict)
    hospital_id: str = ""
    threads: int = 1
    simulated: bool = False
    approved_apps: Path | None = None

    def task(self, name: str) -> NodeTask:
        """The node's settings for task ``name``; ``NodeConfigError`` when it does not serve it."""
        if name not in self.tasks:
            raise NodeConfigError(
                f"this node does not serve the '{name}' task (it serves: {', '.join(self.tasks) or 'none'}); "
                f"set {task_keys(name)[0]} (and list it in 'tasks') to serve it"
            )
        return self.tasks[name]

    # The settings of the task that reads data-path (contract, OMOP, FHIR), by their historical names.
    @property
    def data_path(self) -> Path:
        return self.task(_source_task()).data_path

    @property
    def ledger_path(self) -> Path:
        return self.task(_source_task()).ledger_path

    @property
    def epsilon_budget(self) -> float:
        return self.task(_source_task()).epsilon_budget

    @property
    def delta(self) -> float:
        return next(iter(self.tasks.values())).delta

    @property
    def max_local_epochs(self) -> int:
        return next(iter(self.tasks.values())).max_local_epochs

    @property
    def accountant(self) -> str:
        return next(iter(self.tasks.values())).accountant

    @property
    def min_noise_multiplier(self) -> float:
        return next(iter(self.tasks.values())).min_noise_multiplier

    @property
    def max_grad_norm(self) -> float:
        return next(iter(self.tasks.values())).max_grad_norm

    @property
    def data_location(self) -> str:
        """Node-config ``data-path`` exactly as given (a database URL is not a path)."""
        settings = self.task(_source_task())
        return str(settings.extra.get("data-location", settings.data_path))

    @property
    def data_format(self) -> str:
        """Node-config ``data-format``: what ``data-path`` is (``auto`` tells contract, OMOP and FHIR apart)."""
        return str(self.task(_source_task()).extra.get("data-format", "auto"))

    @property
    def data_mapping(self) -> Path | None:
        """Node-config ``data-mapping``: the site's mapping file (TOML; docs/data.md) for OMOP/FHIR, or None."""
        raw = self.task(_source_task()).extra.get("data-mapping")
        return Path(str(raw)) if raw else None

    @property
    def data_source_display(self) -> str:
        """``data-path`` as it may be logged (a database URL's password hidden)."""
        return DataSource(self.data_location).display

    @property
    def data_source(self) -> DataSource:
        """The node's data with its site mapping; raises NodeConfigError naming ``data-mapping`` if that is bad."""
        try:
            mapping = SourceMapping.from_toml(self.data_mapping) if self.data_mapping else SourceMapping()
        except MappingError as exc:
            raise NodeConfigError(f"data-mapping: {exc}") from None
        return DataSource(self.data_location, self.data_format, mapping)  # type: ignore[arg-type]

    @classmethod
    def from_context(cls, context: Context, *, run_config: Mapping[str, Any] | None = None) -> NodeConfig:
        """Read the node's config; fall back to the simulation run-config keys only when it names no data path.

        ``run_config`` replaces ``context.run_config`` (Flower's Python simulation API leaves
        a virtual node's run config empty, so the simulation runner passes its own).
        """
        node = context.node_config
        run = context.run_config if run_config is None else run_config
        if any(task_keys(t)[0] in node for t in task_names()):
            return cls._from_node(node)
        if "partition-id" in node:
            return cls._from_simulation(node, run)
        raise NodeConfigError(
            "this node has no 'data-path' in its node config; start it with "
            "flower-supernode --node-config \"data-path='/path/records.csv' ledger-path='/path/ledger.json' "
            'privacy-epsilon-budget=8.0" (or equipment-data-path=... for the equipment task, docs/equipment.md)'
        )

    @classmethod
    def from_node_config(cls, node: Mapping[str, Any]) -> NodeConfig:
        """A real node's config from its ``--node-config`` keys (what ``medalloc node check`` reads too).

        ``medalloc node check`` checks the forecasting task's data (contract, OMOP, FHIR), so
        ``data-path`` is required here.
        """
        if "data-path" not in node:
            raise NodeConfigError("the node config has no 'data-path'; set it to the node's data (file, folder or URL)")
        return cls._from_node(node)

    @classmethod
    def _from_node(cls, node: Mapping[str, Any]) -> NodeConfig:
        served = _served(node)
        tasks = {}
        for name in served:
            data_key, ledger_key, budget_key = task_keys(name)
            for key in (data_key, ledger_key, budget_key):
                if key not in node:
                    raise NodeConfigError(
                        f"node config serves '{name}' but has no '{key}'; a node must set its own {key}"
                    )
            tasks[name] = _node_task(
                node,
                name,
                data_path=Path(str(node[data_key])),
                ledger_path=Path(str(node[ledger_key])),
                epsilon_budget=_number(node, budget_key),
                hospital_id=str(node.get("hospital-id", "")),
                simulated=False,
            )
        first = next(iter(tasks.values()))
        return cls(
            tasks=tasks,
            hospital_id=first.hospital_id,
            threads=_threads(node),
            simulated=False,
            approved_apps=Path(str(node["approved-apps"])) if node.get("approved-apps") else None,
        )

    @classmethod
    def _from_simulation(cls, node: Mapping[str, Any], run: Mapping[str, Any]) -> NodeConfig:
        name = str(run.get("task", DEFAULT_TASK))
        try:
            task = get_task(name)
            sim = SimulationConfig.from_run_config(run)  # the simulation-* keys, read once, typed
        except (ValueError, SimulationConfigError) as exc:
            raise NodeConfigError(str(exc)) from exc
        if sim.data_dir:
            folder = Path(sim.data_dir)
        else:  # `flwr run .` with the pyproject defaults: a region generated once, shared by the virtual nodes
            folder = ensure_simulation_region(
                hospitals=int(node.get("num-partitions", 1)), days=sim.days, seed=sim.region_seed, task=name
            )
        if not folder.is_dir():
            raise NodeConfigError(f"simulation-data-dir {folder} is not a folder")
        paths = task.node_data(folder)
        partition = int(node["partition-id"])
        if not 0 <= partition < len(paths):
            raise NodeConfigError(
                f"virtual node {partition} has no hospital file: {folder} holds {len(paths)}; "
                "run as many virtual nodes as hospital files"
            )
        data_path = paths[partition]
        hospital = task.hospital_id_of(data_path)
        settings = _node_task(
            {"privacy-delta": sim.delta, "max-stay-days": sim.max_stay_days},
            name,
            data_path=data_path,
            ledger_path=simulated_ledger_path(folder, name, hospital),
            epsilon_budget=sim.epsilon_budget,
            hospital_id=hospital,
            simulated=True,
        )
        return cls(tasks={name: settings}, hospital_id=hospital, threads=1, simulated=True)


def _served(node: Mapping[str, Any]) -> list[str]:
    if "tasks" in node:
        names = [t.strip() for t in str(node["tasks"]).split(",") if t.strip()]
        unknown = [t for t in names if t not in task_names()]
        if unknown or not names:
            raise NodeConfigError(f"'tasks' names unknown task(s) {unknown}; known: {', '.join(task_names())}")
        return names
    return [t for t in task_names() if task_keys(t)[0] in node]


def _node_task(
    node: Mapping[str, Any],
    name: str,
    *,
    data_path: Path,
    ledger_path: Path,
    epsilon_budget: float,
    hospital_id: str,
    simulated: bool,
) -> NodeTask:
    extra: dict[str, Any] = {k: v for k, v in node.items() if isinstance(v, int | float | str | bool)}
    if get_task(name).reads_data_sources:
        # The data may be a database URL (not a path) read with a site mapping.
        extra["data-location"] = str(node.get("data-path", data_path))
        data_format = str(node.get("data-format", "auto"))
        if data_format not in FORMATS:
            raise NodeConfigError(f"data-format must be one of {', '.join(FORMATS)}, got {data_format!r}")
        if not hospital_id:
            hospital_id = DataSource(extra["data-location"]).name
    try:
        settings = NodeTask(
            task=name,
            hospital_id=hospital_id or data_path.stem,
            data_path=data_path,
            ledger_path=ledger_path,
            epsilon_budget=epsilon_budget,
            delta=_number(node, "privacy-delta", 1e-6),
            accountant=str(node.get("privacy-accountant", "prv")),
            max_local_epochs=int(_number(node, "max-local-epochs", 5)),
            min_noise_multiplier=_number(node, "min-noise-multiplier", 0.5),
            max_grad_norm=_number(node, "max-grad-norm", 1.0),
            threads=_threads(node),
            simulated=simulated,
            node_state_path=Path(str(node["node-state-path"])) if "node-state-path" in node else None,
            extra=extra,
        )
    except ValueError as exc:
        key = task_keys(name)[2]
        raise NodeConfigError(f"{exc} ('{key}' or 'privacy-delta')") from exc
    if settings.max_local_epochs < 1:
        raise NodeConfigError(f"max-local-epochs must be >= 1, got {settings.max_local_epochs}")
    if settings.min_noise_multiplier <= 0:
        raise NodeConfigError("min-noise-multiplier must be > 0: a node never trains without DP noise")
    if settings.max_grad_norm <= 0:
        raise NodeConfigError(f"max-grad-norm must be > 0, got {settings.max_grad_norm}")
    _accountant(settings.accountant)
    if get_task(name).privacy_unit == "patient" and int(_number(node, "max-stay-days", 14)) < 1:
        raise NodeConfigError(f"max-stay-days must be >= 1, got {node.get('max-stay-days')}")
    return settings


def _threads(node: Mapping[str, Any]) -> int:
    threads = int(_number(node, "torch-threads", 1))
    if threads < 1:
        raise NodeConfigError(f"torch-threads must be >= 1, got {threads}")
    return threads


def _number(values: Mapping[str, Any], key: str, default: float | None = None) -> float:
    if key not in values:
        if default is None:
            raise NodeConfigError(f"'{key}' is required")
        return default
    value = values[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise NodeConfigError(f"'{key}' must be a number, got {value!r}")
    return float(value)
