"""What a biomedical engineering team has today: failure rates by device type and age, or by time since service.

Both rules are look-up tables a team can build from its own work-order history: the share of
device-days of a type (and age band, or time-since-service band) followed by a failure within
the horizon. They are fitted on one hospital's training snapshots only (its own records,
nothing shared), shrunk towards the type's rate and the type's rate towards the hospital's
where a cell has few device-days, so that they give probabilities (Brier, calibration) as well
as a ranking (AUROC). The *age rule* also orders the week's services: oldest device first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from medalloc_core.equipment import contract as ec
from medalloc_core.equipment.features import NUMERIC_FEATURES, Snapshots

AGE_BANDS_YEARS: tuple[float, ...] = (2.0, 4.0, 6.0, 8.0, 10.0)  # band edges: 0-2, 2-4, ..., 10+
SERVICE_BANDS_DAYS: tuple[float, ...] = (90.0, 180.0, 365.0, 545.0)  # since the last preventive service
SHRINKAGE = 200.0  # pseudo device-days pulling a sparse cell towards its parent rate
_AGE = NUMERIC_FEATURES.index("age_years")
_SINCE_SERVICE = NUMERIC_FEATURES.index("log_days_since_service")


def snapshot_age_years(snaps: Snapshots) -> np.ndarray:
    """Calendar age of each snapshot's device, in years (the feature is age / 10)."""
    return snaps.X[:, _AGE].astype(float) * 10.0


def snapshot_days_since_service(snaps: Snapshots) -> np.ndarray:
    """Days since the last preventive service (or since the log or commissioning began) per snapshot."""
    return np.expm1(snaps.X[:, _SINCE_SERVICE].astype(float) * 6.0)


@dataclass
class BandRule:
    """P(failure within the horizon | device type, band of a clock), estimated from one hospital's history.

    ``clock`` is ``"age"`` (the age rule) or ``"service"`` (the fixed-interval rule: time since
    the last preventive service). Fit with :meth:`fit`, then :meth:`predict_proba`.
    """

    clock: str = "age"
    shrinkage: float = SHRINKAGE
    rates_: dict[tuple[str, int], float] = field(default_factory=dict)
    type_rates_: dict[str, float] = field(default_factory=dict)
    overall_: float = float("nan")

    def __post_init__(self) -> None:
        if self.clock not in ("age", "service"):
            raise ValueError(f"clock must be 'age' or 'service', got {self.clock!r}")

    def _bands(self, snaps: Snapshots) -> np.ndarray:
        if self.clock == "age":
            return np.searchsorted(AGE_BANDS_YEARS, snapshot_age_years(snaps), side="right")
        return np.searchsorted(SERVICE_BANDS_DAYS, snapshot_days_since_service(snaps), side="right")

    def fit(self, snaps: Snapshots, devices: pd.DataFrame) -> BandRule:
        """Tabulate the failure rate of each (type, band) cell of the training snapshots."""
        if len(snaps) == 0:
            raise ValueError("no training snapshots to build the rule from")
        types = devices[ec.DEVICE_TYPE].to_numpy()[snaps.device]
        frame = pd.DataFrame({"type": types, "band": self._bands(snaps), "y": snaps.y})
        self.overall_ = float(frame["y"].mean())
        by_type = frame.groupby("type")["y"].agg(["sum", "count"])
        self.type_rates_ = {
            str(t): float((r["sum"] + self.shrinkage * self.overall_) / (r["count"] + self.shrinkage))
            for t, r in by_type.iterrows()
        }
        cells = frame.groupby(["type", "band"])["y"].agg(["sum", "count"])
        self.rates_ = {}
        for (t, b), r in cells.iterrows():
            parent = self.type_rates_[str(t)]
            self.rates_[(str(t), int(b))] = float((r["sum"] + self.shrinkage * parent) / (r["count"] + self.shrinkage))
        return self

    def predict_proba(self, snaps: Snapshots, devices: pd.DataFrame) -> np.ndarray:
        """The fitted cell rate of each snapshot (the type's rate for an unseen band, the overall for a new type)."""
        if not self.type_rates_:
            raise ValueError("the rule is not fitted; call fit first")
        types = devices[ec.DEVICE_TYPE].to_numpy()[snaps.device]
        bands = self._bands(snaps)
        return np.array(
            [
                self.rates_.get((str(t), int(b)), self.type_rates_.get(str(t), self.overall_))
                for t, b in zip(types, bands)
            ],
            dtype=float,
        )
