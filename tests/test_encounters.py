"""encounters_to_daily: hand-checked stays, transfers, open stays, and a brute-force property."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medalloc_core.encounters import encounters_to_daily

COLUMNS = ["date", "unit", "admissions", "discharges", "census"]


def stays(*rows: tuple[str, str, str, str | None]) -> pd.DataFrame:
    """(patient_id, unit, admit_time, discharge_time) rows as the raw all-string table."""
    return pd.DataFrame(
        [(f"E{i}", *row) for i, row in enumerate(rows)],
        columns=["encounter_id", "patient_id", "unit", "admit_time", "discharge_time"],
        dtype=str,
    )


def expected(*rows: tuple[str, str, int, int, int]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["date"] = pd.to_datetime(frame["date"]).astype("datetime64[ns]")
    return frame.astype({"unit": str, "admissions": "int64", "discharges": "int64", "census": "int64"})


def check(result: pd.DataFrame, want: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(result.reset_index(drop=True), want, check_dtype=True)


def test_stay_within_one_day_is_one_admission_one_discharge_no_census() -> None:
    result = encounters_to_daily(stays(("P1", "ICU", "2024-03-01 08:00", "2024-03-01 17:30")))
    check(result, expected(("2024-03-01", "ICU", 1, 1, 0)))


def test_stay_across_midnight_is_in_the_census_of_each_night() -> None:
    result = encounters_to_daily(stays(("P1", "WARD", "2024-03-01 22:00", "2024-03-03 10:00")))
    check(
        result,
        expected(
            ("2024-03-01", "WARD", 1, 0, 1),
            ("2024-03-02", "WARD", 0, 0, 1),
            ("2024-03-03", "WARD", 0, 1, 0),
        ),
    )


def test_open_stay_counts_through_the_last_date_in_the_file_by_default() -> None:
    frame = stays(
        ("P1", "ICU", "2024-03-01 09:00", None),
        ("P2", "ICU", "2024-03-02 12:00", "2024-03-04 08:00"),
    )
    check(
        encounters_to_daily(frame),
        expected(
            ("2024-03-01", "ICU", 1, 0, 1),
            ("2024-03-02", "ICU", 1, 0, 2),
            ("2024-03-03", "ICU", 0, 0, 2),
            ("2024-03-04", "ICU", 0, 1, 1),
        ),
    )


def test_open_stay_extends_to_an_explicit_end_and_later_events_are_cut() -> None:
    frame = stays(
        ("P1", "ICU", "2024-03-01 09:00", None),
        ("P2", "ICU", "2024-03-02 12:00", "2024-03-04 08:00"),
    )
    check(
        encounters_to_daily(frame, end=pd.Timestamp("2024-03-06")),
        expected(
            ("2024-03-01", "ICU", 1, 0, 1),
            ("2024-03-02", "ICU", 1, 0, 2),
            ("2024-03-03", "ICU", 0, 0, 2),
            ("2024-03-04", "ICU", 0, 1, 1),
            ("2024-03-05", "ICU", 0, 0, 1),
            ("2024-03-06", "ICU", 0, 0, 1),
        ),
    )
    # An end before P2's discharge: P2 is still in the census, its discharge is not reported.
    check(
        encounters_to_daily(frame, end=pd.Timestamp("2024-03-02 15:00")),
        expected(("2024-03-01", "ICU", 1, 0, 1), ("2024-03-02", "ICU", 1, 0, 2)),
    )


def test_transfer_is_a_discharge_from_one_unit_and_an_admission_to_the_next_on_the_same_day() -> None:
    frame = stays(
        ("P1", "ED", "2024-03-01 10:00", "2024-03-02 14:00"),
        ("P1", "ICU", "2024-03-02 14:00", "2024-03-04 09:00"),
    )
    check(
        encounters_to_daily(frame),
        expected(
            ("2024-03-01", "ED", 1, 0, 1),
            ("2024-03-02", "ED", 0, 1, 0),
            ("2024-03-03", "ED", 0, 0, 0),
            ("2024-03-04", "ED", 0, 0, 0),
            ("2024-03-02", "ICU", 1, 0, 1),
            ("2024-03-03", "ICU", 0, 0, 1),
            ("2024-03-04", "ICU", 0, 1, 0),
        ),
    )


def test_days_without_events_are_zeros_not_gaps_and_units_start_at_their_first_admission() -> None:
    frame = stays(
        ("P1", "WARD", "2024-03-01 10:00", "2024-03-01 11:00"),
        ("P2", "WARD", "2024-03-05 10:00", "2024-03-05 11:00"),
        ("P3", "ICU", "2024-03-04 10:00", "2024-03-06 11:00"),
    )
    result = encounters_to_daily(frame)
    ward = result[result["unit"] == "WARD"]
    assert ward["date"].dt.strftime("%d").tolist() == ["01", "02", "03", "04", "05", "06"]
    assert ward["admissions"].tolist() == [1, 0, 0, 0, 1, 0]
    assert ward["census"].tolist() == [0] * 6
    icu = result[result["unit"] == "ICU"]
    assert icu["date"].dt.strftime("%d").tolist() == ["04", "05", "06"]
    assert icu["census"].tolist() == [1, 1, 0]


def test_datetime_input_gives_the_same_result_as_strings() -> None:
    frame = stays(
        ("P1", "ICU", "2024-03-01 22:00", "2024-03-03 01:00"),
        ("P2", "ICU", "2024-03-02 00:00", None),
    )
    typed = frame.assign(
        admit_time=pd.to_datetime(frame["admit_time"]),
        discharge_time=pd.to_datetime(frame["discharge_time"]),
    )
    pd.testing.assert_frame_equal(encounters_to_daily(typed), encounters_to_daily(frame))


def test_discharge_before_admission_is_refused() -> None:
    with pytest.raises(ValueError, match="discharged before"):
        encounters_to_daily(stays(("P1", "ICU", "2024-03-02 10:00", "2024-03-01 10:00")))


def test_no_stays_gives_an_empty_frame_with_the_contract_columns() -> None:
    result = encounters_to_daily(stays())
    assert list(result.columns) == COLUMNS
    assert result.empty


def brute_force(frame: pd.DataFrame) -> pd.DataFrame:
    """Count each unit and day straight from the definition, one day at a time."""
    admit = pd.to_datetime(frame["admit_time"]).dt.normalize()
    discharge = pd.to_datetime(frame["discharge_time"]).dt.normalize()
    last = max(admit.max(), discharge.max())
    rows = []
    for unit in sorted(frame["unit"].unique()):
        mine = frame["unit"] == unit
        for day in pd.date_range(admit[mine].min(), last, freq="D"):
            rows.append(
                (
                    day,
                    unit,
                    int((admit[mine] == day).sum()),
                    int((discharge[mine] == day).sum()),
                    int(((admit[mine] <= day) & ~(discharge[mine] <= day)).sum()),
                )
            )
    return expected(*rows) if rows else expected()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["ICU", "WARD", "ED"]),
            st.integers(min_value=0, max_value=20 * 24),  # admit, hours after the start
            st.one_of(st.none(), st.integers(min_value=0, max_value=10 * 24)),  # length of stay in hours
        ),
        min_size=1,
        max_size=40,
    )
)
def test_matches_counting_each_day_from_the_definition(raw: list[tuple[str, int, int | None]]) -> None:
    start = pd.Timestamp("2024-02-27")  # spans the leap day
    rows = []
    for unit, admit_h, los_h in raw:
        admit = start + pd.Timedelta(hours=admit_h)
        discharge = None if los_h is None else str(admit + pd.Timedelta(hours=los_h))
        rows.append(("P", unit, str(admit), discharge))
    frame = stays(*rows)
    result = encounters_to_daily(frame)
    check(result, brute_force(frame))
    # The census identity holds exactly for derived data.
    previous = result.groupby("unit")["census"].shift(1).fillna(0).astype("int64")
    assert (result["census"] == previous + result["admissions"] - result["discharges"]).all()
    assert np.all(result["census"].to_numpy() >= 0)
