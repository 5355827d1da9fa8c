"""Issue 23: a node's daily counts are built once and kept up to date; when its encounter file grows only the
appended rows are read, and the counts equal a full recount.

Real CSV files on disk, appended to as an export job appends; "only the new rows are read" is
asserted on the number of records the reader handed back (``Refresh.records_read``), never on time.
Each check runs twice: through the contract's validator (small files) and through the DuckDB engine
(``ENGINE_MIN_BYTES`` set to 0, the path of a hospital-scale file).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest

import medalloc_core.sources as sources
from medalloc_core.contract import ADMIT_TIME, DISCHARGE_TIME
from medalloc_core.sources import DataSource, load_source
from medalloc_core.sources.incremental import CountCache
from tests.test_public_calendar import synthetic_encounters

COLUMNS = ["encounter_id", "patient_id", "unit", "admit_time", "discharge_time"]


@pytest.fixture(scope="module")
def stays() -> pd.DataFrame:
    frame = synthetic_encounters()[COLUMNS].sort_values(ADMIT_TIME, kind="stable").reset_index(drop=True)
    return frame


@pytest.fixture(params=["contract", "engine"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "engine":
        monkeypatch.setattr(sources, "ENGINE_MIN_BYTES", 0)
    return str(request.param)


def _text(frame: pd.DataFrame, header: bool) -> str:
    out = frame.copy()
    for column in (ADMIT_TIME, DISCHARGE_TIME):
        out[column] = pd.to_datetime(out[column]).dt.strftime("%Y-%m-%d %H:%M").fillna("")
    return out.to_csv(index=False, header=header)


def _write(path: Path, frame: pd.DataFrame) -> None:
    path.write_text(_text(frame, header=True))


def _append(path: Path, frame: pd.DataFrame) -> None:
    with path.open("a") as handle:
        handle.write(_text(frame, header=False))


def _same_as_full_recount(path: Path, counted) -> None:
    full = load_source(DataSource(str(path)))
    assert counted.data is not None
    pd.testing.assert_frame_equal(counted.data.records.frame, full.records.frame)
    assert full.stays is not None and counted.data.stays is not None
    pd.testing.assert_frame_equal(counted.data.stays[COLUMNS], full.stays[COLUMNS])
    for key in ("encounters", "open_stays", "units", "date_start", "date_end", "daily_rows"):
        assert counted.report.summary[key] == full.report.summary[key], key


def test_appended_stays_are_the_only_rows_read_and_the_counts_equal_a_full_recount(
    tmp_path: Path, stays: pd.DataFrame, reader: str
):
    path, cache = tmp_path / "stays.csv", CountCache(tmp_path / "counts")
    cut = pd.Timestamp("2023-04-01")
    # A stay running across the watermark is written open (its end not known yet): it stays in the census of
    # every appended day, as a full recount keeps it.
    old = stays[stays[ADMIT_TIME] < cut].copy()
    old.loc[old[DISCHARGE_TIME] >= cut, DISCHARGE_TIME] = pd.NaT
    assert old[DISCHARGE_TIME].isna().sum() > 5
    _write(path, old)
    first = cache.read(DataSource(str(path)))
    assert first.refresh.mode == "full" and first.refresh.records_read == len(old)
    _same_as_full_recount(path, first)

    again = cache.read(DataSource(str(path)))
    assert again.refresh.mode == "unchanged" and again.refresh.records_read == 0
    _same_as_full_recount(path, again)

    written = old
    for w in range(3):
        start, end = cut + pd.Timedelta(weeks=w), cut + pd.Timedelta(weeks=w + 1)
        week = stays[(stays[ADMIT_TIME] >= start) & (stays[ADMIT_TIME] < end)]
        assert len(week) > 20
        # the last day counted so far: a stay of the week before may end after this week's first admissions,
        # which then change days already counted (reported, see the next test)
        last = max(written[ADMIT_TIME].max(), written[DISCHARGE_TIME].max()).normalize()
        _append(path, week)
        counted = cache.read(DataSource(str(path)))
        assert counted.refresh.mode == "appended", counted.refresh
        assert counted.refresh.records_read == len(week)  # only the appended rows went through the reader
        assert counted.refresh.late_stays == int((week[ADMIT_TIME].dt.normalize() <= last).sum())
        assert counted.report.ok
        _same_as_full_recount(path, counted)
        written = pd.concat([written, week])
    # the cache holds patient ids: the node's account alone may read it
    assert all(f.stat().st_mode & 0o077 == 0 for f in (tmp_path / "counts").iterdir())
    assert (tmp_path / "counts").stat().st_mode & 0o077 == 0
    # a fresh process (a node restarted) reads the cache from its folder, not the file
    restarted = CountCache(tmp_path / "counts").read(DataSource(str(path)))
    assert restarted.refresh.mode == "unchanged" and restarted.refresh.records_read == 0
    _same_as_full_recount(path, restarted)


def test_a_stay_written_when_it_ends_changes_counted_days_and_is_reported(
    tmp_path: Path, stays: pd.DataFrame, reader: str
):
    """An export that writes a stay when the patient leaves: appended stays began before the last day counted."""
    path, cache = tmp_path / "stays.csv", CountCache(tmp_path / "counts")
    cut = pd.Timestamp("2023-05-01")
    ended = stays[DISCHARGE_TIME].notna() & (stays[DISCHARGE_TIME] < cut)
    _write(path, stays[ended])
    cache.read(DataSource(str(path)))
    later = stays[~ended]
    _append(path, later)
    counted = cache.read(DataSource(str(path)))
    assert counted.refresh.mode == "appended" and counted.refresh.records_read == len(later)
    spanning = int((later[ADMIT_TIME].dt.normalize() <= stays.loc[ended, DISCHARGE_TIME].max().normalize()).sum())
    assert counted.refresh.late_stays == spanning > 0
    late = [p for p in counted.report.warnings if "counted again" in p.message]
    assert len(late) == 1 and late[0].file == str(path) and late[0].column == ADMIT_TIME
    assert late[0].row is not None and late[0].row > ended.sum() + 1  # a row of the appended part
    _same_as_full_recount(path, counted)


def test_a_file_edited_shrunk_or_replaced_is_recounted_in_full(tmp_path: Path, stays: pd.DataFrame, reader: str):
    path, cache = tmp_path / "stays.csv", CountCache(tmp_path / "counts")
    half = len(stays) // 2
    _write(path, stays.iloc[:half])
    cache.read(DataSource(str(path)))
    # a correction of a counted record, and new rows after it: the counted bytes changed
    edited = stays.iloc[: half + 30].copy()
    edited.loc[3, "unit"] = "icu" if edited.loc[3, "unit"] != "icu" else "medical"
    _write(path, edited)
    counted = cache.read(DataSource(str(path)))
    assert counted.refresh.mode == "full" and "changed" in counted.refresh.reason
    assert counted.refresh.records_read == half + 30
    _same_as_full_recount(path, counted)
    # the file shrinks
    _write(path, stays.iloc[:100])
    counted = cache.read(DataSource(str(path)))
    assert counted.refresh.mode == "full" and "shrank" in counted.refresh.reason
    _same_as_full_recount(path, counted)
    # a cache of another counting version, or for another mapping, is never used
    state = json.loads((tmp_path / "counts" / "state.json").read_text())
    state["identity"]["mapping"] = "another"
    (tmp_path / "counts" / "state.json").write_text(json.dumps(state))
    counted = cache.read(DataSource(str(path)))
    assert counted.refresh.mode == "full" and counted.refresh.records_read == 100


def test_a_last_record_without_a_line_end_that_grows_is_recounted(tmp_path: Path, stays: pd.DataFrame):
    path, cache = tmp_path / "stays.csv", CountCache(tmp_path / "counts")
    path.write_text(_text(stays.iloc[:50], header=True).rstrip("\n"))
    cache.read(DataSource(str(path)))
    _append(path, stays.iloc[50:60])  # the first appended bytes continue the unterminated last line
    counted = cache.read(DataSource(str(path)))
    assert counted.refresh.mode == "full" and "line end" in counted.refresh.reason
    # the last line ran on into the first appended one: the reader names that row, nothing is counted
    assert counted.data is None and not counted.report.ok


def test_problems_in_appended_rows_name_the_files_own_rows_and_nothing_is_cached(
    tmp_path: Path, stays: pd.DataFrame, reader: str
):
    path, cache = tmp_path / "stays.csv", CountCache(tmp_path / "counts")
    _write(path, stays.iloc[:200])
    cache.read(DataSource(str(path)))
    bad = stays.iloc[200:210].copy()
    repeated = stays.iloc[[5]].copy()
    _append(path, bad)
    with path.open("a") as handle:
        handle.write(_text(repeated, header=False))  # row 212: the id of row 7
        handle.write("E-x,P-x,icu,02/01/2025 10:00,\n")  # row 213: not an ISO time
    counted = cache.read(DataSource(str(path)))
    assert counted.data is None
    messages = {(p.row, p.column): p.message for p in counted.report.errors}
    assert all(p.file == str(path) for p in counted.report.errors)
    assert (213, ADMIT_TIME) in messages and "02/01/2025" in messages[(213, ADMIT_TIME)]
    # the state still holds the 200 counted rows: fixing the appended rows reads only them again
    path.write_text(_text(stays.iloc[:200], header=True))
    _append(path, bad)
    _append(path, repeated)
    counted = cache.read(DataSource(str(path)))
    assert counted.data is None and counted.refresh.mode == "appended"
    duplicate = [p for p in counted.report.errors if p.column == "encounter_id"]
    assert duplicate and duplicate[0].row == 212 and "first at row 7" in duplicate[0].message
    path.write_text(_text(stays.iloc[:210], header=True))
    counted = cache.read(DataSource(str(path)))
    assert counted.refresh.mode == "appended" and counted.refresh.records_read == 10
    _same_as_full_recount(path, counted)


def test_a_nodes_cache_leaves_malformed_stays_out_of_the_file_and_of_what_is_appended(
    tmp_path: Path, stays: pd.DataFrame, reader: str
):
    """Issue 20 on a node (``lenient=True``): a malformed stay, counted in full or appended, is left out and
    counted by reason (the validator's reasons, whichever reader), never a refusal; an appended stay that repeats a
    counted ``encounter_id`` is no error (a node does not count by it). The counts are a full recount's as a node
    reads the file (``load_node_source``); the same file read strictly refuses."""
    from medalloc_core.sources import load_node_source

    path, cache = tmp_path / "stays.csv", CountCache(tmp_path / "counts", lenient=True)
    _write(path, stays.iloc[:200])
    with path.open("a") as handle:
        handle.write("E-bad-1,,icu,2023-02-01 10:00,2023-02-03 10:00\n")  # no patient_id
    first = cache.read(DataSource(str(path)))
    assert first.refresh.mode == "full" and first.left_out == {"without patient_id": 1}
    _append(path, stays.iloc[200:210])
    with path.open("a") as handle:
        handle.write("E-bad-2,P-x,icu,02/01/2025 10:00,\n")  # not an ISO time
        handle.write("E-bad-3,P-y,icu,2023-03-05 10:00,2023-03-01 10:00\n")  # discharged before admission
        handle.write(_text(stays.iloc[[5]].assign(patient_id="P-z"), header=False))  # a counted encounter_id again
    counted = cache.read(DataSource(str(path)))
    assert counted.refresh.mode == "appended" and counted.refresh.records_read == 13, counted.refresh
    assert counted.left_out == {
        "without patient_id": 1,
        "with an empty or invalid admit_time": 1,
        "discharged before admission": 1,
    }
    records, kept, left_out = load_node_source(DataSource(str(path)))
    assert left_out == counted.left_out
    assert counted.data is not None and kept is not None
    pd.testing.assert_frame_equal(counted.data.records.frame, records.frame)
    pd.testing.assert_frame_equal(counted.data.stays[COLUMNS].reset_index(drop=True), kept[COLUMNS])
    again = CountCache(tmp_path / "counts", lenient=True).read(DataSource(str(path)))
    assert again.refresh.mode == "unchanged" and again.left_out == counted.left_out  # kept with the counts
    strict = CountCache(tmp_path / "strict").read(DataSource(str(path)))
    assert strict.data is None and not strict.report.ok  # what `medalloc validate` and a strict read say


def test_sources_that_are_not_appended_to_are_read_again_only_when_they_change(tmp_path: Path, stays: pd.DataFrame):
    path, cache = tmp_path / "stays.parquet", CountCache(tmp_path / "counts")
    stays.iloc[:500].to_parquet(path, index=False)
    assert cache.read(DataSource(str(path))).refresh.mode == "full"
    assert cache.read(DataSource(str(path))).refresh.mode == "unchanged"
    stays.iloc[:600].to_parquet(path, index=False)
    counted = cache.read(DataSource(str(path)))
    assert counted.refresh.mode == "full" and counted.refresh.records_read == 600
    assert counted.data is not None
    full = load_source(DataSource(str(path)))
    pd.testing.assert_frame_equal(counted.data.records.frame, full.records.frame)


def test_a_node_reads_only_what_its_source_appended_and_releases_only_the_new_days(
    tmp_path: Path, stays: pd.DataFrame, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    """The real ClientApp, two rounds over an encounter CSV that grows between them (a fresh process each time:
    the in-process memo is cleared): the second reads the appended rows only and releases the new days only.
    The file takes a hospital-scale file's path (the engine's; a smaller one is read in full by the lenient
    reader, which leaves a malformed stay out: issue 20)."""
    import logging

    monkeypatch.setattr(sources, "ENGINE_MIN_BYTES", 0)

    from medalloc_core.privacy.release import ReleaseStore
    from medalloc_core.tasks.forecasting import local
    from tests.fed_fixtures import task_identity
    from tests.test_continuing_node import CAL, _round

    data, folder = tmp_path / "H.csv", tmp_path / "node"
    cut = pd.Timestamp("2023-06-30")
    first = stays[stays[ADMIT_TIME] < cut]
    _write(data, first)
    with task_identity():
        assert "metrics" in _round(folder, data, CAL | {"calendar-end": "2023-06-29"})
        state = json.loads((folder / "ledger.json.counts" / "state.json").read_text())
        assert state["kind"] == "append" and state["offset"] == data.stat().st_size
        released = ReleaseStore.open(folder / "ledger.json.released.csv").frame
        later = stays[(stays[ADMIT_TIME] >= cut) & (stays[ADMIT_TIME] < cut + pd.Timedelta(days=11))]
        _append(data, later)
        local._DAILY.clear()  # as a node started again: only the count cache on disk is left
        with caplog.at_level(logging.INFO, logger="medalloc_core.sources.incremental"):
            assert "metrics" in _round(folder, data, CAL | {"calendar-end": "2023-07-10"}, server_round=2)
    assert f"{len(later):,} appended record(s) read" in caplog.text
    assert "counted in full" not in caplog.text
    state = json.loads((folder / "ledger.json.counts" / "state.json").read_text())
    assert state["offset"] == data.stat().st_size and state["summary"]["encounters"] == len(first) + len(later)
    store = ReleaseStore.open(folder / "ledger.json.released.csv").frame
    new_days = sorted(set(pd.to_datetime(store["date"])) - set(pd.to_datetime(released["date"])))
    assert new_days[0] == pd.Timestamp("2023-06-30") and new_days[-1] == pd.Timestamp("2023-07-10")


def test_a_cache_that_cannot_be_written_costs_the_shortcut_never_the_counts(
    tmp_path: Path, stays: pd.DataFrame, caplog: pytest.LogCaptureFixture
):
    """The cache on a full disk (a real 320 KiB tmpfs): the read still returns the counts, says why it kept none,
    and the next read, with nothing cached, reads the file in full."""
    from tests.test_disk_full import DISK_BYTES, Disk

    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES},mode=0755", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
    try:
        disk = Disk(mount)
        path = tmp_path / "stays.csv"
        _write(path, stays)
        (mount / "counts").mkdir()
        disk.fill()
        cache = CountCache(mount / "counts")
        counted = cache.read(DataSource(str(path)))
        assert counted.refresh.mode == "full"
        _same_as_full_recount(path, counted)
        assert "could not be written" in caplog.text
        assert not (mount / "counts" / "state.json").exists()
        assert not list((mount / "counts").glob("*.tmp"))
        again = cache.read(DataSource(str(path)))
        assert again.refresh.mode == "full" and again.refresh.reason == "no count cache yet"
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
