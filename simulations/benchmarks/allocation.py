"""Which forecast makes the cheapest plan? Plans from several forecasts scored against the true future.

Run: ``python -m simulations.benchmarks.allocation [--hospitals 10 --horizon 14 --seed 0]``.

Each method's forecast goes through the same two decisions — unit staffing by the newsvendor
rule, then the regional surge pool by the stochastic LP — and the true demand then arrives:
overflow beyond staffed beds plus surge is relieved by transfers to neighbours with free staffed
beds (the regional LP solved on the truth, pool fixed), the rest is unserved. Costs: c_u per
unserved patient-day, c_o per idle staffed (or surge) bed-day, the transfer cost per patient-day
moved. ``cost / oracle`` compares each method with the plan made knowing the future.

The synthetic region comes from ``medalloc_core.synthetic`` (``--toy-region`` uses a small
seasonal-Poisson region instead when that module is not installed). The federated DP and
local-only DP forecasts are trained in the run by :func:`neural_forecasts` (a few minutes at 10
hospitals; ``--skip-neural`` leaves them out, ``--rounds`` sets the federation's length).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from medalloc_core.allocation.forecast_io import BEDS, HOSPITAL, TARGET, VALUE, Q
from medalloc_core.allocation.newsvendor import PlanConfig, UnitCosts, plan_hospital
from medalloc_core.allocation.regional import RegionalConfig, hospital_totals, plan_region, synthetic_distances
from medalloc_core.contract import CAPACITY, CENSUS, DATE, UNIT
from medalloc_core.forecast.baselines import SeasonalNaive

from ..logs import quiet_flower

logger = logging.getLogger(__name__)
LEVELS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)


@dataclass(frozen=True)
class BenchmarkCosts:
    """The cost model every method is scored with (one idle staffed bed-day = 1)."""

    under_cost: float = 10.0
    over_cost: float = 1.0
    transfer_cost: float = 2.0
    transfer_cost_per_km: float = 0.02
    surge_pool: float = 20.0
    scenarios: int = 20
    neighbours: int = 3
    seed: int = 0


# ------------------------------------------------------------------ forecasts
def oracle_forecast(truth: pd.DataFrame) -> pd.DataFrame:
    """The future itself as a degenerate distribution: every quantile equals the true census."""
    return _from_point_and_spread(truth, truth[CENSUS].to_numpy(dtype=float), np.zeros(len(truth)))


def noisy_oracle_forecast(truth: pd.DataFrame, *, relative_sd: float = 0.1, seed: int) -> pd.DataFrame:
    """Sanity method: a median off the truth by N(0, relative_sd) with honest normal quantiles around it."""
    rng = np.random.default_rng(seed)
    y = truth[CENSUS].to_numpy(dtype=float)
    return _from_point_and_spread(
        truth, y * (1 + relative_sd * rng.standard_normal(len(y))), relative_sd * np.maximum(y, 1.0)
    )


def _from_point_and_spread(keys: pd.DataFrame, median: np.ndarray, sd: np.ndarray) -> pd.DataFrame:
    from scipy.special import ndtri

    parts = []
    for q in LEVELS:
        parts.append(
            keys[[HOSPITAL, UNIT, DATE]].assign(
                **{TARGET: CENSUS, Q: q, VALUE: np.maximum(median + ndtri(q) * sd, 0.0)}
            )
        )
    return pd.concat(parts, ignore_index=True)


def seasonal_naive_forecast(
    history: pd.DataFrame, origin: pd.Timestamp, horizon: int, *, window_days: int = 365
) -> pd.DataFrame:
    """Same weekday last week (``forecast.baselines.SeasonalNaive``) per hospital unit, as a forecast frame.

    Fitted on the last ``window_days`` of census up to ``origin``; its quantiles come from the
    rule's own in-sample h-step errors, as everywhere else in the project.
    """
    rows = []
    for (hospital, unit), g in history.groupby([HOSPITAL, UNIT], sort=True):
        y = g.set_index(DATE)[CENSUS].astype(float).asfreq("D").ffill()
        y = y[y.index <= origin].iloc[-window_days:]
        quantiles = SeasonalNaive(season=7, quantiles=LEVELS).fit(y.to_numpy()).predict(horizon)  # (H, Q)
        for h in range(1, horizon + 1):
            target_date = origin + pd.Timedelta(days=h)
            for q, value in zip(LEVELS, quantiles[h - 1], strict=True):
                rows.append(
                    {HOSPITAL: hospital, UNIT: unit, DATE: target_date, TARGET: CENSUS, Q: q, VALUE: float(value)}
                )
    return pd.DataFrame(rows)


ZERO_SHOT = "fracast (zero-shot)"  # with the zeroshot extra only: the plan a hospital would get without a federation
FEDERATED_MIX = "federated-dp + fracast"  # `medalloc forecast --zero-shot-weight 0.5` on each node


@dataclass(frozen=True)
class NeuralSettings:
    """The federation trained inside the benchmark: small enough for a few minutes on 2 cores."""

    rounds: int = 5
    local_epochs: int = 2
    model: str = "hybrid"  # the default scenario's model, from its public pretrained weights
    init: str = "pretrained"
    history: int = 28  # the pretrained weights' shape
    hidden: int = 64
    batch_size: int = 256
    lr: float = 0.001  # the default scenario's
    epsilon_budget: float = 1.0  # per patient (stays up to 14 nights): each node's release and lifetime budget
    delta: float = 1e-6


class NeuralReport(TypedDict, total=False):
    """What :func:`neural_forecasts` reports: epsilon per method (max over hospitals) and timings."""

    epsilon: dict[str, float]
    federation_s: float
    local_s: float


def neural_forecasts(
    history: pd.DataFrame,
    origin: pd.Timestamp,
    horizon: int,
    *,
    seed: int,
    settings: NeuralSettings = NeuralSettings(),
    report: NeuralReport | None = None,
) -> dict[str, pd.DataFrame]:
    """The federated DP and local-only DP forecasts for the ``horizon`` days after ``origin``.

    Trained here with the project's own code: each hospital's history (``date <= origin``) is
    written as its own file; the federation is the real ServerApp round loop
    (``server.app.run_federation``) and ClientApp, delivered in-process by
    ``simulations.local_grid.LocalGrid`` (no Ray), DP-SGD on every node with its own ledger.
    The final model is read back with ``medalloc_core.model_io.load_model`` and applied to each
    hospital's records by ``medalloc_core.forecast.predict.forecast_records`` (what ``medalloc
    forecast`` does). Local-only DP: each hospital alone, trained on its node's own source
    release (post-processing of the very release the federation used, hence the same
    patient-level epsilon, read from the node's ledger for both methods).

    ``report``, when given, receives ``epsilon`` per method (max over hospitals) and timings.
    """
    import tempfile
    from pathlib import Path

    from medalloc.client.app import make_client_app
    from medalloc.server.app import run_federation
    from medalloc.server.config import RunConfig
    from medalloc_core.forecast.features import prepare_hospital
    from medalloc_core.forecast.forecasters.zeroshot import Fracast
    from medalloc_core.forecast.models import build_model
    from medalloc_core.forecast.predict import forecast_records
    from medalloc_core.forecast.pretrained import load_pretrained
    from medalloc_core.forecast.training import TrainConfig, train_local
    from medalloc_core.forecast.zero_shot_mix import ZERO_SHOT_WEIGHT
    from medalloc_core.model_io import load_model
    from medalloc_core.privacy.ledger import PrivacyLedger
    from medalloc_core.privacy.release import ReleaseStore
    from medalloc_core.simulation import simulated_ledger_path
    from medalloc_core.tasks.forecasting.task import default_release_path
    from medalloc_core.validation import load_unit_records

    from ..local_grid import LocalGrid, task_identity

    s = settings
    report = report if report is not None else {}
    with tempfile.TemporaryDirectory(prefix="medalloc-alloc-bench-") as tmp:
        region, out = Path(tmp) / "region", Path(tmp) / "federation"
        region.mkdir()
        past = history[history[DATE] <= origin]
        hospitals = sorted(past[HOSPITAL].unique().tolist())
        for hid in hospitals:
            frame = past[past[HOSPITAL] == hid].drop(columns=[HOSPITAL]).sort_values([UNIT, DATE])
            frame.assign(**{DATE: frame[DATE].dt.strftime("%Y-%m-%d")}).to_csv(region / f"{hid}.csv", index=False)
        keys = {
            "simulation-data-dir": str(region),
            "out-dir": str(out),
            "num-server-rounds": s.rounds,
            "min-available-nodes": len(hospitals),
            "min-train-nodes": len(hospitals),
            "fraction-evaluate": 0.0,
            "model": s.model,
            "init": s.init,
            "history": s.history,
            "horizon": horizon,
            "hidden": s.hidden,
            "batch-size": s.batch_size,
            "local-epochs": s.local_epochs,
            "lr": s.lr,
            "seed": seed,
            "simulation-epsilon-budget": s.epsilon_budget,
            "simulation-delta": s.delta,
            "simulation-reproducible-noise": True,  # research benchmark: same seed, same numbers
        }
        began = time.perf_counter()
        quiet_flower()  # Flower's own INFO lines would bury the display
        grid = LocalGrid(
            make_client_app(keys),
            {i + 1: {"partition-id": i, "num-partitions": len(hospitals)} for i in range(len(hospitals))},
        )
        config = RunConfig.from_mapping(keys)
        with task_identity():
            run_federation(grid, config)
        report["federation_s"] = time.perf_counter() - began
        saved = load_model(
            out
        )  # the results folder: its final_model.safetensors, as `medalloc forecast --model` reads it

        began = time.perf_counter()
        federated, local, eps_fed, eps_local = [], [], {}, {}
        # with the zeroshot extra: fracast alone (what a hospital would pick instead) and the federated model mixed
        # with it on the node (`medalloc forecast --zero-shot-weight`), from the same records
        zero_shot: dict[str, list[pd.DataFrame]] = {ZERO_SHOT: [], FEDERATED_MIX: []} if Fracast.available() else {}
        spec = saved.spec  # the window the federation trained on (the hybrid adds its own channels)
        for hid in hospitals:
            records = load_unit_records(region / f"{hid}.csv")
            ledger = PrivacyLedger.load(simulated_ledger_path(region, config.task, hid))
            eps_fed[hid] = eps_local[hid] = ledger.epsilon_spent()  # one release serves both
            store = ReleaseStore.open(default_release_path(ledger.path))
            if store.plan is None:
                raise ValueError(f"hospital {hid} released nothing: no local-only model at equal privacy")
            # the bands the node gets from `medalloc forecast --release` (forecast.calibration), as simulate scores them
            noise_sd, own_release = dict(store.plan.noise_sd), store.records()
            federated.append(
                forecast_records(
                    saved.model, saved.spec, records, hospital=hid, noise_sd=noise_sd, released=own_release
                )
            )
            for name, weight in ((ZERO_SHOT, 1.0), (FEDERATED_MIX, ZERO_SHOT_WEIGHT)):
                if name in zero_shot:
                    zero_shot[name].append(
                        forecast_records(
                            saved.model,
                            saved.spec,
                            records,
                            hospital=hid,
                            noise_sd=noise_sd,
                            released=own_release,
                            zero_shot_weight=weight,
                        )
                    )
            released = prepare_hospital(store.records(), spec)
            # local-only starts where the federation started: the public weights, or a seeded init
            model = load_pretrained(saved.config) if s.init == "pretrained" else build_model(saved.config, seed=seed)
            train_local(
                model,
                released.train,
                config=TrainConfig(epochs=s.rounds * s.local_epochs, batch_size=s.batch_size, lr=s.lr, seed=seed),
            )
            dataset = prepare_hospital(records, spec, scaler=released.scaler)
            local.append(
                forecast_records(
                    model, spec, records, hospital=hid, dataset=dataset, noise_sd=noise_sd, released=own_release
                )
            )
        report["local_s"] = time.perf_counter() - began
    report["epsilon"] = {"federated-dp": max(eps_fed.values()), "local-only-dp": max(eps_local.values())}
    return {
        "federated-dp": pd.concat(federated, ignore_index=True),
        "local-only-dp": pd.concat(local, ignore_index=True),
    } | {name: pd.concat(frames, ignore_index=True) for name, frames in zero_shot.items()}


# ------------------------------------------------------------------ scoring
def evaluate_plans(
    truth: pd.DataFrame,
    forecasts: dict[str, pd.DataFrame],
    capacity: pd.DataFrame,
    costs: BenchmarkCosts = BenchmarkCosts(),
) -> pd.DataFrame:
    """Score the plan each forecast leads to against the true census.

    Parameters
    ----------
    truth : pd.DataFrame
        ``hospital, unit, date, census`` for the planned days.
    forecasts : dict[str, pd.DataFrame]
        Method name -> forecast frame covering the same hospitals, units and days.
    capacity : pd.DataFrame
        ``hospital, unit, beds`` (physical beds).
    costs : BenchmarkCosts

    Returns
    -------
    pd.DataFrame
        One row per method: unit-plan overflow and idle bed-days, surge bed-days, realised
        transfers and unserved patient-days after the regional stage, ``total_cost`` (realised
        decision cost: c_u·unserved + c_o·idle + transfers), ``running_cost`` (that plus c_o per
        true patient-day, the same for every method), and when an ``"oracle"`` method is present
        ``excess_cost`` = total_cost - oracle's and ``cost_ratio`` = running_cost / oracle's.
    """
    plan_config = PlanConfig(costs=UnitCosts(costs.under_cost, costs.over_cost))
    hospitals = sorted(truth[HOSPITAL].unique().tolist())
    distances = synthetic_distances(hospitals, seed=costs.seed)
    day_truth = truth.groupby([HOSPITAL, DATE], as_index=False)[CENSUS].sum()
    realised_demand = pd.concat(
        [day_truth.rename(columns={CENSUS: VALUE}).assign(**{Q: q}) for q in (0.1, 0.5, 0.9)], ignore_index=True
    )
    rows = []
    for name, forecast in forecasts.items():
        unit_plan = plan_hospital(forecast, capacity, plan_config).merge(truth, on=[HOSPITAL, UNIT, DATE], how="inner")
        if len(unit_plan) != len(truth):
            raise ValueError(f"forecast '{name}' does not cover every (hospital, unit, date) of the truth")
        short = np.maximum(unit_plan[CENSUS] - unit_plan["staffed_beds"], 0)
        idle = np.maximum(unit_plan["staffed_beds"] - unit_plan[CENSUS], 0)
        staffed = (
            unit_plan.groupby([HOSPITAL, DATE], as_index=False)["staffed_beds"]
            .sum()
            .rename(columns={"staffed_beds": "capacity"})
        )
        regional = RegionalConfig(
            surge_pool=costs.surge_pool,
            under_cost=costs.under_cost,
            surge_cost=costs.over_cost,
            transfer_cost=costs.transfer_cost,
            transfer_cost_per_km=costs.transfer_cost_per_km,
            neighbours=costs.neighbours,
            scenarios=costs.scenarios,
            seed=costs.seed,
        )
        surge = plan_region(hospital_totals(forecast), staffed, regional, distances=distances).surge
        beds = staffed.merge(surge, on=[HOSPITAL, DATE])
        beds["capacity"] = beds["capacity"] + beds["surge_beds_whole"]
        # The truth arrives: transfers and unserved are the LP's recourse on the real demand.
        realised = plan_region(
            realised_demand,
            beds[[HOSPITAL, DATE, "capacity"]],
            RegionalConfig(
                surge_pool=0.0,
                under_cost=costs.under_cost,
                surge_cost=costs.over_cost,
                transfer_cost=costs.transfer_cost,
                transfer_cost_per_km=costs.transfer_cost_per_km,
                neighbours=costs.neighbours,
                scenarios=1,
                seed=costs.seed,
            ),
            distances=distances,
        )
        hd = realised.hospital_days
        idle_after = np.maximum(
            hd["capacity"]
            - (
                hd["expected_demand"]
                - hd["expected_unserved"]
                - hd["expected_transfers_out"]
                + hd["expected_transfers_in"]
            ),
            0.0,
        )
        total = (
            costs.under_cost * hd["expected_unserved"].sum()
            + costs.over_cost * idle_after.sum()
            + realised.costs["transfer"]
        )
        rows.append(
            {
                "method": name,
                "overflow_pd": float(short.sum()),
                "idle_bd": float(idle.sum()),
                "surge_bd": float(surge["surge_beds_whole"].sum()),
                "transfers_pd": float(hd["expected_transfers_out"].sum()),
                "unserved_pd": float(hd["expected_unserved"].sum()),
                "idle_after_bd": float(idle_after.sum()),
                "total_cost": float(total),
            }
        )
    table = pd.DataFrame(rows)
    # The decision cost of perfect foresight can be 0, so the ratio is taken on the running cost:
    # every occupied bed-day costs c_o as well (the same for every method), which turns the
    # decision cost c_o·idle + c_u·unserved into c_o·staffed + (c_u + c_o)·unserved: same
    # optimal decisions, a ratio that stays finite.
    table["running_cost"] = table["total_cost"] + costs.over_cost * float(truth[CENSUS].sum())
    if "oracle" in forecasts:
        oracle = table.loc[table["method"] == "oracle"].iloc[0]
        table["excess_cost"] = table["total_cost"] - float(oracle["total_cost"])
        table["cost_ratio"] = table["running_cost"] / float(oracle["running_cost"])
    return table


def pooled_plans(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """The plan tables of several origins as one: every cost and count summed per method, the ratios recomputed.

    ``cost_ratio`` is the summed running cost over the oracle's summed running cost (a ratio of sums: each
    origin weighs by its patient-days, as a hospital's bill does).
    """
    frame = pd.concat(tables, ignore_index=True)
    sums = ["overflow_pd", "idle_bd", "surge_bd", "transfers_pd", "unserved_pd", "idle_after_bd", "total_cost"]
    sums.append("running_cost")
    methods = list(dict.fromkeys(frame["method"]))
    table = frame.groupby("method", sort=False)[sums].sum().reindex(methods).reset_index()
    if "oracle" in methods:
        oracle = table.loc[table["method"] == "oracle"].iloc[0]
        table["excess_cost"] = table["total_cost"] - float(oracle["total_cost"])
        table["cost_ratio"] = table["running_cost"] / float(oracle["running_cost"])
    return table


def _per_origin_table(tables: list[pd.DataFrame]) -> Table:
    """cost / oracle of each method at each origin: how much one origin's ranking can move."""
    out = Table(title="cost / oracle per origin (first day planned)")
    out.add_column("method", no_wrap=True)
    for t in tables:
        out.add_column(str((t["origin"].iloc[0] + pd.Timedelta(days=1)).date()), justify="right")
    for method in tables[0]["method"]:
        out.add_row(method, *(f"{float(t.loc[t['method'] == method, 'cost_ratio'].iloc[0]):.3f}" for t in tables))
    return out


def _diagnostics_table(diagnostics: list[pd.DataFrame]) -> Table:
    """The census forecasts behind the plans, per unit-day over every origin (``forecast_diagnostics``)."""
    frame = pd.concat(diagnostics).groupby("method", sort=False).mean().reset_index()  # equal unit-days per origin
    out = Table(title="Census forecasts behind the plans (per unit-day, all origins)")
    for c in ("method", "P50 bias", "P50 MAE", "P90-P10", "in P10..P90", "above P90"):
        out.add_column(c, justify="left" if c == "method" else "right", no_wrap=c == "method")
    for _, r in frame.iterrows():
        out.add_row(
            r["method"],
            f"{r['bias']:+.1f}",
            f"{r['mae']:.1f}",
            f"{r['width']:.1f}",
            f"{r['coverage']:.2f}",
            f"{r['above_p90']:.2f}",
        )
    return out


def forecast_diagnostics(truth: pd.DataFrame, forecasts: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Why a plan costs what it costs: each method's census forecast against the truth, per unit-day.

    ``bias`` (P50 - truth, beds) and ``mae`` of the median; ``width`` P90 - P10 (beds, the band the plan's
    high quantile sits on); ``coverage`` the share of unit-days within P10..P90 (0.8 when calibrated);
    ``above_p90`` the share above the P90 (0.1 when calibrated). Levels a forecast lacks are interpolated.
    """
    from medalloc_core.allocation.newsvendor import quantile_matrix
    from medalloc_core.allocation.quantiles import quantile_at

    y_by_key = truth.set_index([HOSPITAL, UNIT, DATE])[CENSUS]
    rows = []
    for name, forecast in forecasts.items():
        keys, levels, values = quantile_matrix(forecast)
        y = y_by_key.reindex(pd.MultiIndex.from_frame(keys[[HOSPITAL, UNIT, DATE]])).to_numpy(dtype=float)
        p10, p50, p90 = (quantile_at(levels, values, q).ravel() for q in (0.1, 0.5, 0.9))
        rows.append(
            {
                "method": name,
                "bias": float(np.mean(p50 - y)),
                "mae": float(np.mean(np.abs(p50 - y))),
                "width": float(np.mean(p90 - p10)),
                "coverage": float(np.mean((y >= p10) & (y <= p90))),
                "above_p90": float(np.mean(y > p90)),
            }
        )
    return pd.DataFrame(rows)


SHARE_EPSILONS = (0.1, 0.3, 1.0, 3.0)


def regional_noise_costs(
    truth: pd.DataFrame,
    forecast: pd.DataFrame,
    capacity: pd.DataFrame,
    costs: BenchmarkCosts = BenchmarkCosts(),
    *,
    epsilons: tuple[float, ...] = SHARE_EPSILONS,
    delta: float = 1e-6,
    seeds: int = 3,
) -> pd.DataFrame:
    """The regional stage alone on DP shares: each hospital shares its census quantiles of ``forecast``
    at epsilon (Gaussian, one patient moves one number by one bed, as `medalloc share` calibrates
    it), the coordinator plans on them naively or knowing the noise sd (``RegionalConfig.noise_sd``),
    and the truth arrives. ``cost_ratio`` is the running cost against planning on the exact
    shares of the same forecast (``exact``), averaged over ``seeds`` noise draws.
    """
    from medalloc_core.allocation.regional import share_forecast
    from medalloc_core.allocation.sharing import calibrate_share_noise

    plan_config = PlanConfig(costs=UnitCosts(costs.under_cost, costs.over_cost))
    hospitals = sorted(truth[HOSPITAL].unique().tolist())
    distances = synthetic_distances(hospitals, seed=costs.seed)
    staffed = (
        plan_hospital(forecast, capacity, plan_config)
        .groupby([HOSPITAL, DATE], as_index=False)["staffed_beds"]
        .sum()
        .rename(columns={"staffed_beds": "capacity"})
    )
    day_truth = truth.groupby([HOSPITAL, DATE], as_index=False)[CENSUS].sum()
    realised_demand = pd.concat(
        [day_truth.rename(columns={CENSUS: VALUE}).assign(**{Q: q}) for q in (0.1, 0.5, 0.9)], ignore_index=True
    )

    def config(**extra: Any) -> RegionalConfig:
        base: dict[str, Any] = dict(
            surge_pool=costs.surge_pool,
            under_cost=costs.under_cost,
            surge_cost=costs.over_cost,
            transfer_cost=costs.transfer_cost,
            transfer_cost_per_km=costs.transfer_cost_per_km,
            neighbours=costs.neighbours,
            scenarios=costs.scenarios,
            seed=costs.seed,
        )
        return RegionalConfig(**(base | extra))

    def realised_cost(shared: pd.DataFrame, noise_sd: dict[str, float] | None) -> tuple[float, int]:
        plan = plan_region(shared, staffed, config(noise_sd=noise_sd), distances=distances)
        beds = staffed.merge(plan.surge, on=[HOSPITAL, DATE])
        beds["capacity"] = beds["capacity"] + beds["surge_beds_whole"]
        after = plan_region(
            realised_demand,
            beds[[HOSPITAL, DATE, "capacity"]],
            config(surge_pool=0.0, scenarios=1),
            distances=distances,
        )
        hd = after.hospital_days
        cared = (
            hd["expected_demand"] - hd["expected_unserved"] - hd["expected_transfers_out"] + hd["expected_transfers_in"]
        )
        idle = np.maximum(hd["capacity"] - cared, 0.0)
        total = (
            costs.under_cost * hd["expected_unserved"].sum() + costs.over_cost * idle.sum() + after.costs["transfer"]
        )
        return float(total) + costs.over_cost * float(truth[CENSUS].sum()), len(plan.warnings)

    exact = hospital_totals(forecast)
    reference, _ = realised_cost(exact, None)
    oracle, _ = realised_cost(realised_demand, None)
    n_values = exact.groupby(HOSPITAL).size().max()
    rows = [{"plan": "exact shares", "epsilon": float("inf"), "noise_sd": 0.0, "cost_ratio": 1.0, "extra_cost": 0.0,
             "vs_oracle": reference / oracle, "warnings": 0}]  # fmt: skip
    for epsilon in epsilons:
        _, sd = calibrate_share_noise(
            epsilon=epsilon, delta=delta, n_values=int(n_values), sensitivity=1.0, accountant="prv"
        )
        for aware in (False, True):
            ratios, warned = [], 0
            for s in range(seeds):
                noisy = pd.concat(
                    [
                        share_forecast(
                            exact[exact[HOSPITAL] == h], epsilon=epsilon, delta=delta, mechanism="gaussian",
                            seed=1000 * s + i, noise_scale=sd,
                        )
                        for i, h in enumerate(hospitals)
                    ],
                    ignore_index=True,
                )  # fmt: skip
                cost, n_warn = realised_cost(noisy, dict.fromkeys(hospitals, sd) if aware else None)
                ratios.append(cost / reference)
                warned += n_warn
            rows.append(
                {
                    "plan": "noise-aware" if aware else "naive",
                    "epsilon": epsilon,
                    "noise_sd": sd,
                    "cost_ratio": float(np.mean(ratios)),
                    "extra_cost": (float(np.mean(ratios)) - 1.0) * reference,
                    "vs_oracle": float(np.mean(ratios)) * reference / oracle,
                    "warnings": warned / seeds,
                }
            )
    return pd.DataFrame(rows)


def _print_regional_noise(table: pd.DataFrame, console: Console, hospitals: int) -> None:
    out = Table(
        title=f"Regional plan on DP shares ({hospitals} hospitals): cost / planning on the exact shares of the "
        "same forecast"
    )
    columns = ("plan", "share epsilon", "noise sd (beds)", "cost / exact", "extra cost", "cost / oracle", "warnings")
    for column in columns:
        out.add_column(column, justify="left" if column == "plan" else "right")
    for _, r in table.iterrows():
        out.add_row(
            r["plan"],
            "-" if not np.isfinite(r["epsilon"]) else f"{r['epsilon']:g}",
            f"{r['noise_sd']:.1f}",
            f"{r['cost_ratio']:.4f}",
            f"{r['extra_cost']:.1f}",
            f"{r['vs_oracle']:.4f}",
            f"{r['warnings']:.1f}",
        )
    console.print(out)
    console.print(
        "extra cost: the mean realised decision cost (c_u·unserved + c_o·idle + transfers) above planning on the exact "
        "shares; warnings: hospitals per plan whose noise sd is at least their margin; running costs include "
        "c_o per true patient-day, so the ratios are close to 1 whenever the pool is small against the region"
    )


# ------------------------------------------------------------------ regions
def _synthetic_region(hospitals: int, days: int, seed: int) -> pd.DataFrame:
    from medalloc_core.synthetic import RegionConfig, generate_region

    region = generate_region(RegionConfig(hospitals=hospitals, days=days, seed=seed, short_history_fraction=0.0))
    return pd.concat([h.daily.assign(**{HOSPITAL: h.hospital_id}) for h in region.hospitals], ignore_index=True)


def _toy_region(hospitals: int, days: int, seed: int) -> pd.DataFrame:
    """Seasonal Poisson census (weekly cycle, slow annual wave) for hospitals of two units."""
    rng = np.random.default_rng(seed)
    dates = pd.date_range("2024-01-01", periods=days, freq="D")
    t = np.arange(days)
    frames = []
    for h in range(hospitals):
        for unit, base in (("ICU", rng.uniform(6, 20)), ("medical", rng.uniform(30, 120))):
            mean = (
                base
                * (1 + 0.12 * np.cos(2 * np.pi * (t % 7 - 1) / 7))
                * (1 + 0.15 * np.cos(2 * np.pi * (t - 15 + 30 * h) / 365))
            )
            census = rng.poisson(mean)
            frames.append(
                pd.DataFrame(
                    {
                        HOSPITAL: f"H{h:03d}",
                        UNIT: unit,
                        DATE: dates,
                        CENSUS: census,
                        CAPACITY: int(np.ceil(base * 1.25)),
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


def _lp_timing(console: Console) -> None:
    """The regional LP's size and solve time at 10, 25 and 50 hospitals (14 days, 20 scenarios)."""
    table = Table(title="Regional LP solve time (14 days, 20 scenarios, 5 neighbours)")
    for c in ("hospitals", "variables", "constraints", "seconds", "seconds / 10 hospitals"):
        table.add_column(c, justify="right")
    rng = np.random.default_rng(0)
    base_time = None
    for n in (10, 25, 50):
        rows = []
        for h in range(n):
            level = rng.uniform(50, 300)
            for d in pd.date_range("2026-01-01", periods=14):
                m = level * (1 + 0.1 * rng.standard_normal())
                rows += [
                    {HOSPITAL: f"H{h:03d}", DATE: d, Q: q, VALUE: max(m * (1 + z * 0.1), 0)}
                    for q, z in ((0.1, -1.28), (0.5, 0), (0.9, 1.28))
                ]
        shared = pd.DataFrame(rows)
        cap = shared[shared[Q] == 0.5].groupby(HOSPITAL)[VALUE].median().to_dict()
        start = time.perf_counter()
        plan_region(shared, cap, RegionalConfig(surge_pool=5 * n, scenarios=20, neighbours=5))
        seconds = time.perf_counter() - start
        pairs = 2 * 5 * n  # upper bound on directed neighbour pairs
        base_time = base_time or seconds
        table.add_row(
            str(n),
            f"~{14 * n * (1 + 20) + 20 * 14 * pairs:,}",
            f"{20 * 14 * n + 14:,}",
            f"{seconds:.2f}",
            f"{seconds / (n / 10):.2f}",
        )
    console.print(table)


def rolling_seasonal_forecasts(demand: np.ndarray, *, weeks: int = 8) -> np.ndarray:
    """(T, U, 1, L) next-day quantiles known before each day: last week's same weekday plus the
    empirical quantiles of that rule's errors over the previous ``weeks`` weeks (zeros until then)."""
    n_days, n_units = demand.shape
    out = np.zeros((n_days, n_units, 1, len(LEVELS)))
    errors = np.full_like(demand, np.nan)
    errors[7:] = demand[7:] - demand[:-7]
    for t in range(7 + 7 * weeks, n_days):
        window = errors[t - 7 * weeks : t]  # errors observed before day t
        spread = np.nanquantile(window, LEVELS, axis=0).T  # (U, L)
        out[t, :, 0, :] = np.maximum(demand[t - 7][:, None] + spread, 0.0)
    return out


def _policy_comparison(daily: pd.DataFrame, costs: BenchmarkCosts, seed: int, console: Console) -> None:
    """Every policy on the same episodes of one hospital's bed environment (needs gymnasium)."""
    try:
        from medalloc_core.allocation.env import (
            CapacityPolicy,
            EnvCosts,
            HospitalBedEnv,
            LastWeekPolicy,
            NewsvendorPolicy,
            Policy,
            run_episode,
        )
    except ModuleNotFoundError:
        console.print(
            "[yellow]gymnasium not installed: skipping the environment comparison (python -m pip install -e '.[rl]')"
        )
        return
    hospital = sorted(daily[HOSPITAL].unique())[0]
    base = HospitalBedEnv.from_daily(daily[daily[HOSPITAL] == hospital])
    forecasts = rolling_seasonal_forecasts(base.demand)
    oracle = np.repeat(base.demand[:, :, None, None], len(LEVELS), axis=3)
    env_costs = EnvCosts(under_cost=costs.under_cost, over_cost=costs.over_cost)
    episode = 28
    capacity = tuple(int(c) for c in base.capacity)
    policies: dict[str, tuple[np.ndarray, Policy]] = {
        "newsvendor (oracle forecast)": (oracle, NewsvendorPolicy(LEVELS, capacity, costs.under_cost, costs.over_cost)),
        "newsvendor (seasonal-naive)": (
            forecasts,
            NewsvendorPolicy(LEVELS, capacity, costs.under_cost, costs.over_cost),
        ),
        "last week's census": (forecasts, LastWeekPolicy()),
        "last week's census + 10%": (forecasts, Buffered(1.10)),
        "staff every bed": (forecasts, CapacityPolicy(capacity)),
    }
    table = Table(
        title=f"Bed environment, {hospital} ({', '.join(base.units)}): 10 episodes of {episode} days, same seeds"
    )
    for c in ("policy", "mean cost", "overflow pd", "idle bd", "excess over oracle", "cost / oracle"):
        table.add_column(c, justify="left" if c == "policy" else "right", no_wrap=c == "policy")
    results = {}
    first = 7 + 7 * 8  # the rolling forecast needs 8 weeks of errors
    for name, (fc, policy) in policies.items():
        env = HospitalBedEnv(
            base.demand[first:],
            base.capacity,
            admissions=base.admissions[first:],
            forecasts=fc[first:],
            quantile_levels=LEVELS,
            costs=env_costs,
            episode_days=episode,
        )
        runs = [run_episode(env, policy, seed=seed + i) for i in range(10)]
        results[name] = (
            np.mean([r.total_cost for r in runs]),
            np.mean([r.overflow_days for r in runs]),
            np.mean([r.idle_bed_days for r in runs]),
            np.mean([r.demand_days for r in runs]),
        )
    reference, _, _, demand = results["newsvendor (oracle forecast)"]
    running = reference + costs.over_cost * demand  # the same running-cost ratio as the plan table
    for name, (cost, over, idle, _) in results.items():
        ratio = (cost + costs.over_cost * demand) / running
        table.add_row(name, f"{cost:.1f}", f"{over:.1f}", f"{idle:.1f}", f"{cost - reference:.1f}", f"{ratio:.3f}")
    console.print(table)


@dataclass(frozen=True)
class Buffered:
    """Last week's census times a safety factor: the rule of thumb many wards use."""

    factor: float

    def __call__(self, observation: dict[str, Any]) -> np.ndarray:
        return np.ceil(np.asarray(observation["recent_census"])[:, 0] * self.factor).astype(np.int64)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hospitals", type=int, default=10)
    parser.add_argument("--days", type=int, default=400, help="history days before the forecast origin")
    parser.add_argument("--horizon", type=int, default=14)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--toy-region", action="store_true", help="seasonal-Poisson region instead of medalloc_core.synthetic"
    )
    parser.add_argument(
        "--origins",
        type=int,
        default=4,
        help="rolling forecast origins one horizon apart, the last a horizon before the data ends; every method "
        "plans from each (a federation per origin) and the table sums them (one origin is one draw of the weather)",
    )
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument(
        "--skip-neural", action="store_true", help="no federated / local-only models (seconds instead of minutes)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=NeuralSettings.rounds,
        help="federated rounds (local-only trains as long on its own release)",
    )
    args = parser.parse_args(argv)
    console = Console(width=130)  # wide enough for the table when piped to a file
    logging.basicConfig(level=logging.ERROR)
    import torch

    torch.set_num_threads(1)  # as the simulation runner: small models, a shared CPU, and the same numbers every run

    daily = (_toy_region if args.toy_region else _synthetic_region)(args.hospitals, args.days + args.horizon, args.seed)
    daily[DATE] = pd.to_datetime(daily[DATE])
    capacity = daily.groupby([HOSPITAL, UNIT], as_index=False)[CAPACITY].max().rename(columns={CAPACITY: BEDS})
    costs = BenchmarkCosts(surge_pool=2.0 * args.hospitals, seed=args.seed)
    # Rolling origins one horizon apart, the last one the horizon before the data ends: each method plans from
    # each origin with only the days before it (a federation trained per origin), scored on the days after it.
    last = daily[DATE].max()
    tables, diagnostics, reports = [], [], []
    for i in reversed(range(args.origins)):
        end = last - pd.Timedelta(days=i * args.horizon)
        origin = end - pd.Timedelta(days=args.horizon)
        history = daily[daily[DATE] <= origin]
        truth = daily[(daily[DATE] > origin) & (daily[DATE] <= end)][[HOSPITAL, UNIT, DATE, CENSUS]]
        truth = truth.reset_index(drop=True)
        forecasts = {
            "oracle": oracle_forecast(truth),
            "noisy-oracle": noisy_oracle_forecast(truth, seed=args.seed),
            "seasonal-naive": seasonal_naive_forecast(history, origin, args.horizon),
        }
        if not args.skip_neural:
            neural: NeuralReport = {}
            with console.status(f"origin {origin.date()}: training the federated DP and local-only DP models"):
                forecasts |= neural_forecasts(
                    history,
                    origin,
                    args.horizon,
                    seed=args.seed,
                    settings=NeuralSettings(rounds=args.rounds),
                    report=neural,
                )
            reports.append(neural)
        with console.status(f"origin {origin.date()}: planning and scoring each forecast"):
            tables.append(evaluate_plans(truth, forecasts, capacity, costs).assign(origin=origin))
            diagnostics.append(forecast_diagnostics(truth, forecasts))
    table = pooled_plans(tables)
    source = "toy seasonal-Poisson region" if args.toy_region else "medalloc_core.synthetic region"
    origins = sorted({t["origin"].iloc[0] for t in tables})
    span = f"{len(origins)} origin(s) {origins[0].date()}..{origins[-1].date()}" if len(origins) > 1 else "1 origin"
    out = Table(
        title=f"Plans vs the true future: {args.hospitals} hospitals, {span} x {args.horizon} days, {source}, "
        f"seed {args.seed}"
    )
    labels = {
        "method": "method",
        "overflow_pd": "overflow pd (units)",
        "idle_bd": "idle bd (units)",
        "surge_bd": "surge bd",
        "transfers_pd": "transfers pd",
        "unserved_pd": "unserved pd",
        "total_cost": "decision cost",
        "excess_cost": "excess over oracle",
        "cost_ratio": "cost / oracle",
    }
    for key, label in labels.items():
        out.add_column(label, justify="left" if key == "method" else "right", no_wrap=key == "method")
    for _, row in table.iterrows():
        out.add_row(row["method"], *(f"{row[k]:.1f}" for k in list(labels)[1:-1]), f"{row['cost_ratio']:.3f}")
    console.print(out)
    console.print(
        "pd = patient-days, bd = bed-days; decision cost = c_u·unserved + c_o·idle + transfers; "
        "cost / oracle = (decision cost + c_o·true patient-days) / the oracle's, summed over the origins"
    )
    if len(tables) > 1:
        console.print(_per_origin_table(tables))
    console.print(_diagnostics_table(diagnostics))
    if reports:
        eps = {m: max(r["epsilon"][m] for r in reports) for m in ("federated-dp", "local-only-dp")}
        console.print(
            f"privacy per patient (stays <= 14 nights) at delta={NeuralSettings.delta:g}, max over hospitals: "
            f"federated-dp epsilon {eps['federated-dp']:.2f}, "
            f"local-only-dp epsilon {eps['local-only-dp']:.2f} (one federation per origin); training took "
            f"{sum(r['federation_s'] for r in reports):.0f} s (federations) + "
            f"{sum(r['local_s'] for r in reports):.0f} s (local-only and forecasts)"
        )
    console.print(
        f"costs: unserved {costs.under_cost}/patient-day, idle {costs.over_cost}/bed-day, "
        f"transfer {costs.transfer_cost} + {costs.transfer_cost_per_km}/km, pool {costs.surge_pool:.0f} beds/day"
    )
    with console.status("regional plans on DP shares at each epsilon"):
        noise_table = regional_noise_costs(truth, forecasts["noisy-oracle"], capacity, costs)
    _print_regional_noise(noise_table, console, args.hospitals)
    _policy_comparison(daily, costs, args.seed, console)
    if not args.skip_timing:
        _lp_timing(console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
