"""The equipment task as a federated task: the run's risk model, each round's proposal, a node's DP-SGD round.

Run-config keys of its own (``equipment.<key>``, see :class:`EquipmentOptions`); a node serves
it with ``equipment-data-path`` (a fleet folder), ``equipment-ledger-path`` and
``equipment-epsilon-budget`` (per device). A round on a node: load and validate its fleet,
take the proposal capped by its own limits, charge its equipment ledger for the whole
device-level DP-SGD plan *before* training, train, reply with the arrays and bookkeeping only.
No evaluate round: nothing a node could score on its devices may leave it uncharged.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from medalloc_core.contract import DataContractError
from medalloc_core.equipment.features import SnapshotSpec
from medalloc_core.equipment.local import LocalFleet, load_local_fleet
from medalloc_core.equipment.model import (
    TASK_NAME,
    DeviceDP,
    RiskModelConfig,
    RiskTrainConfig,
    build_risk_model,
    risk_arrays,
    risk_model_from_arrays,
    risk_plan,
    train_risk,
)
from medalloc_core.equipment.synthetic import FleetConfig, generate_fleets, write_fleets
from medalloc_core.equipment.validation import is_fleet_folder
from medalloc_core.model_io import write_task_model_files
from medalloc_core.privacy.ledger import LedgerError, PrivacyLedger
from medalloc_core.privacy.node_state import open_node_ledger
from medalloc_core.privacy.release import secure_generator
from medalloc_core.protocol import REPRODUCIBLE_NOISE, ProtocolError, Refusal, Scalar
from medalloc_core.tasks.base import (
    FederatedTask,
    NodeReply,
    NodeTask,
    SimulationRun,
    TaskModel,
    TaskRefused,
    ledger_refusal,
    options_from,
)
from medalloc_core.tasks.equipment import protocol as _protocol
from medalloc_core.tasks.equipment.protocol import (
    MECHANISM,
    PRIVACY_UNIT,
    TRAIN_KEYS,
    EquipmentInstruction,
    EquipmentTrainReply,
    reason,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EquipmentOptions:
    """The equipment task's run-config keys (``equipment.<key>``); the defaults are the benchmark's.

    The common keys (``num-server-rounds``, ``strategy``, ``local-epochs``, ``seed``, ...) apply as
    for any task; these replace the forecaster's model, batch and DP keys.
    """

    hidden: int = 0  # 0: logistic regression (best under device-level DP on the benchmark); > 0: MLP width
    layers: int = 1
    batch_size: int = 64  # expected devices per DP-SGD step
    lr: float = 0.05
    noise_multiplier: float = 3.0  # proposed; each node raises it to its own min-noise-multiplier
    max_grad_norm: float = 0.2  # per-device clipping bound C; each node lowers it to its own max-grad-norm
    horizon_days: int = 30  # P(failure within this many days)
    stride_days: int = 7  # a snapshot per device per week
    test_days: int = 182  # the last half year of labels: the test period (research comparisons)
    # Under secure aggregation (run config secure-aggregation = true; docs/privacy.md): distributed DP
    sa_noise_multiplier: float = 20.0  # noise sd on the sum of sa-min-survivors shares / L2 sensitivity
    sa_min_survivors: int = 3  # the noise holds while at least this many nodes' shares are summed
    sa_resolution: int = 4096  # integer units per max-grad-norm
    sa_lr: float = 0.02  # the coordinator's Adam step on the noisy mean gradient, one per round
    # SecAgg+'s neighbourhood: each node's key shares go to this many nodes (itself included, a ring Flower draws
    # at random each round) and a majority of them unmask it; 0: every node (SecAgg). Its cost grows as nodes x
    # neighbours instead of nodes^2 (simulations.benchmarks.secure_aggregation); the noise's minimum is unchanged.
    sa_num_shares: int = 0

    def __post_init__(self) -> None:
        if self.hidden < 0 or self.layers < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("hidden and layers must be >= 0, batch-size >= 1 and lr > 0")
        if not (self.noise_multiplier > 0 and self.max_grad_norm > 0):
            raise ValueError("noise-multiplier and max-grad-norm must be > 0: a node never trains without DP noise")
        if not (
            self.sa_noise_multiplier > 0 and self.sa_min_survivors >= 2 and self.sa_resolution >= 1 and self.sa_lr > 0
        ):
            raise ValueError("sa-noise-multiplier and sa-lr must be > 0, sa-min-survivors >= 2, sa-resolution >= 1")
        if self.sa_num_shares != 0 and (self.sa_num_shares < 3 or self.sa_num_shares % 2 == 0):
            raise ValueError("sa-num-shares must be 0 (every node) or an odd number >= 3 (SecAgg+'s neighbourhood)")

    @property
    def spec(self) -> SnapshotSpec:
        """The snapshot spec the federation agrees on."""
        return SnapshotSpec(horizon_days=self.horizon_days, stride_days=self.stride_days, test_days=self.test_days)


def node_rng(node: NodeTask, ask: EquipmentInstruction) -> np.random.Generator:
    """The node's source of DP noise and Poisson sampling: the OS CSPRNG, unless a *simulated* node is told otherwise.

    A real node refuses the reproducible switch: whoever knows the seed can subtract the noise,
    and the coordinator chose it.
    """
    if not ask.reproducible_noise:
        return secure_generator()
    if not node.simulated:
        logger.error(
            "%s: the coordinator asked for reproducible (coordinator-known) DP noise; refused", node.hospital_id
        )
        raise TaskRefused(
            Refusal.REQUEST_INVALID,
            reason(
                Refusal.REQUEST_INVALID,
                what=f"a real node never uses DP noise the coordinator can recompute ({REPRODUCIBLE_NOISE})",
            ),
        )
    logger.warning(
        "%s: equipment DP noise from the run's seed: reproducible, NOT private (simulation only)", node.hospital_id
    )
    return np.random.default_rng([ask.seed, ask.server_round, zlib.crc32(node.hospital_id.encode())])


def _local(node: NodeTask, spec: SnapshotSpec) -> LocalFleet:
    try:
        if any(k in node.extra for k in ("fleet-devices", "fleet-start", "fleet-end")):
            return _declared_local(node, spec)
        if not node.simulated:
            _refuse_undeclared(node)
        logger.warning(
            "%s: simulated node: the fleet's devices and days are taken from its files: NOT public (one device can "
            "move every snapshot); a deployed node refuses without fleet-devices, fleet-start and fleet-end",
            node.hospital_id,
        )
        return load_local_fleet(node.data_path, spec)
    except DataContractError as exc:
        # The problems name devices and rows of the hospital's files: they stay in the node's log.
        logger.error("%s", exc)
        raise TaskRefused(Refusal.DATA_INVALID, reason(Refusal.DATA_INVALID)) from exc
    except (OSError, ValueError) as exc:
        logger.error("%s: %s", node.data_path, exc)
        raise TaskRefused(Refusal.DATA_INVALID, reason(Refusal.DATA_INVALID)) from exc


def _refuse_undeclared(node: NodeTask) -> None:
    """A deployed node without a fleet calendar: refused, the log naming the keys (and what its files suggest)."""
    from medalloc_core.equipment.validation import load_fleet
    from medalloc_core.tasks.equipment.fleet_calendar import undeclared_message

    logger.error("node configuration: %s", undeclared_message(load_fleet(node.data_path)))
    raise TaskRefused(Refusal.NODE_MISCONFIGURED, reason(Refusal.NODE_MISCONFIGURED))


def _population(local: LocalFleet) -> int:
    """The DP-SGD sampling population: the declared device count (public), else the devices trained on."""
    return int(getattr(local.fleet, "declared_devices", 0) or local.batches.n_devices)


def _declared_local(node: NodeTask, spec: SnapshotSpec) -> LocalFleet:
    """The fleet on the node's declared devices and days (``fleet_calendar``): nothing one device adds moves it."""
    from medalloc_core.equipment.local import prepare_fleet
    from medalloc_core.equipment.validation import load_fleet
    from medalloc_core.privacy.calendar import CalendarError
    from medalloc_core.tasks.equipment.fleet_calendar import declared_fleet

    try:
        fleet = declared_fleet(load_fleet(node.data_path), node.extra)
    except CalendarError as exc:
        logger.error("node configuration: %s", exc)
        raise TaskRefused(Refusal.NODE_MISCONFIGURED, reason(Refusal.NODE_MISCONFIGURED)) from exc
    assert fleet is not None
    local = prepare_fleet(fleet, spec)
    if len(local.dataset.train) == 0 or len(local.dataset.test) == 0:
        raise ValueError(f"{node.data_path}: the declared fleet calendar is too short for a training and a test period")
    return local


class EquipmentTask(FederatedTask):
    """Failure risk of every device within 30 days, learned with device-level DP-SGD (docs/equipment.md)."""

    name = TASK_NAME
    action = TASK_NAME
    privacy_unit = PRIVACY_UNIT
    evaluates = False
    train_keys = TRAIN_KEYS
    evaluate_keys = frozenset({"num-examples"})
    reply_allow_list = _protocol.REPLY_ALLOW_LIST  # checked on the node before every reply (medalloc_core.replies)
    refusal_reasons = _protocol.REFUSAL_REASONS
    default_epsilon = 10.0  # per device (its whole history): a device's data is far less sensitive than a patient's
    data_kind = "device-fleets"
    secure_aggregation: ClassVar[bool] = (
        True  # its rounds can run as distributed DP under Flower's SecAgg+ (tasks/equipment/secure.py)
    )
    report_layout = "risk-calibration"

    # ------------------------------------------------------------------ coordinator
    def options(self, raw: Mapping[str, Any]) -> EquipmentOptions:
        options: EquipmentOptions = options_from(EquipmentOptions, raw, task=self.name)
        return options

    def model(self, run: Any, options: EquipmentOptions) -> TaskModel:
        spec = options.spec
        config = RiskModelConfig(n_features=spec.n_features, hidden=options.hidden, layers=options.layers)
        return TaskModel(config, spec, risk_arrays(build_risk_model(config, seed=run.seed)))

    def _instruction(
        self, run: Any, options: EquipmentOptions, model: TaskModel, server_round: int, run_tag: str
    ) -> EquipmentInstruction:
        assert isinstance(model.config, RiskModelConfig) and isinstance(model.spec, SnapshotSpec)
        return EquipmentInstruction(
            server_round=server_round,
            model_config=model.config,
            spec=model.spec,
            local_epochs=run.local_epochs,
            batch_size=options.batch_size,
            lr=options.lr,
            proximal_mu=run.proximal_mu if run.strategy == "fedprox" else 0.0,
            dp_noise_multiplier=options.noise_multiplier,
            dp_max_grad_norm=options.max_grad_norm,
            run_tag=run_tag,
            seed=run.seed,
            reproducible_noise=run.simulation_reproducible_noise,
        )

    def train_instruction(
        self, run: Any, options: EquipmentOptions, model: TaskModel, *, server_round: int, run_tag: str
    ) -> dict[str, Scalar]:
        return self._instruction(run, options, model, server_round, run_tag).to_dict()

    def evaluate_instruction(
        self, run: Any, options: EquipmentOptions, model: TaskModel, *, server_round: int, run_tag: str
    ) -> dict[str, Scalar]:
        return self._instruction(run, options, model, server_round, run_tag).to_dict()

    def parse_model(self, config: Mapping[str, Any], spec: Mapping[str, Any]) -> tuple[RiskModelConfig, SnapshotSpec]:
        return RiskModelConfig.from_dict(dict(config)), SnapshotSpec.from_dict(dict(spec))

    def write_model(
        self, path: Path, arrays: Mapping[str, np.ndarray], model: TaskModel, extra: Mapping[str, Any]
    ) -> Path:
        return write_task_model_files(
            path,
            arrays,
            model_config=model.config.to_dict(),
            spec=model.spec.to_dict(),
            task=self.model_file_task(),
            extra=extra,
        )

    # ------------------------------------------------------------------ node
    def train(self, node: NodeTask, request: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> NodeReply:
        try:
            ask = EquipmentInstruction.from_dict(request)
        except ProtocolError as exc:
            raise TaskRefused(Refusal.REQUEST_INVALID, reason(Refusal.REQUEST_INVALID, what=str(exc))) from exc
        rng = node_rng(node, ask)
        local = _local(node, ask.spec)
        try:
            model = risk_model_from_arrays(ask.model_config, arrays)
        except ValueError as exc:
            raise TaskRefused(
                Refusal.REQUEST_INVALID, reason(Refusal.REQUEST_INVALID, what=f"global arrays do not fit ({exc})")
            ) from exc
        torch.set_num_threads(node.threads)
        epochs = min(ask.local_epochs, node.max_local_epochs)
        dp = DeviceDP(
            noise_multiplier=max(ask.dp_noise_multiplier, node.min_noise_multiplier),
            max_grad_norm=min(ask.dp_max_grad_norm, node.max_grad_norm),
        )
        config = RiskTrainConfig(epochs=epochs, batch_size=ask.batch_size, lr=ask.lr, proximal_mu=ask.proximal_mu)
        # Sampled over the declared devices (public): the rate, the steps and so the epsilon the reply
        # carries are moved by no one device; a declared device without data is simply never sampled.
        population = _population(local)
        plan = risk_plan(population, config)
        ledger = self._charge(node, local, ask, dp, plan.sample_rate, plan.steps)
        global_params = {k: v.detach().clone() for k, v in model.named_parameters()} if ask.proximal_mu else None
        result = train_risk(
            model, local.batches, config=config, dp=dp, rng=rng, global_params=global_params, population=population
        )
        epsilon, left = ledger.epsilon_spent(), ledger.remaining()
        logger.info(
            "%s equipment round %s: %s devices, %s steps, sigma %.3g, C %.3g, device epsilon %.3f (%.3f left)",
            node.hospital_id,
            ask.server_round,
            result.n_devices,
            result.steps,
            dp.noise_multiplier,
            dp.max_grad_norm,
            epsilon,
            left,
        )
        reply = EquipmentTrainReply(
            # declared fleet: the declared device count (public); otherwise the devices trained on
            num_examples=population,
            epsilon=float(epsilon),
            epsilon_budget_left=float(left),
            delta=float(node.delta),
            noise_multiplier=float(dp.noise_multiplier),
            local_epochs_used=float(epochs),
        )
        return NodeReply(reply.metrics(), risk_arrays(model))

    def _charge(
        self, node: NodeTask, local: LocalFleet, ask: EquipmentInstruction, dp: DeviceDP, sample_rate: float, steps: int
    ) -> PrivacyLedger:
        """Record the whole round's device-level spend before any training; a refusal trains nothing.

        The equipment ledger is the node's own, opened through its node state record (so a deleted
        or replaced ledger is noticed), with ``unit = "device"``: it never shares a budget with
        the node's patient-level ledger.
        """
        try:
            ledger = open_equipment_ledger(node, entry=self.node_state_key(node.hospital_id))
            ledger.spend(
                local.fingerprint,
                noise_multiplier=dp.noise_multiplier,
                sample_rate=sample_rate,
                steps=steps,
                run_id=f"{ask.run_tag}/equipment/round-{ask.server_round}",
                mechanism=MECHANISM,
                detail={"max-grad-norm": dp.max_grad_norm, "devices": float(local.batches.n_devices)},
            )
        except LedgerError as exc:
            raise ledger_refusal(exc, node.hospital_id, node.ledger_path, reason) from exc
        return ledger

    def secure_instruction(
        self, run: Any, options: EquipmentOptions, model: TaskModel, *, server_round: int, run_tag: str
    ) -> dict[str, Scalar]:
        """A distributed-DP round's proposal (secure aggregation on)."""
        from medalloc_core.tasks.equipment.secure import DistributedInstruction

        assert isinstance(model.config, RiskModelConfig) and isinstance(model.spec, SnapshotSpec)
        return DistributedInstruction(
            server_round=server_round,
            model_config=model.config,
            spec=model.spec,
            max_grad_norm=options.max_grad_norm,
            noise_multiplier=options.sa_noise_multiplier,
            min_survivors=options.sa_min_survivors,
            resolution=options.sa_resolution,
            modulus_bits=31,
            run_tag=run_tag,
            seed=run.seed,
            reproducible_noise=run.simulation_reproducible_noise,
        ).to_dict()

    def train_secure(
        self, node: NodeTask, request: Mapping[str, Any], arrays: Mapping[str, np.ndarray], *, secure: bool = True
    ) -> NodeReply:
        """A distributed-DP round (``medalloc_core.tasks.equipment.secure``); ``secure=False``: the whole noise here."""
        from medalloc_core.tasks.equipment.secure import distributed_round

        return distributed_round(node, request, arrays, secure=secure, local=_local)

    def evaluate(self, node: NodeTask, request: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> NodeReply:
        raise TaskRefused(
            Refusal.REQUEST_INVALID, reason(Refusal.REQUEST_INVALID, what="the equipment task has no evaluate round")
        )

    # ------------------------------------------------------------------ simulations
    def node_data(self, folder: Path) -> list[Path]:
        if not folder.is_dir():
            raise ValueError(f"{folder} is not a folder")
        return sorted(p for p in folder.iterdir() if is_fleet_folder(p))

    def public_calendar(self, data_path: Path) -> dict[str, str]:
        from medalloc_core.equipment.validation import load_fleet
        from medalloc_core.tasks.equipment.fleet_calendar import suggested_calendar

        return suggested_calendar(load_fleet(data_path))

    def report(self, sim: SimulationRun) -> dict[str, Any]:
        from medalloc_core.simulation_plots import privacy_rounds_plot
        from medalloc_core.tasks.equipment.research import equipment_report

        report = equipment_report(sim)
        privacy_rounds_plot(sim.out / "plots" / "metrics_per_round.png", sim.rounds)
        return report

    def check_comparisons(self, raw: Mapping[str, Any]) -> None:
        from medalloc_core.tasks.equipment.research import EquipmentComparisons

        EquipmentComparisons.from_section(raw)

    def check_region(self, raw: Mapping[str, Any]) -> None:
        FleetConfig(**{k.replace("-", "_"): v for k, v in raw.items()})

    def generate(self, folder: Path, region: Mapping[str, Any]) -> list[Path]:
        """Write a synthetic region of fleets (``FleetConfig`` keyword arguments) into ``folder``; its fleet folders."""
        write_fleets(generate_fleets(FleetConfig(**{k.replace("-", "_"): v for k, v in region.items()})), folder)
        return self.node_data(folder)


TASK = EquipmentTask()


def open_equipment_ledger(node: NodeTask, *, entry: str) -> PrivacyLedger:
    """The node's device-level equipment ledger (``unit = "device"``), opened through its node state record.

    Raises ``LedgerError`` for the caller to turn into its refusal. A virtual node's ledger folder
    belongs to the simulation and is made here; a real node's operator makes it.
    """
    if node.simulated:
        node.ledger_path.parent.mkdir(parents=True, exist_ok=True)
    assert node.node_state_path is not None
    return open_node_ledger(
        state_path=node.node_state_path,
        hospital_id=node.hospital_id,
        ledger_path=node.ledger_path,
        epsilon_budget=node.epsilon_budget,
        delta=node.delta,
        accountant=node.accountant,
        max_stay_days=None,
        unit=PRIVACY_UNIT,
        entry=entry,
    )
