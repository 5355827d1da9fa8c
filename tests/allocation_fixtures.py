"""Small forecast frames and seasonal Poisson census series for the allocation tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

LEVELS = (0.1, 0.5, 0.9)


def forecast_frame(
    series: dict[tuple[str, str], list[tuple[float, float, float]]], start: str = "2026-03-02"
) -> pd.DataFrame:
    """A census forecast frame from {(hospital, unit): [(p10, p50, p90) per day]}."""
    rows = []
    for (hospital, unit), days in series.items():
        for i, triple in enumerate(days):
            date = pd.Timestamp(start) + pd.Timedelta(days=i)
            for q, v in zip(LEVELS, triple, strict=True):
                rows.append({"hospital": hospital, "unit": unit, "date": date, "target": "census", "q": q, "value": v})
    return pd.DataFrame(rows)


def seasonal_poisson_census(days: int, units: dict[str, float], seed: int) -> np.ndarray:
    """(days, U) census with a weekly cycle (weekday peak, weekend trough) around each unit's mean."""
    rng = np.random.default_rng(seed)
    weekday = np.arange(days) % 7
    season = 1.0 + 0.15 * np.cos(2 * np.pi * (weekday - 1) / 7)
    means = np.array(list(units.values()))[None, :] * season[:, None]
    return rng.poisson(means).astype(float)
