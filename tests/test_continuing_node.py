"""Issue 24: a node that keeps going. New days appended to its real source are released once, as new days only,
at no extra epsilon per patient; a late correction, a file that shrinks and a gap are handled and told.

Every test runs the real ClientApp handlers in this process over real files (a daily-count CSV,
an encounter CSV) that grow between rounds, and reads the node's ledger, release and tally back.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flwr.app import Context, RecordDict
from typer.testing import CliRunner

from medalloc.client.app import handle_evaluate
from medalloc_core.contract import ADMISSIONS, CENSUS, DATE, DISCHARGES, UNIT
from medalloc_core.forecast.models import build_model, state_arrays
from medalloc_core.privacy import continuity
from medalloc_core.privacy.contribution import PatientCaps, public_counts
from medalloc_core.privacy.ledger import PrivacyLedger
from medalloc_core.privacy.release import ReleaseStore
from tests.fed_fixtures import file_calendar, record, request, small_region, task_identity
from tests.release_node import MODEL, config
from tests.test_public_calendar import synthetic_encounters


@pytest.fixture(autouse=True)
def _identity():
    with task_identity():
        yield


@pytest.fixture(scope="module")
def daily(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """One synthetic hospital's daily counts (a contract file), 150 days."""
    folder = small_region(tmp_path_factory.mktemp("region"), hospitals=1, days=150)
    return pd.read_csv(folder / "H000.csv")


def _round(folder: Path, data: Path, extra: dict | None = None, server_round: int = 1) -> dict:
    """One evaluate round of the real ClientApp over ``data``; the reply's error or metrics."""
    folder.mkdir(parents=True, exist_ok=True)
    node = {"data-path": str(data), "ledger-path": str(folder / "ledger.json"), "privacy-epsilon-budget": 4.0}
    declared = file_calendar(data) | (extra or {})  # the file's calendar unless the test declares its own
    if "calendar-end-file" in declared:
        declared.pop("calendar-end", None)
    ctx = Context(run_id=1, node_id=5, node_config=node | declared, state=RecordDict(), run_config={})
    arrays = record(state_arrays(build_model(MODEL, seed=0)))
    reply = handle_evaluate(request(5, arrays, config(server_round), train=False), ctx)
    if reply.has_error():
        return {"error": int(reply.error.code)}
    return {"metrics": dict(reply.content.metric_records["metrics"])}


def _releases(folder: Path) -> list:
    return [s for s in PrivacyLedger.load(folder / "ledger.json").spends() if s.mechanism == "source-release"]


def _store(folder: Path) -> pd.DataFrame:
    return ReleaseStore.open(folder / "ledger.json.released.csv").frame


def _days(frame: pd.DataFrame) -> list[str]:
    return sorted(pd.to_datetime(frame[DATE]).dt.strftime("%Y-%m-%d").unique())


def _write(frame: pd.DataFrame, path: Path) -> None:
    frame.to_csv(path, index=False)


def test_appended_days_are_released_once_as_new_days_at_the_same_epsilon(tmp_path: Path, daily: pd.DataFrame):
    data, folder = tmp_path / "H.csv", tmp_path / "node"
    days = _days(daily)
    _write(daily[daily[DATE] <= days[99]], data)
    assert "metrics" in _round(folder, data)
    first = _store(folder).copy()
    ledger = PrivacyLedger.load(folder / "ledger.json")
    epsilon = ledger.epsilon_spent()
    assert _days(first) == days[:100] and len(_releases(folder)) == 1

    # Three weeks arrive: appended to the same file (bytes added at its end, as an export that grows).
    with data.open("a") as handle:
        handle.write(daily[(daily[DATE] > days[99]) & (daily[DATE] <= days[120])].to_csv(index=False, header=False))
    assert "metrics" in _round(folder, data, server_round=2)
    second = _store(folder)
    spends = _releases(folder)
    assert len(spends) == 2
    assert spends[1].days == (days[100], days[120])  # the new days only
    assert _days(second) == days[:121]
    # The first release is untouched: the same noisy values, never drawn again.
    old = second[pd.to_datetime(second[DATE]) <= pd.Timestamp(days[99])].reset_index(drop=True)
    pd.testing.assert_frame_equal(old, first.reset_index(drop=True), check_dtype=False)
    # The patient-level (here per stay) epsilon is unchanged: one Gaussian over disjoint days.
    after = PrivacyLedger.load(folder / "ledger.json")
    assert after.epsilon_spent() == pytest.approx(epsilon, abs=1e-9)
    assert spends[1].noise_multiplier == spends[0].noise_multiplier

    # A round with nothing new releases nothing and charges nothing.
    assert "metrics" in _round(folder, data, server_round=3)
    assert len(_releases(folder)) == 2


def test_a_correction_a_hole_and_a_shrinking_file_are_told_never_released_twice(tmp_path: Path, daily: pd.DataFrame):
    data, folder = tmp_path / "H.csv", tmp_path / "node"
    days = _days(daily)
    base = daily[daily[DATE] <= days[99]].copy()
    _write(base, data)
    assert "metrics" in _round(folder, data)
    released = _store(folder).copy()

    # A late correction of a released day, plus a hole: days 100..104 missing, 105..119 present. The node's declared
    # calendar now runs to day 119 (issue 20: a deployed node covers its declared days, whatever rows its file has),
    # so the hole's days are released as zeros with the rest (its log says so); the true values, when they come,
    # are corrections and never released again.
    corrected = daily[(daily[DATE] <= days[99]) | ((daily[DATE] >= days[105]) & (daily[DATE] <= days[119]))].copy()
    hit = (corrected[DATE] == days[50]) & (corrected[UNIT] == corrected[UNIT].iloc[0])
    corrected.loc[hit, ADMISSIONS] += 3
    _write(corrected, data)
    calendar = file_calendar(data)
    reply = _round(folder, data, calendar, server_round=2)
    spends = _releases(folder)
    assert len(spends) == 2 and spends[1].days == (days[100], days[119])
    store = _store(folder)
    # The corrected day keeps its released value: released once, never again.
    key = (pd.to_datetime(store[DATE]) == pd.Timestamp(days[50])) & (store[UNIT] == corrected[UNIT].iloc[0])
    before = (pd.to_datetime(released[DATE]) == pd.Timestamp(days[50])) & (released[UNIT] == corrected[UNIT].iloc[0])
    assert float(store.loc[key, ADMISSIONS].iloc[0]) == float(released.loc[before, ADMISSIONS].iloc[0])
    events = continuity.read_events(folder / "ledger.json.released.csv")
    kinds = {e["event"] for e in events}
    assert "corrected" in kinds
    words = " ".join(e["message"] for e in events)
    assert f"1 unit-day(s) between {days[50]} and {days[50]}" in words
    # The hole's true days arrive later: corrections of released days, nothing released or charged again.
    epsilon = PrivacyLedger.load(folder / "ledger.json").epsilon_spent()
    full = daily[daily[DATE] <= days[119]].copy()
    full.loc[(full[DATE] == days[50]) & (full[UNIT] == corrected[UNIT].iloc[0]), ADMISSIONS] += 3
    _write(full, data)
    assert "metrics" in _round(folder, data, calendar, server_round=3)
    assert len(_releases(folder)) == 2
    assert PrivacyLedger.load(folder / "ledger.json").epsilon_spent() == pytest.approx(epsilon, abs=1e-9)
    words = " ".join(e["message"] for e in continuity.read_events(folder / "ledger.json.released.csv"))
    assert f"and {days[104]}" in words, words
    assert reply.get("error") is None

    # The file shrinks to its first 80 days: nothing is released or charged, the released days stay.
    # (its operator moves calendar-end back with it: the file's own span, as _round declares by default)
    _write(daily[daily[DATE] <= days[79]], data)
    _round(folder, data, server_round=4)
    assert len(_releases(folder)) == 2 and _days(_store(folder)) == days[:120]
    store_path = folder / "ledger.json.released.csv"
    shrank = [e for e in continuity.read_events(store_path) if e["event"] == "vanished"]
    assert (
        shrank and "shrank" in shrank[-1]["message"] and f"between {days[80]} and {days[119]}" in shrank[-1]["message"]
    )
    # Told once: the next round over the same file adds no second line.
    _round(folder, data, server_round=5)
    assert len([e for e in continuity.read_events(store_path) if e["event"] == "vanished"]) == 1

    # medalloc privacy tells it in plain words, beside the unchanged epsilon.
    from medalloc.cli import app

    out = CliRunner().invoke(app, ["privacy", "--ledger", str(folder / "ledger.json")], terminal_width=100)
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    assert "late correction" in text and "shrank" in text


# ----------------------------------------------------------------------------- patients
CAL = {"calendar-units": "icu,medical,paediatric,surgical", "calendar-start": "2023-02-01"}


@pytest.fixture(scope="module")
def encounters() -> pd.DataFrame:
    return synthetic_encounters()


def test_patient_contributions_add_up_to_the_released_counts(encounters: pd.DataFrame):
    """The per-patient rows the tally uses are exactly the counts the node releases (same cut, same census rule)."""
    from medalloc_core.sources import DataSource
    from medalloc_core.tasks.forecasting.local import load_daily

    path = Path(pytest.importorskip("tempfile").mkdtemp()) / "H.csv"
    encounters.to_csv(path, index=False)
    records, stays = load_daily(DataSource(str(path)))
    counts, caps, rows = public_counts(records, stays, CAL | {"calendar-end": "2023-06-30"}, default_nights=14)
    assert caps == PatientCaps() and rows is not None
    summed = rows.frame.groupby([UNIT, DATE, "column"]).size().unstack(fill_value=0)
    frame = counts.frame.set_index([UNIT, DATE])
    for column in (ADMISSIONS, DISCHARGES, CENSUS):
        got = summed[column].reindex(frame.index, fill_value=0) if column in summed else 0
        np.testing.assert_array_equal(np.asarray(got), frame[column].to_numpy(), err_msg=column)
    per_patient = rows.frame.groupby([PATIENT, "column"]).size().unstack(fill_value=0)
    assert per_patient[CENSUS].max() <= caps.nights and per_patient[ADMISSIONS].max() <= caps.admissions


PATIENT = "patient_id"


def _patient_rows(stays: list[tuple[str, str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"encounter_id": f"Z-E{i}", "patient_id": p, "unit": u, "admit_time": a, "discharge_time": d}
            for i, (p, u, a, d) in enumerate(stays)
        ]
    )


def test_a_patient_over_the_caps_across_releases_is_cut_on_the_new_days(tmp_path: Path, encounters: pd.DataFrame):
    """A stay spanning the boundary and a late record of a released day: the tally keeps the union within the caps,
    the ledger's epsilon does not move, and the cut is in the staged tally and the node's words."""
    data, folder = tmp_path / "H.csv", tmp_path / "node"
    # Patient Z: a 10-night stay released in the first week (icu), then a stay spanning the boundary.
    z = _patient_rows(
        [
            ("Z", "icu", "2023-05-01T10:00", "2023-05-11T09:00"),  # 10 nights, released in release 1
            ("Z", "medical", "2023-06-25T10:00", "2023-07-06T09:00"),  # 11 nights: 5 in release 1, 6 after
        ]
    )
    base = pd.concat([encounters, z], ignore_index=True)
    _write(base, data)
    assert "metrics" in _round(folder, data, CAL | {"calendar-end": "2023-06-29"})
    store_path = folder / "ledger.json.released.csv"
    tally = json.loads((store_path.with_name(store_path.name + ".patients.json")).read_text())
    epsilon = PrivacyLedger.load(folder / "ledger.json").epsilon_spent()
    salt = tally["salt"]
    pz = continuity._pseudonyms(pd.Series(["Z"]), salt).iloc[0]
    # Release 1: Z's 10 icu nights + 4 medical nights (06-25..06-28): the cut discharges Z on 06-29 at 14 nights.
    # [admissions, discharges, census]: the node releases admissions and census (release-columns), so 0 discharges.
    assert tally["patients"][pz] == [2, 0, 14]
    # A late correction of released days: Z's icu stay really ended on 05-03 (2 nights). The whole-history cut
    # now has room for 12 more nights and keeps the medical stay to 07-06: 6 nights after 06-29 that the
    # earlier release already used up. The tally cuts them.
    corrected = base.copy()
    corrected.loc[corrected["encounter_id"].eq("Z-E0") & corrected["patient_id"].eq("Z"), "discharge_time"] = (
        "2023-05-03T09:00"
    )
    _write(corrected, data)
    assert "metrics" in _round(folder, data, CAL | {"calendar-end": "2023-07-10"}, server_round=2)
    tally = json.loads((store_path.with_name(store_path.name + ".patients.json")).read_text())
    admissions, discharges, nights = tally["patients"][pz]
    assert nights <= 14 and admissions <= 3 and discharges <= 3  # the union of both releases, within the caps
    assert (admissions, discharges, nights) == (2, 0, 14)  # no night of Z's after 06-29 was released
    events = continuity.read_events(store_path)
    cut = [e for e in events if e["event"] == "tally-cut"]
    assert cut and cut[-1]["count"] == 6
    assert any(e["event"] == "corrected" for e in events)  # the late record changed released days
    spends = _releases(folder)
    assert len(spends) == 2 and spends[1].days == ("2023-06-30", "2023-07-10")
    assert PrivacyLedger.load(folder / "ledger.json").epsilon_spent() == pytest.approx(epsilon, abs=1e-9)


def test_a_lost_tally_charges_the_new_days_apart(tmp_path: Path, encounters: pd.DataFrame):
    """Without the tally nobody knows what each patient already gave: the new days are a separate release (a
    decision on a file's presence, never on the data), and the ledger composes it: epsilon grows, within budget."""
    data, folder = tmp_path / "H.csv", tmp_path / "node"
    _write(encounters, data)
    assert "metrics" in _round(folder, data, CAL | {"calendar-end": "2023-06-29"})
    epsilon = PrivacyLedger.load(folder / "ledger.json").epsilon_spent()
    store_path = folder / "ledger.json.released.csv"
    store_path.with_name(store_path.name + ".patients.json").unlink()
    assert "metrics" in _round(folder, data, CAL | {"calendar-end": "2023-07-10"}, server_round=2)
    spends = _releases(folder)
    assert dict(spends[1].detail).get("epoch") == 1.0
    assert PrivacyLedger.load(folder / "ledger.json").epsilon_spent() > epsilon + 0.1
    assert any(e["event"] == "no-tally" for e in continuity.read_events(store_path))
