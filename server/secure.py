"""The coordinator under secure aggregation: Flower's SecAgg+ in the legacy workflow, one distributed-DP step a round.

Flower 1.42's ``SecAggPlusWorkflow`` runs only inside the legacy ``DefaultWorkflow``; as Flower's
own secure-aggregation example does, the ``@app.main()`` function builds a ``LegacyContext``
around a legacy ``Strategy`` and runs ``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))``.
The cryptography is Flower's; this module only sets its ranges so that the masked sum is the
exact modular sum of the nodes' integer vectors (``client.secure.offset``) and turns that sum
into one step of the global model (``medalloc_core.equipment.distributed``).

What the coordinator sees each round: the sum, modulo ``2**31``, of the nodes' clipped
gradient sums plus their Skellam noise shares, each node's public bookkeeping (device count,
its epsilon) and who dropped. It never sees one node's vector. A round with fewer than
``sa-min-survivors`` masked vectors is halted by SecAgg+ (its reconstruction threshold) and,
should it not be, refused here: the global model is kept.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context, RecordDict
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server import ServerConfig
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.default_workflows import default_fit_workflow
from flwr.serverapp import Grid

from medalloc_core import protocol
from medalloc_core.equipment.distributed import ServerAdam, flatten, mean_gradient, unflatten
from medalloc_core.model_io import FINAL_MODEL_NAME
from medalloc_core.rounds import METRICS_FILE, RoundRecord, append_round
from medalloc_core.tasks import FederatedTask, TaskModel, get_task

from .config import RunConfig, RunConfigError

logger = logging.getLogger(__name__)
progress = logging.getLogger("flwr.medalloc")

MODULUS_BITS = 31  # the nodes' shares live modulo 2**31 (Flower quantises into int32)
MAJORITY = 0.51  # of a neighbourhood of k (odd, < 50): Flower's round(0.51 k) is k // 2 + 1


def decode_sum(aggregate: np.ndarray, *, survivors: int, modulus_bits: int = MODULUS_BITS) -> np.ndarray:
    """The nodes' modular sum from what Flower's SecAgg+ hands ``aggregate_fit`` (int64, modulo ``2**bits``).

    With every node's weight 1 and ``T = 2R = M - 1`` (``secagg_workflow``), Flower returns
    ``(S - n R) (M - 1) / (M - n)`` where ``S`` is the masked sum modulo ``M`` and ``n`` the nodes
    whose vectors it holds (``flwr.server.workflow.secure_aggregation.secaggplus_workflow``,
    unmask stage). Inverting that is exact in float64 for ``M = 2**31``.
    """
    m = 2**modulus_bits
    r = (m - 1) / 2.0
    s = np.rint(np.asarray(aggregate, dtype=np.float64) * (m - survivors) / (m - 1) + survivors * r)
    out: np.ndarray = np.mod(s.astype(np.int64), m)
    return out


def secagg_workflow(
    *, min_survivors: int, timeout: float | None, num_shares: int = 0, nodes: int = 0
) -> SecAggPlusWorkflow:
    """Flower's SecAgg+ on ranges that make its masked sum the exact modular sum of the nodes' vectors.

    ``num_shares = 0`` (or not fewer than ``nodes``, the fewest nodes a round samples): every node's
    secrets are shared with every other node and ``min_survivors`` shares unmask it. Else SecAgg+'s
    neighbourhood: Flower puts the sampled nodes on a ring in random order and shares each node's
    secrets with the ``num_shares`` nearest (itself included), a majority of which unmask it (the
    threshold SecAgg+ needs against a coordinator that lies about who dropped). The key agreements
    and Shamir shares then grow as nodes x ``num_shares`` instead of nodes^2. Whether a round is
    summed at all is still decided by ``min_survivors`` (``DistributedDPStrategy.aggregate_fit``).
    """
    m = 2**MODULUS_BITS
    neighbourhood = 0 < num_shares < nodes
    return SecAggPlusWorkflow(
        # As fractions of the sampled nodes (Flower rounds them, odd): num_shares of `nodes`, a majority of those.
        # An integer num_shares would draw Flower's overflow warning (modulus / quantisation range is ~1 here),
        # which does not apply: the sum is modular by design (decode_sum).
        num_shares=num_shares / nodes if neighbourhood else 1.0,  # 1.0: every node's secrets go to every other
        reconstruction_threshold=MAJORITY if neighbourhood else min_survivors,
        max_weight=1.0,  # each node sends weight 1: the sum stays a plain sum
        clipping_range=(m - 1) / 2.0,
        quantization_range=m - 1,
        modulus_range=m,
        timeout=timeout,
    )


@dataclass
class DistributedDPStrategy(Strategy):
    """A legacy strategy whose round is one Adam step on the noisy mean gradient the secure sum gives."""

    config: RunConfig
    task: FederatedTask
    options: Any
    model: TaskModel
    run_tag: str
    secure: bool = True
    out: Path = Path(".")
    records: list[RoundRecord] = field(default_factory=list)
    _optimizer: ServerAdam = field(init=False)
    _weights: np.ndarray = field(init=False)
    _started: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        self._optimizer = ServerAdam(lr=float(self.options.sa_lr))
        self._weights = flatten(self.model.arrays)

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        return unflatten(self._weights, self.model.arrays)

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return ndarrays_to_parameters(list(self.arrays.values()))

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        wanted = max(self.config.min_available_nodes, int(self.options.sa_min_survivors))
        client_manager.num_available()  # Flower's legacy manager registers the connected nodes on this call
        if not client_manager.wait_for(wanted, timeout=int(self.config.round_timeout)):
            logger.error("round %s: fewer than %s nodes connected; no round", server_round, wanted)
            return []
        self._started = time.perf_counter()
        config = self.task.secure_instruction(  # type: ignore[attr-defined]
            self.config, self.options, self.model, server_round=server_round, run_tag=self.run_tag
        )
        clients = client_manager.sample(num_clients=client_manager.num_available(), min_num_clients=wanted)
        return [(c, FitIns(parameters, dict(config))) for c in clients]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        minimum = int(self.options.sa_min_survivors)
        epsilons = [float(r.metrics.get(protocol.EPSILON, 0.0)) for _, r in results]
        devices = int(sum(int(r.metrics.get(protocol.NUM_EXAMPLES, 0)) for _, r in results))
        updated = False
        if len(results) < minimum:
            logger.error(
                "round %s: %s masked vectors, fewer than sa-min-survivors %s: the sum would carry less noise than "
                "every node's ledger charged; the round is refused and the global model kept",
                server_round,
                len(results),
                minimum,
            )
        else:
            if self.secure:
                total = decode_sum(parameters_to_ndarrays(results[0][1].parameters)[0], survivors=len(results))
            else:
                parts = [np.rint(parameters_to_ndarrays(r.parameters)[0]).astype(np.int64) for _, r in results]
                total = np.mod(np.sum(parts, axis=0), 2**MODULUS_BITS)
            plan = self._plan()
            self._weights = self._optimizer.step(self._weights, mean_gradient(total, plan, devices))
            updated = True
        record = RoundRecord(
            round=server_round,
            time=datetime.now(UTC).isoformat(),
            seconds=round(time.perf_counter() - self._started, 3),
            strategy="distributed-dp-secagg+" if self.secure else "distributed-dp-plain",
            model_updated=updated,
            nodes={"sampled": len(results) + len(failures), "accepted": len(results), "dropped": len(failures)},
            epsilon_max=max(epsilons) if epsilons else None,
            epsilon_mean=float(np.mean(epsilons)) if epsilons else None,
            privacy={"unit": self.task.privacy_unit, "epsilon-max": max(epsilons) if epsilons else 0.0},
        )
        append_round(self.out / METRICS_FILE, record)
        self.records.append(record)
        progress.info(
            "round %s/%s: %s of %s nodes summed under %s, model %s, device epsilon max %s",
            server_round,
            self.config.num_server_rounds,
            len(results),
            len(results) + len(failures),
            "SecAgg+" if self.secure else "no secure aggregation",
            "updated" if updated else "kept",
            f"{max(epsilons):.3f}" if epsilons else "-",
        )
        if not updated:
            return None, {}
        return ndarrays_to_parameters(list(self.arrays.values())), {"devices": devices}

    def halted(self, server_round: int) -> None:
        """Record a round that Flower's SecAgg+ halted (too few nodes at some stage): nothing summed, model kept."""
        record = RoundRecord(
            round=server_round,
            time=datetime.now(UTC).isoformat(),
            seconds=round(time.perf_counter() - self._started, 3) if self._started else None,
            strategy="distributed-dp-secagg+",
            model_updated=False,
            nodes={"accepted": 0},
        )
        append_round(self.out / METRICS_FILE, record)
        self.records.append(record)
        progress.info(
            "round %s/%s: secure aggregation halted (fewer than sa-min-survivors %s nodes at a stage); model kept",
            server_round,
            self.config.num_server_rounds,
            self.options.sa_min_survivors,
        )

    def _plan(self) -> Any:
        from medalloc_core.tasks.equipment.secure import DistributedInstruction

        raw = self.task.secure_instruction(  # type: ignore[attr-defined]
            self.config, self.options, self.model, server_round=0, run_tag=self.run_tag
        )
        return DistributedInstruction.from_dict(raw).plan()

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        return []  # the equipment task has no evaluate round

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        return None


def _recorded(fit: Any, strategy: DistributedDPStrategy) -> Any:
    """The fit workflow, plus a ``metrics.jsonl`` line for a round SecAgg+ halted (``aggregate_fit`` never ran)."""

    def workflow(grid: Grid, context: Context) -> None:
        before = len(strategy.records)
        fit(grid, context)
        if len(strategy.records) == before:
            strategy.halted(int(context.state.config_records["config"]["current_round"]))  # type: ignore[arg-type]

    return workflow


def run_secure_federation(
    grid: Grid,
    config: RunConfig,
    *,
    out: Path,
    context: Context | None = None,
    run_id: int = 0,
    secure: bool = True,
) -> DistributedDPStrategy:
    """Run ``num-server-rounds`` distributed-DP rounds under SecAgg+ (``secure=False``: the benchmark's plain baseline).

    Writes ``metrics.jsonl`` (one line a round) and the final model into ``out``.
    """
    task = get_task(config.task)
    if not task.secure_aggregation:
        raise RunConfigError(f"secure-aggregation = true: the '{task.name}' task has no secure-aggregation round")
    if config.resume:
        raise RunConfigError("resume is not available under secure-aggregation (the coordinator's optimiser state)")
    options = task.options(config.task_options)
    model = task.model(config, options)
    out.mkdir(parents=True, exist_ok=True)
    strategy = DistributedDPStrategy(config, task, options, model, run_tag=f"run-{run_id}", secure=secure, out=out)
    base = context or Context(run_id=run_id, node_id=0, node_config={}, state=RecordDict(), run_config={})
    legacy = LegacyContext(base, config=ServerConfig(num_rounds=config.num_server_rounds), strategy=strategy)
    fit = (
        secagg_workflow(
            min_survivors=int(options.sa_min_survivors),
            timeout=config.round_timeout,
            num_shares=int(options.sa_num_shares),
            nodes=max(config.min_available_nodes, int(options.sa_min_survivors)),
        )
        if secure
        else default_fit_workflow
    )
    DefaultWorkflow(fit_workflow=_recorded(fit, strategy))(grid, legacy)
    if any(r.model_updated for r in strategy.records):
        kept = {"rounds": config.num_server_rounds, "strategy": "distributed-dp", "run-config": config.to_dict()}
        task.write_model(out / FINAL_MODEL_NAME, strategy.arrays, model, kept)
        progress.info("final model written to %s", out / FINAL_MODEL_NAME)
    else:
        logger.error("no round aggregated any sum; no final model written")
    return strategy
