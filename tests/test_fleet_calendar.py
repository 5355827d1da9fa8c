"""Issue 20: with a declared fleet calendar, one extra device or one late event moves nothing a node sends."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from medalloc_core.equipment.features import SnapshotSpec
from medalloc_core.tasks.base import NodeTask
from medalloc_core.tasks.equipment.task import _local
from tests.equipment_fixtures import fleet_copy


def _node(folder: Path, extra: dict, *, simulated: bool = False) -> NodeTask:
    return NodeTask(
        task="equipment",
        hospital_id="H000",
        data_path=folder,
        ledger_path=folder / "l.json",
        epsilon_budget=5.0,
        extra=extra,
        simulated=simulated,
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
    # Without the declaration (a simulated node only) one device moves the fleet's end and everyone's snapshots.
    undeclared = _local(_node(variants["base"], {}, simulated=True), spec)
    moved = _local(_node(variants["one extra device with a late event"], {}, simulated=True), spec)
    assert moved.fleet.end > undeclared.fleet.end and len(moved.dataset.train) != len(undeclared.dataset.train)


def test_a_partial_fleet_calendar_is_the_nodes_misconfiguration(tmp_path: Path):
    from medalloc_core.protocol import Refusal
    from medalloc_core.tasks.base import TaskRefused

    folder = fleet_copy(tmp_path) / "H000"
    with pytest.raises(TaskRefused) as refused:
        _local(_node(folder, {"fleet-start": "2023-01-01"}), SnapshotSpec())
    assert refused.value.code == Refusal.NODE_MISCONFIGURED


# ------------------------------------------------------------------ black box: what the coordinator sees
def _train_views(tmp: Path, folder: Path, extra: dict, rounds: int = 2) -> list[dict]:
    """What one equipment node answers a coordinator over ``rounds`` train rounds (arrays by shape only)."""
    from flwr.app import ConfigRecord, Context, Message, RecordDict

    from medalloc.client.app import handle
    from medalloc_core import protocol
    from medalloc_core.equipment.model import RiskModelConfig, build_risk_model, risk_arrays
    from medalloc_core.tasks import get_task
    from medalloc_core.tasks.equipment.protocol import EquipmentInstruction
    from tests.fed_fixtures import record, task_identity

    tmp.mkdir(parents=True)
    node = {
        "tasks": "equipment",
        "hospital-id": "H000",
        "equipment-data-path": str(folder),
        "equipment-ledger-path": str(tmp / "devices.json"),
        "equipment-epsilon-budget": 50.0,
    } | extra
    ctx = Context(run_id=1, node_id=5, node_config=node, state=RecordDict(), run_config={})
    spec = SnapshotSpec()
    config = RiskModelConfig(n_features=spec.n_features, hidden=0, layers=1)
    arrays = record(risk_arrays(build_risk_model(config, seed=0)))
    views = []
    for server_round in range(1, rounds + 1):
        ask = EquipmentInstruction(
            server_round=server_round,
            model_config=config,
            spec=spec,
            local_epochs=1,
            batch_size=16,
            lr=0.05,
            proximal_mu=0.0,
            dp_noise_multiplier=3.0,
            dp_max_grad_norm=0.2,
            run_tag="t",
            seed=0,
            reproducible_noise=False,
        )
        content = RecordDict({protocol.ARRAYS: arrays, protocol.CONFIG: ConfigRecord(ask.to_dict())})
        with task_identity():
            message = Message(content, dst_node_id=5, message_type="train.equipment")
            reply = handle(message, ctx, task=get_task("equipment"), train=True)
        if reply.has_error():
            views.append({"error": reply.error.code, "reason": reply.error.reason})
            continue
        views.append(
            {
                "records": sorted(reply.content.keys()),
                "metrics": dict(reply.content.metric_records[protocol.METRICS]),  # every key is public
                "node-info": dict(reply.content.config_records[protocol.NODE_INFO]),
                "arrays": {k: tuple(a.shape) for k, a in reply.content.array_records[protocol.ARRAYS].items()},
            }
        )
    return views


def test_one_extra_device_changes_no_field_of_any_equipment_reply(tmp_path: Path):
    """Same node, same coordinator, fleets with and without one extra device (with a late event) or one late event:
    every metric (num-examples, epsilon, budget left, noise), every key and every refusal are identical; only the
    DP-trained arrays' values differ."""
    variants = _variants(tmp_path / "data")
    declared = _declared(variants["base"])
    base = _train_views(tmp_path / "base", variants["base"], declared)
    assert all("error" not in v for v in base), base
    assert base[0]["metrics"]["num-examples"] == len(declared["fleet-devices"].split(","))
    for name, folder in variants.items():
        assert _train_views(tmp_path / ("run-" + name.replace(" ", "-")), folder, declared) == base, name


def test_the_sampling_rate_follows_the_declared_devices_not_those_with_data(tmp_path: Path):
    """A declared device missing from the files (its owner removed it) moves neither epsilon nor num-examples."""
    variants = _variants(tmp_path / "data")
    declared = _declared(variants["base"])
    fewer = tmp_path / "one-device-fewer"
    fewer.mkdir()
    devices = pd.read_csv(variants["base"] / "devices.csv", dtype=str, keep_default_na=False)
    events = pd.read_csv(variants["base"] / "events.csv", dtype=str, keep_default_na=False)
    gone = devices["device_id"].iloc[2]
    devices[devices["device_id"] != gone].to_csv(fewer / "devices.csv", index=False)
    events[events["device_id"] != gone].to_csv(fewer / "events.csv", index=False)
    base = _train_views(tmp_path / "base", variants["base"], declared, rounds=1)
    other = _train_views(tmp_path / "fewer", fewer, declared, rounds=1)
    assert "error" not in base[0] and other == base


def test_a_deployed_equipment_node_without_a_fleet_calendar_refuses_naming_the_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    variants = _variants(tmp_path / "data")
    with caplog.at_level("ERROR"):
        base = _train_views(tmp_path / "base", variants["base"], {}, rounds=1)
    assert base[0]["error"] == 1005 and base[0]["reason"].startswith("node-misconfigured")
    assert 'fleet-devices="' in caplog.text and 'fleet-start="' in caplog.text and 'fleet-end="' in caplog.text
    for name, folder in variants.items():
        assert _train_views(tmp_path / ("run-" + name.replace(" ", "-")), folder, {}, rounds=1) == base, name
