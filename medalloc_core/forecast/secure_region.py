"""The region under secure aggregation: a node's released daily totals as one integer vector SecAgg+ can sum.

Without secure aggregation every node sends the coordinator its released daily totals and the
coordinator sums the others' for each node (``medalloc_core.forecast.region``). With it
(run config ``region-secure-aggregation = true``, each node's own ``region-secure-aggregation =
true``; docs/coordinator.md, "The region under secure aggregation") the coordinator proposes a
window (``RegionWindow``: the days its nodes' public calendars cover, the count columns), every
node encodes its totals over that window as integers (``encode``: ``resolution`` units per
patient, plus one "reported" flag per day), Flower's SecAgg+ sums the vectors modulo
``2**modulus_bits``, and the coordinator learns only the regional total (``decode``). It sends that
total back to every node (``total_to_text``); the node subtracts its own vector and has the
others' sum, exactly the region it would have had without secure aggregation (``others``),
rounded to ``1 / resolution`` of a patient.

The released totals are already DP (post-processing of each node's one release), so this is
defence in depth: the coordinator no longer holds any one hospital's daily series.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from medalloc_core.contract import COUNT_COLUMNS
from medalloc_core.forecast.region import DATES, MAX_DAYS, MAX_TOTAL

__all__ = [
    "MODULUS_BITS",
    "RESOLUTION",
    "RegionTotal",
    "RegionWindow",
    "decode",
    "encode",
    "others",
    "total_from_text",
    "total_to_text",
]

RESOLUTION = 100  # integer units per patient: the region is exact to 0.01 of a patient per day
MODULUS_BITS = 31  # Flower's SecAgg+ on our ranges sums exactly modulo 2**31 (server.secure.decode_sum)
# Exact while every day's regional total stays within +-2**30 / RESOLUTION (10.7 million patients a day).

REGION_SUM = "region-sum"  # ConfigRecord marker: this SecAgg+ round sums the nodes' released totals
FIRST_DAY, DAYS, COLUMNS = "region-first-day", "region-days", "region-columns"
RESOLUTION_KEY, MODULUS_KEY = "region-resolution", "modulus-bits"


@dataclass(frozen=True, kw_only=True)
class RegionWindow:
    """The coordinator's proposal: the days (``first`` .. ``first + days - 1``) and columns every vector covers."""

    first: pd.Timestamp
    days: int
    columns: tuple[str, ...]
    resolution: int = RESOLUTION
    modulus_bits: int = MODULUS_BITS

    def __post_init__(self) -> None:
        if not 1 <= self.days <= MAX_DAYS:
            raise ValueError(f"{DAYS} must be in [1, {MAX_DAYS}], got {self.days}")
        unknown = [c for c in self.columns if c not in COUNT_COLUMNS]
        if not self.columns or unknown:
            raise ValueError(f"{COLUMNS} must name count columns of {COUNT_COLUMNS}, got {list(self.columns)}")
        if self.resolution < 1 or not 8 <= self.modulus_bits <= 31:
            raise ValueError(f"{RESOLUTION_KEY} must be >= 1 and {MODULUS_KEY} in [8, 31]")

    @property
    def dates(self) -> pd.DatetimeIndex:
        return pd.date_range(self.first, periods=self.days, freq="D")

    @property
    def dimension(self) -> int:
        """Vector length: one value per (column, day), then one "reported" flag per day."""
        return self.days * (len(self.columns) + 1)

    @classmethod
    def covering(cls, calendars: Iterable[pd.DatetimeIndex], columns: Iterable[str]) -> RegionWindow | None:
        """The window from the first to the last day any node released (None: no node reported a day)."""
        days = [c for c in calendars if len(c)]
        if not days:
            return None
        first, last = min(c.min() for c in days), max(c.max() for c in days)
        return cls(first=first, days=int((last - first).days) + 1, columns=tuple(columns))

    def to_dict(self) -> dict[str, Any]:
        return {
            REGION_SUM: True,
            FIRST_DAY: self.first.date().isoformat(),
            DAYS: self.days,
            COLUMNS: ",".join(self.columns),
            RESOLUTION_KEY: self.resolution,
            MODULUS_KEY: self.modulus_bits,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> RegionWindow:
        """Read the proposal from a request's config; ``ValueError`` names the bad field."""
        try:
            first = pd.Timestamp(pd.to_datetime(str(raw[FIRST_DAY]), format="%Y-%m-%d"))
            return cls(
                first=first,
                days=int(raw[DAYS]),
                columns=tuple(c for c in str(raw[COLUMNS]).split(",") if c),
                resolution=int(raw[RESOLUTION_KEY]),
                modulus_bits=int(raw[MODULUS_KEY]),
            )
        except KeyError as exc:
            raise ValueError(f"the region-sum request lacks {exc.args[0]!r}") from exc
        except (TypeError, ValueError) as exc:
            raise ValueError(f"the region-sum request is malformed ({exc})") from exc


def _integers(totals: pd.DataFrame, window: RegionWindow) -> np.ndarray:
    """Signed integer vector of ``totals`` on ``window`` (days a node did not report: 0, flag 0)."""
    frame = totals.reindex(window.dates)
    reported = frame.reindex(columns=list(window.columns)).notna().all(axis=1).to_numpy()
    parts = []
    for column in window.columns:
        values = frame[column].to_numpy(dtype=np.float64) if column in frame else np.zeros(window.days)
        values = np.where(reported, values, 0.0)
        if np.any(np.abs(values) > MAX_TOTAL):
            raise ValueError(f"a released daily total of '{column}' is beyond +-{MAX_TOTAL:g}")
        parts.append(np.rint(values * window.resolution).astype(np.int64))
    parts.append(reported.astype(np.int64))
    return np.concatenate(parts)


def encode(totals: pd.DataFrame, window: RegionWindow) -> np.ndarray:
    """A node's released daily totals (index date, count columns) as its share: integers modulo ``2**bits``."""
    return np.mod(_integers(totals, window), 2**window.modulus_bits)


@dataclass(frozen=True)
class RegionTotal:
    """The regional total the coordinator learns: per day and column the sum (integer units), and how many
    nodes reported that day."""

    window: RegionWindow
    sums: np.ndarray  # (columns, days) int64, in units of 1 / resolution
    reporting: np.ndarray  # (days,) int64

    def frame(self) -> pd.DataFrame:
        """The total as a frame (patients; NaN on days no node reported)."""
        values = self.sums.T.astype(np.float64) / self.window.resolution
        values[self.reporting == 0, :] = np.nan
        return pd.DataFrame(values, index=self.window.dates, columns=list(self.window.columns))


def decode(modular_sum: np.ndarray, window: RegionWindow) -> RegionTotal:
    """The coordinator's reading of SecAgg+'s modular sum: signed integers, split into sums and reporting counts."""
    m = 2**window.modulus_bits
    s = np.mod(np.asarray(modular_sum, dtype=np.int64), m)
    signed = np.where(s >= m // 2, s - m, s)
    if signed.shape != (window.dimension,):
        raise ValueError(f"the summed vector has shape {signed.shape}, the window {window.dimension} values")
    k = len(window.columns)
    return RegionTotal(window, signed[: k * window.days].reshape(k, window.days), signed[k * window.days :])


def total_to_text(total: RegionTotal) -> str:
    """The total as the coordinator sends it to every node (a ``ConfigRecord`` string): exact integers."""
    return json.dumps(
        {
            **{k: v for k, v in total.window.to_dict().items() if k != REGION_SUM},
            "sums": {c: [int(x) for x in total.sums[i]] for i, c in enumerate(total.window.columns)},
            "reporting": [int(x) for x in total.reporting],
        },
        separators=(",", ":"),
    )


def total_from_text(text: str, what: str = "region total") -> RegionTotal:
    """Read the total a coordinator sent (node side); ``ValueError`` names what is wrong."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} is not valid JSON ({exc.msg})") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{what} must be a JSON object")
    window = RegionWindow.from_dict(raw)
    sums, reporting = raw.get("sums"), raw.get("reporting")
    if not isinstance(sums, dict) or set(sums) != set(window.columns):
        raise ValueError(f"{what}: 'sums' must hold one list per column of {list(window.columns)}")

    def ints(values: object, name: str) -> np.ndarray:
        if not isinstance(values, list) or len(values) != window.days:
            raise ValueError(f"{what}: '{name}' must be a list of {window.days} integers")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise ValueError(f"{what}: '{name}' holds a value that is not an integer")
        return np.asarray(values, dtype=np.int64)

    stacked = np.stack([ints(sums[c], c) for c in window.columns])
    return RegionTotal(window, stacked, ints(reporting, "reporting"))


def others(total: RegionTotal, own: pd.DataFrame, *, included: bool) -> pd.DataFrame:
    """The region a node reads: the total minus its own share (``included``: its vector was summed).

    Per day and column, in patients; NaN on days no *other* node reported. Exactly the region of
    ``region.region_totals`` over the other nodes, each value rounded to ``1 / resolution``.
    """
    window = total.window
    mine = _integers(own, window) if included else np.zeros(window.dimension, dtype=np.int64)
    k = len(window.columns)
    sums = total.sums - mine[: k * window.days].reshape(k, window.days)
    reporting = total.reporting - mine[k * window.days :]
    values = sums.T.astype(np.float64) / window.resolution
    values[reporting <= 0, :] = np.nan
    frame = pd.DataFrame(values, index=window.dates, columns=list(window.columns))
    frame.index.name = None
    return frame.dropna(how="all")


def dates_only(record: Mapping[str, Any]) -> dict[str, Any]:
    """A totals record with the days only (public: the node's calendar), what a node sends under secure sums."""
    return {DATES: list(record.get(DATES, []))}
