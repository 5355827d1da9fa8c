"""Benchmark: how long the synthetic generator takes for a large region (50 hospitals x 3 years).

Run ``python -m simulations.benchmarks.synthetic_generate``; prints wall times side by side
(daily records, daily + encounter tables, writing CSV) and the ratios between them.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from medalloc_core.synthetic import RegionConfig, generate_region, write_region


def main(hospitals: int = 50, days: int = 1095, seed: int = 0) -> None:
    """Time generation and writing; the target is a few seconds for daily records."""
    config = RegionConfig(hospitals=hospitals, days=days, seed=seed)
    t0 = time.perf_counter()
    region = generate_region(config)
    t_daily = time.perf_counter() - t0

    t0 = time.perf_counter()
    enc_region = generate_region(RegionConfig(hospitals=hospitals, days=days, seed=seed, shape="encounters"))
    t_enc = time.perf_counter() - t0
    stays = sum(len(h.encounters) for h in enc_region.hospitals if h.encounters is not None)

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_region(region, Path(tmp) / "daily")
        t_write = time.perf_counter() - t0

    rows = sum(len(h.daily) for h in region.hospitals)
    print(f"region: {hospitals} hospitals x {days} days, {rows:,} unit-day rows, {stays:,} stays")
    print(f"{'step':<34}{'seconds':>10}{'x daily':>10}")
    for name, t in (
        ("generate (daily records)", t_daily),
        ("generate (daily + encounters)", t_enc),
        ("write daily CSV", t_write),
    ):
        print(f"{name:<34}{t:>10.2f}{t / t_daily:>10.2f}")


if __name__ == "__main__":
    main()
