"""A simulated federation whose nodes read different formats: OMOP (SQLite, CSV), FHIR (NDJSON, Bundle), contract files.

``medalloc generate --shape mixed`` writes one hospital of each kind; every virtual node finds
its own source in the region folder (simulation-data-dir), reads it through the same
sources API a real node uses, trains, and spends from its own ledger.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medalloc.cli import app
from medalloc.simulations.runner import simulate_federation
from medalloc_core.forecast.features import federation_window_spec
from medalloc_core.privacy.ledger import PrivacyLedger
from medalloc_core.sources import DataSource
from medalloc_core.tasks.forecasting.local import load_local_data
from medalloc_core.tasks.forecasting.task import TASK as FORECASTING


@pytest.mark.slow
def test_nodes_reading_omop_fhir_and_contract_files_train_together(tmp_path: Path) -> None:
    region = tmp_path / "region"
    result = CliRunner().invoke(
        app, ["generate", "-n", "6", "-d", "200", "--seed", "4", "--shape", "mixed", "--out", str(region)]
    )
    assert result.exit_code == 0, result.output
    sources = FORECASTING.node_data(region)
    assert [p.name for p in sources] == [
        "H000.sqlite",
        "H001.fhir",
        "H002.csv",
        "H003.omop",
        "H004.fhir.json",
        "H005.parquet",
    ]
    assert [DataSource(str(p)).kind() for p in sources] == ["omop", "fhir", "contract", "omop", "fhir", "contract"]
    spec = federation_window_spec(history=14, horizon=7, targets=("admissions", "census"))
    windows = {DataSource(str(p)).name: len(load_local_data(p, spec).dataset.train) for p in sources}
    out = tmp_path / "run"
    run_config = {
        "num-server-rounds": 1,
        "min-available-nodes": 6,
        "min-train-nodes": 6,
        "local-epochs": 1,
        "model": "mlp",  # a tiny seeded MLP (the default hybrid's public weights need history 28)
        "init": "none",
        "lr": 0.01,
        "history": 14,
        "horizon": 7,
        "hidden": 8,
        "batch-size": 64,
        "simulation-data-dir": str(region),
        "simulation-epsilon-budget": 50.0,
        "out-dir": str(out),
    }
    # one Ray actor (all the CPUs for one virtual node at a time): a second only imports the apps again
    simulate_federation(run_config, len(sources), client_cpus=float(os.cpu_count() or 1))
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rounds[-1]["round"] == 1
    assert rounds[-1]["nodes"] == {"sampled": 6, "accepted": 6}, rounds[-1]
    # Each hospital trained once, on its own source, and its ledger says so.
    for hospital in windows:
        ledger = PrivacyLedger.load(region / "ledgers" / f"{hospital}.json")
        assert len(ledger.history()) == 1, hospital
        assert 0 < ledger.epsilon_spent() < 50.0
    assert sorted(windows) == [f"H00{k}" for k in range(6)]
    assert all(n > 0 for n in windows.values())
