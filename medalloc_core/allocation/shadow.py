"""Shadow prices of the regional LP: what one more unit of each limited resource would save.

HiGHS returns, with the optimum, the dual value (marginal) of every constraint and of every
variable bound: the change of the optimal expected cost per unit increase of its right-hand
side. Summed over the scenarios (a first-stage resource serves them all), they answer a
coordinator's questions in the cost unit of the plan:

- **pool** (per day): one more surge bed in the regional pool that day saves ``pool_price[d]``;
  zero unless the pool is used up (binding).
- **bed value** (per hospital and day): one more bed a hospital staffs itself saves
  ``bed_value[h, d]`` = c_u × P(it is full) net of what transfers already relieve. A hospital
  receives surge beds while their value exceeds the surge cost plus the pool's price that
  day (at the optimum they are equal wherever it receives some and has room left).
- **surge room** (per hospital and day): one more bed of room for surge at a hospital whose
  surge is at its cap (its empty physical beds) saves ``surge_room[h, d]``.
- **corridor** (per transfer pair and day): one more transfer slot (patient-day) on a corridor
  with a finite limit saves ``corridor[p, d]``.

Signs: HiGHS reports d(cost)/d(rhs) ≤ 0 for these ``≤`` rows and upper bounds; everything here
is the saving, ``-marginal ≥ 0``. Like every LP dual, a price holds for small changes (it is a
slope of a piecewise-linear cost), and where the LP is degenerate it is one valid slope among
several; the tests check each against re-solving with the resource moved by a small step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from medalloc_core.allocation.forecast_io import HOSPITAL
from medalloc_core.contract import DATE

# A constraint counts as binding when its shadow price exceeds this (cost units per bed), or a
# variable sits within this of its bound: below it the price is solver noise.
BINDING_TOLERANCE = 1e-6


@dataclass(frozen=True)
class ShadowPrices:
    """The regional LP's dual values as savings per unit of each resource (all ``>= 0``)."""

    hospitals: tuple[str, ...]
    dates: pd.DatetimeIndex
    pairs: tuple[tuple[str, str], ...]
    pool_size: float
    pool_used: np.ndarray  # (D,) surge beds placed per day (LP values)
    pool_price: np.ndarray  # (D,)
    bed_value: np.ndarray  # (H, D)
    surge: np.ndarray  # (H, D) LP surge beds
    surge_limit: np.ndarray  # (H,) cap per hospital-day (inf = none)
    surge_room: np.ndarray  # (H, D)
    corridor_limit: np.ndarray  # (P,) per pair and day (inf = none)
    corridor_use: np.ndarray  # (P, D) expected patient-days moved
    corridor_full: np.ndarray  # (P, D) share of scenarios with the corridor at its limit
    corridor: np.ndarray  # (P, D)
    surge_cost: float
    scenarios: int

    @classmethod
    def from_solution(
        cls,
        *,
        hospitals: list[str],
        dates: list[pd.Timestamp],
        pairs: np.ndarray,
        pool_size: float,
        surge_cost: float,
        surge_limit: np.ndarray,
        pair_limit: np.ndarray,
        x_opt: np.ndarray,
        ineq_marginals: np.ndarray,
        upper_marginals: np.ndarray,
        scenarios: int,
    ) -> ShadowPrices:
        """Read the prices from a HiGHS solution with the variable layout ``s[h, d] | u[k, h, d] | x[k, p, d]``
        and the rows ``capacity[k, h, d] | pool[d]`` of ``regional.plan_region``."""
        n_h, n_d, k, n_p = len(hospitals), len(dates), scenarios, len(pairs)
        hd = n_h * n_d
        n_u = k * hd
        cap_dual = -np.asarray(ineq_marginals[:n_u]).reshape(k, n_h, n_d)
        pool_dual = -np.asarray(ineq_marginals[n_u : n_u + n_d])
        upper = -np.asarray(upper_marginals)
        surge = x_opt[:hd].reshape(n_h, n_d)
        x = x_opt[hd + n_u :].reshape(k, n_p, n_d)
        limits = pair_limit[None, :, None] if n_p else np.zeros((1, 0, 1))
        return cls(
            hospitals=tuple(hospitals),
            dates=pd.DatetimeIndex(dates),
            pairs=tuple((hospitals[a], hospitals[b]) for a, b in pairs),
            pool_size=float(pool_size),
            pool_used=surge.sum(axis=0),
            pool_price=np.maximum(pool_dual, 0.0),
            bed_value=np.maximum(cap_dual.sum(axis=0), 0.0),
            surge=surge,
            surge_limit=np.asarray(surge_limit, dtype=float),
            surge_room=np.maximum(upper[:hd].reshape(n_h, n_d), 0.0),
            corridor_limit=np.asarray(pair_limit, dtype=float),
            corridor_use=x.mean(axis=0),
            corridor_full=(x >= limits - BINDING_TOLERANCE).mean(axis=0) if n_p else np.zeros((0, n_d)),
            corridor=np.maximum(upper[hd + n_u :].reshape(k, n_p, n_d).sum(axis=0), 0.0),
            surge_cost=float(surge_cost),
            scenarios=k,
        )

    # ------------------------------------------------------------------ tables
    def hospital_day_columns(self) -> pd.DataFrame:
        """Per hospital-day (the order of ``RegionalPlan.hospital_days``): bed value, surge-room price, at cap."""
        n_d = len(self.dates)
        return pd.DataFrame(
            {
                HOSPITAL: np.repeat(self.hospitals, n_d),
                DATE: np.tile(self.dates, len(self.hospitals)),
                "value_of_one_more_bed": self.bed_value.ravel(),
                "surge_at_cap": (self.surge >= self.surge_limit[:, None] - BINDING_TOLERANCE).ravel(),
                "value_of_more_surge_room": self.surge_room.ravel(),
            }
        )

    def binding(self) -> pd.DataFrame:
        """Every binding constraint with its shadow price and what it means, largest saving first.

        Columns: ``constraint`` (pool / surge room / transfer slot), ``hospital`` (or
        ``from->to``), ``date``, ``limit``, ``used``, ``shadow_price``, ``meaning``.
        """
        rows = []
        for d, date in enumerate(self.dates):
            if self.pool_price[d] > BINDING_TOLERANCE:
                rows.append(
                    {
                        "constraint": "surge pool",
                        "where": "region",
                        DATE: date,
                        "limit": self.pool_size,
                        "used": self.pool_used[d],
                        "shadow_price": self.pool_price[d],
                        "meaning": f"one more pool bed on {date.date()} saves {self.pool_price[d]:.2f}",
                    }
                )
            for h, hospital in enumerate(self.hospitals):
                if self.surge_room[h, d] > BINDING_TOLERANCE:
                    rows.append(
                        {
                            "constraint": "surge room",
                            "where": hospital,
                            DATE: date,
                            "limit": self.surge_limit[h],
                            "used": self.surge[h, d],
                            "shadow_price": self.surge_room[h, d],
                            "meaning": f"room for one more surge bed at {hospital} on {date.date()} "
                            f"saves {self.surge_room[h, d]:.2f}",
                        }
                    )
            for p, (a, b) in enumerate(self.pairs):
                if self.corridor[p, d] > BINDING_TOLERANCE:
                    rows.append(
                        {
                            "constraint": "transfer slot",
                            "where": f"{a}->{b}",
                            DATE: date,
                            "limit": self.corridor_limit[p],
                            "used": self.corridor_use[p, d],
                            "shadow_price": self.corridor[p, d],
                            "meaning": f"one more transfer slot {a}->{b} on {date.date()} "
                            f"saves {self.corridor[p, d]:.2f} "
                            f"(full in {self.corridor_full[p, d]:.0%} of scenarios)",
                        }
                    )
        columns = ["constraint", "where", DATE, "limit", "used", "shadow_price", "meaning"]
        frame = pd.DataFrame(rows, columns=columns)
        return frame.sort_values("shadow_price", ascending=False, kind="stable").reset_index(drop=True)

    def corridor_totals(self) -> pd.DataFrame:
        """Per transfer pair with a finite limit: its limit, expected use, and the saving of one more slot every day."""
        rows = [
            {
                "from_hospital": a,
                "to_hospital": b,
                "limit_per_day": self.corridor_limit[p],
                "expected_patient_days": float(self.corridor_use[p].sum()),
                "days_binding": int((self.corridor[p] > BINDING_TOLERANCE).sum()),
                "saving_one_more_slot_every_day": float(self.corridor[p].sum()),
            }
            for p, (a, b) in enumerate(self.pairs)
            if np.isfinite(self.corridor_limit[p])
        ]
        columns = [
            "from_hospital",
            "to_hospital",
            "limit_per_day",
            "expected_patient_days",
            "days_binding",
            "saving_one_more_slot_every_day",
        ]
        frame = pd.DataFrame(rows, columns=columns)
        return frame.sort_values("saving_one_more_slot_every_day", ascending=False, kind="stable").reset_index(
            drop=True
        )
