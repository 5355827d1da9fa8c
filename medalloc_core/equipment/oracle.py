"""Judge a week's service plan against the truth of a synthetic fleet: simulated futures with and without each service.

From the hidden state at the end of the planning day, ``worlds`` futures of ``horizon`` days
are simulated twice with the SAME random draws: once with no service, once with every device
serviced on the first morning. A device's service *prevents* a failure in a world when it
fails in the first future and not in the second. Devices are independent given the state, so
a plan's prevented failures in a world are the sum over its selected devices, and the
*perfect-foresight oracle* is the plan (same hours, same constraints) that knows, per world,
which devices' services will prevent a failure. No other service happens in these futures:
the plan under test is the only maintenance decision of the horizon.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np

from medalloc_core.equipment.fleet_sim import DayDraws, DeviceParams, DeviceState, advance, service
from medalloc_core.equipment.plan import Plan, PlanInputs, plan_week


@dataclass(frozen=True)
class Futures:
    """Failures within the horizon in each simulated world: ``left (K, N)`` unserviced, ``serviced (K, N)``."""

    left: np.ndarray
    serviced: np.ndarray
    available: np.ndarray  # (N,) in service at the end of the planning day

    @property
    def prevented(self) -> np.ndarray:
        """``(K, N)``: +1 where the service prevents a failure, -1 where (rarely) the timing shift causes one."""
        return self.left.astype(np.int8) - self.serviced.astype(np.int8)

    @property
    def true_risk_left(self) -> np.ndarray:
        """``(N,)`` the true probability of failing within the horizon when left alone (Monte Carlo)."""
        return self.left.mean(axis=0)

    @property
    def true_risk_serviced(self) -> np.ndarray:
        """``(N,)`` the same when serviced this week."""
        return self.serviced.mean(axis=0)


def simulate_futures(
    state: DeviceState,
    params: DeviceParams,
    *,
    day: int,
    start: str,
    horizon: int = 30,
    worlds: int = 200,
    seed: int = 0,
) -> Futures:
    """Both futures of every device from ``state`` (the end of log day ``day``; ``start`` is day 0's date)."""
    rng = np.random.default_rng(seed)
    n = params.n
    available = (params.install_day <= day) & (state.down == 0)
    left = state.tile(worlds)
    serviced = service(state.tile(worlds), params, np.broadcast_to(available, (worlds, n)), rng.random((worlds, n)))
    failed_left = np.zeros((worlds, n), dtype=bool)
    failed_serviced = np.zeros((worlds, n), dtype=bool)
    weekday0 = date.fromisoformat(start).weekday()
    for k in range(1, horizon + 1):
        draws = DayDraws.draw(rng, (worlds, n))
        weekday = (weekday0 + day + k) % 7
        left, out_left = advance(left, params, day + k, draws, weekday=weekday)
        serviced, out_serviced = advance(serviced, params, day + k, draws, weekday=weekday)
        failed_left |= out_left.failed
        failed_serviced |= out_serviced.failed
    return Futures(failed_left, failed_serviced, available)


@dataclass(frozen=True)
class PlanValue:
    """A plan's true effect, averaged over the simulated worlds."""

    prevented: float  # failures prevented (mean over worlds)
    hours_used: float

    @property
    def per_hour(self) -> float:
        """Failures prevented per technician hour used."""
        return self.prevented / self.hours_used if self.hours_used > 0 else 0.0


def plan_value(plan: Plan, futures: Futures) -> PlanValue:
    """Mean over worlds of the failures the plan's services prevent."""
    prevented = futures.prevented[:, plan.selected].sum(axis=1).mean() if plan.selected.any() else 0.0
    return PlanValue(float(prevented), plan.hours_used)


def oracle_value(inputs: PlanInputs, futures: Futures, *, hours: float, max_share_away: float = 0.5) -> PlanValue:
    """The perfect-foresight plan of each world (knows which services will prevent a failure), averaged."""
    prevented, used = [], []
    for k in range(futures.left.shape[0]):
        truth = PlanInputs(
            device_id=inputs.device_id,
            device_type=inputs.device_type,
            unit=inputs.unit,
            service_hours=inputs.service_hours,
            risk_now=futures.left[k].astype(float),
            risk_serviced=futures.serviced[k].astype(float),
            available=inputs.available & futures.available,
            weight=np.ones(len(inputs.device_id)),
        )
        plan = plan_week(truth, hours=hours, max_share_away=max_share_away, method="oracle")
        prevented.append(plan.expected_prevented)
        used.append(plan.hours_used)
    return PlanValue(float(np.mean(prevented)), float(np.mean(used)))
