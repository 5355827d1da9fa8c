"""The equipment task under secure aggregation: a node's distributed-DP round (docs/privacy.md).

The coordinator proposes (run config ``secure-aggregation = true``, the ``equipment.sa-*``
keys), every node must agree in its own node config (``equipment-secure-aggregation = true``),
else it refuses with ``secure-aggregation-not-agreed``. A round: the node checks the
proposal against its own limits, charges its equipment ledger for the Skellam release that
holds if only ``min-survivors`` nodes' shares are summed, *then* computes its devices' clipped,
rounded gradient sum plus its noise share, and hands it, modulo ``2**modulus-bits``, to
Flower's SecAgg+ (``client.secure``). Outside SecAgg+ (``secure=False``, the benchmark's
baseline) the node adds the whole noise itself, since its vector is then seen alone.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medalloc_core import protocol as p
from medalloc_core.equipment.distributed import node_sum
from medalloc_core.equipment.features import SnapshotSpec
from medalloc_core.equipment.model import RiskModelConfig, risk_model_from_arrays
from medalloc_core.privacy.distributed import MECHANISM, SkellamPlan
from medalloc_core.privacy.ledger import LedgerError
from medalloc_core.privacy.release import secure_generator
from medalloc_core.protocol import REPRODUCIBLE_NOISE, ProtocolError, Refusal, read_field, read_json_field
from medalloc_core.tasks.base import NodeReply, NodeTask, TaskRefused, ledger_refusal
from medalloc_core.tasks.equipment.protocol import EquipmentTrainReply, reason

logger = logging.getLogger(__name__)

__all__ = [
    "DISTRIBUTED_DP",
    "NODE_AGREES",
    "NODE_MIN_SURVIVORS",
    "DistributedInstruction",
    "distributed_round",
    "node_agrees",
]

DISTRIBUTED_DP = "distributed-dp"  # ConfigRecord marker: this train request is a distributed-DP round
MIN_SURVIVORS = "min-survivors"
RESOLUTION = "resolution"
MODULUS_BITS = "modulus-bits"
NODE_AGREES = "equipment-secure-aggregation"  # node config: the node's consent, never the coordinator's
NODE_MIN_SURVIVORS = "equipment-min-survivors"  # node config: the fewest survivors the node lets noise be sized for
DEFAULT_NODE_MIN_SURVIVORS = 3


@dataclass(frozen=True, kw_only=True)
class DistributedInstruction:
    """A distributed-DP round's proposal; a node that cannot honour it exactly refuses (the shares must match)."""

    server_round: int
    model_config: RiskModelConfig
    spec: SnapshotSpec
    max_grad_norm: float  # per-device clipping bound C
    noise_multiplier: float  # noise sd on the sum of min-survivors shares / L2 sensitivity
    min_survivors: int
    resolution: int
    modulus_bits: int
    run_tag: str
    seed: int
    reproducible_noise: bool

    def plan(self, *, survivors: int | None = None) -> SkellamPlan:
        """The Skellam plan; ``survivors`` overrides how many shares the noise is split into (1: all of it here)."""
        return SkellamPlan(
            clip=self.max_grad_norm,
            dimension=_dimension(self),
            noise_multiplier=self.noise_multiplier,
            min_survivors=self.min_survivors if survivors is None else survivors,
            resolution=self.resolution,
            modulus_bits=self.modulus_bits,
        )

    def to_dict(self) -> dict[str, p.Scalar]:
        import json

        return {
            DISTRIBUTED_DP: True,
            p.SERVER_ROUND: self.server_round,
            p.MODEL_CONFIG: json.dumps(self.model_config.to_dict(), sort_keys=True),
            p.WINDOW_SPEC: json.dumps(self.spec.to_dict(), sort_keys=True),
            "dp-max-grad-norm": self.max_grad_norm,
            "dp-noise-multiplier": self.noise_multiplier,
            MIN_SURVIVORS: self.min_survivors,
            RESOLUTION: self.resolution,
            MODULUS_BITS: self.modulus_bits,
            p.RUN_TAG: self.run_tag,
            p.SEED: self.seed,
            REPRODUCIBLE_NOISE: self.reproducible_noise,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> DistributedInstruction:
        """Read a request's config; raises ``ProtocolError`` naming the first bad field."""
        try:
            model_config = RiskModelConfig.from_dict(read_json_field(raw, p.MODEL_CONFIG))
            spec = SnapshotSpec.from_dict(read_json_field(raw, p.WINDOW_SPEC))
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ProtocolError):
                raise
            raise ProtocolError(f"'{p.MODEL_CONFIG}' or '{p.WINDOW_SPEC}' is not valid ({exc})") from exc
        if not read_field(raw, DISTRIBUTED_DP, bool):
            raise ProtocolError(f"'{DISTRIBUTED_DP}' must be true in a distributed-DP round")
        return cls(
            server_round=read_field(raw, p.SERVER_ROUND, int, minimum=0),
            model_config=model_config,
            spec=spec,
            max_grad_norm=read_field(raw, "dp-max-grad-norm", float, above=0),
            noise_multiplier=read_field(raw, "dp-noise-multiplier", float, above=0),
            min_survivors=read_field(raw, MIN_SURVIVORS, int, minimum=1),
            resolution=read_field(raw, RESOLUTION, int, minimum=1),
            modulus_bits=read_field(raw, MODULUS_BITS, int, minimum=8),
            run_tag=read_field(raw, p.RUN_TAG, str),
            seed=read_field(raw, p.SEED, int),
            reproducible_noise=read_field(raw, REPRODUCIBLE_NOISE, bool),
        )


def _dimension(ask: DistributedInstruction) -> int:
    from medalloc_core.equipment.model import risk_parameter_shapes

    return int(sum(int(np.prod(s)) for s in risk_parameter_shapes(ask.model_config).values()))


def node_agrees(node: NodeTask) -> bool:
    """Whether the node's own config consents to secure aggregation with distributed DP for this task.

    A virtual node of a simulation has no config of its own: the researcher's run decides for it.
    """
    if node.simulated:
        return True
    value = node.extra.get(NODE_AGREES, False)
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def _refuse(code: Refusal, **values: Any) -> TaskRefused:
    return TaskRefused(code, reason(code, **values))


def _rng(node: NodeTask, ask: DistributedInstruction) -> np.random.Generator:
    if not ask.reproducible_noise:
        return secure_generator()
    if not node.simulated:
        raise _refuse(
            Refusal.REQUEST_INVALID,
            what=f"a real node never uses DP noise the coordinator can recompute ({REPRODUCIBLE_NOISE})",
        )
    logger.warning(
        "%s: distributed DP noise from the run's seed: reproducible, NOT private (simulation only)", node.hospital_id
    )
    return np.random.default_rng([ask.seed, ask.server_round, zlib.crc32(node.hospital_id.encode()), 21])


def check_proposal(node: NodeTask, ask: DistributedInstruction) -> None:
    """Refuse a proposal the node's own limits do not allow; a node never changes a share alone (they must match)."""
    if not node_agrees(node):
        logger.warning(
            "%s: the coordinator asked for secure aggregation; %s is not true here", node.hospital_id, NODE_AGREES
        )
        raise _refuse(Refusal.SECURE_AGGREGATION_NOT_AGREED)
    floor = int(node.extra.get(NODE_MIN_SURVIVORS, DEFAULT_NODE_MIN_SURVIVORS))
    if ask.min_survivors < floor:
        raise _refuse(
            Refusal.REQUEST_INVALID,
            what=f"min-survivors {ask.min_survivors} is below this node's {NODE_MIN_SURVIVORS} ({floor})",
        )
    if ask.noise_multiplier < node.min_noise_multiplier:
        raise _refuse(
            Refusal.REQUEST_INVALID,
            what=f"noise multiplier {ask.noise_multiplier:g} is below this node's min-noise-multiplier",
        )
    if ask.max_grad_norm > node.max_grad_norm:
        raise _refuse(
            Refusal.REQUEST_INVALID, what=f"clipping bound {ask.max_grad_norm:g} is above this node's max-grad-norm"
        )


def distributed_round(
    node: NodeTask, request: Mapping[str, Any], arrays: Mapping[str, np.ndarray], *, secure: bool, local: Any
) -> NodeReply:
    """One node's distributed-DP round: check, charge the ledger, compute; the reply's one array is the modular share.

    ``local`` is a callable ``(node, spec) -> LocalFleet`` (the task's loader). ``secure=False``
    (no SecAgg+: the vector is seen alone) puts the whole noise in this node's vector.
    """
    try:
        ask = DistributedInstruction.from_dict(request)
    except ProtocolError as exc:
        raise _refuse(Refusal.REQUEST_INVALID, what=str(exc)) from exc
    check_proposal(node, ask)
    rng = _rng(node, ask)
    fleet = local(node, ask.spec)
    try:
        model = risk_model_from_arrays(ask.model_config, arrays)
    except ValueError as exc:
        raise _refuse(Refusal.REQUEST_INVALID, what=f"global arrays do not fit ({exc})") from exc
    torch.set_num_threads(node.threads)
    charged = ask.plan()  # what holds if only min-survivors shares are summed
    plan = charged if secure else ask.plan(survivors=1)
    ledger = _charge(node, fleet.fingerprint, ask, charged)
    vector = node_sum(model, fleet.batches, plan, rng)
    epsilon, left = ledger.epsilon_spent(), ledger.remaining()
    logger.info(
        "%s equipment round %s (distributed DP, %s): %s devices, sigma %.3g on the sum of %s shares, "
        "device epsilon %.3f (%.3f left)",
        node.hospital_id,
        ask.server_round,
        "SecAgg+" if secure else "no secure aggregation: the whole noise here",
        fleet.batches.n_devices,
        ask.noise_multiplier,
        ask.min_survivors,
        epsilon,
        left,
    )
    reply = EquipmentTrainReply(
        num_examples=int(getattr(fleet.fleet, "declared_devices", 0) or fleet.batches.n_devices),
        epsilon=float(epsilon),
        epsilon_budget_left=float(left),
        delta=float(node.delta),
        noise_multiplier=float(ask.noise_multiplier),
        local_epochs_used=1.0,
    )
    return NodeReply(reply.metrics(), {"share": np.mod(vector, plan.modulus).astype(np.int64)})


def _charge(node: NodeTask, fingerprint: str, ask: DistributedInstruction, plan: SkellamPlan) -> Any:
    """Record the round's release before computing it; a refusal computes nothing."""
    from medalloc_core.tasks.equipment.task import open_equipment_ledger

    try:
        ledger = open_equipment_ledger(node, entry=f"{node.hospital_id}/equipment")
        ledger.spend(
            fingerprint,
            noise_multiplier=plan.noise_multiplier,
            sample_rate=1.0,
            steps=1,
            run_id=f"{ask.run_tag}/equipment/round-{ask.server_round}",
            mechanism=MECHANISM,
            detail={
                "skellam-mu": plan.mu,
                "l2-sensitivity": plan.l2_sensitivity,
                "l1-sensitivity": plan.l1_sensitivity,
                "min-survivors": float(plan.min_survivors),
                "max-grad-norm": plan.clip,
            },
        )
    except LedgerError as exc:
        raise ledger_refusal(exc, node.hospital_id, node.ledger_path, reason) from exc
    return ledger
