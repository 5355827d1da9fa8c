"""Checkpoints: atomic, verified round trip; a resumed run continues at the next round from the saved model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medalloc.client.app import make_client_app
from medalloc.server.app import METRICS_FILE, restore_strategy_state, run_federation, strategy_state
from medalloc.server.checkpoint import Checkpoint, CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from medalloc.server.config import RunConfig, RunConfigError
from medalloc.server.strategies import build_strategy
from medalloc_core.forecast.features import federation_window_spec
from medalloc_core.forecast.models import ForecasterConfig
from tests.fed_fixtures import TINY, DirectGrid, small_region, task_identity


def _ckpt(r: int, value: float) -> Checkpoint:
    return Checkpoint(
        round=r,
        arrays={"w": np.full((2, 3), value, dtype=np.float32), "b": np.arange(3, dtype=np.float32)},
        strategy="fedadam",
        model_config=ForecasterConfig(hidden=8),
        window_spec=federation_window_spec(history=56, horizon=14, targets=("admissions", "census")),
        run_config={"num-server-rounds": 5},
        strategy_arrays={"m_t/w": np.ones((2, 3)), "v_t/w": np.full((2, 3), 2.0)},
        strategy_state={"client-dp-releases": r},
    )


def test_round_trip_restores_every_field(tmp_path: Path):
    marker = save_checkpoint(tmp_path, _ckpt(3, 0.5))
    loaded = load_checkpoint(marker)
    assert loaded.round == 3 and loaded.strategy == "fedadam" and loaded.model_config == ForecasterConfig(hidden=8)
    np.testing.assert_array_equal(loaded.arrays["w"], np.full((2, 3), 0.5, dtype=np.float32))
    assert loaded.arrays["w"].dtype == np.float32
    np.testing.assert_array_equal(loaded.strategy_arrays["v_t/w"], np.full((2, 3), 2.0))
    assert loaded.strategy_state == {"client-dp-releases": 3}
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left behind


def test_latest_skips_a_tampered_or_torn_checkpoint(tmp_path: Path):
    save_checkpoint(tmp_path, _ckpt(1, 1.0))
    save_checkpoint(tmp_path, _ckpt(2, 2.0))
    save_checkpoint(tmp_path, _ckpt(10, 10.0))
    assert latest_checkpoint(tmp_path).round == 10  # numeric, not lexical, order
    data = bytearray((tmp_path / "round-0010.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "round-0010.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(tmp_path / "round-0010.json")
    (tmp_path / "round-0002.json").write_text('{"round": 2, "strat')  # torn metadata
    assert latest_checkpoint(tmp_path).round == 1
    assert latest_checkpoint(tmp_path / "absent") is None


def test_fedadam_moments_survive_a_checkpoint():
    built = build_strategy(RunConfig(strategy="fedadam"))
    built.base.m_t = {"w": np.full(3, 0.25)}
    built.base.v_t = {"w": np.full(3, 0.5)}
    arrays, scalars = strategy_state(built, releases=4)
    fresh = build_strategy(RunConfig(strategy="fedadam"))
    assert restore_strategy_state(fresh, arrays, scalars) == 4
    np.testing.assert_array_equal(fresh.base.m_t["w"], np.full(3, 0.25))
    np.testing.assert_array_equal(fresh.base.v_t["w"], np.full(3, 0.5))


# ------------------------------------------------------------------ resume through the real round loop
@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_region(tmp_path_factory.mktemp("region") / "r")


def _run(region: Path, out: Path, rounds: int, **extra) -> tuple[DirectGrid, object]:
    keys = (
        {
            "simulation-data-dir": str(region),
            "out-dir": str(out),
            "num-server-rounds": rounds,
            "min-available-nodes": 3,
            "min-train-nodes": 3,
            "seed": 1,
        }
        | TINY
        | extra
    )
    grid = DirectGrid(make_client_app(keys), {1: {"partition-id": 0}, 2: {"partition-id": 1}, 3: {"partition-id": 2}})
    with task_identity():
        result = run_federation(grid, RunConfig.from_mapping(keys), run_id=7)
    return grid, result


def test_resume_continues_at_the_next_round_from_the_saved_arrays(region: Path, tmp_path: Path):
    out = tmp_path / "run"
    _, first = _run(region, out, rounds=2)
    saved = latest_checkpoint(out / "checkpoints")
    assert saved.round == 2
    # The crash: round 3's log line was written, its checkpoint was not.
    with (out / METRICS_FILE).open("a") as f:
        f.write(json.dumps({"round": 3, "partial": True}) + "\n")

    with pytest.raises(RunConfigError, match="resume=true"):
        _run(region, out, rounds=3)  # never silently overwrite a run

    grid, _ = _run(region, out, rounds=3, resume=True)
    trained = [node for node, kind in grid.calls if kind == "train"]
    assert len(trained) == 3  # exactly one round (round 3) of training, on each node
    rounds = [json.loads(line)["round"] for line in (out / METRICS_FILE).read_text().splitlines()]
    assert rounds == [0, 1, 2, 3]
    third = latest_checkpoint(out / "checkpoints")
    assert third.round == 3

    # Round 3 trained on from round 2's arrays. Its own checkpoint, not the run's final model: that is the
    # round best on the released validation days, round 2 whenever round 3 scores worse (the noise is the OS's).
    assert not np.allclose(third.arrays["head.proj.weight"], saved.arrays["head.proj.weight"])
    # Each node's ledger holds its one source release: rounds, and the resume, charge nothing more.
    for ledger in (region / "ledgers").glob("H???.json"):
        body = json.loads(ledger.read_text())["body"]
        spends = [s for spends in body["entries"].values() for s in spends]
        assert [s["mechanism"] for s in spends] == ["source-release"], spends
