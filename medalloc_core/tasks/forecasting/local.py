"""The hospital-side work of a round, free of Flower: load and window the data, train, evaluate in original units.

The ClientApp calls these; the simulation runner calls the same functions for its local-only
and centralized comparisons, so every method is scored by one piece of code.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medalloc_core.contract import Frequency, UnitRecords
from medalloc_core.forecast.features import HospitalDataset, WindowSpec, prepare_hospital
from medalloc_core.forecast.metrics import mae, wape
from medalloc_core.forecast.models import ForecasterNet
from medalloc_core.forecast.selection import block_losses, origin_blocks, window_losses
from medalloc_core.forecast.training import evaluate, predict
from medalloc_core.sources import DataSource, cached_source, load_node_source, log_node_left_out

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------ data
@dataclass(frozen=True)
class LocalData:
    """One hospital's validated records and windows. Stays on the node.

    ``stays`` are the patient stays behind the records (contract encounter columns, with
    patient ids: the privacy unit) for encounter files, OMOP and FHIR sources; None for
    unit-record files. They never leave the node.
    """

    records: UnitRecords
    dataset: HospitalDataset
    stays: pd.DataFrame | None = None


def load_local_data(source: Path | DataSource, spec: WindowSpec) -> LocalData:
    """Load, validate and window a hospital's data (cached per process while it is unchanged).

    ``source`` is a contract file or any :class:`DataSource` (OMOP database or export, FHIR
    export). Raises ``DataContractError`` for data that breaks its rules and ``ValueError``
    when its series are too short for the spec.
    """
    source = source if isinstance(source, DataSource) else DataSource(str(source))
    key = source.fingerprint()
    if key is None:  # a database server: nothing tells us cheaply whether it changed, so read it
        return _load(source, spec)
    # Keyed by the data's identity *and* its files' modification times and sizes, so an edited
    # file is re-validated; one node reads one source, so a handful of entries covers a
    # simulation actor serving several virtual nodes. Flower re-creates the ClientApp per
    # message, so without this every round would re-read and re-validate everything.
    cached = _CACHE.get((key, spec))
    if cached is None:
        cached = _CACHE[(key, spec)] = _load(source, spec)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return cached


_CACHE: OrderedDict[tuple[object, WindowSpec], LocalData] = OrderedDict()
_CACHE_SIZE = 8


def _load(source: DataSource, spec: WindowSpec) -> LocalData:
    records, stays = load_daily(source)
    return LocalData(records, prepare_hospital(records, spec), stays)


def load_daily(source: DataSource, *, counts: Path | None = None) -> tuple[UnitRecords, pd.DataFrame | None]:
    """A source's daily records and its stays (None without patient ids) as a node counts them, not windowed yet.

    Cached like :func:`load_local_data` (on the source's identity and modification times): a node
    puts these on its public calendar and bounds each patient before anything is windowed.
    ``counts`` is the node's count cache folder (``sources.incremental``): a hospital-scale encounter
    file read by the engine, or a FHIR export, keeps its counts there between runs, and an encounter
    file that grew has only its appended rows read; any other source (a contract file small enough for
    the validator, OMOP) is read in full at each change. Either way a malformed record is left out
    before counting and counted by reason in the log, never a refusal (issue 20:
    ``sources.inspect_node_source``).
    """
    key = source.fingerprint()
    cached = _DAILY.get(key) if key is not None else None
    if cached is None:
        if counts is not None and cached_source(source):
            from medalloc_core.sources.incremental import CountCache

            counted = CountCache(counts, lenient=True).read(source)
            for problem in counted.report.warnings:
                logger.warning("%s", problem)
            data = counted.loaded()
            log_node_left_out(source, counted.left_out)
            records, stays = data.records, data.stays
        else:
            records, stays, _ = load_node_source(source)
        if records.frequency is not Frequency.DAILY:
            raise ValueError(
                f"{source.display}: the federation's model is daily; this file is {records.frequency.value}"
            )
        cached = (records, stays)
        if key is not None:
            for stale in [k for k in _DAILY if isinstance(k, tuple) and k[:3] == key[:3]]:
                del _DAILY[stale]  # the same source before it changed: its stays are not held twice
            _DAILY[key] = cached
            while len(_DAILY) > _CACHE_SIZE:
                _DAILY.popitem(last=False)
    return cached


_DAILY: OrderedDict[object, tuple[UnitRecords, pd.DataFrame | None]] = OrderedDict()


# ------------------------------------------------------------------ evaluation
def test_forecasts(model: ForecasterNet, dataset: HospitalDataset) -> tuple[np.ndarray, np.ndarray]:
    """Actuals ``(N, H, T)`` and quantile forecasts ``(N, H, T, Q)`` on the test split, in patients/beds."""
    test = dataset.test
    pred = predict(model, test.X)  # (N, H, T, Q) scaled
    y = dataset.to_original(test.y.numpy(), test)
    q = dataset.to_original(pred, test)
    return y, q


def evaluate_local(model: ForecasterNet, dataset: HospitalDataset) -> dict[str, Any]:
    """Test-split metrics a node may share: scaled pinball loss, and MAE and WAPE of the median in original units.

    Beside them the validation loss, whole (``val_loss``) and per block of origins (``val_blocks``,
    ``selection.block_losses``): what the coordinator keeps a round or the start by.
    """
    if len(dataset.test) == 0:
        raise ValueError("the test split has no windows")
    loss = evaluate(model, dataset.test)["pinball"]
    y, q = test_forecasts(model, dataset)
    median = q[..., _median_index(model)]
    w = float(wape(y, median))
    # the validation windows choose the model the coordinator keeps; a dataset without any (a short
    # series) scores the choice on its training windows, never on the test days
    choose = dataset.val if len(dataset.val) else dataset.train
    losses = window_losses(model, choose, model.config.quantiles)
    val_loss = float(losses.mean()) if len(choose) else float(loss)
    horizon = dataset.spec.horizon or 1
    return {
        "loss": float(loss),
        "val_loss": val_loss if math.isfinite(val_loss) else float(loss),
        "val_blocks": [float(v) for v in block_losses(losses, origin_blocks("", choose, horizon))],
        "mae": float(mae(y, median)),
        "wape": w if math.isfinite(w) else 0.0,
        "n": float(len(dataset.test)),
    }


def _median_index(model: ForecasterNet) -> int:
    levels: tuple[float, ...] = tuple(model.config.quantiles)
    return min(range(len(levels)), key=lambda i: abs(levels[i] - 0.5))
