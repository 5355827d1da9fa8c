"""Issue 24: the coordinator's schedule. Each week's run starts from last week's model (``init-from``), in its own
folder; ``medalloc weekly`` picks the folder, the model to start from, or continues an unfinished week.

The federation runs in process (the real ServerApp loop and ClientApp handlers over a real
region); tests/e2e/test_weekly_cycle.py runs the same schedule against real SuperLink and
SuperNode processes.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medalloc.cli import app
from medalloc.cli.weekly import iso_week, plan_week
from medalloc.client.app import make_client_app
from medalloc.server.app import METRICS_FILE, run_federation
from medalloc.server.config import RunConfig, RunConfigError
from medalloc_core.model_io import read_model_files, resolve_model_path
from tests.fed_fixtures import TINY, DirectGrid, small_region, task_identity


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_region(tmp_path_factory.mktemp("weekly") / "region", hospitals=3, days=150)


def _week(region: Path, out: Path, **extra: object):
    keys = (
        {
            "simulation-data-dir": str(region),
            "out-dir": str(out),
            "num-server-rounds": 2,
            "min-available-nodes": 3,
            "min-train-nodes": 3,
            "seed": 1,
        }
        | TINY
        | {k.replace("_", "-"): v for k, v in extra.items()}
    )
    grid = DirectGrid(make_client_app(keys), {1: {"partition-id": 0}, 2: {"partition-id": 1}, 3: {"partition-id": 2}})
    with task_identity():
        return run_federation(grid, RunConfig.from_mapping(keys), run_id=7)


def _rounds(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]


def test_a_week_starts_from_last_weeks_model(region: Path, tmp_path: Path):
    week1, week2 = tmp_path / "week-2026-W48", tmp_path / "week-2026-W49"
    _week(region, week1)
    final = json.loads((week1 / "final_model.json").read_text())
    best = final["best-round"]
    best_loss = next(r for r in _rounds(week1) if r["round"] == best)["evaluate"]["eval-loss"]

    _week(region, week2, init_from=str(week1))
    # Week 2's round 0 scores the model it starts from on the nodes' released counts (the same release:
    # post-processing, charged once): exactly week 1's kept model.
    start = _rounds(week2)[0]
    assert start["round"] == 0
    assert start["evaluate"]["eval-loss"] == pytest.approx(best_loss, rel=1e-6)
    # A fresh start (init) scores differently: the carried model is what week 2 began from.
    fresh = tmp_path / "fresh"
    _week(region, fresh)
    assert _rounds(fresh)[0]["evaluate"]["eval-loss"] != pytest.approx(best_loss, rel=1e-6)
    _, week1_arrays = read_model_files(resolve_model_path(week1))
    assert all(np.isfinite(a).all() for a in week1_arrays.values())
    # The nodes' ledgers hold one source release each: the weekly runs charge nothing more for the same days.
    for ledger in (region / "ledgers").glob("H???.json"):
        spends = [s for ss in json.loads(ledger.read_text())["body"]["entries"].values() for s in ss]
        assert [s["mechanism"] for s in spends] == ["source-release"], spends


def test_init_from_a_model_of_another_shape_or_with_resume_is_refused(region: Path, tmp_path: Path):
    week1 = tmp_path / "week-2026-W48"
    _week(region, week1)
    with pytest.raises(RunConfigError, match="init-from .*this run asks for"):
        _week(region, tmp_path / "wide", init_from=str(week1), hidden=16)
    with pytest.raises(RunConfigError, match="set one of them"):
        RunConfig.from_mapping({"out-dir": str(week1), "resume": True, "init-from": str(week1)})
    with pytest.raises(RunConfigError, match="no such file"):
        _week(region, tmp_path / "none", init_from=str(tmp_path / "absent"))


def _finished(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("{}\n")
    (folder / "final_model.safetensors").write_bytes(b"x")


def test_the_weekly_plan_picks_the_folder_the_model_and_a_resume(tmp_path: Path):
    assert iso_week(date(2026, 12, 7)) == "2026-W50" and iso_week(date(2027, 1, 1)) == "2026-W53"
    plan = plan_week(tmp_path, "2026-W50")
    assert plan.out_dir == tmp_path / "week-2026-W50" and plan.init_from is None and not plan.resume
    _finished(tmp_path / "week-2026-W48")
    (tmp_path / "week-2026-W49").mkdir()  # a week whose run never finished is not a model to start from
    (tmp_path / "week-2026-W49" / "metrics.jsonl").write_text("{}\n")
    plan = plan_week(tmp_path, "2026-W50")
    assert plan.init_from == tmp_path / "week-2026-W48"
    assert plan.run_config("num-server-rounds=3") == (
        f"out-dir='{tmp_path / 'week-2026-W50'}' init-from='{tmp_path / 'week-2026-W48'}' num-server-rounds=3"
    )
    # The unfinished week, run again (the timer fires after a reboot): continued, not restarted.
    again = plan_week(tmp_path, "2026-W49")
    assert again.resume and again.run_config() == f"out-dir='{tmp_path / 'week-2026-W49'}' resume=true"
    assert plan_week(tmp_path, "2026-W48").done


def test_weekly_command_a_finished_week_and_bad_input(tmp_path: Path):
    _finished(tmp_path / "week-2026-W48")
    runner = CliRunner()
    done = runner.invoke(app, ["weekly", "--federation", "x", "--results", str(tmp_path), "--week", "2026-W48"])
    assert done.exit_code == 0 and "finished already" in done.output
    bad = runner.invoke(app, ["weekly", "--federation", "x", "--results", str(tmp_path), "--week", "48"])
    assert bad.exit_code == 2 and "YYYY-Www" in bad.output
    noapp = runner.invoke(
        app, ["weekly", "--federation", "x", "--results", str(tmp_path), "--week", "2026-W49", "--app", str(tmp_path)]
    )
    assert noapp.exit_code == 2 and "pyproject.toml" in noapp.output
