"""Issue 20: a second full budget on the same patients is refused however the ledger is re-pointed."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from medalloc.client.app import handle_evaluate
from medalloc_core.forecast.models import build_model, state_arrays
from medalloc_core.privacy.node_state import LedgerResetDetected
from medalloc_core.privacy.source_registry import check_source_ledger, registry_path
from medalloc_core.protocol import Refusal
from tests.fed_fixtures import record, request, task_identity
from tests.test_public_calendar import CALENDAR, MODEL, _config, synthetic_encounters


@pytest.fixture(autouse=True)
def _identity():
    with task_identity():
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "H.csv"
    synthetic_encounters().to_csv(path, index=False)
    return path


def _evaluate(data: Path, ledger: Path, **extra):
    node = {"data-path": str(data), "ledger-path": str(ledger), "privacy-epsilon-budget": 4.0} | CALENDAR | extra
    ctx = Context(run_id=1, node_id=5, node_config=node, state=RecordDict(), run_config={})
    arrays = record(state_arrays(build_model(MODEL, seed=0)))
    return handle_evaluate(request(5, arrays, _config(1), train=False), ctx)


def test_a_ledger_in_a_new_folder_or_under_a_new_hospital_id_is_refused(tmp_path: Path, data: Path):
    (tmp_path / "a").mkdir()
    first = _evaluate(data, tmp_path / "a" / "ledger.json")
    assert not first.has_error()
    (tmp_path / "b").mkdir()
    moved = _evaluate(data, tmp_path / "b" / "ledger.json")  # its own node-state file beside it: empty
    assert moved.has_error() and moved.error.code == Refusal.LEDGER_RESET_DETECTED
    renamed = _evaluate(data, tmp_path / "b" / "ledger2.json", **{"hospital-id": "H-new"})
    assert renamed.has_error() and renamed.error.code == Refusal.LEDGER_RESET_DETECTED
    assert not (tmp_path / "b" / "ledger.json.released.csv").exists()
    again = _evaluate(data, tmp_path / "a" / "ledger.json")  # the recorded ledger still serves
    assert not again.has_error()


def test_deleted_release_files_are_refused_not_released_again(tmp_path: Path, data: Path):
    ledger = tmp_path / "ledger.json"
    assert not _evaluate(data, ledger).has_error()
    released = tmp_path / "ledger.json.released.csv"
    released.unlink()
    released.with_name(released.name + ".json").unlink()
    reply = _evaluate(data, ledger)
    assert reply.has_error() and reply.error.code == Refusal.LEDGER_CORRUPT
    assert not released.exists()


def test_share_on_a_fresh_ledger_path_is_refused(tmp_path: Path, data: Path):
    """`medalloc share` calls the same check with its --ledger (medalloc/cli/share.py)."""
    check_source_ledger(str(data), tmp_path / "node.json", "id-1")
    with pytest.raises(LedgerResetDetected, match="already spends from"):
        check_source_ledger(str(data), tmp_path / "fresh.json", "id-2")
    check_source_ledger(str(data), tmp_path / "node.json", "id-1")
    assert registry_path().exists() and not str(registry_path()).startswith(str(Path.home()))


def test_medalloc_privacy_says_per_stay_for_daily_counts_and_per_patient_for_stays(tmp_path: Path, data: Path):
    from typer.testing import CliRunner

    from medalloc.cli import app
    from medalloc_core.encounters import encounters_to_daily
    from tests.test_public_calendar import synthetic_encounters

    daily = tmp_path / "daily.csv"
    frame = encounters_to_daily(synthetic_encounters())
    frame.assign(date=frame["date"].dt.strftime("%Y-%m-%d")).to_csv(daily, index=False)
    (tmp_path / "d").mkdir()
    (tmp_path / "p").mkdir()
    assert not _evaluate(daily, tmp_path / "d" / "ledger.json").has_error()
    assert not _evaluate(data, tmp_path / "p" / "ledger.json").has_error()
    runner = CliRunner()
    per_stay = runner.invoke(app, ["privacy", "--ledger", str(tmp_path / "d" / "ledger.json")], env={"COLUMNS": "200"})
    assert per_stay.exit_code == 0 and "per STAY" in per_stay.output and "k=2: 1.18" in per_stay.output
    per_patient = runner.invoke(
        app, ["privacy", "--ledger", str(tmp_path / "p" / "ledger.json")], env={"COLUMNS": "200"}
    )
    assert per_patient.exit_code == 0 and "per STAY" not in per_patient.output


def test_share_on_the_daily_file_validate_writes_spends_from_the_nodes_ledger(tmp_path: Path, data: Path):
    """hospital.md's flow: the node spends on its source; `medalloc validate --daily-out` writes the daily file that
    `medalloc share --data` reads. A fresh --ledger on that file is the same patients' second budget: refused."""
    from typer.testing import CliRunner

    from medalloc.cli import app
    from medalloc_core.privacy.ledger import PrivacyLedger

    (tmp_path / "node").mkdir()
    node_ledger = tmp_path / "node" / "ledger.json"
    assert not _evaluate(data, node_ledger).has_error()
    runner = CliRunner()
    daily = tmp_path / "daily.csv"
    written = runner.invoke(app, ["validate", str(data), "--daily-out", str(daily)], env={"COLUMNS": "200"})
    assert written.exit_code == 0, written.output
    forecast = tmp_path / "forecast.csv"
    forecast.write_text(
        "hospital,unit,date,target,q,value\n"
        + "".join(f"H,icu,2023-07-0{d},census,{q},{v}\n" for d in (1, 2) for q, v in ((0.1, 3), (0.5, 5), (0.9, 8)))
    )
    args = ["share", "--forecast", str(forecast), "--data", str(daily), "--epsilon", "0.3"]
    fresh = runner.invoke(
        app,
        [*args, "--ledger", str(tmp_path / "fresh.json"), "--epsilon-budget", "4", "--out", str(tmp_path / "a.csv")],
        env={"COLUMNS": "200"},
    )
    assert fresh.exit_code == 2 and "already spends from" in fresh.output, fresh.output
    assert not (tmp_path / "a.csv").exists()
    own = runner.invoke(app, [*args, "--ledger", str(node_ledger), "--out", str(tmp_path / "b.csv")])
    assert own.exit_code == 0, own.output
    assert [s.mechanism for s in PrivacyLedger.load(node_ledger).spends()] == ["source-release", "share"]
