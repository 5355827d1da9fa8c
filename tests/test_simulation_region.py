"""Issue 19: `medalloc simulate` with the region on Flower's Simulation Engine, on a researcher's folder of files of
different lengths (each evaluated on its own last weeks), and the table's word when too few origins remain."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from medalloc.cli.simulate import _results_table, too_few_origins, verdict
from medalloc.simulations.runner import run_scenario
from medalloc.simulations.scenario import load_scenario
from tests.fed_fixtures import small_region

SCENARIO = """
name = "region-files"
[region]
data-dir = "{folder}"
[federation]
model = "hybrid"
init = "none"
context = "region"
num-server-rounds = 2
local-epochs = 1
history = 28
horizon = 7
hidden = 8
batch-size = 64
lr = 0.01
[privacy]
epsilon = 4.0
reproducible-noise = true
[evaluation]
weeks = 4
origins = 4
validation-days = 28
[comparisons]
local-only = false
local-only-dp = false
centralized = false
baselines = ["seasonal_naive"]
[output]
forecast-plots = 0
"""


@pytest.mark.slow
def test_simulate_with_the_region_on_files_of_different_lengths(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    folder = small_region(tmp_path / "files", hospitals=3, days=260, seed=4)
    # H001 stops 45 days early; H002 joined the records 60 days late
    h1 = pd.read_csv(folder / "H001.csv", parse_dates=["date"])
    h1[h1["date"] <= h1["date"].max() - pd.Timedelta(days=45)].to_csv(folder / "H001.csv", index=False)
    h2 = pd.read_csv(folder / "H002.csv", parse_dates=["date"])
    h2[h2["date"] >= h2["date"].min() + pd.Timedelta(days=60)].to_csv(folder / "H002.csv", index=False)
    scenario_file = tmp_path / "scenario.toml"
    # one Ray actor (all the CPUs for one virtual node at a time): a second only imports the apps again
    scenario_file.write_text(SCENARIO.format(folder=folder) + f"[simulation]\nclient-cpus = {os.cpu_count() or 1}\n")
    with caplog.at_level(logging.INFO, logger="flwr.medalloc.region"):
        summary = run_scenario(load_scenario(scenario_file), tmp_path / "out")
    out = tmp_path / "out"
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["nodes"] == {"sampled": 3, "accepted": 3} for r in rounds if r["round"] > 0)
    assert json.loads((out / "final_model.json").read_text())["window-spec"]["context"] == ["weeks", "region"]
    # every node shared its released totals with the coordinator (round 0's evaluation collects them)
    shared = [r.getMessage() for r in caplog.records if "shares its released totals" in r.getMessage()]
    assert len(shared) == 3, caplog.text
    # each file evaluated on its own last 4 weeks
    for hid in ("H000", "H001", "H002"):
        last = pd.read_csv(folder / f"{hid}.csv", parse_dates=["date"])["date"].max()
        assert summary["evaluation"]["first_origin"][hid] == str((last - pd.Timedelta(days=27)).date())
    assert summary["evaluation"]["first_origin"]["H001"] != summary["evaluation"]["first_origin"]["H000"]
    fed = summary["methods"]["federated"]["overall"]["volume_weighted"]
    assert 0 < fed["pinball"] < float("inf")


def _summary(origins: int) -> dict:
    methods = {
        "federated": {"overall": {"volume_weighted": {"mae": 1, "wape": 0.1, "pinball": 1, "coverage": 0.8}}},
        "holt_winters": {"overall": {"volume_weighted": {"mae": 1, "wape": 0.11, "pinball": 1.1, "coverage": 0.8}}},
    }
    return {
        "hospitals": ["H000"],
        "evaluation": {"origins_per_unit": origins, "weeks": 2},
        "federation": {"epsilon_budget": 1.0},
        "privacy": {"max_stay_days": 14, "delta": 1e-6, "meaning": "m", "reproducible_noise": False},
        "method_epsilon": {"federated": {"H000": 1.0}},
        "methods": methods,
    }


def test_the_table_says_when_too_few_origins_remain_to_rank_methods():
    console = Console(width=80, record=True)
    console.print(_results_table(_summary(2)))
    text = " ".join(console.export_text().split())
    assert "ONLY 2 ORIGIN(S) PER UNIT: too few to rank methods" in text
    assert "too few origins" in (verdict(_summary(2)) or "")
    assert too_few_origins(_summary(4)) is None and "too few" not in (verdict(_summary(8)) or "")
