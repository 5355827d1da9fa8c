"""Supervised windows for the forecaster: calendar covariates, a time-ordered split and per-series scaling.

One hospital's records become ``(X, y)`` windows: ``X`` is ``(N, L, F)`` (the scaled target
series plus calendar covariates over the last ``L`` periods) and ``y`` is ``(N, H, T)`` (the
scaled targets over the next ``H`` periods). Each unit's series is split in time: the last
``test_periods`` are test, the ``val_periods`` before them validation, everything earlier
training. A window belongs to a split only when *all* its target periods fall inside it, so no
training target lies in validation/test and no validation target lies in test. Scaling
statistics come from the training periods only. History may reach back into earlier splits:
at forecast time the model sees the recent past too, so that is not leakage.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from medalloc_core.contract import ADMISSIONS, CENSUS, DATE, UNIT, Frequency, UnitRecords

logger = logging.getLogger(__name__)

# (history L, horizon H, validation periods, test periods) when the spec leaves them unset.
_DEFAULTS: dict[Frequency, tuple[int, int, int, int]] = {
    Frequency.DAILY: (56, 14, 56, 56),  # 8 weeks of history, 2 weeks ahead, 8 + 8 weeks held out
    Frequency.WEEKLY: (26, 4, 13, 13),  # half a year of history, a month ahead, a quarter each held out
}
_DAYS_PER_YEAR = 365.25
SCALINGS = ("series", "window")
SEASON = 7  # the weekly cycle the window scaling measures its spread over (daily data)
PROFILE_WEEKS = 26  # the weekly profile channel averages up to half a year before the origin
YEAR = 364  # the year-ago channel looks 52 weeks back (same weekday)
# Context channels a window-scaled spec may add, one per target each (WindowSpec.context):
# "year_ago": the series 52 weeks earlier around the forecast days, relative to its level then;
# "region": the region's released total (other hospitals; REGION_PREFIX + target columns of the
# records) over the window, scaled by its own window statistics; "weeks": the weekly means of the
# L weeks before the origin (a multi-scale view: about half a year for L = 28) in window units.
# A spec keeps them in this order whatever order it is given, so "weeks" is always the first group
# (the hybrid's level is smoothed from it: ForecasterConfig.level).
CONTEXTS = ("weeks", "year_ago", "region")
REGION_PREFIX = "region_"
# The WindowSpec fields a federation varies: sent to nodes each round and stored in model files.
WIRE_KEYS = ("history", "horizon", "targets", "val_periods", "test_periods")


@dataclass(frozen=True)
class WindowSpec:
    """What to forecast from what, and how to split it.

    Parameters
    ----------
    history, horizon
        ``L`` and ``H`` in periods. ``None`` picks the frequency default: daily ``L=56, H=14``,
        weekly ``L=26, H=4``.
    targets
        Count columns to forecast (default admissions and census); each must be in the records.
    day_of_week
        ``"sincos"`` (2 channels, default), ``"onehot"`` (7 channels) or ``"none"``. Ignored for
        weekly data (every row is a Monday).
    year_position
        Add sin/cos of the position in the year (2 channels; default on).
    holidays
        Dates flagged by a 0/1 holiday channel; empty (default) adds no channel. For weekly data
        a week is flagged when any of its days is a holiday.
    missing_flag
        Add a 0/1 channel marking periods that were missing and filled by interpolation
        (default on; the channel is added even when nothing is missing, so F does not depend on
        the data).
    val_periods, test_periods
        Held-out periods at the end of every unit's series. ``None``: daily 56/56, weekly 13/13.
    scale_floor
        Lower bound on a series' (or a window's) scale, in patients/beds (default 1.0): a
        near-constant series (a 4-bed unit that is always full) would otherwise be divided by ~0.
    scaling
        ``"series"`` (default): every (unit, target) series is standardised with its
        training-period mean and std (``SeriesScaler``). ``"window"``: every window is
        normalised by its own inputs only: ``loc`` = mean of its last 7 input periods,
        ``scale`` = mean absolute seasonal difference ``|x_t - x_{t-7}|`` over the window
        (floored at ``scale_floor``); its targets use the same ``loc``/``scale``. No statistic
        is fitted on the training periods, so a record changes only the windows that contain
        it (what per-window DP clipping assumes), and a hospital with a short history needs no
        training period to be scaled. The hybrid model expects it.
    """

    history: int | None = None
    horizon: int | None = None
    targets: tuple[str, ...] = (ADMISSIONS, CENSUS)
    day_of_week: str = "sincos"
    year_position: bool = True
    holidays: tuple[pd.Timestamp | str, ...] = ()  # normalised to Timestamps in __post_init__
    missing_flag: bool = True
    val_periods: int | None = None
    test_periods: int | None = None
    scale_floor: float = 1.0
    scaling: str = "series"
    context: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.targets:
            raise ValueError("WindowSpec.targets is empty; name at least one count column, e.g. ('census',)")
        if self.day_of_week not in ("sincos", "onehot", "none"):
            raise ValueError(f"WindowSpec.day_of_week={self.day_of_week!r}; use 'sincos', 'onehot' or 'none'")
        for name in ("history", "horizon", "val_periods", "test_periods"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"WindowSpec.{name}={value}; it must be a positive number of periods")
        if self.scaling not in SCALINGS:
            raise ValueError(f"WindowSpec.scaling={self.scaling!r}; use one of {SCALINGS}")
        if self.scale_floor <= 0:
            raise ValueError(f"WindowSpec.scale_floor={self.scale_floor}; it must be > 0")
        object.__setattr__(self, "holidays", tuple(pd.Timestamp(d).normalize() for d in self.holidays))
        context = tuple(self.context)
        unknown = [c for c in context if c not in CONTEXTS]
        if unknown or len(set(context)) != len(context):
            raise ValueError(f"WindowSpec.context={context!r}; use distinct names from {CONTEXTS}")
        if context and self.scaling != "window":
            raise ValueError("WindowSpec.context needs scaling='window' (the hybrid model's channels)")
        object.__setattr__(self, "context", tuple(sorted(context, key=CONTEXTS.index)))

    def resolved(self, frequency: Frequency) -> WindowSpec:
        """Return a copy with every ``None`` replaced by the default for ``frequency``."""
        L, H, val, test = _DEFAULTS[frequency]
        return replace(
            self,
            history=self.history or L,
            horizon=self.horizon or H,
            val_periods=self.val_periods or val,
            test_periods=self.test_periods or test,
        )

    def to_dict(self) -> dict[str, Any]:
        """The federation's fields (``WIRE_KEYS``) as JSON-able values; the spec must be resolved."""
        missing = [k for k in WIRE_KEYS if getattr(self, k) is None]
        if missing:
            raise ValueError(f"window spec has unset {missing}; pass spec.resolved(frequency)")
        out = {k: list(self.targets) if k == "targets" else getattr(self, k) for k in WIRE_KEYS}
        if self.scaling != "series":  # only when set, so files and messages of series-scaled models are unchanged
            out["scaling"] = self.scaling
        if self.context:  # likewise only when set
            out["context"] = list(self.context)
        return out

    @classmethod
    def from_dict(cls, raw: object) -> WindowSpec:
        """Inverse of ``to_dict``: ``WIRE_KEYS`` (plus ``scaling`` when it is not "series").

        Whole positive numbers and target names.

        Raises ``ValueError`` naming the offending key; calendar options take their defaults.
        """
        if not isinstance(raw, Mapping) or not set(WIRE_KEYS) <= set(raw) <= {*WIRE_KEYS, "scaling", "context"}:
            got = sorted(raw) if isinstance(raw, Mapping) else type(raw).__name__
            raise ValueError(
                f"a window spec has exactly the keys {list(WIRE_KEYS)} (and optionally 'scaling'); got {got}"
            )
        values: dict[str, Any] = {}
        for key in WIRE_KEYS:
            value = raw[key]
            if key == "targets":
                if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
                    raise ValueError(f"window spec 'targets' must be a list of column names, got {value!r}")
                values[key] = tuple(value)
            elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"window spec '{key}' must be a whole number >= 1, got {value!r}")
            else:
                values[key] = value
        if "scaling" in raw:
            if raw["scaling"] not in SCALINGS:
                raise ValueError(f"window spec 'scaling' must be one of {SCALINGS}, got {raw['scaling']!r}")
            values["scaling"] = raw["scaling"]
        if "context" in raw:
            context = raw["context"]
            if not isinstance(context, list | tuple) or not all(isinstance(c, str) and c in CONTEXTS for c in context):
                raise ValueError(f"window spec 'context' must be a list of names from {CONTEXTS}, got {context!r}")
            values["context"] = tuple(context)
        return cls(**values)

    def covariate_names(self, frequency: Frequency) -> tuple[str, ...]:
        """Names of the calendar/missing covariate channels, in feature order."""
        names: list[str] = []
        if frequency is Frequency.DAILY and self.day_of_week == "sincos":
            names += ["dow_sin", "dow_cos"]
        elif frequency is Frequency.DAILY and self.day_of_week == "onehot":
            names += [f"dow_{d}" for d in range(7)]
        if self.year_position:
            names += ["year_sin", "year_cos"]
        if self.holidays:
            names.append("holiday")
        if self.missing_flag:
            names.append("was_missing")
        return tuple(names)

    def feature_names(self, frequency: Frequency) -> tuple[str, ...]:
        """All ``F`` input channels: the scaled targets first, then the covariates.

        Under ``scaling="window"`` each target also brings ``{t}_profile`` (its weekly profile
        over up to the last ``PROFILE_WEEKS`` weeks before the origin, in window units, laid
        along the window's days) and ``{t}_log_level`` (log1p of the window's ``loc`` / 5,
        constant along the window), in that order after the scaled targets.
        """
        names = tuple(f"{t}_scaled" for t in self.targets)
        if self.scaling == "window":
            names += tuple(f"{t}_profile" for t in self.targets) + tuple(f"{t}_log_level" for t in self.targets)
            for c in self.context:
                names += tuple(f"{t}_{c}" for t in self.targets)
        return names + self.covariate_names(frequency)


@dataclass(frozen=True)
class SeriesScaler:
    """Per-(unit, target) standardisation fitted on the training periods.

    ``mean[unit]`` and ``scale[unit]`` are ``(T,)`` arrays; scaled = (value - mean) / scale.
    ``scale`` is the training-period standard deviation, floored at ``WindowSpec.scale_floor``,
    so one global model sees a 30-bed and a 1,500-bed hospital on the same footing.
    """

    targets: tuple[str, ...]
    mean: dict[str, np.ndarray]
    scale: dict[str, np.ndarray]

    def transform(self, values: np.ndarray, unit: str) -> np.ndarray:
        """Scale ``(..., T)`` raw values of one unit."""
        return (values - self.mean[unit]) / self.scale[unit]

    def inverse_transform(self, values: np.ndarray, units: Sequence[str]) -> np.ndarray:
        """Back to patients/beds.

        ``values`` is ``(N, H, T)`` or ``(N, H, T, Q)`` in scaled space with ``units[i]`` the unit
        of row ``i``. Scales are positive, so quantile order is preserved.
        """
        values = np.asarray(values, dtype=np.float64)
        if len(units) != values.shape[0]:
            raise ValueError(f"inverse_transform got {values.shape[0]} rows but {len(units)} units")
        mean = np.stack([self.mean[u] for u in units])  # (N, T)
        scale = np.stack([self.scale[u] for u in units])  # (N, T)
        shape = (values.shape[0], 1, values.shape[2]) + (1,) * (values.ndim - 3)
        return values * scale.reshape(shape) + mean.reshape(shape)


@dataclass(frozen=True)
class WindowSet:
    """Supervised windows of one split.

    ``X``: ``(N, L, F)`` float32; ``y``: ``(N, H, T)`` float32 in scaled space; ``units[i]`` the
    unit of window ``i``; ``target_start[i]`` the date of its first target period.
    """

    X: torch.Tensor
    y: torch.Tensor
    units: np.ndarray
    target_start: np.ndarray
    loc: np.ndarray | None = None  # (N, T) per-window location when the spec scales by window
    scale: np.ndarray | None = None  # (N, T) per-window scale (> 0)

    def __len__(self) -> int:
        return int(self.X.shape[0])

    def select(self, rows: np.ndarray) -> WindowSet:
        """The windows at ``rows`` (indices or a boolean mask), in that order."""
        idx = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows, dtype=np.int64)
        t = torch.from_numpy(idx)
        return WindowSet(
            self.X[t],
            self.y[t],
            self.units[idx],
            self.target_start[idx],
            None if self.loc is None else self.loc[idx],
            None if self.scale is None else self.scale[idx],
        )

    def target_dates(self, frequency: Frequency) -> np.ndarray:
        """``(N, H)`` datetime64 array: the date of every target period."""
        H = self.y.shape[1]
        step = np.timedelta64(frequency.period.days, "D")
        return self.target_start[:, None] + np.arange(H)[None, :] * step


@dataclass(frozen=True)
class HospitalDataset:
    """One hospital's windows, split in time, with the fitted scalers and the spec that made them."""

    train: WindowSet
    val: WindowSet
    test: WindowSet
    scaler: SeriesScaler | None  # None under scaling="window": nothing is fitted on the data
    spec: WindowSpec  # resolved: no None left
    frequency: Frequency
    feature_names: tuple[str, ...]

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def to_original(self, values: np.ndarray, windows: WindowSet) -> np.ndarray:
        """``(N, H, T)`` or ``(N, H, T, Q)`` model-space values of ``windows`` back in patients/beds.

        Uses the windows' own ``loc``/``scale`` under ``scaling="window"`` and the series
        scaler otherwise. Scales are positive, so quantile order is preserved.
        """
        values = np.asarray(values, dtype=np.float64)
        if windows.loc is None or windows.scale is None:
            assert self.scaler is not None, "a series-scaled dataset carries its scaler"
            return self.scaler.inverse_transform(values, list(windows.units))
        if values.shape[0] != len(windows):
            raise ValueError(f"to_original got {values.shape[0]} rows for {len(windows)} windows")
        shape = (values.shape[0], 1, values.shape[2]) + (1,) * (values.ndim - 3)
        return values * windows.scale.reshape(shape) + windows.loc.reshape(shape)

    @property
    def n_targets(self) -> int:
        return len(self.spec.targets)


@dataclass(frozen=True)
class _Series:
    """One unit on a complete calendar: filled values, which periods were missing, covariates."""

    unit: str
    dates: pd.DatetimeIndex
    values: np.ndarray  # (n, T) float64, gaps interpolated
    missing: np.ndarray  # (n,) bool
    covariates: np.ndarray  # (n, C) float32
    region: np.ndarray | None = None  # (n, T) the region's released totals per day (NaN: not known)


def calendar_covariates(dates: pd.DatetimeIndex, spec: WindowSpec, frequency: Frequency) -> np.ndarray:
    """``(n, C)`` calendar channels for ``dates`` (without the missing flag), in ``covariate_names`` order."""
    columns: list[np.ndarray] = []
    if frequency is Frequency.DAILY and spec.day_of_week != "none":
        dow = dates.day_of_week.to_numpy()
        if spec.day_of_week == "sincos":
            columns += [np.sin(2 * np.pi * dow / 7), np.cos(2 * np.pi * dow / 7)]
        else:
            columns += [(dow == d).astype(np.float64) for d in range(7)]
    if spec.year_position:
        phase = 2 * np.pi * (dates.day_of_year.to_numpy() - 1) / _DAYS_PER_YEAR
        columns += [np.sin(phase), np.cos(phase)]
    if spec.holidays:
        holidays = pd.DatetimeIndex(spec.holidays)
        if frequency is Frequency.DAILY:
            flag = dates.isin(holidays)
        else:  # a week (dated its Monday) is a holiday week when any of its 7 days is one
            week_of = holidays - pd.to_timedelta(holidays.day_of_week, unit="D")
            flag = dates.isin(week_of)
        columns.append(np.asarray(flag, dtype=np.float64))
    if not columns:
        return np.zeros((len(dates), 0), dtype=np.float32)
    return np.stack(columns, axis=1).astype(np.float32)


def _fill(frame: pd.DataFrame, cuts: Sequence[int]) -> np.ndarray:
    """Linear interpolation within each segment between ``cuts``; a segment never borrows later data.

    Interpolating across a split boundary would put a validation value into a training
    window's history, so each segment is filled on its own (edges from its nearest observed
    value); a segment with nothing observed is carried forward from the past.
    """
    bounds = [0, *cuts, len(frame)]
    parts = [frame.iloc[a:b].interpolate(method="linear", limit_direction="both") for a, b in zip(bounds, bounds[1:])]
    return pd.concat(parts).ffill().to_numpy()  # the first period is always observed


def _complete_series(records: UnitRecords, spec: WindowSpec, *, split: bool = True) -> list[_Series]:
    """Reindex every unit to a complete calendar; interpolate gaps, never shift dates.

    With ``split`` gaps are filled within each of train/val/test separately (no data flows
    backwards across a boundary); without it (forecasting from the end of the data, when all
    of it is the past) the whole series is one segment.
    """
    missing_targets = [t for t in spec.targets if t not in records.count_columns]
    if missing_targets:
        raise ValueError(
            f"{records.source}: target column(s) {missing_targets} not in the records "
            f"(present: {records.count_columns}); set WindowSpec.targets to columns the file has"
        )
    freq = "D" if records.frequency is Frequency.DAILY else "W-MON"
    series = []
    for unit, frame in records.frame.groupby(UNIT, sort=True):
        frame = frame.set_index(DATE).sort_index()
        dates = pd.date_range(frame.index.min(), frame.index.max(), freq=freq)
        if not frame.index.isin(dates).all():
            raise ValueError(
                f"{records.source}: unit {unit!r} has dates off the {records.frequency.value} calendar "
                "(weekly records must be dated Mondays)"
            )
        full = frame[list(spec.targets)].astype("float64").reindex(dates)
        missing = full.isna().any(axis=1).to_numpy()
        if missing.any():
            logger.info(
                "unit %s: %d of %d periods missing, filled by linear interpolation", unit, missing.sum(), len(dates)
            )
        # Linear interpolation between the neighbouring observed periods; a count series has no
        # better local guess, and the was_missing channel tells the model which ones are guesses.
        filled = _fill(full, _boundaries(len(dates), spec, str(unit)) if split else ())
        cov = calendar_covariates(dates, spec, records.frequency)
        if spec.missing_flag:
            cov = np.concatenate([cov, missing[:, None].astype(np.float32)], axis=1)
        region = None
        if "region" in spec.context:
            columns = [REGION_PREFIX + t for t in spec.targets]
            if all(c in frame.columns for c in columns):
                region = frame[columns].astype("float64").reindex(dates).to_numpy()
        series.append(_Series(str(unit), dates, filled, missing, cov, region))
    return series


def _boundaries(n: int, spec: WindowSpec, unit: str) -> tuple[int, int]:
    """Index of the first validation and the first test period of a series of length ``n``."""
    assert spec.history and spec.horizon and spec.val_periods and spec.test_periods
    val_start = n - spec.test_periods - spec.val_periods
    test_start = n - spec.test_periods
    need = spec.history + spec.horizon
    if val_start < need or spec.val_periods < spec.horizon or spec.test_periods < spec.horizon:
        raise ValueError(
            f"unit {unit!r} has {n} periods; with L={spec.history}, H={spec.horizon}, "
            f"val={spec.val_periods}, test={spec.test_periods} it needs at least "
            f"{need + spec.val_periods + spec.test_periods} periods and val/test >= H; "
            "use shorter windows or fewer held-out periods"
        )
    return val_start, test_start


def _fit_scaler(series: Iterable[_Series], spec: WindowSpec) -> SeriesScaler:
    """Mean and floored std per (unit, target) over the training periods, observed values only."""
    mean, scale = {}, {}
    for s in series:
        val_start, _ = _boundaries(len(s.dates), spec, s.unit)
        observed = s.values[:val_start][~s.missing[:val_start]]
        if len(observed) == 0:
            raise ValueError(f"unit {s.unit!r} has no observed values in its training period")
        mean[s.unit] = observed.mean(axis=0)
        scale[s.unit] = np.maximum(observed.std(axis=0), spec.scale_floor)
    return SeriesScaler(spec.targets, mean, scale)


def _inputs(s: _Series, scaler: SeriesScaler) -> np.ndarray:
    """``(n, F)`` per-period features of series scaling: scaled targets then covariates."""
    return np.concatenate([scaler.transform(s.values, s.unit), s.covariates], axis=1).astype(np.float32)


def window_stats(history: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-window ``loc`` and ``scale`` from the inputs alone: ``(N, L, T)`` raw values -> two ``(N, T)``.

    ``loc`` is the mean of the last 7 periods (one week, so the weekday mix is balanced);
    ``scale`` the mean absolute seasonal difference ``|x_t - x_{t-7}|`` over the window (the
    MASE scale: how much the series moves beyond its weekly pattern), at least ``floor``.
    Windows shorter than two weeks use the lag-1 difference instead.
    """
    history = np.asarray(history, dtype=np.float64)
    lag = SEASON if history.shape[1] > SEASON else 1
    loc = history[:, -min(SEASON, history.shape[1]) :].mean(axis=1)
    spread = np.abs(history[:, lag:] - history[:, :-lag]).mean(axis=1)
    return loc, np.maximum(spread, floor)


def year_ago_channel(
    values: np.ndarray,
    starts: Sequence[int],
    history: int,
    horizon: int,
    floor: float,
    loc: np.ndarray,
    scale: np.ndarray,
) -> np.ndarray:
    """``(N, L, T)``: the series 52 weeks before, relative to its level then, in this window's units.

    Position ``j`` holds day ``t - L + j + H - 364``, so the last ``H`` positions are the year-ago
    days of the forecast days and the first ones lead up to them; every day read is before the
    origin ``t`` (364 > H). The year-ago values are taken relative to the mean of the year-ago
    week before the origin (``x / level - 1``) and multiplied by ``loc / scale``: last year's
    seasonal movement, in this window's units. Zeros when the series is not that long.
    """
    L, H, T = history, horizon, values.shape[1]
    out = np.zeros((len(starts), L, T))
    for i, t in enumerate(starts):
        first = t - L + H - YEAR
        if first < 0 or t - YEAR - SEASON < 0:
            continue
        level = np.maximum(values[t - YEAR - SEASON : t - YEAR].mean(axis=0), floor)  # (T,)
        out[i] = (values[first : first + L] / level - 1.0) * (loc[i] / scale[i])
    return out


def weeks_channel(
    values: np.ndarray, starts: Sequence[int], history: int, loc: np.ndarray, scale: np.ndarray
) -> np.ndarray:
    """``(N, L, T)``: position ``L - 1 - k`` holds the mean of the ``k``-th whole week before the origin.

    ``(mean - loc) / scale``: a long, coarse view (``L`` weeks) beside the window's ``L`` days. Weeks
    before the start of the series are zeros (the window's own level). Only days before the origin are read.
    """
    L, T = history, values.shape[1]
    out = np.zeros((len(starts), L, T))
    for i, t in enumerate(starts):
        weeks = min(L, t // SEASON)
        if weeks == 0:
            continue
        past = values[t - SEASON * weeks : t].reshape(weeks, SEASON, T).mean(axis=1)  # (weeks, T), oldest first
        out[i, L - weeks :] = (past - loc[i]) / scale[i]
    return out


def region_channel(region: np.ndarray | None, starts: Sequence[int], history: int, floor: float, T: int) -> np.ndarray:
    """``(N, L, T)``: the region's released totals over each window, scaled by their own window statistics.

    Reads only days before each origin (the region's release up to the day before the first
    forecast day); days not known (NaN) are carried from the nearest known earlier day, and a
    window with none known is zeros.
    """
    out = np.zeros((len(starts), history, T))
    if region is None:
        return out
    filled = pd.DataFrame(region).ffill().to_numpy()
    for i, t in enumerate(starts):
        if t - history < 0:
            continue
        raw = filled[t - history : t]
        if np.isnan(raw).any():
            continue
        rloc, rscale = window_stats(raw[None], max(floor, 1.0))
        out[i] = (raw - rloc[0]) / rscale[0]
    return out


def window_channels(
    values: np.ndarray,
    starts: Sequence[int],
    history: int,
    floor: float,
    *,
    context: Sequence[str] = (),
    horizon: int = 0,
    region: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The window-scaled target channels of windows whose first target period is ``starts[i]``.

    ``values`` is one unit's ``(n, T)`` raw series. Returns ``X`` ``(N, L, 3T)`` — the scaled
    targets, their long weekly profile and their log level (see ``WindowSpec.feature_names``) —
    and ``loc``, ``scale`` ``(N, T)``. Only periods before each start are read.
    """
    L, T = history, values.shape[1]
    N = len(starts)
    raw = np.stack([values[t - L : t] for t in starts]) if N else np.zeros((0, L, T))
    loc, scale = window_stats(raw, floor)
    scaled = (raw - loc[:, None, :]) / scale[:, None, :]
    profile = np.zeros((N, L, T))
    positions = np.arange(L)
    for i, t in enumerate(starts):
        weeks = min(PROFILE_WEEKS, t // SEASON)
        past = values[t - SEASON * weeks : t].reshape(weeks, SEASON, T)  # whole weeks ending at the origin
        weekly = (past - past.mean(axis=1, keepdims=True)).mean(axis=0)  # (7, T): week position 0 = day t - 7*weeks
        profile[i] = weekly[(positions - L) % SEASON] / scale[i]  # window day j is day t - L + j
    log_level = np.broadcast_to((np.log1p(np.maximum(loc, 0.0)) / 5.0)[:, None, :], (N, L, T))
    parts = [scaled, profile, log_level]
    for c in context:
        if c == "year_ago":
            parts.append(year_ago_channel(values, starts, L, horizon, floor, loc, scale))
        elif c == "weeks":
            parts.append(weeks_channel(values, starts, L, loc, scale))
        else:
            parts.append(region_channel(region, starts, L, floor, T))
    return np.concatenate(parts, axis=2), loc, scale


def _windows(s: _Series, scaler: SeriesScaler | None, spec: WindowSpec, lo: int, hi: int) -> WindowSet:
    """Windows whose H targets all lie in periods ``[lo, hi)`` and none of them was missing."""
    L, H = spec.history, spec.horizon
    assert L is not None and H is not None
    starts = [
        t for t in range(max(lo, L), hi - H + 1) if not s.missing[t : t + H].any()
    ]  # t = index of the first target period
    cov = s.covariates.astype(np.float32)
    loc = scale = None
    if scaler is None:  # window scaling: each window normalised by its own inputs
        channels, loc, scale = window_channels(
            s.values, starts, L, spec.scale_floor, context=spec.context, horizon=H, region=s.region
        )
        covariates = (
            np.stack([cov[t - L : t] for t in starts]) if starts else np.zeros((0, L, cov.shape[1]), np.float32)
        )
        X = np.concatenate([channels, covariates], axis=2)
        y = np.stack([s.values[t : t + H] for t in starts]) if starts else np.zeros((0, H, s.values.shape[1]))
        y = (y - loc[:, None, :]) / scale[:, None, :]
    else:
        feats = _inputs(s, scaler)
        targets = scaler.transform(s.values, s.unit)
        X = np.stack([feats[t - L : t] for t in starts]) if starts else np.zeros((0, L, feats.shape[1]), np.float32)
        y = np.stack([targets[t : t + H] for t in starts]) if starts else np.zeros((0, H, targets.shape[1]))
    return WindowSet(
        torch.from_numpy(X.astype(np.float32)),
        torch.from_numpy(y.astype(np.float32)),
        np.array([s.unit] * len(starts), dtype=object),
        s.dates[starts].to_numpy() if starts else np.array([], dtype="datetime64[ns]"),
        loc,
        scale,
    )


def _concat(sets: list[WindowSet]) -> WindowSet:
    window_scaled = all(w.loc is not None for w in sets)
    return WindowSet(
        torch.cat([w.X for w in sets]),
        torch.cat([w.y for w in sets]),
        np.concatenate([w.units for w in sets]),
        np.concatenate([w.target_start for w in sets]),
        np.concatenate([w.loc for w in sets if w.loc is not None]) if window_scaled and sets else None,
        np.concatenate([w.scale for w in sets if w.scale is not None]) if window_scaled and sets else None,
    )


def prepare_hospital(records: UnitRecords, spec: WindowSpec, *, scaler: SeriesScaler | None = None) -> HospitalDataset:
    """Turn one hospital's records into split, scaled, supervised windows.

    Parameters
    ----------
    records
        Validated unit records (daily or weekly).
    spec
        What to forecast; ``None`` fields take the defaults for ``records.frequency``.
    scaler
        Series scaling only: use this scaler instead of fitting one (e.g. the one fitted on the
        node's released counts, to window its true counts the way the model was trained).
        Refused under ``scaling="window"``, which fits nothing.

    Returns
    -------
    HospitalDataset
        ``train``/``val``/``test`` windows of every unit and the scaler fitted on training
        periods only (``None`` under window scaling).

    Raises
    ------
    ValueError
        A target column is absent, a unit's series is too short for the split, or dates are
        off the calendar.
    """
    spec = spec.resolved(records.frequency)
    series = _complete_series(records, spec)
    if spec.scaling == "window":
        # Each window is normalised by its own inputs: nothing is fitted, so no scaler to give.
        if scaler is not None:
            raise ValueError("a scaler was given but spec.scaling is 'window' (windows scale themselves)")
    elif scaler is None:
        scaler = _fit_scaler(series, spec)
    # else: a given scaler (e.g. fitted on the node's released counts, to score true counts with
    # the scaling the model was trained with) is used as is.
    parts: dict[str, list[WindowSet]] = {"train": [], "val": [], "test": []}
    for s in series:
        val_start, test_start = _boundaries(len(s.dates), spec, s.unit)
        parts["train"].append(_windows(s, scaler, spec, 0, val_start))
        parts["val"].append(_windows(s, scaler, spec, val_start, test_start))
        parts["test"].append(_windows(s, scaler, spec, test_start, len(s.dates)))
    return HospitalDataset(
        train=_concat(parts["train"]),
        val=_concat(parts["val"]),
        test=_concat(parts["test"]),
        scaler=scaler,
        spec=spec,
        frequency=records.frequency,
        feature_names=spec.feature_names(records.frequency),
    )


def forecast_inputs(records: UnitRecords, dataset: HospitalDataset) -> WindowSet:
    """The inference windows: the last ``L`` periods of every unit, to forecast the ``H`` after the data.

    ``y`` is empty (``(U, H, T)`` of NaN: the future is unknown); ``target_start`` is the
    period after each unit's last date. Scaling follows ``dataset.spec.scaling`` (the series
    scaler fitted on training periods, or each window's own statistics), so forecasts come back
    to beds/patients with ``dataset.to_original(values, windows)``.
    """
    spec = dataset.spec
    assert spec.history is not None and spec.horizon is not None
    series = _complete_series(records, spec, split=False)
    X, units, starts = [], [], []
    locs: list[np.ndarray] = []
    scales: list[np.ndarray] = []
    for s in series:
        if dataset.scaler is not None and s.unit not in dataset.scaler.mean:
            raise ValueError(f"unit {s.unit!r} was not in the data the scaler was fitted on")
        if len(s.dates) < spec.history:
            raise ValueError(f"unit {s.unit!r} has {len(s.dates)} periods; forecasting needs the last {spec.history}")
        if dataset.scaler is None:
            channels, unit_loc, unit_scale = window_channels(
                s.values,
                [len(s.dates)],
                spec.history,
                spec.scale_floor,
                context=spec.context,
                horizon=spec.horizon,
                region=s.region,
            )
            X.append(np.concatenate([channels[0], s.covariates[-spec.history :]], axis=1))
            locs.append(unit_loc[0])
            scales.append(unit_scale[0])
        else:
            X.append(_inputs(s, dataset.scaler)[-spec.history :])
        units.append(s.unit)
        starts.append((s.dates[-1] + records.frequency.period).to_datetime64())
    T = len(spec.targets)
    inputs = np.stack(X)
    loc = np.stack(locs) if locs else None
    scale = np.stack(scales) if scales else None
    return WindowSet(
        torch.from_numpy(inputs.astype(np.float32)),
        torch.full((len(X), spec.horizon, T), float("nan")),
        np.array(units, dtype=object),
        np.array(starts, dtype="datetime64[ns]"),
        loc,
        scale,
    )


# Models that normalise each window by its own inputs (window scaling); every other model uses series scaling.
WINDOW_SCALED_MODELS = frozenset({"hybrid"})


def hybrid_context(context: Sequence[str] = ()) -> tuple[str, ...]:
    """The context channels a hybrid model reads: the weekly means always, plus ``context``.

    The hybrid's level is exponentially smoothed from the weekly means of the half year before the
    origin (``ForecasterConfig.level = "weeks"``), and its public weights were trained so: a hybrid
    without them would forecast from one noisy week. ``WindowSpec`` checks the names and orders them.
    """
    return ("weeks", *(c for c in context if c != "weeks"))


def federation_window_spec(
    *,
    history: int,
    horizon: int,
    targets: tuple[str, ...],
    model: str = "mlp",
    val_periods: int | None = None,
    test_periods: int | None = None,
    context: tuple[str, ...] = (),
) -> WindowSpec:
    """The federation's input windows: daily data, the default calendar covariates, held-out
    periods, the scaling ``model`` needs.

    Validation and test each hold ``max(horizon, 28)`` days unless given, so a 730-day
    hospital keeps most of its history for training while the test split still spans several
    forecasts. ``medalloc simulate`` holds out more (``[evaluation] weeks``): nodes never train
    on a day its rolling-origin evaluation scores. Nodes train with it and model files without
    a stored spec are read back with it.
    """
    held_out = max(horizon, 28)
    scaling = "window" if model in WINDOW_SCALED_MODELS else "series"
    return WindowSpec(
        history=history,
        horizon=horizon,
        targets=targets,
        val_periods=val_periods or held_out,
        test_periods=test_periods or held_out,
        scaling=scaling,
        context=hybrid_context(context) if scaling == "window" else (),
    )
