"""Issue 20: one gate for every node reply (allow-list, fixed refusal text), and unit names that round-trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flwr.app import Context, RecordDict

from medalloc.client.app import handle_evaluate, handle_train
from medalloc_core import protocol
from medalloc_core.contract import Frequency, UnitRecords
from medalloc_core.privacy.release import ReleasePlan, ReleaseStore, release_records
from medalloc_core.protocol import Refusal
from medalloc_core.replies import ReplyNotAllowed, check_refusal, check_reply
from tests.fed_fixtures import file_calendar, record, request, task_identity, train_metrics
from tests.test_public_calendar import CALENDAR, MODEL, _config, synthetic_encounters


@pytest.fixture(autouse=True)
def _identity():
    with task_identity():
        yield


@pytest.fixture(scope="module")
def encounters() -> pd.DataFrame:
    return synthetic_encounters()


def test_a_reply_off_the_allow_list_is_never_built():
    ok = check_reply("forecasting", "train", train_metrics(), {"w": np.zeros(2)}, {protocol.HOSPITAL_ID: "H1"})
    assert ok.metrics[protocol.NUM_EXAMPLES] == 100
    with pytest.raises(ReplyNotAllowed, match="not on the allow-list"):
        check_reply("forecasting", "train", train_metrics(**{"n-units": 3}), {"w": np.zeros(2)}, {})
    with pytest.raises(ReplyNotAllowed, match="not a finite number"):
        check_reply("forecasting", "train", train_metrics(**{protocol.TRAIN_LOSS: float("nan")}), {"w": 1}, {})
    evaluate = {
        protocol.NUM_EXAMPLES: 3,
        protocol.EVAL_LOSS: 1.0,
        protocol.EVAL_MAE: 1.0,
        protocol.EVAL_WAPE: 0.1,
        protocol.VAL_LOSS: 1.0,
        protocol.VAL_BLOCK_LOSSES: [1.0, 0.5],
    }
    assert check_reply("forecasting", "evaluate", evaluate, None, {}).metrics[protocol.VAL_BLOCK_LOSSES] == [1.0, 0.5]
    with pytest.raises(ReplyNotAllowed, match="not a list of at most"):
        check_reply("forecasting", "evaluate", evaluate | {protocol.VAL_BLOCK_LOSSES: [1.0, float("inf")]}, None, {})
    with pytest.raises(ReplyNotAllowed, match="not a finite number"):  # a public value is never a list
        check_reply("forecasting", "evaluate", evaluate | {protocol.NUM_EXAMPLES: [3]}, None, {})
    with pytest.raises(ReplyNotAllowed, match="arrays"):
        check_reply("forecasting", "evaluate", evaluate, {"w": np.zeros(2)}, {})
    with pytest.raises(ReplyNotAllowed, match="node-info"):
        check_reply("forecasting", "evaluate", evaluate, None, {"file": "/data/H1.csv"})
    with pytest.raises(ReplyNotAllowed, match="no allow-listed"):
        check_reply("no-such-task", "train", {}, None, {})


def test_a_refusal_carries_only_its_code_and_fixed_text():
    fine = check_refusal("forecasting", Refusal.DATA_INVALID, protocol.REFUSAL_REASONS[Refusal.DATA_INVALID])
    assert fine.code == Refusal.DATA_INVALID and fine.reason.startswith("data-invalid: ")
    budget = protocol.REFUSAL_REASONS[Refusal.PRIVACY_BUDGET_EXCEEDED].format(projected=1.25, budget=1)
    assert check_refusal("forecasting", Refusal.PRIVACY_BUDGET_EXCEEDED, budget).code == Refusal.PRIVACY_BUDGET_EXCEEDED
    for code, detail in [
        (Refusal.LEDGER_CORRUPT, "released counts /srv/medalloc/H1.released.csv cannot be read"),  # free text, a path
        (Refusal.REQUEST_INVALID, "the request cannot be honoured: see /srv/medalloc/node.toml"),  # a path
        (1234, protocol.REFUSAL_REASONS[Refusal.DATA_INVALID]),  # an unknown code
    ]:
        out = check_refusal("forecasting", code, detail)
        assert out.code == Refusal.NODE_ERROR and "/srv" not in out.reason and out.reason.startswith("node-error: ")


def _node(tmp: Path, data: Path, **extra) -> Context:
    node = {"data-path": str(data), "ledger-path": str(tmp / "ledger.json"), "privacy-epsilon-budget": 4.0}
    return Context(
        run_id=1, node_id=5, node_config=node | file_calendar(data) | extra, state=RecordDict(), run_config={}
    )


def _arrays():
    from medalloc_core.forecast.models import build_model, state_arrays

    return record(state_arrays(build_model(MODEL, seed=0)))


def test_an_unforeseen_exception_is_a_fixed_code_with_no_local_text(tmp_path: Path, encounters: pd.DataFrame):
    """The released counts replaced by something that breaks the windowing code: the traceback stays in the log."""
    data = tmp_path / "H.csv"
    encounters.to_csv(data, index=False)
    ctx = _node(tmp_path, data, **CALENDAR)
    first = handle_evaluate(request(5, _arrays(), _config(1), train=False), ctx)
    assert not first.has_error()
    released = tmp_path / "ledger.json.released.csv"
    frame = pd.read_csv(released)
    frame["admissions"] = frame["admissions"].astype(object)
    frame.loc[3, "admissions"] = "x/y"  # a non-number where the store expects floats
    frame.to_csv(released, index=False)
    reply = handle_train(request(5, _arrays(), _config(2)), ctx)
    assert reply.has_error()
    assert reply.error.code in (Refusal.NODE_ERROR, Refusal.LEDGER_CORRUPT, Refusal.DATA_INVALID)
    assert str(tmp_path) not in reply.error.reason and "released.csv" not in reply.error.reason


def test_an_exception_nobody_caught_goes_out_as_node_error(
    tmp_path: Path, encounters: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
):
    data = tmp_path / "H.csv"
    encounters.to_csv(data, index=False)

    def broken(*args, **kwargs):
        raise RuntimeError(f"cannot open {tmp_path}/secret-unit-ward-7.csv")

    monkeypatch.setattr("medalloc_core.tasks.forecasting.task.train_local", broken)
    reply = handle_train(request(5, _arrays(), _config(1)), _node(tmp_path, data, **CALENDAR))
    assert reply.has_error() and reply.error.code == Refusal.NODE_ERROR
    assert reply.error.reason == "node-error: " + protocol.REFUSAL_REASONS[Refusal.NODE_ERROR]


def test_unit_names_round_trip_through_the_release_store(tmp_path: Path):
    """A unit named NA (or null, or 1.0) is read back as that name: never NaN, never a number, never re-released."""
    days = pd.date_range("2024-01-01", periods=5)
    units = ["NA", "null", "1.0", "007"]
    frame = pd.DataFrame(
        {"date": np.tile(days, len(units)), "unit": np.repeat(units, len(days)), "admissions": 3, "census": 9}
    )
    records = UnitRecords(frame.sort_values(["unit", "date"]).reset_index(drop=True), Frequency.DAILY, "t", "daily")
    plan = ReleasePlan.calibrate(epsilon=1.0, delta=1e-6)
    store = ReleaseStore.open(tmp_path / "r.csv")
    store.add(release_records(records, plan), plan)
    again = ReleaseStore.open(tmp_path / "r.csv")
    assert sorted(again.frame["unit"].unique()) == sorted(units)
    assert again.missing_days(records).empty


def test_a_unit_named_na_is_served_round_after_round(tmp_path: Path, encounters: pd.DataFrame):
    data = tmp_path / "H.csv"
    encounters.assign(unit=encounters["unit"].replace({"icu": "NA"})).to_csv(data, index=False)
    ctx = _node(tmp_path, data, **(CALENDAR | {"calendar-units": "NA,medical,paediatric,surgical"}))
    for server_round in (1, 2):
        reply = handle_train(request(5, _arrays(), _config(server_round)), ctx)
        assert not reply.has_error(), reply.error.reason if reply.has_error() else ""


@pytest.mark.parametrize(
    ("proposal", "setting"),
    [
        ({protocol.MAX_STAY_DAYS: 100000}, "max-proposed-stay-days"),
        ({protocol.PATIENT_EPSILON: 0.01}, "min-release-epsilon"),
    ],
)
def test_a_proposal_that_would_fix_a_useless_plan_is_refused_naming_the_setting(
    tmp_path: Path, encounters: pd.DataFrame, proposal: dict, setting: str
):
    data = tmp_path / "H.csv"
    encounters.to_csv(data, index=False)
    reply = handle_evaluate(
        request(5, _arrays(), _config(1) | proposal, train=False), _node(tmp_path, data, **CALENDAR)
    )
    assert reply.has_error() and reply.error.code == Refusal.REQUEST_INVALID and setting in reply.error.reason
    assert not (tmp_path / "ledger.json.released.csv").exists()  # nothing released, nothing fixed for life
