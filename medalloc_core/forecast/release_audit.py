"""Two audit checks that fail when they should: the release's noise calibration and the public calendar.

The one-run canary bound (``stay_audit``) is sound but weak: it passed with noise 4x too small
(issue 20). These checks have the power the product needs:

* **noise calibration** — the auditor knows a synthetic hospital's true counts, so the release's
  residuals are exactly its noise. Their variance per column, against the plan's sd with a
  chi-square interval at level 1 - 1e-6 over thousands of unit-days, detects a sd 10 % too small;
  the check reports the epsilon the *measured* sd would give (2x too little noise: epsilon ~2.2
  instead of 1) and fails when the measured noise is significantly below the plan's.
* **calendar** — the node's own function from stays to released counts (``public_records``), on
  a synthetic encounter file with and without one extra stay (in a unit nobody used, before a
  unit's first day, after the file's last event): the (unit, day) grid, and so every count of
  windows and every refusal, must be identical. A calendar taken from the data fails it.

Both run the very code a node runs (``release_records``, ``public_records``) unless a test hands
in a deliberately broken one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from medalloc_core.contract import DATE, UNIT, Frequency, UnitRecords
from medalloc_core.privacy.gaussian import gaussian_epsilon
from medalloc_core.privacy.release import ReleasePlan, release_records

__all__ = [
    "CalendarCheck",
    "NoiseCheck",
    "ReleaseChecks",
    "calendar_check",
    "noise_calibration_check",
    "run_release_checks",
]

ReleaseFn = Callable[..., UnitRecords]
PublicFn = Callable[..., tuple[UnitRecords, Any]]


@dataclass(frozen=True)
class NoiseCheck:
    """Measured noise sd per column against the plan's, and the epsilon the measured noise gives."""

    claimed_sd: dict[str, float]
    measured_sd: dict[str, float]
    lowest_ratio: float  # min over columns of the upper confidence limit of measured / claimed sd
    claimed_epsilon: float
    measured_epsilon: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def noise_calibration_check(
    records: UnitRecords,
    plan: ReleasePlan,
    *,
    release: ReleaseFn = release_records,
    rng: np.random.Generator | None = None,
    level: float = 1e-6,
) -> NoiseCheck:
    """Release ``records`` with ``release`` (the node's function) and test its noise against ``plan``.

    Passes when, for every column, the upper ``1 - level`` chi-square confidence limit of the
    measured sd is at least the plan's sd (too little noise fails; more is only less useful).
    """
    from scipy.stats import chi2

    released = release(records, plan, rng=rng)
    truth = records.frame.sort_values([UNIT, DATE]).reset_index(drop=True)
    out = released.frame.sort_values([UNIT, DATE]).reset_index(drop=True)
    measured: dict[str, float] = {}
    ratios: list[float] = []
    for column in plan.columns:
        residual = out[column].to_numpy(dtype=float) - truth[column].to_numpy(dtype=float)
        n = len(residual)
        ss = float(np.sum(residual**2))  # mean 0 by construction: n degrees of freedom
        measured[column] = float(np.sqrt(ss / n))
        upper_var = ss / chi2.ppf(level, n)
        ratios.append(float(np.sqrt(upper_var)) / plan.noise_sd[column])
    # The epsilon the measured noise would give a unit of the plan's sensitivity.
    scale = min(measured[c] / plan.noise_sd[c] for c in plan.columns)
    measured_eps = gaussian_epsilon(noise_multiplier=max(plan.noise_multiplier * scale, 1e-3), delta=plan.delta)
    lowest = min(ratios)
    return NoiseCheck(
        claimed_sd=dict(plan.noise_sd),
        measured_sd=measured,
        lowest_ratio=lowest,
        claimed_epsilon=plan.epsilon,
        measured_epsilon=measured_eps,
        passed=lowest >= 1.0,
    )


@dataclass(frozen=True)
class CalendarCheck:
    """Per extra stay: did the released grid (units x days) stay the same?"""

    cases: dict[str, bool]

    @property
    def passed(self) -> bool:
        return all(self.cases.values())

    def to_dict(self) -> dict[str, Any]:
        return {"cases": dict(self.cases), "passed": self.passed}


def _stay(frame: pd.DataFrame, unit: str, admit: pd.Timestamp, nights: int) -> pd.DataFrame:
    row = {
        "encounter_id": "E-canary",
        "patient_id": "P-canary",
        "unit": unit,
        "admit_time": admit,
        "discharge_time": admit + pd.Timedelta(days=nights, hours=2),
    }
    return pd.concat([frame, pd.DataFrame([row])], ignore_index=True)


def calendar_check(
    stays: pd.DataFrame, node_settings: Mapping[str, Any], *, public: PublicFn | None = None, research: bool = False
) -> CalendarCheck:
    """``public`` (default: the node's ``public_records``) over ``stays`` with and without one extra stay.

    ``stays`` has the contract's stay columns (times as datetimes); ``node_settings`` the node's
    calendar keys; ``research`` audits a simulated node's calendar (whole months of the data where
    undeclared; a deployed node refuses instead). Each version is written as an encounter file and
    read as a node reads it (``sources.load_node_source``), so a malformed stay is audited too.
    Each case passes when the released (unit, day) grid is the same (and the file is read at all).
    """
    import tempfile
    from functools import partial
    from pathlib import Path

    from medalloc_core.contract import DataContractError
    from medalloc_core.privacy.contribution import public_records
    from medalloc_core.sources import load_node_source

    fn = public or partial(public_records, research=research)
    admit = pd.to_datetime(stays["admit_time"])
    last = max(admit.max(), pd.to_datetime(stays["discharge_time"]).max())
    first_unit = str(stays["unit"].iloc[0])
    cases = {
        "a unit nobody else used": _stay(stays, "canary-unit", admit.min() + pd.Timedelta(days=30), 2),
        "before a unit's first day": _stay(
            stays, first_unit, admit[stays["unit"] == first_unit].min() - pd.Timedelta(days=3), 1
        ),
        "after the file's last event": _stay(stays, first_unit, last + pd.Timedelta(days=2), 1),
    }
    malformed = _stay(stays, first_unit, admit.min() + pd.Timedelta(days=45), 1)
    malformed.loc[len(malformed) - 1, "discharge_time"] = admit.min() + pd.Timedelta(days=40)
    cases["that is malformed (discharged before admission)"] = malformed

    def grid(frame: pd.DataFrame) -> list[tuple[str, str]] | None:
        with tempfile.TemporaryDirectory(prefix="medalloc-calendar-audit-") as folder:
            path = Path(folder) / "stays.csv"
            frame.to_csv(path, index=False)
            try:
                records, read, _ = load_node_source(path)
            except DataContractError:
                return None  # the node would refuse this file: a case whose base answers fails
        public_counts, _ = fn(records, read, node_settings, default_nights=14)
        keys = public_counts.frame[[UNIT, DATE]]
        return list(zip(keys[UNIT].astype(str), keys[DATE].astype(str), strict=True))

    base = grid(stays)
    return CalendarCheck({name: base is not None and grid(frame) == base for name, frame in cases.items()})


@dataclass(frozen=True)
class ReleaseChecks:
    """The two checks on one synthetic hospital, as ``medalloc audit`` runs them."""

    noise: NoiseCheck
    calendar: CalendarCheck

    @property
    def passed(self) -> bool:
        return self.noise.passed and self.calendar.passed

    def to_dict(self) -> dict[str, Any]:
        return {"noise": self.noise.to_dict(), "calendar": self.calendar.to_dict(), "passed": self.passed}


def run_release_checks(
    *,
    seed: int = 0,
    epsilon: float = 1.0,
    release: ReleaseFn = release_records,
    public: PublicFn | None = None,
    declared: bool = True,
) -> ReleaseChecks:
    """Both checks on a synthetic encounter hospital (400 days) at the node's default plan (per patient caps).

    ``declared`` False audits a simulated node without a declared calendar (whole months from the
    data: not public, and the check says so; a deployed node refuses to run without one).
    """
    from medalloc_core.encounters import encounters_to_daily
    from medalloc_core.privacy.contribution import PatientCaps
    from medalloc_core.synthetic import RegionConfig, generate_region

    hospital = generate_region(
        RegionConfig(
            hospitals=1, days=400, seed=seed, shape="encounters", short_history_fraction=0.0, min_beds=80, max_beds=120
        )
    ).hospitals[0]
    stays = hospital.encounters
    assert stays is not None
    stays = stays.assign(
        admit_time=pd.to_datetime(stays["admit_time"]), discharge_time=pd.to_datetime(stays["discharge_time"])
    )
    caps = PatientCaps()
    base = ReleasePlan.calibrate(epsilon=epsilon, delta=1e-6, max_stay_days=caps.nights)
    plan = ReleasePlan.from_noise_multiplier(
        base.noise_multiplier,
        delta=1e-6,
        max_stay_days=caps.nights,
        columns=base.columns,
        epsilon=epsilon,
        max_admissions=caps.admissions,
    )
    daily = encounters_to_daily(stays)
    records = UnitRecords(daily[[DATE, UNIT, *plan.columns]], Frequency.DAILY, "audit", "daily")
    noise = noise_calibration_check(records, plan, release=release)
    first = pd.Timestamp(stays["admit_time"].min()).normalize() + pd.offsets.MonthBegin(1)
    settings: dict[str, Any] = {}
    if declared:
        settings = {
            "calendar-units": ",".join(sorted(stays["unit"].astype(str).unique())),
            "calendar-start": f"{first:%Y-%m-%d}",
            "calendar-end": f"{first + pd.Timedelta(days=300):%Y-%m-%d}",
        }
    return ReleaseChecks(noise, calendar_check(stays, settings, public=public, research=not declared))
