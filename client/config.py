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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import Context

from medalloc_core.privacy.accounting import ACCOUNTANTS
from medalloc_core.tasks import DEFAULT_TASK, NodeTask, get_task, task_names

DATA_SUFFIXES = (".csv", ".parquet")


class NodeConfigError(ValueError):
    """The node's configuration is incomplete or invalid; the message says which key to set."""


def task_keys(task: str) -> tuple[str, str, str]:
    """The node-config keys of a task's data path, ledger path and budget."""
    if task == DEFAULT_TASK:
        return "data-path", "ledger-path", "privacy-epsilon-budget"
    return f"{task}-data-path", f"{task}-ledger-path", f"{task}-epsilon-budget"


@dataclass(frozen=True)
class NodeConfig:
    """What a hospital node decides for itself: the tasks it serves, each with its own data, ledger and budget.

    Parameters
    ----------
    tasks : Mapping[str, NodeTask]
        The tasks the node serves, by name.
    hospital_id : str
        Name used in logs and in the reply's node info (default: the first task's data file stem).
    threads : int (default: 1)
        CPU threads torch may use while training. The models are small: one thread is fastest,
        and more oversubscribe a shared machine (one DP round took 0.2 s on one thread and 7 s
        on two on the 2-core development box).
    simulated : bool
        True when the values came from simulation run-config keys.

    Every ``NodeTask`` carries the shared node keys too: ``privacy-delta`` (default 1e-6),
    ``privacy-accountant`` ("prv"), ``max-local-epochs`` (5: the most local epochs per round
    the node accepts), ``min-noise-multiplier`` (0.5: the least DP-SGD noise; a smaller
    proposal is raised to it), ``max-grad-norm`` (1.0: the largest clipping bound) and
    ``node-state-path`` (default ``medalloc-node-state.json`` in the task's ledger folder: the
    record that notices a deleted or replaced ledger; keep it outside the ledger's folder, beside
    the node's keys, so that removing that folder is noticed too; every task's ledger has its
    own entry in it). The forecasting task also reads ``max-stay-days`` (14: the stay length the
    patient-level epsilon covers), ``release-path`` (``<ledger>.released.csv``: the node's source
    release) and ``release-columns`` (admissions, census).
    """

    tasks: Mapping[str, NodeTask] = field(default_factory=dict)
    hospital_id: str = ""
    threads: int = 1
    simulated: bool = False

    def task(self, name: str) -> NodeTask:
        """The node's settings for task ``name``; ``NodeConfigError`` when it does not serve it."""
        if name not in self.tasks:
            raise NodeConfigError(
                f"this node does not serve the '{name}' task (it serves: {', '.join(self.tasks) or 'none'}); "
                f"set {task_keys(name)[0]} (and list it in 'tasks') to serve it"
            )
        return self.tasks[name]

    # The forecasting task's settings, by their historical names.
    @property
    def data_path(self) -> Path:
        return self.task(DEFAULT_TASK).data_path

    @property
    def ledger_path(self) -> Path:
        return self.task(DEFAULT_TASK).ledger_path

    @property
    def epsilon_budget(self) -> float:
        return self.task(DEFAULT_TASK).epsilon_budget

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
    def node_state_path(self) -> Path:
        return self.task(DEFAULT_TASK).node_state_path  # type: ignore[return-value]

    @property
    def max_stay_days(self) -> int:
        return int(self.task(DEFAULT_TASK).extra.get("max-stay-days", 14))

    @property
    def release_path(self) -> Path:
        settings = self.task(DEFAULT_TASK)
        default = settings.ledger_path.with_name(settings.ledger_path.name + ".released.csv")
        return Path(str(settings.extra.get("release-path", default)))

    @property
    def release_columns(self) -> tuple[str, ...]:
        raw = str(self.task(DEFAULT_TASK).extra.get("release-columns", "admissions,census"))
        return tuple(c.strip() for c in raw.split(",") if c.strip())

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
        return cls(tasks=tasks, hospital_id=first.hospital_id, threads=_threads(node), simulated=False)

    @classmethod
    def _from_simulation(cls, node: Mapping[str, Any], run: Mapping[str, Any]) -> NodeConfig:
        name = str(run.get("task", DEFAULT_TASK))
        try:
            task = get_task(name)
        except ValueError as exc:
            raise NodeConfigError(str(exc)) from exc
        if run.get("simulation-data-dir"):
            folder = Path(str(run["simulation-data-dir"]))
        else:  # `flwr run .` with the pyproject defaults: a region generated once, shared by the virtual nodes
            folder = ensure_simulation_region(
                hospitals=int(node.get("num-partitions", 1)),
                days=int(run.get("simulation-days", 730)),
                seed=int(run.get("simulation-region-seed", 0)),
                task=name,
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
        ledger = f"{data_path.stem}.json" if name == DEFAULT_TASK else f"{data_path.stem}-{name}.json"
        settings = _node_task(
            {
                "privacy-delta": run.get("simulation-delta", 1e-6),
                "max-stay-days": run.get("simulation-max-stay-days", 14),
            },
            name,
            data_path=data_path,
            ledger_path=folder / "ledgers" / ledger,
            epsilon_budget=_number(run, "simulation-epsilon-budget", 1.0),
            hospital_id=data_path.stem,
            simulated=True,
        )
        return cls(tasks={name: settings}, hospital_id=data_path.stem, threads=1, simulated=True)


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
            extra={k: v for k, v in node.items() if isinstance(v, int | float | str | bool)},
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
    if settings.accountant not in ACCOUNTANTS:
        raise NodeConfigError(f"privacy-accountant must be 'prv' or 'rdp', got {settings.accountant!r}")
    if name == DEFAULT_TASK and int(_number(node, "max-stay-days", 14)) < 1:
        raise NodeConfigError(f"max-stay-days must be >= 1, got {node.get('max-stay-days')}")
    return settings


def _threads(node: Mapping[str, Any]) -> int:
    threads = int(_number(node, "torch-threads", 1))
    if threads < 1:
        raise NodeConfigError(f"torch-threads must be >= 1, got {threads}")
    return threads


def ensure_simulation_region(*, hospitals: int, days: int, seed: int, task: str = DEFAULT_TASK) -> Path:
    """The region folder for a simulation run without ``simulation-data-dir``; generated on first use.

    Every virtual node computes the same path (temp dir, named by task/hospitals/days/seed); the
    first to arrive generates the region into a private folder and renames it into place, so
    concurrent nodes never see a half-written region.
    """
    import os
    import shutil
    import tempfile

    prefix = "medalloc-simulation-region" if task == DEFAULT_TASK else f"medalloc-simulation-{task}"
    folder = Path(tempfile.gettempdir()) / f"{prefix}-h{hospitals}-d{days}-s{seed}"
    if folder.is_dir() and get_task(task).node_data(folder):
        return folder
    staging = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    get_task(task).generate(staging / "region", {"hospitals": hospitals, "days": days, "seed": seed})
    try:
        os.rename(staging / "region", folder)
    except OSError:  # another node won the race; its region is identical (same config, same seed)
        pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def hospital_files(folder: Path) -> list[Path]:
    """The hospital files of a forecasting region folder, sorted by name (``H000.csv``, ``H001.csv``, ...)."""
    if not folder.is_dir():
        raise NodeConfigError(f"simulation-data-dir {folder} is not a folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in DATA_SUFFIXES)


def _number(values: Mapping[str, Any], key: str, default: float | None = None) -> float:
    if key not in values:
        if default is None:
            raise NodeConfigError(f"'{key}' is required")
        return default
    value = values[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise NodeConfigError(f"'{key}' must be a number, got {value!r}")
    return float(value)
