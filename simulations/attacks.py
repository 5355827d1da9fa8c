"""Simulated hostile or broken hospitals: a Flower client mod that corrupts an honest node's training reply.

The attacker runs the project's honest ClientApp unchanged (it trains with DP-SGD, spends its
ledger, evaluates honestly) and :class:`AttackMod` rewrites the training reply on its way out,
so an attack is exactly "honest node + one corruption" and nothing else differs between a
clean and an attacked run with the same seeds.

Attack kinds (``Attack.kind``), with ``u = reply - global`` the honest update:

======================  ===================================================  =====================
kind                    what the coordinator receives                        caught by the checks
======================  ===================================================  =====================
``nan``                 one weight set to NaN                                yes (non-finite)
``inf``                 one weight set to +Inf                               yes (non-finite)
``huge_norm``           ``global + 1e6 u``                                   yes (update norm)
``wrong_shape``         the first array with one extra row                   yes (shape)
``wrong_key``           the first array under another name                   yes (keys)
``wrong_dtype``         every array as float64                               yes (dtype)
``empty``               metrics only, no arrays (a broken node)              yes (record count)
``wrong_record``        honest arrays in an ArrayRecord named ``weights``    yes (record name)
``inflated_count``      ``num-examples = count`` (default 1e9)               dropped above
                                                                             max-examples-weight,
                                                                             clamped below it
``sign_flip``           ``global - factor u``                                no, if under the bound
``scale``               ``global + factor u``                                no, if under the bound
``stealthy``            ``global - (norm / |u|) u``: flipped, rescaled to    no, by construction
                        ``norm`` (set it just under max-update-norm)
======================  ===================================================  =====================

Evaluation replies pass through unchanged: an attack here targets the global model.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from medalloc.server.config import RunConfig
from medalloc_core import protocol

logger = logging.getLogger(__name__)

ATTACK_KINDS = (
    "nan", "inf", "huge_norm", "wrong_shape", "wrong_key", "wrong_dtype", "empty", "wrong_record",
    "inflated_count", "sign_flip", "scale", "stealthy",
)  # fmt: skip
"""Every kind :func:`corrupt_arrays` / :class:`AttackMod` knows."""

CAUGHT_KINDS = frozenset(
    {"nan", "inf", "huge_norm", "wrong_shape", "wrong_key", "wrong_dtype", "empty", "wrong_record"}
)
"""Kinds the coordinator's reply checks drop whatever their parameters (``inflated_count`` is dropped or clamped)."""


@dataclass(frozen=True)
class Attack:
    """One attack and its strength.

    Parameters
    ----------
    kind : str
        One of :data:`ATTACK_KINDS`.
    factor : float (default: 10.0)
        ``sign_flip`` sends ``global - factor * u``, ``scale`` sends ``global + factor * u``;
        ``huge_norm`` always uses 1e6.
    norm : float (default: 99.0)
        ``stealthy`` sends a sign-flipped update of exactly this L2 norm: just under the
        coordinator's default ``max-update-norm`` of 100, so no check can tell it apart.
    count : int (default: 1_000_000_000)
        ``inflated_count`` claims this many training examples.
    """

    kind: str
    factor: float = 10.0
    norm: float = 99.0
    count: int = 1_000_000_000

    def __post_init__(self) -> None:
        if self.kind not in ATTACK_KINDS:
            raise ValueError(f"unknown attack kind {self.kind!r}; choose one of {', '.join(ATTACK_KINDS)}")
        if self.norm <= 0 or self.count < 0:
            raise ValueError(f"norm must be > 0 and count >= 0, got norm={self.norm}, count={self.count}")

    @property
    def label(self) -> str:
        """Short name for tables and logs, e.g. ``sign_flip x10``."""
        if self.kind in ("sign_flip", "scale"):
            return f"{self.kind} x{self.factor:g}"
        if self.kind == "stealthy":
            return f"stealthy |u|={self.norm:g}"
        if self.kind == "inflated_count":
            return f"inflated_count {self.count:.0e}"
        return self.kind


# ------------------------------------------------------------------ pure corruption
def corrupt_arrays(
    reply: Mapping[str, np.ndarray], global_arrays: Mapping[str, np.ndarray], attack: Attack
) -> dict[str, np.ndarray]:
    """What an attacker sends instead of its honest ``reply`` to ``global_arrays`` (arrays only).

    ``inflated_count``, ``empty`` and ``wrong_record`` leave the arrays honest (they corrupt
    the metrics or the record layout, see :func:`corrupt_reply`).
    """
    out = {k: np.array(v, copy=True) for k, v in reply.items()}
    first = next(iter(out))
    update = {k: out[k].astype(np.float64) - np.asarray(global_arrays[k], dtype=np.float64) for k in out}

    def moved(scale: float) -> dict[str, np.ndarray]:
        return {
            k: (np.asarray(global_arrays[k], dtype=np.float64) + scale * update[k]).astype(out[k].dtype) for k in out
        }

    kind = attack.kind
    if kind == "nan":
        out[first].flat[0] = np.nan
    elif kind == "inf":
        out[first].flat[0] = np.inf
    elif kind == "huge_norm":
        out = moved(1e6)
    elif kind == "sign_flip":
        out = moved(-attack.factor)
    elif kind == "scale":
        out = moved(attack.factor)
    elif kind == "stealthy":
        norm = float(np.sqrt(sum(np.sum(u * u) for u in update.values())))
        # A node that did not move (norm 0) has no direction to flip: it sends its honest reply.
        out = moved(-attack.norm / norm) if norm > 0 else out
    elif kind == "wrong_shape":
        value = out[first]
        out[first] = (
            np.concatenate([value, np.zeros((1, *value.shape[1:]), dtype=value.dtype)])
            if value.ndim
            else value.reshape(1)
        )
    elif kind == "wrong_key":
        out = {(f"{k}.poisoned" if k == first else k): v for k, v in out.items()}
    elif kind == "wrong_dtype":
        out = {k: v.astype(np.float64) for k, v in out.items()}
    return out


def corrupt_reply(reply: Message, request: Message, attack: Attack) -> Message:
    """The attacker's reply to ``request``: the honest ``reply`` with ``attack`` applied.

    Error replies (refusals) are returned unchanged: there is nothing to corrupt.
    """
    if reply.has_error():
        return reply
    content = reply.content
    honest = {k: v.numpy() for k, v in content[protocol.ARRAYS].items()}  # type: ignore[union-attr]
    global_arrays = {k: v.numpy() for k, v in request.content[protocol.ARRAYS].items()}  # type: ignore[union-attr]
    metrics = MetricRecord(dict(content[protocol.METRICS]))  # type: ignore[arg-type]
    if attack.kind == "inflated_count":
        metrics[protocol.NUM_EXAMPLES] = attack.count
    records: dict[str, object] = {protocol.METRICS: metrics}
    if attack.kind != "empty":
        arrays = corrupt_arrays(honest, global_arrays, attack)
        # Flower reads every reply under the first reply's record name: a renamed record used to veto the round.
        name = "weights" if attack.kind == "wrong_record" else protocol.ARRAYS
        records[name] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    if protocol.NODE_INFO in content:
        records[protocol.NODE_INFO] = content[protocol.NODE_INFO]
    return Message(content=RecordDict(records), reply_to=request)  # type: ignore[arg-type]


# ------------------------------------------------------------------ the client mod
def node_index(context: Context) -> int:
    """Which node this is: ``partition-id`` in a simulation, otherwise Flower's node id."""
    return int(context.node_config.get("partition-id", context.node_id))


class AttackMod:
    """Flower client mod ``(msg, ctxt, call_next) -> Message`` that turns the listed nodes into attackers.

    The honest handler always runs first (the attacker trains and spends its privacy budget
    like everyone else); for a training message on an attacking node its reply is then
    replaced by :func:`corrupt_reply`. Every other node, and every evaluation, is untouched.

    Parameters
    ----------
    attack : Attack
        What the attackers do.
    attackers : collection of int
        Node indices (:func:`node_index`) that attack.
    """

    def __init__(self, attack: Attack, *, attackers: Collection[int]) -> None:
        self.attack = attack
        self.attackers = frozenset(int(a) for a in attackers)

    def __repr__(self) -> str:
        return f"AttackMod({self.attack.label}, attackers={sorted(self.attackers)})"

    def __call__(self, msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(msg, ctxt)
        if msg.metadata.message_type != MessageType.TRAIN or node_index(ctxt) not in self.attackers:
            return reply
        logger.debug("node %s sends a %s reply", node_index(ctxt), self.attack.label)
        return corrupt_reply(reply, msg, self.attack)


class SilentMod:
    """Flower client mod: the listed nodes train but send back a refusal, so their update never arrives.

    The reference for "the global model equals the aggregate of the honest replies": a run
    where the attackers simply did not contribute.
    """

    def __init__(self, *, silent: Collection[int]) -> None:
        self.silent = frozenset(int(a) for a in silent)

    def __call__(self, msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(msg, ctxt)
        if msg.metadata.message_type != MessageType.TRAIN or node_index(ctxt) not in self.silent:
            return reply
        from medalloc.client.app import refusal

        return refusal(msg, protocol.Refusal.REQUEST_INVALID, "simulated: this node's update is withheld")


# ------------------------------------------------------------------ scoring the honest hospitals
def honest_wape(arrays: Mapping[str, np.ndarray], files: Collection[Path], config: RunConfig) -> float:
    """Pooled WAPE of the global model's median forecast on the test splits of ``files`` (the honest hospitals).

    Pooled (sum of absolute errors over sum of actuals across hospitals) rather than a mean
    of per-hospital WAPEs, so a small hospital's noisy ratio cannot dominate. Computed here,
    from the hospitals' files, because in an attacked run the federated evaluation would mix
    in the attackers' own test splits.
    """
    from medalloc_core.forecast.features import federation_window_spec
    from medalloc_core.forecast.models import ForecasterConfig, build_from_arrays
    from medalloc_core.tasks.forecasting.local import load_local_data, test_forecasts

    spec = federation_window_spec(
        history=config.history, horizon=config.horizon, targets=config.target_list, model=config.model
    )
    model = build_from_arrays(ForecasterConfig.for_spec(spec, model=config.model, hidden=config.hidden), arrays)
    levels = list(model.config.quantiles)
    median = levels.index(min(levels, key=lambda level: abs(level - 0.5)))
    error = scale = 0.0
    for path in files:
        y, q = test_forecasts(model, load_local_data(path, spec).dataset)  # (N, H, T), (N, H, T, Q)
        error += float(np.abs(y - q[..., median]).sum())
        scale += float(np.abs(y).sum())
    return error / scale if scale > 0 else float("nan")
