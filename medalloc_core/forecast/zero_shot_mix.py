"""The federation's model beside a free zero-shot one: the weighted mean of their quantiles, on the node.

A hospital that joins the federation could instead run ``fracast``, a small zero-shot model
whose weights ship in its wheel. Measured on the privacy frontier (docs/forecasting.md), the
two make different errors: the level-by-level mean of their quantile forecasts scores better
than either alone on most scenario families, and never much worse than the better one. The
mix is computed where the records are, from the node's own recent counts: fracast reads no
one else's data and is trained on no one's, so it costs no privacy and sends nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medalloc_core.contract import UnitRecords
from medalloc_core.forecast.features import WindowSpec

__all__ = ["ZERO_SHOT_WEIGHT", "blend", "mix_zero_shot"]

#: fracast's share of the mix the benchmarks score (``federated + fracast``); ``medalloc forecast
#: --zero-shot-weight`` takes it or any other share in [0, 1].
ZERO_SHOT_WEIGHT = 0.5


def blend(values: np.ndarray, zero_shot: np.ndarray, weight: float) -> np.ndarray:
    """The mix itself, on forecasts of the same targets: ``(1 - weight) * values + weight * zero_shot``, level by
    level (the benchmarks mix forecasts they already hold with it, exactly as a node does)."""
    return (1.0 - weight) * values + weight * zero_shot


def mix_zero_shot(
    values: np.ndarray,
    records: UnitRecords,
    spec: WindowSpec,
    units: Sequence[str] | np.ndarray,
    target_start: np.ndarray,
    levels: Sequence[float],
    weight: float,
) -> np.ndarray:
    """``(1 - weight) * values + weight * fracast``, quantile level by level, at the same origins.

    ``values`` is ``(N, H, T, Q)`` in beds/patients for ``units[i]`` from ``target_start[i]`` on;
    fracast forecasts the same targets from each unit's records before that date. Averaging
    non-crossing quantiles level by level keeps them non-crossing.

    Raises
    ------
    ImportError
        fracast is not installed (the message names the extra).
    ValueError
        ``weight`` is outside [0, 1]; ``predict.ModelDataMismatch`` where a level is not one
        fracast forecasts (0.1, ..., 0.9).
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"the zero-shot weight must lie in [0, 1]; got {weight}")
    if weight == 0.0:
        return values
    from medalloc_core.forecast.forecasters.base import HospitalData, Origins
    from medalloc_core.forecast.forecasters.zeroshot import Fracast
    from medalloc_core.forecast.predict import ModelDataMismatch

    if not Fracast.available():
        raise ImportError(
            "mixing with the zero-shot model needs the zeroshot extra (fracast): in the MedAlloc source folder "
            "python -m pip install -e '.[zeroshot]'"
        )
    hospital = HospitalData(str(records.source), records, spec)
    origins = Origins(np.asarray(units, dtype=object), np.asarray(target_start, dtype="datetime64[ns]"))
    try:
        zero_shot = Fracast(quantiles=tuple(levels)).fit({hospital.name: hospital}).predict(hospital, origins)
    except ValueError as exc:  # a level fracast does not forecast
        raise ModelDataMismatch(f"{records.source}: cannot mix with the zero-shot model: {exc}") from exc
    return blend(values, zero_shot, weight)
