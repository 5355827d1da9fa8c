"""From a risk model and a hospital's fleet to the week's plan inputs: risks now and if serviced, hours, weights.

Used by ``medalloc maintenance-plan``, the simulation runner and the benchmark, so every plan
is built the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from torch import nn

from medalloc_core.equipment import contract as ec
from medalloc_core.equipment.contract import Fleet
from medalloc_core.equipment.features import DeviceDays, SnapshotSpec, device_days, feature_matrix
from medalloc_core.equipment.model import predict_proba
from medalloc_core.equipment.plan import PlanInputs

OBJECTIVES = ("failures", "downtime")


class PlanInputError(ValueError):
    """The plan cannot be built from these inputs (unknown day, missing service hours); the message says which."""


@dataclass(frozen=True)
class WeekInputs:
    """The candidates of one planning day and the daily series they came from."""

    inputs: PlanInputs
    day: int  # index into ``days.days``
    days: DeviceDays


def downtime_days(fleet: Fleet) -> dict[str, float]:
    """Mean days from a failure to its repair, per device type, from the fleet's own log (1 day where none)."""
    ev = fleet.events
    marks = ev[ev[ec.EVENT].isin([ec.EventKind.FAILURE, ec.EventKind.REPAIR])]
    types = fleet.devices.set_index(ec.DEVICE_ID)[ec.DEVICE_TYPE]
    gaps: dict[str, list[float]] = {}
    for device, rows in marks.groupby(ec.DEVICE_ID, sort=False):
        kinds, times = rows[ec.EVENT].to_numpy(), rows[ec.TIME].to_numpy()
        for i in range(len(kinds) - 1):
            if kinds[i] == ec.EventKind.FAILURE and kinds[i + 1] == ec.EventKind.REPAIR:
                days = (times[i + 1] - times[i]) / np.timedelta64(1, "D")
                gaps.setdefault(str(types.get(device)), []).append(max(float(days), 0.0))
    overall = float(np.mean([g for v in gaps.values() for g in v])) if gaps else 1.0
    return {t: float(np.mean(gaps[t])) if t in gaps else overall for t in fleet.device_types}


def service_hours_for(fleet: Fleet, hours_by_type: Mapping[str, float], default: float | None = None) -> np.ndarray:
    """Technician hours of one preventive service per device, from the per-type durations.

    Raises ``PlanInputError`` naming every device type without a duration when there is no default.
    """
    lookup = {k.strip().lower(): float(v) for k, v in hours_by_type.items()}
    bad = {k: v for k, v in lookup.items() if not (np.isfinite(v) and v > 0)}
    if bad:
        raise PlanInputError(f"service hours must be numbers > 0; got {bad}")
    if default is not None and not (np.isfinite(default) and default > 0):
        raise PlanInputError(f"service hours must be numbers > 0; --default-service-hours is {default}")
    types = fleet.devices[ec.DEVICE_TYPE].to_numpy()
    missing = sorted({t for t in types if t.strip().lower() not in lookup})
    if missing and default is None:
        raise PlanInputError(
            f"no service hours for device type(s) {', '.join(missing)}; give each one "
            "(e.g. --service-hours 'ventilator=3,infusion_pump=1') or a --default-service-hours"
        )
    return np.array([lookup.get(t.strip().lower(), default or 0.0) for t in types], dtype=float)


def planning_day(days: DeviceDays, date: str | pd.Timestamp | None) -> int:
    """Index of the planning day (default: the log's last day); raises ``PlanInputError`` outside the log."""
    if date is None:
        return len(days.days) - 1
    try:
        parsed = pd.Timestamp(date)
    except (ValueError, TypeError):
        parsed = pd.NaT
    if pd.isna(parsed):  # unparseable, or '' and 'NaT', which parse to no day at all
        raise PlanInputError(f"--date {date!r} is not a date; expected YYYY-MM-DD")
    stamp = parsed.normalize()
    if stamp not in days.days:
        raise PlanInputError(
            f"--date {stamp:%Y-%m-%d} is outside the event log ({days.days[0]:%Y-%m-%d} .. {days.days[-1]:%Y-%m-%d}); "
            "plan on a day the log covers (the features need the days before it)"
        )
    return int(days.days.get_loc(stamp))


def week_inputs(
    fleet: Fleet,
    model: nn.Module,
    spec: SnapshotSpec,
    *,
    service_hours: np.ndarray,
    date: str | pd.Timestamp | None = None,
    objective: str = "failures",
    days: DeviceDays | None = None,
) -> WeekInputs:
    """Every device's risk at the end of the planning day, left alone and if serviced, ready for ``plan_week``.

    ``objective="downtime"`` weighs a prevented failure by its type's mean downtime in days.
    """
    if objective not in OBJECTIVES:
        raise PlanInputError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    dd = days if days is not None else device_days(fleet)
    day = planning_day(dd, date)
    now = feature_matrix(dd, fleet.devices, spec)[:, day]
    serviced = feature_matrix(dd, fleet.devices, spec, serviced=True)[:, day]
    types = fleet.devices[ec.DEVICE_TYPE].to_numpy()
    if objective == "downtime":
        per_type = downtime_days(fleet)
        weight = np.array([per_type[t] for t in types], dtype=float)
    else:
        weight = np.ones(len(types))
    available = (dd.install <= day) & ~dd.down[:, day]
    inputs = PlanInputs(
        device_id=fleet.devices[ec.DEVICE_ID].to_numpy(),
        device_type=types,
        unit=fleet.devices[ec.UNIT].to_numpy(),
        service_hours=np.asarray(service_hours, dtype=float),
        risk_now=predict_proba(model, now).astype(float),
        risk_serviced=predict_proba(model, serviced).astype(float),
        available=available,
        weight=weight,
    )
    return WeekInputs(inputs, day, dd)


def age_priority(week: WeekInputs) -> np.ndarray:
    """The age rule's order: days since commissioning on the planning day (oldest first)."""
    return (week.day - week.days.install).astype(float)
