"""Device-day snapshots: what is known about a device at the end of a day, and whether it failed soon after.

Every feature is a fixed, public transform of the device's own history (``log1p``, a division
by a constant, a hashed one-hot): nothing is fitted on data, so nothing but the DP-trained
model depends on the node's records. Device type and manufacturer are free text in the
inventory; they enter the model through two independent hashes each (a device type sets one
bucket in each of two blocks), so hospitals need no shared vocabulary and two types collide
only if both hashes do.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from medalloc_core.equipment import contract as ec
from medalloc_core.equipment.contract import EventKind, Fleet

NUMERIC_FEATURES: tuple[str, ...] = (
    "age_years",  # calendar age / 10 years
    "log_days_since_service",  # log1p(days since the last preventive service, or since the log/commissioning began)
    "no_service_in_log",  # 1 when no preventive service is in the log yet (its clock is censored)
    "log_days_since_failure",
    "no_failure_in_log",
    "failures_365",  # failures in the last year / 3
    "usage_7",  # share of the last 7 days' hours the device ran
    "usage_30",
    "usage_since_service",  # hours since the last service or repair / 2000
    "log_errors_7",
    "log_errors_30",
    "log_errors_since_service",  # errors in the last 30 days after the last service or repair
    "repairs_90",  # corrective repairs in the last 90 days / 3
)


def normalise_name(name: str) -> str:
    """Lower case, runs of non-alphanumerics as one underscore: 'Infusion Pump' == 'infusion-pump'."""
    return re.sub(r"[^0-9a-z]+", "_", str(name).strip().lower()).strip("_")


def hashed_onehot(names: np.ndarray, buckets: int) -> np.ndarray:
    """Two independent hashes of each name into ``buckets`` each: ``(N, 2 * buckets)`` of 0/1."""
    out = np.zeros((len(names), 2 * buckets), dtype=np.float32)
    for i, name in enumerate(names):
        key = normalise_name(name).encode()
        out[i, zlib.crc32(b"a:" + key) % buckets] = 1.0
        out[i, buckets + zlib.crc32(b"b:" + key) % buckets] = 1.0
    return out


MAX_BUCKETS = 1_024  # hash buckets per block (type, manufacturer): far above any fleet's count of either
MAX_SPEC_DAYS = 18_262  # fifty years, the longest log a generated region has (medalloc_core.synthetic.config)


@dataclass(frozen=True)
class SnapshotSpec:
    """How snapshots are taken and labelled; the federation agrees on it (it travels with the model).

    Parameters
    ----------
    horizon_days : int (default: 30)
        A snapshot is positive when the device fails within this many days after it.
    stride_days : int (default: 7)
        Days between two snapshots of one device (weekly: one planning decision a week).
    type_buckets, maker_buckets : int (default: 16, 8)
        Hash buckets per block for device type and manufacturer.
    test_days : int (default: 182)
        The last snapshots of this many days (before the final horizon) are the test period.
    """

    horizon_days: int = 30
    stride_days: int = 7
    type_buckets: int = 16
    maker_buckets: int = 8
    test_days: int = 182

    def __post_init__(self) -> None:
        # A spec also comes from a model file and from the coordinator's request: bounded, so that
        # it can never ask a node for a feature matrix or a day range beyond any fleet's.
        for name in ("horizon_days", "stride_days", "type_buckets", "maker_buckets", "test_days"):
            value = getattr(self, name)
            limit = MAX_BUCKETS if name.endswith("_buckets") else MAX_SPEC_DAYS
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
                raise ValueError(f"SnapshotSpec.{name} must be a whole number from 1 to {limit:,}, got {value!r}")

    @property
    def n_features(self) -> int:
        """Width of one snapshot's feature vector."""
        return len(NUMERIC_FEATURES) + 2 * self.type_buckets + 2 * self.maker_buckets

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Any) -> SnapshotSpec:
        """Inverse of ``to_dict``; unknown or missing keys raise ``ValueError``."""
        if not isinstance(raw, dict):
            raise ValueError(f"a snapshot spec is a JSON object, got {type(raw).__name__}")
        known = set(cls.__dataclass_fields__)
        if set(raw) != known:
            raise ValueError(f"snapshot spec keys must be exactly {sorted(known)}, got {sorted(raw)}")
        return cls(**raw)


@dataclass(frozen=True)
class DeviceDays:
    """Per device and day of the log, the daily series every feature is built from (``(N, D)`` arrays)."""

    days: pd.DatetimeIndex  # (D,)
    install: np.ndarray  # (N,) day index of commissioning (negative: before the log)
    hours: np.ndarray  # usage hours
    errors: np.ndarray  # error codes logged
    failure: np.ndarray  # failures
    repair: np.ndarray  # corrective repairs
    service: np.ndarray  # preventive services
    down: np.ndarray  # bool: down at the end of the day (failed, not yet repaired)


def device_days(fleet: Fleet) -> DeviceDays:
    """The fleet's events as daily per-device counts over the log's days."""
    days = pd.date_range(fleet.start, fleet.end, freq="D")
    ids = fleet.devices[ec.DEVICE_ID].to_numpy()
    index = pd.Index(ids)
    n, d = len(ids), len(days)
    ev = fleet.events
    dev = index.get_indexer(ev[ec.DEVICE_ID])
    day = ((ev[ec.TIME].dt.normalize() - fleet.start) // pd.Timedelta(days=1)).to_numpy()
    kind = ev[ec.EVENT].to_numpy()

    def count(which: str, weights: np.ndarray | None = None) -> np.ndarray:
        mask = kind == which
        out = np.zeros((n, d))
        np.add.at(out, (dev[mask], day[mask]), 1.0 if weights is None else weights[mask])
        return out

    hours = count(EventKind.USAGE, ev["hours"].fillna(0.0).to_numpy())
    failure = count(EventKind.FAILURE)
    repair = count(EventKind.REPAIR)
    # Down from a failure until the next repair (a repair on the failure's own day ends it).
    state = np.zeros(n, dtype=bool)
    down = np.zeros((n, d), dtype=bool)
    for t in range(d):
        state = np.where(failure[:, t] > 0, repair[:, t] == 0, np.where(repair[:, t] > 0, False, state))
        down[:, t] = state
    install = ((fleet.devices[ec.INSTALL_DATE] - fleet.start) // pd.Timedelta(days=1)).to_numpy()
    return DeviceDays(days, install, hours, count(EventKind.ERROR), failure, repair, count(EventKind.PREVENTIVE), down)


def _since_last(events: np.ndarray, origin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Days since the last event up to each day (inclusive), and whether one was seen; ``origin`` when none."""
    n, d = events.shape
    t = np.arange(d)
    last = np.where(events > 0, t[None, :], -(10**9))
    last = np.maximum.accumulate(last, axis=1)
    seen = last > -(10**9)
    start = np.maximum(origin, 0)[:, None]
    # Before commissioning (a device added during the log) the clock is 0, not negative.
    return np.maximum(np.where(seen, t[None, :] - last, t[None, :] - start), 0), seen


def _window(series: np.ndarray, width: int) -> np.ndarray:
    """Sum over the last ``width`` days up to each day (inclusive)."""
    c = np.cumsum(series, axis=1)
    shifted = np.zeros_like(c)
    shifted[:, width:] = c[:, :-width]
    return c - shifted


@dataclass
class Snapshots:
    """Device-day snapshots of one fleet: features, labels, and which device and day each row is."""

    X: np.ndarray  # (S, F) float32
    y: np.ndarray  # (S,) float32: failed within the horizon
    device: np.ndarray  # (S,) int: row of fleet.devices
    day: np.ndarray  # (S,) int: day index of the log
    dates: pd.DatetimeIndex  # (D,) the log's days

    def __len__(self) -> int:
        return int(len(self.y))

    def subset(self, mask: np.ndarray) -> Snapshots:
        """The rows where ``mask`` is true."""
        return Snapshots(self.X[mask], self.y[mask], self.device[mask], self.day[mask], self.dates)


def feature_matrix(dd: DeviceDays, devices: pd.DataFrame, spec: SnapshotSpec, *, serviced: bool = False) -> np.ndarray:
    """Features of every device on every day, ``(N, D, F)``.

    ``serviced=True`` gives the counterfactual "a preventive service was done at the end of
    this day": the service clocks (days since service, hours and errors since service) restart,
    everything else (age, failure history, recent use) stays.
    """
    n, d = dd.hours.shape
    t = np.arange(d)[None, :]
    age = np.maximum(t - dd.install[:, None], 0) / 365.25
    since_service, seen_service = _since_last(dd.service, dd.install)
    since_failure, seen_failure = _since_last(dd.failure, dd.install)
    since_any, _ = _since_last(dd.service + dd.repair, dd.install)
    cum_hours = np.cumsum(dd.hours, axis=1)
    cum_errors = np.cumsum(dd.errors, axis=1)
    idx = np.clip(t - since_any, 0, d - 1)
    # Hours/errors since the last service or repair: cumulative now minus cumulative on that day.
    at_service_hours = np.take_along_axis(cum_hours, idx, axis=1)
    at_service_errors = np.take_along_axis(cum_errors, idx, axis=1)
    began = t - since_any <= 0
    hours_since = np.maximum(np.where(began, cum_hours, cum_hours - at_service_hours), 0.0)
    errors_since = np.maximum(np.where(began, cum_errors, cum_errors - at_service_errors), 0.0)
    errors_30 = _window(dd.errors, 30)
    errors_since_30 = np.minimum(errors_since, errors_30)
    if serviced:
        since_service = np.zeros_like(since_service)
        seen_service = np.ones_like(seen_service)
        hours_since = np.zeros_like(hours_since)
        errors_since_30 = np.zeros_like(errors_since_30)
    numeric = np.stack(
        [
            age / 10.0,
            np.log1p(since_service) / 6.0,
            (~seen_service).astype(float),
            np.log1p(since_failure) / 6.0,
            (~seen_failure).astype(float),
            _window(dd.failure, 365) / 3.0,
            _window(dd.hours, 7) / (7 * 24),
            _window(dd.hours, 30) / (30 * 24),
            hours_since / 2000.0,
            np.log1p(_window(dd.errors, 7)) / 3.0,
            np.log1p(errors_30) / 3.0,
            np.log1p(errors_since_30) / 3.0,
            _window(dd.repair, 90) / 3.0,
        ],
        axis=-1,
    )  # (N, D, len(NUMERIC_FEATURES))
    types = hashed_onehot(devices[ec.DEVICE_TYPE].to_numpy(), spec.type_buckets)
    makers = hashed_onehot(devices[ec.MANUFACTURER].to_numpy(), spec.maker_buckets)
    static = np.concatenate([types, makers], axis=1)  # (N, 2 * (type_buckets + maker_buckets))
    return np.concatenate([numeric, np.broadcast_to(static[:, None, :], (n, d, static.shape[1]))], axis=-1).astype(
        np.float32
    )


def failure_within(dd: DeviceDays, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Label (failure in days t+1 .. t+horizon) and whether it is fully observed, both ``(N, D)``."""
    n, d = dd.failure.shape
    c = np.cumsum(dd.failure, axis=1)
    ahead = np.zeros((n, d))
    end = np.minimum(np.arange(d) + horizon, d - 1)
    ahead = c[:, end] - c
    observed = np.broadcast_to(np.arange(d) + horizon <= d - 1, (n, d))
    return (ahead > 0).astype(np.float32), observed


def snapshots(fleet: Fleet, spec: SnapshotSpec, *, every_day: bool = False) -> Snapshots:
    """Labelled snapshots: every ``stride_days``-th day counted back from the last labelled day, per device in service.

    A device is in the snapshot on day t when it is commissioned by t and not down at the end
    of t, and t + horizon is inside the log (so the label is known).
    """
    dd = device_days(fleet)
    X = feature_matrix(dd, fleet.devices, spec)
    y, observed = failure_within(dd, spec.horizon_days)
    n, d = y.shape
    t = np.arange(d)
    last = d - 1 - spec.horizon_days
    on_grid = np.ones(d, dtype=bool) if every_day else ((last - t) % spec.stride_days == 0)
    eligible = (t[None, :] >= dd.install[:, None]) & ~dd.down & observed & on_grid[None, :]
    dev, day = np.nonzero(eligible)
    return Snapshots(X[dev, day], y[dev, day], dev, day, dd.days)


@dataclass
class FleetDataset:
    """One hospital's snapshots split in time: train (and its last part as validation) and test."""

    train: Snapshots
    test: Snapshots
    n_devices: int

    @classmethod
    def split(cls, snaps: Snapshots, spec: SnapshotSpec, n_devices: int) -> FleetDataset:
        """Test = snapshots of the last ``test_days`` labelled days; train = those whose horizon ends before them."""
        last = int(snaps.day.max()) if len(snaps) else 0
        test_start = last - spec.test_days + 1
        test = snaps.day >= test_start
        train = snaps.day + spec.horizon_days < test_start
        return cls(snaps.subset(train), snaps.subset(test), n_devices)
