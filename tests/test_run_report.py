"""A real run's results folder is a report: the ServerApp's round loop with real ClientApps
(delivered in-process), then `medalloc report` on its out-dir, then the page in headless Chromium.

The model the run keeps is the best round's on the nodes' released validation windows; the
report says which round, and the kept file holds exactly that round's checkpointed weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medalloc.cli import app as cli
from medalloc.client.app import make_client_app
from medalloc.server.app import SUMMARY_FILE, run_federation
from medalloc.server.checkpoint import load_checkpoint
from medalloc.server.config import RunConfig
from medalloc_core import protocol
from medalloc_core.model_io import FINAL_MODEL_NAME, read_model_files
from medalloc_core.tasks import get_task
from tests.browser import Chromium, chromium_binary
from tests.fed_fixtures import TINY, DirectGrid, file_calendar, small_region, task_identity


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three rounds over three hospitals; the third can afford nothing (budget 0.05): refused every round."""
    root = tmp_path_factory.mktemp("run")
    region = small_region(root / "region")
    nodes = {
        i + 1: {
            "data-path": str(region / f"H00{i}.csv"),
            "ledger-path": str(root / f"ledger{i}.json"),
            "privacy-epsilon-budget": 0.05 if i == 2 else 20.0,
        }
        | file_calendar(region / f"H00{i}.csv")
        for i in range(3)
    }
    # the third hospital has already spent its whole budget on a share: it cannot afford its release
    from medalloc_core.privacy.gaussian import gaussian_noise_multiplier
    from medalloc_core.privacy.node_state import open_node_ledger

    spent = open_node_ledger(
        state_path=root / "medalloc-node-state.json",
        hospital_id="H002",
        ledger_path=root / "ledger2.json",
        epsilon_budget=0.05,
        delta=1e-6,
        accountant="prv",
        max_stay_days=14,
    )
    z = gaussian_noise_multiplier(epsilon=0.05, delta=1e-6)
    spent.spend("share", noise_multiplier=z, sample_rate=1.0, steps=1, run_id="share", mechanism="share")
    keys = {
        "out-dir": str(root / "results" / "run-001"),
        "num-server-rounds": 3,
        "min-available-nodes": 3,
        "min-train-nodes": 3,
        "lr": 0.05,
        # the kept model is the best round's (what the report shows): not the start, whatever the release's
        # noise made of the validation windows this time (keeping the start is its own test below)
        "keep-start": False,
    } | {k: v for k, v in TINY.items() if k != "lr"}
    with task_identity():
        result = run_federation(DirectGrid(make_client_app(), nodes), RunConfig.from_mapping(keys), run_id=1)
    assert result.final_model_written
    return root / "results" / "run-001"


def test_the_run_folder_holds_what_the_report_needs(run_folder: Path) -> None:
    summary = json.loads((run_folder / SUMMARY_FILE).read_text())
    fed = summary["federation"]
    assert fed["rounds"] == 3 and len(summary["hospitals"]) == 3
    accepted = fed["rounds_accepted"]
    assert sorted(accepted.values()) == [0, 3, 3]
    assert any(k.startswith("refused: privacy-budget-exceeded") for k in fed["refusals"])
    eps = {h: e for h, e in fed["epsilon_per_hospital"].items() if e is not None}
    assert len(eps) == 2 and all(0 < e <= 20 for e in eps.values())
    assert summary["privacy"]["unit"] == "patient" and summary["privacy"]["delta"] > 0

    # the kept model is the round with the lowest validation loss, and holds that round's weights
    rounds = [json.loads(line) for line in (run_folder / "metrics.jsonl").read_text().splitlines()]
    scored = {r["round"]: r["evaluate"][protocol.VAL_LOSS] for r in rounds if r["round"] > 0}
    best = min(scored, key=scored.__getitem__)
    assert fed["model_kept"]["round"] == best and "validation" in fed["model_kept"]["selected_by"]
    meta, kept = read_model_files(run_folder / FINAL_MODEL_NAME.replace(".safetensors", ".json"))
    assert meta["best-round"] == best
    checkpoint = load_checkpoint(run_folder / "checkpoints" / f"round-{best:04d}.json")
    for name, value in checkpoint.arrays.items():
        np.testing.assert_array_equal(kept[name], value)


def test_medalloc_report_writes_the_page_of_a_real_run(run_folder: Path) -> None:
    result = CliRunner().invoke(cli, ["report", str(run_folder)])
    assert result.exit_code == 0, result.output
    html = (run_folder / "report.html").read_text()
    assert 'id="participation"' in html and 'id="model-kept"' in html and 'id="privacy"' in html


needs_chromium = pytest.mark.skipif(
    chromium_binary() is None and not os.environ.get("CI"),
    reason="Chromium is not installed (make test installs it as root: apt-get install chromium)",
)


@needs_chromium
def test_the_coordinator_reads_participation_privacy_and_the_kept_round_in_chromium(
    run_folder: Path, tmp_path: Path
) -> None:
    summary = json.loads((run_folder / SUMMARY_FILE).read_text())
    page = tmp_path / "report.html"
    assert CliRunner().invoke(cli, ["report", str(run_folder), "--out", str(page)]).exit_code == 0
    binary = chromium_binary()
    assert binary is not None
    with Chromium(binary) as browser:
        tab = browser.open(page.resolve().as_uri())
        privacy = tab.evaluate(
            "[...document.querySelectorAll('#privacy td[data-field]')].map(td => "
            "({field: td.dataset.field, hospital: td.dataset.hospital, value: td.dataset.value}))"
        )
        participation = tab.evaluate(
            "[...document.querySelectorAll('#participation td[data-field]')].map(td => "
            "({hospital: td.dataset.hospital, text: td.textContent}))"
        )
        kept = tab.evaluate("document.querySelector('#model-kept').textContent")
        refusals = tab.evaluate("document.querySelectorAll('#refusals td.bad').length")
        rounds = tab.evaluate("document.querySelectorAll('#rounds tbody tr').length")
        errors = tab.errors()
        urls = tab.requested_urls()
    assert errors == []
    assert all(u.startswith(("file://", "data:")) for u in urls), urls
    fed = summary["federation"]
    shown = {c["hospital"]: c["value"] for c in privacy if c["field"] == "federation.epsilon_per_hospital"}
    assert set(shown) == set(summary["hospitals"])
    for h, value in fed["epsilon_per_hospital"].items():
        assert shown[h] == repr(value)
    assert {c["hospital"]: int(c["text"]) for c in participation} == fed["rounds_accepted"]
    assert f"round {fed['model_kept']['round']}" in " ".join(kept.split()) and "validation" in kept
    assert refusals == 3  # the third hospital, in each of the three rounds
    assert rounds == 4  # round 0 (the initial model) and three rounds


def test_a_run_whose_rounds_do_not_beat_the_start_keeps_the_start(tmp_path: Path) -> None:
    """A learning rate that makes every round overshoot: no round beats the start, whose weights are kept."""
    region = small_region(tmp_path / "region", hospitals=2)
    nodes = {
        i + 1: {"data-path": str(region / f"H00{i}.csv"), "ledger-path": str(tmp_path / f"ledger{i}.json")}
        | {"privacy-epsilon-budget": 20.0}
        | file_calendar(region / f"H00{i}.csv")
        for i in range(2)
    }
    out = tmp_path / "run"
    keys = {"out-dir": str(out), "num-server-rounds": 2, "min-available-nodes": 2, "lr": 50.0, "max-update-norm": 0}
    keys |= {k: v for k, v in TINY.items() if k != "lr"}
    config = RunConfig.from_mapping(keys)
    with task_identity():
        result = run_federation(DirectGrid(make_client_app(), nodes), config, run_id=1)
    assert result.final_model_written and result.best_round == 0
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["federation"]["model_kept"]["round"] == 0
    meta, kept = read_model_files(out / FINAL_MODEL_NAME.replace(".safetensors", ".json"))
    assert meta["best-round"] == 0
    task = get_task(config.task)
    start = task.model(config, task.options(config.task_options)).arrays
    assert set(kept) == set(start)
    for name, value in start.items():
        np.testing.assert_array_equal(kept[name], value)


def test_the_start_is_compared_on_the_blocks_of_the_nodes_that_scored_both() -> None:
    from medalloc.server.app import _beats_start

    start = {"H1": [1.0, 1.0, 1.0], "H2": [2.0, 2.0]}
    assert _beats_start({0: start, 3: {"H1": [0.9, 0.8, 0.9], "H2": [1.9, 1.8]}}, 3)
    assert not _beats_start({0: start, 3: {"H1": [0.9, 1.1, 0.9], "H2": [2.1, 1.9]}}, 3)  # mean gain within noise
    # H3 scored no start and H2 another number of blocks: only H1's blocks are paired
    assert _beats_start({0: start, 3: {"H1": [0.9, 0.8, 0.9], "H2": [9.0], "H3": [9.0, 9.0]}}, 3)
    assert _beats_start({0: {}, 3: {"H1": [5.0, 5.0]}}, 3)  # nothing to compare with: the round stands
