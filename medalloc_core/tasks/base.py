"""What a federated task is, free of Flower: the contract every task folder implements and the apps call.

A task owns its data contract and loader, its examples, its model, its training under the
node's privacy ledger, its reply metrics and its model files. The ServerApp asks it for the
run's model and for each round's instruction; the ClientApp hands it a request, the global
arrays and the node's settings for that task, and sends back what it returns. Neither app
knows what a forecaster or a device is. Adding a task is a folder with a ``FederatedTask``
and one line in :data:`medalloc_core.tasks.TASKS`.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from medalloc_core.privacy.ledger import LedgerConfigMismatch, LedgerError, LedgerWriteFailed, PrivacyBudgetExceeded
from medalloc_core.privacy.node_state import LedgerResetDetected
from medalloc_core.protocol import Refusal, Scalar

logger = logging.getLogger(__name__)


class TaskRefused(Exception):
    """A node declines a round on its own authority; ``detail`` must hold no data (it is sent)."""

    def __init__(self, code: Refusal, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def ledger_refusal(
    exc: LedgerError, hospital_id: str, ledger_path: Path, reason: Callable[..., str], *, hint: str = ""
) -> TaskRefused:
    """The refusal for a ledger problem: one code per kind, the task's fixed text; the details go to the node's log.

    ``reason`` is the task's refusal text (its budget may be per patient or per device); ``hint``
    tells the node's operator which node-config key to look at when the ledger's settings differ.
    """
    if isinstance(exc, PrivacyBudgetExceeded):
        logger.warning("%s: %s", hospital_id, exc)
        code = Refusal.PRIVACY_BUDGET_EXCEEDED
        return TaskRefused(code, reason(code, projected=exc.projected_epsilon, budget=exc.epsilon_budget))
    if isinstance(exc, LedgerResetDetected):
        logger.error("%s: %s", hospital_id, exc)
        return TaskRefused(Refusal.LEDGER_RESET_DETECTED, reason(Refusal.LEDGER_RESET_DETECTED))
    if isinstance(exc, LedgerWriteFailed):
        logger.error("%s: %s", hospital_id, exc)
        return TaskRefused(Refusal.NODE_STORAGE_FAILED, reason(Refusal.NODE_STORAGE_FAILED))
    if isinstance(exc, LedgerConfigMismatch):
        logger.error("%s: %s %s", hospital_id, exc, hint)
        return TaskRefused(Refusal.LEDGER_CONFIG_MISMATCH, reason(Refusal.LEDGER_CONFIG_MISMATCH))
    logger.error("%s: privacy ledger %s: %s", hospital_id, ledger_path, exc)
    return TaskRefused(Refusal.LEDGER_CORRUPT, reason(Refusal.LEDGER_CORRUPT))


class TaskOptionsError(ValueError):
    """A task's own run-config key is unknown or has a bad value; the message names the key."""


class JSONLike(Protocol):
    """A model config or an example spec: what travels in every instruction and every model file."""

    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class TaskModel:
    """The run's model as the coordinator sets it up: its config, the spec of its examples, the initial arrays."""

    config: JSONLike
    spec: JSONLike
    arrays: dict[str, np.ndarray]


@dataclass(frozen=True)
class NodeTask:
    """What one node decides for one task: its data, its ledger and budget, its caps. Never set by the coordinator.

    ``extra`` holds node-config keys a task reads itself (e.g. a node-state path).
    """

    task: str
    hospital_id: str
    data_path: Path
    ledger_path: Path
    epsilon_budget: float
    delta: float = 1e-6
    accountant: str = "prv"
    max_local_epochs: int = 5
    min_noise_multiplier: float = 0.5
    max_grad_norm: float = 1.0
    threads: int = 1
    simulated: bool = False
    node_state_path: Path | None = None  # default: medalloc-node-state.json beside the ledger
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.epsilon_budget) and self.epsilon_budget > 0):
            raise ValueError(f"the {self.task} budget must be a finite number > 0, got {self.epsilon_budget}")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")
        if self.node_state_path is None:
            object.__setattr__(self, "node_state_path", self.ledger_path.parent / "medalloc-node-state.json")


@dataclass(frozen=True)
class SimulationRun:
    """What the simulation runner hands a task after its federation, for the task's comparisons and summary."""

    out: Path  # the results folder (the final model is there)
    region_dir: Path  # the region's files, one hospital each, and the virtual nodes' ledgers in ledgers/
    region: Mapping[str, Any]  # the generator's keyword arguments (the scenario's [region])
    run: Any  # the RunConfig
    options: Any  # the task's own options
    comparisons: Mapping[str, Any]  # the scenario's [comparisons]
    epsilon_budget: float
    delta: float
    max_stay_days: int = 14
    reproducible_noise: bool = False
    evaluation: Mapping[str, int] = field(default_factory=dict)  # the scenario's [evaluation]: weeks, origins, ...
    forecast_plots: int = 3  # the scenario's [output] forecast-plots
    rounds: Sequence[Any] = ()  # the federation's RoundRecords (metrics.jsonl)
    phase: Callable[[str, int | None], None] = lambda name, total: None
    advance: Callable[[], None] = lambda: None


@dataclass(frozen=True)
class NodeReply:
    """A node's answer to one request: its metrics (exactly the task's reply keys) and, after training, its arrays.

    ``records``: further ``ConfigRecord``s its task's allow-list offers (e.g. forecasting's released
    daily totals, ``protocol.RELEASED_TOTALS``), checked like the rest before they leave the node.
    """

    metrics: dict[str, int | float | list[float]]
    arrays: dict[str, np.ndarray] | None = None
    records: dict[str, dict[str, Any]] | None = None


class FederatedTask(ABC):
    """One federated task: what the coordinator proposes and what a node does with it.

    Class attributes
    ----------------
    name : str
        The run-config value ``task = "<name>"`` and the node-config prefix ``<name>-data-path``.
    privacy_unit : str
        What one epsilon of the task's ledger protects (``"patient"``, ``"device"``).
    action : str
        The Flower message action: requests are ``train.<action>`` / ``evaluate.<action>``;
        ``"default"`` keeps Flower's plain ``train`` / ``evaluate`` (the forecasting task's wire).
    evaluates : bool
        False when a node has nothing it may report from an evaluate round: the ServerApp then
        sends none.
    train_keys, evaluate_keys : frozenset[str]
        Exactly the metric keys of a node's train and evaluate replies (the reply checks drop
        any other reply).
    default_epsilon : float
        A simulated node's budget per privacy unit when the scenario names none.
    legacy_model_without_task_key : bool
        True for the one task whose model files predate tasks and name none (``model_io``):
        its files are written without a ``task`` field and a file without one is its.
    reads_data_sources : bool
        True when the task's ``data-path`` may be any ``medalloc_core.sources`` source (contract
        file, OMOP, FHIR, a database URL) read with ``data-format``/``data-mapping``; a scenario's
        ``[region] data-dir`` (the researcher's own files) is offered for it.
    rolling_origin_evaluation : bool
        True when a simulation scores the task from rolling origins over held-out weeks (the
        scenario's ``[evaluation]``, run-config ``test-days``/``validation-days``).
    data_kind, report_layout : str
        How ``medalloc generate`` writes the task's synthetic data and how ``medalloc simulate``
        lays out its report's tables (the CLI's renderers are keyed by these, never by task name).
    """

    name: ClassVar[str]
    action: ClassVar[str]
    privacy_unit: ClassVar[str]  # what one epsilon protects: "patient" (a stay), "device" (its history)
    evaluates: ClassVar[bool] = True
    train_keys: ClassVar[frozenset[str]]
    evaluate_keys: ClassVar[frozenset[str]]
    default_epsilon: ClassVar[float]
    legacy_model_without_task_key: ClassVar[bool] = False
    reads_data_sources: ClassVar[bool] = False
    # True when the task's rounds can run under Flower's SecAgg+ with distributed DP: it then has
    # secure_instruction(...) and train_secure(...) (docs/privacy.md, "Secure aggregation")
    secure_aggregation: ClassVar[bool] = False
    rolling_origin_evaluation: ClassVar[bool] = False
    data_kind: ClassVar[str]
    report_layout: ClassVar[str]

    # ------------------------------------------------------------------ names derived from the task's
    @property
    def node_keys(self) -> tuple[str, str, str]:
        """The node-config keys of the task's data path, ledger path and budget (``<name>-data-path``, ...)."""
        return f"{self.name}-data-path", f"{self.name}-ledger-path", f"{self.name}-epsilon-budget"

    @property
    def ledger_file_suffix(self) -> str:
        """What a simulated node's ledger file name adds after the hospital id (``H000-equipment.json``)."""
        return f"-{self.name}"

    def node_state_key(self, hospital_id: str) -> str:
        """The task's ledger entry in the node-state record (``<hospital>/<task>``): one entry per ledger."""
        return f"{hospital_id}/{self.name}"

    def hospital_id_of(self, data_path: Path) -> str:
        """The hospital id a simulated node of this task takes from its data path (default: the file's stem)."""
        return data_path.stem

    def model_file_task(self) -> str | None:
        """The ``task`` field of the task's model files (``None``: the field is left out, see above)."""
        return None if self.legacy_model_without_task_key else self.name

    # ------------------------------------------------------------------ the coordinator's side
    def options(self, raw: Mapping[str, Any]) -> Any:
        """The task's own run-config keys (``<name>.<key>``, prefix removed) read into a typed object."""
        if raw:
            raise TaskOptionsError(f"task '{self.name}' has no run-config keys of its own; got {sorted(raw)}")
        return None

    def check_run(self, run: Any, options: Any) -> None:
        """Refuse, before anything runs, a run config whose model this task cannot build (``ValueError``, the fix).

        Cheap: no weights are built (``medalloc simulate`` checks a scenario with it before it starts Ray).
        """
        return None

    @abstractmethod
    def model(self, run: Any, options: Any) -> TaskModel:
        """The run's model: config and example spec from the run config, initial arrays from its seed."""

    @abstractmethod
    def train_instruction(
        self, run: Any, options: Any, model: TaskModel, *, server_round: int, run_tag: str
    ) -> dict[str, Scalar]:
        """The ``ConfigRecord`` of a train request."""

    @abstractmethod
    def evaluate_instruction(
        self, run: Any, options: Any, model: TaskModel, *, server_round: int, run_tag: str
    ) -> dict[str, Scalar]:
        """The ``ConfigRecord`` of an evaluate request."""

    @abstractmethod
    def parse_model(self, config: Mapping[str, Any], spec: Mapping[str, Any]) -> tuple[JSONLike, JSONLike]:
        """A model file's ``model-config`` and ``window-spec`` back as typed objects (``ValueError`` if bad)."""

    @abstractmethod
    def write_model(
        self, path: Path, arrays: Mapping[str, np.ndarray], model: TaskModel, extra: Mapping[str, Any]
    ) -> Path:
        """The final model in the project's one model-file format; returns the sidecar."""

    # ------------------------------------------------------------------ a node's side
    @abstractmethod
    def train(self, node: NodeTask, request: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> NodeReply:
        """Train the global arrays on the node's data within its ledger; raise ``TaskRefused`` to decline."""

    @abstractmethod
    def evaluate(self, node: NodeTask, request: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> NodeReply:
        """Score the global arrays on the node's data; raise ``TaskRefused`` to decline."""

    # ------------------------------------------------------------------ simulations
    @abstractmethod
    def node_data(self, folder: Path) -> list[Path]:
        """The per-hospital data paths of a region folder, in partition order (what virtual node ``i`` reads)."""

    def public_calendar(self, data_path: Path) -> dict[str, str]:
        """The node-config calendar keys an operator would declare for ``data_path`` (what the node's log
        suggests when a deployed node has none); empty for a task or data that needs none."""
        return {}

    @abstractmethod
    def report(self, sim: SimulationRun) -> dict[str, Any]:
        """A simulation's comparisons, plots and summary part (``medalloc simulate``); JSON-ready.

        Every task reports through this one hook. Besides its own keys the returned mapping
        holds ``federation_epsilon_per_hospital`` (each node's spent epsilon, from its ledger)
        and may hold ``hospitals`` (their order); the runner moves both into the summary's
        shared part.
        """

    @abstractmethod
    def check_comparisons(self, raw: Mapping[str, Any]) -> None:
        """Validate a scenario's ``[comparisons]`` for this task (``ValueError`` naming the key)."""

    @abstractmethod
    def check_region(self, raw: Mapping[str, Any]) -> None:
        """Validate a scenario's ``[region]`` (the generator's keyword arguments) for this task."""

    @abstractmethod
    def generate(self, folder: Path, region: Mapping[str, Any]) -> list[Path]:
        """Write a synthetic region (the generator's keyword arguments) into ``folder``; returns its data paths."""


def options_from(cls: type, raw: Mapping[str, Any], *, task: str) -> Any:
    """Build the dataclass ``cls`` from kebab-case keys, typed like its defaults; unknown keys are an error."""
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in known:
            options = ", ".join(sorted(f"{task}.{k.replace('_', '-')}" for k in known))
            raise TaskOptionsError(f"unknown run-config key '{task}.{key}'; the {task} task's keys: {options}")
        default = known[name].default
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int | float) and not isinstance(value, bool) and float(value) == int(value)
            value = int(value) if ok else value
        elif isinstance(default, float):
            ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(float(value))
            value = float(value) if ok else value
        else:
            ok = isinstance(value, str)
        if not ok:
            raise TaskOptionsError(f"run-config '{task}.{key}' must be like {default!r}, got {value!r}")
        values[name] = value
    try:
        return cls(**values)
    except ValueError as exc:
        raise TaskOptionsError(f"{task} run-config: {exc}") from exc
