"""Accuracy against privacy: pinball and WAPE (ratios to Holt-Winters) per scenario family and epsilon.

    python -m simulations.benchmarks.privacy_frontier [--quick] [--families NAMES] [--epsilons LIST] [--out DIR]

For each scenario family (the default region; many small hospitals; short histories of
100-200 days; an epidemic shock; an admissions-only region; and ``regional waves (unseen)``,
whose generator settings lie outside every range the public pretraining corpus drew from:
epidemic amplitude 1.5 (corpus 0-0.8), waves every 45-90 days (corpus default 150-330),
R0 2.6-3.2 (corpus 1.5-2.2), hospitals 0-28 days behind the regional curve (corpus 0-14), no
winter seasonality) every method forecasts the same rolling origins (8 per unit, one every
14 days over each unit's last 16 weeks) and is scored on the hospitals' true counts:

- ``federated``: the hybrid model, starting from the public pretrained weights, fine-tuned by
  federated averaging (``ROUNDS`` rounds x 1 local epoch, lr ``FINE_TUNE_LR``, the round with
  the lowest pinball on the nodes' *released* validation days kept) on every node's counts
  released once at patient-level epsilon E (``medalloc_core.privacy.release``, the very
  mechanism a node runs, docs/privacy.md: training on the release is post-processing). It
  reads the region (``medalloc_core.forecast.region``): the other hospitals' released daily totals up
  to the day before each origin, post-processing too. At forecast time the node reads its own
  true recent counts;
- ``local only DP``: each hospital fine-tunes the same start alone on its release at E;
- ``local only DP (scratch)``: each hospital alone on its release at E, from the hybrid's own
  initial weights (the classical forecast, no public pretraining; lr 1e-3);
- ``federated + HW``: the mean of the federated quantiles and the hospital's own Holt-Winters;
- ``federated + fracast``: the mean of the federated and the zero-shot quantiles, level by level
  (``medalloc_core.forecast.zero_shot_mix``, what ``medalloc forecast --zero-shot-weight 0.5``
  gives a node); ``local only DP + fracast``, ``pretrained + fracast`` and ``centralized +
  fracast`` mix the same way. Its goals (a third goals table) take ``pretrained + fracast`` as
  the initial model: the mix before any hospital's data;
- ``centralized``: the same start fine-tuned on all hospitals' true windows pooled, region of true counts, no privacy;
- ``pretrained``: the public weights alone (no hospital data, no privacy cost);
- ``oracle (the floor)``: reads the generator's hidden truth (``simulations/oracle.py``), so no
  forecaster can score below it; the goals table shows the lowest ``fed / HW`` and
  ``fed / zero-shot`` any model could reach, and marks a goal below that floor unreachable;
- ``holt_winters``, ``seasonal_naive``, ``moving_average``: refitted at every origin on the hospital's own data;
- ``fracast``: the zero-shot model from PyPI (optional: ``python -m pip install -e '.[zeroshot]'``);
- ``fracast + head (federated)``: fracast frozen plus a small head trained by FedAvg on the
  releases at E (``medalloc_core.forecast.forecasters.FracastHead``): it reads the window's
  features, the weekday and the region beside fracast's quantiles and starts as fracast
  exactly; the best round on the released validation days is kept, and fracast itself unless
  that round beats it by more than the validation noise. ``(local)``: each hospital's own head
  on its own release; ``(centralized)``: one head on every hospital's true counts pooled.
  Its goals (a second goals table) take fracast zero-shot as the initial model: it is the head's start.

Numbers are volume-weighted over hospitals (metrics.aggregate_over_hospitals) and printed as
ratios to Holt-Winters (below 1 = better); a second table per family gives the federated model
against centralized training and, for the family's shortest-history hospitals (the shortest
third, at least one), against each hospital training alone at the same epsilon. Training runs
in one process (the federation's maths without Flower, ``medalloc_core.forecast.forecasters.Federated``)
on one torch thread; release noise is seeded (research), a real node draws it from the OS.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

from medalloc_core.contract import ADMISSIONS, CENSUS, DATE, UNIT, Frequency, UnitRecords
from medalloc_core.forecast.evaluation import evaluation_spec, overall, rolling_origins, score_forecasts
from medalloc_core.forecast.forecasters import (
    Federated,
    Forecaster,
    Fracast,
    FracastBackbone,
    FracastHead,
    HoltWintersForecaster,
    HospitalData,
    LocalOnly,
    MovingAverageForecaster,
    NeuralForecaster,
    SeasonalNaiveForecaster,
)
from medalloc_core.forecast.region import regional
from medalloc_core.forecast.zero_shot_mix import ZERO_SHOT_WEIGHT, blend
from medalloc_core.privacy.release import ReleasePlan, release_records
from medalloc_core.synthetic import Region, RegionConfig, generate_region

from ..oracle import Oracle

logger = logging.getLogger(__name__)

EPSILONS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, math.inf)
DELTA = 1e-6
MAX_STAY_DAYS = 14
HISTORY, HORIZON = 28, 14  # the pretrained weights' shape
ROUNDS, LOCAL_EPOCHS = 20, 1  # training is free after the release: as many rounds as help, the best kept
FINE_TUNE_LR = 1e-3  # 3e-4 (the old setting) barely moved the weights in 5 rounds; 3e-3 overfit short histories
SCRATCH_LR = 1e-3  # from the classical-forecast init there is no pretrained start to stay near
BATCH = 256
LEARNED = ("hybrid", "head")  # the trained models a run may include (--learned)
CONTEXT = (
    "region",
    "weeks",
)  # what the hybrid reads beyond its own window (year-ago did not help: docs/forecasting.md)


@dataclass(frozen=True)
class Family:
    """One scenario family: a region and the targets forecast."""

    name: str
    config: RegionConfig
    targets: tuple[str, ...] = (ADMISSIONS, CENSUS)
    pre_eval_days: tuple[int, int] | None = None  # cut each hospital to this many days before the held-out weeks


def families(quick: bool) -> list[Family]:
    """The five families; ``quick`` halves the number of hospitals (at least 3)."""
    k = 0.5 if quick else 1.0

    def n(full: int) -> int:
        return max(3, int(round(full * k)))

    return [
        Family("default", RegionConfig(hospitals=5, days=730, seed=0, short_history_fraction=0.4)),
        Family(
            "many small",
            RegionConfig(hospitals=n(16), days=450, seed=11, min_beds=10, max_beds=120, specialty_centres=0),
        ),
        Family(
            "short (100-200 d)",
            RegionConfig(hospitals=n(8), days=112 + 200, seed=12, max_beds=600, short_history_fraction=0.0),
            pre_eval_days=(100, 200),
        ),
        Family(
            "epidemic shock",
            RegionConfig(
                hospitals=n(6),
                days=540,
                seed=13,
                epidemic_amplitude=1.0,
                wave_gap_days=(90, 150),
                wave_intensity=(0.9, 1.0),
                short_history_fraction=0.0,
            ),
        ),
        Family(
            "admissions only",
            RegionConfig(hospitals=n(8), days=500, seed=14, short_history_fraction=0.3),
            targets=(ADMISSIONS,),
        ),
        Family(
            "regional waves (unseen)",
            RegionConfig(
                hospitals=n(8),
                days=420,
                seed=15,
                seasonality_scale=0.0,
                epidemic_amplitude=1.5,
                wave_gap_days=(45, 90),
                wave_r0=(2.6, 3.2),
                wave_intensity=(0.8, 1.0),
                max_lag_days=28,
                short_history_fraction=0.25,
            ),
        ),
    ]


def build_hospitals(family: Family, region: Region | None = None) -> dict[str, HospitalData]:
    """Wrap each hospital of the family's region (generated unless given) as the evaluation task sees it."""
    spec = evaluation_spec(history=HISTORY, horizon=HORIZON, targets=family.targets)
    rng = np.random.default_rng(family.config.seed)
    out = {}
    for h in (region or generate_region(family.config)).hospitals:
        frame = h.daily[[DATE, UNIT, *family.targets]]
        if family.pre_eval_days is not None:
            keep = int(rng.integers(*family.pre_eval_days)) + 7 * 16
            frame = frame[frame[DATE] >= frame[DATE].max() - pd.Timedelta(days=keep - 1)]
        frame = frame.sort_values([UNIT, DATE]).reset_index(drop=True)
        records = UnitRecords(frame, Frequency.DAILY, Path(h.hospital_id), "daily")
        out[h.hospital_id] = HospitalData(h.hospital_id, records, spec)
    return out


def release(
    hospitals: dict[str, HospitalData], *, epsilon: float, seed: int
) -> tuple[dict[str, HospitalData], dict[str, ReleasePlan]]:
    """Every hospital's source release at patient-level ``epsilon``: the mechanism a node runs.

    ``ReleasePlan.calibrate`` + ``release_records`` (``medalloc_core.privacy.release``) over the
    columns the hospital has among a node's default release-columns (admissions, census), as
    the ClientApp chooses them. The noise is seeded: a research run (a node draws it from the OS).
    """
    out, plans = {}, {}
    for i, (name, hospital) in enumerate(hospitals.items()):
        columns = tuple(c for c in (ADMISSIONS, CENSUS) if c in hospital.records.count_columns)
        plan = ReleasePlan.calibrate(epsilon=epsilon, delta=DELTA, max_stay_days=MAX_STAY_DAYS, columns=columns)
        rng = np.random.default_rng([seed, i, int(epsilon * 1000)])
        out[name] = HospitalData(name, release_records(hospital.records, plan, rng=rng), hospital.spec)
        plans[name] = plan
    return out, plans


def _hybrid(*, epochs: int, pretrained: bool = True) -> NeuralForecaster:
    init, lr = ("pretrained", FINE_TUNE_LR) if pretrained else (None, SCRATCH_LR)
    return NeuralForecaster(
        model="hybrid", init=init, epochs=epochs, batch_size=BATCH, lr=lr, context=CONTEXT, select=True
    )


def with_region(
    hospitals: dict[str, HospitalData], released: dict[str, HospitalData]
) -> tuple[dict[str, HospitalData], dict[str, HospitalData]]:
    """The hospitals' true and released data, each with the region of the others' *released* totals."""
    rel = {n: h.records for n, h in released.items()}
    own = regional(rel, {n: h.records for n, h in hospitals.items()})
    out_released = regional(rel)
    return (
        {n: HospitalData(n, own[n], h.spec) for n, h in hospitals.items()},
        {n: HospitalData(n, out_released[n], h.spec) for n, h in released.items()},
    )


def shortest_hospitals(hospitals: dict[str, HospitalData]) -> list[str]:
    """The shortest third of the hospitals (at least one) by days of records."""
    days = {n: int(h.records.frame[DATE].nunique()) for n, h in hospitals.items()}
    return sorted(days, key=lambda n: (days[n], n))[: max(1, math.ceil(len(days) / 3))]


def run_family(
    family: Family,
    *,
    zero_shot: bool,
    epsilons: tuple[float, ...] = EPSILONS,
    seed: int = 0,
    learned: tuple[str, ...] = LEARNED,
    fracast_cache: Path | None = None,
) -> dict[str, Any]:
    """Every method on one family; returns overall metrics per method (private ones per epsilon).

    ``learned``: which trained models run beside the baselines: ``"hybrid"`` (the federated
    hybrid and its comparisons), ``"head"`` (fracast + head, needs fracast and ``zero_shot``).
    """
    began = time.perf_counter()
    region = generate_region(family.config)
    hospitals = build_hospitals(family, region)
    shortest = shortest_hospitals(hospitals)
    origins = {n: rolling_origins(h) for n, h in hospitals.items()}
    actuals = {n: h.actuals(origins[n]) for n, h in hospitals.items()}
    quantiles = (0.1, 0.5, 0.9)
    forecasts: dict[str, dict[str, np.ndarray]] = {}
    scored: dict[str, dict[str, Any]] = {}
    scored_shortest: dict[str, dict[str, Any]] = {}

    def record(label: str, preds: dict[str, np.ndarray], seconds: float) -> None:
        forecasts[label] = preds
        per = {n: score_forecasts(actuals[n], preds[n], quantiles) for n in hospitals}
        scored[label] = overall(per)["volume_weighted"] | {"seconds": round(seconds, 1)}
        scored_shortest[label] = overall({n: per[n] for n in shortest})["volume_weighted"]

    def score(
        label: str,
        forecaster: Forecaster,
        train: dict[str, HospitalData] | None = None,
        inputs: dict[str, HospitalData] | None = None,
    ) -> None:
        t0 = time.perf_counter()
        forecaster.fit(train or hospitals)
        seen = inputs or hospitals
        record(label, {n: forecaster.predict(h, origins[n]) for n, h in seen.items()}, time.perf_counter() - t0)

    score(ORACLE, Oracle(region, seed=seed))  # the floor: no forecaster can beat it (simulations/oracle.py)
    score("holt_winters", HoltWintersForecaster())
    score("seasonal_naive", SeasonalNaiveForecaster())
    score("moving_average", MovingAverageForecaster())
    zero_shot = zero_shot and Fracast.available()
    head = zero_shot and "head" in learned
    hybrid = "hybrid" in learned
    backbone = FracastBackbone() if head else None  # one cache of fracast's forecasts for every head
    cache_file = None if fracast_cache is None else fracast_cache / f"{family.name.split(' ')[0]}-{seed}.npz"
    if backbone is not None and cache_file is not None and cache_file.is_file():
        backbone.load(cache_file)
    if zero_shot:
        score("fracast (zero-shot)", Fracast())
    true_region, _ = with_region(hospitals, hospitals)
    if hybrid:
        score("pretrained (no training)", _hybrid(epochs=0), true_region, true_region)
        score("centralized", _hybrid(epochs=ROUNDS * LOCAL_EPOCHS), true_region, true_region)
    mix = hybrid and zero_shot

    def with_fracast(model: str, mixed: str) -> None:  # level by level, as zero_shot_mix does on a node
        zs = forecasts["fracast (zero-shot)"]
        record(mixed, {n: blend(forecasts[model][n], zs[n], ZERO_SHOT_WEIGHT) for n in hospitals}, 0.0)

    if mix:
        with_fracast("pretrained (no training)", MIX["initial"])
        with_fracast("centralized", MIX["central"])
    if head:
        score(
            HEAD["central"], FracastHead(mode="centralized", rounds=ROUNDS, backbone=backbone), true_region, true_region
        )
    for eps in epsilons:
        tag = f"@ {eps:g}"
        released = hospitals if math.isinf(eps) else release(hospitals, epsilon=eps, seed=seed)[0]
        seen, released = with_region(hospitals, released)
        if hybrid:
            score(
                f"federated {tag}",
                Federated(_hybrid(epochs=LOCAL_EPOCHS), rounds=ROUNDS, local_epochs=LOCAL_EPOCHS),
                released,
                seen,
            )
            score(f"local only DP {tag}", LocalOnly(_hybrid(epochs=ROUNDS * LOCAL_EPOCHS)), released, seen)
            score(
                f"local only DP (scratch) {tag}",
                LocalOnly(_hybrid(epochs=ROUNDS * LOCAL_EPOCHS, pretrained=False)),
                released,
                seen,
            )
            mixed = {n: 0.5 * forecasts[f"federated {tag}"][n] + 0.5 * forecasts["holt_winters"][n] for n in hospitals}
            record(f"federated + HW {tag}", mixed, 0.0)
            if mix:
                with_fracast(f"federated {tag}", f"{MIX['federated']} {tag}")
                with_fracast(f"local only DP {tag}", f"{MIX['local']} {tag}")
        if head:
            score(f"{HEAD['federated']} {tag}", FracastHead(rounds=ROUNDS, backbone=backbone), released, seen)
            score(f"{HEAD['local']} {tag}", FracastHead(mode="local", rounds=ROUNDS, backbone=backbone), released, seen)
    if backbone is not None and cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        backbone.save(cache_file)
    days = [int(h.records.frame[DATE].nunique()) for h in hospitals.values()]
    return {
        "family": family.name,
        "hospitals": len(hospitals),
        "units": sum(len(h.records.units) for h in hospitals.values()),
        "days_min_max": [min(days), max(days)],
        "targets": list(family.targets),
        "origins": sum(len(o) for o in origins.values()),
        "epsilons": list(epsilons),
        "shortest": {n: int(hospitals[n].records.frame[DATE].nunique()) for n in shortest},
        "methods": scored,
        "methods_shortest": scored_shortest,
        "seconds": round(time.perf_counter() - began, 1),
    }


# ----------------------------------------------------------------------------- output
PRIVATE = ("federated", "local only DP", "local only DP (scratch)", "federated + HW")
MIX = {  # the hybrid's quantiles mixed with fracast's (medalloc_core.forecast.zero_shot_mix)
    "federated": "federated + fracast",
    "local": "local only DP + fracast",
    "central": "centralized + fracast",
    "initial": "pretrained + fracast",
}
HEAD = {
    "federated": "fracast + head (federated)",
    "local": "fracast + head (local)",
    "central": "fracast + head (centralized)",
}


def _eps_label(e: float) -> str:
    return "no DP" if math.isinf(e) else f"{e:g}"


def ratio_table(result: dict[str, Any]) -> Table:
    """Rows: methods; columns: pinball and WAPE ratios to Holt-Winters at each epsilon."""
    m = result["methods"]
    hw = m["holt_winters"]
    epsilons = [float(e) for e in result["epsilons"]]
    eps_cols = [_eps_label(e) for e in epsilons]
    table = Table(
        title=f"{result['family']}: {result['hospitals']} hospitals, {result['units']} units, "
        f"{result['days_min_max'][0]}-{result['days_min_max'][1]} days, {result['origins']} origins "
        f"(pinball / WAPE as ratios to Holt-Winters; P10-P90 coverage in brackets)"
    )
    table.add_column("method")
    for col in eps_cols:
        table.add_column(f"eps {col}", justify="right")

    def cell(v: dict[str, float]) -> str:
        return f"{v['pinball'] / hw['pinball']:.3f} / {v['wape'] / hw['wape']:.3f} [{v['coverage']:.2f}]"

    for name in (*PRIVATE, MIX["federated"], MIX["local"], HEAD["federated"], HEAD["local"]):
        if f"{name} @ {epsilons[0]:g}" in m:  # only the models that ran
            table.add_row(name, *[cell(m[f"{name} @ {e:g}"]) for e in epsilons])
    for name in [k for k in m if "@" not in k]:
        table.add_row(name, *[cell(m[name])] * len(epsilons))
    return table


def goal_table(result: dict[str, Any]) -> Table:
    """The federated model against centralized, and against local-only on the shortest histories."""
    m, s = result["methods"], result["methods_shortest"]
    epsilons = [float(e) for e in result["epsilons"]]
    shortest = ", ".join(f"{n} {d} d" for n, d in result["shortest"].items())
    table = Table(title=f"{result['family']}: federated pinball / WAPE as ratios (shortest: {shortest})")
    table.add_column("federated against")
    for e in epsilons:
        table.add_column(f"eps {_eps_label(e)}", justify="right")

    def ratio(a: dict[str, float], b: dict[str, float]) -> str:
        return f"{a['pinball'] / b['pinball']:.3f} / {a['wape'] / b['wape']:.3f}"

    if f"federated @ {epsilons[0]:g}" in m:
        table.add_row("centralized", *[ratio(m[f"federated @ {e:g}"], m["centralized"]) for e in epsilons])
        for other in ("local only DP", "local only DP (scratch)"):
            table.add_row(
                f"{other}, shortest (goal <= 0.85)",
                *[ratio(s[f"federated @ {e:g}"], s[f"{other} @ {e:g}"]) for e in epsilons],
            )
    fed, local = HEAD["federated"], HEAD["local"]
    if f"{fed} @ {epsilons[0]:g}" in m:
        table.add_row(f"{fed}: / fracast", *[ratio(m[f"{fed} @ {e:g}"], m["fracast (zero-shot)"]) for e in epsilons])
        table.add_row(f"{fed}: / centralized", *[ratio(m[f"{fed} @ {e:g}"], m[HEAD["central"]]) for e in epsilons])
        table.add_row(
            f"{fed}: / local, shortest", *[ratio(s[f"{fed} @ {e:g}"], s[f"{local} @ {e:g}"]) for e in epsilons]
        )
    return table


GOALS = (
    ("fed / initial", 0.96),
    ("central / initial", 0.93),
    ("fed / zero-shot", 0.95),
    ("fed / HW", 0.90),
    ("shortest fed / local", 0.85),
)


ORACLE = "oracle (the floor)"
FLOORS = tuple((name, goal) for name, goal in GOALS if name in ("fed / HW", "fed / zero-shot"))


def goal_ratios(result: dict[str, Any], eps: float, model: str = "hybrid") -> dict[str, float]:
    """The issue's goals as pinball ratios at ``eps`` (NaN where a method is absent), plus P10-P90 coverage.

    ``model``: ``"hybrid"`` (the federated hybrid; initial = its public pretrained weights) or
    ``"head"`` (fracast + federated head; initial = fracast zero-shot, the head's exact start) or
    ``"mix"`` (the federated hybrid and fracast, level by level; initial = the pretrained hybrid and fracast).
    """
    m, s = result["methods"], result["methods_shortest"]
    if model == "head":
        fed_key, local_key, central, initial = (
            f"{HEAD['federated']} @ {eps:g}",
            f"{HEAD['local']} @ {eps:g}",
            HEAD["central"],
            "fracast (zero-shot)",
        )
    elif model == "mix":
        fed_key, local_key, central, initial = (
            f"{MIX['federated']} @ {eps:g}",
            f"{MIX['local']} @ {eps:g}",
            MIX["central"],
            MIX["initial"],
        )
    else:
        fed_key, local_key, central, initial = (
            f"federated @ {eps:g}",
            f"local only DP @ {eps:g}",
            "centralized",
            "pretrained (no training)",
        )
    nan = float("nan")
    fed = m[fed_key]["pinball"] if fed_key in m else nan

    def r(a: float, key: str, src: dict[str, Any] = m) -> float:
        return a / src[key]["pinball"] if key in src else nan

    return {
        "fed / initial": r(fed, initial),
        "central / initial": r(m[central]["pinball"] if central in m else nan, initial),
        "fed / zero-shot": r(fed, "fracast (zero-shot)"),
        "fed / HW": r(fed, "holt_winters"),
        "shortest fed / local": r(s[fed_key]["pinball"] if fed_key in s else nan, local_key, s),
        "coverage": m[fed_key]["coverage"] if fed_key in m else nan,
        "floor / HW": r(m[ORACLE]["pinball"], "holt_winters") if ORACLE in m else nan,
        "floor / zero-shot": r(m[ORACLE]["pinball"], "fracast (zero-shot)") if ORACLE in m else nan,
    }


def summary_table(results: list[dict[str, Any]], eps: float, model: str = "hybrid") -> Table:
    """One row per family: the goals as pinball ratios at ``eps``; a missed goal shows by how much."""
    what = {
        "hybrid": "federated hybrid; initial = its pretrained weights",
        "head": "fracast + federated head; initial = fracast zero-shot, the head's start",
        "mix": "federated hybrid + fracast, level by level; initial = pretrained hybrid + fracast",
    }[model]
    table = Table(
        title=f"goals at patient-level epsilon {_eps_label(eps)}, {what} "
        "(pinball ratios; '!' = missed, +x = by how much)"
    )
    table.add_column("family")
    for name, goal in GOALS:
        table.add_column(f"{name} (<= {goal:g})", justify="right")
    table.add_column("P10-P90 cov. (0.75-0.85)", justify="right")
    for name, _goal in FLOORS:
        table.add_column(f"floor / {name.split(' / ')[1]} (lowest reachable)", justify="right")
    met = {name: 0 for name, _ in GOALS}
    for result in results:
        ratios = goal_ratios(result, eps, model)
        cells = []
        for name, goal in GOALS:
            v = ratios[name]
            if math.isnan(v):
                cells.append("n/a")
            elif v <= goal:
                met[name] += 1
                cells.append(f"{v:.3f}")
            else:
                cells.append(f"{v:.3f} ! +{v - goal:.3f}")
        cov = ratios["coverage"]
        cells.append("n/a" if math.isnan(cov) else f"{cov:.2f}" + ("" if 0.75 <= cov <= 0.85 else " !"))
        for name, goal in FLOORS:  # a floor above its goal: no forecaster can meet that goal here
            v = ratios[f"floor / {name.split(' / ')[1]}"]
            cells.append("n/a" if math.isnan(v) else f"{v:.3f}" + (" unreachable" if v > goal else ""))
        table.add_row(result["family"], *cells)
    table.add_row("met on", *[f"{met[name]} of {len(results)}" for name, _ in GOALS], "", *[""] * len(FLOORS))
    return table


def frontier_plot(results: list[dict[str, Any]], path: Path) -> None:
    """One panel per family: pinball ratio to Holt-Winters against epsilon."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.8), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, result in zip(axes, results):
        epsilons = [float(e) for e in result["epsilons"]]
        xs = np.arange(len(epsilons))
        labels = [_eps_label(e) for e in epsilons]
        m = result["methods"]
        hw = m["holt_winters"]["pinball"]
        styles = (
            ("federated", "o-"),
            ("local only DP", "s--"),
            ("local only DP (scratch)", "x--"),
            ("federated + HW", "^:"),
            (MIX["federated"], "v-"),
            (HEAD["federated"], "D-"),
        )
        for name, style in styles:
            if f"{name} @ {epsilons[0]:g}" not in m:
                continue
            ax.plot(xs, [m[f"{name} @ {e:g}"]["pinball"] / hw for e in epsilons], style, label=name)
        lines: tuple[tuple[str, Any], ...] = (
            ("centralized", ":"),
            ("pretrained (no training)", "-."),
            ("seasonal_naive", (0, (1, 3))),
            ("fracast (zero-shot)", (0, (5, 2))),
        )
        for name, style in lines:
            if name in m:
                ax.axhline(
                    m[name]["pinball"] / hw,
                    linestyle=style,
                    color="grey" if name != "centralized" else "black",
                    linewidth=1,
                    label=name,
                )
        ax.axhline(1.0, color="red", linewidth=1, label="Holt-Winters")
        if 1.0 in epsilons:
            ax.axvline(epsilons.index(1.0), color="green", alpha=0.2, linewidth=8)  # epsilon 1: the goal
        ax.set_xticks(xs, labels)
        ax.set_title(result["family"], fontsize=10)
        ax.set_xlabel("patient-level epsilon (delta 1e-6)")
    axes[0].set_ylabel("pinball loss / Holt-Winters")
    axes[-1].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _worker_init() -> None:
    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller regions (about half the hospitals)")
    parser.add_argument("--families", default="", help="comma-separated family names (default: all)")
    parser.add_argument("--out", type=Path, default=Path("results/privacy_frontier"), help="folder for results.json")
    parser.add_argument(
        "--figure", type=Path, default=None, help="PNG of the frontier (default: OUT/privacy_frontier.png)"
    )
    parser.add_argument("--no-zero-shot", action="store_true", help="skip the fracast comparison")
    parser.add_argument(
        "--learned",
        default=",".join(LEARNED),
        help="trained models beside the baselines: hybrid (the federated hybrid and its comparisons), "
        "head (fracast + head; needs fracast); default: %(default)s",
    )
    parser.add_argument(
        "--epsilons",
        default=",".join(_eps_label(e).replace("no DP", "inf") for e in EPSILONS),
        help="comma-separated patient-level epsilons, 'inf' for no DP (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the (research) release noise")
    parser.add_argument(
        "--fracast-cache",
        type=Path,
        default=None,
        help="folder that keeps fracast's forecasts between runs (a run with the same contexts reads them back)",
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="families run in parallel processes (same numbers; default 1)"
    )
    args = parser.parse_args(argv)
    try:
        epsilons = tuple(float(e) for e in args.epsilons.split(","))
    except ValueError:
        parser.error(f"--epsilons {args.epsilons!r}: expected numbers separated by commas, e.g. 0.5,1,inf")
    if any(not e > 0 for e in epsilons):
        parser.error(f"--epsilons {args.epsilons!r}: every epsilon must be > 0")
    learned = tuple(x for x in args.learned.split(",") if x)
    if not learned or any(x not in LEARNED for x in learned):
        parser.error(f"--learned {args.learned!r}: expected names from {','.join(LEARNED)}, separated by commas")
    known = [f.name for f in families(args.quick)]
    unknown = [n for n in args.families.split(",") if n and n not in known]
    if unknown:
        parser.error(f"--families: unknown {unknown}; choose from {known}")
    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)  # pandas/statsmodels deprecations, not ours to fix here
    torch.set_num_threads(1)
    console = Console(width=200)
    chosen = [f for f in families(args.quick) if not args.families or f.name in args.families.split(",")]
    began = time.perf_counter()
    if args.jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=args.jobs, initializer=_worker_init) as pool:
            futures = [
                pool.submit(
                    run_family,
                    f,
                    zero_shot=not args.no_zero_shot,
                    epsilons=epsilons,
                    seed=args.seed,
                    learned=learned,
                    fracast_cache=args.fracast_cache,
                )
                for f in chosen
            ]
            results = [f.result() for f in futures]
    else:
        results = [
            run_family(
                family,
                zero_shot=not args.no_zero_shot,
                epsilons=epsilons,
                seed=args.seed,
                learned=learned,
                fracast_cache=args.fracast_cache,
            )
            for family in chosen
        ]
    for result in results:
        console.print(ratio_table(result))
        console.print(goal_table(result))
        console.print(f"  ({result['seconds']:.0f} s)")
    goal_eps = 1.0 if 1.0 in epsilons else epsilons[0]
    if any(f"federated @ {goal_eps:g}" in r["methods"] for r in results):
        console.print(summary_table(results, goal_eps))
    if any(f"{MIX['federated']} @ {goal_eps:g}" in r["methods"] for r in results):
        console.print(summary_table(results, goal_eps, model="mix"))
    if any(f"{HEAD['federated']} @ {goal_eps:g}" in r["methods"] for r in results):
        console.print(summary_table(results, goal_eps, model="head"))
    if not (Fracast.available() or args.no_zero_shot):
        console.print("fracast not installed: python -m pip install -e '.[zeroshot]' to add the zero-shot comparison")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n", encoding="utf-8")
    figure = args.figure or args.out / "privacy_frontier.png"
    frontier_plot(results, figure)
    console.print(f"total {time.perf_counter() - began:.0f} s; wrote {args.out / 'results.json'} and {figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
