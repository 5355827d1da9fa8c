"""Synthetic device fleets: every hospital's inventory and event log, with the true parameters beside them.

``generate_fleets(FleetConfig(...))`` draws hospitals that differ in fleet age, usage
intensity and preventive-service discipline, buys their devices from manufacturers whose
production batches are sometimes defective, and runs the true failure process
(:mod:`medalloc_core.equipment.fleet_sim`) day by day. ``write_fleets`` writes one folder per
hospital (``devices.csv``, ``events.csv``) plus ``fleet.json`` with every true parameter.
Same config, same bytes. See docs/equipment.md ("Synthetic fleets").
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medalloc_core.equipment import contract as ec
from medalloc_core.equipment.fleet_sim import DayDraws, DeviceParams, DeviceState, advance, service
from medalloc_core.synthetic.config import (
    EARLIEST_START,
    LATEST_END,
    MAX_DAYS,
    MAX_HOSPITALS,
    check_field_types,
)

log = logging.getLogger(__name__)

#: Bumped whenever the same config would produce different numbers; stored in fleet.json.
FLEET_GENERATOR_VERSION = "1.0.0"
FLEET_METADATA = "fleet.json"


@dataclass(frozen=True)
class DeviceTypeProfile:
    """The true behaviour of one device type (jittered per batch, hospital and device)."""

    code: str  # short id used in device ids
    shape: float  # Weibull k of the wear-out hazard in virtual age
    scale: float  # Weibull eta, days of nominal use
    age_effect: float  # hazard x exp(age_effect * calendar age in years)
    fault_rate: float  # latent-fault onsets per day of nominal use
    pf_days: float  # mean P-F interval: days from a latent fault to the failure
    rho_pm: float  # share of virtual age a preventive service removes
    rho_repair: float  # share of virtual age a corrective repair removes
    fault_detect: float  # probability that a preventive service finds a latent fault
    repair_days: float  # mean downtime of a failure
    nominal_hours: float  # hours of use on a typical day
    idle_prob: float  # share of days without use
    pm_interval: int  # manufacturer's preventive-service interval, days
    service_hours: float  # technician hours of one preventive service
    per_100_beds: float  # devices of this type per 100 beds
    units: dict[str, float]  # where they are kept (shares)
    fault_codes: tuple[str, ...]  # error codes a latent fault produces
    nuisance_codes: tuple[str, ...]  # error codes of normal use (occlusions, user errors)


DEVICE_TYPES: dict[str, DeviceTypeProfile] = {
    # Many, cheap, always running: moderate wear-out; most failures are worn mechanics or latent faults.
    "infusion_pump": DeviceTypeProfile(
        code="IP",
        shape=1.8,
        scale=1500,
        age_effect=0.08,
        fault_rate=1 / 2500,
        pf_days=40,
        rho_pm=0.5,
        rho_repair=0.2,
        fault_detect=0.8,
        repair_days=3,
        nominal_hours=10,
        idle_prob=0.25,
        pm_interval=365,
        service_hours=1.0,
        per_100_beds=20,
        units={"ICU": 0.3, "MED": 0.35, "SURG": 0.25, "ED": 0.1},
        fault_codes=("E-MOTOR", "E-PRESSURE"),
        nuisance_codes=("W-OCCLUSION", "W-AIR"),
    ),
    "syringe_pump": DeviceTypeProfile(
        code="SP",
        shape=1.5,
        scale=1600,
        age_effect=0.06,
        fault_rate=1 / 3000,
        pf_days=45,
        rho_pm=0.5,
        rho_repair=0.2,
        fault_detect=0.8,
        repair_days=2,
        nominal_hours=8,
        idle_prob=0.35,
        pm_interval=365,
        service_hours=0.5,
        per_100_beds=8,
        units={"ICU": 0.5, "MED": 0.2, "SURG": 0.2, "THEATRE": 0.1},
        fault_codes=("E-DRIVE",),
        nuisance_codes=("W-NEAR-EMPTY", "W-OCCLUSION"),
    ),
    # Infant mortality (k < 1): boards fail early or not at all; service does little.
    "patient_monitor": DeviceTypeProfile(
        code="PM",
        shape=0.9,
        scale=3000,
        age_effect=0.1,
        fault_rate=1 / 3500,
        pf_days=30,
        rho_pm=0.3,
        rho_repair=0.1,
        fault_detect=0.7,
        repair_days=2,
        nominal_hours=20,
        idle_prob=0.05,
        pm_interval=365,
        service_hours=0.75,
        per_100_beds=12,
        units={"ICU": 0.4, "ED": 0.2, "MED": 0.2, "SURG": 0.2},
        fault_codes=("E-BOARD", "E-DISPLAY"),
        nuisance_codes=("W-LEAD-OFF",),
    ),
    # Strong wear-out (k = 3): service restores a lot; a skipped service shows; failures are long.
    "ventilator": DeviceTypeProfile(
        code="VE",
        shape=3.0,
        scale=450,
        age_effect=0.05,
        fault_rate=1 / 2000,
        pf_days=35,
        rho_pm=0.8,
        rho_repair=0.3,
        fault_detect=0.9,
        repair_days=5,
        nominal_hours=14,
        idle_prob=0.3,
        pm_interval=180,
        service_hours=3.0,
        per_100_beds=3,
        units={"ICU": 0.8, "ED": 0.2},
        fault_codes=("E-FLOW-SENSOR", "E-VALVE", "E-O2-CELL"),
        nuisance_codes=("W-CIRCUIT-LEAK",),
    ),
    # Rarely used, ages on the shelf (batteries): calendar age matters more than use.
    "defibrillator": DeviceTypeProfile(
        code="DF",
        shape=1.0,
        scale=4000,
        age_effect=0.15,
        fault_rate=1 / 6000,
        pf_days=60,
        rho_pm=0.4,
        rho_repair=0.2,
        fault_detect=0.9,
        repair_days=2,
        nominal_hours=0.5,
        idle_prob=0.85,
        pm_interval=180,
        service_hours=1.0,
        per_100_beds=2,
        units={"ICU": 0.25, "ED": 0.25, "MED": 0.2, "SURG": 0.15, "THEATRE": 0.15},
        fault_codes=("E-BATTERY", "E-CHARGE"),
        nuisance_codes=("W-SELFTEST",),
    ),
    # The steepest wear-out and the shortest service interval.
    "dialysis_machine": DeviceTypeProfile(
        code="DM",
        shape=3.2,
        scale=300,
        age_effect=0.04,
        fault_rate=1 / 1500,
        pf_days=30,
        rho_pm=0.85,
        rho_repair=0.3,
        fault_detect=0.85,
        repair_days=4,
        nominal_hours=9,
        idle_prob=0.2,
        pm_interval=120,
        service_hours=2.5,
        per_100_beds=1,
        units={"DIALYSIS": 1.0},
        fault_codes=("E-PUMP", "E-CONDUCTIVITY"),
        nuisance_codes=("W-TMP-HIGH",),
    ),
    "ultrasound": DeviceTypeProfile(
        code="US",
        shape=2.2,
        scale=1100,
        age_effect=0.07,
        fault_rate=1 / 3000,
        pf_days=50,
        rho_pm=0.7,
        rho_repair=0.2,
        fault_detect=0.8,
        repair_days=3,
        nominal_hours=6,
        idle_prob=0.3,
        pm_interval=365,
        service_hours=2.0,
        per_100_beds=1.5,
        units={"RADIOLOGY": 0.6, "ED": 0.4},
        fault_codes=("E-PROBE", "E-PSU"),
        nuisance_codes=("W-FREEZE",),
    ),
    "anaesthesia_machine": DeviceTypeProfile(
        code="AM",
        shape=2.5,
        scale=500,
        age_effect=0.05,
        fault_rate=1 / 2500,
        pf_days=40,
        rho_pm=0.8,
        rho_repair=0.3,
        fault_detect=0.9,
        repair_days=4,
        nominal_hours=8,
        idle_prob=0.35,
        pm_interval=180,
        service_hours=3.0,
        per_100_beds=1.5,
        units={"THEATRE": 1.0},
        fault_codes=("E-VAPORISER", "E-LEAK-TEST"),
        nuisance_codes=("W-CO2-ABSORBER",),
    ),
}

#: Usage multiplier by unit: an ICU runs its devices harder than a ward.
UNIT_INTENSITY: dict[str, float] = {
    "ICU": 1.25,
    "ED": 1.1,
    "THEATRE": 1.0,
    "MED": 0.9,
    "SURG": 0.9,
    "DIALYSIS": 1.0,
    "RADIOLOGY": 1.0,
}
MANUFACTURERS: tuple[str, ...] = ("Medix", "Vitalon", "Corvane", "Helion")
FAULT_ERRORS_PER_DAY = 0.5  # error codes a device with a latent fault logs per day
NUISANCE_ERRORS_PER_DAY = 0.015  # error codes of normal use per day of nominal use
CHECK_PROB = 0.04  # daily chance an engineer checks a device with >= 3 errors in the last 7 days
CHECK_FINDS = 0.7  # chance that check finds the latent fault


MAX_DEVICE_SCALE = 100.0  # FleetConfig.device_scale: a hundred times the typical fleet per bed


@dataclass(frozen=True)
class FleetConfig:
    """Everything that determines a synthetic set of fleets; same config, same bytes.

    Raises ``ValueError`` (saying what to change) on impossible values.
    """

    hospitals: int = 10  # number of hospitals, one fleet each
    days: int = 730  # days of event log (two years)
    seed: int = 0  # the only source of randomness
    start: str = "2023-01-01"  # first day of the event log (ISO)
    min_beds: int = 120  # fleet size scales with beds (DeviceTypeProfile.per_100_beds)
    max_beds: int = 600
    device_scale: float = 1.0  # multiplies every per_100_beds (0.5: half the fleet, faster runs)
    min_fleet_age: float = 1.5  # mean device age (years) at the start, drawn per hospital in this range
    max_fleet_age: float = 8.0
    min_intensity: float = 0.6  # hospital usage multiplier range
    max_intensity: float = 1.4
    min_compliance: float = 0.55  # probability that a due preventive service happens that week
    max_compliance: float = 0.97
    defective_batch_prob: float = 0.12  # share of (type, manufacturer, year) batches with a defect
    new_device_share: float = 0.08  # devices commissioned during the log (fleet growth)
    warmup_days: int = 1095  # simulated before the log starts, so the fleet is in a steady state
    types: tuple[str, ...] = tuple(DEVICE_TYPES)  # device types to include

    def __post_init__(self) -> None:
        # A config also comes from a scenario file: types first, then the same resource bounds as
        # the forecasting region's (medalloc_core.synthetic.config), so `generate` and `simulate`
        # refuse a region that would take hours or exhaust memory instead of starting it.
        check_field_types(self)
        if not 1 <= self.hospitals <= MAX_HOSPITALS or not 60 <= self.days <= MAX_DAYS:
            raise ValueError(
                f"hospitals must be from 1 to {MAX_HOSPITALS} and days from 60 to {MAX_DAYS} "
                f"(got {self.hospitals}, {self.days})"
            )
        if self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed}")
        if not 0 <= self.warmup_days <= MAX_DAYS:
            raise ValueError(f"warmup_days must be from 0 to {MAX_DAYS}, got {self.warmup_days}")
        if self.device_scale > MAX_DEVICE_SCALE:
            raise ValueError(f"device_scale must be at most {MAX_DEVICE_SCALE:g}, got {self.device_scale}")
        if not 0 < self.min_beds <= self.max_beds:
            raise ValueError(f"need 0 < min_beds <= max_beds, got {self.min_beds}, {self.max_beds}")
        if not 0 < self.min_fleet_age <= self.max_fleet_age <= 15:
            raise ValueError("need 0 < min_fleet_age <= max_fleet_age <= 15 years")
        if not 0 < self.min_intensity <= self.max_intensity:
            raise ValueError("need 0 < min_intensity <= max_intensity")
        if not 0 < self.min_compliance <= self.max_compliance <= 1:
            raise ValueError("need 0 < min_compliance <= max_compliance <= 1")
        if not 0 <= self.defective_batch_prob <= 1 or not 0 <= self.new_device_share < 1:
            raise ValueError("defective_batch_prob must be in [0, 1] and new_device_share in [0, 1)")
        if self.device_scale <= 0 or self.warmup_days < 0:
            raise ValueError("device_scale must be > 0 and warmup_days >= 0")
        unknown = [t for t in self.types if t not in DEVICE_TYPES]
        if unknown or not self.types:
            raise ValueError(f"types: unknown device type(s) {unknown}; choose from {list(DEVICE_TYPES)}")
        try:
            first = date.fromisoformat(self.start)
        except ValueError:
            raise ValueError(f"start must be an ISO date YYYY-MM-DD, got {self.start!r}") from None
        if not EARLIEST_START + timedelta(days=self.warmup_days) <= first <= LATEST_END - timedelta(days=self.days):
            raise ValueError(
                f"start {self.start} with {self.warmup_days} warm-up and {self.days} logged days leaves the dates "
                f"MedAlloc handles ({EARLIEST_START} to {LATEST_END})"
            )


@dataclass
class HospitalFleet:
    """One hospital's generated files and the truth behind them.

    ``devices`` and ``events`` follow the contract (typed: datetimes, floats); ``truth`` has
    one row per device with its batch, whether the batch is defective, its frailty and usage
    intensity; ``params`` are the simulator's per-device parameters (row order = ``devices``)
    and ``states`` the hidden state at the end of each day asked for with ``keep_states``.
    """

    hospital_id: str
    devices: pd.DataFrame
    events: pd.DataFrame
    truth: pd.DataFrame
    params: DeviceParams
    service_hours: np.ndarray  # technician hours of one preventive service, per device
    meta: dict[str, Any]
    states: dict[int, DeviceState] = field(default_factory=dict)


@dataclass
class EquipmentRegion:
    """The fleets of one region plus ``metadata`` (every true parameter, JSON-ready)."""

    config: FleetConfig
    hospitals: list[HospitalFleet]
    metadata: dict[str, Any]

    @property
    def start(self) -> pd.Timestamp:
        """Day 0 of the event logs."""
        return pd.Timestamp(self.config.start)


def generate_fleets(
    config: FleetConfig,
    *,
    keep_states: tuple[int, ...] = (),
    progress: Callable[[str], None] | None = None,
) -> EquipmentRegion:
    """Generate every hospital's fleet and event log.

    Parameters
    ----------
    config
        The fleets to draw.
    keep_states
        Log days (0 = ``config.start``) after which to keep each hospital's hidden state,
        for an oracle that simulates the future from there (the benchmark's planning weeks).
    progress
        Called with each hospital id when it is done.
    """
    rng = np.random.default_rng(config.seed)
    types = list(config.types)
    batches: dict[tuple[str, str, int], dict[str, float]] = {}

    def batch(type_name: str, maker: str, year: int) -> dict[str, float]:
        key = (type_name, maker, year)
        if key not in batches:
            # Drawn from their own stream: adding a hospital must not change other batches.
            brng = np.random.default_rng([config.seed, 7, types.index(type_name), MANUFACTURERS.index(maker), year])
            defective = bool(brng.random() < config.defective_batch_prob)
            batches[key] = {
                "defective": defective,
                "fault_mult": float(brng.uniform(3.0, 6.0)) if defective else 1.0,
                "wear_mult": float(brng.uniform(1.3, 2.0)) if defective else 1.0,
            }
        return batches[key]

    hospitals = []
    for h in range(config.hospitals):
        hrng = np.random.default_rng([config.seed, 1, h])
        hospital = _hospital(config, f"H{h:03d}", hrng, batch, keep_states)
        hospitals.append(hospital)
        if progress:
            progress(hospital.hospital_id)
    metadata = {
        "generator": "medalloc_core.equipment.synthetic",
        "generator_version": FLEET_GENERATOR_VERSION,
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()},
        "device_types": {name: asdict(DEVICE_TYPES[name]) for name in types},
        "unit_intensity": UNIT_INTENSITY,
        "batches": [
            {"device_type": t, "manufacturer": m, "install_year": y, **v} for (t, m, y), v in sorted(batches.items())
        ],
        "hospitals": [h.meta for h in hospitals],
        "model": (
            "Per day in service: wear-out hazard ((v+u)/eta)^k - (v/eta)^k in virtual age v (days of nominal use), "
            "times exp(age_effect * age_years) * frailty * batch wear_mult; latent faults start at "
            "fault_rate * (0.3 + u) * batch fault_mult * exp(age_effect * age_years) * frailty, log error codes "
            "and fail with probability 1/pf_days per day; preventive service: v *= 1 - rho_pm and finds a fault "
            "with probability fault_detect; failure: down ~ repair_days * Gamma(2, 1/2), v *= 1 - rho_repair."
        ),
    }
    _ = rng  # the region-level stream is reserved for future region-wide draws
    return EquipmentRegion(config, hospitals, metadata)


# ----------------------------------------------------------------------------- one hospital
_LOG_ROWS_PER_CHUNK = 64


def _hospital(
    config: FleetConfig,
    hospital_id: str,
    rng: np.random.Generator,
    batch: Callable[[str, str, int], dict[str, float]],
    keep_states: tuple[int, ...],
) -> HospitalFleet:
    start = date.fromisoformat(config.start)
    beds = int(round(math.exp(rng.uniform(math.log(config.min_beds), math.log(config.max_beds)))))
    fleet_age = float(rng.uniform(config.min_fleet_age, config.max_fleet_age))
    intensity = float(rng.uniform(config.min_intensity, config.max_intensity))
    compliance = float(rng.uniform(config.min_compliance, config.max_compliance))
    interval_factor = float(rng.uniform(0.8, 1.4))  # the hospital's own service interval vs the manufacturer's

    rows: list[dict[str, Any]] = []
    columns: dict[str, list[float]] = {f: [] for f in DeviceParams.__dataclass_fields__}
    service_hours: list[float] = []
    intervals: list[int] = []
    for type_name in config.types:
        profile = DEVICE_TYPES[type_name]
        count = max(1, int(round(profile.per_100_beds * beds / 100 * config.device_scale)))
        makers = list(rng.choice(MANUFACTURERS, size=int(rng.integers(1, 3)), replace=False))
        units, shares = zip(*profile.units.items())
        for k in range(count):
            new = rng.random() < config.new_device_share
            if new:
                install_day = int(rng.integers(0, config.days - 30))
            else:
                age_days = float(rng.uniform(0.0, min(2 * fleet_age, 14.0)) * 365.25)
                install_day = -int(age_days) - 1
            install = start + timedelta(days=install_day)
            maker = str(makers[int(rng.integers(len(makers)))])
            b = batch(type_name, maker, install.year)
            unit = str(units[int(rng.choice(len(units), p=np.asarray(shares) / sum(shares)))])
            device_intensity = intensity * UNIT_INTENSITY[unit] * float(rng.lognormal(0.0, 0.15))
            frailty = float(rng.gamma(4.0, 0.25))
            rows.append(
                {
                    ec.DEVICE_ID: f"{profile.code}-{k + 1:04d}",
                    ec.DEVICE_TYPE: type_name,
                    ec.UNIT: unit,
                    ec.INSTALL_DATE: pd.Timestamp(install),
                    ec.MANUFACTURER: maker,
                    "batch": f"{maker}-{profile.code}-{install.year}",
                    "defective_batch": bool(b["defective"]),
                    "frailty": round(frailty, 4),
                    "intensity": round(device_intensity, 4),
                }
            )
            for name, value in (
                ("shape", profile.shape),
                ("scale", profile.scale),
                ("age_effect", profile.age_effect),
                ("frailty", frailty),
                ("wear_mult", b["wear_mult"]),
                ("fault_rate", profile.fault_rate),
                ("fault_mult", b["fault_mult"]),
                ("pf_days", profile.pf_days),
                ("rho_pm", profile.rho_pm),
                ("rho_repair", profile.rho_repair),
                ("fault_detect", profile.fault_detect),
                ("repair_days", profile.repair_days),
                ("nominal_hours", profile.nominal_hours),
                ("idle_prob", profile.idle_prob),
                ("intensity", device_intensity),
                ("install_day", install_day),
            ):
                columns[name].append(value)
            service_hours.append(profile.service_hours)
            intervals.append(max(30, int(round(profile.pm_interval * interval_factor))))

    # Rows in device_id order, as the loader sorts them: the hidden state lines up with a loaded fleet.
    order = np.argsort([r[ec.DEVICE_ID] for r in rows], kind="stable")
    params = DeviceParams(
        **{k: np.asarray(v, dtype=np.int64 if k == "install_day" else float)[order] for k, v in columns.items()}
    )
    inventory = pd.DataFrame(rows).iloc[order].reset_index(drop=True)
    service_hours = list(np.asarray(service_hours)[order])
    intervals = list(np.asarray(intervals)[order])
    events, states = _simulate(config, params, np.asarray(intervals), compliance, inventory, rng, keep_states)
    devices = inventory[list(ec.INVENTORY_COLUMNS)].copy()
    devices[ec.DEVICE_ID] = devices[ec.DEVICE_ID].astype(str)
    truth = inventory[[ec.DEVICE_ID, "batch", "defective_batch", "frailty", "intensity"]].copy()
    truth["pm_interval_days"] = intervals
    meta = {
        "hospital_id": hospital_id,
        "beds": beds,
        "devices": len(devices),
        "mean_fleet_age_years": round(fleet_age, 3),
        "usage_intensity": round(intensity, 4),
        "service_compliance": round(compliance, 4),
        "service_interval_factor": round(interval_factor, 4),
        "failures": int((events[ec.EVENT] == ec.EventKind.FAILURE).sum()),
        "preventive_services": int((events[ec.EVENT] == ec.EventKind.PREVENTIVE).sum()),
    }
    return HospitalFleet(hospital_id, devices, events, truth, params, np.asarray(service_hours), meta, states)


def _simulate(
    config: FleetConfig,
    params: DeviceParams,
    intervals: np.ndarray,
    compliance: float,
    inventory: pd.DataFrame,
    rng: np.random.Generator,
    keep_states: tuple[int, ...],
) -> tuple[pd.DataFrame, dict[int, DeviceState]]:
    """Run the fleet from ``-warmup_days`` to the end of the log; return the log's events (day >= 0)."""
    n = params.n
    state = DeviceState.new(n)
    first = -config.warmup_days
    # Devices already old at the start of the warm-up begin somewhere in their service cycle.
    use = params.nominal_hours * (1 - params.idle_prob) * params.intensity / params.nominal_hours
    old = params.install_day < first
    state.virtual_age = np.where(old, rng.uniform(0, 1, n) * intervals * use / params.rho_pm, 0.0)
    next_due = np.where(old, first + rng.integers(0, intervals + 1), params.install_day + intervals)
    recent_errors = np.zeros((7, n), dtype=np.int64)
    start = date.fromisoformat(config.start)
    weekday0 = start.weekday()
    fault_codes = [DEVICE_TYPES[t].fault_codes for t in inventory[ec.DEVICE_TYPE]]
    nuisance_codes = [DEVICE_TYPES[t].nuisance_codes for t in inventory[ec.DEVICE_TYPE]]

    log_dev: list[np.ndarray] = []
    log_day: list[np.ndarray] = []
    log_kind: list[np.ndarray] = []
    log_value: list[np.ndarray] = []
    log_minute: list[np.ndarray] = []
    states: dict[int, DeviceState] = {}
    kinds = {k: i for i, k in enumerate(ec.EVENT_KINDS)}

    def record(day: int, devices: np.ndarray, kind: str, values: np.ndarray, minutes: np.ndarray) -> None:
        if day < 0 or len(devices) == 0:
            return
        log_dev.append(devices)
        log_day.append(np.full(len(devices), day))
        log_kind.append(np.full(len(devices), kinds[kind]))
        log_value.append(values.astype(object))
        log_minute.append(minutes)

    for day in range(first, config.days):
        weekday = (weekday0 + day) % 7
        draws = DayDraws.draw(rng, (n,))
        installed = params.install_day <= day
        # --- preventive service on working days, when due and the team gets to it
        # A due service is done on the first working day it is due, unless this cycle is skipped
        # (no technician, device not found): then it waits for the next cycle.
        due = installed & (state.down == 0) & (day >= next_due)
        serviced = np.zeros(n, dtype=bool)
        if weekday < 5 and due.any():
            done = rng.random(n) < compliance
            serviced = due & done
            state = service(state, params, serviced, draws.detect)
            next_due = np.where(due, day + intervals, next_due)
        state, outcome = advance(state, params, day, draws, weekday=weekday)
        # --- error codes: a latent fault logs them often, normal use rarely
        active = installed & (outcome.hours > 0)
        rate = np.where(
            state.fault, FAULT_ERRORS_PER_DAY, NUISANCE_ERRORS_PER_DAY * outcome.hours / params.nominal_hours
        )
        errors = np.where(active | state.fault & installed & (state.down == 0), rng.poisson(rate), 0)
        recent_errors[day % 7] = errors
        # --- a biomedical engineer checks devices that keep logging errors (corrective, no failure)
        nagging = installed & (state.down == 0) & (recent_errors.sum(axis=0) >= 3) & (rng.random(n) < CHECK_PROB)
        if nagging.any():
            fixed = nagging & state.fault & (rng.random(n) < CHECK_FINDS)
            state.fault = state.fault & ~fixed
        if day == config.days - 1 or day in keep_states:
            states[day] = state.copy()
        if day < 0:
            continue
        idx = np.flatnonzero(serviced)
        record(day, idx, "preventive", np.full(len(idx), None), rng.integers(8 * 60, 16 * 60, len(idx)))
        hours = np.round(outcome.hours, 1)
        idx = np.flatnonzero(hours > 0)
        record(day, idx, "usage", hours[idx], np.zeros(len(idx), dtype=np.int64))
        idx = np.flatnonzero(errors > 0)
        if len(idx):
            dev = np.repeat(idx, errors[idx])
            codes = np.array(
                [
                    (fault_codes[d] if state.fault[d] or outcome.failed[d] else nuisance_codes[d])[
                        int(
                            rng.integers(
                                len(fault_codes[d] if state.fault[d] or outcome.failed[d] else nuisance_codes[d])
                            )
                        )
                    ]
                    for d in dev
                ],
                dtype=object,
            )
            record(day, dev, "error", codes, rng.integers(0, 24 * 60, len(dev)))
        idx = np.flatnonzero(outcome.failed)
        record(day, idx, "failure", np.full(len(idx), None), rng.integers(0, 24 * 60, len(idx)))
        idx = np.flatnonzero(outcome.repaired | nagging)
        record(day, idx, "repair", np.full(len(idx), None), rng.integers(9 * 60, 18 * 60, len(idx)))

    dev = np.concatenate(log_dev) if log_dev else np.zeros(0, dtype=np.int64)
    days = np.concatenate(log_day) if log_day else np.zeros(0, dtype=np.int64)
    kind = np.concatenate(log_kind) if log_kind else np.zeros(0, dtype=np.int64)
    value = np.concatenate(log_value) if log_value else np.zeros(0, dtype=object)
    minute = np.concatenate(log_minute) if log_minute else np.zeros(0, dtype=np.int64)
    base = np.datetime64(config.start, "m")
    times = base + (days.astype("timedelta64[D]").astype("timedelta64[m]") + minute.astype("timedelta64[m]"))
    is_usage = kind == kinds["usage"]
    is_error = kind == kinds["error"]
    frame = pd.DataFrame(
        {
            ec.DEVICE_ID: inventory[ec.DEVICE_ID].to_numpy()[dev],
            ec.TIME: pd.to_datetime(times),
            ec.EVENT: np.asarray(ec.EVENT_KINDS, dtype=object)[kind],
            "hours": np.where(is_usage, value, np.nan).astype(float),
            "code": pd.Series(value, dtype=object).where(is_error, None).to_numpy(),
        }
    )
    frame = frame.sort_values([ec.DEVICE_ID, ec.TIME, ec.EVENT], kind="stable").reset_index(drop=True)
    return frame, states


# ----------------------------------------------------------------------------- writing
def existing_fleet_files(out_dir: Path) -> list[Path]:
    """What an earlier ``write_fleets`` left in ``out_dir`` (hospital folders and fleet.json)."""
    if not out_dir.is_dir():
        return []
    found = [p for p in out_dir.iterdir() if p.name == FLEET_METADATA]
    found += [p for p in out_dir.iterdir() if p.is_dir() and p.name.startswith("H") and p.name[1:].isdigit()]
    return sorted(found)


def events_table(events: pd.DataFrame) -> pd.DataFrame:
    """The event log as written: ``device_id, time, event, value`` (value = hours or error code, else empty)."""
    value = np.where(
        events[ec.EVENT].to_numpy() == ec.EventKind.USAGE,
        events["hours"].map(lambda h: "" if pd.isna(h) else f"{h:g}").to_numpy(),
        events["code"].fillna("").to_numpy(),
    )
    midnight = events[ec.TIME].dt.hour.eq(0) & events[ec.TIME].dt.minute.eq(0)
    times = np.where(midnight, events[ec.TIME].dt.strftime("%Y-%m-%d"), events[ec.TIME].dt.strftime("%Y-%m-%d %H:%M"))
    return pd.DataFrame(
        {ec.DEVICE_ID: events[ec.DEVICE_ID], ec.TIME: times, ec.EVENT: events[ec.EVENT], ec.VALUE: value}
    )


def inventory_table(devices: pd.DataFrame) -> pd.DataFrame:
    """The inventory as written: contract columns, dates as YYYY-MM-DD."""
    out = devices[list(ec.INVENTORY_COLUMNS)].copy()
    out[ec.INSTALL_DATE] = out[ec.INSTALL_DATE].dt.strftime("%Y-%m-%d")
    return out


def write_fleets(
    region: EquipmentRegion, out_dir: Path | str, *, fmt: str = "csv", overwrite: bool = False
) -> list[Path]:
    """Write ``H000/devices.<fmt>``, ``H000/events.<fmt>``, ... and ``fleet.json`` (last: its presence means complete).

    Returns the hospital folders in order, then fleet.json. An earlier set of fleets in
    ``out_dir`` is refused (``FileExistsError``) unless ``overwrite``.
    """
    import shutil

    if fmt not in ("csv", "parquet"):
        raise ValueError(f"fmt must be 'csv' or 'parquet', got {fmt!r}")
    out_dir = Path(out_dir)
    earlier = existing_fleet_files(out_dir)
    if earlier and not overwrite:
        raise FileExistsError(
            f"{out_dir} already holds fleets ({len(earlier)} entries, e.g. {earlier[0].name}); "
            "choose another directory or allow overwriting"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in earlier:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    written = []
    truth = []
    for hospital in region.hospitals:
        folder = out_dir / hospital.hospital_id
        folder.mkdir()
        for stem, table in (
            (ec.INVENTORY_STEM, inventory_table(hospital.devices)),
            (ec.EVENTS_STEM, events_table(hospital.events)),
        ):
            path = folder / f"{stem}.{fmt}"
            if fmt == "csv":
                table.to_csv(path, index=False)
            else:
                table.to_parquet(path, index=False)
        written.append(folder)
        truth.append({"hospital_id": hospital.hospital_id, "devices": hospital.truth.to_dict(orient="records")})
    meta_path = out_dir / FLEET_METADATA
    meta_path.write_text(
        json.dumps({**region.metadata, "devices": truth}, indent=1, default=_json) + "\n", encoding="utf-8"
    )
    written.append(meta_path)
    log.info("wrote %d fleets to %s", len(region.hospitals), out_dir)
    return written


def _json(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, pd.Timestamp):
        return value.strftime("%Y-%m-%d")
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
