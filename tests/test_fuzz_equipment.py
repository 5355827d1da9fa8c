"""The malformed-file campaign's equipment classes: broken inventories and event logs in fleet folders
fail with a specific message, exit 2, no traceback, and every file byte-identical."""

from __future__ import annotations

import logging
import random
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fuzz.__main__ import CLASSES, check_any, mutate_any, run_campaign
from fuzz.checks import _folder_fingerprint
from fuzz.equipment import EQUIPMENT_MUTATIONS, mutate_equipment, write_fleet_mutant

PER_CLASS = 10  # 17 classes x 10 = 170 broken fleets, about 20 s of CPU on the shared 2-core machine
REPO_ROOT = Path(__file__).resolve().parents[1]
# Classes whose mutants may leave the fleet valid: a CSV cut at a line end drops events, a
# Parquet flip may land in a value nobody checks; the rest break the contract by construction.
MAY_PASS = {"eq_truncated", "eq_parquet_byte_flip"}


@pytest.fixture(autouse=True)
def _quiet_loader_warnings() -> Iterator[None]:
    logger = logging.getLogger("medalloc_core.equipment.validation")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


def test_the_campaign_runs_every_equipment_class_after_the_unit_record_ones() -> None:
    assert set(EQUIPMENT_MUTATIONS) <= set(CLASSES) and len(EQUIPMENT_MUTATIONS) >= 15


@pytest.mark.parametrize("mutation", list(EQUIPMENT_MUTATIONS))
def test_equipment_class_fails_cleanly_and_leaves_the_fleet_untouched(mutation: str) -> None:
    invalid = 0
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(PER_CLASS):
            mutant = mutate_equipment(mutation, random.Random(f"equipment-{mutation}-{k}"))
            outcome, _ = check_any(mutant, Path(tmp), f"fleet{k}")
            assert outcome.passed, f"{mutant.kind} {mutant.fmt} ({mutant.detail}): {'; '.join(outcome.failures)}"
            invalid += outcome.valid is False
    if mutation not in MAY_PASS:
        assert invalid == PER_CLASS


def test_run_campaign_reports_equipment_mutants_in_the_same_table() -> None:
    classes = list(CLASSES)
    first = classes.index(next(iter(EQUIPMENT_MUTATIONS)))
    # files first .. first + 3 of the campaign are equipment mutants (the classes take turns)
    results = run_campaign(first + 4, seed=3)
    kinds = {r[0].mutant.kind for r in results[first:]}
    assert kinds <= {"inventory", "events"} and all(r[0].passed for r in results)


def test_a_real_process_exits_2_on_broken_fleets_and_names_each_broken_file(tmp_path: Path) -> None:
    folders, files, prints = [], [], []
    for k, mutation in enumerate(("eq_bad_event", "eq_unknown_device", "eq_duplicate_device", "eq_binary_garbage")):
        mutant = mutate_any(mutation, random.Random(f"process-{k}"))
        folder, path = write_fleet_mutant(mutant, tmp_path, f"fleet{k}")
        folders.append(folder)
        files.append(path)
        prints.append(_folder_fingerprint(folder))
    result = subprocess.run(
        [sys.executable, "-m", "medalloc.cli", "validate", *map(str, folders)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 2, output
    assert "Traceback" not in output and "could not be validated" not in output
    for path in files:
        assert f"error: {path}" in output
    assert [_folder_fingerprint(f) for f in folders] == prints
