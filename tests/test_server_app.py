"""The ServerApp's round loop with real ClientApps (delivered in-process): refusals, client-level DP, round logs."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest

from medalloc.client.app import make_client_app
from medalloc.server.app import METRICS_FILE, run_federation
from medalloc.server.checkpoint import latest_checkpoint
from medalloc.server.config import RunConfig
from medalloc_core.protocol import Refusal
from tests.fed_fixtures import TINY, DirectGrid, file_calendar, small_region, task_identity


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_region(tmp_path_factory.mktemp("app") / "r")


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]


def test_a_node_whose_ledger_refuses_is_seen_by_the_server_as_a_refusal(region: Path, tmp_path: Path):
    nodes = {
        i + 1: {
            "data-path": str(region / f"H00{i}.csv"),
            "ledger-path": str(tmp_path / f"ledger{i}.json"),
            "privacy-epsilon-budget": 0.05 if i == 2 else 20.0,
        }
        | file_calendar(region / f"H00{i}.csv")
        for i in range(3)
    }
    # Node 3 has already spent its whole budget (a share): it cannot afford its release.
    from medalloc_core.privacy.gaussian import gaussian_noise_multiplier
    from medalloc_core.privacy.node_state import open_node_ledger

    spent = open_node_ledger(
        state_path=tmp_path / "medalloc-node-state.json",
        hospital_id="H002",
        ledger_path=tmp_path / "ledger2.json",
        epsilon_budget=0.05,
        delta=1e-6,
        accountant="prv",
        max_stay_days=14,
    )
    z = gaussian_noise_multiplier(epsilon=0.05, delta=1e-6)
    spent.spend("share", noise_multiplier=z, sample_rate=1.0, steps=1, run_id="share", mechanism="share")
    keys = {
        "out-dir": str(tmp_path / "out"),
        "num-server-rounds": 1,
        "min-available-nodes": 3,
        "min-train-nodes": 3,
    } | TINY
    grid = DirectGrid(make_client_app(), nodes)
    lines: list[str] = []
    catcher = logging.Handler()
    catcher.emit = lambda r: lines.append(r.getMessage())  # type: ignore[method-assign]
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.addHandler(catcher)
    level = flwr_logger.level
    flwr_logger.setLevel(logging.INFO)  # as in a ServerApp process (an earlier test may have quietened Flower)
    try:
        with task_identity():
            result = run_federation(grid, RunConfig.from_mapping(keys), run_id=3)
    finally:
        flwr_logger.removeHandler(catcher)
        flwr_logger.setLevel(level)
    # the coordinator's one line for the round, written once, through Flower's logger (what `flwr log` shows)
    rounds = [line for line in lines if line.startswith("round ")]
    assert len(rounds) == 1, lines
    line = rounds[0]
    assert (
        line.startswith("round 1/1: 3 node(s) sampled, 2 accepted")
        and "refused node 3 (privacy-budget-exceeded)" in line
    )
    assert "eval-loss" in line and "held-out days of their released counts" in line
    assert "largest epsilon spent" in line and "per patient" in line
    record = _log(tmp_path / "out")[-1]
    assert record["round"] == 1 and record["model-updated"] is True
    assert record["nodes"] == {"sampled": 3, "accepted": 2, "refused": 1}
    refused = [o for o in record["outcomes"] if o["status"] == "refused"]
    assert refused[0]["node"] == "3" and refused[0]["reason"].startswith("privacy-budget-exceeded")
    assert record["train"]["num-nodes"] == 2
    assert all(np.isfinite(v).all() for v in result.arrays.values())
    # evaluation reads the release, which node 3 could not afford: it refuses that too, and its
    # ledger holds nothing but the earlier share
    assert record["evaluate"]["num-nodes"] == 2
    assert list(json.loads((tmp_path / "ledger2.json").read_text())["body"]["entries"]) == ["share"]
    assert Refusal.PRIVACY_BUDGET_EXCEEDED.slug == "privacy-budget-exceeded"


def test_client_level_dp_option_runs_and_reports_its_epsilon(region: Path, tmp_path: Path):
    keys = {
        "simulation-data-dir": str(region),
        "out-dir": str(tmp_path / "out"),
        "num-server-rounds": 2,
        "min-available-nodes": 3,
        "min-train-nodes": 3,
        "client-dp": True,
        "client-dp-noise-multiplier": 1.0,
        "client-dp-clipping-norm": 0.5,
        "simulation-epsilon-budget": 50.0,
    } | TINY
    grid = DirectGrid(make_client_app(keys), {1: {"partition-id": 0}, 2: {"partition-id": 1}, 3: {"partition-id": 2}})
    with task_identity():
        result = run_federation(grid, RunConfig.from_mapping(keys), run_id=4)
    rounds = [r for r in _log(tmp_path / "out") if r["round"] > 0]
    eps = [r["client-dp-epsilon"] for r in rounds]
    assert all(r["model-updated"] for r in rounds)
    assert 0 < eps[0] < eps[1] and all(math.isfinite(e) for e in eps)
    # each round's client-level epsilon is the Gaussian mechanism's, composed: the same numbers as the formula
    from medalloc.server.strategies import client_dp_epsilon

    assert eps[1] == pytest.approx(client_dp_epsilon(noise_multiplier=1.0, releases=2, delta=1e-5))
    assert latest_checkpoint(tmp_path / "out" / "checkpoints").strategy_state == {"client-dp-releases": 2}
    assert all(np.isfinite(v).all() for v in result.arrays.values())


def test_in_a_serverapp_process_each_flower_line_is_written_once() -> None:
    """Opacus's import-time basicConfig gave the root logger a handler: every line of `flwr log` came twice."""
    import subprocess
    import sys

    def copies(argv0: str) -> int:
        code = (
            f"import sys, logging; sys.argv[0] = {argv0!r}\n"
            "import opacus\n"  # as a DP run's accounting does (it is imported where it is used)
            "import medalloc.server.app\n"
            "logging.getLogger('flwr').info('round 1/1: one line')\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return (out.stdout + out.stderr).count("round 1/1: one line")

    assert copies("/venv/bin/flwr-serverapp") == 1
    assert copies("/venv/bin/python") == 2  # what the fix is for: elsewhere both handlers still write it
