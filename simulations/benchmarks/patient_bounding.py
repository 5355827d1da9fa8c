"""Issue 20 benchmark: what per-patient bounding costs and buys, and what the release checks measure.

Prints, in one run: the noise sd per stay vs per patient at each epsilon (ratio); the epsilon a
patient with several stays gets under the per-stay plan and under the per-patient plan (exact
mechanism); how much of a synthetic encounter region the default caps cut (counts only); and
the release checks of ``medalloc audit`` on the shipped mechanism and at 2x / 1.25x too little
noise. ``python -m simulations.benchmarks.patient_bounding``
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from medalloc_core.encounters import encounters_to_daily
from medalloc_core.forecast.release_audit import run_release_checks
from medalloc_core.privacy.contribution import PatientCaps, bound_contributions, contribution_epsilon
from medalloc_core.privacy.release import ReleasePlan, release_records

PATIENTS = {
    "one stay, 14 nights, a transfer": (2, 14),
    "2 stays x 7 nights, a transfer each": (4, 14),
    "5 one-night stays, a transfer each": (10, 5),
    "12 zero-night visits": (12, 0),
    "ED -> ICU -> ward (2 transfers)": (3, 14),
    "four transfers": (5, 14),
}


def _plans(epsilon: float) -> tuple[ReleasePlan, ReleasePlan]:
    caps = PatientCaps()
    stay = ReleasePlan.calibrate(epsilon=epsilon, delta=1e-6, max_stay_days=caps.nights)
    patient = ReleasePlan.from_noise_multiplier(
        stay.noise_multiplier,
        delta=1e-6,
        max_stay_days=caps.nights,
        columns=stay.columns,
        max_admissions=caps.admissions,
        epsilon=epsilon,
    )
    return stay, patient


def _clip(admissions: int, nights: int) -> tuple[int, int]:
    caps = PatientCaps()
    return min(admissions, caps.admissions), min(nights, caps.nights)


def main() -> None:
    console = Console()
    sd = Table(title="Noise sd per released count: per stay vs per patient (caps 2 stays, 1 transfer, 14 nights)")
    for c in ("epsilon", "admissions per stay", "per patient", "census per stay", "per patient", "ratio"):
        sd.add_column(c, justify="right")
    for eps in (0.5, 1.0, 2.0, 4.0):
        stay, patient = _plans(eps)
        sd.add_row(
            f"{eps:g}",
            f"{stay.noise_sd['admissions']:.2f}",
            f"{patient.noise_sd['admissions']:.2f}",
            f"{stay.noise_sd['census']:.2f}",
            f"{patient.noise_sd['census']:.2f}",
            f"{patient.noise_sd['census'] / stay.noise_sd['census']:.3f}",
        )
    console.print(sd)

    stay, patient = _plans(1.0)
    table = Table(title="Epsilon a patient gets at a headline 1.0 (exact Gaussian mechanism)")
    for c in ("patient", "per-stay plan", "per-patient plan (after the cut)"):
        table.add_column(c, justify="left" if c == "patient" else "right")
    for name, (a, n) in PATIENTS.items():
        ca, cn = _clip(a, n)
        table.add_row(
            name,
            f"{contribution_epsilon(stay.noise_sd, 1e-6, admissions=a, nights=n):.3f}",
            f"{contribution_epsilon(patient.noise_sd, 1e-6, admissions=ca, nights=cn):.3f}",
        )
    console.print(table)

    from medalloc_core.synthetic import RegionConfig, generate_region

    region = generate_region(RegionConfig(hospitals=3, days=365, seed=0, shape="encounters", max_beds=300))
    cut_table = Table(title="What the default caps cut on a synthetic encounter region (365 days)")
    for c in ("hospital", "stays", "cut segments", "cut nights", "admissions kept", "census kept"):
        cut_table.add_column(c, justify="right")
    for hospital in region.hospitals:
        stays = hospital.encounters
        assert stays is not None
        stays = stays.assign(
            admit_time=pd.to_datetime(stays["admit_time"]), discharge_time=pd.to_datetime(stays["discharge_time"])
        )
        start, end = stays["admit_time"].min().normalize(), stays["admit_time"].max().normalize()
        units = sorted(stays["unit"].unique())
        kept, cut = bound_contributions(stays, PatientCaps(), units=units, start=start, end=end)
        before = encounters_to_daily(stays, end=end)
        after = encounters_to_daily(kept, end=end)
        cut_table.add_row(
            hospital.hospital_id,
            str(len(stays)),
            str(sum(v for k, v in cut.items() if "nights" not in k)),
            str(cut.get("nights over max-patient-nights", 0)),
            f"{after['admissions'].sum() / before['admissions'].sum():.4f}",
            f"{after['census'].sum() / before['census'].sum():.4f}",
        )
    console.print(cut_table)

    def scaled(factor: float) -> Any:
        def release(records: Any, plan: Any, rng: Any = None) -> Any:
            return release_records(
                records, dataclasses.replace(plan, noise_sd={c: s / factor for c, s in plan.noise_sd.items()}), rng=rng
            )

        return release

    checks = Table(title="medalloc audit release checks (noise: upper 1-1e-6 limit of measured sd / claimed)")
    for c in ("release", "ratio", "epsilon the measured noise gives", "calendar", "verdict"):
        checks.add_column(c, justify="left" if c == "release" else "right")
    for name, fn in (("shipped", release_records), ("2x too little noise", scaled(2.0)), ("1.25x", scaled(1.25))):
        r = run_release_checks(seed=0, release=fn)
        checks.add_row(
            name,
            f"{r.noise.lowest_ratio:.3f}",
            f"{r.noise.measured_epsilon:.2f}",
            "same grid" if r.calendar.passed else "changed",
            "PASS" if r.passed else "FAIL",
        )
    console.print(checks)


if __name__ == "__main__":
    main()
