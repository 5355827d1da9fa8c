"""Helpers for the federation tests: build Flower request/reply Messages directly, without a server."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict

from medalloc.simulations.local_grid import task_identity  # noqa: F401  (Messages need Flower's task identity)
from medalloc_core import protocol


def record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


def request(node_id: int, arrays: ArrayRecord, config: Mapping | None = None, *, train: bool = True) -> Message:
    content = RecordDict({protocol.ARRAYS: arrays, protocol.CONFIG: ConfigRecord(dict(config or {}))})
    return Message(content, dst_node_id=node_id, message_type=MessageType.TRAIN if train else MessageType.EVALUATE)


def train_metrics(num_examples: float = 100, **overrides: float) -> dict[str, float]:
    values = {
        protocol.NUM_EXAMPLES: num_examples,
        protocol.TRAIN_LOSS: 0.5,
        protocol.EPSILON: 1.0,
        protocol.EPSILON_BUDGET_LEFT: 9.0,
        protocol.NOISE_MULTIPLIER: 1.0,
        protocol.LOCAL_EPOCHS_USED: 1,
        protocol.DELTA: 1e-6,
        protocol.STAY_CAP_DAYS: 14,
    }
    values.update(overrides)
    return values


def train_reply(
    node_id: int, arrays: Mapping[str, np.ndarray], metrics: Mapping[str, float], global_arrays: ArrayRecord
) -> Message:
    req = request(node_id, global_arrays)
    content = RecordDict({protocol.ARRAYS: record(arrays), protocol.METRICS: MetricRecord(dict(metrics))})  # type: ignore[arg-type]
    return Message(content, reply_to=req)


def error_reply(node_id: int, code: int, reason: str, global_arrays: ArrayRecord) -> Message:
    return Message(error=Error(code=code, reason=reason), reply_to=request(node_id, global_arrays))


# ------------------------------------------------------------------ an in-process grid
from pathlib import Path  # noqa: E402

from medalloc.simulations.local_grid import LocalGrid as DirectGrid  # noqa: E402,F401  (real ClientApps, no transport)


def small_region(folder: Path, *, hospitals: int = 3, days: int = 200, seed: int = 0) -> Path:
    """A tiny synthetic region (one CSV per hospital) for federation tests."""
    from medalloc_core.synthetic import RegionConfig, generate_region, write_region

    region = generate_region(
        RegionConfig(hospitals=hospitals, days=days, seed=seed, short_history_fraction=0.0, min_beds=60, max_beds=300)
    )
    write_region(region, folder)
    return folder


#: Run-config keys for a tiny, fast model used by the federation tests.
TINY = {"model": "mlp", "init": "none", "history": 14, "horizon": 7, "hidden": 8, "batch-size": 32, "lr": 0.01}


def calendar_toml(path: Path | str) -> str:
    """:func:`file_calendar` as node.toml lines."""
    return "".join(f'{k} = "{v}"\n' for k, v in file_calendar(path).items())


def file_calendar(path: Path | str) -> dict[str, str]:
    """The node-config calendar a deployed node over a test's generated file declares: exactly the file's units and
    days (a deployed node refuses without one, daily counts too: issue 20). Encounter files: their events' days."""
    import pandas as pd

    if not Path(path).is_file():  # a test of a node whose data is missing: nothing to declare from
        return {}
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "date" in frame.columns:
        days = pd.to_datetime(frame["date"])
    else:
        events = pd.concat([frame["admit_time"], frame["discharge_time"]]).str.strip()
        days = pd.to_datetime(events[events != ""], format="ISO8601")
    return {
        "calendar-units": ",".join(sorted(frame["unit"].astype(str).str.strip().unique())),
        "calendar-start": f"{days.min():%Y-%m-%d}",
        "calendar-end": f"{days.max():%Y-%m-%d}",
    }
