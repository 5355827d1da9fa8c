"""Source release: a node's daily counts privatised once, per patient stay, with the Gaussian mechanism.

The patient unit (docs/data.md, "The patient unit"): one hospital *stay* of at most
``max_stay_days`` = N nights, possibly across two units (one transfer). It adds at most one
admission and one discharge in each unit it passes through (<= 2 of each) and 1 to the midnight
census of each night (<= N). Released with independent Gaussian noise of standard deviation
``sd[c]`` per count of column ``c``, neighbouring files (with and without one stay) give
Gaussians whose means differ by a vector with

    sum_c k_c / sd[c]^2 <= 1 / z^2,     k_admissions = k_discharges = 2, k_census = N

so the release is the Gaussian mechanism with noise multiplier ``z`` per stay, whatever the
number of days or units (Balle & Wang 2018; ``medalloc_core.privacy.gaussian``).

Each (unit, day) is released once and stored on the node (``ReleaseStore``); later days are
released at the same noise. A stay's days split over two releases still form one Gaussian of
multiplier ``z`` (disjoint coordinates compose in quadrature: ``sum_b ||v_b||^2 <= ||v||^2``), so
a node that keeps releasing new days at one noise level spends its epsilon once. Everything
computed from the released counts afterwards — scalers, windows, federated rounds, metrics — is
post-processing and costs nothing.

Longer stays are not cut: a stay of s > N nights is protected as a Gaussian with multiplier
``z * sqrt((N + 2) / (s + 2))`` (``ReleasePlan.epsilon_for_stay``).
"""

from __future__ import annotations

import io
import json
import logging
import math
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medalloc_core.atomic import atomic_write_files
from medalloc_core.contract import ADMISSIONS, CENSUS, DATE, DISCHARGES, UNIT, Frequency, UnitRecords
from medalloc_core.paths import read_regular_bytes, read_regular_text
from medalloc_core.privacy.gaussian import gaussian_epsilon, gaussian_noise_multiplier

__all__ = [
    "CENSUS_NOISE_RATIO",
    "DEFAULT_MAX_STAY_DAYS",
    "RELEASABLE_COLUMNS",
    "ReleasePlan",
    "ReleaseStore",
    "ReleaseStoreError",
    "deflate_bands",
    "release_records",
    "secure_generator",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_STAY_DAYS = 14  # covers 97-99 % of the synthetic stays; docs/privacy.md has the rule for longer ones
RELEASABLE_COLUMNS: tuple[str, ...] = (ADMISSIONS, DISCHARGES, CENSUS)
# Noise sd of census relative to admissions/discharges. A public constant, not fitted to any
# hospital's data: the best of {1, 1.5, 2, 3, 5} on the default synthetic scenario at epsilon 1
# (volume-weighted WAPE 0.1309, 0.1286, 0.1271, 0.1298, 0.1336).
CENSUS_NOISE_RATIO = 2.0
_NOISE_WEIGHT = {ADMISSIONS: 1.0, DISCHARGES: 1.0, CENSUS: CENSUS_NOISE_RATIO}
# Bounds on what a node reads back: a plan is a dozen lines; released counts are ~40 bytes per
# (unit, day), so 256 MiB is millions of unit-days (the input file's own limit, io.MAX_FILE_BYTES).
_MAX_PLAN_BYTES = 1 * 2**20
MAX_RELEASE_BYTES = 256 * 2**20


def _stay_contribution(column: str, max_stay_days: int, max_admissions: int = 2) -> int:
    """How many counts of ``column`` one privacy unit can raise by 1: a stay (two units: a transfer) or, under
    per-patient bounding (``medalloc_core.privacy.contribution``), a patient's capped stays plus transfers."""
    return max_stay_days if column == CENSUS else max_admissions


def secure_generator() -> np.random.Generator:
    """A numpy generator seeded with 128 bits from the OS CSPRNG (``secrets``), fresh per call.

    The seed never leaves the process: nobody, the coordinator included, can recompute the noise.
    """
    return np.random.default_rng(secrets.randbits(128))


@dataclass(frozen=True, kw_only=True)
class ReleasePlan:
    """How a node's counts are released: per-stay Gaussian noise multiplier and the per-column noise sd.

    Build it with :meth:`calibrate`. ``noise_multiplier`` is what the ledger records: the release
    is one Gaussian mechanism of that multiplier per stay (sensitivity 1, q = 1, 1 step).
    """

    epsilon: float  # the per-stay epsilon it was calibrated to, at ``delta``
    delta: float
    max_stay_days: int
    columns: tuple[str, ...]
    noise_multiplier: float  # z
    noise_sd: Mapping[str, float]  # sd per released count, patients (beds for census)
    max_admissions: int = (
        2  # admission (and discharge) counts one unit raises: 2 per stay; stays + transfers per patient
    )

    @classmethod
    def calibrate(
        cls,
        *,
        epsilon: float,
        delta: float,
        max_stay_days: int = DEFAULT_MAX_STAY_DAYS,
        columns: Sequence[str] = (ADMISSIONS, CENSUS),
    ) -> ReleasePlan:
        """The least noise that makes one release (epsilon, delta)-DP per stay of <= ``max_stay_days`` nights."""
        z = gaussian_noise_multiplier(epsilon=epsilon, delta=delta)
        return cls.from_noise_multiplier(z, delta=delta, max_stay_days=max_stay_days, columns=columns, epsilon=epsilon)

    @classmethod
    def from_noise_multiplier(
        cls,
        noise_multiplier: float,
        *,
        delta: float,
        max_stay_days: int,
        columns: Sequence[str],
        epsilon: float | None = None,
        max_admissions: int = 2,
    ) -> ReleasePlan:
        """The plan of a given per-stay noise multiplier (e.g. the one a node's first release fixed)."""
        columns = tuple(columns)
        if not columns or len(set(columns)) != len(columns):
            raise ValueError(f"columns must be distinct and non-empty, got {columns!r}")
        bad = [c for c in columns if c not in RELEASABLE_COLUMNS]
        if bad:
            raise ValueError(
                f"cannot release column(s) {bad}: a stay's effect is defined for {list(RELEASABLE_COLUMNS)} only"
            )
        if isinstance(max_stay_days, bool) or not isinstance(max_stay_days, int) or max_stay_days < 1:
            raise ValueError(f"max_stay_days must be a whole number >= 1, got {max_stay_days!r}")
        if not noise_multiplier > 0:
            raise ValueError(f"noise_multiplier must be > 0, got {noise_multiplier!r}")
        # sum_c k_c / (w_c s)^2 = 1 / z^2  =>  s = z * sqrt(sum_c k_c / w_c^2)
        base = noise_multiplier * math.sqrt(
            sum(_stay_contribution(c, max_stay_days, max_admissions) / _NOISE_WEIGHT[c] ** 2 for c in columns)
        )
        sd = {c: base * _NOISE_WEIGHT[c] for c in columns}
        eps = gaussian_epsilon(noise_multiplier=noise_multiplier, delta=delta) if epsilon is None else float(epsilon)
        return cls(
            epsilon=eps,
            delta=float(delta),
            max_stay_days=max_stay_days,
            columns=columns,
            noise_multiplier=float(noise_multiplier),
            noise_sd=sd,
            max_admissions=int(max_admissions),
        )

    def epsilon_for_stay(self, nights: int) -> float:
        """Epsilon (at ``delta``) this release gives a stay of ``nights`` nights; longer than the cap -> weaker."""
        if nights <= self.max_stay_days:
            return gaussian_epsilon(noise_multiplier=self.noise_multiplier, delta=self.delta)
        sq = sum(_stay_contribution(c, nights, self.max_admissions) / self.noise_sd[c] ** 2 for c in self.columns)
        return gaussian_epsilon(noise_multiplier=1 / math.sqrt(sq), delta=self.delta)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (stored beside the released counts)."""
        return {
            "epsilon": self.epsilon,
            "delta": self.delta,
            "max_stay_days": self.max_stay_days,
            "columns": list(self.columns),
            "noise_multiplier": self.noise_multiplier,
            "noise_sd": dict(self.noise_sd),
        } | ({"max_admissions": self.max_admissions} if self.max_admissions != 2 else {})

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ReleasePlan:
        """Inverse of :meth:`to_dict`; recomputes the sd from the multiplier (a stored sd is never trusted)."""
        return cls.from_noise_multiplier(
            float(raw["noise_multiplier"]),
            delta=float(raw["delta"]),
            max_stay_days=int(raw["max_stay_days"]),
            columns=tuple(str(c) for c in raw["columns"]),
            epsilon=float(raw["epsilon"]),
            max_admissions=int(raw.get("max_admissions", 2)),
        )


def release_records(records: UnitRecords, plan: ReleasePlan, *, rng: np.random.Generator | None = None) -> UnitRecords:
    """The released copy of ``records``: every count of ``plan.columns`` plus its own Gaussian draw.

    Parameters
    ----------
    records
        Daily unit records (the node's true counts).
    plan
        The calibrated release.
    rng
        ``None`` (what a node uses): :func:`secure_generator`, the OS CSPRNG. A seeded generator is
        for research runs only: whoever knows the seed can subtract the noise.

    Returns
    -------
    UnitRecords
        Same dates and units, the released columns as float64 (unrounded, possibly negative:
        rounding or clipping would be post-processing, and unbiased counts train better).
    """
    if records.frequency is not Frequency.DAILY:
        raise ValueError(
            f"{records.source}: the patient unit is defined on daily counts; this file is {records.frequency.value}"
        )
    missing = [c for c in plan.columns if c not in records.frame.columns]
    if missing:
        raise ValueError(
            f"{records.source}: column(s) {missing} to release are not in the records "
            f"(present: {records.count_columns})"
        )
    rng = rng if rng is not None else secure_generator()
    frame = records.frame[[DATE, UNIT, *plan.columns]].copy()
    for column in plan.columns:
        frame[column] = frame[column].astype("float64") + rng.normal(0.0, plan.noise_sd[column], size=len(frame))
    return UnitRecords(frame.reset_index(drop=True), Frequency.DAILY, records.source, "daily")


def deflate_bands(pred: np.ndarray, noise_sd: np.ndarray, quantiles: Sequence[float]) -> np.ndarray:
    """Remove the release noise from quantile bands learned on released targets (post-processing).

    A model trained on ``y + e`` with ``e ~ N(0, s^2)`` learns the quantiles of ``y + e``, too wide
    for ``y``. Treating the predictive distribution as Gaussian around the median, its spread
    ``t`` (from the outermost quantiles) becomes ``sqrt(max(t^2 - s^2, (0.3 t)^2))``.

    ``pred`` is ``(N, H, T, Q)``; ``noise_sd`` broadcasts to ``(N, H, T)`` in the same units.
    """
    from scipy.stats import norm

    levels = np.asarray(quantiles, dtype=float)
    mid = int(np.argmin(np.abs(levels - 0.5)))
    lo, hi = 0, len(levels) - 1
    if hi == lo:
        return pred
    m = pred[..., mid : mid + 1]
    spread = (pred[..., hi : hi + 1] - pred[..., lo : lo + 1]) / (norm.ppf(levels[hi]) - norm.ppf(levels[lo]))
    s = np.broadcast_to(np.asarray(noise_sd, dtype=float), pred.shape[:-1])[..., None]
    true_spread = np.sqrt(np.maximum(spread**2 - s**2, (0.3 * spread) ** 2))
    return m + (pred - m) * true_spread / np.maximum(spread, 1e-12)


class ReleaseStoreError(ValueError):
    """The released-counts file is unreadable or does not match its plan; the node releases nothing more."""


def _unreadable(path: Path, meta: Path, exc: BaseException) -> ReleaseStoreError:
    return ReleaseStoreError(
        f"released counts {path} (or {meta}) cannot be read ({exc}); the node releases and trains nothing "
        "until its operator restores them. Never delete them to start again: the ledger already charged them."
    )


class ReleaseStore:
    """The node's released counts on disk: ``<path>`` (CSV: date, unit, columns) and ``<path>.json`` (the plan).

    Each (unit, date) is released at most once; :meth:`missing_days` says what a new release must
    cover. Writes are atomic (``medalloc_core.atomic``).
    """

    def __init__(self, path: Path, plan: ReleasePlan | None, frame: pd.DataFrame) -> None:
        self.path = path
        self.plan = plan
        self.frame = frame

    @property
    def meta_path(self) -> Path:
        """The plan's JSON file."""
        return self.path.with_name(self.path.name + ".json")

    @classmethod
    def open(cls, path: str | Path) -> ReleaseStore:
        """Read the store at ``path``; an absent store is empty (no plan yet)."""
        path = Path(path)
        meta = path.with_name(path.name + ".json")
        if not path.exists() and not meta.exists():
            return cls(path, None, pd.DataFrame(columns=[DATE, UNIT]))
        plan = cls.open_plan(meta, counts=path)
        return cls(path, plan, cls.read_counts(path, plan))

    @staticmethod
    def open_plan(meta: Path, *, counts: Path | None = None) -> ReleasePlan:
        """The plan stored at ``meta``; ``ReleaseStoreError`` when it cannot be read."""
        try:
            return ReleasePlan.from_dict(
                json.loads(read_regular_text(meta, limit=_MAX_PLAN_BYTES, what="a release plan (JSON)"))
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise _unreadable(counts or meta, meta, exc) from exc

    @staticmethod
    def read_counts(path: Path, plan: ReleasePlan) -> pd.DataFrame:
        """The released counts at ``path``, checked against ``plan``'s columns; ``ReleaseStoreError`` otherwise."""
        try:
            data = read_regular_bytes(path, limit=MAX_RELEASE_BYTES, what="released counts (CSV)")
            # Unit names as written: "NA", "null" or "1.0" are names, never missing values or numbers.
            frame = pd.read_csv(
                io.BytesIO(data), parse_dates=[DATE], dtype={UNIT: str}, keep_default_na=False, na_values=[]
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise _unreadable(path, path.with_name(path.name + ".json"), exc) from exc
        expected = [DATE, UNIT, *plan.columns]
        if list(frame.columns) != expected or frame.duplicated([DATE, UNIT]).any():
            raise ReleaseStoreError(
                f"released counts {path} have columns {list(frame.columns)} or duplicate days; expected {expected}"
            )
        return frame

    def missing_days(self, records: UnitRecords) -> pd.DataFrame:
        """Rows of ``records`` (date, unit) not released yet."""
        keys = records.frame[[DATE, UNIT]]
        if self.frame.empty:
            return records.frame
        released = pd.MultiIndex.from_frame(self.frame[[DATE, UNIT]])
        return records.frame[~pd.MultiIndex.from_frame(keys).isin(released)]

    def add(self, released: UnitRecords, plan: ReleasePlan, *, between: Callable[[], None] | None = None) -> None:
        """Append newly released rows (never ones already there) and write the store atomically.

        ``between`` runs after the plan's file is replaced and before the counts' (a test's fault point).
        """
        if self.plan is not None and (
            self.plan.noise_multiplier != plan.noise_multiplier
            or self.plan.columns != plan.columns
            or self.plan.max_stay_days != plan.max_stay_days
            or self.plan.max_admissions != plan.max_admissions
        ):
            raise ReleaseStoreError("a store holds one release plan; new days are released with the stored plan")
        frame = released.frame[[DATE, UNIT, *plan.columns]]
        merged = pd.concat([self.frame, frame], ignore_index=True) if not self.frame.empty else frame.copy()
        if merged.duplicated([DATE, UNIT]).any():
            raise ReleaseStoreError("refusing to release a (unit, date) twice")
        merged = merged.sort_values([UNIT, DATE]).reset_index(drop=True)
        # Six decimals, in memory as on disk: the first round and every later one see the same numbers.
        merged[list(plan.columns)] = merged[list(plan.columns)].astype("float64").round(6)
        buffer = io.StringIO()
        out = merged.copy()
        out[DATE] = pd.to_datetime(out[DATE]).dt.strftime("%Y-%m-%d")
        out.to_csv(buffer, index=False, float_format="%.6f")
        # Both staged before either replaces its file: a full disk changes neither.
        atomic_write_files(
            {
                self.meta_path: (json.dumps(plan.to_dict(), indent=2, sort_keys=True) + "\n").encode(),
                self.path: buffer.getvalue().encode(),
            },
            between=between,
        )
        self.plan, self.frame = plan, merged

    def records(self, source: Path | None = None) -> UnitRecords:
        """The released counts as ``UnitRecords`` (what the node trains and evaluates on)."""
        if self.plan is None or self.frame.empty:
            raise ReleaseStoreError(f"nothing released yet at {self.path}")
        frame = self.frame.copy()
        frame[DATE] = pd.to_datetime(frame[DATE])
        return UnitRecords(
            frame.sort_values([UNIT, DATE]).reset_index(drop=True), Frequency.DAILY, source or self.path, "daily"
        )
