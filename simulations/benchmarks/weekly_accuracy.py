"""Why a weekly federation's eval-WAPE moves from week to week: the test days' level and the release's noise.

    python -m simulations.benchmarks.weekly_accuracy [--weeks 8] [--first-days 120] [--shape daily] [--seed 0]

A node scores every model on the test days of its own *release* (the last ``test_periods``
days: what ``eval-wape`` and ``medalloc node adopt`` score), and a released count is the true
count plus Gaussian noise of a fixed sd (one release per stay or patient, ``ReleasePlan``). So
no forecast, however good, scores below the release's own error on those days: its **noise
floor** is ``E|noise| / true level`` = ``sd * sqrt(2 / pi)`` summed over the test counts,
divided by their true sum, and it rises when the test days' true counts fall. This benchmark
rebuilds the weekly-cycle e2e's data (``medalloc generate -n 2 -d N --seed S``: the same
generator and seed) without training anything and prints, per week (both hospitals pooled, as
the e2e's runs): the test days, their true level, the noise floor, and the WAPE of the 7-day
seasonal naive forecast (``y[t-7]``, on released history, against released targets; the
noise drawn from a seeded generator: research only) as a model-free reference. If the floor
and the naive WAPE rise over the weeks where eval-WAPE rises, the data explain it, not the
model or the adopt rule. Seeded: same arguments, same numbers.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from medalloc_core.contract import DATE, UNIT
from medalloc_core.forecast.features import federation_window_spec
from medalloc_core.privacy.release import ReleasePlan
from medalloc_core.synthetic import RegionConfig, generate_region

TARGETS = ("admissions", "census")


def weekly_rows(
    *, weeks: int, first_days: int, shape: str, seed: int, history: int = 14, horizon: int = 7
) -> list[dict[str, object]]:
    """One row per week: its test days, true level, noise floor and seasonal-naive WAPE (both hospitals pooled)."""
    total = first_days + 7 * (weeks - 1) + (30 if shape == "encounters" else 0)
    region = generate_region(RegionConfig(hospitals=2, days=total, seed=seed, shape=shape))  # type: ignore[arg-type]
    test = federation_window_spec(history=history, horizon=horizon, targets=TARGETS).test_periods
    assert test is not None
    sd = ReleasePlan.calibrate(epsilon=1.0, delta=1e-6, max_stay_days=14, columns=TARGETS).noise_sd
    rng = np.random.default_rng(seed)
    start = pd.Timestamp(region.config.start)
    frames = []
    for hospital in region.hospitals:
        frame = hospital.daily[[DATE, UNIT, *TARGETS]].copy()
        noisy = frame.copy()
        for target in TARGETS:
            noisy[target] = frame[target] + rng.normal(0.0, sd[target], len(frame))
        frames.append((frame, noisy))
    rows = []
    for week in range(1, weeks + 1):
        end = start + pd.Timedelta(days=first_days - 1 + 7 * (week - 1))
        days = pd.date_range(end - pd.Timedelta(days=test - 1), end)
        true_sum = floor_sum = naive_err = naive_sum = 0.0
        n = 0
        for frame, noisy in frames:
            on = frame[DATE].isin(days)
            for target in TARGETS:
                true_sum += float(frame.loc[on, target].sum())
                floor_sum += sd[target] * math.sqrt(2 / math.pi) * int(on.sum())
                released = noisy.set_index([UNIT, DATE])[target]
                lagged = released.groupby(level=UNIT).shift(7)
                pick = released.index.get_level_values(DATE).isin(days)
                naive_err += float((released[pick] - lagged[pick]).abs().sum())
                naive_sum += float(released[pick].abs().sum())
            n += int(on.sum()) * len(TARGETS)
        rows.append(
            {
                "week": week,
                "days": f"{days[0]:%m-%d}..{days[-1]:%m-%d}",
                "level": true_sum / n,
                "floor": floor_sum / true_sum,
                "naive": naive_err / naive_sum,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weeks", type=int, default=8)
    parser.add_argument("--first-days", type=int, default=120)
    parser.add_argument("--shape", choices=("daily", "encounters"), default="daily")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--horizon", type=int, default=7)
    args = parser.parse_args(argv)
    rows = weekly_rows(
        weeks=args.weeks, first_days=args.first_days, shape=args.shape, seed=args.seed, horizon=args.horizon
    )
    table = Table(title=f"Weekly test days: level and noise ({args.shape}, seed {args.seed}, ε 1 per stay)")
    for name in ("week", "test days", "true level", "noise floor", "naive WAPE"):
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(
            str(row["week"]), str(row["days"]), f"{row['level']:.1f}", f"{row['floor']:.3f}", f"{row['naive']:.3f}"
        )
    Console(width=80).print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
