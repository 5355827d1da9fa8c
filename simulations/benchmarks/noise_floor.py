"""The noise floor: the best pinball any forecaster could reach on each privacy_frontier family, and who is near it.

    python -m simulations.benchmarks.noise_floor [--quick] [--families NAMES] [--no-train] [--samples S]

A synthetic hospital's counts are random even to someone who knows everything about it: its
admissions are negative-binomial draws around an expected rate, its census depends on how
long each new patient stays. The **oracle** knows what no forecaster can (research only, from
the generator: ``Hospital.truth``): every unit's expected admissions on each future day, its
count dispersion and length-of-stay law, and the admission time of every patient in a bed at
the origin. It forecasts each target's quantiles from ``--samples`` draws of the unit's next
``H`` days (``simulate_stays``, the generator's own stay model). It has strictly more
information than any forecaster, so its pinball (up to Monte Carlo and origin-sampling error,
a few tenths of a percent) is a floor: **no model, however trained, can score below it** on
these origins. ``oracle / Holt-Winters`` is therefore the best ``fed / HW`` ratio reachable on
a family, and ``oracle / fracast`` the best ``fed / zero-shot``.

The same rolling origins, hospitals and scoring as ``privacy_frontier`` (true counts, volume-
weighted over hospitals). Methods: the oracle, Holt-Winters, seasonal naive, fracast (zero-shot,
when installed), the hybrid's public pretrained weights (``initial``) and, unless
``--no-train``, the hybrid fine-tuned centrally on every hospital's true counts (``centralized``,
the most any training on these hospitals reaches without privacy). Seeded: the same seed gives
the same numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

from medalloc_core.contract import ADMISSIONS, CENSUS
from medalloc_core.forecast.evaluation import overall, rolling_origins, score_forecasts
from medalloc_core.forecast.forecasters import (
    Forecaster,
    Fracast,
    HoltWintersForecaster,
    HospitalData,
    Origins,
    SeasonalNaiveForecaster,
)
from medalloc_core.synthetic import Region, UnitTruth, generate_region
from medalloc_core.synthetic.simulate import simulate_stays
from simulations.benchmarks.privacy_frontier import (
    HORIZON,
    LOCAL_EPOCHS,
    ROUNDS,
    Family,
    _hybrid,
    build_hospitals,
    families,
    with_region,
)

logger = logging.getLogger(__name__)

QUANTILES = (0.1, 0.5, 0.9)
SAMPLES = 400  # Monte Carlo draws per origin: quantile error well under the origin-to-origin spread


def oracle_forecast(
    truth: UnitTruth,
    day: int,
    *,
    horizon: int,
    targets: tuple[str, ...],
    rng: np.random.Generator,
    samples: int = SAMPLES,
) -> np.ndarray:
    """``(horizon, T, Q)`` quantiles of the unit's next ``horizon`` days from region day ``day`` on, knowing its truth.

    Admissions: negative-binomial draws around the expected rate. Census: the patients in a bed
    at the origin stay as the generator's law says given how long they have been in
    (``remaining_discharges``); each draw's new patients stay as the generator draws stays.
    All ``samples`` draws are simulated as one run of ``samples * horizon`` days (``horizon``
    a whole number of weeks keeps every day's weekday).
    """
    assert horizon % 7 == 0, "the draws are laid end to end: the horizon must be whole weeks"
    g = day + truth.warmup  # grid index of the first forecast day
    rate = truth.rate[g : g + horizon]
    if rate.size != horizon:
        raise ValueError(f"day {day} + {horizon} runs past the unit's simulated days")
    frailty = rng.gamma(shape=truth.dispersion, scale=1.0 / truth.dispersion, size=(samples, horizon))
    counts = rng.poisson(rate * frailty)  # (S, H) admissions per draw and day
    out = np.empty((horizon, len(targets), len(QUANTILES)))
    levels = np.asarray(QUANTILES)
    for t, target in enumerate(targets):
        if target == ADMISSIONS:
            draws = counts.astype(float)
        elif target == CENSUS:
            stays = simulate_stays(
                counts.reshape(-1),
                0,
                weekday_of_first=int(truth.weekday[g]),
                los_mean=truth.los_mean,
                los_sigma=truth.los_sigma,
                max_los=truth.warmup,
                admit_hour=truth.admit_hour,
                admit_hour_sd=truth.admit_hour_sd,
                weekend_discharge_delay=truth.weekend_discharge_delay,
                rng=rng,
            )
            draw = stays.admit_day // horizon
            start = stays.admit_day - draw * horizon
            stop = np.minimum(stays.discharge_day - draw * horizon, horizon)  # present on days start .. stop-1
            diff = np.zeros((samples, horizon + 1))
            keep = stop > start
            np.add.at(diff, (draw[keep], start[keep]), 1)
            np.add.at(diff, (draw[keep], stop[keep]), -1)
            new = np.cumsum(diff, axis=1)[:, :horizon]
            leave = remaining_discharges(truth, day, samples=samples, rng=rng)  # (S, n) in a bed at the origin
            present = (leave[:, :, None] > day + np.arange(horizon)).sum(axis=1)  # (S, H)
            draws = new + present
        else:
            raise ValueError(f"the oracle forecasts admissions and census, not {target!r}")
        out[:, t, :] = np.quantile(draws, levels, axis=0).T
    return out


def remaining_discharges(truth: UnitTruth, day: int, *, samples: int, rng: np.random.Generator) -> np.ndarray:
    """``(samples, n)`` discharge days of the ``n`` patients in a bed at the midnight before ``day``.

    The oracle knows when each of them was admitted, not when they will leave: each draw is
    the generator's stay law (lognormal length, weekend delay) conditioned on the patient
    still being in at that midnight (rejection sampling; a patient whose stay is so long that
    no draw in 40 tries is that long keeps the true day, which only helps the oracle).
    """
    stays = truth.stays
    inside = np.flatnonzero((stays.admit_day <= day - 1) & (stays.discharge_day > day - 1))
    admit = stays.admit_day[inside]
    minute = stays.admit_minute[inside] / 1440.0
    mu = np.log(truth.los_mean) - truth.los_sigma**2 / 2.0
    out = np.full((samples, inside.size), -1, dtype=np.int64)
    for _ in range(40):
        todo = out < 0
        if not todo.any():
            break
        los = np.minimum(rng.lognormal(mu, truth.los_sigma, size=out.shape), float(truth.warmup))
        offset = np.floor(minute + los).astype(np.int64)
        leave = admit + offset
        weekday = truth.weekday[np.clip(leave + truth.warmup, 0, truth.weekday.size - 1)]
        delay = (weekday >= 5) & (offset >= 1) & (rng.random(out.shape) < truth.weekend_discharge_delay)
        leave = leave + np.where(delay, 7 - weekday, 0)
        ok = todo & (leave > day - 1)
        out[ok] = leave[ok]
    return np.where(out < 0, stays.discharge_day[inside], out)


class Oracle(Forecaster):
    """The noise-floor forecaster: reads the generator's hidden truth (research only, never a model)."""

    def __init__(self, region: Region | None = None, samples: int = SAMPLES, seed: int = 0) -> None:
        self.region = region
        self.samples = samples
        self.seed = seed
        self.quantiles = QUANTILES

    def _fit(self, hospitals: Any) -> None:
        assert self.region is not None
        self.truth_ = {h.hospital_id: h.truth for h in self.region.hospitals}

    def _predict(self, hospital: HospitalData, origins: Origins) -> np.ndarray:
        assert self.region is not None
        spec = hospital.spec.resolved(hospital.records.frequency)
        assert spec.horizon is not None
        start = pd.Timestamp(self.region.config.start_date)
        truth = self.truth_[hospital.name]
        rng = np.random.default_rng([self.seed, int(hospital.name.lstrip("H") or 0)])
        out = np.empty((len(origins), spec.horizon, len(spec.targets), len(QUANTILES)))
        for row, (unit, first) in enumerate(zip(origins.units, origins.target_start)):
            day = int((pd.Timestamp(first) - start).days)
            out[row] = oracle_forecast(
                truth[str(unit)],
                day,
                horizon=spec.horizon,
                targets=tuple(spec.targets),
                rng=rng,
                samples=self.samples,
            )
        return out


def run_family(family: Family, *, train: bool, samples: int, seed: int = 0) -> dict[str, Any]:
    """Every method on one family's rolling origins: pinball per target and over both (volume-weighted)."""
    began = time.perf_counter()
    region = generate_region(family.config)
    hospitals = build_hospitals(family, region)
    origins = {n: rolling_origins(h) for n, h in hospitals.items()}
    actuals = {n: h.actuals(origins[n]) for n, h in hospitals.items()}
    true_region, _ = with_region(hospitals, hospitals)
    methods: list[tuple[str, Forecaster, dict[str, HospitalData]]] = [
        ("oracle (the floor)", Oracle(region, samples=samples, seed=seed), hospitals),
        ("holt_winters", HoltWintersForecaster(), hospitals),
        ("seasonal_naive", SeasonalNaiveForecaster(), hospitals),
    ]
    if Fracast.available():
        methods.append(("fracast (zero-shot)", Fracast(), hospitals))
    methods.append(("pretrained (initial)", _hybrid(epochs=0), true_region))
    if train:
        methods.append(("centralized (true counts)", _hybrid(epochs=ROUNDS * LOCAL_EPOCHS), true_region))
    scores: dict[str, dict[str, float]] = {}
    for label, forecaster, data in methods:
        forecaster.fit(data)
        preds = {n: forecaster.predict(h, origins[n]) for n, h in data.items()}
        row: dict[str, float] = {}
        for t, target in enumerate(("all", *family.targets)):
            sl = slice(None) if target == "all" else slice(t - 1, t)
            per = {n: score_forecasts(actuals[n][..., sl], preds[n][..., sl, :], QUANTILES) for n in hospitals}
            vw = overall(per)["volume_weighted"]
            row[f"pinball {target}"] = vw["pinball"]
            if target == "all":
                row["coverage"] = vw["coverage"]
        scores[label] = row
    return {
        "family": family.name,
        "targets": list(family.targets),
        "origins": sum(len(o) for o in origins.values()),
        "methods": scores,
        "seconds": round(time.perf_counter() - began, 1),
    }


def floor_table(results: list[dict[str, Any]]) -> Table:
    """One row per family: each method's pinball over the floor, and the best reachable goal ratios."""
    table = Table(title="pinball / the oracle's (1.000 = the floor; over both targets, volume-weighted)")
    table.add_column("family")
    names = [n for n in results[0]["methods"] if not n.startswith("oracle")]
    for n in names:
        table.add_column(n, justify="right")
    table.add_column("best fed / HW", justify="right")
    table.add_column("best fed / zero-shot", justify="right")
    for r in results:
        m = r["methods"]
        floor = m["oracle (the floor)"]["pinball all"]
        cells = [f"{m[n]['pinball all'] / floor:.3f}" if n in m else "n/a" for n in names]
        hw = m["holt_winters"]["pinball all"]
        fz = m.get("fracast (zero-shot)", {}).get("pinball all", math.nan)
        table.add_row(r["family"], *cells, f"{floor / hw:.3f}", f"{floor / fz:.3f}")
    return table


def target_table(results: list[dict[str, Any]]) -> Table:
    """Per family and target: the floor's pinball and Holt-Winters' and the initial model's over it."""
    table = Table(title="per target: the floor's pinball, and each method's over it")
    for col in ("family", "target", "floor", "HW", "fracast", "initial", "centralized"):
        table.add_column(col, justify="left" if col in ("family", "target") else "right")
    for r in results:
        m = r["methods"]
        for target in r["targets"]:
            key = f"pinball {target}"
            floor = m["oracle (the floor)"][key]

            def over(name: str, m: dict[str, Any] = m, floor: float = floor, key: str = key) -> str:
                return f"{m[name][key] / floor:.3f}" if name in m else "n/a"

            table.add_row(
                r["family"],
                target,
                f"{floor:.3f}",
                over("holt_winters"),
                over("fracast (zero-shot)"),
                over("pretrained (initial)"),
                over("centralized (true counts)"),
            )
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller regions (about half the hospitals)")
    parser.add_argument("--families", default="", help="comma-separated family names (default: all)")
    parser.add_argument("--no-train", action="store_true", help="skip centralized fine-tuning (minutes per family)")
    parser.add_argument("--samples", type=int, default=SAMPLES, help="oracle draws per origin (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the oracle's draws")
    parser.add_argument("--out", type=Path, default=Path("results/noise_floor"), help="folder for results.json")
    args = parser.parse_args(argv)
    known = [f.name for f in families(args.quick)]
    wanted = [n for n in args.families.split(",") if n]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        parser.error(f"--families: unknown {unknown}; choose from {known}")
    if args.samples < 50:
        parser.error("--samples must be at least 50")
    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(1)
    console = Console(width=140)
    assert HORIZON % 7 == 0
    results = []
    began = time.perf_counter()
    for family in families(args.quick):
        if wanted and family.name not in wanted:
            continue
        with console.status(f"{family.name} ..."):
            results.append(run_family(family, train=not args.no_train, samples=args.samples, seed=args.seed))
        console.print(f"  {family.name}: {results[-1]['origins']} origins ({results[-1]['seconds']} s)")
    console.print(floor_table(results))
    console.print(target_table(results))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    console.print(f"total {time.perf_counter() - began:.0f} s; wrote {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
