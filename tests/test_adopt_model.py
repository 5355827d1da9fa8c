"""Issue 24: adopt or keep. A node scores a new shared model against the one it uses on its own most recent
released days and adopts it only if better (``adopt = "if-better"``) or always; the version in use is recorded.

Real files throughout: a node's release made by the real ClientApp, model files written in the
project's format, the ``medalloc node adopt`` command over a node.toml.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from medalloc.cli import app
from medalloc_core.forecast.features import prepare_hospital
from medalloc_core.forecast.models import build_model
from medalloc_core.forecast.training import TrainConfig, train_local
from medalloc_core.model_io import save_model
from medalloc_core.privacy.release import ReleaseStore
from tests.fed_fixtures import small_region, task_identity
from tests.release_node import MODEL, SPEC
from tests.test_continuing_node import _round


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, Path]:
    """A node that released 150 days (real ClientApp), a random model and one trained on its released counts."""
    root = tmp_path_factory.mktemp("adopt")
    region = small_region(root / "region", hospitals=1, days=150)
    folder = root / "node"
    with task_identity():
        assert "metrics" in _round(folder, region / "H000.csv")
    released = ReleaseStore.open(folder / "ledger.json.released.csv").records()
    untrained = build_model(MODEL, seed=1)
    with torch.no_grad():  # a model that forecasts badly: large random weights
        generator = torch.Generator().manual_seed(1)
        for parameter in untrained.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 3)
    weak = save_model(root / "weak" / "final_model.safetensors", untrained, spec=SPEC)
    trained = build_model(MODEL, seed=2)
    train_local(trained, prepare_hospital(released, SPEC).train, config=TrainConfig(epochs=30, batch_size=32, lr=0.01))
    strong = save_model(root / "strong" / "final_model.safetensors", trained, spec=SPEC)
    toml = root / "node.toml"
    toml.write_text(f'ledger-path = "{folder / "ledger.json"}"\n')
    return folder, weak, strong, toml


def _sha12(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def _adopt(toml: Path, model: Path) -> str:
    result = CliRunner().invoke(app, ["node", "adopt", "--node-config", str(toml), "--model", str(model)])
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def _state(folder: Path) -> dict:
    return json.loads((folder / "ledger.json.adopted.json").read_text())


def test_a_node_adopts_a_new_model_only_if_it_is_better_on_its_released_days(node) -> None:
    folder, weak, strong, toml = node
    out = _adopt(toml, weak)
    assert "adopted: the node had no model in use" in out
    assert _state(folder)["current"]["version"] == _sha12(weak)

    # A better model (trained on the node's released counts) replaces it ...
    out = _adopt(toml, strong.parent)  # a results folder works as well as the file
    state = _state(folder)
    assert state["current"]["version"] == _sha12(strong), out
    last = state["decisions"][-1]
    assert last["adopted"] and last["candidate"]["wape"] < last["current"]["wape"]
    # ... and the weaker one is not taken back.
    out = _adopt(toml, weak)
    assert "kept the model in use" in out and f"version in use {_sha12(strong)}" in out
    assert _state(folder)["current"]["version"] == _sha12(strong)
    # The node keeps its own copy of what it adopted: overwriting the results folder changes nothing.
    kept = Path(_state(folder)["current"]["file"])
    assert kept.name == f"{_sha12(strong)}.safetensors" and _sha12(kept) == _sha12(strong)


def test_adopt_always_takes_the_new_model_and_a_bad_setting_is_one_line(node, tmp_path: Path) -> None:
    folder, weak, strong, _ = node
    always = tmp_path / "always.toml"
    always.write_text(f'ledger-path = "{folder / "ledger.json"}"\nadopt = "always"\n')
    _adopt(always, strong)
    out = _adopt(always, weak)
    assert "adopted: adopt = always" in out
    assert _state(folder)["current"]["version"] == _sha12(weak)
    bad = tmp_path / "bad.toml"
    bad.write_text(f'ledger-path = "{folder / "ledger.json"}"\nadopt = "sometimes"\n')
    result = CliRunner().invoke(app, ["node", "adopt", "--node-config", str(bad), "--model", str(weak)])
    assert result.exit_code == 2 and "if-better, always" in result.output and "Traceback" not in result.output
    assert len(pd.DataFrame(_state(folder)["decisions"])) >= 3
