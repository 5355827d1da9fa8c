"""Small hand-built hospital records for the forecasting tests: exact, tiny, independent of the synthetic generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medalloc_core.contract import ADMISSIONS, CENSUS, DATE, DISCHARGES, UNIT, Frequency, UnitRecords


def unit_frame(unit: str, days: int, base: float, *, seed: int, start: str = "2023-01-01") -> pd.DataFrame:
    """Seasonal Poisson admissions; discharges Binomial(census, 0.2);
    census_t = census_{t-1} + adm_t - dis_t exactly."""
    rng = np.random.default_rng(seed)
    dates = pd.date_range(start, periods=days, freq="D")
    t = np.arange(days)
    rate = base * (1 + 0.3 * np.sin(2 * np.pi * t / 7) + 0.2 * np.sin(2 * np.pi * t / 365.25))
    adm = rng.poisson(rate)
    census = np.zeros(days, dtype=np.int64)
    dis = np.zeros(days, dtype=np.int64)
    prev = int(base * 5)
    for i in range(days):
        dis[i] = rng.binomial(prev, 0.2)
        census[i] = prev + adm[i] - dis[i]
        prev = census[i]
    return pd.DataFrame({DATE: dates, UNIT: unit, ADMISSIONS: adm, DISCHARGES: dis, CENSUS: census})


def records(
    units: dict[str, float] | None = None, days: int = 300, *, seed: int = 0, drop: list[int] | None = None
) -> UnitRecords:
    """UnitRecords of a few units; ``drop`` removes those day indices from every unit (gaps)."""
    units = units or {"icu": 4.0, "ward": 40.0}
    frames = []
    for k, (name, base) in enumerate(sorted(units.items())):
        f = unit_frame(name, days, base, seed=seed + k)
        if drop:
            f = f.drop(index=drop)
        frames.append(f)
    frame = pd.concat(frames, ignore_index=True).sort_values([UNIT, DATE], ignore_index=True)
    return UnitRecords(frame=frame, frequency=Frequency.DAILY, source=Path("test.csv"), shape="daily")
