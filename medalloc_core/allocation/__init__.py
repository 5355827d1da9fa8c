"""From forecasts to decisions: newsvendor bed/staff plans, regional LP, an RL environment.

The Gymnasium environment lives in ``medalloc_core.allocation.env`` and is not imported here,
so this package works without the optional ``rl`` extra.
"""

from medalloc_core.allocation.forecast_io import (
    FORECAST_COLUMNS,
    capacity_from_records,
    read_capacity,
    read_forecast,
    write_forecast,
)
from medalloc_core.allocation.newsvendor import PLAN_COLUMNS, PlanConfig, UnitCosts, plan_hospital
from medalloc_core.allocation.regional import (
    RegionalConfig,
    RegionalPlan,
    RegionalSolveError,
    hospital_totals,
    plan_region,
    share_forecast,
    write_regional_plan,
    write_shared,
)

__all__ = [
    "FORECAST_COLUMNS",
    "PLAN_COLUMNS",
    "PlanConfig",
    "RegionalConfig",
    "RegionalPlan",
    "RegionalSolveError",
    "UnitCosts",
    "capacity_from_records",
    "hospital_totals",
    "plan_hospital",
    "plan_region",
    "read_capacity",
    "read_forecast",
    "share_forecast",
    "write_forecast",
    "write_regional_plan",
    "write_shared",
]
