"""The coordinator's run configuration: ``[tool.flwr.app.config]`` read once into a frozen, typed ``RunConfig``."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from flwr.app import Context

from medalloc_core.privacy.mechanisms import SHIPPED_MECHANISM, MechanismNotOffered, check_offered
from medalloc_core.simulation import PATIENT_EPSILON, SimulationConfig, SimulationConfigError
from medalloc_core.tasks import DEFAULT_TASK, TaskOptionsError, get_task, task_names

_STRATEGY_NAMES = ("fedavg", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg", "krum")
_SIM = SimulationConfig()  # the simulation-* keys' defaults live there, read by the nodes too


class RunConfigError(ValueError):
    """A run-config value is missing its type, out of range, or unknown."""


@dataclass(frozen=True)
class RunConfig:
    """Everything the ServerApp needs to run a federation: THE defaults of the product.

    ``pyproject.toml``'s ``[tool.flwr.app.config]``, the embedded default scenario and any
    scenario that leaves a key unset get exactly these (tests/test_run_config_defaults.py holds
    ``pyproject.toml`` equal to them). The default run fine-tunes the hybrid forecaster from its
    public pretrained weights (no privacy cost) with small steps. Each field is the snake_case form of
    a kebab-case key in ``[tool.flwr.app.config]``
    (``num_server_rounds`` <- ``num-server-rounds``). Override any of them with
    ``flwr run . --run-config "strategy='fedprox' num-server-rounds=10"``.
    """

    # --- the federated task (medalloc_core.tasks); its own keys are "<task>.<key>" (task_options)
    task: str = DEFAULT_TASK
    task_options: Mapping[str, Any] = field(default_factory=dict, compare=False)
    # --- rounds and sampling
    num_server_rounds: int = 5
    strategy: str = "fedavg"  # fedavg | fedprox | fedadam | fedmedian | fedtrimmedavg | krum
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    min_available_nodes: int = 2  # wait for this many; fraction-train = 1 samples every connected node
    min_train_nodes: int = 2
    round_timeout: float = 3600.0  # seconds to wait for replies before closing a round
    # --- local training, proposed to nodes (each node caps these with its own config)
    local_epochs: int = 2
    batch_size: int = 256  # DP-SGD noise per step shrinks as 1 / batch size
    lr: float = 1e-3  # steps from the public pretrained weights (docs/forecasting.md: 3e-4 did not move them)
    seed: int = 0
    # --- the shared model and its input windows
    model: str = "hybrid"  # hybrid (classical forecast + learned correction) | mlp | tcn
    history: int = 28  # L: days of history per input window (4 weeks: the pretrained weights' shape)
    horizon: int = 14  # H: days forecast (2 weeks)
    hidden: int = 64  # network width; a few thousand windows per hospital need no more
    targets: str = "admissions,census"  # comma-separated target columns
    # Hybrid only: input channels beside the weekly means of the 28 weeks before the origin, which it always
    # reads (its level is smoothed from them), comma-separated: "region" (the other nodes' released totals),
    # "year_ago"; "" none ("weeks" is accepted and changes nothing).
    context: str = ""
    init: str = "pretrained"  # the hybrid starts from the shipped public weights (no privacy cost); "none": seeded
    # Days each node holds out at the end of every unit: never trained on. 0 = max(horizon, 28).
    # `medalloc simulate` sets test-days to its rolling-origin evaluation weeks ([evaluation]).
    validation_days: int = 0
    test_days: int = 0
    # --- patient-level privacy on each node (the node caps it by its own budget; its ledger has the last word)
    privacy_mechanism: str = SHIPPED_MECHANISM  # each day's counts released once per node with Gaussian noise
    patient_epsilon: float = PATIENT_EPSILON  # the most this run may spend per patient (stay) on each node
    max_stay_days: int = _SIM.max_stay_days  # the stay length that epsilon covers; a node uses max(its own, this)
    # --- strategy parameters
    proximal_mu: float = 0.01  # FedProx
    server_lr: float = 0.1  # FedAdam eta
    server_beta1: float = 0.9  # FedAdam
    server_beta2: float = 0.99  # FedAdam
    server_tau: float = 1e-3  # FedAdam
    trimmed_beta: float = 0.2  # FedTrimmedAvg: fraction cut from each tail
    krum_malicious_nodes: int = 0  # Krum: f, needs more than 2f + 2 replies
    # --- reply checks
    max_update_norm: float = 100.0
    max_examples_weight: int = 1_000_000
    max_weight_ratio: float = 10.0
    # --- client-level DP on the aggregate (Flower's DP strategy wrapper)
    client_dp: bool = False
    client_dp_noise_multiplier: float = 1.0
    client_dp_clipping_norm: float = 1.0
    client_dp_delta: float = 1e-5
    # --- secure aggregation (Flower's SecAgg+) with distributed DP: the tasks that support it (docs/privacy.md)
    secure_aggregation: bool = False
    # context "region": the nodes' released daily totals summed under Flower's SecAgg+, so the coordinator learns only
    # the regional total; every node must agree in its own config (docs/coordinator.md, "The region", secure sums)
    region_secure_aggregation: bool = False
    # --- outputs
    out_dir: str = ""  # metrics.jsonl, checkpoints, final model; empty: results/run-<run id>
    checkpoint_dir: str = ""  # empty: <out-dir>/checkpoints
    resume: bool = False
    # Keep the start (round 0) unless the best round beats it beyond the validation noise (docs/coordinator.md,
    # "Checkpoints and resume"); false: the best round is kept even where it scores worse than the start.
    keep_start: bool = True
    # A model to start from instead of `init`: last week's out-dir (its final_model) or model file; the weekly cycle
    # (docs/coordinator.md, "Every week") carries each week's model into the next run. Empty: `init`.
    init_from: str = ""
    # --- simulation only: ignored by any node whose node config names its own data-path. The nodes
    # read these through medalloc_core.simulation.SimulationConfig, whose defaults these are.
    simulation_data_dir: str = _SIM.data_dir  # region folder with one H000.csv... per virtual node
    simulation_epsilon_budget: float = _SIM.epsilon_budget  # per privacy unit
    simulation_delta: float = _SIM.delta
    simulation_max_stay_days: int = _SIM.max_stay_days
    # Research only: nodes' DP noise follows `seed` (logged); NOT private against the coordinator, a real node refuses.
    simulation_reproducible_noise: bool = _SIM.reproducible_noise
    simulation_days: int = _SIM.days  # used by `flwr run .` to generate the region when absent
    simulation_region_seed: int = _SIM.region_seed

    def __post_init__(self) -> None:
        if self.task not in task_names():
            raise RunConfigError(f"task '{self.task}' is unknown; choose one of {', '.join(task_names())}")
        try:
            get_task(self.task).options(self.task_options)
        except TaskOptionsError as exc:
            raise RunConfigError(str(exc)) from exc
        try:
            check_offered(self.privacy_mechanism)
        except MechanismNotOffered as exc:
            raise RunConfigError(str(exc)) from None
        if not (math.isfinite(self.patient_epsilon) and self.patient_epsilon > 0) or self.max_stay_days < 1:
            raise RunConfigError("patient-epsilon must be a finite number > 0 and max-stay-days >= 1")
        if self.strategy not in _STRATEGY_NAMES:
            raise RunConfigError(f"strategy '{self.strategy}' is unknown; choose one of {', '.join(_STRATEGY_NAMES)}")
        positive_ints = (
            "num_server_rounds",
            "min_available_nodes",
            "local_epochs",
            "batch_size",
            "history",
            "horizon",
            "hidden",
        )
        for name in positive_ints:
            if getattr(self, name) < 1:
                raise RunConfigError(f"{_kebab(name)} must be >= 1, got {getattr(self, name)}")
        for name in ("validation_days", "test_days"):
            days = getattr(self, name)
            if days < 0 or 0 < days < self.horizon:
                raise RunConfigError(f"{_kebab(name)} must be 0 (the default) or >= horizon {self.horizon}, got {days}")
        if self.min_train_nodes < 0:
            raise RunConfigError(f"min-train-nodes must be >= 0, got {self.min_train_nodes}")
        for name in ("fraction_train", "fraction_evaluate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise RunConfigError(f"{_kebab(name)} must be in [0, 1], got {getattr(self, name)}")
        if self.lr <= 0:
            raise RunConfigError("lr must be > 0")
        try:
            self.simulation  # noqa: B018 -- the nodes' typed view of the simulation-* keys validates them
        except SimulationConfigError as exc:
            raise RunConfigError(str(exc)) from exc
        if not 0.0 <= self.trimmed_beta < 0.5:
            raise RunConfigError(f"trimmed-beta must be in [0, 0.5), got {self.trimmed_beta}")
        if self.client_dp and (self.client_dp_noise_multiplier <= 0 or self.client_dp_clipping_norm <= 0):
            raise RunConfigError("client-dp needs client-dp-noise-multiplier > 0 and client-dp-clipping-norm > 0")
        if self.secure_aggregation and not get_task(self.task).secure_aggregation:
            raise RunConfigError(
                f"secure-aggregation = true: the '{self.task}' task has no secure-aggregation round (only the "
                "equipment task's DP updates run under Flower's SecAgg+ so far; see docs/privacy.md, "
                "'Secure aggregation')"
            )
        if self.region_secure_aggregation and "region" not in self.context_list:
            raise RunConfigError(
                "region-secure-aggregation = true sums the nodes' released totals for the region: it needs "
                "context with 'region' (the forecasting task's hybrid model)"
            )
        if self.secure_aggregation and self.resume:
            raise RunConfigError("resume = true is not available with secure-aggregation = true")
        if self.resume and self.init_from:
            raise RunConfigError(
                "resume = true continues a run from its own checkpoint; init-from starts a new run from another "
                "run's model: set one of them"
            )
        if self.resume and not self.out_dir:
            raise RunConfigError("resume = true needs out-dir naming the folder of the run to continue")
        if not self.target_list:
            raise RunConfigError("targets must name at least one column, e.g. 'admissions,census'")
        unknown = [c for c in self.context_list if c not in ("weeks", "year_ago", "region")]
        if unknown or (self.context_list and self.model != "hybrid"):
            raise RunConfigError(
                f"context {self.context!r}: the hybrid model's channels 'weeks', 'year_ago' and 'region' (the other "
                "nodes' released daily totals, docs/coordinator.md), comma-separated"
            )
        if self.init not in ("none", "pretrained"):
            raise RunConfigError(f"init must be 'none' or 'pretrained', got {self.init!r}")
        if self.init == "pretrained" and self.model != "hybrid":
            raise RunConfigError("init = 'pretrained' needs model = 'hybrid' (the only model with public weights)")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RunConfig:
        """Build from kebab-case keys (unknown keys are an error: a typo must not pass silently).

        Keys ``<task>.<key>`` of a registered task are that task's own options (checked by the
        task when it is the run's task, ignored otherwise); other dotted keys belong to other
        apps' namespaces and are ignored.
        """
        known = {f.name: f for f in fields(cls) if f.name != "task_options"}
        kwargs: dict[str, Any] = {}
        task = str(values.get("task", DEFAULT_TASK))
        options = {k.partition(".")[2]: v for k, v in values.items() if k.startswith(f"{task}.")}
        if options:
            kwargs["task_options"] = options
        for key, value in values.items():
            if "." in key:
                continue
            name = key.replace("-", "_")
            if name not in known:
                raise RunConfigError(
                    f"unknown run-config key '{key}'; known keys: {', '.join(sorted(map(_kebab, known)))}"
                )
            kwargs[name] = _coerce(key, value, known[name].default)
        return cls(**kwargs)

    @classmethod
    def from_context(cls, context: Context) -> RunConfig:
        """Read ``context.run_config`` once; keys that belong to other apps' namespaces are ignored."""
        return cls.from_mapping(dict(context.run_config))

    # ------------------------------------------------------------------ derived
    @property
    def target_list(self) -> tuple[str, ...]:
        """The target columns as a tuple."""
        return tuple(t.strip() for t in self.targets.split(",") if t.strip())

    @property
    def context_list(self) -> tuple[str, ...]:
        """The hybrid's context channels as a tuple."""
        return tuple(c.strip() for c in self.context.split(",") if c.strip())

    @property
    def simulation(self) -> SimulationConfig:
        """The ``simulation-*`` keys as the virtual nodes read them (``SimulationConfig.from_run_config``)."""
        return SimulationConfig.from_run_config(self.to_dict())

    @property
    def out_path(self) -> Path:
        """Folder for metrics.jsonl and the final model (``out-dir``; see ``server.app.resolve_out_dir`` when empty)."""
        return Path(self.out_dir)

    def to_dict(self) -> dict[str, Any]:
        """Kebab-case mapping, the inverse of ``from_mapping`` (stored with checkpoints)."""
        out = {_kebab(k): v for k, v in dataclasses.asdict(self).items() if k != "task_options"}
        out.update({f"{self.task}.{k}": v for k, v in self.task_options.items()})
        return out

    def to_json(self) -> str:
        """``to_dict`` as JSON."""
        return json.dumps(self.to_dict(), sort_keys=True)


def _kebab(name: str) -> str:
    return name.replace("_", "-")


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Convert a TOML/CLI value to the field's type; TOML gives ints where floats are meant."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false"}:
            return value.lower() == "true"
        raise RunConfigError(f"run-config '{key}' must be true or false, got {value!r}")
    if isinstance(default, int):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or float(value) != int(value)
        ):
            raise RunConfigError(f"run-config '{key}' must be a whole number, got {value!r}")
        return int(value)
    if isinstance(default, float):
        # NaN passes every `x <= 0` check below and infinity breaks the arithmetic: no key takes either.
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise RunConfigError(f"run-config '{key}' must be a finite number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise RunConfigError(f"run-config '{key}' must be a string, got {value!r}")
    return value
