"""Plans that explain themselves: why the hospital plan staffs what it staffs, why the regional plan sends
surge beds where it does, and what one more unit of a scarce resource would save.

The hospital plan (newsvendor) is explained by its critical ratio, the quantile it read and
where that quantile came from (a forecast level, an interpolation between two, or the tail
beyond the outer ones); the regional plan by the LP's binding constraints and shadow prices
(``medalloc_core.allocation.shadow``). Both produce sentences for the CLI and text files a
coordinator can file with the plan.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medalloc_core.allocation.forecast_io import HOSPITAL
from medalloc_core.allocation.newsvendor import PlanConfig
from medalloc_core.allocation.regional import RegionalPlan
from medalloc_core.allocation.shadow import BINDING_TOLERANCE
from medalloc_core.atomic import atomic_write_bytes
from medalloc_core.contract import UNIT

REGIONAL_EXPLANATION_FILES = ("binding_constraints.csv", "corridors.csv", "explanation.txt")


def hospital_plan_reasons(plan: pd.DataFrame, config: PlanConfig = PlanConfig()) -> list[str]:
    """One paragraph per unit: costs, critical ratio, the quantile used and its source, capped days."""
    lines = []
    for (hospital, unit), g in plan.groupby([HOSPITAL, UNIT], sort=True):
        costs = config.costs_for(str(unit))
        ratio = float(g["critical_ratio"].iloc[0])
        bases = g["quantile_basis"].unique().tolist()
        capped = int(g["capped"].sum())
        staffed = (
            f"{g['staffed_beds'].min()}"
            if g["staffed_beds"].nunique() == 1
            else (f"{g['staffed_beds'].min()}–{g['staffed_beds'].max()}")
        )
        text = (
            f"{hospital} {unit}: an unserved patient-day costs {costs.under_cost:g} and an idle staffed bed-day "
            f"{costs.over_cost:g}, so the critical ratio is "
            f"{costs.under_cost:g}/({costs.under_cost:g}+{costs.over_cost:g}) "
            f"= {ratio:.3f}: staff to the P{100 * ratio:.3g} of census demand ({'; '.join(bases)}). "
            f"One more bed pays while P(demand > beds) exceeds {1 - ratio:.3f}. "
            f"Staffed {staffed} beds over {len(g)} days"
        )
        if capped:
            text += f"; capped at the {int(g['physical_beds'].max())} physical beds on {capped} day(s)"
        lines.append(text + ".")
    return lines


def _days(n: int) -> str:
    return f"{n} day" if n == 1 else f"{n} days"


def regional_reasons(plan: RegionalPlan, *, top: int = 5) -> list[str]:
    """Sentences on the regional plan: the pool, who receives surge and why, corridors worth widening."""
    shadow = plan.shadow
    if shadow is None:
        return ["This plan carries no shadow prices (it was not solved by plan_region)."]
    n_d = len(shadow.dates)
    lines = [
        f"Expected cost {plan.costs['total']:.1f} = surge {plan.costs['surge']:.1f} + unserved "
        f"{plan.costs['unserved']:.1f} + transfers {plan.costs['transfer']:.1f}, "
        f"over {plan.scenarios} demand scenarios."
    ]
    binding_days = int((shadow.pool_price > BINDING_TOLERANCE).sum())
    if binding_days:
        worst = int(np.argmax(shadow.pool_price))
        lines.append(
            f"The surge pool ({shadow.pool_size:g} beds a day) is used up on {binding_days} of {n_d} days: "
            "one more pool "
            f"bed would save {shadow.pool_price[worst]:.2f} on {shadow.dates[worst].date()} (the dearest day) and "
            f"{shadow.pool_price.sum():.2f} if added on every day — worth buying where a pool bed-day costs less."
        )
    else:
        lines.append(
            f"The surge pool ({shadow.pool_size:g} beds a day) is never used up (at most {shadow.pool_used.max():.1f} "
            "beds placed): a bigger pool would save nothing."
        )
    surge_days = shadow.surge.sum(axis=1)
    order = np.argsort(-surge_days, kind="stable")
    for h in order[:top]:
        hospital = shadow.hospitals[h]
        if surge_days[h] <= BINDING_TOLERANCE:
            break
        used = shadow.surge[h] > BINDING_TOLERANCE
        value = shadow.bed_value[h, used]
        price = shadow.pool_price[used]
        at_cap = int((shadow.surge_room[h] > BINDING_TOLERANCE).sum())
        text = (
            f"{hospital} receives {surge_days[h]:.1f} surge bed-days ({_days(int(used.sum()))}): "
            "on those days one more "
            f"bed there would save {value.mean():.2f} on average (the chance it is full × the unserved cost, net "
            f"of transfers), which pays for a surge bed ({shadow.surge_cost:g}) plus the pool's price that day "
            f"({price.mean():.2f} on average)"
        )
        if at_cap:
            text += (
                f"; on {_days(at_cap)} it is at its surge cap ({shadow.surge_limit[h]:g} empty physical beds), "
                "where more "
                f"room would save {shadow.surge_room[h].sum():.2f} in all"
            )
        lines.append(text + ".")
    without = [shadow.hospitals[h] for h in order if surge_days[h] <= BINDING_TOLERANCE]
    if without:
        best = max(float(shadow.bed_value[shadow.hospitals.index(h)].max()) for h in without)
        lines.append(
            f"{len(without)} hospital(s) receive no surge "
            f"({', '.join(without[:6])}{' …' if len(without) > 6 else ''}): "
            f"one more bed there would save at most {best:.2f}, not more than a surge bed plus the pool's price."
        )
    corridors = shadow.corridor_totals()
    if corridors.empty:
        lines.append("Transfers have no per-corridor limit, so no transfer slot has a price (set --transfer-limit).")
    else:
        tight = corridors[corridors["saving_one_more_slot_every_day"] > BINDING_TOLERANCE].head(3)
        if tight.empty:
            lines.append("No transfer corridor is full in any scenario: one more slot would save nothing.")
        for row in tight.itertuples(index=False):
            lines.append(
                f"Transfers {row.from_hospital}->{row.to_hospital} reach their limit "
                f"({row.limit_per_day:g} patient-days a "
                f"day) in some scenarios on {_days(int(row.days_binding))}: one more slot every day would save "
                f"{row.saving_one_more_slot_every_day:.2f}."
            )
    return lines


def write_regional_explanation(plan: RegionalPlan, out_dir: Path, *, overwrite: bool = False) -> list[Path]:
    """Write binding_constraints.csv, corridors.csv and explanation.txt beside the regional plan."""
    out_dir = Path(out_dir)
    paths = [out_dir / name for name in REGIONAL_EXPLANATION_FILES]
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists; pass overwrite=True to replace the explanation")
    if plan.shadow is None:
        raise ValueError("the plan carries no shadow prices")
    binding = plan.shadow.binding()
    binding["date"] = pd.to_datetime(binding["date"]).dt.strftime("%Y-%m-%d")
    atomic_write_bytes(paths[0], binding.to_csv(index=False, float_format="%.6g").encode("utf-8"))
    atomic_write_bytes(paths[1], plan.shadow.corridor_totals().to_csv(index=False, float_format="%.6g").encode("utf-8"))
    atomic_write_bytes(paths[2], ("\n\n".join(regional_reasons(plan, top=50)) + "\n").encode("utf-8"))
    return paths
