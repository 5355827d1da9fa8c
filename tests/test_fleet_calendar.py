"""Issue 20: with a declared fleet calendar, one extra device or one late event moves nothing a node sends."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from medalloc_core.equipment.features import SnapshotSpec
from medalloc_core.tasks.base import NodeTask
from medalloc_core.tasks.equipment.task import _local
from tests.equipment_fixtures import fleet_copy


def _node(folder: Path, extra: dict) -> NodeTask:
    return NodeTask(
        task="equipment",
        hospital_id="H000",
        data_path=folder,
        ledger_path=folder / "l.json",
        epsilon_budget=5.0,
        extra=extra,
    )


def _variants(tmp_path: Path) -> dict[str, Path]:
    base = fleet_copy(tmp_path) / "H000"
    devices = pd.read_csv(base / "devices.csv", dtype=str, keep_default_na=False)
    events = pd.read_csv(base / "events.csv", dtype=str, keep_default_na=False)
    last = pd.to_datetime(events["time"], format="ISO8601").max()
    out = {"base": base}
    extra_device = tmp_path / "extra-device"
    extra_device.mkdir()
    new = devices.iloc[[0]].assign(device_id="ZZ-9999")
    pd.concat([devices, new]).to_csv(extra_device / "devices.csv", index=False)
    late = (
        events[events["device_id"] == devices["device_id"].iloc[0]]
        .iloc[[0]]
        .assign(device_id="ZZ-9999", time=f"{last + pd.Timedelta(days=40):%Y-%m-%d}")
    )
    pd.concat([events, late]).to_csv(extra_device / "events.csv", index=False)
    out["one extra device with a late event"] = extra_device
    late_event = tmp_path / "late-event"
    late_event.mkdir()
    devices.to_csv(late_event / "devices.csv", index=False)
    pd.concat([events, late.assign(device_id=devices["device_id"].iloc[1])]).to_csv(
        late_event / "events.csv", index=False
    )
    out["one late event of a known device"] = late_event
    return out


def _declared(base: Path) -> dict[str, str]:
    devices = pd.read_csv(base / "devices.csv", dtype=str)["device_id"].tolist()
    events = pd.to_datetime(pd.read_csv(base / "events.csv", dtype=str)["time"], format="ISO8601")
    return {
        "fleet-devices": ",".join(devices),
        "fleet-start": f"{events.min():%Y-%m-%d}",
        "fleet-end": f"{events.max():%Y-%m-%d}",
    }


def _public(local) -> tuple:
    return (
        len(local.dataset.train),
        len(local.dataset.test),
        local.batches.n_devices,
        local.fleet.start,
        local.fleet.end,
    )


def test_declared_fleet_calendar_is_unmoved_by_one_device(tmp_path: Path):
    spec = SnapshotSpec()
    variants = _variants(tmp_path)
    declared = _declared(variants["base"])
    base = _local(_node(variants["base"], declared), spec)
    assert base.fleet.declared_devices == len(declared["fleet-devices"].split(","))
    for name, folder in variants.items():
        assert _public(_local(_node(folder, declared), spec)) == _public(base), name
    # Without the declaration one device moves the fleet's end and everyone's snapshots: the leak.
    undeclared = _local(_node(variants["base"], {}), spec)
    moved = _local(_node(variants["one extra device with a late event"], {}), spec)
    assert moved.fleet.end > undeclared.fleet.end and len(moved.dataset.train) != len(undeclared.dataset.train)


def test_a_partial_fleet_calendar_is_the_nodes_misconfiguration(tmp_path: Path):
    from medalloc_core.protocol import Refusal
    from medalloc_core.tasks.base import TaskRefused

    folder = fleet_copy(tmp_path) / "H000"
    with pytest.raises(TaskRefused) as refused:
        _local(_node(folder, {"fleet-start": "2023-01-01"}), SnapshotSpec())
    assert refused.value.code == Refusal.NODE_MISCONFIGURED
