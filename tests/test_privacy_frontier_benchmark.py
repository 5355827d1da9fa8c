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


def test_the_unseen_family_lies_outside_the_pretraining_corpus() -> None:
    """Its generator settings are outside every range simulations/pretrain.py draws from (documented there)."""
    family = next(f for f in families(quick=False) if f.name == "regional waves (unseen)")
    c = family.config
    assert c.epidemic_amplitude > 0.8  # corpus: uniform(0, 0.8)
    assert c.wave_gap_days[1] < 150  # corpus: the generator's default (150, 330)
    assert c.wave_r0[0] > 2.2  # corpus: default (1.5, 2.2)
    assert c.max_lag_days > 14  # corpus: default 14


def test_goals_table_marks_a_missed_goal_with_its_margin() -> None:
    from rich.console import Console

    from medalloc.simulations.benchmarks.privacy_frontier import goal_ratios, summary_table

    def m(p: float, cov: float = 0.8) -> dict[str, float]:
        return {"pinball": p, "wape": p, "coverage": cov}

    methods = {
        "holt_winters": m(1.0),
        "pretrained (no training)": m(0.9),
        "centralized": m(0.8),
        "fracast (zero-shot)": m(0.85),
        "federated @ 1": m(0.855),
        "local only DP @ 1": m(0.9),
    }
    result = {"family": "toy", "methods": methods, "methods_shortest": methods}
    ratios = goal_ratios(result, 1.0)
    assert ratios["fed / initial"] == pytest.approx(0.95) and ratios["fed / zero-shot"] == pytest.approx(0.855 / 0.85)
    console = Console(width=250, record=True)
    console.print(summary_table([result], 1.0))
    text = console.export_text()
    assert "0.950 " in text and "1.006 ! +0.056" in text and "1 of 1" in text


@pytest.mark.parametrize(("option", "value"), [("--learned", "hybrid,transformer"), ("--families", "default,nope")])
def test_bad_learned_or_family_names_exit_2_naming_the_option(
    option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([option, value])
    assert exit_info.value.code == 2
    assert option in capsys.readouterr().err


def test_goals_of_the_head_take_fracast_as_its_initial_model() -> None:
    """fracast + head starts as fracast: its fed / initial is against fracast zero-shot, its local is its own."""
    from medalloc.simulations.benchmarks.privacy_frontier import HEAD, goal_ratios

    def m(p: float) -> dict[str, float]:
        return {"pinball": p, "wape": p, "coverage": 0.8}

    methods = {
        "holt_winters": m(1.0),
        "fracast (zero-shot)": m(0.8),
        HEAD["central"]: m(0.72),
        f"{HEAD['federated']} @ 1": m(0.76),
        f"{HEAD['local']} @ 1": m(0.8),
    }
    ratios = goal_ratios({"family": "toy", "methods": methods, "methods_shortest": methods}, 1.0, model="head")
    assert ratios["fed / initial"] == pytest.approx(0.95) == ratios["fed / zero-shot"]
    assert ratios["central / initial"] == pytest.approx(0.9) and ratios["shortest fed / local"] == pytest.approx(0.95)
    hybrid = goal_ratios({"family": "toy", "methods": methods, "methods_shortest": methods}, 1.0)
    assert all(np.isnan(v) for v in hybrid.values())  # a run without the hybrid: its goals are n/a


def test_goals_of_the_mix_take_the_pretrained_mix_as_initial_and_fracast_as_zero_shot() -> None:
    """federated + fracast: fed / initial against the public mix (no hospital data), local against the local mix."""
    from medalloc.simulations.benchmarks.privacy_frontier import MIX, goal_ratios

    def m(p: float) -> dict[str, float]:
        return {"pinball": p, "wape": p, "coverage": 0.8}

    methods = {
        "holt_winters": m(1.0),
        "fracast (zero-shot)": m(0.9),
        "pretrained (no training)": m(0.95),
        "federated @ 1": m(0.85),
        MIX["initial"]: m(0.88),
        MIX["central"]: m(0.8),
        f"{MIX['federated']} @ 1": m(0.836),
        f"{MIX['local']} @ 1": m(0.88),
    }
    ratios = goal_ratios({"family": "toy", "methods": methods, "methods_shortest": methods}, 1.0, model="mix")
    assert ratios["fed / initial"] == pytest.approx(0.95) and ratios["fed / zero-shot"] == pytest.approx(0.836 / 0.9)
    assert ratios["central / initial"] == pytest.approx(0.8 / 0.88) and ratios["fed / HW"] == pytest.approx(0.836)
    assert ratios["shortest fed / local"] == pytest.approx(0.95)
    assert goal_ratios({"family": "toy", "methods": methods, "methods_shortest": methods}, 1.0)[
        "fed / initial"
    ] == pytest.approx(0.85 / 0.95)  # the hybrid's own goals are unchanged by the mix rows


def test_goals_table_says_when_the_floor_itself_misses_a_goal() -> None:
    """A goal below the oracle's floor is marked unreachable: no forecaster can meet it on that family."""
    from rich.console import Console

    from medalloc.simulations.benchmarks.privacy_frontier import ORACLE, goal_ratios, summary_table

    def m(p: float) -> dict[str, float]:
        return {"pinball": p, "wape": p, "coverage": 0.8}

    methods = {
        ORACLE: m(0.93),  # the floor is 0.93x Holt-Winters: fed / HW <= 0.90 cannot be met
        "holt_winters": m(1.0),
        "pretrained (no training)": m(1.0),
        "centralized": m(0.98),
        "fracast (zero-shot)": m(0.95),
        "federated @ 1": m(0.97),
        "local only DP @ 1": m(0.98),
    }
    result = {"family": "toy", "methods": methods, "methods_shortest": methods}
    ratios = goal_ratios(result, 1.0)
    assert ratios["floor / HW"] == pytest.approx(0.93) and ratios["floor / zero-shot"] == pytest.approx(0.93 / 0.95)
    console = Console(width=300, record=True)
    console.print(summary_table([result], 1.0))
    text = console.export_text()
    assert "0.930 unreachable" in text and "0.979 unreachable" in text
    methods[ORACLE] = m(0.7)  # a floor well below both goals: reachable, not marked
    console = Console(width=300, record=True)
    console.print(summary_table([result], 1.0))
    text = console.export_text()
    assert "unreachable" not in text and "0.700" in text
