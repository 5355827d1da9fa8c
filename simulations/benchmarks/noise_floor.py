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

import torch
from rich.console import Console
from rich.table import Table

from medalloc_core.forecast.evaluation import overall, rolling_origins, score_forecasts
from medalloc_core.forecast.forecasters import (
    Forecaster,
    Fracast,
    HoltWintersForecaster,
    HospitalData,
    SeasonalNaiveForecaster,
)
from medalloc_core.synthetic import generate_region

from ..oracle import QUANTILES, SAMPLES, Oracle
from .privacy_frontier import (
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
