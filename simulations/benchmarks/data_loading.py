"""Benchmark: load_unit_records on a 3-year 6-unit daily file and a 100k-stay encounter file,
beside a bare pandas read."""

from __future__ import annotations

import argparse
import functools
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from medalloc_core.validation import load_unit_records

UNITS = 6
DAYS = 3 * 365 + 1
STAYS = 100_000


def _daily(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    dates = pd.date_range("2022-01-01", periods=DAYS, freq="D").strftime("%Y-%m-%d")
    admissions = rng.poisson(8, size=(UNITS, DAYS))
    discharges = admissions.copy()  # steady state: census stays at its start value
    census = np.full((UNITS, DAYS), 30)
    return pd.DataFrame(
        {
            "date": np.tile(dates, UNITS),
            "unit": np.repeat([f"U{u}" for u in range(UNITS)], DAYS),
            "admissions": admissions.ravel(),
            "discharges": discharges.ravel(),
            "census": census.ravel(),
            "capacity": 40,
        }
    )


def _encounters(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    admit = pd.Timestamp("2022-01-01") + pd.to_timedelta(rng.uniform(0, DAYS * 24, STAYS), unit="h")
    stay = pd.to_timedelta(rng.exponential(72, STAYS), unit="h")
    discharge = pd.Series(admit + stay).dt.strftime("%Y-%m-%d %H:%M").where(rng.uniform(size=STAYS) > 0.01)
    return pd.DataFrame(
        {
            "encounter_id": [f"E{i}" for i in range(STAYS)],
            "patient_id": [f"P{i}" for i in rng.integers(0, STAYS // 2, STAYS)],
            "unit": [f"U{u}" for u in rng.integers(0, UNITS, STAYS)],
            "admit_time": pd.Series(admit).dt.strftime("%Y-%m-%d %H:%M"),
            "discharge_time": discharge,
        }
    )


def _best_of(repeats: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    """Print load times and their ratio to a bare ``pd.read_csv``/``pd.read_parquet`` of the same file."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    # The random stays overlap per patient, which the loader warns about on every repeat.
    logging.getLogger("medalloc_core.validation").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        daily = _daily(args.seed)
        daily.to_csv(out / "daily.csv", index=False)
        daily.to_parquet(out / "daily.parquet", index=False)
        _encounters(args.seed).to_csv(out / "stays.csv", index=False)
        cases = [
            (f"daily CSV ({len(daily)} rows)", out / "daily.csv", pd.read_csv),
            (f"daily Parquet ({len(daily)} rows)", out / "daily.parquet", pd.read_parquet),
            (f"encounter CSV ({STAYS} stays)", out / "stays.csv", pd.read_csv),
        ]
        print(f"{'file':<32}{'load_unit_records':>20}{'bare pandas read':>20}{'ratio':>8}")
        for label, path, bare in cases:
            ours = _best_of(args.repeats, functools.partial(load_unit_records, path))
            plain = _best_of(args.repeats, functools.partial(bare, path))
            print(f"{label:<32}{ours * 1000:>17.1f} ms{plain * 1000:>17.1f} ms{ours / plain:>7.1f}x")


if __name__ == "__main__":
    main()
