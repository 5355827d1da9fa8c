"""The weekly-accuracy benchmark (docs/coordinator.md, "Why eval-WAPE rose after week 4"): its noise floor is the
release's expected absolute noise over the test days' true level, and the same seed gives the same rows."""

from __future__ import annotations

import math

import pytest

from medalloc_core.privacy.release import ReleasePlan
from simulations.benchmarks.weekly_accuracy import TARGETS, main, weekly_rows


def test_the_floor_is_the_release_noise_over_the_true_level_and_seeded(capsys: pytest.CaptureFixture[str]) -> None:
    rows = weekly_rows(weeks=3, first_days=70, shape="daily", seed=1)
    assert [r["week"] for r in rows] == [1, 2, 3]
    sd = ReleasePlan.calibrate(epsilon=1.0, delta=1e-6, max_stay_days=14, columns=TARGETS).noise_sd
    mean_abs_noise = math.sqrt(2 / math.pi) * sum(sd[t] for t in TARGETS) / len(TARGETS)
    for row in rows:
        assert float(row["floor"]) == pytest.approx(mean_abs_noise / float(row["level"]), rel=1e-9)
        assert 0 < float(row["floor"]) < float(row["naive"])  # a forecast from noisy history is worse than the floor
    assert weekly_rows(weeks=3, first_days=70, shape="daily", seed=1) == rows
    assert main(["--weeks", "2", "--first-days", "70", "--seed", "1"]) == 0
    assert "noise floor" in capsys.readouterr().out
