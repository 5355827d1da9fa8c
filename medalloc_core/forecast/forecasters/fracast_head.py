"""fracast frozen plus a federated head: it starts as fracast exactly and learns what fracast does not see.

``fracast`` (PyPI, Apache-2.0, weights in its wheel; the optional extra ``zeroshot``) forecasts
each series alone from its own past. A hospital knows more: the other target of the same unit
(admissions lead census), the weekday of each forecast day, the long weekly view and the
region's released totals (``WindowSpec.context``). :class:`FracastHead` keeps fracast frozen and
trains a small network (:class:`HeadNet`) that reads those window features beside fracast's nine
quantiles and corrects them: it shifts the median and stretches the lower and upper bands.
Its last layer starts at zero, so the untrained model *is* fracast zero-shot, bit for bit.

Training is plain Adam on the pinball loss of the heads only; fracast's forecasts of every
training window are computed once (``FracastBackbone``, cached by the context's content). On a
node the head trains on the node's released counts (``privacy.release``), so every round is
post-processing. The round with the lowest pinball on the released validation days is kept, and
the start (fracast itself) is kept unless that round beats it by more than the validation noise
(``margin`` standard errors of the paired difference, over blocks of ``H`` origins so that the
overlapping windows do not count as independent): where the release is too noisy or too short
to learn from, the model stays what a hospital would pick without the federation.

``mode`` chooses who trains a head: ``"federated"`` (FedAvg of the nodes' heads, weighted by
their windows: the federation's maths without Flower), ``"local"`` (each hospital alone) or
``"centralized"`` (one head on every hospital's windows pooled). ``personal_epochs`` > 0 adds a
personal head per hospital after the federation: a copy fine-tuned on the hospital's own
windows, kept only where it beats the federated head on its own validation days by more than
the noise.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from medalloc_core.forecast.features import WindowSet, WindowSpec
from medalloc_core.forecast.forecasters.base import Forecaster, HospitalData, Origins, pooled_windows, unit_series
from medalloc_core.forecast.forecasters.federated import fedavg
from medalloc_core.forecast.metrics import DEFAULT_QUANTILES
from medalloc_core.forecast.models import pinball_loss_per_sample
from medalloc_core.forecast.selection import KEEP_START_MARGIN, beats, block_losses, origin_blocks

logger = logging.getLogger(__name__)

__all__ = ["FracastBackbone", "FracastHead", "HeadNet"]

MODES = ("federated", "local", "centralized")
MISSING = "the fracast backbone needs the optional extra: python -m pip install 'medalloc[zeroshot]'"


class FracastBackbone:
    """The frozen fracast model, its forecasts cached by the exact context they were made from.

    One instance may serve several forecasters (a benchmark's federated, local and centralized
    heads read the same contexts): a context's forecast is computed once.

    Parameters
    ----------
    context : int, default 512
        Most recent periods given to fracast (it reads up to 2,048).
    weights : {"w8", "fp32"}, default "w8"
        The bundled int8 checkpoint (what ``fracast`` loads by default) or full precision.
    """

    def __init__(self, context: int = 512, weights: str = "w8") -> None:
        self.context = context
        self.weights = weights
        self._model: Any = None
        self._cache: dict[tuple[int, bytes], np.ndarray] = {}

    @staticmethod
    def available() -> bool:
        """True when the optional ``fracast`` package is installed."""
        return importlib.util.find_spec("fracast") is not None

    @property
    def levels(self) -> np.ndarray:
        """fracast's quantile levels (0.1, ..., 0.9)."""
        return np.round(np.asarray(self.model.quantiles, dtype=float), 6)

    @property
    def model(self) -> Any:
        if self._model is None:
            if not self.available():
                raise ImportError(MISSING)
            from fracast import FracastModel

            self._model = FracastModel.from_pretrained(weights=self.weights, device="cpu")
        return self._model

    def save(self, path: Path) -> None:
        """Write the cached forecasts to ``path`` (``.npz``: context digests and forecasts), for a later run."""
        keys = sorted(self._cache)
        arrays: dict[str, np.ndarray] = {
            "horizon": np.array([h for h, _ in keys], dtype=np.int64),
            "digest": np.array([d.hex() for _, d in keys], dtype=str),
        }
        arrays |= {f"f{i}": self._cache[k] for i, k in enumerate(keys)}
        savez: Any = np.savez  # numpy's stubs type **kwds as its own keyword options
        savez(path, **arrays)

    def load(self, path: Path) -> None:
        """Add the forecasts a ``save`` wrote (same weights and context length: the caller's to ensure)."""
        with np.load(path, allow_pickle=False) as data:
            for i, (h, d) in enumerate(zip(data["horizon"], data["digest"])):
                self._cache[(int(h), bytes.fromhex(str(d)))] = data[f"f{i}"]

    def forecast(self, series: np.ndarray, ends: Sequence[int], horizon: int) -> np.ndarray:
        """``(N, H, 9)`` fracast quantiles of ``series[:end]`` for every ``end`` in ``ends`` (1-D ``series``)."""
        out: list[np.ndarray | None] = [None] * len(ends)
        todo: list[tuple[int, tuple[int, bytes], np.ndarray]] = []
        for k, end in enumerate(ends):
            ctx = np.asarray(series[max(0, end - self.context) : end], dtype=np.float32)
            key = (horizon, hashlib.blake2b(ctx.tobytes(), digest_size=16).digest())
            if key in self._cache:
                out[k] = self._cache[key]
            else:
                todo.append((k, key, ctx))
        for start in range(0, len(todo), 256):
            chunk = todo[start : start + 256]
            width = max(len(c) for _, _, c in chunk)
            batch = np.full((len(chunk), width), np.nan, dtype=np.float32)  # left-padded: NaN is masked
            for row, (_, _, ctx) in enumerate(chunk):
                batch[row, width - len(ctx) :] = ctx
            with torch.inference_mode():
                pred = np.asarray(self.model.forecast_batch(batch, horizon=horizon), dtype=np.float64)
            for row, (k, key, _) in enumerate(chunk):
                out[k] = self._cache[key] = pred[row]
        if not out:
            return np.empty((0, horizon, len(self.levels)))
        return np.stack([o for o in out if o is not None])

    def windows(self, hospital: HospitalData, windows: WindowSet) -> np.ndarray:
        """``(N, H, T, 9)`` fracast quantiles for ``windows`` of ``hospital``, in each window's units.

        The context is the hospital's own series up to the window's origin (the day before its
        first target day), gaps interpolated as ``unit_series`` does.
        """
        spec = hospital.spec.resolved(hospital.records.frequency)
        assert spec.horizon is not None and windows.loc is not None and windows.scale is not None
        out = np.empty((len(windows), spec.horizon, len(spec.targets), len(self.levels)))
        if not len(windows):
            return out
        for _, rows, series, dates in unit_series(hospital.records, spec.targets, Origins.of(windows)):
            ends = dates.get_indexer(pd.DatetimeIndex(windows.target_start[rows]))
            assert (ends >= 0).all(), "a window's origin is off its unit's calendar"
            for t in range(series.shape[1]):
                out[rows, :, t, :] = self.forecast(series[:, t], ends, spec.horizon)
        loc, scale = windows.loc[:, None, :, None], windows.scale[:, None, :, None]
        return (out - loc) / scale


class HeadNet(nn.Module):
    """The correction: window features and fracast's quantiles -> shifted median, stretched bands.

    ``x``: ``(B, L, F)`` the window's features (window units); ``f``: ``(B, H, T, 9)`` fracast's
    quantiles in the same units. fracast's levels at ``level_index``, sorted (as the zero-shot
    adapter gives them), are ``f_q``, their median ``m`` (position ``median_position``). Output
    ``(B, H, T, Q)``: for each (day, target), the median ``m + d`` and every other level
    ``m + d + (f_q - m) * exp(s)``, with ``s`` the lower or upper band's log-stretch (within
    +-``max_stretch``). ``d`` and ``s`` come from one hidden layer over everything; the last layer
    starts at zero, so an untrained head returns fracast's quantiles exactly, and they never cross.
    """

    def __init__(
        self,
        *,
        history: int,
        n_features: int,
        horizon: int,
        n_targets: int,
        level_index: Sequence[int],
        median_position: int,
        hidden: int = 32,
        learn_spread: bool = True,
        max_stretch: float = 1.0,
    ) -> None:
        super().__init__()
        self.horizon, self.n_targets = horizon, n_targets
        self.level_index: torch.Tensor
        self.register_buffer("level_index", torch.tensor(list(level_index), dtype=torch.long), persistent=False)
        self.median_position = median_position
        self.learn_spread = learn_spread
        self.max_stretch = max_stretch
        self.hidden = nn.Linear(history * n_features + horizon * n_targets * 9, hidden)  # 9: fracast's levels
        self.out = nn.Linear(hidden, horizon * n_targets * 3)  # (shift, lower stretch, upper stretch)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        B, H, T = x.shape[0], self.horizon, self.n_targets
        z = torch.nn.functional.gelu(self.hidden(torch.cat([x.flatten(1), f.flatten(1)], dim=1)))
        shift, low, high = self.out(z).view(B, H, T, 3).unbind(-1)  # each (B, H, T)
        base = torch.sort(f.index_select(-1, self.level_index), dim=-1).values  # (B, H, T, Q)
        median = base[..., self.median_position]  # (B, H, T)
        chosen = base - median.unsqueeze(-1)  # <= 0 below the median, >= 0 above
        if self.learn_spread:
            below = torch.exp(self.max_stretch * torch.tanh(low)).unsqueeze(-1)
            above = torch.exp(self.max_stretch * torch.tanh(high)).unsqueeze(-1)
            chosen = torch.where(chosen < 0, chosen * below, chosen * above)
        return median.unsqueeze(-1) + shift.unsqueeze(-1) + chosen


@dataclass
class _Windows:
    """One hospital's windows for the head: features, fracast's quantiles (window units) and targets."""

    x: torch.Tensor  # (N, L, F)
    f: torch.Tensor  # (N, H, T, 9)
    y: torch.Tensor  # (N, H, T)
    block: np.ndarray  # (N,) str: unit and H-day block of the origin (the validation noise's unit)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @staticmethod
    def pool(parts: Sequence[_Windows]) -> _Windows:
        return _Windows(
            torch.cat([p.x for p in parts]),
            torch.cat([p.f for p in parts]),
            torch.cat([p.y for p in parts]),
            np.concatenate([p.block for p in parts]),
        )


def _every(windows: WindowSet, stride: int) -> WindowSet:
    """The windows whose origin day (days since 1970) is a multiple of ``stride``: one origin in ``stride``."""
    days = windows.target_start.astype("datetime64[D]").astype(np.int64)
    return windows.select(days % stride == 0)


class FracastHead(Forecaster):
    """fracast, frozen, plus a head trained federatedly (or locally, or pooled) on what fracast does not read.

    Parameters
    ----------
    mode : {"federated", "local", "centralized"}, default "federated"
        Who trains the head (module docstring).
    rounds : int, default 20
        FedAvg rounds (federated) or epochs (local, centralized); the best kept on validation.
    local_epochs : int, default 1
        Epochs per node and round (federated).
    lr : float, default 1e-3
        Adam's learning rate.
    hidden : int, default 8
        Width of the head's one hidden layer.
    context : sequence of str, default ("region", "weeks")
        The window's context channels the head reads (``WindowSpec.context``; ``"region"`` needs
        ``region_<target>`` columns, ``medalloc_core.forecast.region``).
    learn_spread : bool, default True
        Also learn how far the bands reach (else only the median moves).
    stride : int, default 7
        One training origin in ``stride`` days: neighbouring windows overlap in all but one day,
        and fracast's forecast of each costs a forward pass.
    val_stride : int, default 2
        The same for validation origins.
    margin : float, default 2.0
        Keep a trained head only when its validation pinball beats the start's by more than
        ``margin`` standard errors of the paired difference.
    personal_epochs : int, default 0
        Federated only: then fine-tune a personal copy per hospital for up to this many epochs.
    batch_size : int, default 32
    seed : int, default 0
    quantiles : sequence of float, default (0.1, 0.5, 0.9)
        Among fracast's levels 0.1, ..., 0.9; 0.5 must be one of them.
    backbone : FracastBackbone or None, default None
        A shared backbone (and its cache); ``None`` builds one with its defaults.

    Attributes
    ----------
    head_ : HeadNet                the federated / centralized head (local: absent)
    heads_ : dict                  per hospital, its own head (local, or personal heads kept)
    best_round_ : int or dict      the round (epoch) kept, 0 = fracast unchanged
    """

    def __init__(
        self,
        mode: str = "federated",
        rounds: int = 20,
        local_epochs: int = 1,
        lr: float = 1e-3,
        hidden: int = 8,
        context: Sequence[str] = ("region", "weeks"),
        learn_spread: bool = True,
        stride: int = 7,
        val_stride: int = 2,
        margin: float = KEEP_START_MARGIN,
        personal_epochs: int = 0,
        batch_size: int = 32,
        seed: int = 0,
        quantiles: Sequence[float] = DEFAULT_QUANTILES,
        backbone: FracastBackbone | None = None,
    ) -> None:
        self.mode = mode
        self.rounds = rounds
        self.local_epochs = local_epochs
        self.lr = lr
        self.hidden = hidden
        self.context = tuple(context)
        self.learn_spread = learn_spread
        self.stride = stride
        self.val_stride = val_stride
        self.margin = margin
        self.personal_epochs = personal_epochs
        self.batch_size = batch_size
        self.seed = seed
        self.quantiles = tuple(quantiles)
        self.backbone = backbone

    def _check_params(self) -> None:
        super()._check_params()
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r}; choose one of {MODES}")
        if min(self.rounds, self.local_epochs, self.stride, self.val_stride, self.batch_size) < 1:
            raise ValueError("rounds, local_epochs, stride, val_stride and batch_size must be >= 1")
        if self.personal_epochs < 0 or self.margin < 0:
            raise ValueError(f"personal_epochs={self.personal_epochs} and margin={self.margin} must be >= 0")
        if not np.any(np.isclose(self.quantiles, 0.5)):
            raise ValueError(f"quantiles {self.quantiles} must include the median 0.5")

    # -- data
    def _spec(self, spec: WindowSpec) -> WindowSpec:
        return replace(spec, scaling="window", context=self.context)

    def _windows(self, hospital: HospitalData, windows: WindowSet) -> _Windows:
        assert self.backbone_ is not None
        spec = hospital.spec.resolved(hospital.records.frequency)
        assert spec.horizon is not None
        f = self.backbone_.windows(hospital, windows)
        block = origin_blocks(hospital.name, windows, spec.horizon)
        return _Windows(windows.X, torch.from_numpy(f.astype(np.float32)), windows.y, block)

    def _new_head(self, hospital: HospitalData) -> HeadNet:
        ds = hospital.dataset(self._spec(hospital.spec))
        assert ds.spec.history is not None and ds.spec.horizon is not None
        levels = self.backbone_.levels
        torch.manual_seed(self.seed)  # the hidden layer's draw; the zero last layer makes the start exact anyway
        return HeadNet(
            history=ds.spec.history,
            n_features=ds.n_features,
            horizon=ds.spec.horizon,
            n_targets=ds.n_targets,
            level_index=[int(np.argmin(np.abs(levels - q))) for q in self.quantiles],
            median_position=int(np.argmin(np.abs(np.asarray(self.quantiles) - 0.5))),
            hidden=self.hidden,
            learn_spread=self.learn_spread,
        )

    # -- training
    def _losses(self, head: HeadNet, data: _Windows) -> torch.Tensor:
        with torch.no_grad():
            return pinball_loss_per_sample(head(data.x, data.f), data.y, self.quantiles)

    def _epoch(self, head: HeadNet, data: _Windows, seed: int) -> None:
        opt = torch.optim.Adam(head.parameters(), lr=self.lr)  # fresh each call, as a FedAvg node's would be
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
        for i in range(0, len(data), self.batch_size):
            idx = order[i : i + self.batch_size]
            loss = pinball_loss_per_sample(head(data.x[idx], data.f[idx]), data.y[idx], self.quantiles).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    def _better(self, candidate: torch.Tensor, start: torch.Tensor, blocks: np.ndarray) -> bool:
        """Candidate validation losses beat the start's by more than ``margin`` block standard errors."""
        return beats(block_losses(candidate.numpy(), blocks), block_losses(start.numpy(), blocks), self.margin)

    def _train(self, head: HeadNet, train: Mapping[str, _Windows], val: _Windows, epochs: int) -> int:
        """FedAvg of one head over ``train`` (one group: plain training); returns the round kept (0: the start)."""
        groups = {n: w for n, w in train.items() if len(w)}
        if not groups or not len(val):
            return 0
        start_losses = self._losses(head, val)
        best_state, best_loss, best_round = copy.deepcopy(head.state_dict()), float(start_losses.mean()), 0
        for r in range(1, epochs + 1):
            states, weights = [], []
            for k, (_, data) in enumerate(groups.items()):
                local = copy.deepcopy(head)
                for e in range(self.local_epochs):
                    self._epoch(local, data, self.seed + 1000 * r + 10 * e + 7919 * k)
                states.append(local.state_dict())
                weights.append(float(len(data)))
            head.load_state_dict(fedavg(states, weights))
            loss = float(self._losses(head, val).mean())
            if loss < best_loss:
                best_state, best_loss, best_round = copy.deepcopy(head.state_dict()), loss, r
        head.load_state_dict(best_state)
        logger.info(
            "head: validation pinball %.4f at the start, %.4f at round %d of %d",
            start_losses.mean(),
            best_loss,
            best_round,
            epochs,
        )
        if best_round and not self._better(self._losses(head, val), start_losses, val.block):
            logger.info("head: round %d is within the validation noise of the start; keeping the start", best_round)
            head.load_state_dict(self._new_head_like(head).state_dict())
            return 0
        return best_round

    def _new_head_like(self, head: HeadNet) -> HeadNet:
        fresh = copy.deepcopy(head)
        nn.init.zeros_(fresh.out.weight)
        nn.init.zeros_(fresh.out.bias)
        return fresh

    def _fit(self, hospitals: Mapping[str, HospitalData]) -> None:
        self.backbone_ = self.backbone if self.backbone is not None else FracastBackbone()
        missing = [q for q in self.quantiles if not np.any(np.isclose(self.backbone_.levels, q))]
        if missing:
            raise ValueError(f"fracast forecasts levels {self.backbone_.levels.tolist()}; {missing} are not among them")
        train, val = {}, {}
        for name, h in hospitals.items():
            ds = h.dataset(self._spec(h.spec))
            train[name] = self._windows(h, _every(ds.train, self.stride))
            val[name] = self._windows(h, _every(ds.val, self.val_stride))
        first = next(iter(hospitals.values()))
        self.heads_: dict[str, HeadNet] = {}
        self.best_round_: int | dict[str, int]
        if self.mode == "local":
            self.best_round_ = {}
            for name in hospitals:
                head = self._new_head(hospitals[name])
                self.best_round_[name] = self._train(head, {name: train[name]}, val[name], self.rounds)
                self.heads_[name] = head
            return
        self.head_ = self._new_head(first)
        groups = train if self.mode == "federated" else {"pooled": _Windows.pool(list(train.values()))}
        pooled_val = _Windows.pool(list(val.values()))
        epochs = self.rounds * (1 if self.mode == "federated" else self.local_epochs)
        self.best_round_ = self._train(self.head_, groups, pooled_val, epochs)
        if self.mode == "federated" and self.personal_epochs:
            for name in hospitals:
                personal = copy.deepcopy(self.head_)
                if self._personal(personal, train[name], val[name]):
                    self.heads_[name] = personal

    def _personal(self, head: HeadNet, train: _Windows, val: _Windows) -> bool:
        """Fine-tune ``head`` alone; True when its best epoch beats the federated head beyond the noise."""
        if not len(train) or not len(val):
            return False
        start_state, start_losses = copy.deepcopy(head.state_dict()), self._losses(head, val)
        best_state, best_loss = start_state, float(start_losses.mean())
        for e in range(1, self.personal_epochs + 1):
            self._epoch(head, train, self.seed + 500_000 + e)
            loss = float(self._losses(head, val).mean())
            if loss < best_loss:
                best_state, best_loss = copy.deepcopy(head.state_dict()), loss
        head.load_state_dict(best_state)
        return best_state is not start_state and self._better(self._losses(head, val), start_losses, val.block)

    # -- forecasting
    def _predict(self, hospital: HospitalData, origins: Origins) -> np.ndarray:
        spec = self._spec(hospital.spec)
        ds = hospital.dataset(spec)
        windows = pooled_windows([ds.train, ds.val, ds.test])
        index = {
            (str(u), np.datetime64(d, "ns")): i for i, (u, d) in enumerate(zip(windows.units, windows.target_start))
        }
        try:
            rows = np.array(
                [index[(str(u), np.datetime64(d, "ns"))] for u, d in zip(origins.units, origins.target_start)],
                dtype=np.int64,
            )
        except KeyError as exc:
            raise ValueError(
                f"{hospital.name}: no complete window for origin {exc.args[0]} (too early, or its targets were missing)"
            ) from None
        chosen = windows.select(rows)
        data = self._windows(hospital, chosen)
        head = self.heads_.get(hospital.name, getattr(self, "head_", None))
        if head is None:
            raise ValueError(f"FracastHead (mode 'local') was not fitted on hospital {hospital.name!r}")
        with torch.no_grad():
            pred = head(data.x, data.f).numpy()
        return ds.to_original(pred, chosen)
