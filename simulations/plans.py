"""After a simulated federation: every hospital's bed plan and the regional surge plan from the final model.

``write_run_plans(out)`` does for each virtual hospital what a real one does after a run
(docs/allocation.md): ``medalloc forecast`` with the federation's final model on its own
records, ``medalloc allocate`` on that forecast, and then what the coordinator does with the
hospitals' summed census quantiles, ``medalloc allocate-region`` — all with the commands'
default costs. It writes ``<out>/allocation/`` (forecast.csv, plan.csv, plan_explanation.txt,
plan_<H>.png for the first hospitals, settings.json, and regional/ with the LP's shadow prices),
which the run's report shows.

A simulation shortcut, stated in settings.json and on the report: the regional plan here reads
each hospital's exact forecast totals. Real hospitals share them through ``medalloc share``,
which adds noise and charges it to their privacy ledgers; nothing here touches the ledgers.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from medalloc_core.allocation.explain_plans import hospital_plan_reasons, write_regional_explanation
from medalloc_core.allocation.forecast_io import HOSPITAL, capacity_from_records, write_forecast
from medalloc_core.allocation.newsvendor import PlanConfig, plan_hospital
from medalloc_core.allocation.plots import plot_plan, plot_regional
from medalloc_core.allocation.regional import RegionalConfig, hospital_totals, plan_region, write_regional_plan
from medalloc_core.atomic import atomic_write_bytes
from medalloc_core.contract import CENSUS, DATE
from medalloc_core.forecast.predict import forecast_records
from medalloc_core.forecast.region import daily_totals, region_totals, with_region
from medalloc_core.model_io import load_model
from medalloc_core.privacy.release import ReleaseStore
from medalloc_core.simulation import simulated_ledger_path
from medalloc_core.tasks import get_task, task_of_model
from medalloc_core.tasks.forecasting.task import default_release_path
from medalloc_core.validation import load_unit_records

logger = logging.getLogger(__name__)

ALLOCATION_DIR = "allocation"
POOL_BEDS_PER_HOSPITAL = 2.0  # the regional surge pool: two staffed beds per hospital and day
TRANSFER_LIMIT = 5.0  # patient-days one corridor takes per day: a limit, so the plan can price a slot


def write_run_plans(out: Path, *, plots: int = 3) -> Path | None:
    """Forecast, plan every hospital and the region from the run in ``out``; returns ``out/allocation``.

    Beds are planned from census forecasts: a run whose model forecasts no census (an
    admissions-only folder) gets no plan, and ``None`` is returned (the caller says so).

    Parameters
    ----------
    out : Path
        A finished results folder (``final_model.safetensors`` and ``region/``).
    plots : int
        How many hospitals get a ``plan_<H>.png``.
    """
    out = Path(out)
    folder = out / ALLOCATION_DIR
    saved = load_model(out)
    if CENSUS not in saved.spec.targets:
        logger.info("no allocation plan: the model forecasts %s, and beds are planned from census", saved.spec.targets)
        return None
    files = get_task(task_of_model(saved.metadata)).node_data(out / "region")
    # The generated region's overflow days and the default critical ratio beyond the forecast's P90
    # are by design here; their warnings are for a hospital planning on its own data.
    quiet = [logging.getLogger(name) for name in ("medalloc_core.validation", "medalloc_core.allocation.newsvendor")]
    levels = [log.level for log in quiet]
    for log in quiet:
        log.setLevel(logging.ERROR)
    try:
        forecasts, capacities = [], []
        task = get_task(task_of_model(saved.metadata))
        stores = {
            p.stem: ReleaseStore.open(default_release_path(simulated_ledger_path(out / "region", task.name, p.stem)))
            for p in files
        }
        totals = {h: daily_totals(st.records()) for h, st in stores.items() if st.plan is not None}
        for path in files:
            records = load_unit_records(path)
            store = stores[path.stem]
            released = store.records() if store.plan is not None else None
            if "region" in saved.spec.context:  # what the node was sent: the others' released totals
                region = region_totals(totals, exclude=path.stem)
                records = with_region(records, region)
                released = with_region(released, region) if released is not None else None
            # the bands the node's `medalloc forecast --release` gives (forecast.calibration), as simulate scores them
            noise_sd = dict(store.plan.noise_sd) if store.plan is not None else None
            forecasts.append(
                forecast_records(
                    saved.model,
                    saved.spec,
                    records,
                    hospital=path.stem,
                    noise_sd=noise_sd,
                    released=released if noise_sd is not None else None,
                )
            )
            capacities.append(capacity_from_records(path).assign(**{HOSPITAL: path.stem}))
        forecast = pd.concat(forecasts, ignore_index=True)
        capacity = pd.concat(capacities, ignore_index=True)
        config = PlanConfig()
        plan = plan_hospital(forecast, capacity, config)
    finally:
        for log, level in zip(quiet, levels):
            log.setLevel(level)
    folder.mkdir(parents=True, exist_ok=True)
    write_forecast(forecast, folder / "forecast.csv", overwrite=True)
    written = plan.assign(**{DATE: pd.to_datetime(plan[DATE]).dt.strftime("%Y-%m-%d")})
    atomic_write_bytes(folder / "plan.csv", written.to_csv(index=False, float_format="%.4f").encode("utf-8"))
    reasons = hospital_plan_reasons(plan, config)
    atomic_write_bytes(folder / "plan_explanation.txt", ("\n\n".join(reasons) + "\n").encode("utf-8"))
    for hospital in sorted(plan[HOSPITAL].unique())[:plots]:
        plot_plan(plan[plan[HOSPITAL] == hospital], folder / f"plan_{hospital}.png")

    staffed = capacity.groupby(HOSPITAL)["beds"].sum().astype(float).to_dict()
    regional_config = RegionalConfig(
        surge_pool=POOL_BEDS_PER_HOSPITAL * len(files), transfer_limit=TRANSFER_LIMIT, seed=0
    )
    regional = plan_region(hospital_totals(forecast), staffed, regional_config)
    region_dir = folder / "regional"
    write_regional_plan(regional, region_dir, overwrite=True)
    plot_regional(regional, region_dir / "regional.png")
    write_regional_explanation(regional, region_dir, overwrite=True)
    settings: dict[str, Any] = {
        "description": (
            f"From the federation's final model, applied by each of the {len(files)} hospitals to its own records "
            f"(the {saved.config.horizon} days after its data end). Hospital plans: newsvendor with an unserved "
            f"patient-day costing {config.costs.under_cost:g} and an idle staffed bed-day {config.costs.over_cost:g} "
            f"(critical ratio {config.costs.critical_ratio:.3f}). Regional plan: a surge pool of "
            f"{regional_config.surge_pool:g} beds a day, transfers up to {TRANSFER_LIMIT:g} patient-days per corridor "
            f"and day, {regional_config.scenarios} demand scenarios. Simulation shortcut: the regional plan reads "
            "each hospital's exact forecast totals; real hospitals share them with `medalloc share`, which adds "
            "noise charged to their privacy ledgers."
        ),
        "under_cost": config.costs.under_cost,
        "over_cost": config.costs.over_cost,
        "surge_pool": regional_config.surge_pool,
        "transfer_limit": TRANSFER_LIMIT,
        "scenarios": regional_config.scenarios,
        "shared_with_noise": False,
    }
    atomic_write_bytes(folder / "settings.json", (json.dumps(settings, indent=2) + "\n").encode("utf-8"))
    logger.info("wrote the run's bed and regional plans to %s", folder)
    return folder
