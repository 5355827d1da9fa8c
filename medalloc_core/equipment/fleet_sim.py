"""The true failure process of a synthetic fleet: one day of every device, vectorised, shared by generator and oracle.

A device ages on two clocks: calendar age (wear of plastics, batteries, boards) and a
*virtual age* that grows with use and that service partly resets (Kijima type-I imperfect
maintenance). Two failure paths:

- **wear-out**: a Weibull cumulative hazard in virtual age, ``(v / eta) ** k``, so the shape
  ``k`` differs by device type (``k < 1`` infant mortality, ``k = 1`` random, ``k > 1``
  wear-out), scaled by ``exp(gamma * age_years)``, the device's frailty and its
  manufacturing batch;
- **latent faults** (the P-F interval of reliability-centred maintenance): a fault starts at a
  rate that grows with use and age (much faster in a defective batch), makes the device log
  error codes, and ends in a failure after about ``pf_days`` unless a service finds it.

Preventive service cuts virtual age by ``rho_pm`` and finds a latent fault with probability
``fault_detect``; a corrective repair after a failure cuts virtual age by ``rho_repair``.
Every function here works on arrays of shape ``(..., N)`` (N devices, optionally many
simulated worlds in front), so the benchmark's oracle runs the same process as the
generator, with the same random draws in the serviced and the unserviced world.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

DAYS_PER_YEAR = 365.25


@dataclass(frozen=True)
class DeviceParams:
    """Per-device true parameters, each an array of shape ``(N,)``."""

    shape: np.ndarray  # Weibull k of the wear-out hazard (by device type)
    scale: np.ndarray  # Weibull eta, in days of nominal use
    age_effect: np.ndarray  # gamma: hazard x exp(gamma * calendar age in years)
    frailty: np.ndarray  # hidden per-device multiplier, mean 1
    wear_mult: np.ndarray  # batch multiplier on the wear-out hazard (1 = sound batch)
    fault_rate: np.ndarray  # latent-fault onsets per day of nominal use
    fault_mult: np.ndarray  # batch multiplier on the fault rate (a defective batch: several times)
    pf_days: np.ndarray  # mean days from a latent fault to the failure (P-F interval)
    rho_pm: np.ndarray  # share of virtual age a preventive service removes
    rho_repair: np.ndarray  # share of virtual age a corrective repair removes
    fault_detect: np.ndarray  # probability a preventive service finds a latent fault
    repair_days: np.ndarray  # mean downtime after a failure, days
    nominal_hours: np.ndarray  # hours of use on a typical day in service
    idle_prob: np.ndarray  # probability the device is not used on a given day
    intensity: np.ndarray  # hospital x unit x device usage multiplier
    install_day: np.ndarray  # int: simulation day of commissioning (negative: before day 0)

    @property
    def n(self) -> int:
        """Number of devices."""
        return int(self.shape.shape[0])

    def take(self, index: np.ndarray) -> DeviceParams:
        """The parameters of a subset of devices."""
        return DeviceParams(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


@dataclass
class DeviceState:
    """The hidden state of every device on one day; arrays of shape ``(..., N)``."""

    virtual_age: np.ndarray  # days of nominal use since "as good as new", after service resets
    fault: np.ndarray  # bool: a latent fault is present
    down: np.ndarray  # int: days of downtime left (0 = in service)

    @classmethod
    def new(cls, n: int) -> DeviceState:
        """Every device as good as new and in service."""
        return cls(np.zeros(n), np.zeros(n, dtype=bool), np.zeros(n, dtype=np.int64))

    def copy(self) -> DeviceState:
        """An independent copy."""
        return DeviceState(self.virtual_age.copy(), self.fault.copy(), self.down.copy())

    def tile(self, worlds: int) -> DeviceState:
        """``worlds`` copies stacked in front: shape ``(worlds, N)``."""
        return DeviceState(
            np.tile(self.virtual_age, (worlds, 1)), np.tile(self.fault, (worlds, 1)), np.tile(self.down, (worlds, 1))
        )


@dataclass(frozen=True)
class DayDraws:
    """The uniform and gamma draws of one day; the same draws in two worlds make them comparable."""

    idle: np.ndarray
    hours: np.ndarray  # Gamma(4, 1/4): mean 1, the day's usage relative to the device's typical day
    wear: np.ndarray
    onset: np.ndarray
    pf: np.ndarray
    downtime: np.ndarray  # Gamma(2, 1/2): mean 1, this failure's downtime relative to the mean
    detect: np.ndarray  # does a service today find the latent fault

    @classmethod
    def draw(cls, rng: np.random.Generator, shape: tuple[int, ...]) -> DayDraws:
        """Fresh draws for arrays of ``shape``."""
        return cls(
            idle=rng.random(shape),
            hours=rng.gamma(4.0, 0.25, shape),
            wear=rng.random(shape),
            onset=rng.random(shape),
            pf=rng.random(shape),
            downtime=rng.gamma(2.0, 0.5, shape),
            detect=rng.random(shape),
        )


@dataclass(frozen=True)
class DayOutcome:
    """What happened to every device on one day; arrays of shape ``(..., N)``."""

    hours: np.ndarray  # usage hours
    failed: np.ndarray  # bool: failed today
    repaired: np.ndarray  # bool: a failure's downtime ended today
    fault_started: np.ndarray  # bool


def service(state: DeviceState, params: DeviceParams, mask: np.ndarray, detect: np.ndarray) -> DeviceState:
    """A preventive service on the devices in ``mask`` (in service only): virtual age cut, latent fault found or not."""
    mask = mask & (state.down == 0)
    found = mask & state.fault & (detect < params.fault_detect)
    return replace(
        state,
        virtual_age=np.where(mask, (1.0 - params.rho_pm) * state.virtual_age, state.virtual_age),
        fault=state.fault & ~found,
    )


def cumulative_wear(virtual_age: np.ndarray, params: DeviceParams) -> np.ndarray:
    """The Weibull cumulative hazard ``(v / eta) ** k`` before the age, frailty and batch factors."""
    return (virtual_age / params.scale) ** params.shape


def advance(
    state: DeviceState, params: DeviceParams, day: int, draws: DayDraws, *, weekday: int
) -> tuple[DeviceState, DayOutcome]:
    """One day of every device: use, wear-out and fault failures, downtime and repair.

    Parameters
    ----------
    state
        The devices at the start of the day (not modified).
    params
        The devices' true parameters (broadcast over any leading world axis of ``state``).
    day
        The simulation day (devices with ``install_day > day`` are not installed yet).
    draws
        This day's random draws, shaped like ``state``'s arrays.
    weekday
        0 = Monday .. 6 = Sunday (weekend days see less use).

    Returns
    -------
    (DeviceState, DayOutcome)
        The state at the end of the day and what happened.
    """
    installed = params.install_day <= day
    down_before = state.down > 0
    repaired = down_before & (state.down == 1)
    down = np.where(down_before, state.down - 1, 0)
    active = installed & ~down_before

    weekend = 0.6 if weekday >= 5 else 1.0
    used = active & (draws.idle >= params.idle_prob)
    hours = np.where(used, np.minimum(params.nominal_hours * params.intensity * weekend * draws.hours, 24.0), 0.0)
    u = hours / params.nominal_hours
    age_years = np.maximum(day - params.install_day, 0) / DAYS_PER_YEAR
    age_mult = np.exp(params.age_effect * age_years) * params.frailty

    v = state.virtual_age
    wear_hazard = (cumulative_wear(v + u, params) - cumulative_wear(v, params)) * age_mult * params.wear_mult
    wear_fail = active & (draws.wear < -np.expm1(-wear_hazard))
    fault_fail = active & state.fault & (draws.pf < 1.0 / params.pf_days)
    onset_hazard = params.fault_rate * (0.3 + u) * params.fault_mult * age_mult
    started = active & ~state.fault & ~wear_fail & (draws.onset < -np.expm1(-onset_hazard))
    failed = wear_fail | fault_fail

    v = np.where(active, v + u, v)
    v = np.where(failed, (1.0 - params.rho_repair) * v, v)
    fault = (state.fault | started) & ~failed
    downtime = np.maximum(1, np.ceil(params.repair_days * draws.downtime)).astype(np.int64)
    down = np.where(failed, downtime, down)
    return DeviceState(v, fault, down), DayOutcome(hours, failed, repaired, started)
