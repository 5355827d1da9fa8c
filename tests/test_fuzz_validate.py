"""Fuzz the loaders and ``medalloc validate`` with generated malformed files: a clear error, exit 2,
no traceback, file untouched."""

from __future__ import annotations

import datetime
import hashlib
import logging
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.checks import check, check_subprocess, write_mutant
from fuzz.mutations import FORMATS, MUTATIONS, Base, Expect, Mutant, bases, mutate, truncation_oracle
from medalloc_core.contract import DataContractError
from medalloc_core.io import read_table
from medalloc_core.validation import load_unit_records, validate_file

# The suite must try at least MIN_FILES generated files (asserted, so it cannot shrink
# silently): PER_CLASS seeded mutants of every class, about 20 s on a shared 2-core machine.
MIN_FILES = 300
PER_CLASS = 22
GARBAGE_EXAMPLES = 60
_FUZZ = settings(
    derandomize=True,  # same files on every run and in CI
    database=None,  # no example database: nothing replayed from an earlier run
    deadline=None,  # one file goes through the library and the CLI: timing varies on a busy machine
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def fuzz(max_examples: int) -> settings:
    """The deterministic fuzz settings with a number of examples."""
    return settings(_FUZZ, max_examples=max_examples)


@pytest.fixture(autouse=True)
def _quiet_loader_warnings() -> Iterator[None]:
    # load_unit_records logs every warning of every accidentally valid file.
    logger = logging.getLogger("medalloc_core.validation")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


def _failures(mutant: Mutant) -> list[str]:
    """Write the mutant to a fresh directory and check it; empty when every promise held."""
    with tempfile.TemporaryDirectory() as tmp:
        outcome = check(mutant, write_mutant(mutant, Path(tmp)))
    return (
        [f"{mutant.mutation} ({mutant.kind} {mutant.fmt}: {mutant.detail}): {'; '.join(outcome.failures)}"]
        if outcome.failures
        else []
    )


def test_the_suite_tries_at_least_min_files() -> None:
    """Removing a class or lowering PER_CLASS below the promised count fails here."""
    assert len(MUTATIONS) * PER_CLASS >= MIN_FILES
    assert len(MUTATIONS) >= 16


# Share of a class's mutants that may be valid or undecided: a byte flip often lands in a
# data page and just changes a value; the other classes break the contract by construction.
MAY_PASS_SHARE = {"parquet_byte_flip": 0.5}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_mutation_class_fails_cleanly_and_leaves_the_file_untouched(mutation: str) -> None:
    """PER_CLASS seeded mutants of valid daily/encounter CSV and Parquet files through validate_file,
    load_unit_records and the CLI."""
    tried = 0
    failed: list[str] = []
    may_pass = 0
    distinct: set[bytes] = set()

    # A seed per example rather than st.randoms(): hypothesis stops early once a mutator with
    # few random choices has no new choice sequence left, and the count must not shrink.
    @fuzz(PER_CLASS)
    @given(seed=st.integers(0, 2**64 - 1))
    def one(seed: int) -> None:
        nonlocal tried, may_pass
        mutant = mutate(mutation, random.Random(seed))
        tried += 1
        may_pass += mutant.expect.valid is not False
        distinct.add(hashlib.sha256(mutant.data).digest())
        failed.extend(_failures(mutant))

    one()
    total = tried
    print(
        f"\nfuzz {mutation}: tried {total} ({len(distinct)} distinct), passed {total - len(failed)}, "
        f"{may_pass} valid or undecided by the oracle"
    )
    assert not failed, f"{len(failed)} of {total} files broke a promise:\n" + "\n".join(failed[:15])
    assert total >= PER_CLASS
    assert may_pass <= MAY_PASS_SHARE.get(mutation, 0.25) * total, "most mutants must really be malformed"


@fuzz(GARBAGE_EXAMPLES)
@given(
    noise=st.binary(max_size=2048),
    head=st.sampled_from([b"", b"PAR1", b"\xef\xbb\xbf", b"date,unit,census\n"]),
    tail=st.sampled_from([b"", b"PAR1"]),
)
def test_arbitrary_bytes_are_refused_with_a_named_file(noise: bytes, head: bytes, tail: bytes) -> None:
    """Any bytes, bare or dressed as Parquet/CSV, are refused (a table needs a date, a unit and a count)."""
    mutant = Mutant("binary_garbage", "daily", "csv", f"{len(noise)} random bytes", head + noise + tail, Expect(False))
    assert not _failures(mutant)


@fuzz(40)
@given(kind=st.sampled_from(["daily", "encounters"]), data=st.data())
def test_truncated_csv_passes_exactly_when_the_oracle_says_it_still_holds(kind: str, data: st.DataObject) -> None:
    """A CSV cut anywhere: at a record boundary it is valid (exit 0), elsewhere the broken row is named."""
    base = bases()[kind]
    cut = data.draw(st.integers(0, len(base.csv) - 1), label="cut")
    prefix = base.csv[:cut]
    assert not _failures(Mutant("truncated", kind, "csv", f"cut at {cut}", prefix, truncation_oracle(base, prefix)))


_SMALL = "date,unit,admissions,census\n2024-01-01,ICU,2,10\n2024-01-02,ICU,3,1\n"


@pytest.mark.parametrize(
    ("data", "valid", "row"),
    [
        (_SMALL, True, None),  # at a line end: the first records of a valid file
        (_SMALL + "2024-01-03,ICU,2,", False, 4),  # the last record lost its census
        (_SMALL + "2024-01-03,I", False, 4),  # too few fields
        (_SMALL + "2024-01-03,ICU,2,1", True, None),  # census 12 cut to 1: still a count
        ("date,unit,adm", False, None),  # inside the header
        (_SMALL[:40], False, 2),  # the only record cut short
    ],
)
def test_truncation_oracle_on_hand_made_cuts(data: str, valid: bool, row: int | None) -> None:
    """The oracle the fuzz test trusts, checked by hand on prefixes of a small file, then against the validator."""
    base = Base("daily", ("date", "unit", "admissions", "census"), (), b"", b"", pa.table({}))
    expect = truncation_oracle(base, data.encode())
    assert (expect.valid, expect.row) == (valid, row)
    assert not _failures(Mutant("truncated", "daily", "csv", "hand", data.encode(), expect))


def _one_malformed_per_class(directory: Path) -> list[Path]:
    paths = []
    for mutation in MUTATIONS:
        for attempt in range(100):
            mutant = mutate(mutation, random.Random(f"subprocess-{mutation}-{attempt}"))
            if mutant.expect.valid is False:
                paths.append(write_mutant(mutant, directory, f"{mutation}-{mutant.kind}-{mutant.fmt}"))
                break
    return paths


@pytest.mark.slow
def test_real_subprocess_exits_2_without_traceback(tmp_path: Path) -> None:
    """``python -m medalloc.cli validate``: one malformed file per class in one process, plus three files alone."""
    paths = _one_malformed_per_class(tmp_path)
    assert len(paths) == len(MUTATIONS)
    failures = check_subprocess(paths)
    assert not failures, failures
    for path in (
        paths[0],
        paths[list(MUTATIONS).index("binary_garbage")],
        paths[list(MUTATIONS).index("parquet_byte_flip")],
    ):
        assert not check_subprocess([path]), path


# ----------------------------------------------------------- regressions found by this fuzzing


def _message(path: Path) -> str:
    with pytest.raises(DataContractError) as caught:
        read_table(path)
    return str(caught.value.problems[0])


def test_a_nul_byte_after_the_first_8_kib_is_refused_with_its_row(tmp_path: Path) -> None:
    """A NUL deep inside a CSV used to end up inside a unit name and the file passed."""
    rows = "".join(f"2024-01-{d:02d},ICU,{d},{d}\n" for d in range(1, 29)) * 20
    text = "date,unit,admissions,census\n" + rows
    data = text.encode()
    at = data.index(b"ICU", 9000) + 1
    path = tmp_path / "nul.csv"
    path.write_bytes(data[:at] + b"\x00" + data[at:])
    message = _message(path)
    row = data.count(b"\n", 0, at) + 1
    assert f"row {row}:" in message and f"byte 0x00 at offset {at}" in message


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_utf16_without_bom_is_named_utf16(tmp_path: Path, codec: str) -> None:
    """UTF-16 without a byte-order mark used to be reported as 'binary data'."""
    path = tmp_path / "export.csv"
    path.write_bytes("date,unit,census\n2024-01-01,Réa,1\n".encode(codec))
    assert "UTF-16 text without a byte-order mark" in _message(path)


def test_a_file_holding_only_a_utf8_bom_is_empty(tmp_path: Path) -> None:
    """A BOM alone used to surface pyarrow's 'Empty CSV file' wording."""
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf \n")
    assert "file is empty" in _message(path)


@pytest.mark.parametrize(
    ("content", "column"),
    [
        ("date,unit,census\n2024-01-01,ICU,1\n9999-12-31,ICU,1\n", "date"),
        ("date,unit,census\n1677-09-21,ICU,1\n2024-01-02,ICU,1\n", "date"),
        (
            "encounter_id,patient_id,unit,admit_time,discharge_time\nE1,P1,ICU,2024-01-01 10:00,2262-04-12 10:00\n",
            "discharge_time",
        ),
    ],
)
def test_dates_beyond_nanosecond_timestamps_are_errors_not_crashes(tmp_path: Path, content: str, column: str) -> None:
    """A year like 9999 used to raise OutOfBoundsDatetime out of validate_file and load_unit_records."""
    path = tmp_path / "far.csv"
    path.write_text(content)
    report = validate_file(path)
    assert [(p.row, p.column) for p in report.errors] == [(3 if column == "date" and "9999" in content else 2, column)]
    assert "is outside the dates MedAlloc can handle (1678-01-01 .. 2261-12-31)" in report.errors[0].message
    with pytest.raises(DataContractError):
        load_unit_records(path)


def test_parquet_with_a_repeated_column_name_is_named_like_csv(tmp_path: Path) -> None:
    """pyarrow's 'Multiple matches for FieldRef' dump used to be the message."""
    days = pa.array([datetime.date(2024, 1, 1), datetime.date(2024, 1, 2)])
    table = pa.Table.from_arrays(
        [days, pa.array(["ICU", "ICU"]), pa.array([1, 2]), pa.array([3, 4])], names=["date", "unit", "census", "census"]
    )
    path = tmp_path / "twice.parquet"
    pq.write_table(table, path)
    report = validate_file(path)
    assert [(p.row, p.column, p.message) for p in report.errors] == [
        (1, "census", "column 'census' appears more than once in the header; expected unique column names")
    ]


def test_parquet_timestamps_in_an_unknown_time_zone_are_named(tmp_path: Path) -> None:
    """pyarrow's ArrowInvalid ('Cannot locate or parse timezone') used to escape validate_file and load_unit_records."""
    stamps = pa.array([0, 86_400], pa.timestamp("s", tz="Not/AZone"))
    path = tmp_path / "zoned.parquet"
    pq.write_table(pa.table({"date": stamps, "unit": ["ICU", "ICU"], "census": [1, 2]}), path)
    report = validate_file(path)
    assert [(p.row, p.column) for p in report.errors] == [(None, "date")]
    assert "has time zone 'Not/AZone', which is not a known zone" in report.errors[0].message
    with pytest.raises(DataContractError):
        load_unit_records(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_bases_are_valid(fmt: str) -> None:
    """The files every mutation starts from pass, or a 'must fail' would prove nothing."""
    for kind in ("daily", "encounters"):
        base = bases()[kind]
        mutant = Mutant("none", kind, fmt, "unchanged", base.csv if fmt == "csv" else base.parquet, Expect(True))
        assert not _failures(mutant)
