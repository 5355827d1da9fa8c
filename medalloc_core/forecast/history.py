"""The node's forecast log: what every `medalloc forecast` run forecast, from which origin, with which model.

A node that runs for months needs to know, a week later, what it had said: the weekly
accountability (``medalloc_core.forecast.accountability``) scores last week's forecasts against
what happened, and a planner asks which model made a number. Each run appends one
:class:`ForecastRun` — per unit, per target, per day of the horizon, the quantiles; the origin
(the last day of data the forecast was made from); the model version — to one JSON file kept
in the node's state, beside its privacy ledger (``<ledger-path>.forecasts.json``).

The log is local: it holds forecasts computed from the node's true counts and is never sent.
It is rewritten whole on every append through :func:`medalloc_core.atomic.atomic_write_bytes`
(a crash leaves the old log or the new one, never half), and it is bounded: at most
:data:`MAX_RUNS` runs and :data:`MAX_LOG_BYTES` bytes, the oldest runs dropped first. A log
that is damaged or was edited into something else is refused with its path and what is wrong,
never silently replaced: the history it holds is what the drift alarm stands on.

The model version is the first 12 hex characters of the SHA-256 of the model's arrays file
(``.safetensors``): the same definition the node uses when it records an adopted model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medalloc_core.allocation.forecast_io import TARGET, VALUE, Q
from medalloc_core.atomic import atomic_write_bytes
from medalloc_core.contract import DATE, UNIT
from medalloc_core.paths import read_regular_bytes

LOG_FORMAT = "medalloc-forecast-log"
LOG_VERSION = 1
LOG_SUFFIX = ".forecasts.json"  # beside the ledger, as <ledger>.released.csv is
VERSION_CHARS = 12  # hex characters of the model file's SHA-256 that name a model version
MAX_RUNS = 260  # five years of weekly forecasts; the oldest runs go first
MAX_LOG_BYTES = 16 * 2**20  # a run of 40 units x 2 targets x 14 days x 3 levels is ~40 KiB
DECIMALS = 3  # forecast values are beds and patients: a thousandth is far below any decision


class ForecastLogError(ValueError):
    """The forecast log cannot be read or written as asked; the message names the file and what is wrong."""


def model_version(arrays_sha256: str) -> str:
    """The version name of a model from the SHA-256 (hex) of its ``.safetensors`` file: the first 12 characters."""
    digest = arrays_sha256.strip().lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"not a SHA-256 hex digest: {arrays_sha256!r}")
    return digest[:VERSION_CHARS]


def model_version_of_file(path: Path) -> str:
    """:func:`model_version` of a model file read from disk (streamed: a model file can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return model_version(digest.hexdigest())


def log_path_for_ledger(ledger_path: Path) -> Path:
    """Where a node keeps its forecast log: ``<ledger-path>.forecasts.json``."""
    return Path(f"{ledger_path}{LOG_SUFFIX}")


@dataclass(frozen=True)
class ForecastRun:
    """One forecast: ``values[u, t, d, k]`` is the level-``levels[k]`` quantile of ``targets[t]`` in
    ``units[u]`` on ``dates[d]`` (shape ``(U, T, D, K)``), made from data up to ``origin``."""

    made_at: str  # ISO timestamp (UTC) of the run
    origin: date  # the last day of data the forecast was made from
    model_version: str
    hospital: str
    units: tuple[str, ...]
    targets: tuple[str, ...]
    levels: tuple[float, ...]
    dates: tuple[date, ...]
    values: np.ndarray  # (U, T, D, K)

    @classmethod
    def from_frame(
        cls, frame: pd.DataFrame, *, origin: date, model_version: str, made_at: datetime | None = None
    ) -> ForecastRun:
        """A run from a forecast frame (``hospital, unit, date, target, q, value``; one hospital)."""
        hospitals = frame["hospital"].astype(str).unique().tolist()
        if len(hospitals) != 1:
            raise ValueError(f"a forecast run is one hospital's; the frame holds {hospitals}")
        units = tuple(sorted(frame[UNIT].astype(str).unique().tolist()))
        targets = tuple(sorted(frame[TARGET].astype(str).unique().tolist()))
        levels = tuple(sorted(float(q) for q in frame[Q].unique()))
        days = tuple(sorted(pd.to_datetime(frame[DATE]).dt.date.unique().tolist()))
        full = pd.MultiIndex.from_product([units, targets, days, levels], names=[UNIT, TARGET, DATE, Q])
        keyed = frame.assign(
            **{UNIT: frame[UNIT].astype(str), DATE: pd.to_datetime(frame[DATE]).dt.date, Q: frame[Q].astype(float)}
        ).set_index([UNIT, TARGET, DATE, Q])[VALUE]
        if keyed.index.has_duplicates:
            raise ValueError("the forecast frame has duplicate (unit, target, date, q) rows")
        values = keyed.reindex(full).to_numpy(dtype=float)
        if np.isnan(values).any():
            raise ValueError("the forecast frame does not hold every (unit, target, date, q) combination")
        return cls(
            made_at=(made_at or datetime.now(UTC)).isoformat(timespec="seconds"),
            origin=origin,
            model_version=model_version,
            hospital=hospitals[0],
            units=units,
            targets=targets,
            levels=levels,
            dates=days,
            values=np.round(values.reshape(len(units), len(targets), len(days), len(levels)), DECIMALS),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "made-at": self.made_at,
            "origin": self.origin.isoformat(),
            "model-version": self.model_version,
            "hospital": self.hospital,
            "units": list(self.units),
            "targets": list(self.targets),
            "levels": list(self.levels),
            "dates": [d.isoformat() for d in self.dates],
            "values": np.round(self.values, DECIMALS).tolist(),
        }

    @classmethod
    def from_dict(cls, raw: Any, where: str) -> ForecastRun:
        """A run read back; ``ForecastLogError`` naming ``where`` and the field when anything is off."""
        if not isinstance(raw, dict):
            raise ForecastLogError(f"{where}: expected an object, got {type(raw).__name__}")
        fields = ("made-at", "origin", "model-version", "hospital", "units", "targets", "levels", "dates", "values")
        missing = [f for f in fields if f not in raw]
        if missing:
            raise ForecastLogError(f"{where}: missing field(s) {missing}")

        def strings(name: str) -> tuple[str, ...]:
            value = raw[name]
            if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
                raise ForecastLogError(f"{where}, field '{name}': expected a non-empty list of strings")
            if len(set(value)) != len(value):
                raise ForecastLogError(f"{where}, field '{name}': repeated entries")
            return tuple(value)

        def day(text: Any, name: str) -> date:
            try:
                return date.fromisoformat(text)
            except (TypeError, ValueError):
                raise ForecastLogError(f"{where}, field '{name}': expected a YYYY-MM-DD date, got {text!r}") from None

        levels = raw["levels"]
        if (
            not isinstance(levels, list)
            or not levels
            or not all(isinstance(v, int | float) and not isinstance(v, bool) and 0 < v < 1 for v in levels)
            or sorted(levels) != levels
            or len(set(levels)) != len(levels)
        ):
            raise ForecastLogError(f"{where}, field 'levels': expected increasing quantile levels in (0, 1)")
        dates = tuple(day(d, "dates") for d in strings("dates"))
        units, targets = strings("units"), strings("targets")
        shape = (len(units), len(targets), len(dates), len(levels))
        try:
            values = np.asarray(raw["values"], dtype=float)
        except (TypeError, ValueError):
            raise ForecastLogError(f"{where}, field 'values': not a nested list of numbers") from None
        if values.shape != shape:
            raise ForecastLogError(
                f"{where}, field 'values': shape {values.shape}, expected {shape} (units x targets x dates x levels)"
            )
        if not np.isfinite(values).all():
            raise ForecastLogError(f"{where}, field 'values': not every value is a finite number")
        for name in ("made-at", "model-version", "hospital"):
            if not isinstance(raw[name], str):
                raise ForecastLogError(f"{where}, field '{name}': expected a string")
        return cls(
            made_at=raw["made-at"],
            origin=day(raw["origin"], "origin"),
            model_version=raw["model-version"],
            hospital=raw["hospital"],
            units=units,
            targets=targets,
            levels=tuple(float(v) for v in levels),
            dates=dates,
            values=values,
        )


def _encode(runs: Sequence[ForecastRun]) -> bytes:
    body = {"format": LOG_FORMAT, "version": LOG_VERSION, "runs": [r.to_dict() for r in runs]}
    return (json.dumps(body, separators=(",", ":")) + "\n").encode("utf-8")


def read_log(path: Path) -> list[ForecastRun]:
    """Every run in the log, oldest first; ``[]`` when there is no log yet.

    Raises ``ForecastLogError`` for a file that is not a forecast log (unreadable, not JSON,
    another format or version, a run with a malformed field).
    """
    path = Path(path)
    if not path.exists():
        return []
    try:
        data = read_regular_bytes(path, limit=2 * MAX_LOG_BYTES, what="a forecast log")
        body = json.loads(data.decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ForecastLogError(
            f"{path}: not a readable forecast log ({exc}); move it aside to start a new log, or restore it from backup"
        ) from None
    if not isinstance(body, dict) or body.get("format") != LOG_FORMAT:
        raise ForecastLogError(f'{path}: not a MedAlloc forecast log (no "format": "{LOG_FORMAT}")')
    if body.get("version") != LOG_VERSION:
        raise ForecastLogError(
            f"{path}: forecast log version {body.get('version')!r}; this MedAlloc reads {LOG_VERSION}"
        )
    runs = body.get("runs")
    if not isinstance(runs, list):
        raise ForecastLogError(f"{path}: field 'runs' is not a list")
    return [ForecastRun.from_dict(raw, f"{path}, run {i + 1}") for i, raw in enumerate(runs)]


def bounded(
    runs: Sequence[ForecastRun], *, max_runs: int = MAX_RUNS, max_bytes: int = MAX_LOG_BYTES
) -> list[ForecastRun]:
    """The newest runs that fit the bounds (at most ``max_runs``, encoded in at most ``max_bytes``)."""
    kept = list(runs)[-max_runs:] if max_runs > 0 else []
    sizes = [len(_encode([r])) for r in kept]
    total = sum(sizes)
    start = 0
    while kept[start:] and total > max_bytes:
        total -= sizes[start]
        start += 1
    return kept[start:]


def append_run(
    path: Path, run: ForecastRun, *, max_runs: int = MAX_RUNS, max_bytes: int = MAX_LOG_BYTES
) -> list[ForecastRun]:
    """Add ``run`` to the log at ``path`` (created if missing), atomically, keeping it within its bounds.

    Returns the runs now in the log. An existing log that cannot be read is refused
    (``ForecastLogError``) and left as it is.
    """
    runs = bounded([*read_log(path), run], max_runs=max_runs, max_bytes=max_bytes)
    if not runs or runs[-1] is not run:
        raise ForecastLogError(f"{path}: one forecast run is larger than the log's bound of {max_bytes} bytes")
    atomic_write_bytes(Path(path), _encode(runs))
    return runs


def run_bytes(run: ForecastRun) -> int:
    """The size one run takes in the log (for the docs' sizing and the bound's tests)."""
    return len(_encode([run])) - len(_encode([]))


__all__ = [
    "LOG_SUFFIX",
    "MAX_LOG_BYTES",
    "MAX_RUNS",
    "ForecastLogError",
    "ForecastRun",
    "append_run",
    "bounded",
    "log_path_for_ledger",
    "model_version",
    "model_version_of_file",
    "read_log",
    "run_bytes",
]
