"""The forecaster contract: origins, one hospital's data, and the base class every method derives from."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from medalloc_core.contract import DATE, UNIT, Frequency, UnitRecords
from medalloc_core.forecast.features import HospitalDataset, WindowSet, WindowSpec, prepare_hospital

logger = logging.getLogger(__name__)

__all__ = ["Forecaster", "HospitalData", "Origins", "pooled_windows", "unit_series"]


# ----------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Origins:
    """Forecast origins of one hospital: ``units[i]`` is forecast from ``target_start[i]`` on.

    ``target_start`` is the first forecast period (the day after the last observed one), as in
    ``WindowSet.target_start``.
    """

    units: np.ndarray  # (N,) str
    target_start: np.ndarray  # (N,) datetime64[ns]

    def __post_init__(self) -> None:
        if len(self.units) != len(self.target_start):
            raise ValueError(f"Origins: {len(self.units)} units but {len(self.target_start)} dates")

    def __len__(self) -> int:
        return len(self.units)

    @classmethod
    def of(cls, windows: WindowSet) -> Origins:
        """The origins of existing windows."""
        return cls(np.asarray(windows.units, dtype=object), np.asarray(windows.target_start, dtype="datetime64[ns]"))


@dataclass(frozen=True)
class HospitalData:
    """One hospital's validated records and the window spec of the task (targets, L, H, splits).

    Datasets are built on demand per spec (a forecaster may need another scaling than the
    task's) and cached on the object; the records never leave it.
    """

    name: str
    records: UnitRecords
    spec: WindowSpec
    _cache: dict[WindowSpec, HospitalDataset] = field(default_factory=dict, compare=False, repr=False)

    def dataset(self, spec: WindowSpec | None = None) -> HospitalDataset:
        """Windows of these records under ``spec`` (default: the task's spec), split in time."""
        spec = spec or self.spec
        if spec not in self._cache:
            self._cache[spec] = prepare_hospital(self.records, spec)
        return self._cache[spec]

    def actuals(self, origins: Origins) -> np.ndarray:
        """``(N, H, T)`` observed values after each origin (NaN where a day is missing)."""
        spec = self.spec.resolved(self.records.frequency)
        assert spec.horizon is not None
        out = np.full((len(origins), spec.horizon, len(spec.targets)), np.nan)
        for _, rows, series, dates in unit_series(self.records, spec.targets, origins, interpolate=False):
            index = dates.get_indexer(pd.DatetimeIndex(origins.target_start[rows]))
            for row, i in zip(rows, index):
                out[row] = series[i : i + spec.horizon]
        return out


def unit_series(
    records: UnitRecords, targets: Sequence[str], origins: Origins, *, interpolate: bool = True
) -> list[tuple[str, np.ndarray, np.ndarray, pd.DatetimeIndex]]:
    """Per unit named in ``origins``: its rows in ``origins``, its ``(n, T)`` series on a full calendar, the dates."""
    frame = records.frame
    freq = "D" if records.frequency is Frequency.DAILY else "W-MON"
    out = []
    units = np.asarray(origins.units, dtype=object)
    for unit in pd.unique(units):
        rows = np.flatnonzero(units == unit)
        unit_frame = frame[frame[UNIT] == unit].set_index(DATE).sort_index()
        if unit_frame.empty:
            raise ValueError(f"{records.source}: no records for unit {unit!r}")
        dates = pd.date_range(unit_frame.index.min(), unit_frame.index.max(), freq=freq)
        values = unit_frame[list(targets)].astype("float64").reindex(dates)
        if interpolate:
            values = values.interpolate(limit_direction="both")
        out.append((str(unit), rows, values.to_numpy(), dates))
    return out


def pooled_windows(sets: Sequence[WindowSet]) -> WindowSet:
    """Concatenate windows of several hospitals (each already scaled its own way)."""
    with_stats = all(w.loc is not None for w in sets)
    return WindowSet(
        torch.cat([w.X for w in sets]),
        torch.cat([w.y for w in sets]),
        np.concatenate([w.units for w in sets]),
        np.concatenate([w.target_start for w in sets]),
        np.concatenate([w.loc for w in sets if w.loc is not None]) if with_stats else None,
        np.concatenate([w.scale for w in sets if w.scale is not None]) if with_stats else None,
    )


# ----------------------------------------------------------------------------- base class
class Forecaster:
    """The contract every registered forecaster follows (see the module docstring).

    Subclasses set their hyperparameters in ``__init__`` (stored as given, checked in ``fit``)
    and implement ``_fit`` and ``_predict``.

    Attributes set by ``fit``
    -------------------------
    hospitals_ : tuple of str   the hospitals it was fitted on
    """

    quantiles: tuple[float, ...]

    def _check_params(self) -> None:
        levels = np.asarray(self.quantiles, dtype=float)
        if (
            levels.ndim != 1
            or levels.size == 0
            or np.any((levels <= 0) | (levels >= 1))
            or np.any(np.diff(levels) <= 0)
        ):
            raise ValueError(f"quantiles must be strictly increasing levels in (0, 1); got {self.quantiles!r}")

    def fit(self, hospitals: Mapping[str, HospitalData]) -> Forecaster:
        """Learn from the training periods of ``hospitals`` (name -> data); returns ``self``."""
        self._check_params()
        if not hospitals:
            raise ValueError(f"{type(self).__name__}.fit needs at least one hospital")
        specs = {(h.spec.history, h.spec.horizon, h.spec.targets) for h in hospitals.values()}
        if len(specs) != 1:
            raise ValueError(f"hospitals disagree on (history, horizon, targets): {sorted(specs, key=str)}")
        self._fit(hospitals)
        self.hospitals_ = tuple(hospitals)
        return self

    def predict(self, hospital: HospitalData, origins: Origins) -> np.ndarray:
        """Quantile forecasts ``(N, H, T, Q)`` in patients/beds, one per origin.

        Each forecast uses only the hospital's data before its origin. Non-negative,
        non-decreasing along Q.
        """
        if not hasattr(self, "hospitals_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(hospitals) first")
        spec = hospital.spec.resolved(hospital.records.frequency)
        assert spec.horizon is not None
        out = np.asarray(self._predict(hospital, origins), dtype=np.float64)
        expected = (len(origins), spec.horizon, len(spec.targets), len(self.quantiles))
        assert out.shape == expected, f"{type(self).__name__} returned {out.shape}, expected {expected}"
        return np.maximum.accumulate(np.clip(out, 0.0, None), axis=-1)  # counts: >= 0, order kept

    def _fit(self, hospitals: Mapping[str, HospitalData]) -> None:
        raise NotImplementedError

    def _predict(self, hospital: HospitalData, origins: Origins) -> np.ndarray:
        raise NotImplementedError

    def get_params(self) -> dict[str, Any]:
        """Hyperparameters (the ``__init__`` arguments), as sklearn's ``get_params``."""
        return {k: v for k, v in vars(self).items() if not k.endswith("_") and not k.startswith("_")}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_params().items())})"
