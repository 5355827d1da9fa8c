"""Issue 24: a long-running node's calendar end moves without a restart.

Flower reads a SuperNode's ``--node-config`` once, when it starts; a fixed ``calendar-end`` then
stops a node that runs for months at that day. ``calendar-end = "today-N"`` (the node's clock)
and ``calendar-end-file`` (a date its export job writes) are read again at every round: the
same node config releases the new days as they come. Real ClientApp handlers over a real
encounter file here; ``tests/e2e/test_weekly_cycle.py`` does it with long-running processes.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from medalloc_core.privacy.calendar import CalendarError, declared_parts
from tests.test_continuing_node import _releases, _round, _store, _write
from tests.test_public_calendar import synthetic_encounters

UNITS = {"calendar-units": "icu,medical,paediatric,surgical", "calendar-start": "2023-02-01"}


@pytest.fixture(autouse=True)
def _identity():
    from tests.fed_fixtures import task_identity

    with task_identity():
        yield


def test_today_minus_n_is_the_nodes_date_at_each_call():
    today = pd.Timestamp("2026-12-07 13:45")
    assert declared_parts({"calendar-end": "today"}, today=today)[2] == pd.Timestamp("2026-12-07")
    assert declared_parts({"calendar-end": "today-2"}, today=today)[2] == pd.Timestamp("2026-12-05")
    assert declared_parts({"calendar-end": "Today - 14"}, today=today)[2] == pd.Timestamp("2026-11-23")
    now = pd.Timestamp.now(tz="UTC").tz_localize(None).normalize()
    assert declared_parts({"calendar-end": "today-1"})[2] in (now - pd.Timedelta(days=1), now)  # midnight race
    with pytest.raises(CalendarError, match="calendar-end: expected a date YYYY-MM-DD, got 'tomorrow'"):
        declared_parts({"calendar-end": "tomorrow"})


def test_the_end_file_is_read_at_every_call_and_bad_content_names_it(tmp_path: Path):
    end = tmp_path / "complete-through.txt"
    extra = {"calendar-end-file": str(end)}
    with pytest.raises(CalendarError, match=rf"calendar-end-file {end}: cannot be read"):
        declared_parts(extra)
    end.write_text("2023-03-31\n")
    assert declared_parts(extra)[2] == pd.Timestamp("2023-03-31")
    end.write_text("2023-04-07")  # the export job's next load: the same config, a later end
    assert declared_parts(extra)[2] == pd.Timestamp("2023-04-07")
    for content, why in (("April", "expected one date YYYY-MM-DD, got 'April'"), ("2023-02-30", "expected one date")):
        end.write_text(content)
        with pytest.raises(CalendarError, match=why):
            declared_parts(extra)
    end.write_text("2023-04-07" + " " * 2000)
    with pytest.raises(CalendarError, match="holds more than the 1,024 bytes"):
        declared_parts(extra)
    with pytest.raises(CalendarError, match="is a folder, not a regular file"):
        declared_parts({"calendar-end-file": str(tmp_path)})
    with pytest.raises(CalendarError, match="declare calendar-end or calendar-end-file, not both"):
        declared_parts(extra | {"calendar-end": "2023-04-07"})
    end.write_text("2023-01-15")
    with pytest.raises(CalendarError, match="calendar-end 2023-01-15 is before calendar-start 2023-02-01"):
        declared_parts(extra | UNITS)


def test_one_node_config_releases_each_new_week_as_its_export_job_moves_the_end(tmp_path: Path):
    """The same node config for three rounds: each releases only the week the end file added, at the same epsilon."""
    stays = synthetic_encounters()
    data, folder, end = tmp_path / "stays.csv", tmp_path / "node", tmp_path / "complete-through.txt"
    extra = UNITS | {"calendar-end-file": str(end)}
    admitted = pd.to_datetime(stays["admit_time"])
    ends = ["2023-05-31", "2023-06-07", "2023-06-14"]
    epsilons = []
    for week, last in enumerate(ends, start=1):
        # what the hospital's nightly export does: the stays admitted so far, then the date they are complete to
        _write(stays[admitted < pd.Timestamp(last) + pd.Timedelta(days=1)], data)
        end.write_text(last)
        assert "metrics" in _round(folder, data, extra, server_round=week)
        days = pd.to_datetime(_store(folder)["date"])
        assert days.max() == pd.Timestamp(last) and days.min() == pd.Timestamp("2023-02-01")
        assert not _store(folder).duplicated(["date", "unit"]).any()
        from medalloc_core.privacy.ledger import PrivacyLedger

        epsilons.append(PrivacyLedger.load(folder / "ledger.json").epsilon_spent())
    spends = _releases(folder)
    assert [s.days for s in spends] == [
        ("2023-02-01", "2023-05-31"),
        ("2023-06-01", "2023-06-07"),
        ("2023-06-08", "2023-06-14"),
    ]
    assert epsilons == pytest.approx([epsilons[0]] * 3, abs=1e-9)  # one Gaussian per patient over disjoint days

    # An unreadable end file is the node's own misconfiguration: the round refuses, nothing more is released.
    end.write_text("soon")
    assert "metrics" not in _round(folder, data, extra, server_round=4)
    assert len(_releases(folder)) == 3
