"""Flower ServerApp: the coordinator's round loop with reply checks, round metrics, checkpoints and resume.

The loop is Flower's ``Strategy.start`` written out (configure -> send_and_receive ->
aggregate, for train then evaluate) so that it can start at a round other than 1 after a
resume, write ``metrics.jsonl`` and a checkpoint after every round, and survive a round whose
aggregation fails (the global model is then kept, the failure logged).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAdam

from medalloc_core import protocol
from medalloc_core.atomic import atomic_write_bytes
from medalloc_core.forecast.selection import beats
from medalloc_core.model_io import FINAL_MODEL_NAME
from medalloc_core.rounds import (
    METRICS_FILE,
    RoundRecord,
    append_round,
    read_rounds,
    refusal_summary,
    truncate_rounds,
)
from medalloc_core.tasks import FederatedTask, TaskModel, get_task

from .checkpoint import Checkpoint, CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from .config import RunConfig, RunConfigError
from .grid_io import send_and_receive
from .region import RegionCollector
from .reply_checks import NodeOutcome, outcomes_by_status
from .secure import run_secure_federation
from .secure_region import SecureRegion
from .strategies import BuiltStrategy, build_strategy, client_dp_epsilon

logger = logging.getLogger(__name__)
# The coordinator's one line per round goes to Flower's own logger: its single console handler is
# what `flwr log` shows (the ServerApp process mirrors its stdout to the SuperLink); a child logger
# adds no handler of its own, so each line is written once.
progress = logging.getLogger("flwr.medalloc")


def one_line_each() -> None:
    """In a real ServerApp process, stop Flower's logger from also propagating to the root logger.

    Opacus calls ``logging.basicConfig`` when it is imported (opacus/utils/module_utils.py), which
    gives the root logger a stderr handler; Flower's own console handler already writes every
    ``flwr`` line to stdout, and the ServerApp process mirrors both streams to the SuperLink, so
    `flwr log` showed every line twice. Only in ``flwr-serverapp``: in-process callers (the
    simulation runner, tests) keep their own logging set-up.
    """
    import sys

    if Path(sys.argv[0]).name == "flwr-serverapp":
        logging.getLogger("flwr").propagate = False


one_line_each()


@dataclass
class FederationResult:
    """What a finished run leaves behind (also written to the out dir)."""

    arrays: dict[str, np.ndarray]
    model_config: Any  # the task's model config (ForecasterConfig, RiskModelConfig, ...)
    rounds: list[RoundRecord] = field(default_factory=list)
    out_dir: Path = Path(".")
    final_model_written: bool = False  # False when no round aggregated anything (every node refused, ...)
    best_round: int | None = None  # the round whose model was kept (None: the last round's, no validation loss)


RoundCallback = Callable[[RoundRecord], None]


# ------------------------------------------------------------------ helpers
def _to_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def _to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


def _metrics_dict(record: MetricRecord | None) -> dict[str, float]:
    return {} if record is None else {k: v for k, v in record.items() if not isinstance(v, list)}


def _privacy_summary(outcomes: list[NodeOutcome], unit: str = "patient") -> dict[str, Any]:
    """The round's headline: the largest epsilon over the nodes that trained, per the task's unit, its delta
    (and, for patients, the stay cap)."""
    metrics = [o.metrics for o in outcomes if protocol.EPSILON in o.metrics]
    if not metrics:
        return {}
    summary: dict[str, Any] = {
        "unit": unit,
        "epsilon-max": max(m[protocol.EPSILON] for m in metrics),
        "delta": max(m.get(protocol.DELTA, 0.0) for m in metrics),
    }
    if unit == "patient":
        summary["max-stay-days"] = int(min(m.get(protocol.STAY_CAP_DAYS, 0.0) for m in metrics))
    return summary


def _outcome_json(outcome: NodeOutcome) -> dict[str, Any]:
    row: dict[str, Any] = {"node": str(outcome.node_id), "status": outcome.status}
    if outcome.hospital_id:
        row["hospital"] = outcome.hospital_id
    if outcome.reason:
        row["reason"] = outcome.reason
    if protocol.EPSILON in outcome.metrics:
        row["epsilon"] = outcome.metrics[protocol.EPSILON]
    if outcome.update_norm is not None:
        row["update-norm"] = round(outcome.update_norm, 6)
    return row


def strategy_state(built: BuiltStrategy, releases: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The strategy state a resume needs: FedAdam's moments (arrays) and the client-DP release count."""
    arrays: dict[str, np.ndarray] = {}
    if isinstance(built.base, FedAdam):
        for name in ("m_t", "v_t"):
            for key, value in (getattr(built.base, name) or {}).items():
                arrays[f"{name}/{key}"] = np.asarray(value)
    return arrays, {"client-dp-releases": releases}


def restore_strategy_state(built: BuiltStrategy, arrays: Mapping[str, np.ndarray], scalars: Mapping[str, Any]) -> int:
    """Put FedAdam's moments back; return the client-DP release count."""
    if isinstance(built.base, FedAdam):
        for name in ("m_t", "v_t"):
            prefix = f"{name}/"
            restored = {k[len(prefix) :]: np.asarray(v) for k, v in arrays.items() if k.startswith(prefix)}
            setattr(built.base, name, restored or None)
    return int(scalars.get("client-dp-releases", 0))


def resolve_out_dir(config: RunConfig, run_id: int) -> Path:
    """The run's output folder; an existing one is only reused with ``resume = true``."""
    out = config.out_path if config.out_dir else Path("results") / f"run-{run_id}"
    if not config.resume and (out / METRICS_FILE).exists():
        raise RunConfigError(
            f"{out} already holds a run ({METRICS_FILE} exists); set resume=true to continue it "
            "or choose another out-dir (results are never overwritten)"
        )
    return out


# ------------------------------------------------------------------ the run
def run_federation(
    grid: Grid, config: RunConfig, *, run_id: int = 0, on_round: RoundCallback | None = None
) -> FederationResult:
    """Run ``config.num_server_rounds`` rounds (or the rest of them after a resume) and save the results.

    Parameters
    ----------
    grid : Grid
        Flower's Grid, connecting to the SuperLink (real or simulated).
    config : RunConfig
        The run configuration.
    run_id : int (default: 0)
        Flower's run id; names the output folder when ``out-dir`` is empty.
    on_round : callable, optional
        Called with each round's log record after it is written (progress display).
    """
    out = resolve_out_dir(config, run_id)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / METRICS_FILE
    task: FederatedTask = get_task(config.task)
    options = task.options(config.task_options)
    try:
        model: TaskModel = task.model(config, options)
    except ValueError as exc:  # e.g. a shape the public pretrained weights do not fit: the setting to change
        raise RunConfigError(str(exc)) from exc
    mconfig, spec = model.config, model.spec
    sampled = max(config.min_train_nodes, config.min_available_nodes)
    built = build_strategy(config, num_sampled_nodes=sampled, task=task)
    evaluates = task.evaluates and config.fraction_evaluate > 0

    arrays = model.arrays
    checkpoint_dir = Path(config.checkpoint_dir) if config.checkpoint_dir else out / "checkpoints"
    start, releases = 1, 0
    resumed_best: tuple[float, int, dict[str, np.ndarray]] | None = None
    if config.resume:
        checkpoint = latest_checkpoint(checkpoint_dir)
        if checkpoint is None:
            logger.warning("resume = true but no checkpoint in %s: starting from round 1", checkpoint_dir)
        else:
            if checkpoint.task != task.name:
                raise RunConfigError(
                    f"the checkpoint of round {checkpoint.round} is of the '{checkpoint.task}' task; "
                    f"this run is '{task.name}'"
                )
            if checkpoint.strategy != config.strategy or checkpoint.model_config != mconfig:
                raise RunConfigError(
                    f"the checkpoint of round {checkpoint.round} was made with strategy '{checkpoint.strategy}' and "
                    f"model {checkpoint.model_config.to_dict()}; "
                    f"this run asks for '{config.strategy}' and {mconfig.to_dict()}"
                )
            arrays = checkpoint.arrays
            start = checkpoint.round + 1
            releases = restore_strategy_state(built, checkpoint.strategy_arrays, checkpoint.strategy_state)
            truncate_rounds(log_path, checkpoint.round)
            logger.info("resuming after round %s from its checkpoint", checkpoint.round)
            resumed_best = _best_before(log_path, checkpoint_dir)
    elif config.init_from:
        arrays = initial_arrays(Path(config.init_from), model)
        logger.info("starting from the model in %s (init-from)", config.init_from)
    result = FederationResult(arrays=arrays, model_config=mconfig, out_dir=out)
    built.strategy.summary()
    record_arrays = _to_record(arrays)
    if config.simulation_reproducible_noise:
        logger.warning(
            "simulation-reproducible-noise = true: nodes' DP noise follows the run's seed. Research only: NOT "
            "private against the coordinator, and a real node refuses it"
        )

    # Flower's stub types ConfigRecord's input as an invariant dict[str, ConfigRecordValues]; the
    # tasks' dict[str, Scalar] holds a subset of those value types and is only read (keep_input=True).
    def train_config(server_round: int) -> ConfigRecord:
        return ConfigRecord(
            task.train_instruction(config, options, model, server_round=server_round, run_tag=f"run-{run_id}")  # type: ignore[arg-type]
        )

    def eval_config(server_round: int) -> ConfigRecord:
        return ConfigRecord(
            task.evaluate_instruction(config, options, model, server_round=server_round, run_tag=f"run-{run_id}")  # type: ignore[arg-type]
        )

    # The region (context "region"): the nodes' released daily totals, each node sent the others' sum.
    region: RegionCollector | SecureRegion | None = None
    if "region" in config.context_list:
        region = (
            SecureRegion(columns=config.target_list, run_tag=f"run-{run_id}", wait=config.round_timeout)
            if config.region_secure_aggregation  # summed under SecAgg+: the coordinator learns the total only
            else RegionCollector()
        )

    def with_region(messages: Any) -> Any:
        if isinstance(region, SecureRegion):
            messages = list(messages)  # the requests first, then the SecAgg+ sum (when the calendars changed)
            region.refresh(grid, run_id=run_id)
        return region.stamp(messages) if region is not None else messages

    def evaluate_round(server_round: int) -> MetricRecord | None:
        replies = send_and_receive(
            grid,
            with_region(
                built.strategy.configure_evaluate(server_round, record_arrays, eval_config(server_round), grid)
            ),
            timeout=config.round_timeout,
        )
        if region is not None:
            region.collect(replies)
        try:
            return built.strategy.aggregate_evaluate(server_round, replies)
        except Exception:  # a broken aggregation must not end the federation
            logger.exception("round %s: evaluation aggregation failed", server_round)
            return None
        finally:
            val_blocks[server_round] = dict(built.strategy.val_blocks)

    # per round, each node's validation losses per block: round 0's are the start's (see _beats_start)
    val_blocks: dict[int, dict[str, list[float]]] = {}
    start_arrays = _to_arrays(record_arrays) if start == 1 else None

    if start == 1 and evaluates:
        initial = evaluate_round(0)
        record = RoundRecord(round=0, time=datetime.now(UTC).isoformat(), evaluate=_metrics_dict(initial))
        append_round(log_path, record)
        result.rounds.append(record)
        if on_round:
            on_round(record)

    if region is not None and start > 1 and evaluates:
        # After a resume the coordinator holds no totals yet: one evaluate exchange collects them (its
        # metrics are not a round of the log), so the next round's nodes read the region as before.
        evaluate_round(start - 1)
    if region is not None and not region.totals:
        logger.warning(
            "context 'region': no node has shared its released totals yet (no evaluation before round %s); "
            "that round trains without the region, later rounds with it",
            start,
        )

    # (validation loss, round, arrays) of the best round so far: the model the run keeps
    best = resumed_best
    for server_round in range(start, config.num_server_rounds + 1):
        began = time.perf_counter()
        replies = send_and_receive(
            grid,
            with_region(built.strategy.configure_train(server_round, record_arrays, train_config(server_round), grid)),
            timeout=config.round_timeout,
        )
        if region is not None:
            region.collect(replies)
        try:
            new_arrays, train_metrics = built.strategy.aggregate_train(server_round, replies)
        except Exception:  # never crash the coordinator on one round's aggregation
            logger.exception("round %s: aggregation failed; the global model is kept", server_round)
            new_arrays, train_metrics = None, None
        if new_arrays is not None:
            record_arrays = new_arrays
            if built.dp is not None:
                releases += 1
        train_outcomes = list(built.strategy.report.train)
        eval_metrics = evaluate_round(server_round) if evaluates else None
        epsilons = [o.metrics[protocol.EPSILON] for o in train_outcomes if protocol.EPSILON in o.metrics]
        record = RoundRecord(
            round=server_round,
            time=datetime.now(UTC).isoformat(),
            seconds=round(time.perf_counter() - began, 3),
            strategy=config.strategy,
            model_updated=new_arrays is not None,
            train=_metrics_dict(train_metrics),
            evaluate=_metrics_dict(eval_metrics),
            nodes={"sampled": len(replies), **outcomes_by_status(train_outcomes)},
            epsilon_max=max(epsilons) if epsilons else None,
            epsilon_mean=float(np.mean(epsilons)) if epsilons else None,
            outcomes=[_outcome_json(o) for o in train_outcomes],
            client_dp_epsilon=client_dp_epsilon(
                noise_multiplier=config.client_dp_noise_multiplier, releases=releases, delta=config.client_dp_delta
            )
            if built.dp is not None
            else None,
            privacy=_privacy_summary(train_outcomes, task.privacy_unit),
        )
        append_round(log_path, record)
        state_arrays_, state_scalars = strategy_state(built, releases)
        save_checkpoint(
            checkpoint_dir,
            Checkpoint(
                round=server_round,
                arrays=_to_arrays(record_arrays),
                strategy=config.strategy,
                task=task.name,
                model_config=mconfig,
                window_spec=spec,
                run_config=config.to_dict(),
                strategy_arrays=state_arrays_,
                strategy_state=state_scalars,
            ),
        )
        result.rounds.append(record)
        chosen = (record.evaluate or {}).get(protocol.VAL_LOSS)
        if record.model_updated and chosen is not None and math.isfinite(chosen):
            if best is None or chosen < best[0]:
                best = (float(chosen), server_round, _to_arrays(record_arrays))
        write_run_summary(out, result, config, task.privacy_unit, best_round=best[1] if best else None)
        progress.info("%s", round_line(record, config.num_server_rounds))
        if on_round:
            on_round(record)

    result.arrays = _to_arrays(record_arrays)
    if start == 1 and not any(r.model_updated for r in result.rounds if r.round > 0):
        # The global model is still the initial one: saving it as "the final model" would hand
        # hospitals an untrained model under a trained one's name.
        logger.error(
            "no round aggregated any update (%s); no final model written. Refusals: %s",
            ", ".join(f"round {r.round}: {r.nodes}" for r in result.rounds if r.round > 0) or "no rounds",
            refusal_summary(result.rounds) or "none",
        )
        return result
    kept = {"rounds": config.num_server_rounds, "strategy": config.strategy, "run-config": config.to_dict()}
    if best is not None and start_arrays is not None and config.keep_start and not _beats_start(val_blocks, best[1]):
        at_start = next(r for r in result.rounds if r.round == 0)
        initial_loss = (at_start.evaluate or {}).get(protocol.VAL_LOSS, math.nan)
        progress.info(
            "round %s (val-loss %.4g) does not beat the start (val-loss %.4g) by more than the validation noise: "
            "the start is kept",
            best[1],
            best[0],
            initial_loss,
        )
        best = (float(initial_loss), 0, start_arrays)
    if best is not None:
        # The model kept is the best round's on the nodes' released validation windows, not the last
        # round's; every round's own model stays in the checkpoints.
        result.arrays = best[2]
        kept |= {"best-round": best[1], "best-round-val-loss": best[0], "selected-by": VAL_LOSS_MEANING}
    task.write_model(out / FINAL_MODEL_NAME, result.arrays, model, kept)
    result.final_model_written = True
    result.best_round = best[1] if best else None
    write_run_summary(out, result, config, task.privacy_unit, best_round=result.best_round)
    progress.info(
        "final model written to %s (%s)",
        out / FINAL_MODEL_NAME,
        "the last round's"
        if best is None
        else f"the start (round 0), val-loss {best[0]:.4g}: no round beat it beyond the validation noise"
        if best[1] == 0
        else f"round {best[1]}, the best on the nodes' released validation windows, val-loss {best[0]:.4g}",
    )
    return result


# What each evaluation metric is, for the coordinator's one line per round.
_SCORED = {
    protocol.EVAL_LOSS: "pinball loss, scaled, on the nodes' held-out days of their released counts",
    protocol.EVAL_WAPE: "WAPE of the median",
    protocol.EVAL_MAE: "MAE of the median",
}


def round_line(record: RoundRecord, total: int) -> str:
    """One line a coordinator can follow a run by: round, nodes sampled/accepted/refused (with
    reasons), the evaluation metric and what it is scored on, and the largest epsilon spent."""
    nodes = dict(record.nodes or {})
    sampled = nodes.pop("sampled", 0)
    accepted = nodes.pop("accepted", 0)
    parts = [f"round {record.round}/{total}: {sampled} node(s) sampled, {accepted} accepted"]
    reasons: dict[str, int] = {}
    for outcome in record.outcomes or []:
        if outcome.get("status") != "accepted":
            who = outcome.get("hospital") or f"node {outcome.get('node')}"
            why = str(outcome.get("reason", "") or "no reason given").split(":")[0]
            key = f"{outcome.get('status')} {who} ({why})"
            reasons[key] = reasons.get(key, 0) + 1
    parts.append(", ".join(reasons) if reasons else "none refused")
    if not record.model_updated and record.round > 0:
        parts.append("global model kept")
    scored = [(k, v) for k, v in (record.evaluate or {}).items() if k in _SCORED]
    if scored:
        parts.append("; ".join(f"{k} {v:.4g} ({_SCORED[k]})" for k, v in scored))
    privacy = record.privacy or {}
    if record.epsilon_max is not None:
        unit = privacy.get("unit", "record")
        stay = f", stays <= {privacy['max-stay-days']} nights" if privacy.get("max-stay-days") else ""
        parts.append(
            f"largest epsilon spent {record.epsilon_max:.3g} per {unit} (delta {privacy.get('delta', 0):g}{stay})"
        )
    if record.seconds is not None:
        parts.append(f"{record.seconds:.1f} s")
    return " | ".join(parts)


VAL_LOSS_MEANING = "val-loss: pinball loss, scaled, on the nodes' released validation windows (before the test days)"
# A real run's summary for `medalloc report`: its own name, so a simulation's summary.json (written by the
# runner around the same folder) is never overwritten by it.
SUMMARY_FILE = "run-summary.json"


def initial_arrays(path: Path, model: TaskModel) -> dict[str, np.ndarray]:
    """The arrays of the model ``path`` names (a run's out-dir, a final model or a checkpoint) for a run of ``model``.

    Its model config must be this run's (a new week keeps the shape; a changed one starts from ``init``).
    """
    from medalloc_core.model_io import ModelFileError, read_model_files, read_sidecar, resolve_model_path

    try:
        sidecar = resolve_model_path(path)
        theirs = read_sidecar(sidecar).get("model-config")
        ours = model.config.to_dict() if hasattr(model.config, "to_dict") else None
        if ours is not None and theirs != ours:
            raise RunConfigError(
                f"init-from {path}: the model was made with {theirs}; this run asks for {ours}. Start from init "
                "(leave init-from empty) or run with the same model settings"
            )
        _, arrays = read_model_files(sidecar, expect={name: tuple(a.shape) for name, a in model.arrays.items()})
    except ModelFileError as exc:
        raise RunConfigError(f"init-from {path}: {exc}") from exc
    return {name: np.asarray(a) for name, a in arrays.items()}


def _beats_start(val_blocks: Mapping[int, Mapping[str, list[float]]], best_round: int) -> bool:
    """Whether ``best_round``'s model beats round 0's (the start) beyond the noise of the validation blocks.

    The blocks of the nodes that reported in both evaluations, each node's own blocks paired
    (``selection.beats``); where none did, the best round stands (nothing to compare it with).
    """
    start, best = val_blocks.get(0, {}), val_blocks.get(best_round, {})
    nodes = [n for n in best if n in start and len(best[n]) == len(start[n]) and best[n]]
    if not nodes:
        logger.info(
            "no node reported validation blocks for both the start and round %s: round %s kept", best_round, best_round
        )
        return True
    return beats(np.concatenate([best[n] for n in nodes]), np.concatenate([start[n] for n in nodes]))


def _best_before(log_path: Path, checkpoint_dir: Path) -> tuple[float, int, dict[str, np.ndarray]] | None:
    """After a resume: the best round so far by validation loss (metrics.jsonl) and its checkpointed model."""
    scored = [
        (float(r.evaluate[protocol.VAL_LOSS]), r.round)
        for r in read_rounds(log_path)
        if r.round > 0 and r.model_updated and math.isfinite(float((r.evaluate or {}).get(protocol.VAL_LOSS, math.nan)))
    ]
    for loss, server_round in sorted(scored):
        marker = checkpoint_dir / f"round-{server_round:04d}.json"
        try:
            return loss, server_round, load_checkpoint(marker).arrays
        except (CheckpointError, OSError) as exc:  # that round's checkpoint is gone: the next best
            logger.warning("the best round so far (%s) has no usable checkpoint (%s)", server_round, exc)
    return None


def _who(outcome: Mapping[str, Any]) -> str:
    return str(outcome.get("hospital") or f"node {outcome.get('node')}")


def run_summary(
    result: FederationResult, config: RunConfig, unit: str, *, best_round: int | None = None
) -> dict[str, Any]:
    """What `medalloc report` reads from a real run's folder (run-summary.json), from the rounds' own records:
    who took part, who refused and why, the privacy each node reports having spent, the model kept."""
    every = read_rounds(result.out_dir / METRICS_FILE) or result.rounds  # after a resume: the earlier rounds too
    rounds = [r for r in every if r.round > 0]
    names: list[str] = []
    accepted: dict[str, int] = {}
    epsilon: dict[str, float] = {}
    for record in rounds:
        for outcome in record.outcomes or []:
            who = _who(outcome)
            if who not in names:
                names.append(who)
            accepted[who] = accepted.get(who, 0) + int(outcome.get("status") == "accepted")
            if isinstance(outcome.get("epsilon"), int | float):
                epsilon[who] = max(epsilon.get(who, 0.0), float(outcome["epsilon"]))
    privacy: dict[str, Any] = {"unit": unit}
    for record in rounds:
        for key, value in (record.privacy or {}).items():
            if key in ("delta", "max-stay-days"):
                privacy[key] = value
    summary: dict[str, Any] = {
        "scenario": f"federation run {config.out_dir or result.out_dir.name}",
        "kind": "deployment",
        "task": config.task,
        "hospitals": names,
        "federation": {
            "rounds": len(rounds),
            "strategy": config.strategy,
            "epsilon_per_hospital": {h: epsilon.get(h) for h in names},
            "rounds_accepted": {h: accepted.get(h, 0) for h in names},
            "refusals": refusal_summary(every),
            "model_kept": {
                "round": best_round if best_round is not None else (rounds[-1].round if rounds else None),
                "selected_by": VAL_LOSS_MEANING if best_round is not None else "the last round (no validation loss)",
                "file": FINAL_MODEL_NAME,
            },
        },
        "privacy": privacy,
        "run_config": config.to_dict(),
    }
    return summary


def write_run_summary(
    out: Path, result: FederationResult, config: RunConfig, unit: str, *, best_round: int | None = None
) -> None:
    """Write run-summary.json after every round (a run that stops early still leaves a readable folder)."""
    text = json.dumps(run_summary(result, config, unit, best_round=best_round), indent=2, default=str) + "\n"
    atomic_write_bytes(out / SUMMARY_FILE, text.encode("utf-8"))


def make_server_app(run_config: Mapping[str, Any] | None = None, *, on_round: RoundCallback | None = None) -> ServerApp:
    """Build the ServerApp; ``run_config`` is fused over Flower's run config (the simulation runner's keys).

    ``on_round`` receives every round's log record (the runner's progress display).
    """
    extra = dict(run_config or {})
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        config = RunConfig.from_mapping({**context.run_config, **extra})
        if config.secure_aggregation:  # Flower's SecAgg+ in its legacy workflow, distributed DP (server/secure.py)
            out = resolve_out_dir(config, context.run_id)
            run_secure_federation(grid, config, out=out, context=context, run_id=context.run_id)
            return
        run_federation(grid, config, run_id=context.run_id, on_round=on_round)

    return app


app = make_server_app()
