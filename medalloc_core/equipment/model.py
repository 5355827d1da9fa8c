"""The failure-risk model and its training: a small MLP on snapshot features, DP-SGD with a DEVICE as privacy unit.

One DP-SGD example is one device's whole history: each step Poisson-samples devices, takes
the gradient of the mean loss over all of a sampled device's training snapshots, clips that
per-device gradient to ``max_grad_norm``, sums, adds ``N(0, sigma^2 C^2)`` and divides by the
expected number of devices: the project's one DP-SGD step (``medalloc_core.privacy.dpsgd``, on
Opacus), its noise from a torch generator seeded from the caller's ``rng``. The accountant's
item is therefore ``(sigma, q, steps)`` with ``q`` the device sampling rate (``DPPlan`` over devices), and
the guarantee covers a device's inventory row and every event it logged, however long its history is.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from medalloc_core.equipment.features import Snapshots, SnapshotSpec
from medalloc_core.model_io import (
    MAX_MODEL_PARAMETERS,
    ModelFileError,
    arrays_of,
    model_task,
    read_model_files,
    read_sidecar,
    resolve_model_path,
    write_task_model_files,
)
from medalloc_core.privacy.dpsgd import DPSGDStep
from medalloc_core.privacy.plan import DPPlan

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RiskModelConfig:
    """Shape of the risk model; stored with every model file and sent with every round.

    Parameters
    ----------
    n_features : int
        Snapshot width (``SnapshotSpec.n_features``).
    hidden : int (default: 0)
        Width of the hidden layers; 0 (the default) makes the model a logistic regression on the
        snapshot features. DP noise grows with the number of parameters and a fleet has only
        hundreds of devices: on the benchmark's fleets at device epsilon ~7, logistic regression
        scored AUROC 0.719, an MLP of width 8 0.716 (simulations/benchmarks/equipment.py).
    layers : int (default: 1)
        Hidden layers.
    prior : float (default: 0.03)
        Initial output bias = logit(prior): start at a typical 30-day failure rate so the first
        rounds do not spend their noisy steps learning the base rate.
    """

    n_features: int
    hidden: int = 0
    layers: int = 1
    prior: float = 0.03

    def __post_init__(self) -> None:
        # A config also comes from a model file's sidecar and from the coordinator's request:
        # every field is type-checked and the parameter count bounded (model_io's
        # MAX_MODEL_PARAMETERS) before anything of that size is allocated.
        for name in ("n_features", "hidden", "layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"RiskModelConfig.{name}={value!r} must be a whole number")
        if self.n_features < 1 or self.hidden < 0 or self.layers < 0:
            raise ValueError(f"n_features >= 1, hidden >= 0 and layers >= 0 are required, got {self}")
        if self.layers > _MAX_LAYERS:
            raise ValueError(f"RiskModelConfig.layers={self.layers} must be at most {_MAX_LAYERS}")
        if isinstance(self.prior, bool) or not isinstance(self.prior, int | float) or not 0 < self.prior < 1:
            raise ValueError(f"prior must be in (0, 1), got {self.prior!r}")
        count = sum(math.prod(shape) for shape in risk_parameter_shapes(self).values())
        if count > MAX_MODEL_PARAMETERS:
            raise ValueError(
                f"a risk model of this config has {count:,} parameters, over the limit of {MAX_MODEL_PARAMETERS:,} "
                "(MAX_MODEL_PARAMETERS)"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Any) -> RiskModelConfig:
        """Inverse of ``to_dict``; unknown or missing keys raise ``ValueError``."""
        if not isinstance(raw, dict) or set(raw) != set(cls.__dataclass_fields__):
            raise ValueError(f"a risk model config has exactly the keys {sorted(cls.__dataclass_fields__)}")
        return cls(**raw)


_MAX_LAYERS = 64


def risk_parameter_shapes(config: RiskModelConfig) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes of ``RiskMLP(config)``, computed without building it (nothing allocated)."""
    shapes: dict[str, tuple[int, ...]] = {}
    width = config.n_features
    for i in range(config.layers if config.hidden else 0):
        shapes[f"body.{2 * i}.weight"] = (config.hidden, width)
        shapes[f"body.{2 * i}.bias"] = (config.hidden,)
        width = config.hidden
    shapes["head.weight"] = (1, width)
    shapes["head.bias"] = (1,)
    return shapes


class RiskMLP(nn.Module):
    """Snapshot features ``(B, F)`` -> failure logit ``(B,)``."""

    def __init__(self, config: RiskModelConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        width = config.n_features
        for _ in range(config.layers if config.hidden else 0):
            layers += [nn.Linear(width, config.hidden), nn.ReLU()]
            width = config.hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1)
        with torch.no_grad():
            self.head.bias.fill_(math.log(config.prior / (1 - config.prior)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x)).squeeze(-1)  # (B,)


def build_risk_model(config: RiskModelConfig, *, seed: int = 0) -> RiskMLP:
    """A fresh model; the same seed gives the same initial weights on every node and the coordinator."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return RiskMLP(config)


@torch.no_grad()
def predict_proba(model: nn.Module, X: np.ndarray | torch.Tensor, *, batch_size: int = 65536) -> np.ndarray:
    """Failure probabilities ``(S,)`` for snapshot features ``(S, F)``."""
    X = torch.as_tensor(X, dtype=torch.float32)
    was = model.training
    model.eval()
    out = [torch.sigmoid(model(X[i : i + batch_size])) for i in range(0, len(X), batch_size)]
    model.train(was)
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


# ----------------------------------------------------------------------------- per-device batches
@dataclass(frozen=True)
class DeviceBatches:
    """Training snapshots grouped by device: ``X (n, S, F)``, ``y (n, S)``, ``mask (n, S)`` (padding = 0)."""

    X: torch.Tensor
    y: torch.Tensor
    mask: torch.Tensor

    @property
    def n_devices(self) -> int:
        return int(self.X.shape[0])

    @classmethod
    def from_snapshots(cls, snaps: Snapshots) -> DeviceBatches:
        """Group by device; devices without a training snapshot are left out (they contribute nothing)."""
        devices, inverse, counts = np.unique(snaps.device, return_inverse=True, return_counts=True)
        n, s = len(devices), int(counts.max()) if len(counts) else 0
        X = np.zeros((n, s, snaps.X.shape[1]), dtype=np.float32)
        y = np.zeros((n, s), dtype=np.float32)
        mask = np.zeros((n, s), dtype=np.float32)
        order = np.argsort(inverse, kind="stable")
        position = np.arange(len(order)) - np.repeat(np.cumsum(counts) - counts, counts)
        X[inverse[order], position] = snaps.X[order]
        y[inverse[order], position] = snaps.y[order]
        mask[inverse[order], position] = 1.0
        return cls(torch.from_numpy(X), torch.from_numpy(y), torch.from_numpy(mask))


@dataclass(frozen=True, kw_only=True)
class RiskTrainConfig:
    """Local optimisation of the risk model.

    Parameters
    ----------
    epochs : int (default: 2)
        Passes over the devices per call (one federated round = one call).
    batch_size : int (default: 64)
        Devices per step (under DP: the expected Poisson batch). Large: the noise on the mean
        gradient shrinks as 1 / batch, and a fleet of ~170 devices gives q ~ 0.3-0.5.
    lr : float (default: 0.05)
        Adam learning rate.
    pos_weight : float (default: 1.0)
        Weight of a failing snapshot in the loss; 1 keeps the probabilities calibrated.
    proximal_mu : float (default: 0)
        FedProx weight; added after privatisation (it does not touch data).
    """

    epochs: int = 2
    batch_size: int = 64
    lr: float = 0.05
    pos_weight: float = 1.0
    proximal_mu: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.pos_weight <= 0 or self.proximal_mu < 0:
            raise ValueError(f"epochs, batch_size >= 1; lr, pos_weight > 0; proximal_mu >= 0 required, got {self}")


@dataclass(frozen=True, kw_only=True)
class DeviceDP:
    """DP-SGD with one device as the unit: noise multiplier sigma and clipping bound C of the per-device gradient."""

    noise_multiplier: float
    # Per-device gradients of the mean snapshot loss are small (median ~0.09 at initialisation
    # for the logistic model): C = 0.2 clips only devices with failures, and the noise sigma*C
    # is five times smaller than at C = 1 (AUROC 0.63 -> 0.71 at the same epsilon).
    max_grad_norm: float = 0.2

    def __post_init__(self) -> None:
        if not (self.noise_multiplier > 0 and math.isfinite(self.noise_multiplier)) or not self.max_grad_norm > 0:
            raise ValueError("device-level DP needs noise_multiplier > 0 (finite) and max_grad_norm > 0")


@dataclass(frozen=True)
class RiskTrainResult:
    """What one training call did."""

    n_devices: int  # devices trained on (the FedAvg weight and the DP sampling population)
    steps: int
    loss: float  # mean per-device training loss over the steps (noisy under DP: for logs only)
    plan: DPPlan | None  # sampling rate and steps the ledger was charged for (None: not private)
    seconds: float


def risk_plan(n_devices: int, config: RiskTrainConfig) -> DPPlan:
    """The DP plan of one call: Poisson rate over devices and noisy steps (what the ledger is charged)."""
    return DPPlan(n_examples=n_devices, batch_size=config.batch_size, epochs=config.epochs)


def _device_loss_fn(model: nn.Module, pos_weight: float):  # type: ignore[no-untyped-def]
    def loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        # x (S, F), y (S,), m (S,): the mean loss over this device's real snapshots
        logits = functional_call(model, params, (x,))
        weight = m * (1.0 + (pos_weight - 1.0) * y)
        per = nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
        return (per * weight).sum() / m.sum().clamp(min=1.0)

    return loss


def noise_generator(rng: np.random.Generator) -> torch.Generator:
    """A torch generator for the DP noise, seeded from ``rng`` (the OS CSPRNG on a real node; seeded for research)."""
    return torch.Generator().manual_seed(int(rng.integers(2**63 - 1)))


def privatise(
    grads: Mapping[str, torch.Tensor], *, dp: DeviceDP, expected_batch: int, rng: np.random.Generator
) -> dict[str, torch.Tensor]:
    """One DP-SGD step's gradient from per-device gradients ``{name: (b, *shape)}``, by the shared ``DPSGDStep``.

    Each device's whole gradient (all parameters together) is clipped to ``dp.max_grad_norm``,
    the clipped gradients are summed, ``N(0, (sigma C)^2)`` is added to every coordinate and the
    sum is divided by the *expected* batch size, as DP-SGD is accounted (an empty batch still
    gets its noise). ``train_risk`` keeps one step for the whole call; this is the one-off form.
    """
    slots = {name: torch.zeros(tuple(g.shape[1:]), dtype=g.dtype, requires_grad=True) for name, g in grads.items()}
    step = DPSGDStep(
        slots.values(),
        noise_multiplier=dp.noise_multiplier,
        max_grad_norm=dp.max_grad_norm,
        expected_batch_size=expected_batch,
        generator=noise_generator(rng),
    )
    step.from_grad_samples(list(grads.values()))
    step.close()
    return {name: t.grad for name, t in slots.items()}  # type: ignore[misc]


def train_risk(
    model: nn.Module,
    data: DeviceBatches,
    *,
    config: RiskTrainConfig,
    dp: DeviceDP | None,
    rng: np.random.Generator,
    global_params: dict[str, torch.Tensor] | None = None,
    population: int | None = None,
) -> RiskTrainResult:
    """Train ``model`` in place; privately (device-level DP-SGD) when ``dp`` is given.

    The caller charges the privacy ledger for ``risk_plan(population or data.n_devices, config)`` at
    ``dp.noise_multiplier`` BEFORE calling this (and trains nothing when the ledger refuses).

    Parameters
    ----------
    model
        From ``build_risk_model``.
    data
        Training snapshots grouped by device.
    config
        Epochs, batch, learning rate.
    dp
        Device-level DP-SGD settings; ``None`` trains without privacy (research baselines only).
    rng
        Source of the Poisson sampling and the noise: on a real node seeded from the OS
        CSPRNG (never from anything the coordinator knows); a research run passes a seeded one.
    global_params
        The round's global parameters, for FedProx.
    population
        The sampling population of the plan (default: the devices in ``data``): a node's declared
        device count, public, at least ``data.n_devices``; each device with data is sampled at
        ``expected batch / population`` (a declared device without data is never drawn).
    """
    n = data.n_devices
    if n == 0:
        raise ValueError("no device has a training snapshot: the event log is shorter than the horizon needs")
    if population is not None and population < n:
        raise ValueError(f"population {population} is below the {n} devices trained on")
    plan = risk_plan(population or n, config)
    params = {k: v for k, v in model.named_parameters()}
    optimizer = torch.optim.Adam(params.values(), lr=config.lr)
    per_device = vmap(grad(_device_loss_fn(model, config.pos_weight), has_aux=False), in_dims=(None, 0, 0, 0))
    device_loss = vmap(_device_loss_fn(model, config.pos_weight), in_dims=(None, 0, 0, 0))
    step = (
        DPSGDStep(
            params.values(),
            noise_multiplier=dp.noise_multiplier,
            max_grad_norm=dp.max_grad_norm,
            expected_batch_size=plan.expected_batch_size,
            generator=noise_generator(rng),
        )
        if dp is not None
        else None
    )
    start = time.perf_counter()
    steps, loss_sum = 0, 0.0
    for _ in range(config.epochs):
        if dp is None:
            order = torch.from_numpy(rng.permutation(n))
            batches = [order[i : i + config.batch_size] for i in range(0, n, config.batch_size)]
        else:
            # Poisson sampling at the plan's rate, plan.steps_per_epoch times: what the accountant assumes.
            batches = [
                torch.from_numpy(np.flatnonzero(rng.random(n) < plan.sample_rate)) for _ in range(plan.steps_per_epoch)
            ]
        for idx in batches:
            detached = {k: v.detach() for k, v in params.items()}
            x, y, m = data.X[idx], data.y[idx], data.mask[idx]
            if len(idx):
                grads = per_device(detached, x, y, m)  # each (b, *param.shape)
                with torch.no_grad():
                    loss_sum += float(device_loss(detached, x, y, m).mean())
            else:  # an empty Poisson batch: DP-SGD still adds noise
                grads = {k: torch.zeros((0, *v.shape)) for k, v in params.items()}
            with torch.no_grad():
                if step is None:
                    for k, p in params.items():
                        p.grad = grads[k].sum(0) / max(len(idx), 1)
                else:
                    step.from_grad_samples([grads[k] for k in params])  # clip per device, sum, noise, divide
                for k, p in params.items():
                    if config.proximal_mu and global_params is not None and p.grad is not None:
                        p.grad = p.grad + config.proximal_mu * (p.detach() - global_params[k])
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
    if step is not None:
        step.close()
    return RiskTrainResult(
        n, steps, loss_sum / max(steps, 1), plan if dp is not None else None, time.perf_counter() - start
    )


# ----------------------------------------------------------------------------- model files
TASK_NAME = "equipment"


@dataclass(frozen=True)
class SavedRiskModel:
    """A loaded risk model with the snapshot spec it was trained on and the sidecar's fields."""

    model: RiskMLP
    config: RiskModelConfig
    spec: SnapshotSpec
    path: Path
    metadata: dict[str, Any]


def risk_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's parameters as numpy arrays (``state_dict`` names)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def risk_model_from_arrays(config: RiskModelConfig, arrays: Mapping[str, np.ndarray]) -> RiskMLP:
    """A model with ``arrays`` loaded; raises ``ValueError`` when names or shapes do not fit ``config``."""
    model = RiskMLP(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(np.shape(v)) for k, v in arrays.items()}
    if expected != got:
        raise ValueError(f"arrays {got} do not fit a risk model {config.to_dict()} (expects {expected})")
    model.load_state_dict({k: torch.as_tensor(np.asarray(v, dtype=np.float32)) for k, v in arrays.items()})
    return model


def save_risk_model(path: Path, model: RiskMLP, *, spec: SnapshotSpec, extra: Mapping[str, Any] | None = None) -> Path:
    """Write the model in the project's one model-file format (``model_io``), tagged with the equipment task."""
    if spec.n_features != model.config.n_features:
        raise ValueError(f"snapshot spec gives {spec.n_features} features, the model expects {model.config.n_features}")
    return write_task_model_files(
        Path(path),
        risk_arrays(model),
        model_config=model.config.to_dict(),
        spec=spec.to_dict(),
        task=TASK_NAME,
        extra=extra,
    )


def load_risk_model(path: Path) -> SavedRiskModel:
    """Load an equipment risk model: a final model, a checkpoint, or a results/checkpoint folder.

    Raises ``ModelFileError`` for anything else (including a demand forecaster's files).
    """
    sidecar = resolve_model_path(Path(path))
    meta = read_sidecar(sidecar)  # size-bounded and digest-checked before any field is used
    if model_task(meta) != TASK_NAME:
        raise ModelFileError(
            f"{sidecar}: is a '{model_task(meta) or 'demand forecasting'}' model, not an equipment risk model; train "
            "one with an equipment "
            "federation (docs/equipment.md)"
        )
    try:
        config = RiskModelConfig.from_dict(meta["model-config"])
        spec = SnapshotSpec.from_dict(meta.get("window-spec"))
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{sidecar}: not a valid equipment risk model ({exc})") from None
    if spec.n_features != config.n_features:
        raise ModelFileError(f"{sidecar}: snapshot spec ({spec.n_features} features) contradicts the model config")
    # The arrays' header is checked against the config's shapes before the arrays are read.
    meta, arrays = read_model_files(sidecar, expect=risk_parameter_shapes(config))
    bad = [name for name, values in arrays.items() if not np.isfinite(values).all()]
    if bad:
        raise ModelFileError(f"{arrays_of(sidecar)}: array(s) {bad[:3]} hold NaN or infinite weights")
    try:
        model = risk_model_from_arrays(config, arrays)
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{sidecar}: not a valid equipment risk model ({exc})") from exc
    model.eval()
    return SavedRiskModel(model, config, spec, arrays_of(sidecar), meta)
