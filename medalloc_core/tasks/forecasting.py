"""Demand forecasting as a federated task: the shared forecaster, each round's proposal, a node's DP-SGD round.

The task MedAlloc began with, on the task interface. Its messages are the Flower defaults
(``train`` / ``evaluate``) and :mod:`medalloc_core.protocol`'s instructions and replies,
unchanged, so a forecasting federation speaks exactly the wire it spoke before tasks existed.
Its run-config keys are the top-level ones (``history``, ``horizon``, ``targets``, ``model``,
``hidden``, ``dp-*``); a node serves it with ``data-path``, ``ledger-path`` and
``privacy-epsilon-budget``.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medalloc_core.contract import DataContractError
from medalloc_core.features import WindowSpec, federation_window_spec
from medalloc_core.model_io import write_model_files
from medalloc_core.models import Forecaster, ForecasterConfig, build_from_arrays, build_model, state_arrays
from medalloc_core.privacy.accounting import noise_multiplier_for
from medalloc_core.privacy.fingerprint import fingerprint_frame
from medalloc_core.privacy.ledger import LedgerError, PrivacyBudgetExceeded, PrivacyLedger
from medalloc_core.privacy.plan import DPPlan
from medalloc_core.protocol import (
    EVAL_METRIC_KEYS,
    TRAIN_METRIC_KEYS,
    EvaluateInstruction,
    EvaluateReply,
    ProtocolError,
    Refusal,
    Scalar,
    TrainInstruction,
    TrainReply,
)
from medalloc_core.tasks.base import FederatedTask, NodeReply, NodeTask, TaskModel, TaskRefused
from medalloc_core.tasks.forecasting_local import LocalData, evaluate_local, load_local_data
from medalloc_core.training import DPConfig, TrainConfig, train_local

logger = logging.getLogger(__name__)


def _seed(base: int, server_round: int, hospital_id: str) -> int:
    """Different per node and round, identical across reruns of the same run config."""
    return (base * 1_000_003 + server_round * 10_007 + zlib.crc32(hospital_id.encode())) % (2**31)


def _data(node: NodeTask, spec: WindowSpec) -> LocalData:
    try:
        return load_local_data(node.data_path, spec)
    except DataContractError as exc:
        # The problems name rows and values of the hospital's file: they stay in the node's log.
        logger.error("%s", exc)
        errors = sum(1 for p in exc.problems if p.severity == "error")
        raise TaskRefused(
            Refusal.DATA_INVALID, f"{errors} data contract error(s) in the node's file; see the node's log"
        ) from exc
    except (OSError, ValueError) as exc:
        logger.error("%s: %s", node.data_path, exc)
        raise TaskRefused(
            Refusal.DATA_INVALID, "the node's file cannot be windowed for this model; see the node's log"
        ) from exc


def _model(model_config: ForecasterConfig, arrays: Mapping[str, np.ndarray], data: LocalData) -> Forecaster:
    if data.dataset.n_features != model_config.n_features or data.dataset.n_targets != model_config.n_targets:
        raise TaskRefused(
            Refusal.REQUEST_INVALID,
            f"model expects F={model_config.n_features}, T={model_config.n_targets}; "
            f"the node's windows have F={data.dataset.n_features}, T={data.dataset.n_targets}",
        )
    try:
        return build_from_arrays(model_config, dict(arrays))
    except (ValueError, TypeError) as exc:
        raise TaskRefused(Refusal.REQUEST_INVALID, f"global arrays do not fit the model ({exc})") from exc


class ForecastingTask(FederatedTask):
    """P10/P50/P90 admissions and census per unit for the next days, trained with DP-SGD (docs/forecasting.md)."""

    name = "forecasting"
    action = "default"
    evaluates = True
    train_keys = TRAIN_METRIC_KEYS
    evaluate_keys = EVAL_METRIC_KEYS

    # ------------------------------------------------------------------ coordinator
    def model(self, run: Any, options: Any) -> TaskModel:
        spec = federation_window_spec(history=run.history, horizon=run.horizon, targets=run.target_list)
        config = ForecasterConfig.for_spec(spec, model=run.model, hidden=run.hidden)
        return TaskModel(config, spec, state_arrays(build_model(config, seed=run.seed)))

    def train_instruction(
        self, run: Any, options: Any, model: TaskModel, *, server_round: int, run_tag: str
    ) -> dict[str, Scalar]:
        assert isinstance(model.config, ForecasterConfig) and isinstance(model.spec, WindowSpec)
        return TrainInstruction(
            server_round=server_round,
            model_config=model.config,
            window_spec=model.spec,
            local_epochs=run.local_epochs,
            batch_size=run.batch_size,
            lr=run.lr,
            proximal_mu=run.proximal_mu if run.strategy == "fedprox" else 0.0,
            dp_noise_multiplier=run.dp_noise_multiplier,
            dp_target_epsilon=run.dp_target_epsilon,
            dp_max_grad_norm=run.dp_max_grad_norm,
            run_tag=run_tag,
            seed=run.seed,
        ).to_dict()

    def evaluate_instruction(self, run: Any, options: Any, model: TaskModel, *, server_round: int) -> dict[str, Scalar]:
        assert isinstance(model.config, ForecasterConfig) and isinstance(model.spec, WindowSpec)
        return EvaluateInstruction(
            server_round=server_round, model_config=model.config, window_spec=model.spec
        ).to_dict()

    def parse_model(self, config: Mapping[str, Any], spec: Mapping[str, Any]) -> tuple[ForecasterConfig, WindowSpec]:
        return ForecasterConfig.from_dict(dict(config)), WindowSpec.from_dict(dict(spec))

    def write_model(
        self, path: Path, arrays: Mapping[str, np.ndarray], model: TaskModel, extra: Mapping[str, Any]
    ) -> Path:
        assert isinstance(model.config, ForecasterConfig) and isinstance(model.spec, WindowSpec)
        return write_model_files(path, arrays, config=model.config, spec=model.spec, extra=extra)

    # ------------------------------------------------------------------ node
    def train(self, node: NodeTask, request: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> NodeReply:
        try:
            ask = TrainInstruction.from_dict(request)
        except ProtocolError as exc:
            raise TaskRefused(Refusal.REQUEST_INVALID, f"cannot read the request: {exc}") from exc
        data = _data(node, ask.window_spec)
        model = _model(ask.model_config, arrays, data)
        torch.set_num_threads(node.threads)
        epochs = min(ask.local_epochs, node.max_local_epochs)
        noise = max(ask.dp_noise_multiplier, node.min_noise_multiplier)
        clip = min(ask.dp_max_grad_norm, node.max_grad_norm)
        train = data.dataset.train
        plan = DPPlan(n_examples=len(train), batch_size=ask.batch_size, epochs=epochs)
        if ask.dp_target_epsilon > 0:
            noise = max(
                noise,
                noise_multiplier_for(
                    target_epsilon=ask.dp_target_epsilon,
                    delta=node.delta,
                    sample_rate=plan.sample_rate,
                    steps=plan.steps,
                    accountant=node.accountant,  # type: ignore[arg-type]
                ),
            )
        seed = _seed(ask.seed, ask.server_round, node.hospital_id)
        if node.simulated:  # a virtual node's ledger folder belongs to the simulation; a real node's operator makes it
            node.ledger_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            ledger = PrivacyLedger.open(
                node.ledger_path,
                epsilon_budget=node.epsilon_budget,
                delta=node.delta,
                accountant=node.accountant,  # type: ignore[arg-type]
            )
            result = train_local(
                model,
                train,
                config=TrainConfig(
                    epochs=epochs, batch_size=ask.batch_size, lr=ask.lr, fedprox_mu=ask.proximal_mu, seed=seed
                ),
                dp=DPConfig(noise_multiplier=noise, max_grad_norm=clip, delta=node.delta, accountant=node.accountant),
                ledger=ledger,
                fingerprint=fingerprint_frame(data.records.frame),
                global_params=[p.detach().clone() for p in model.parameters()] if ask.proximal_mu > 0 else None,
                run_id=f"{ask.run_tag}/round-{ask.server_round}",
            )
        except PrivacyBudgetExceeded as exc:
            logger.warning("%s: %s", node.hospital_id, exc)
            raise TaskRefused(
                Refusal.PRIVACY_BUDGET_EXCEEDED,
                f"this round would take the node's epsilon to {exc.projected_epsilon:.3f}, "
                f"above its budget {exc.epsilon_budget:g}",
            ) from exc
        except LedgerError as exc:
            logger.error("%s: privacy ledger %s: %s", node.hospital_id, node.ledger_path, exc)
            raise TaskRefused(
                Refusal.LEDGER_CORRUPT,
                f"{type(exc).__name__}: the node trains nothing until its operator fixes the ledger",
            ) from exc
        epsilon, left = ledger.epsilon_spent(), ledger.remaining()
        logger.info(
            "%s round %s: %s windows, loss %.4f, sigma %.3g, node epsilon %.3f (%.3f left)",
            node.hospital_id,
            ask.server_round,
            result.num_examples,
            result.loss,
            noise,
            epsilon,
            left,
        )
        reply = TrainReply(
            num_examples=int(result.num_examples),
            train_loss=float(result.loss),
            epsilon=float(epsilon),
            epsilon_budget_left=float(left),
            noise_multiplier=float(noise),
            local_epochs_used=float(epochs),
        )
        return NodeReply(reply.metrics(), state_arrays(model))

    def evaluate(self, node: NodeTask, request: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> NodeReply:
        try:
            ask = EvaluateInstruction.from_dict(request)
        except ProtocolError as exc:
            raise TaskRefused(Refusal.REQUEST_INVALID, f"cannot read the request: {exc}") from exc
        data = _data(node, ask.window_spec)
        model = _model(ask.model_config, arrays, data)
        torch.set_num_threads(node.threads)
        scores = evaluate_local(model, data.dataset)
        reply = EvaluateReply(
            num_examples=int(scores["n"]), eval_loss=scores["loss"], eval_mae=scores["mae"], eval_wape=scores["wape"]
        )
        return NodeReply(reply.metrics())

    # ------------------------------------------------------------------ simulations
    def node_data(self, folder: Path) -> list[Path]:
        if not folder.is_dir():
            raise ValueError(f"{folder} is not a folder")
        return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".csv", ".parquet"))

    def check_comparisons(self, raw: Mapping[str, Any]) -> None:
        pass  # the simulation scenario checks the forecasting comparisons itself (simulations/scenario.py)

    def check_region(self, raw: Mapping[str, Any]) -> None:
        from medalloc_core.synthetic import RegionConfig

        RegionConfig(**{k.replace("-", "_"): v for k, v in raw.items()})

    def generate(self, folder: Path, region: Mapping[str, Any]) -> list[Path]:
        from medalloc_core.synthetic import RegionConfig, generate_region, write_region

        write_region(generate_region(RegionConfig(**{k.replace("-", "_"): v for k, v in region.items()})), folder)
        return self.node_data(folder)


TASK = ForecastingTask()
