"""Build a synthetic region: hospitals, units, their daily records and the true parameters."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd

from medalloc_core import contract as c
from medalloc_core.synthetic.calendar import day_grid, public_holidays, winter_factor
from medalloc_core.synthetic.config import (
    GENERATOR_VERSION,
    SPECIALTY_SHARES,
    UNIT_PROFILES,
    RegionConfig,
)
from medalloc_core.synthetic.epidemic import regional_curve
from medalloc_core.synthetic.simulate import UnitSeries, UnitStays, daily_series, sample_counts, simulate_stays

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hospital:
    """One synthetic hospital: its records as a real hospital would export them.

    ``daily`` has the contract columns ``date`` (datetime64, midnight), ``unit`` and the
    four counts (int64), sorted by (date, unit); it starts at the hospital's first day
    (later than the region's start for short-history hospitals). ``encounters`` has the
    encounter columns (times as datetime64, open stays NaT) when the config asked for
    ``shape="encounters"``, else ``None``.
    """

    hospital_id: str
    beds: int
    daily: pd.DataFrame
    encounters: pd.DataFrame | None = None
    # What no forecaster may see: each unit's expected admissions and its stays, for the noise
    # floor (simulations.benchmarks.noise_floor), the best any forecaster could score.
    truth: dict[str, UnitTruth] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class UnitTruth:
    """One unit's hidden process: expected admissions per grid day, the count dispersion and every stay.

    Grid day ``k`` (``rate[k + warmup]``, ``weekday[k + warmup]``) is the region's day ``k``
    (``config.start + k`` days); warm-up days are negative. ``simulate_stays`` with these
    settings draws what the unit does next.
    """

    rate: np.ndarray  # (W + D,) expected admissions per grid day
    weekday: np.ndarray  # (W + D,) 0 = Monday
    warmup: int  # W
    dispersion: float
    los_mean: float
    los_sigma: float
    admit_hour: float
    admit_hour_sd: float
    weekend_discharge_delay: float
    stays: UnitStays


@dataclass(frozen=True)
class Region:
    """The hospitals of one region plus ``metadata``: every true parameter, JSON-ready."""

    config: RegionConfig
    hospitals: list[Hospital]
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _HospitalPlan:
    """Region-level choices for one hospital, drawn before any patient is simulated."""

    index: int
    beds: int
    first_day: int
    noisy: bool
    specialty: str | None


def _plan_hospitals(config: RegionConfig, rng: np.random.Generator) -> list[_HospitalPlan]:
    """Sizes, specialty centres, short histories and noisy hospitals for the whole region.

    Sizes are stratified on a log scale (one draw per 1/N slice, shuffled) so even a small
    region spans the range; ``u ** size_skew`` leaves more small than large hospitals.
    """
    n = config.hospitals
    u = (rng.permutation(n) + rng.random(n)) / n
    lo, hi = np.log(config.min_beds), np.log(config.max_beds)
    beds = np.clip(np.round(np.exp(lo + u**config.size_skew * (hi - lo))), config.min_beds, config.max_beds)
    beds = beds.astype(int)

    order = np.argsort(-beds, kind="stable")  # largest first
    specialty: dict[int, str] = {}
    kinds = ["paediatric", "surgical"][: config.specialty_centres]
    # Specialty centres are mid-to-large hospitals: pick among the larger half.
    larger = [int(i) for i in order[: max(1, (n + 1) // 2)]]
    for kind, idx in zip(kinds, rng.permutation(larger).tolist(), strict=False):
        specialty[int(idx)] = kind
    smaller = [int(i) for i in order[n // 2 :] if int(i) not in specialty]
    n_short = min(len(smaller), int(round(config.short_history_fraction * n)))
    n_noisy = min(len(smaller), int(round(config.noisy_fraction * n)))
    short = set(rng.permutation(smaller)[:n_short].tolist()) if n_short else set()
    noisy = set(rng.permutation(smaller)[:n_noisy].tolist()) if n_noisy else set()

    plans = []
    for i in range(n):
        first_day = 0
        if i in short:
            first_day = min(int(rng.uniform(0.25, 0.6) * config.days), config.days - 28)
        plans.append(_HospitalPlan(i, int(beds[i]), first_day, i in noisy, specialty.get(i)))
    return plans


def _unit_shares(plan: _HospitalPlan, config: RegionConfig, rng: np.random.Generator) -> dict[str, float]:
    """Share of the hospital's beds per unit; small hospitals lack ICU and paediatrics."""
    if plan.specialty is not None:
        base = {u: s for u, s in SPECIALTY_SHARES[plan.specialty].items() if u in config.units}
    else:
        base = {u: UNIT_PROFILES[u].bed_share for u in config.units if plan.beds >= UNIT_PROFILES[u].min_hospital_beds}
    jitter = rng.gamma(60.0, 1.0 / 60.0, size=len(base))  # about +/-13 % per unit
    raw = np.array(list(base.values())) * jitter
    return {u: float(s) for u, s in zip(base, raw / raw.sum(), strict=True)}


def _capacity(
    census: np.ndarray, unit_beds: int, overflow: float, config: RegionConfig, rng: np.random.Generator
) -> tuple[np.ndarray, int, list[dict[str, Any]]]:
    """Staffed beds per day: flat with occasional steps, set so census exceeds it on ~``overflow`` of days.

    Steps (a ward opened or closed) come as a Poisson process; the base level is the
    ``1 - overflow`` quantile of census minus steps, so overflow days exist but are rare.
    """
    n = census.size
    steps = np.zeros(n, dtype=np.int64)
    changes: list[dict[str, Any]] = []
    n_changes = int(rng.poisson(config.capacity_changes_per_year * n / 365.0))
    for day in np.sort(rng.integers(1, n, size=n_changes)) if n > 1 else []:
        delta = int(np.sign(rng.random() - 0.5) * max(1, round(unit_beds * rng.uniform(0.03, 0.08))))
        steps[day:] += delta
        changes.append({"day": int(day), "delta": delta})
    base = int(np.ceil(np.quantile(census - steps, 1.0 - overflow)))
    capacity = np.maximum(base + steps, 1)
    return capacity, base, changes


def _simulate_hospital(
    plan: _HospitalPlan,
    config: RegionConfig,
    curve: np.ndarray,
    calendar: tuple[np.ndarray, np.ndarray, np.ndarray],
    rng: np.random.Generator,
) -> tuple[Hospital, dict[str, Any]]:
    """Simulate every unit of one hospital; return it and its true parameters."""
    hospital_id = f"H{plan.index:03d}"
    weekday, doy, holiday = calendar  # each (W + D,), grid day t is output day t - W
    first_grid = -config.warmup_days
    lag = int(rng.integers(0, config.max_lag_days + 1))
    amplitude = float(config.epidemic_amplitude * rng.lognormal(-0.045, 0.3))  # mean ~ epidemic_amplitude
    dispersion = config.noisy_dispersion if plan.noisy else config.dispersion
    overflow = float(rng.uniform(*config.overflow_rate))
    # curve[k] is day k - W - max_lag; the hospital sees it lag days later.
    offset = config.max_lag_days - lag
    seen = curve[offset : offset + config.warmup_days + config.days]  # (W + D,)

    shares = _unit_shares(plan, config, rng)
    frames: list[pd.DataFrame] = []
    stays_by_unit: dict[str, UnitStays] = {}
    truth: dict[str, UnitTruth] = {}
    units_meta: dict[str, Any] = {}
    out_days = config.days - plan.first_day
    dates = pd.date_range(config.start, periods=config.days, freq="D")[plan.first_day :]
    for unit, share in shares.items():
        profile = UNIT_PROFILES[unit]
        unit_beds = max(2, int(round(plan.beds * share)))
        los_mean = float(profile.los_mean * rng.uniform(0.9, 1.1))
        seasonal = float(profile.seasonal_amplitude * config.seasonality_scale * rng.uniform(0.7, 1.3))
        dow = np.array(profile.dow) / np.mean(profile.dow)
        # Little's law: arrivals = occupied beds / mean stay.
        base_rate = config.target_occupancy * unit_beds / los_mean
        rate = (
            base_rate
            * dow[weekday]
            * np.where(holiday, profile.holiday_factor, 1.0)
            * winter_factor(doy, amplitude=seasonal, peak_doy=config.winter_peak_doy)
            * (1.0 + amplitude * profile.epidemic_sensitivity * seen)
        )
        counts = sample_counts(rate, dispersion, rng)
        stays = simulate_stays(
            counts,
            first_grid,
            weekday_of_first=int(weekday[0]),
            los_mean=los_mean,
            los_sigma=profile.los_sigma,
            max_los=config.warmup_days,
            admit_hour=profile.admit_hour,
            admit_hour_sd=profile.admit_hour_sd,
            weekend_discharge_delay=config.weekend_discharge_delay,
            rng=rng,
        )
        series: UnitSeries = daily_series(stays, first_grid, config.days)
        keep = slice(plan.first_day, None)
        census = series.census[keep]
        capacity, capacity_base, changes = _capacity(census, unit_beds, overflow, config, rng)
        frames.append(
            pd.DataFrame(
                {
                    c.DATE: dates,
                    c.UNIT: unit,
                    c.ADMISSIONS: series.admissions[keep],
                    c.DISCHARGES: series.discharges[keep],
                    c.CENSUS: census,
                    c.CAPACITY: capacity,
                }
            )
        )
        stays_by_unit[unit] = stays
        truth[unit] = UnitTruth(
            rate=rate,
            weekday=weekday,
            warmup=config.warmup_days,
            dispersion=dispersion,
            los_mean=los_mean,
            los_sigma=profile.los_sigma,
            admit_hour=profile.admit_hour,
            admit_hour_sd=profile.admit_hour_sd,
            weekend_discharge_delay=config.weekend_discharge_delay,
            stays=stays,
        )
        units_meta[unit] = {
            "bed_share": round(share, 6),
            "nominal_beds": unit_beds,
            "los_distribution": "lognormal, capped at warmup_days",
            "los_mean_days": round(los_mean, 6),
            "los_sigma": profile.los_sigma,
            "base_admissions_per_day": round(base_rate, 6),
            "dow_factors_mon_to_sun": [round(float(x), 6) for x in dow],
            "holiday_factor": profile.holiday_factor,
            "winter_amplitude": round(seasonal, 6),
            "epidemic_sensitivity": profile.epidemic_sensitivity,
            "capacity_base": capacity_base,
            "capacity_changes": [{"date": str((dates[ch["day"]]).date()), "delta": ch["delta"]} for ch in changes],
            "overflow_days": int((census > capacity).sum()),
        }
    daily = pd.concat(frames, ignore_index=True)
    unit_rank = {u: k for k, u in enumerate(config.units)}
    daily = daily.sort_values([c.DATE, c.UNIT], key=lambda s: s.map(unit_rank) if s.name == c.UNIT else s)
    daily = daily.reset_index(drop=True)
    encounters = (
        _encounters(hospital_id, stays_by_unit, config, plan.first_day, rng) if config.shape == "encounters" else None
    )
    meta = {
        "hospital_id": hospital_id,
        "beds": plan.beds,
        "units": list(shares),
        "first_date": str(dates[0].date()),
        "last_date": str(dates[-1].date()),
        "days": out_days,
        "short_history": plan.first_day > 0,
        "noisy": plan.noisy,
        "count_dispersion": dispersion,
        "case_mix": plan.specialty or "general",
        "epidemic_lag_days": lag,
        "epidemic_amplitude": round(amplitude, 6),
        "overflow_target": round(overflow, 6),
        "unit_parameters": units_meta,
    }
    return Hospital(hospital_id, plan.beds, daily, encounters, truth), meta


def _encounters(
    hospital_id: str,
    stays_by_unit: dict[str, UnitStays],
    config: RegionConfig,
    first_day: int,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """Patient stays behind the hospital's daily records, one row per stay.

    Includes every stay still present at the first output day (its admit time precedes the
    daily series), and leaves ``discharge_time`` empty (NaT) for stays open at the end.
    """
    names = np.array(list(stays_by_unit))  # unit names as a numpy str array
    parts = []
    for code, st in enumerate(stays_by_unit.values()):
        keep = st.discharge_day >= first_day
        parts.append(
            (
                np.full(int(keep.sum()), code),
                st.admit_day[keep],
                st.admit_minute[keep],
                st.discharge_day[keep],
                st.discharge_minute[keep],
            )
        )
    unit_code, admit_day, admit_min, dis_day, dis_min = (np.concatenate([p[k] for p in parts]) for k in range(5))
    origin = np.datetime64(config.start_date, "m")
    admit = origin + (admit_day * 1440 + admit_min).astype("timedelta64[m]")
    discharge = origin + (dis_day * 1440 + dis_min).astype("timedelta64[m]")
    discharge = np.where(dis_day < config.days, discharge, np.datetime64("NaT"))
    order = np.lexsort((unit_code, admit))  # by admit time, ties in unit order
    n = order.size
    patient = _patients(
        (admit_day * 1440 + admit_min)[order], (dis_day * 1440 + dis_min)[order], config.readmission_prob, rng
    )
    return pd.DataFrame(
        {
            c.ENCOUNTER_ID: _numbered(f"{hospital_id}-E", np.arange(n)),
            c.PATIENT_ID: _numbered(f"{hospital_id}-P", patient),
            c.UNIT: names[unit_code[order]],
            c.ADMIT_TIME: admit[order].astype("datetime64[s]"),
            c.DISCHARGE_TIME: discharge[order].astype("datetime64[s]"),
        }
    )


def _patients(
    admit: np.ndarray, discharge: np.ndarray, readmission_prob: float, rng: np.random.Generator
) -> np.ndarray:
    """Patient number per stay (stays sorted by admission): first-time patients and returners.

    A share ``readmission_prob`` of stays is linked to one earlier stay discharged before it
    starts, each earlier stay to at most one later one, so every patient's stays form a chain
    that never overlaps. Numbers count patients in order of their first stay.
    """
    n = admit.size
    predecessor = np.full(n, -1)
    by_discharge = np.argsort(discharge, kind="stable")
    candidates = np.searchsorted(discharge[by_discharge], admit, side="left")  # discharged before admit
    returning = np.flatnonzero((rng.random(n) < readmission_prob) & (candidates > 0))
    earlier = by_discharge[(rng.random(returning.size) * candidates[returning]).astype(np.int64)]
    _, first = np.unique(earlier, return_index=True)  # an earlier stay gets one successor at most
    predecessor[returning[first]] = earlier[first]
    root = np.where(predecessor >= 0, predecessor, np.arange(n))
    while True:  # pointer jumping: log(chain length) rounds
        nxt = root[root]
        if np.array_equal(nxt, root):
            break
        root = nxt
    return np.unique(root, return_inverse=True)[1]


def _numbered(prefix: str, numbers: np.ndarray) -> np.ndarray:
    """``prefix`` + zero-padded 7-digit numbers, vectorised (millions of ids per second)."""
    return np.strings.add(prefix, np.strings.zfill(numbers.astype(np.str_), 7))


def generate_region(config: RegionConfig, *, progress: Callable[[str], None] | None = None) -> Region:
    """Simulate a whole region from ``config``; deterministic in ``config.seed``.

    Parameters
    ----------
    config
        Every knob of the generator (see ``RegionConfig``).
    progress
        Called with each hospital id once that hospital is done (e.g. to advance a bar).

    Returns
    -------
    Region
        Hospitals ``H000``..; ``metadata`` holds the true parameters (region.json).
    """
    root = np.random.SeedSequence(config.seed)
    region_seq, *hospital_seqs = root.spawn(config.hospitals + 1)
    region_rng = np.random.default_rng(region_seq)
    plans = _plan_hospitals(config, region_rng)
    grid_first = -config.warmup_days - config.max_lag_days
    curve, waves = regional_curve(
        config, region_rng, grid_first, config.warmup_days + config.max_lag_days + config.days
    )
    calendar = day_grid(config.start_date, -config.warmup_days, config.warmup_days + config.days)

    hospitals, hospital_meta = [], []
    for plan, seq in zip(plans, hospital_seqs, strict=True):
        hospital, meta = _simulate_hospital(plan, config, curve, calendar, np.random.default_rng(seq))
        hospitals.append(hospital)
        hospital_meta.append(meta)
        log.debug("simulated %s (%s beds, %s rows)", hospital.hospital_id, hospital.beds, len(hospital.daily))
        if progress is not None:
            progress(hospital.hospital_id)

    start = config.start_date
    end = start + timedelta(days=config.days - 1)

    def day(offset: int) -> str:
        return str(start + timedelta(days=offset))

    out_curve = curve[-config.days :]
    metadata: dict[str, Any] = {
        "generator": "medalloc_core.synthetic",
        "generator_version": GENERATOR_VERSION,
        "config": _jsonable(asdict(config)),
        "start": str(start),
        "end": str(end),
        "public_holidays": [{"date": str(d), "name": n} for d, n in public_holidays(start, end)],
        "epidemic": {
            "model": "sum of independent SIR waves, each normalised to peak = intensity",
            "infectious_days": config.infectious_days,
            "waves": [
                {"start": day(w.start), "peak": day(w.peak), "r0": w.r0, "intensity": w.intensity} for w in waves
            ],
            "curve_start": str(start),
            "curve": [round(float(x), 6) for x in out_curve],
        },
        "hospitals": hospital_meta,
    }
    return Region(config=config, hospitals=hospitals, metadata=metadata)


def _jsonable(value: Any) -> Any:
    """Tuples to lists so the config round-trips through JSON unchanged in meaning."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, date):
        return str(value)
    return value
