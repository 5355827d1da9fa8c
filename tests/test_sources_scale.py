"""Sources at hospital scale: the engine path gives what the record-by-record readers give, hostile sources are refused.

The scan engine (DuckDB) reads encounter files and FHIR exports; what it loads must equal
what the contract's own validator and the fhir.resources reader load, and what it refuses
must be named in the same words (file, line or row, record, field). Hostile sources — a
line far over the limit, a flood of tiny invalid records, a database that never answers, an
SQLite file whose values explode — end in a clear error, never a hang or a traceback.
Speed and memory at 0.1-10 million encounters are measured by
``python -m simulations.benchmarks.sources``, not asserted here.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from medalloc_core.sources import DataSource, encounter_scan, load_source, validate_source
from medalloc_core.sources.bundle_stream import entry_array, split_bundle
from medalloc_core.sources.fhir import EXPLAINED, MAX_LINE_BYTES
from medalloc_core.sources.mapping import EngineSettings, MappingError, SourceMapping
from medalloc_core.sources.omop import _sqlite_connection
from medalloc_core.sources.synthetic import create_omop_database
from medalloc_core.validation import inspect_file
from tests.source_fixtures import fhir_resources, write_ndjson
from tests.source_fixtures import omop_tables as fixture_tables

STAYS = """encounter_id,patient_id,unit,admit_time,discharge_time,admission_source
E1001,P-83121,ED,2025-01-01 08:12,2025-01-01 13:40,emergency

E1002,P-83121,ICU,2025-01-01 13:40,2025-01-03 10:05,transfer
E1003,P-51877,MED-2,2025-01-01 22:30,,elective
E1004,P-51877,ICU,2025-01-02T09:00:00,2025-01-02 10:00,transfer
"""


# ---------------------------------------------------------------------- encounter files through the engine
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_the_engine_loads_an_encounter_file_as_the_contract_reader_does(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"stays.{fmt}"
    path.write_text(STAYS)
    if fmt == "parquet":
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        path = tmp_path / "stays.parquet"
        frame.to_parquet(path, index=False)
    scanned = encounter_scan.scan_encounter_file(path, EngineSettings())
    assert scanned is not None, "an encounter file must be read by the engine"
    report, records, stays = scanned
    expected_report, expected_records = inspect_file(path)
    assert records is not None and expected_records is not None
    pd.testing.assert_frame_equal(records.frame, expected_records.frame, check_dtype=False)
    assert [str(p) for p in report.problems] == [str(p) for p in expected_report.problems]
    (warning,) = report.warnings  # E1004 begins while E1003 (open) is still open
    assert f"row {6 if fmt == 'csv' else 5}" in str(warning)  # the blank line counts in a CSV's rows
    for key in ("rows", "encounters", "open_stays", "units", "date_start", "date_end", "columns_ignored"):
        assert report.summary[key] == expected_report.summary[key], key
    assert stays is not None and list(stays["patient_id"]) == ["P-83121", "P-83121", "P-51877", "P-51877"]
    data = load_source(path)
    assert data.stays is not None and len(data.stays) == 4


def test_a_parquet_file_goes_to_the_engine_by_its_rows_not_its_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import medalloc_core.sources as sources

    csv = tmp_path / "stays.csv"
    csv.write_text(STAYS)
    path = tmp_path / "stays.parquet"
    pd.read_csv(csv, dtype=str, keep_default_na=False).to_parquet(path, index=False)
    calls: list[Path] = []
    real = encounter_scan.scan_encounter_file

    def recorded(p: Path, settings: EngineSettings, **kwargs: bool) -> object:
        calls.append(p)
        return real(p, settings, **kwargs)

    monkeypatch.setattr(encounter_scan, "scan_encounter_file", recorded)
    load_source(path)
    assert calls == []  # 4 rows, a few hundred bytes: the contract's reader
    monkeypatch.setattr(sources, "ENGINE_MIN_PARQUET_ROWS", 3)  # (compressed: a million stays is 19 MB)
    data = load_source(path)
    assert calls == [path] and data.stays is not None and len(data.stays) == 4
    load_source(csv)  # a CSV is judged by its bytes
    assert calls == [path]


def test_a_flagged_file_is_explained_in_the_contract_readers_words(tmp_path: Path) -> None:
    path = tmp_path / "stays.csv"
    path.write_text(STAYS.replace("E1003,P-51877", "E1002,P-51877").replace("2025-01-02T09:00:00", "02/01/2025"))
    report = validate_source(path)
    assert [str(p) for p in report.errors] == [str(p) for p in inspect_file(path)[0].errors]


def test_a_file_too_big_for_the_contract_reader_is_explained_by_the_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(encounter_scan, "MAX_FILE_BYTES", 0)  # every file is "big"
    rows = [f"E{i},P{i},ICU,2025-01-01 08:00,2024-12-31 08:00" for i in range(120)]
    path = tmp_path / "stays.csv"
    path.write_text("encounter_id,patient_id,unit,admit_time,discharge_time\n" + "\n".join(rows) + "\nE0,P,ICU,x,\n")
    errors = [str(p) for p in validate_source(path).errors]
    assert (
        f"error: {path}, row 2, column 'discharge_time': discharge 2024-12-31 08:00 is before admission "
        "2025-01-01 08:00; expected discharge at or after admit_time"
    ) in errors
    assert (
        f"error: {path}, column 'discharge_time': ... and 70 more row(s) with the same problem (not listed)" in errors
    )
    assert any("row 122, column 'admit_time': 'x' is not a valid date" in e for e in errors)
    assert any("row 122, column 'encounter_id': duplicate encounter_id 'E0', first at row 2" in e for e in errors)


# ---------------------------------------------------------------------- FHIR: hostile exports
def test_a_line_far_over_the_limit_is_refused_by_line_and_size(tmp_path: Path) -> None:
    folder = write_ndjson(fhir_resources(), tmp_path / "export")
    with (folder / "Encounter.ndjson").open("a") as handle:
        handle.write('{"resourceType": "Encounter", "id": "' + "x" * (3 * MAX_LINE_BYTES) + '"}\n')
    (error,) = [str(p) for p in validate_source(folder).errors]
    size = 3 * MAX_LINE_BYTES + len('{"resourceType": "Encounter", "id": ""}\n')
    assert error == (
        f"error: {folder / 'Encounter.ndjson'}, line 6: line of {size:,} bytes; "
        f"expected one resource of at most {MAX_LINE_BYTES:,} bytes per line"
    )


def test_a_flood_of_tiny_invalid_records_is_summarised(tmp_path: Path) -> None:
    path = tmp_path / "flood.ndjson"
    path.write_text("[]\n" * 20_000 + "{}\n" * 30_000)
    errors = [str(p) for p in validate_source(path).errors]
    assert len(errors) == EXPLAINED + 1  # the first explained, the rest counted by reason
    assert errors[0] == f"error: {path}, line 1: is a JSON list; expected a FHIR resource (an object)"
    assert errors[-1] == (
        f"error: {path}: ... and 49,800 more record(s) with problems, not listed (50,000 in all: "
        "no resourceType: 30,000, not a JSON object: 20,000); fix these and validate again"
    )


def test_a_flood_of_lines_that_are_not_json_is_summarised(tmp_path: Path) -> None:
    path = tmp_path / "flood.ndjson"
    path.write_text('{"resourceType": "Location", "id": "w"}\n' + "x\n" * 100_000 + "[]\n" * 60)
    errors = [str(p) for p in validate_source(path).errors]
    assert len(errors) == 102  # 50 of each kind, and one count each
    assert errors[0].startswith(f"error: {path}, line 2: not JSON (")
    assert f"error: {path}: ... and 99,950 more line(s) that are not JSON (not listed)" in errors
    assert f"error: {path}, line 100002: is a JSON list; expected a FHIR resource (an object)" in errors
    assert f"error: {path}: ... and 10 more line(s) that are not objects (not listed)" in errors


def test_many_bad_records_explain_the_first_and_count_the_rest(tmp_path: Path) -> None:
    resources = fhir_resources()
    template = next(r for r in resources if r.get("id") == "e3")
    bad = []
    for i in range(EXPLAINED + 40):
        record = json.loads(json.dumps(template))
        record["id"] = f"bad{i}"
        record.pop("subject")
        bad.append(record)
    folder = write_ndjson(resources + bad, tmp_path / "export")
    errors = [str(p) for p in validate_source(folder).errors]
    assert len(errors) == EXPLAINED + 1
    assert errors[0] == (
        f"error: {folder / 'Encounter.ndjson'}, line 6, Encounter/bad0, field 'subject.reference': "
        "Encounter has no subject.reference; expected the Patient (the node protects each patient's stays)"
    )
    assert errors[-1].endswith(
        "... and 40 more record(s) with problems, not listed (240 in all: "
        "no subject.reference: 240); fix these and validate again"
    )


# ---------------------------------------------------------------------- FHIR Bundles, streamed
def _bundle_text(
    resources: list[dict[str, object]], entries_first: bool, bad_at: int | None = None, bad: object = None
) -> str:
    entries: list[object] = [{"fullUrl": f"urn:uuid:{i}", "resource": r} for i, r in enumerate(resources)]
    if bad_at is not None:
        entries.insert(bad_at, {"fullUrl": "urn:uuid:no-resource"} if bad is None else bad)
    parts = [("entry", entries), ("type", "collection"), ("resourceType", "Bundle")]
    return json.dumps(dict(parts if entries_first else parts[::-1]), indent=2)


def test_a_bundle_is_split_entry_by_entry_in_a_bounded_buffer(tmp_path: Path) -> None:
    resources = fhir_resources()
    path = tmp_path / "b.json"
    path.write_text(_bundle_text(resources, entries_first=True, bad_at=2))  # resourceType after the entries
    split = split_bundle(path, tmp_path / "entries.ndjson", max_entry_bytes=10_000)
    assert split is not None and split.entries == len(resources) + 1 and split.bad_entries == [3]
    lines = (tmp_path / "entries.ndjson").read_text().splitlines()
    assert [json.loads(line).get("resource") for line in lines] == resources[:2] + [{}] + resources[2:]
    # one entry bigger than the buffer may grow to: refused (the exact reader then says what the file is)
    assert split_bundle(path, tmp_path / "small.ndjson", max_entry_bytes=100) is None
    not_bundle = tmp_path / "n.json"
    not_bundle.write_text(json.dumps({"resourceType": "Patient", "entry": [{"resource": resources[0]}]}))
    assert split_bundle(not_bundle, tmp_path / "n.ndjson", max_entry_bytes=10_000) is None
    cut = tmp_path / "cut.json"
    cut.write_text(path.read_text()[:-40])
    assert split_bundle(cut, tmp_path / "cut.ndjson", max_entry_bytes=10_000) is None


def test_a_streamed_bundle_reads_as_its_ndjson_export_and_names_entries(tmp_path: Path) -> None:
    resources = fhir_resources()
    path = tmp_path / "b.json"
    path.write_text(_bundle_text(resources, entries_first=False))
    expected = load_source(write_ndjson(resources, tmp_path / "export")).records.frame.reset_index(drop=True)
    pd.testing.assert_frame_equal(load_source(path).records.frame.reset_index(drop=True), expected)
    bad = tmp_path / "bad.json"
    broken = json.loads(json.dumps(resources))
    e3 = next(r for r in broken if r.get("id") == "e3")
    e3.pop("subject")
    bad.write_text(_bundle_text(broken, entries_first=True))
    line = next(i for i, r in enumerate(broken, start=1) if r is e3)
    (error,) = [str(p) for p in validate_source(bad).errors]
    assert error.startswith(f"error: {bad}, entry {line}, Encounter/e3, field 'subject.reference': Encounter has no")
    # entries first (walked entry by entry) or last (the entry array streamed by the engine), an entry
    # without a resource, or one the engine cannot type (then walked): named by entry in the same words
    for entries_first, odd in ((True, None), (False, None), (False, 5), (False, {"resource": "x"})):
        bad.write_text(_bundle_text(resources, entries_first=entries_first, bad_at=1, bad=odd))
        (error,) = [str(p) for p in validate_source(bad).errors]
        assert error == f"error: {bad}, entry 2, field 'resource': entry without a resource; expected entry.resource"


def test_a_bundle_ending_with_its_entries_is_streamed_as_a_json_array(tmp_path: Path) -> None:
    resources = fhir_resources()
    path = tmp_path / "b.json"
    path.write_text(_bundle_text(resources, entries_first=False))
    array = entry_array(path, tmp_path / "entries.json", max_entry_bytes=10_000)
    assert array is not None and array.array
    assert [e["resource"] for e in json.loads((tmp_path / "entries.json").read_text())] == resources
    path.write_text(_bundle_text(resources, entries_first=True))  # resourceType after the entries
    assert entry_array(path, tmp_path / "other.json", max_entry_bytes=10_000) is None


def test_engine_limits_come_from_the_mapping_file(tmp_path: Path) -> None:
    mapping = tmp_path / "m.toml"
    mapping.write_text('[engine]\nmemory-limit = "256MB"\nthreads = 1\nstatement-timeout-s = 30\n')
    assert SourceMapping.from_toml(mapping).engine == EngineSettings("256MB", 1, 30)
    mapping.write_text('[engine]\nmemory-limit = "lots"\n')
    with pytest.raises(MappingError, match="memory-limit must be a size such as '512MB'"):
        SourceMapping.from_toml(mapping)
    folder = write_ndjson(fhir_resources(), tmp_path / "export")
    mapping.write_text('[engine]\nmemory-limit = "64MB"\nthreads = 1\n')
    assert load_source(DataSource.of(folder, mapping=mapping)).report.ok


# ---------------------------------------------------------------------- databases that fight back
@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP listener on a free loopback port that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    server.close()


def test_a_database_that_never_answers_is_refused_with_a_timeout(silent_server: int) -> None:
    pytest.importorskip("psycopg")
    source = DataSource(f"postgresql://reader@127.0.0.1:{silent_server}/omop")
    start = time.monotonic()
    report = validate_source(source)
    took = time.monotonic() - start
    (error,) = [str(p) for p in report.errors]
    assert error.startswith(f"error: postgresql://reader@127.0.0.1:{silent_server}/omop: ")
    assert "timeout" in error.lower() or "did not answer" in error
    assert took < 60  # a bound, not a speed target: without the timeout this hangs for ever


def test_an_sqlite_value_that_explodes_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cdm.sqlite"
    tables = fixture_tables()
    create_omop_database(tables, f"sqlite:///{path}")
    with sqlite3.connect(path) as connection:
        connection.execute("ALTER TABLE care_site RENAME TO care_site_old")
        connection.execute(
            "CREATE TABLE care_site (care_site_id INTEGER, care_site_source_value TEXT, "
            "care_site_name BLOB GENERATED ALWAYS AS (zeroblob(50000000)) VIRTUAL)"
        )
        connection.execute("INSERT INTO care_site SELECT care_site_id, care_site_source_value FROM care_site_old")
        connection.execute("DROP TABLE care_site_old")
    (error,) = [str(p) for p in validate_source(path).errors]
    # counted in the database, the query that meets the value is refused (no table of it is ever held)
    assert error.startswith(f"error: {path}: ") and "cannot read the database (" in error
    assert "too big" in error


def test_a_recursive_view_in_place_of_a_table_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "cdm.sqlite"
    create_omop_database(fixture_tables(), f"sqlite:///{path}")
    with sqlite3.connect(path) as connection:
        connection.execute("DROP TABLE visit_detail")
        connection.execute(
            "CREATE VIEW visit_detail AS WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) "
            "SELECT n AS visit_detail_id FROM r"
        )
        connection.execute(
            "CREATE TRIGGER t AFTER INSERT ON visit_occurrence BEGIN "
            "INSERT INTO visit_occurrence SELECT * FROM visit_occurrence; END"
        )
    start = time.monotonic()
    data = load_source(path)  # the view is not a table: visits are the stays; the trigger never fires on reads
    assert time.monotonic() - start < 60
    assert data.report.summary["level"] == "visit_occurrence"


def test_an_sqlite_statement_past_the_time_limit_is_interrupted(tmp_path: Path) -> None:
    path = tmp_path / "cdm.sqlite"
    create_omop_database(fixture_tables(), f"sqlite:///{path}")
    connection = _sqlite_connection(f"file:{path}?mode=ro", 1)
    start = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="interrupted"):
        connection.execute(
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r"
        ).fetchall()
    assert time.monotonic() - start < 30  # without the limit this never ends
    assert connection.execute("SELECT count(*) FROM care_site").fetchone() == (4,)  # the next statement runs
    with pytest.raises(sqlite3.OperationalError):  # and the connection writes nothing
        connection.execute("CREATE TABLE x (a)")
    connection.close()


def test_the_engines_daily_counts_equal_the_reference_derivation() -> None:
    import numpy as np

    from medalloc_core.encounters import encounters_to_daily
    from medalloc_core.sources.engine import connect, daily_counts

    rng = np.random.default_rng(5)
    admit = pd.Timestamp("2024-12-30") + pd.to_timedelta(rng.integers(0, 40 * 24 * 60, 3000), unit="min")
    stay = pd.to_timedelta(rng.integers(0, 9 * 24 * 60, 3000), unit="min")
    stays = pd.DataFrame(
        {
            "unit": rng.choice(["ICU", "MED-2", "Ward 3", "ÄRZTE"], 3000),
            "admit": admit,
            "discharge": (admit + stay).where(rng.random(3000) > 0.05),
        }
    )
    with connect(EngineSettings()) as connection:
        connection.register("s", stays)
        counted = daily_counts(connection, "SELECT * FROM s")
    expected = encounters_to_daily(
        stays.rename(columns={"admit": "admit_time", "discharge": "discharge_time"})
    ).reset_index(drop=True)
    pd.testing.assert_frame_equal(counted, expected, check_dtype=False)


def test_a_patient_in_two_units_at_once_is_warned_about_by_line_and_record(tmp_path: Path) -> None:
    resources = fhir_resources()
    twin = json.loads(json.dumps(next(r for r in resources if r.get("id") == "e4")))
    twin.update(id="e9", subject={"reference": "Patient/12"})  # patient 12 is still in Ward 3 (e3, open)
    folder = write_ndjson(resources + [twin], tmp_path / "export")
    report = validate_source(folder)
    assert report.ok
    (warning,) = [str(p) for p in report.warnings]
    assert warning == (
        f"warning: {folder / 'Encounter.ndjson'}, line 6, Encounter/e9, field 'period.start': 1 stay(s) begin "
        "while the same patient's previous stay is still open; first here; both are counted in the census until "
        "the first ends"
    )
