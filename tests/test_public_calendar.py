"""Issue 20: everything a node sends is a function of its public calendar, released counts or the request.

Black-box: the same federation (the real ClientApp handlers, in process) over an encounter file
with and without one extra stay gives the coordinator identical replies, apart from the values
released through the DP mechanism (losses, errors). Every stay the issue names: in a unit nobody
else used, before a unit's first day, after the file's last event.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flwr.app import Context, RecordDict

from medalloc.client.app import handle_evaluate, handle_train
from medalloc_core import protocol
from medalloc_core.forecast.features import federation_window_spec
from medalloc_core.forecast.models import ForecasterConfig, build_model, state_arrays
from medalloc_core.privacy.calendar import CalendarNotDeclared, NodeCalendar, node_calendar
from medalloc_core.privacy.contribution import PatientCaps, bound_contributions
from tests.fed_fixtures import TINY, record, request, task_identity


@pytest.fixture(autouse=True)
def _identity():
    with task_identity():
        yield


SPEC = federation_window_spec(history=TINY["history"], horizon=TINY["horizon"], targets=("admissions", "census"))
MODEL = ForecasterConfig.for_spec(SPEC, model="mlp", hidden=TINY["hidden"])
CALENDAR = {
    "calendar-units": "icu,medical,paediatric,surgical",
    "calendar-start": "2023-02-01",
    "calendar-end": "2023-06-30",
}


@pytest.fixture(scope="module")
def encounters() -> pd.DataFrame:
    return synthetic_encounters()


def synthetic_encounters() -> pd.DataFrame:
    """One small synthetic hospital's stays (units icu, medical, paediatric, surgical; 2023-01-01 + 200 days)."""
    from medalloc_core.synthetic import RegionConfig, generate_region

    region = generate_region(
        RegionConfig(
            hospitals=1, days=200, seed=3, shape="encounters", short_history_fraction=0.0, min_beds=40, max_beds=60
        )
    )
    frame = region.hospitals[0].encounters
    assert frame is not None
    return frame


def _config(server_round: int) -> dict:
    return {
        protocol.SERVER_ROUND: server_round,
        protocol.LOCAL_EPOCHS: 1,
        protocol.BATCH_SIZE: 32,
        protocol.LR: 0.01,
        protocol.PROXIMAL_MU: 0.0,
        protocol.MODEL_CONFIG: json.dumps(MODEL.to_dict()),
        protocol.WINDOW_SPEC: json.dumps(SPEC.to_dict()),
        protocol.RUN_TAG: "t",
        protocol.SEED: 0,
        protocol.PRIVACY_MECHANISM: "source",
        protocol.PATIENT_EPSILON: 1.0,
        protocol.MAX_STAY_DAYS: 14,
        protocol.REPRODUCIBLE_NOISE: False,
    }


def _public_view(reply) -> dict:
    """What the coordinator sees of a reply, with every released-noise value blanked."""
    if reply.has_error():
        return {"error": reply.error.code, "reason": reply.error.reason}
    kind = "train" if protocol.ARRAYS in reply.content.array_records else "evaluate"
    allow = protocol.REPLY_ALLOW_LIST[kind]
    view: dict = {"records": sorted(list(reply.content.keys()))}
    metrics = dict(reply.content.metric_records[protocol.METRICS])
    view["metric-keys"] = sorted(metrics)
    view["public"] = {k: v for k, v in metrics.items() if allow[protocol.METRICS][k] == protocol.PUBLIC}
    view["node-info"] = dict(reply.content.config_records[protocol.NODE_INFO])
    if kind == "train":
        arrays = reply.content.array_records[protocol.ARRAYS]
        view["arrays"] = {k: tuple(a.shape) for k, a in arrays.items()}
    return view


def _federation(tmp: Path, stays: pd.DataFrame | Path, node_extra: dict) -> list[dict]:
    """Evaluate, train, evaluate: what one node answers a coordinator over two rounds (``stays``: a frame written
    as the node's CSV, or the path of its data)."""
    tmp.mkdir(parents=True)
    if isinstance(stays, Path):
        data = stays
    else:
        data = tmp / "H.csv"
        stays.to_csv(data, index=False)
    node = {"data-path": str(data), "ledger-path": str(tmp / "ledger.json"), "privacy-epsilon-budget": 4.0}
    ctx = Context(run_id=1, node_id=5, node_config=node | node_extra, state=RecordDict(), run_config={})
    arrays = record(state_arrays(build_model(MODEL, seed=0)))
    # Round 1 makes the release (evaluate first, as the ServerApp's first contact may be); round 2 reads it.
    return [
        _public_view(handle_evaluate(request(5, arrays, _config(1), train=False), ctx)),
        _public_view(handle_train(request(5, arrays, _config(1)), ctx)),
        _public_view(handle_evaluate(request(5, arrays, _config(2), train=False), ctx)),
    ]


def _stay(frame: pd.DataFrame, unit: str, admit: pd.Timestamp, nights: int, patient: str = "P-extra") -> pd.DataFrame:
    row = {c: None for c in frame.columns}
    row.update(
        encounter_id="E-extra",
        patient_id=patient,
        unit=unit,
        admit_time=admit.isoformat(),
        discharge_time=(admit + pd.Timedelta(days=nights, hours=2)).isoformat(),
    )
    return pd.concat([frame, pd.DataFrame([row])], ignore_index=True)


def _malformed(frame: pd.DataFrame, **fields: str) -> pd.DataFrame:
    """``frame`` with one extra stay whose ``fields`` break a per-record rule of the contract."""
    extra = _stay(frame, "medical", pd.to_datetime(frame["admit_time"]).min() + pd.Timedelta(days=60), 2)
    for key, value in fields.items():
        extra.loc[len(extra) - 1, key] = value
    return extra


def _extra_stays(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    times = pd.to_datetime(frame["admit_time"])
    last = max(times.max(), pd.to_datetime(frame["discharge_time"]).max())
    icu_first = times[frame["unit"] == "icu"].min()
    return {
        "a unit nobody else used": _stay(frame, "NA", times.min() + pd.Timedelta(days=40), 3),
        "before a unit's first day": _stay(frame, "icu", icu_first - pd.Timedelta(days=5), 2),
        "after the file's last event": _stay(frame, "medical", last + pd.Timedelta(days=3), 1),
        # malformed stays: left out before counting, never a refusal (one stay must not decide whether the node
        # answers); `medalloc validate` still names them (test_validate_still_names_each_malformed_stay)
        "a malformed stay: discharged before admission": _malformed(
            frame, discharge_time=(times.min() + pd.Timedelta(days=50)).isoformat()
        ),
        "a malformed stay: no patient_id": _malformed(frame, patient_id=""),
        "a malformed stay: an unreadable admit_time": _malformed(frame, admit_time="the 3rd of May"),
        "a malformed stay: a date out of range": _malformed(frame, discharge_time="9999-12-31"),
    }


def test_units_of_the_synthetic_file_are_the_declared_ones(encounters: pd.DataFrame):
    assert set(encounters["unit"].unique()) == set(CALENDAR["calendar-units"].split(","))


@pytest.fixture(scope="module")
def base_replies(encounters: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    with task_identity():
        replies = _federation(tmp_path_factory.mktemp("fed") / "without", encounters, CALENDAR)
    assert all("error" not in v for v in replies), replies  # the federation really trains and evaluates
    return replies


EXTRA = [
    "a unit nobody else used",
    "before a unit's first day",
    "after the file's last event",
    "a malformed stay: discharged before admission",
    "a malformed stay: no patient_id",
    "a malformed stay: an unreadable admit_time",
    "a malformed stay: a date out of range",
]


def test_every_extra_stay_is_tested(encounters: pd.DataFrame):
    assert list(_extra_stays(encounters)) == EXTRA


@pytest.mark.parametrize("where", EXTRA)
def test_one_extra_stay_changes_no_public_field_of_any_reply(
    tmp_path: Path, encounters: pd.DataFrame, base_replies: list[dict], where: str
):
    other = _federation(tmp_path / "with", _extra_stays(encounters)[where], CALENDAR)
    assert other == base_replies


UNDECLARED = {
    "nothing declared": {},
    "units only": {"calendar-units": CALENDAR["calendar-units"]},
    "no end": {k: v for k, v in CALENDAR.items() if k != "calendar-end"},
}


@pytest.mark.parametrize("which", list(UNDECLARED))
def test_a_deployed_node_without_a_declared_calendar_refuses_the_same_whatever_the_stays(
    tmp_path: Path, encounters: pd.DataFrame, caplog: pytest.LogCaptureFixture, which: str
):
    """No part of a deployed node's calendar comes from its stays: undeclared, it refuses (node-misconfigured),
    identically with and without each extra stay, and its own log names the missing keys with values to check."""
    declared = UNDECLARED[which]
    with caplog.at_level("ERROR"):
        base = _federation(tmp_path / "without", encounters, declared)
    assert base == [{"error": int(protocol.Refusal.NODE_MISCONFIGURED), "reason": base[0]["reason"]}] * 3
    assert base[0]["reason"].startswith("node-misconfigured")
    missing = [k for k in CALENDAR if k not in declared]
    log = "\n".join(r.getMessage() for r in caplog.records)
    assert f"({', '.join(missing)} missing)" in log, log
    assert all(f'{k}="' in log for k in missing)  # a value to check and copy, in the node's own log only
    assert "calendar" not in base[0]["reason"]  # the reply carries the fixed text, never the data's months
    for where, frame in _extra_stays(encounters).items():
        assert _federation(tmp_path / where.replace(" ", "-"), frame, declared) == base, where


def test_validate_still_names_each_malformed_stay(tmp_path: Path, encounters: pd.DataFrame):
    """The node leaves a malformed stay out; the operator's `medalloc validate` still refuses it, by row and column."""
    from medalloc_core.validation import validate_file

    for where in [w for w in EXTRA if w.startswith("a malformed stay")]:
        path = tmp_path / "H.csv"
        _extra_stays(encounters)[where].to_csv(path, index=False)
        report = validate_file(path)
        assert not report.ok, where
        row = len(encounters) + 2  # the extra stay is the last record; the header is row 1
        assert any(p.row == row and p.column for p in report.errors), (where, report.errors)


def test_a_file_with_one_stay_or_none_answers_alike(tmp_path: Path, encounters: pd.DataFrame):
    """A header without stays is zero stays, not a refusal: the only stay decides nothing the coordinator sees."""
    empty = encounters.iloc[:0]
    none = _federation(tmp_path / "none", empty, CALENDAR)
    assert all("error" not in r for r in none), none
    one = _federation(tmp_path / "one", _stay(empty, "medical", pd.Timestamp("2023-03-10 10:00"), 2), CALENDAR)
    assert one == none


@pytest.mark.parametrize("size", ["row reader", "hospital scale (SQL)"])
def test_a_malformed_omop_record_is_left_out_not_a_refusal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: str):
    """OMOP: one visit that ends before it begins, or names a care site that does not exist, is left out before
    counting (replies identical); `medalloc validate` still names it by table, record, field. At hospital scale
    (SQL_MIN_VISITS, here lowered to 0) a clean CDM is counted in SQL, and one with a flagged record is read by the
    row reader, leniently, on a node (strictly, in SQL, by `medalloc validate`)."""
    import shutil
    import sqlite3

    from medalloc_core.sources import load_node_source, omop_sql, validate_source
    from medalloc_core.synthetic import RegionConfig, generate_region, write_region

    sql_reads: list[bool] = []
    if size != "row reader":
        monkeypatch.setattr(omop_sql, "SQL_MIN_VISITS", 0)
        monkeypatch.setattr(omop_sql, "ROW_READER_MAX_VISITS", 0)  # validate explains in SQL, as at that size
        real = omop_sql.read_omop_sql

        def recorded(database, mapping, **kwargs):
            counted = real(database, mapping, **kwargs)
            sql_reads.append(counted is not None)
            return counted

        monkeypatch.setattr(omop_sql, "read_omop_sql", recorded)

    folder = tmp_path / "omop"
    region = generate_region(RegionConfig(hospitals=1, days=120, seed=7, shape="encounters", max_beds=80))
    write_region(region, folder, shape="omop")
    cdm = folder / "H000.sqlite"
    calendar = {"calendar-units": "icu,medical,paediatric,surgical", "calendar-start": "2023-01-01"}
    calendar["calendar-end"] = "2023-04-30"
    base = _federation(tmp_path / "base", cdm, calendar)
    assert all("error" not in r for r in base), base
    assert sql_reads == ([] if size == "row reader" else [True])  # the clean CDM: counted in SQL at that size
    visit = "INSERT INTO visit_occurrence (visit_occurrence_id, person_id, visit_concept_id, visit_start_date, "
    visit += "visit_start_datetime, visit_end_date, visit_end_datetime, visit_type_concept_id, care_site_id) VALUES "
    for name, values in {
        "ends before it begins": "(99000001, 99000001, 9201, '2023-03-10', '2023-03-10 10:00:00', '2023-03-01', "
        "'2023-03-01 10:00:00', 32817, 1)",
        "an unknown care site": "(99000002, 99000002, 9201, '2023-03-10', '2023-03-10 10:00:00', '2023-03-12', "
        "'2023-03-12 10:00:00', 32817, 4242)",
        "no person": "(99000003, NULL, 9201, '2023-03-10', '2023-03-10 10:00:00', '2023-03-12', "
        "'2023-03-12 10:00:00', 32817, 1)",
    }.items():
        bad = tmp_path / name.replace(" ", "-") / "H000.sqlite"
        bad.parent.mkdir()
        shutil.copy(cdm, bad)
        with sqlite3.connect(bad) as connection:
            connection.execute(visit + values)
        assert not validate_source(bad).ok, name  # the operator's check stays strict
        del sql_reads[:]
        assert _federation(tmp_path / f"{name[:8]}-fed", bad, calendar) == base, name
        if size != "row reader":
            # a stay's own problem is left out in SQL; a record without a person goes to the row reader, leniently
            assert sql_reads == [name != "no person"], (name, sql_reads)
            records, _, left_out = load_node_source(bad)
            monkeypatch.setattr(omop_sql, "SQL_MIN_VISITS", 10**9)
            by_rows, _, by_rows_left_out = load_node_source(bad)
            monkeypatch.setattr(omop_sql, "SQL_MIN_VISITS", 0)
            assert left_out == by_rows_left_out == {"of visit_occurrence or visit_detail": 1}, name
            pd.testing.assert_frame_equal(records.frame, by_rows.frame, check_dtype=False)


MALFORMED = [w for w in EXTRA if w.startswith("a malformed stay")]


@pytest.mark.parametrize("where", [*MALFORMED, "after the file's last event"])
def test_an_encounter_file_read_by_the_engine_leaves_a_malformed_stay_out_too(
    tmp_path: Path,
    encounters: pd.DataFrame,
    base_replies: list[dict],
    monkeypatch: pytest.MonkeyPatch,
    where: str,
):
    """A hospital-scale encounter file (over ENGINE_MIN_BYTES, here lowered to 0) is read by the DuckDB engine into
    the node's count cache: a malformed stay is left out there too (in the engine), so the replies are the ones the
    validator's reading of the file without it gives; the production path is the one taken (engine, lenient, the
    count cache beside the ledger)."""
    import medalloc_core.sources as sources
    from medalloc_core.sources import encounter_scan

    monkeypatch.setattr(sources, "ENGINE_MIN_BYTES", 0)
    calls: list[dict] = []
    real = encounter_scan.scan_encounter_file

    def recorded(path: Path, settings, **kwargs):
        calls.append(kwargs)
        return real(path, settings, **kwargs)

    monkeypatch.setattr(encounter_scan, "scan_encounter_file", recorded)
    other = _federation(tmp_path / "with", _extra_stays(encounters)[where], CALENDAR)
    assert calls and all(c == {"lenient": True} for c in calls), calls
    assert (tmp_path / "with" / "ledger.json.counts" / "state.json").is_file()
    assert other == base_replies
    if where in MALFORMED:  # `medalloc validate` reads the same file strictly and names the stay's row
        from medalloc_core.sources import validate_source

        report = validate_source(tmp_path / "with" / "H.csv")
        assert not report.ok and any(p.row == len(encounters) + 2 and p.column for p in report.errors), where


def _fhir_encounter(**changes) -> dict:
    """One inpatient Encounter of the synthetic FHIR hospital's shape (medical, 2023-03-07 .. 03-12), changed."""
    period = {"start": "2023-03-07T14:02:00+00:00", "end": "2023-03-12T15:17:00+00:00"}
    encounter = {
        "resourceType": "Encounter",
        "id": "extra-1",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": {"reference": "Patient/X-extra"},
        "period": dict(period),
        "location": [
            {
                "location": {"reference": "Location/h000-unit-1", "display": "medical"},
                "status": "completed",
                "period": dict(period),
            }
        ],
    }
    for key, value in changes.items():
        if value is None:
            del encounter[key]
        else:
            encounter[key] = value
    return encounter


#: Malformed FHIR records (an NDJSON line each): the scan flags them, a node leaves them out.
FHIR_MALFORMED = {
    "ends before it begins": json.dumps(
        _fhir_encounter(
            period={"start": "2023-03-07T14:02:00+00:00", "end": "2023-03-01T10:00:00+00:00"},
            location=[
                {
                    "location": {"reference": "Location/h000-unit-1", "display": "medical"},
                    "period": {"start": "2023-03-07T14:02:00+00:00", "end": "2023-03-01T10:00:00+00:00"},
                }
            ],
        )
    ),
    "no subject": json.dumps(_fhir_encounter(subject=None)),
    "an unreadable start": json.dumps(_fhir_encounter(period={"start": "the 3rd of May"})),
    "an element FHIR does not have": json.dumps(_fhir_encounter(colour="blue")),
    "a line that is not JSON": '{"resourceType": "Encounter", "id": "extra-1", "period": {"start": ',
}


def test_a_malformed_fhir_record_is_left_out_not_a_refusal(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """A FHIR export (Bulk NDJSON and a Bundle) read by the engine into the node's count cache: one malformed
    Encounter (or a line that is not JSON) is left out before counting, in the engine, and counted by reason in the
    node's log, never named; the replies are those without it. A well-formed extra stay does change the counts (the
    check can fail), and `medalloc validate` still refuses the malformed record, naming its line."""
    import shutil

    from medalloc_core.sources import DataSource, load_node_source, validate_source
    from medalloc_core.synthetic import RegionConfig, generate_region, write_region

    region = generate_region(RegionConfig(hospitals=1, days=120, seed=7, shape="encounters", max_beds=80))
    write_region(region, tmp_path / "ndjson", shape="fhir")
    write_region(region, tmp_path / "bundle", shape="fhir", fmt="bundle")
    export, bundle = tmp_path / "ndjson" / "H000.fhir", tmp_path / "bundle" / "H000.fhir.json"
    assert (export / "Encounter.ndjson").is_file() and bundle.is_file()
    calendar = {"calendar-units": "icu,medical,paediatric,surgical", "calendar-start": "2023-01-01"}
    calendar["calendar-end"] = "2023-04-30"
    base = _federation(tmp_path / "base", export, calendar)
    assert all("error" not in r for r in base), base
    counts = load_node_source(DataSource(str(export)))[0].frame

    def with_line(name: str, line: str) -> Path:
        folder = tmp_path / name.replace(" ", "-") / export.name  # the node's hospital id is the export's name
        shutil.copytree(export, folder)
        with (folder / "Encounter.ndjson").open("a") as handle:
            handle.write(line + "\n")
        return folder

    well_formed = load_node_source(DataSource(str(with_line("well formed", json.dumps(_fhir_encounter())))))[0]
    assert not well_formed.frame.equals(counts)  # the extra Encounter is a stay the node would count
    for name, line in FHIR_MALFORMED.items():
        bad = with_line(name, line)
        report = validate_source(bad)  # the operator's check stays strict and names the line
        last_line = len((bad / "Encounter.ndjson").read_text().splitlines())
        assert not report.ok and any(p.row == last_line for p in report.errors), (name, report.errors[:3])
        caplog.clear()
        with caplog.at_level("WARNING", logger="medalloc_core.validation"):  # `simulate` quiets it
            assert _federation(tmp_path / f"{name[:10]}-fed", bad, calendar) == base, name
        logged = [r.getMessage() for r in caplog.records if "left out before counting" in r.getMessage()]
        assert logged and logged[0].split(": ", 1)[1].startswith("1 malformed record(s) left out"), (name, logged)
        assert "extra-1" not in "\n".join(r.getMessage() for r in caplog.records)  # counted, never named
    # a Bundle: one more entry whose Encounter has no subject
    document = json.loads(bundle.read_text())
    document["entry"].append({"fullUrl": "urn:uuid:extra", "resource": _fhir_encounter(subject=None)})
    bad_bundle = tmp_path / "bad-bundle" / "H000.fhir.json"
    bad_bundle.parent.mkdir()
    bad_bundle.write_text(json.dumps(document))
    assert not validate_source(bad_bundle).ok
    assert _federation(tmp_path / "bundle-fed", bad_bundle, calendar) == _federation(
        tmp_path / "bundle-base", bundle, calendar
    )


def _daily_variants(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """A daily-count file and the same file with one more stay's counts where its own rows end or in a new unit."""
    last = pd.to_datetime(frame["date"]).max()
    row = {"admissions": 1, "discharges": 0, "census": 1, "capacity": 10}
    return {
        "a unit nobody else used": pd.concat(
            [frame, pd.DataFrame([{"date": frame["date"].iloc[40], "unit": "NA"} | row])], ignore_index=True
        ),
        "after the file's last day": pd.concat(
            [frame, pd.DataFrame([{"date": f"{last + pd.Timedelta(days=1):%Y-%m-%d}", "unit": "medical"} | row])],
            ignore_index=True,
        ),
    }


@pytest.fixture(scope="module")
def daily(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    from tests.fed_fixtures import small_region

    region = small_region(tmp_path_factory.mktemp("daily") / "r", hospitals=1, days=150)
    return pd.read_csv(region / "H000.csv", keep_default_na=False)


def test_a_daily_count_file_is_on_its_declared_calendar_too(
    tmp_path: Path, daily: pd.DataFrame, caplog: pytest.LogCaptureFixture
):
    """Its own rows are no more public than a stay file's (an export may skip a unit's empty days): undeclared, a
    deployed node refuses the same with or without an extra row and names the keys; declared, one more row where
    the file ends or in a new unit changes no public field of any reply."""
    with caplog.at_level("ERROR"):
        base = _federation(tmp_path / "undeclared", daily, {})
    assert base == [{"error": int(protocol.Refusal.NODE_MISCONFIGURED), "reason": base[0]["reason"]}] * 3
    log = "\n".join(r.getMessage() for r in caplog.records)
    assert "(calendar-units, calendar-start, calendar-end missing)" in log
    assert 'calendar-start="2023-01-01" calendar-end="2023-04-30"' in log  # the file's whole months, to check
    for where, frame in _daily_variants(daily).items():
        assert _federation(tmp_path / f"undeclared-{where[:6]}", frame, {}) == base, where
    declared = {
        "calendar-units": ",".join(sorted(daily["unit"].unique())),
        "calendar-start": str(daily["date"].min()),
        "calendar-end": str(daily["date"].max()),
    }
    replies = _federation(tmp_path / "declared", daily, declared)
    assert all("error" not in r for r in replies), replies
    for where, frame in _daily_variants(daily).items():
        assert _federation(tmp_path / f"declared-{where[:6]}", frame, declared) == replies, where


def test_a_simulated_nodes_calendar_is_whole_months_of_its_data_and_says_it_is_not_public(
    tmp_path: Path, encounters: pd.DataFrame, caplog: pytest.LogCaptureFixture
):
    """Research keeps the derived calendar (inward whole months) and logs that it is NOT public."""
    from medalloc_core.contract import Frequency, UnitRecords
    from medalloc_core.encounters import encounters_to_daily
    from medalloc_core.privacy.contribution import public_records

    frame = encounters.assign(
        admit_time=pd.to_datetime(encounters["admit_time"]), discharge_time=pd.to_datetime(encounters["discharge_time"])
    )
    records = UnitRecords(encounters_to_daily(frame), Frequency.DAILY, "t", "encounters")
    with caplog.at_level("WARNING"):
        public, caps = public_records(records, frame, {}, default_nights=14, research=True)
    assert caps == PatientCaps()
    days = public.frame["date"]
    assert days.min().day == 1 and days.max().is_month_end
    assert days.min() >= frame["admit_time"].min() and sorted(public.frame["unit"].unique()) == sorted(
        frame["unit"].unique()
    )
    assert "NOT public" in caplog.text
    with pytest.raises(CalendarNotDeclared, match="calendar-units, calendar-start, calendar-end"):
        public_records(records, frame, {}, default_nights=14)  # the default is a deployed node


def test_the_old_calendar_leaked_num_examples(tmp_path: Path, encounters: pd.DataFrame):
    """The leak this fixes, measured on the file of the test above: without the calendar, one stay moved the count."""
    from medalloc_core.encounters import encounters_to_daily

    before = encounters_to_daily(encounters)
    after = encounters_to_daily(_extra_stays(encounters)["a unit nobody else used"])
    assert len(after) > len(before)


def test_month_rounding_is_inward_and_declared_parts_win():
    cal = node_calendar(
        {"calendar-units": "b,a"},
        first_event=pd.Timestamp("2023-01-17 10:00"),
        last_event=pd.Timestamp("2023-06-03"),
        data_units=["x"],
        research=True,
    )
    assert cal == NodeCalendar(("a", "b"), pd.Timestamp("2023-02-01"), pd.Timestamp("2023-05-31"), declared=False)
    cal = node_calendar(
        CALENDAR, first_event=pd.Timestamp("2020-01-01"), last_event=pd.Timestamp("2030-01-01"), data_units=["x"]
    )
    assert cal.declared and cal.start == pd.Timestamp("2023-02-01")
    assert cal.units == ("icu", "medical", "paediatric", "surgical")
    with pytest.raises(CalendarNotDeclared, match=r'calendar-start="2023-02-01" calendar-end="2023-05-31"'):
        node_calendar(
            {"calendar-units": "b,a"},
            first_event=pd.Timestamp("2023-01-17 10:00"),
            last_event=pd.Timestamp("2023-06-03"),
            data_units=["x"],
        )


# ------------------------------------------------------------------ per-patient bounding
def _frame(rows: list[tuple[str, str, str, str | None]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["patient_id", "unit", "admit_time", "discharge_time"]).assign(
        admit_time=lambda f: pd.to_datetime(f["admit_time"]),
        discharge_time=lambda f: pd.to_datetime(f["discharge_time"]),
    )


START, END = pd.Timestamp("2023-01-01"), pd.Timestamp("2023-12-31")


def test_bounding_cuts_stays_transfers_and_nights_and_logs_counts_only(caplog: pytest.LogCaptureFixture):
    stays = _frame(
        [
            ("p1", "A", "2023-01-02 08:00", "2023-01-05 10:00"),  # stay 1
            ("p1", "B", "2023-01-05 10:00", "2023-01-09 10:00"),  # transfer 1
            ("p1", "A", "2023-01-09 12:00", "2023-01-10 10:00"),  # transfer 2: over the cap
            ("p1", "A", "2023-02-01 08:00", "2023-03-30 10:00"),  # stay 2: nights cut to 14 - 7 = 7
            ("p1", "A", "2023-05-01 08:00", "2023-05-02 10:00"),  # stay 3: over the cap
            ("p2", "A", "2023-01-02 08:00", None),  # open: 14 nights
        ]
    )
    with caplog.at_level("INFO"):
        kept, cut = bound_contributions(
            stays, PatientCaps(stays=2, transfers=1, nights=14), units=["A", "B"], start=START, end=END
        )
    assert cut["transfers over max-patient-transfers"] == 1 and cut["stays over max-patient-stays"] == 1
    p1 = kept[kept["patient_id"] == "p1"].reset_index(drop=True)
    assert len(p1) == 3 and p1.loc[2, "discharge_time"] == pd.Timestamp("2023-02-08")
    p2 = kept[kept["patient_id"] == "p2"].iloc[0]
    assert p2["discharge_time"] == pd.Timestamp("2023-01-16")
    assert "p1" not in caplog.text and "2023" not in caplog.text


def test_every_patient_after_bounding_fits_the_sensitivity_bound():
    """Random patients: after the cut, each changes <= stays+transfers admission/discharge counts and <= nights census
    counts, each by at most 1 (the L2 bound the noise is calibrated to)."""
    from medalloc_core.encounters import encounters_to_daily

    rng = np.random.default_rng(0)
    rows = []
    for p in range(40):
        t = pd.Timestamp("2023-01-01") + pd.Timedelta(hours=int(rng.integers(0, 24 * 300)))
        for _ in range(int(rng.integers(1, 8))):
            end = t + pd.Timedelta(hours=int(rng.integers(0, 24 * 20)))
            rows.append((f"p{p}", str(rng.choice(["A", "B"])), t.isoformat(), end.isoformat()))
            t = end if rng.random() < 0.5 else end + pd.Timedelta(hours=int(rng.integers(-30, 24 * 30)))
    stays = _frame(rows)
    caps = PatientCaps(stays=2, transfers=1, nights=10)
    kept, _ = bound_contributions(stays, caps, units=["A", "B"], start=START, end=END)
    for patient, own in kept.groupby("patient_id"):
        daily = encounters_to_daily(own.assign(discharge_time=own["discharge_time"]), end=END)
        daily = daily[(daily["date"] >= START) & (daily["date"] <= END)]
        assert daily[["admissions", "discharges", "census"]].max().max() <= 1, patient
        assert daily["admissions"].sum() <= caps.admissions and daily["discharges"].sum() <= caps.admissions
        assert daily["census"].sum() <= caps.nights, patient


def test_issue_figures_under_the_old_per_stay_rule_and_the_new_per_patient_plan():
    from medalloc_core.privacy.contribution import contribution_epsilon, group_epsilons
    from medalloc_core.privacy.release import ReleasePlan

    old = ReleasePlan.calibrate(epsilon=1.0, delta=1e-6, max_stay_days=14, columns=("admissions", "census"))
    eps = lambda a, n: contribution_epsilon(old.noise_sd, 1e-6, admissions=a, nights=n)  # noqa: E731
    assert eps(2, 14) == pytest.approx(1.0, abs=1e-3)  # one stay: the headline
    assert eps(4, 14) == pytest.approx(1.18, abs=0.005)  # 2 stays x 7 nights, a transfer each
    assert eps(10, 5) == pytest.approx(1.47, abs=0.005)  # 5 one-night stays
    assert eps(12, 0) == pytest.approx(1.53, abs=0.005)  # 12 zero-night visits
    assert eps(3, 14) == pytest.approx(1.09, abs=0.005)  # ED -> ICU -> ward
    assert eps(5, 14) == pytest.approx(1.27, abs=0.01)  # four transfers (1.265)
    clinic = ReleasePlan.calibrate(epsilon=1.0, delta=1e-6, max_stay_days=14, columns=("admissions",))
    assert [round(v, 2) for v in group_epsilons(clinic.noise_sd, 1e-6, stays=(2, 5, 10)).values()] == [1.45, 2.40, 3.52]
    # Per patient: calibrated to the caps, the worst patient the caps allow is at the headline exactly.
    caps = PatientCaps()
    z = old.noise_multiplier
    new = ReleasePlan.from_noise_multiplier(
        z, delta=1e-6, max_stay_days=caps.nights, columns=("admissions", "census"), max_admissions=caps.admissions
    )
    assert contribution_epsilon(new.noise_sd, 1e-6, admissions=caps.admissions, nights=caps.nights) == pytest.approx(
        1.0, abs=1e-3
    )
    assert contribution_epsilon(new.noise_sd, 1e-6, admissions=4, nights=14) > 1.0  # beyond the caps: not covered


# ------------------------------------------------------------------ the coordinator's round log
def _round_log(tmp: Path, files: dict[str, pd.DataFrame]) -> list[dict]:
    """A two-round federation (the real ServerApp loop, the real ClientApp) over these hospitals' encounter files;
    the coordinator's metrics.jsonl with every released-noise value (losses, errors, update norms) blanked."""
    from medalloc.client.app import make_client_app
    from medalloc.server.app import METRICS_FILE, run_federation
    from medalloc.server.config import RunConfig
    from medalloc.simulations.local_grid import LocalGrid
    from tests.fed_fixtures import TINY

    tmp.mkdir(parents=True)
    configs = {}
    for i, (hospital, frame) in enumerate(files.items(), start=1):
        data = tmp / f"{hospital}.csv"
        frame.to_csv(data, index=False)
        configs[i] = {
            "data-path": str(data),
            "ledger-path": str(tmp / f"{hospital}-ledger.json"),
            "privacy-epsilon-budget": 4.0,
        } | CALENDAR
    keys = {
        "out-dir": str(tmp / "out"),
        "num-server-rounds": 2,
        "min-available-nodes": len(files),
        "min-train-nodes": len(files),
        "task": "forecasting",
        "targets": "admissions,census",
    } | TINY
    with task_identity():
        run_federation(LocalGrid(make_client_app(), configs), RunConfig.from_mapping(keys), run_id=7)
    rows = [json.loads(line) for line in (tmp / "out" / METRICS_FILE).read_text().splitlines()]

    def public(metrics: dict) -> dict:
        # num-examples(-total), num-nodes, epsilon*: public; losses and errors: released noise
        return {k: (v if k.startswith("num-") or "epsilon" in k else "noise") for k, v in metrics.items()}

    for row in rows:
        row.pop("time", None)
        row.pop("seconds", None)
        row["train"] = public(row.get("train") or {})
        row["evaluate"] = public(row.get("evaluate") or {})
        for outcome in row.get("outcomes") or []:
            if "update-norm" in outcome:
                outcome["update-norm"] = "noise"
        row["outcomes"] = sorted(row.get("outcomes") or [], key=lambda o: str(o.get("node")))  # arrival order
    return rows


@pytest.fixture(scope="module")
def base_round_log(encounters: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    log = _round_log(tmp_path_factory.mktemp("rounds") / "without", {"H0": encounters, "H1": encounters})
    trained = [r for r in log if r["round"] > 0]
    assert [r["round"] for r in trained] == [1, 2] and all(r["nodes"].get("accepted") == 2 for r in trained), log
    return log


@pytest.mark.parametrize(
    "where", ["a unit nobody else used", "after the file's last event", "a malformed stay: no patient_id"]
)
def test_one_extra_stay_changes_nothing_in_the_coordinators_round_log(
    tmp_path: Path, encounters: pd.DataFrame, base_round_log: list[dict], where: str
):
    """The coordinator's own record of the run (round outcomes, node counts, num-examples, epsilon, metric keys) is
    the same with and without one patient's stay at one hospital."""
    other = _round_log(tmp_path / "with", {"H0": encounters, "H1": _extra_stays(encounters)[where]})
    assert other == base_round_log
