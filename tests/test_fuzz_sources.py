"""The malformed-resource suite: seeded broken OMOP CDMs and FHIR exports through the loaders and the CLI.

Every class of the campaign (``python -m fuzz``) runs on every kind of source it
applies to: each must be refused with an error naming the file, the row/line/entry, the
record and the field, exit 2, no traceback, and every file left as it was.
"""

from __future__ import annotations

import logging
import random
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from fuzz.source_checks import check_source
from fuzz.source_mutations import (
    SOURCE_MUTATIONS,
    SourceMutant,
    _bases,
    _fhir_files,
    mutate_source,
    write_source,
)

PER_CLASS = 4  # 23 classes x 4 = 92 sources, about 45 s on a shared 2-core machine
MIN_SOURCES = 90


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    logger = logging.getLogger("medalloc_core")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


def _failures(mutant: SourceMutant) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        outcome = check_source(mutant, Path(tmp), write_source(mutant, Path(tmp)))
    return (
        [f"{mutant.mutation} ({mutant.kind}: {mutant.detail}): {'; '.join(outcome.failures)}"]
        if outcome.failures
        else []
    )


def test_every_malformed_source_is_refused_by_name() -> None:
    failures, tried, kinds = [], 0, set()
    for name in SOURCE_MUTATIONS:
        for k in range(PER_CLASS):
            mutant = mutate_source(name, random.Random(f"test-{name}-{k}"))
            kinds.add(mutant.kind)
            failures += _failures(mutant)
            tried += 1
    assert tried >= MIN_SOURCES
    assert kinds == {"omop-sqlite", "omop-csv", "fhir-ndjson", "fhir-bundle"}
    assert failures == []


def test_the_check_can_fail() -> None:
    """An expectation the error does not meet, and an unbroken source, are both reported."""
    mutant = mutate_source("fhir_missing_subject", random.Random(1))
    wrong = replace(mutant, names=(*mutant.names, "'period.start'"))
    (failure,) = _failures(wrong)
    assert "no error names all of" in failure
    files, location = _fhir_files(_bases().resources, "fhir-ndjson")
    intact = SourceMutant("none", "fhir-ndjson", "left valid", files, location, ("anything",))
    assert any("malformed source reported valid" in f for f in _failures(intact))
