"""Benchmark: rolling-origin baselines over a region (hospitals x units x origins), time and accuracy side by side.

Run: ``python -m simulations.benchmarks.baselines_rolling [--hospitals 10 --units 6 --origins 8]``.
The target is that Holt-Winters over 8 origins x 6 units x 10 hospitals takes seconds; the
table shows what periodic refitting saves and (with ``--compare-defaults``) what statsmodels'
default optimiser settings would cost.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from medalloc_core.forecast.baselines import (
    BaselineForecaster,
    HoltWinters,
    MovingAverage,
    SeasonalNaive,
    rolling_origin_forecasts,
)
from medalloc_core.forecast.metrics import forecast_metrics


def _region(hospitals: int, units: int, days: int, seed: int) -> np.ndarray:
    """(hospitals * units, days) daily census-like counts: level, weekday pattern, slow drift, Poisson noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(days)
    series = []
    for _ in range(hospitals * units):
        level = rng.uniform(5, 80)
        weekly = rng.uniform(0.05, 0.3) * level * np.sin(2 * np.pi * (t + rng.integers(7)) / 7)
        yearly = 0.15 * level * np.sin(2 * np.pi * t / 365.25 + rng.uniform(0, 2 * np.pi))
        series.append(rng.poisson(np.clip(level + weekly + yearly, 0.1, None)).astype(float))
    return np.stack(series)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hospitals", type=int, default=10)
    parser.add_argument("--units", type=int, default=6)
    parser.add_argument("--origins", type=int, default=8)
    parser.add_argument("--horizon", type=int, default=14)
    parser.add_argument("--days", type=int, default=730)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--compare-defaults",
        action="store_true",
        help="also time Holt-Winters with statsmodels' default optimiser settings (slow: use few hospitals)",
    )
    args = parser.parse_args()

    region = _region(args.hospitals, args.units, args.days, args.seed)
    HoltWinters().fit(region[0][:60])  # warm-up: statsmodels' import is not the method's cost
    # test origins: the last `origins` weeks, leaving `horizon` days of actuals after each
    last = args.days - 1 - args.horizon
    origins = [last - 7 * k for k in range(args.origins)][::-1]
    y = np.stack([np.stack([s[t + 1 : t + 1 + args.horizon] for t in origins]) for s in region])  # (S, N, H)

    candidates: list[tuple[str, Callable[[], BaselineForecaster], int]] = [
        ("seasonal naive", SeasonalNaive, 1),
        ("moving average", MovingAverage, 1),
        ("Holt-Winters, refit every origin", HoltWinters, 1),
        ("Holt-Winters, refit every 4 origins", HoltWinters, 4),
    ]
    if args.compare_defaults:
        # statsmodels' own fit defaults (L-BFGS-B, brute-force start search): slow, so opt-in
        candidates.append(
            ("Holt-Winters, statsmodels defaults", lambda: HoltWinters(method="L-BFGS-B", use_brute=True), 1)
        )
    print(
        f"{args.hospitals} hospitals x {args.units} units x {len(origins)} origins, horizon {args.horizon}, "
        f"{args.days} days per series ({region.shape[0] * len(origins)} forecasts per method)"
    )
    rows = []
    for label, factory, refit_every in candidates:
        start, cpu_start = time.perf_counter(), time.process_time()
        q = np.stack(
            [rolling_origin_forecasts(s, origins, args.horizon, factory, refit_every=refit_every) for s in region]
        )
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        m = forecast_metrics(
            y.reshape(-1, args.horizon), q.reshape(-1, args.horizon, q.shape[-1]), quantiles=(0.1, 0.5, 0.9)
        )
        rows.append((label, seconds, cpu, m["wape"], m["pinball"], m["coverage"]))
    reference = rows[2][1]
    # wall seconds depend on what else the machine runs; CPU seconds are this process's own work
    print(
        f"{'method':38s} {'wall s':>7s} {'CPU s':>7s} {'x HW-refit':>10s} "
        f"{'WAPE':>7s} {'pinball':>8s} {'P10-P90 cov':>11s}"
    )
    for label, seconds, cpu, w, p, c in rows:
        print(f"{label:38s} {seconds:7.2f} {cpu:7.2f} {seconds / reference:10.2f} {w:7.3f} {p:8.3f} {c:11.3f}")


if __name__ == "__main__":
    main()
