"""The region under secure aggregation (issue 21): the nodes' released totals summed by Flower's SecAgg+.

The coordinator proposes (``region-secure-aggregation = true``), each node agrees in its own config;
the coordinator then learns only the regional total, never a node's daily series, and every node
subtracts its own share to read the others' sum, the same region as without secure aggregation.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

from medalloc.client.app import make_client_app
from medalloc.server.app import run_federation
from medalloc.server.config import RunConfig, RunConfigError
from medalloc_core import protocol
from medalloc_core.forecast.region import region_totals
from medalloc_core.forecast.secure_region import (
    RegionWindow,
    decode,
    encode,
    others,
    total_from_text,
    total_to_text,
)
from medalloc_core.protocol import Refusal
from medalloc_core.tasks.forecasting.secure_region import own_totals
from tests.fed_fixtures import small_region, task_identity
from tests.region_fixtures import HYBRID, RecordingWireGrid, region_nodes, region_run


@pytest.fixture(autouse=True)
def _identity():
    with task_identity():
        yield


def _totals(start: str, days: int, level: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    index = pd.date_range(start, periods=days)
    return pd.DataFrame(
        {"admissions": level + rng.normal(0, 3, days), "census": 3 * level + rng.normal(0, 3, days)}, index=index
    )


def test_the_decoded_sum_minus_a_nodes_own_share_is_the_others_region():
    """Pure arithmetic: three calendars that overlap in part, negative noisy totals included."""
    nodes = {
        "a": _totals("2024-01-01", 40, 10.0, 0),
        "b": _totals("2024-01-15", 30, 0.5, 1),  # values near 0: DP noise makes some negative
        "c": _totals("2024-02-01", 20, 50.0, 2),
    }
    window = RegionWindow.covering([t.index for t in nodes.values()], ("admissions", "census"))
    assert window is not None and window.first == pd.Timestamp("2024-01-01") and window.days == 51
    modular = np.mod(sum(encode(t, window) for t in nodes.values()), 2**window.modulus_bits)
    total = total_from_text(total_to_text(decode(modular, window)))
    assert int(total.reporting.max()) == 3 and int(total.reporting.min()) == 1
    for name, own in nodes.items():
        mine = others(total, own, included=True)
        expected = region_totals(nodes, exclude=name)
        assert list(mine.index) == list(expected.index)
        np.testing.assert_allclose(mine.to_numpy(), expected[mine.columns].to_numpy(), atol=len(nodes) * 0.005 + 1e-9)
    # a node left out of the sum reads the whole total as the others'
    np.testing.assert_allclose(
        others(total, nodes["a"], included=False).to_numpy(), region_totals(nodes)[["admissions", "census"]].to_numpy(),
        atol=0.02,
    )  # fmt: skip


def test_a_malformed_total_is_refused_with_its_field():
    window = RegionWindow(first=pd.Timestamp("2024-01-01"), days=3, columns=("admissions",))
    good = json.loads(total_to_text(decode(np.zeros(6, dtype=np.int64), window)))
    with pytest.raises(ValueError, match="'reporting' must be a list of 3 integers"):
        total_from_text(json.dumps(good | {"reporting": [0, 1]}))
    with pytest.raises(ValueError, match="not an integer"):
        total_from_text(json.dumps(good | {"sums": {"admissions": [0, 1.5, 2]}}))
    with pytest.raises(ValueError, match="region-columns"):
        RegionWindow(first=pd.Timestamp("2024-01-01"), days=3, columns=("beds-of-the-mayor",))


def test_the_option_needs_the_region_context():
    with pytest.raises(RunConfigError, match="needs context with 'region'"):
        RunConfig.from_mapping({"region-secure-aggregation": True})
    assert RunConfig.from_mapping({"region-secure-aggregation": True, "context": "region", **HYBRID})


# ------------------------------------------------------------------ a federation, real ClientApps, Flower's SecAgg+
@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_region(tmp_path_factory.mktemp("region") / "r", hospitals=4, days=240)


def test_a_region_run_under_secagg_sends_the_total_and_never_a_nodes_series(
    region: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="medalloc_core")
    # node 4 does not agree: it refuses the sum
    nodes = region_nodes(region, tmp_path, 4, lambda i: {"region-secure-aggregation": i != 3})
    keys = region_run(tmp_path / "out", 4, region_secure_aggregation=True)
    grid = RecordingWireGrid(make_client_app(), nodes)
    result = run_federation(grid, RunConfig.from_mapping(keys), run_id=7)
    assert result.final_model_written and all(r.model_updated for r in result.rounds if r.round > 0)

    released = {
        n: own_totals(Path(str(cfg["ledger-path"]) + ".released.csv"), ("admissions", "census"))
        for n, cfg in nodes.items()
    }
    # 1. no reply carries a node's totals: train/evaluate replies hold the days only; the SecAgg+ vectors are masked
    for reply in grid.replies:
        if reply.has_error():
            continue
        totals = reply.content.config_records.get(protocol.RELEASED_TOTALS)
        if totals is not None:
            assert set(totals) == {"dates"}
    secure = [m for m in grid.requests if RECORD_KEY_CONFIGS in m.content.config_records]
    stages = [m.content.config_records[RECORD_KEY_CONFIGS][Key.STAGE] for m in secure]
    assert stages.count(Stage.SETUP) == 4 and stages.count(Stage.COLLECT_MASKED_VECTORS) == 4  # one secure sum
    masked = [
        r for r in grid.replies
        if not r.has_error() and RECORD_KEY_CONFIGS in r.content.config_records
        and Key.MASKED_PARAMETERS in r.content.config_records[RECORD_KEY_CONFIGS]
    ]  # fmt: skip
    assert len(masked) == 3
    refusals = [r for r in grid.replies if r.has_error()]
    assert [int(r.error.code) for r in refusals] == [int(Refusal.SECURE_AGGREGATION_NOT_AGREED)]
    assert refusals[0].metadata.src_node_id == 4
    # 2. every request after the sum carries the regional total of the three agreeing nodes
    later = [m for m in grid.requests if protocol.REGION_TOTAL in m.content.config_records.get(protocol.CONFIG, {})]
    assert len(later) == 16  # 2 rounds x (train + evaluate) x 4 nodes
    agreeing = {str(n): released[n] for n in (1, 2, 3)}
    for message in later:
        config = message.content.config_records[protocol.CONFIG]
        node = message.metadata.dst_node_id
        assert config[protocol.REGION_INCLUDED] is (node != 4)
        total = total_from_text(config[protocol.REGION_TOTAL])
        np.testing.assert_allclose(
            total.frame().dropna().to_numpy(), region_totals(agreeing)[["admissions", "census"]].to_numpy(), atol=0.02
        )
        # what the node reads: the others' sum, as region_totals over the other agreeing nodes
        mine = others(total, released[node], included=node != 4)
        expected = region_totals(agreeing, exclude=str(node))
        np.testing.assert_allclose(mine.to_numpy(), expected[mine.columns].to_numpy(), atol=0.02)
    # ... and every node joins it to its records as the region (train and evaluate of both rounds)
    joined = [r for r in caplog.records if "the region from the coordinator" in r.getMessage()]
    assert len(joined) == 16
    # 3. the sum costs nothing: each ledger holds its one source release only
    for cfg in nodes.values():
        spends = json.loads(Path(str(cfg["ledger-path"])).read_text())["body"]["entries"]
        assert len(spends) == 1


# ------------------------------------------------------------------ Flower's Simulation Engine
@pytest.mark.slow
def test_the_regions_secure_sum_on_the_simulation_engine(region: Path, tmp_path: Path, caplog):
    """The same ServerApp and ClientApp on ``run_simulation`` (Ray): virtual nodes agree by the run's word."""
    from medalloc.simulations.runner import simulate_federation

    keys = region_run(
        tmp_path / "out",
        4,
        num_server_rounds=1,
        region_secure_aggregation=True,
        simulation_data_dir=str(region),
        simulation_epsilon_budget=4.0,
    )
    with caplog.at_level(logging.INFO, logger="flwr.medalloc.region"):
        # one Ray actor (all the CPUs for one virtual node at a time): a second only imports the apps again
        simulate_federation(keys, 4, client_cpus=float(os.cpu_count() or 1))
    lines = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [x["model-updated"] for x in lines if x["round"] > 0] == [True]
    summed = [r.getMessage() for r in caplog.records if "summed under SecAgg+" in r.getMessage()]
    assert summed and summed[0].startswith("region: 4 nodes' released totals"), caplog.text
    assert "shares its released totals" not in caplog.text  # no node's series reached the coordinator
