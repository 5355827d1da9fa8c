"""The privacy frontier benchmark's plumbing: which hospitals count as shortest, what a node releases, bad options."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from medalloc.simulations.benchmarks.privacy_frontier import (
    Family,
    build_hospitals,
    families,
    main,
    release,
    shortest_hospitals,
)
from medalloc_core.contract import ADMISSIONS, CENSUS, DATE


@pytest.fixture(scope="module")
def admissions_only() -> Family:
    family = next(f for f in families(quick=True) if f.name == "admissions only")
    return replace(family, config=replace(family.config, hospitals=4, days=300))


def test_shortest_third_by_days_of_records(admissions_only: Family) -> None:
    hospitals = build_hospitals(admissions_only)
    days = {n: h.records.frame[DATE].nunique() for n, h in hospitals.items()}
    chosen = shortest_hospitals(hospitals)
    assert len(chosen) == 2  # ceil(4 / 3)
    assert max(days[n] for n in chosen) <= min(days[n] for n in hospitals if n not in chosen)


def test_release_is_the_columns_a_node_has_noised_at_the_epsilon(admissions_only: Family) -> None:
    hospitals = build_hospitals(admissions_only)
    name, hospital = next(iter(hospitals.items()))
    true = hospital.records.frame[ADMISSIONS].to_numpy(float)

    def noise_sd(epsilon: float, seed: int) -> tuple[float, np.ndarray]:
        released, plans = release(hospitals, epsilon=epsilon, seed=seed)
        frame = released[name].records.frame
        assert CENSUS not in frame.columns and plans[name].columns == (ADMISSIONS,)
        values = frame[ADMISSIONS].to_numpy(float)
        return float(np.std(values - true)), values

    sd_1, first = noise_sd(1.0, seed=0)
    _, again = noise_sd(1.0, seed=0)
    sd_4, _ = noise_sd(4.0, seed=0)
    np.testing.assert_array_equal(first, again)  # seeded: a research run repeats
    assert sd_1 > 0 and sd_4 < sd_1 / 2  # a larger epsilon, much less noise


@pytest.mark.parametrize("value", ["0", "1,abc", "-1"])
def test_bad_epsilons_exit_2_naming_the_option(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--epsilons", value])
    assert exit_info.value.code == 2
    assert "--epsilons" in capsys.readouterr().err
