"""Keep the start unless training beats it beyond the validation noise (``medalloc_core.forecast.selection``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medalloc_core.contract import ADMISSIONS, DATE, UNIT, Frequency, UnitRecords
from medalloc_core.forecast.evaluation import evaluation_spec, rolling_origins
from medalloc_core.forecast.features import REGION_PREFIX
from medalloc_core.forecast.forecasters import Federated, HospitalData, NeuralForecaster
from medalloc_core.forecast.selection import beats, block_losses

HORIZON = 14  # the public weights' horizon


def _hospital(name: str, seed: int, *, leading: bool, days: int = 300) -> HospitalData:
    """Admissions that repeat the region's released total ``HORIZON`` days before (``leading``), or pure noise.

    The public weights start with the region channel at zero weight, so only training can read it;
    Poisson noise around a constant holds nothing a round could learn that the start lacks.
    """
    rng = np.random.default_rng(seed)
    region = np.clip(150 + np.cumsum(rng.normal(0, 6, days + HORIZON)), 20, None)
    admissions = np.round(region[:days]) if leading else rng.poisson(150, days).astype(float)
    frame = pd.DataFrame(
        {
            DATE: pd.date_range("2024-01-01", periods=days, freq="D"),
            UNIT: "ward",
            ADMISSIONS: admissions,
            f"{REGION_PREFIX}{ADMISSIONS}": region[HORIZON:],
        }
    )
    spec = evaluation_spec(history=28, horizon=HORIZON, targets=(ADMISSIONS,), weeks=6, val_periods=28)
    return HospitalData(name, UnitRecords(frame, Frequency.DAILY, Path(name), "daily"), spec)


def _hybrid(**kw: object) -> NeuralForecaster:
    params: dict[str, object] = dict(
        model="hybrid", init="pretrained", epochs=2, batch_size=32, lr=3e-3, select=True, context=("region",)
    )
    return NeuralForecaster(**(params | kw))  # type: ignore[arg-type]


def test_beats_needs_a_gain_beyond_the_noise_of_the_paired_difference() -> None:
    start = np.array([1.0, 2.0, 3.0, 4.0])
    assert beats(start - 0.1, start)  # the same gain on every block: no noise at all
    assert not beats(start + np.array([-0.5, 0.4, -0.5, 0.4]), start)  # mean -0.05, sd 0.52
    assert beats(start + np.array([-0.5, 0.4, -0.5, 0.4]), start, margin=0.0)
    assert not beats(np.array([0.0]), np.array([1.0]))  # one block cannot measure the noise
    with pytest.raises(ValueError, match="3 candidate blocks against 4"):
        beats(start[:3], start)


def test_block_losses_average_each_block_in_a_fixed_order() -> None:
    out = block_losses(np.array([1.0, 3.0, 10.0, 5.0]), np.array(["b", "b", "a", "c"], dtype=object))
    np.testing.assert_allclose(out, [10.0, 2.0, 5.0])


@pytest.fixture(scope="module")
def noise() -> dict[str, HospitalData]:
    return {f"H{i}": _hospital(f"H{i}", i, leading=False) for i in range(2)}


def test_rounds_that_only_fit_the_noise_leave_the_start_as_it_was(noise: dict[str, HospitalData]) -> None:
    start = _hybrid(epochs=0).fit(noise)
    kept = Federated(_hybrid(), rounds=6, local_epochs=2).fit(noise)
    assert kept.best_round_ == 0
    h = noise["H0"]
    origins = rolling_origins(h, n_origins=4)
    np.testing.assert_array_equal(kept.predict(h, origins), start.predict(h, origins))
    # Without the noise test a round that fitted the noise would have been kept
    assert Federated(_hybrid(margin=0.0), rounds=6, local_epochs=2).fit(noise).best_round_ > 0
    # and pooled (centralized) training follows the same rule
    assert _hybrid(epochs=6).fit(noise).best_epoch_ == 0


def test_a_signal_the_start_cannot_read_is_learned_and_kept() -> None:
    leading = {f"H{i}": _hospital(f"H{i}", i, leading=True) for i in range(2)}
    assert Federated(_hybrid(), rounds=6, local_epochs=2).fit(leading).best_round_ > 0
