"""Issue 19: the region through Flower. Nodes send their released daily totals, the coordinator sums the
others' for each node and sends it with the requests; the region channel reads only days before each origin."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from medalloc.client.app import make_client_app
from medalloc.server.app import run_federation
from medalloc.server.config import RunConfig, RunConfigError
from medalloc.server.region import RegionCollector
from medalloc_core import protocol
from medalloc_core.contract import Frequency, UnitRecords
from medalloc_core.forecast.region import (
    daily_totals,
    parse_totals,
    region_from_text,
    region_to_text,
    totals_record,
)
from medalloc_core.privacy.release import ReleaseStore
from medalloc_core.replies import ReplyNotAllowed, check_reply
from tests.fed_fixtures import record, request, small_region, task_identity, train_metrics
from tests.region_fixtures import HYBRID, RecordingGrid, region_nodes, region_run


@pytest.fixture(autouse=True)
def _identity():
    with task_identity():
        yield


def _records(days: int, start: str = "2024-01-01", level: float = 10.0) -> UnitRecords:
    dates = pd.date_range(start, periods=days)
    frame = pd.DataFrame(
        {
            "date": np.tile(dates, 2),
            "unit": np.repeat(["icu", "ward"], days),
            "admissions": np.arange(2 * days, dtype=float) % 7 + level,
            "census": np.arange(2 * days, dtype=float) % 5 + 3 * level,
        }
    )
    return UnitRecords(frame, Frequency.DAILY, "t", "daily")


def _reply(node: int, totals: dict | None) -> Message:
    req = request(node, record({}), {})
    records: dict = {protocol.METRICS: MetricRecord({protocol.NUM_EXAMPLES: 1})}
    if totals is not None:
        records[protocol.RELEASED_TOTALS] = ConfigRecord(totals)
    return Message(RecordDict(records), reply_to=req)


# ------------------------------------------------------------------ the wire
def test_totals_and_region_round_trip_and_malformed_ones_are_refused():
    records = _records(10)
    totals = totals_record(records, ("admissions", "census"))
    assert totals["dates"][0] == "2024-01-01" and len(totals["dates"]) == 10
    frame = parse_totals(totals, ("admissions", "census"))
    pd.testing.assert_frame_equal(frame, daily_totals(records), check_names=False, check_freq=False)
    again = region_from_text(region_to_text(frame))
    np.testing.assert_allclose(again.to_numpy(), frame.to_numpy())
    for bad, match in [
        ({**totals, "admissions": totals["admissions"][:-1]}, "one per day"),
        ({**totals, "admissions": [float("nan")] * 10}, "finite"),
        ({**totals, "admissions": [1e12] * 10}, "finite"),
        ({**totals, "dates": ["2024-13-01"] * 10}, "YYYY-MM-DD"),
        ({**totals, "dates": ["2024-01-01"] * 10}, "repeats"),
        ({**totals, "patients": [1.0] * 10}, "unknown key"),
        ({"admissions": [1.0]}, "missing"),
    ]:
        with pytest.raises(ValueError, match=match):
            parse_totals(bad, ("admissions", "census"))
    with pytest.raises(ValueError, match="JSON"):
        region_from_text("{not json")
    with pytest.raises(ValueError, match="unknown column"):
        region_from_text(json.dumps({"dates": ["2024-01-01"], "names": [1.0]}))


def test_the_totals_are_on_the_reply_allow_list_and_nothing_else_rides_with_them():
    totals = totals_record(_records(5), ("admissions", "census"))
    shared = {protocol.RELEASED_TOTALS: totals}
    ok = check_reply("forecasting", "train", train_metrics(), {"w": np.zeros(2)}, {}, shared)
    assert ok.records[protocol.RELEASED_TOTALS]["dates"] == totals["dates"]
    allowed = protocol.REPLY_ALLOW_LIST["evaluate"][protocol.RELEASED_TOTALS]
    assert allowed["dates"] == protocol.PUBLIC and allowed["admissions"] == protocol.POST_PROCESSING
    with pytest.raises(ReplyNotAllowed, match="not on the allow-list"):
        check_reply("forecasting", "train", train_metrics(), {"w": 1}, {}, {"true-totals": totals})
    with pytest.raises(ReplyNotAllowed, match="not on the allow-list"):
        check_reply("forecasting", "train", train_metrics(), {"w": 1}, {}, {protocol.RELEASED_TOTALS: {"units": ["a"]}})
    with pytest.raises(ReplyNotAllowed, match="allowed kind"):
        bad = {**totals, "admissions": [float("inf")] * 5}
        check_reply("forecasting", "train", train_metrics(), {"w": 1}, {}, {protocol.RELEASED_TOTALS: bad})


# ------------------------------------------------------------------ the coordinator's sum
def test_the_coordinator_sends_each_node_the_others_sum_over_the_days_each_released():
    long, late = _records(30), _records(10, start="2024-01-21", level=100.0)  # late: joins on day 21
    collector = RegionCollector()
    read = collector.collect(
        [
            _reply(1, totals_record(long, ("admissions", "census"))),
            _reply(2, totals_record(late, ("admissions", "census"))),
            _reply(3, None),  # refused to share: sends nothing, is sent the others' sum
            _reply(4, {"dates": ["2024-01-01"], "admissions": [float("nan")]}),  # malformed: ignored
        ]
    )
    assert read == 2 and sorted(collector.totals) == [1, 2]
    to_1, to_3 = collector.region(exclude=1), collector.region(exclude=3)
    pd.testing.assert_frame_equal(to_1, daily_totals(late), check_names=False, check_freq=False)
    # before the late node's first day the region is the long node's alone; from then on both, day by day
    expected = daily_totals(long).add(daily_totals(late), fill_value=0.0)
    pd.testing.assert_frame_equal(to_3, expected, check_names=False, check_freq=False)
    assert to_3.loc["2024-01-20", "admissions"] == daily_totals(long).loc["2024-01-20", "admissions"]
    # each message gets its own region; the shared RecordDict of Flower's strategies is not changed
    content = RecordDict({protocol.CONFIG: ConfigRecord({"x": 1})})
    messages = [Message(content, dst_node_id=n, message_type="train") for n in (1, 3)]
    stamped = collector.stamp(messages)
    regions = [region_from_text(m.content.config_records[protocol.CONFIG][protocol.REGION]) for m in stamped]
    np.testing.assert_allclose(regions[0].to_numpy(), to_1.to_numpy())
    np.testing.assert_allclose(regions[1].to_numpy(), to_3.to_numpy())
    assert protocol.REGION not in content.config_records[protocol.CONFIG]


def test_the_run_config_key_turns_the_region_on_for_the_hybrid_only():
    assert RunConfig.from_mapping({"context": "region", **HYBRID}).context_list == ("region",)
    with pytest.raises(RunConfigError, match="hybrid"):
        RunConfig.from_mapping({"context": "region", "model": "mlp", "init": "none"})


# ------------------------------------------------------------------ the round loop with real ClientApps
@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_region(tmp_path_factory.mktemp("region") / "r", days=240)


def test_a_region_run_sends_each_node_the_others_released_totals(region: Path, tmp_path: Path):
    nodes = region_nodes(region, tmp_path, 3, lambda i: {"share-released-totals": False} if i == 2 else {})
    # the forecast check below needs a model that reads the region: a trained round, not the start (whose
    # region weights are zero), whatever the release's noise made of the validation windows this time
    keys = region_run(tmp_path / "out", 3, keep_start=False)
    grid = RecordingGrid(make_client_app(), nodes)
    result = run_federation(grid, RunConfig.from_mapping(keys), run_id=7)
    assert result.best_round and result.best_round > 0
    assert result.final_model_written and all(r.model_updated for r in result.rounds if r.round > 0)

    released = {
        n: daily_totals(ReleaseStore.open(Path(cfg["ledger-path"] + ".released.csv")).records())
        for n, cfg in nodes.items()
    }
    # replies: nodes 1 and 2 share their released totals (exactly their release, summed over units); 3 refuses
    for reply in grid.replies:
        node = reply.metadata.src_node_id
        totals = reply.content.config_records.get(protocol.RELEASED_TOTALS)
        if node == 3:
            assert totals is None
        else:
            frame = parse_totals(dict(totals), ("admissions", "census"))
            np.testing.assert_allclose(frame.to_numpy(), released[node][frame.columns].to_numpy(), rtol=1e-9)
    # round 0's evaluation goes out before anyone shared; every later request carries the others' sum
    first = [m for m in grid.requests if m.content.config_records[protocol.CONFIG][protocol.SERVER_ROUND] == 0]
    later = [m for m in grid.requests if m.content.config_records[protocol.CONFIG][protocol.SERVER_ROUND] >= 1]
    assert first and all(protocol.REGION not in m.content.config_records[protocol.CONFIG] for m in first)
    assert len(later) == 12  # 2 rounds x (train + evaluate) x 3 nodes
    for message in later:
        node = message.metadata.dst_node_id
        sent = region_from_text(message.content.config_records[protocol.CONFIG][protocol.REGION])
        others = [released[n] for n in (1, 2) if n != node]
        expected = others[0].add(others[1], fill_value=0.0) if len(others) == 2 else others[0]
        np.testing.assert_allclose(sent.to_numpy(), expected[sent.columns].to_numpy(), rtol=1e-6, atol=1e-5)
    # the released totals cost nothing: each ledger holds its one source release only
    for cfg in nodes.values():
        spends = json.loads(Path(cfg["ledger-path"]).read_text())["body"]["entries"]
        assert len(spends) == 1
    # each node kept the last region it was sent; a hospital's forecast reads it, as the evaluation scored
    check_forecasts_read_the_stored_region(region, nodes, released, tmp_path)


def check_forecasts_read_the_stored_region(
    region: Path, nodes: dict[int, dict], released: dict[int, pd.DataFrame], tmp_path: Path
) -> None:
    """What a hospital gets is what was scored: the node keeps the last region it was sent (beside its release,
    local), `medalloc forecast --release` reads it for the region model, and the forecast equals the in-process
    evaluation's (``comparisons.evaluation_data``: the others' released totals joined to truth and release, the
    bands calibrated on both) and differs from the forecast that reads no region (zeros). Without a stored region
    a region model is refused, never forecast from zeros."""
    from typer.testing import CliRunner

    from medalloc.cli import app
    from medalloc_core.forecast.predict import ModelDataMismatch, forecast_records
    from medalloc_core.forecast.region import region_totals, with_region
    from medalloc_core.forecast.region_store import read_region, region_path
    from medalloc_core.model_io import load_model
    from medalloc_core.tasks.forecasting.comparisons import evaluation_data

    saved = load_model(tmp_path / "out")
    for node, cfg in nodes.items():
        stored = read_region(region_path(Path(cfg["ledger-path"] + ".released.csv")))
        others = region_totals({str(n): released[n] for n in (1, 2) if n != node})  # node 3 shares nothing
        np.testing.assert_allclose(stored.region.to_numpy(), others[stored.region.columns].to_numpy(), atol=1e-5)
        assert stored.run_tag and stored.received
    # node 3 (H002) was sent the sum of the two others, which is also what the in-process evaluation gives it
    node, hid = 3, "H002"
    release = Path(nodes[node]["ledger-path"] + ".released.csv")
    files = {f"H00{n - 1}": Path(c["data-path"]) for n, c in nodes.items()}
    ledgers = {f"H00{n - 1}": Path(c["ledger-path"]) for n, c in nodes.items()}
    ev = evaluation_data(files, ledgers, saved.spec, n_origins=2)
    plan = ReleaseStore.open(release).plan
    assert plan is not None
    expected = forecast_records(
        saved.model,
        saved.spec,
        ev.truth[hid].records,
        hospital=hid,
        noise_sd=dict(plan.noise_sd),
        released=ev.released[hid].records,
    ).set_index(["unit", "target", "date", "q"])["value"]

    runner = CliRunner()
    base = ["forecast", "--model", str(tmp_path / "out"), "--data", nodes[node]["data-path"], "--hospital", hid]
    result = runner.invoke(app, [*base, "--release", str(release), "--out", str(tmp_path / "fc")])
    assert result.exit_code == 0, result.output
    assert "region from" in " ".join(result.output.split())
    got = pd.read_csv(tmp_path / "fc" / "forecast.csv", parse_dates=["date"]).set_index(
        ["unit", "target", "date", "q"]
    )["value"]
    assert list(got.index) == list(expected.index)
    np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), rtol=1e-4, atol=1e-3)
    # the same model reading no region (the channel all zeros) gives another forecast
    records = ev.truth[hid].records
    blank = with_region(records, pd.DataFrame(np.nan, index=others.index, columns=others.columns))
    zeros = forecast_records(saved.model, saved.spec, blank, hospital=hid)["value"].to_numpy()
    as_learned = forecast_records(saved.model, saved.spec, records, hospital=hid)["value"].to_numpy()
    assert np.abs(as_learned - zeros).max() > 0.05, "the region channel changes nothing: the test cannot tell"
    # never silently zeros: no region columns is a clear error, and the CLI refuses without a stored region
    bare = ReleaseStore.open(release).records()
    with pytest.raises(ModelDataMismatch, match="reads the region"):
        forecast_records(saved.model, saved.spec, bare, hospital=hid)
    refused = runner.invoke(app, [*base, "--out", str(tmp_path / "fc-none")])
    assert refused.exit_code == 2 and "reads the region" in " ".join(refused.output.split())
    assert not (tmp_path / "fc-none" / "forecast.csv").exists()
    missing = runner.invoke(app, [*base, "--region", str(tmp_path / "nowhere.json"), "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "no stored region" in " ".join(missing.output.split())
    # explain and adopt predict on the node too: with the stored region, or not at all
    explain = ["explain", "--model", str(tmp_path / "out"), "--data", nodes[node]["data-path"], "--unit", "icu"]
    refused = runner.invoke(app, [*explain, "--out", str(tmp_path / "ex-none")])
    assert refused.exit_code == 2 and "reads the region" in " ".join(refused.output.split())
    stored_file = str(region_path(release))
    explained = runner.invoke(
        app, [*explain, "--region", stored_file, "--method", "occlusion", "--out", str(tmp_path / "ex")]
    )
    assert explained.exit_code == 0, explained.output
    from medalloc_core.tasks.forecasting.adoption import AdoptionError, score_model

    with pytest.raises(AdoptionError, match="reads the region"):
        score_model(tmp_path / "out" / "final_model.safetensors", bare)
    assert score_model(tmp_path / "out" / "final_model.safetensors", ev.released[hid].records).windows > 0
