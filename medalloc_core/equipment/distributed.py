"""The risk model under distributed DP: each node sends its noisy integer gradient sum, the coordinator steps once.

A round (``docs/privacy.md``, "Secure aggregation with distributed DP"): each node takes, at the
global model, the gradient of every device's mean loss (all its devices: no sampling),
clips, scales and rounds it (``medalloc_core.privacy.distributed.sum_rounded``), sums, adds its
Skellam share and sends that integer vector through Flower's SecAgg+. The coordinator sees
only the sum over nodes modulo ``2**31`` and applies one Adam step on
``sum / (scale * devices)``, the noisy mean gradient over every device of the federation. That
step is post-processing of the DP sum; the device counts are public (as in every equipment round).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.func import grad, vmap

from medalloc_core.equipment.model import DeviceBatches, _device_loss_fn
from medalloc_core.privacy.distributed import SkellamPlan, centred, skellam_share, sum_rounded

__all__ = ["ServerAdam", "flatten", "node_sum", "per_device_gradients", "unflatten"]


def flatten(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """The model's arrays as one float64 vector, in the mapping's (the model's ``state_dict``) order."""
    return np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in arrays.values()])


def unflatten(vector: np.ndarray, like: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``vector`` cut back into arrays named and shaped as ``like`` (float32, the model's dtype)."""
    out, at = {}, 0
    for name, ref in like.items():
        size = int(np.prod(np.shape(ref)))
        out[name] = vector[at : at + size].reshape(np.shape(ref)).astype(np.float32)
        at += size
    if at != vector.size:
        raise ValueError(f"a vector of {vector.size} values does not fit arrays of {at}")
    return out


def per_device_gradients(model: nn.Module, data: DeviceBatches, *, pos_weight: float = 1.0) -> np.ndarray:
    """Gradient of each device's mean snapshot loss at the model's parameters: ``(devices, d)`` float64."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    names = [k for k, _ in model.state_dict().items()]
    if names != list(params):
        raise ValueError("the risk model has buffers besides its parameters; distributed DP sums parameters only")
    per_device = vmap(grad(_device_loss_fn(model, pos_weight)), in_dims=(None, 0, 0, 0))
    with torch.no_grad():
        grads = per_device(params, data.X, data.y, data.mask)  # each (n, *shape)
    n = data.n_devices
    return np.concatenate([grads[k].reshape(n, -1).double().numpy() for k in params], axis=1)


def node_sum(model: nn.Module, data: DeviceBatches, plan: SkellamPlan, rng: np.random.Generator) -> np.ndarray:
    """A node's contribution to a round: its devices' clipped, rounded gradient sum plus its Skellam share.

    Returns int64 ``(d,)``.

    ``rng`` is the node's OS-seeded generator (``secure_generator``): it draws both the
    rounding and the noise, and nobody else can know it.
    """
    if data.n_devices == 0:
        raise ValueError("no device has a training snapshot: the event log is shorter than the horizon needs")
    total = sum_rounded(per_device_gradients(model, data), plan, rng)
    contribution: np.ndarray = total + skellam_share(plan, rng)
    return contribution


@dataclass
class ServerAdam:
    """The coordinator's optimiser over rounds: Adam on the decoded noisy mean gradient (post-processing)."""

    lr: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    t: int = 0
    m: np.ndarray | None = field(default=None, repr=False)
    v: np.ndarray | None = field(default=None, repr=False)

    def step(self, weights: np.ndarray, gradient: np.ndarray) -> np.ndarray:
        if self.m is None or self.v is None:
            self.m, self.v = np.zeros_like(weights), np.zeros_like(weights)
        self.t += 1
        self.m = self.beta1 * self.m + (1 - self.beta1) * gradient
        self.v = self.beta2 * self.v + (1 - self.beta2) * gradient**2
        m_hat = self.m / (1 - self.beta1**self.t)
        v_hat = self.v / (1 - self.beta2**self.t)
        out: np.ndarray = weights - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)
        return out


def mean_gradient(total: np.ndarray, plan: SkellamPlan, devices: int) -> np.ndarray:
    """The noisy mean per-device gradient from the modular sum of every node's contribution."""
    if devices < 1:
        raise ValueError("the federation reported no devices")
    out: np.ndarray = centred(total, plan.modulus).astype(np.float64) / (plan.scale * devices)
    return out
