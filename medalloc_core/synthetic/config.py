"""Configuration of the synthetic region: every knob, its default and why."""

from __future__ import annotations

import math
import numbers
from dataclasses import MISSING, dataclass, field, fields
from datetime import date, timedelta
from typing import Any

from medalloc_core.contract import RecordShape

# Bounds on a generated region (`medalloc generate` refuses more with exit 2): a region is a
# research fixture, and each hospital-day costs time and memory.
MAX_HOSPITALS = 1_000
MAX_DAYS = 18_262  # 50 years
# The data contract's dates (nanosecond timestamps: 1678..2261), with a year of room for the
# warm-up the simulator runs before the first recorded day.
EARLIEST_START = date(1679, 1, 1)
LATEST_END = date(2261, 12, 31)

#: Bumped whenever the same config would produce different numbers; stored in region.json.
GENERATOR_VERSION = "1.0.0"

#: Unit names in the order rows are written for one day.
UNITS: tuple[str, ...] = ("icu", "medical", "surgical", "paediatric")


@dataclass(frozen=True)
class UnitProfile:
    """Typical behaviour of one kind of hospital unit; hospitals jitter these per unit.

    ``dow`` are admission factors Monday..Sunday (normalised to mean 1 at use), so a
    surgical unit with mostly elective lists admits far fewer patients at weekends.
    """

    los_mean: float  # mean length of stay in days (lognormal)
    los_sigma: float  # lognormal shape: ICU stays have the longest tail
    bed_share: float  # share of a general hospital's beds before jitter
    dow: tuple[float, float, float, float, float, float, float]
    holiday_factor: float  # admissions on a public holiday relative to an ordinary day
    seasonal_amplitude: float  # winter peak amplitude of the annual cosine (0.1 = +/-10 %)
    epidemic_sensitivity: float  # how strongly a respiratory wave raises admissions
    min_hospital_beds: int  # smaller hospitals have no such unit
    admit_hour: float  # mean hour of admission (elective lists start early)
    admit_hour_sd: float  # spread of admission hours


UNIT_PROFILES: dict[str, UnitProfile] = {
    "icu": UnitProfile(
        los_mean=4.0,
        los_sigma=0.9,
        bed_share=0.08,
        # emergencies dominate: a weak weekly pattern
        dow=(1.05, 1.03, 1.02, 1.0, 1.0, 0.95, 0.95),
        holiday_factor=0.95,
        seasonal_amplitude=0.12,
        epidemic_sensitivity=1.3,
        min_hospital_beds=80,
        admit_hour=14.0,
        admit_hour_sd=6.0,
    ),
    "medical": UnitProfile(
        los_mean=5.0,
        los_sigma=0.8,
        bed_share=0.50,
        # Monday peak from weekend GP closures, quieter weekends
        dow=(1.15, 1.05, 1.02, 1.0, 1.0, 0.9, 0.88),
        holiday_factor=0.85,
        seasonal_amplitude=0.12,
        epidemic_sensitivity=1.0,
        min_hospital_beds=0,
        admit_hour=15.0,
        admit_hour_sd=5.0,
    ),
    "surgical": UnitProfile(
        los_mean=3.5,
        los_sigma=0.85,
        bed_share=0.30,
        # elective lists run Monday..Friday; weekends carry emergencies only
        dow=(1.30, 1.20, 1.15, 1.10, 1.0, 0.45, 0.40),
        holiday_factor=0.45,
        seasonal_amplitude=0.03,
        epidemic_sensitivity=0.0,
        min_hospital_beds=0,
        admit_hour=9.0,
        admit_hour_sd=3.0,
    ),
    "paediatric": UnitProfile(
        los_mean=2.5,
        los_sigma=0.75,
        bed_share=0.12,
        dow=(1.08, 1.03, 1.0, 1.0, 1.0, 0.95, 0.94),
        holiday_factor=0.9,
        seasonal_amplitude=0.25,
        epidemic_sensitivity=0.9,
        min_hospital_beds=150,
        admit_hour=16.0,
        admit_hour_sd=5.0,
    ),
}

#: Bed shares of the two specialty centres (non-IID on purpose).
SPECIALTY_SHARES: dict[str, dict[str, float]] = {
    "paediatric": {"icu": 0.06, "medical": 0.14, "surgical": 0.15, "paediatric": 0.65},
    "surgical": {"icu": 0.10, "medical": 0.20, "surgical": 0.70},
}


@dataclass(frozen=True)
class RegionConfig:
    """Everything that determines a synthetic region; same config, same bytes.

    Raises ``ValueError`` (with the fix) on impossible values, so a CLI can report them.
    """

    # --- size of the region -----------------------------------------------------------
    hospitals: int = 10  # number of hospitals
    days: int = 730  # output days of a full-history hospital (2 years: two winters)
    seed: int = 0  # the only source of randomness
    start: str = "2023-01-01"  # first output date (ISO)
    shape: RecordShape = "daily"  # "encounters" also builds the patient-stay tables
    # --- hospital sizes ----------------------------------------------------------------
    min_beds: int = 30  # smallest hospital (community hospital)
    max_beds: int = 1500  # largest hospital (university hospital)
    size_skew: float = 1.3  # >1 puts more hospitals at the small end of the log range
    target_occupancy: float = 0.85  # mean census / unit beds that sets admission rates
    # --- simulation ----------------------------------------------------------------------
    warmup_days: int = 120  # simulated before the first output day; also caps one stay
    weekend_discharge_delay: float = 0.25  # share of weekend discharges postponed to Monday
    # --- seasonality -------------------------------------------------------------------
    seasonality_scale: float = 1.0  # multiplies every unit's winter amplitude (0 = none)
    winter_peak_doy: int = 15  # day of year of the respiratory-season peak (15 January)
    # --- regional epidemic waves (SIR) ---------------------------------------------------
    epidemic_amplitude: float = 0.25  # mean relative admission rise at a wave peak (0 = none)
    wave_gap_days: tuple[int, int] = (150, 330)  # days between successive wave starts
    wave_r0: tuple[float, float] = (1.5, 2.2)  # basic reproduction number of a wave
    wave_intensity: tuple[float, float] = (0.6, 1.0)  # peak of a wave's normalised curve
    infectious_days: float = 6.0  # 1/gamma of the SIR model
    max_lag_days: int = 14  # a hospital sees the regional curve 0..max_lag_days later
    # --- heterogeneity (non-IID on purpose) ------------------------------------------------
    short_history_fraction: float = 0.2  # share of (small) hospitals whose files start late
    noisy_fraction: float = 0.2  # share of (small) hospitals with overdispersed counts
    dispersion: float = 50.0  # negative-binomial k of ordinary hospitals (var = mu + mu^2/k)
    noisy_dispersion: float = 4.0  # k of noisy hospitals: much more day-to-day noise
    specialty_centres: int = 2  # 0, 1 (paediatric-heavy) or 2 (+ surgical specialty centre)
    # --- capacity ---------------------------------------------------------------------------
    overflow_rate: tuple[float, float] = (0.005, 0.04)  # share of unit-days census > capacity
    capacity_changes_per_year: float = 1.0  # staffed-bed changes per unit and year
    # --- encounters -------------------------------------------------------------------------
    readmission_prob: float = 0.08  # share of stays by a patient seen before
    units: tuple[str, ...] = field(default=UNITS)  # unit kinds that may exist

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        _check_types(self)
        need(1 <= self.hospitals <= MAX_HOSPITALS, f"hospitals must be from 1 to {MAX_HOSPITALS}, got {self.hospitals}")
        need(
            28 <= self.days <= MAX_DAYS, f"days must be from 28 (four weeks) to {MAX_DAYS} (50 years), got {self.days}"
        )
        need(self.seed >= 0, f"seed must be a non-negative integer, got {self.seed}")
        try:
            first = date.fromisoformat(self.start)
        except (TypeError, ValueError):
            raise ValueError(f"start must be an ISO date YYYY-MM-DD, got {self.start!r}") from None
        # The warm-up runs before start and the records after it; both must stay inside the
        # dates the data contract handles (nanosecond timestamps).
        need(
            EARLIEST_START <= first <= LATEST_END - timedelta(days=self.days),
            f"start {self.start} with {self.days} days leaves the dates MedAlloc handles: start from "
            f"{EARLIEST_START} and end by {LATEST_END}",
        )
        need(self.shape in ("daily", "encounters"), f"shape must be 'daily' or 'encounters', got {self.shape!r}")
        need(
            1 <= self.min_beds <= self.max_beds,
            f"need 1 <= min_beds <= max_beds, got {self.min_beds} and {self.max_beds}",
        )
        need(self.size_skew > 0, f"size_skew must be positive, got {self.size_skew}")
        need(0 < self.target_occupancy <= 1.2, f"target_occupancy must be in (0, 1.2], got {self.target_occupancy}")
        need(self.warmup_days >= 30, f"warmup_days must be at least 30, got {self.warmup_days}")
        need(0 <= self.weekend_discharge_delay <= 1, "weekend_discharge_delay must be in [0, 1]")
        need(self.seasonality_scale >= 0, "seasonality_scale must be >= 0")
        need(1 <= self.winter_peak_doy <= 366, "winter_peak_doy must be in 1..366")
        need(self.epidemic_amplitude >= 0, "epidemic_amplitude must be >= 0")
        need(
            0 < self.wave_gap_days[0] <= self.wave_gap_days[1], "wave_gap_days must be (low, high) with 0 < low <= high"
        )
        need(1 < self.wave_r0[0] <= self.wave_r0[1], "wave_r0 must be (low, high) with 1 < low <= high")
        need(0 < self.wave_intensity[0] <= self.wave_intensity[1], "wave_intensity must be (low, high), positive")
        need(self.infectious_days > 0, "infectious_days must be positive")
        need(0 <= self.max_lag_days <= 60, "max_lag_days must be in 0..60")
        need(0 <= self.short_history_fraction < 1, "short_history_fraction must be in [0, 1)")
        need(0 <= self.noisy_fraction <= 1, "noisy_fraction must be in [0, 1]")
        need(self.dispersion > 0 and self.noisy_dispersion > 0, "dispersion values must be positive")
        need(self.specialty_centres in (0, 1, 2), "specialty_centres must be 0, 1 or 2")
        need(0 <= self.overflow_rate[0] <= self.overflow_rate[1] < 0.5, "overflow_rate must be (low, high) in [0, 0.5)")
        need(self.capacity_changes_per_year >= 0, "capacity_changes_per_year must be >= 0")
        need(0 <= self.readmission_prob < 1, "readmission_prob must be in [0, 1)")
        unknown = set(self.units) - set(UNIT_PROFILES)
        need(
            not unknown and "medical" in self.units,
            f"units must include 'medical' and only come from {sorted(UNIT_PROFILES)}, got {self.units}",
        )

    @property
    def start_date(self) -> date:
        """``start`` as a date."""
        return date.fromisoformat(self.start)


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


def _check_types(config: Any) -> None:
    """Every field of a config dataclass has its default's type (a scenario can hold anything): ValueError naming it."""
    for f in fields(config):
        value = getattr(config, f.name)
        default: object = f.default if f.default_factory is MISSING else f.default_factory()
        if isinstance(default, bool):
            ok, expected = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok, expected = isinstance(value, numbers.Integral) and not isinstance(value, bool), "a whole number"
        elif isinstance(default, float):
            ok, expected = _is_number(value), "a finite number"
        elif isinstance(default, str):
            ok, expected = isinstance(value, str), "a string"
        elif isinstance(default, tuple) and all(isinstance(d, str) for d in default):
            ok = isinstance(value, tuple | list) and all(isinstance(v, str) for v in value)
            expected = "a list of names"
        elif isinstance(default, tuple):
            ok = isinstance(value, tuple | list) and len(value) == len(default) and all(map(_is_number, value))
            expected = f"a list of {len(default)} finite numbers"
        else:
            continue
        if not ok:
            raise ValueError(f"{f.name} must be {expected}, got {value!r:.60}")


check_field_types = _check_types  # for other generators' configs (medalloc_core.equipment.synthetic.FleetConfig)
