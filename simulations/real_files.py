"""A folder of the researcher's own hospital files as a simulation region: checked before anything runs.

``[region] data-dir = "DIR"`` in a scenario makes ``medalloc simulate`` run the federation over
the files in DIR (one file per hospital, the data contract's shapes, e.g. what ``medalloc
generate`` writes) instead of generating a region. Every file is validated, the targets follow
the count columns every file has, and every unit must be long enough for the federation's
windows; each problem is reported with the file, the unit and the option that fixes it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medalloc_core.contract import ADMISSIONS, CENSUS, DATE, UNIT, DataContractError, Frequency
from medalloc_core.tasks.forecasting.task import DATA_SUFFIXES
from medalloc_core.validation import load_unit_records

logger = logging.getLogger(__name__)

__all__ = ["DataDirError", "DataDirPlan", "inspect_data_dir"]

DEFAULT_TARGETS: tuple[str, ...] = (ADMISSIONS, CENSUS)


class DataDirError(ValueError):
    """The data folder cannot be simulated as it is; the message names the file, unit and option."""


@dataclass(frozen=True)
class DataDirPlan:
    """What a data folder gives the simulation: its files, the targets every file has, the shortest unit."""

    files: tuple[Path, ...]
    targets: tuple[str, ...]
    shortest_days: int


def inspect_data_dir(
    folder: Path, federation: Mapping[str, Any], evaluation: Mapping[str, Any] | None = None
) -> DataDirPlan:
    """Validate every hospital file of ``folder`` against the data contract and the federation's windows.

    Parameters
    ----------
    folder
        One file per hospital (``.csv`` or ``.parquet``, daily unit records).
    federation
        The scenario's ``[federation]`` keys (``history``, ``horizon``, ``targets`` when set).
    evaluation
        The scenario's ``[evaluation]`` keys (``weeks`` held out, default 16; ``origins``,
        default 8; ``validation-days``, default 28).

    Raises
    ------
    DataDirError
        No hospital files; a file breaks the data contract or is weekly; a ``targets`` column is
        missing from a file; no default target is in every file; a unit is too short for
        ``history + horizon`` plus the validation days and the held-out weeks.
    """
    if not folder.is_dir():
        raise DataDirError(f"[region] data-dir {folder} is not a folder")
    files = tuple(sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in DATA_SUFFIXES))
    if not files:
        raise DataDirError(f"[region] data-dir {folder} holds no hospital files ({', '.join(DATA_SUFFIXES)})")
    history = int(federation.get("history", 56))
    horizon = int(federation.get("horizon", 14))
    records = {}
    for path in files:
        try:
            recs = load_unit_records(path)
        except DataContractError as exc:
            raise DataDirError(f"{exc}\n(fix the file, or move it out of [region] data-dir {folder})") from exc
        if recs.frequency is not Frequency.DAILY:
            raise DataDirError(f"{path}: weekly records; the federation forecasts daily data")
        records[path] = recs
    common = [c for c in DEFAULT_TARGETS if all(c in r.count_columns for r in records.values())]
    if "targets" in federation:
        targets = tuple(t.strip() for t in str(federation["targets"]).split(",") if t.strip())
        for path, recs in records.items():
            missing = [t for t in targets if t not in recs.count_columns]
            if missing:
                raise DataDirError(
                    f"{path}: no {missing} column (it has {recs.count_columns}); set [federation] targets to "
                    f'columns every file has, e.g. targets = "{",".join(common) or ADMISSIONS}"'
                )
    elif common:
        targets = tuple(common)
        if targets != DEFAULT_TARGETS:
            logger.warning("not every file has %s: forecasting %s only", list(DEFAULT_TARGETS), list(targets))
    else:
        raise DataDirError(
            f"no file column set in {folder} includes admissions or census in every file; "
            "set [federation] targets to a count column every file has"
        )
    evaluation = evaluation or {}
    weeks, val = int(evaluation.get("weeks", 16)), int(evaluation.get("validation-days", 28))
    need = history + horizon + val + 7 * weeks
    shortest = None
    for path, recs in records.items():
        for unit, days in _unit_days(recs.frame).items():
            shortest = days if shortest is None else min(shortest, days)
            if days < need:
                fits = (days - history - horizon - val) // 7
                origins = int(evaluation.get("origins", 8))
                hint = (
                    f"set [evaluation] weeks = {fits} (and origins <= {7 * fits - horizon + 1} to fit) to hold out "
                    f"less, or lower [federation] history"
                    if fits >= 1 and 7 * fits >= horizon
                    else "it is too short for the evaluation: remove the unit or the file from the folder"
                )
                raise DataDirError(
                    f"{path}, unit {unit!r}: {days} days; each unit needs history {history} + horizon {horizon} + "
                    f"validation {val} + {weeks} held-out weeks for {origins} forecast origins = {need}; {hint}"
                )
    return DataDirPlan(files, targets, int(shortest or 0))


def _unit_days(frame: Any) -> dict[str, int]:
    """Calendar days from each unit's first to last record (the windows run on the full calendar)."""
    spans = frame.groupby(UNIT)[DATE].agg(["min", "max"])
    return {str(u): int((row["max"] - row["min"]).days) + 1 for u, row in spans.iterrows()}
