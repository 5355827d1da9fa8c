"""A node's daily counts, built once and kept up to date: when its encounter file grows, only the new rows are read.

A hospital's encounter export grows every day; a node that re-reads ten million stays to count one
more day wastes minutes per round. :class:`CountCache` keeps, in a folder on the node (it holds the
stays with their patient ids, as the source does: it never leaves the node), the stays and daily
counts last read and a *watermark* of the source:

* an **encounter CSV** (the contract's shape 2): the byte offset of the end of the last record read,
  the number of lines before it, and a SHA-256 of every byte before it. When the file has grown and
  those bytes are unchanged (an append), only the bytes after the watermark are read, by the same
  reader as a whole file (the engine or the contract's validator), their problems named by the
  file's own rows; the new stays are checked against the old ones (a repeated ``encounter_id``, a
  patient's overlapping stays) and their counts added to the old days' counts. Daily counts are a
  sum over stays, so the result is exactly a full recount's;
* **any other file source** (a Parquet file, a unit-record file, an OMOP SQLite or export folder, a
  FHIR export): its paths, sizes and modification times; unchanged, nothing is read, changed, it is
  read again in full (a Parquet file or a database is rewritten, not appended to, and an OMOP
  visit's end is filled in *in place* when the patient leaves, which no id watermark sees);
* a **database server**: nothing cheap says whether it changed, so it is read in full every time.

Correctness rules (docs/data.md, "Keeping the counts up to date"):

* a stay spanning the watermark is counted right: stays still open at the old last day stay in the
  census of every new day, and a new record of a stay admitted before the watermark (an export that
  writes a stay when it ends) adds its nights to the days already counted;
* a new record that changes a day already counted (a late record) is counted, *and reported* (how
  many, the first day): the counts equal a full recount's, and a day the node has already released
  keeps its released value: the release (``privacy.continuity``) finds the changed digest, never
  releases the day twice, and tells the correction;
* a file that shrank, or whose counted bytes changed (edited or replaced), is recounted in full and
  the reason reported; so is a file whose last record had no line end when it was counted and that
  grew since (the new bytes may continue that record);
* a cache of another counting version, another mapping or another file is never used.

The cache is written atomically (new files, then the state record that names them), so a node
killed mid-write keeps its previous cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from medalloc_core.atomic import atomic_write_bytes
from medalloc_core.contract import (
    ADMIT_TIME,
    DATE,
    ENCOUNTER_ID,
    PATIENT_ID,
    UNIT,
    DataContractError,
    Frequency,
    Problem,
    UnitRecords,
)
from medalloc_core.encounters import DATE_DTYPE, encounters_to_daily
from medalloc_core.io import PARQUET_MAGIC
from medalloc_core.sources import DataSource, SourceData, inspect_node_source, inspect_source, left_out_of
from medalloc_core.sources.stays import STAY_COLUMNS
from medalloc_core.validation import ValidationReport, show_value

__all__ = ["COUNTS_VERSION", "CountCache", "CountedSource", "Refresh"]

logger = logging.getLogger(__name__)

#: Bumped whenever the counting rules change: a cache written under another version is recounted.
COUNTS_VERSION = 1
_STATE = "state.json"
#: Stays appended are kept as Parquet parts; past this many they are written again as one.
_MAX_PARTS = 32
_BLOCK = 1 << 20
_ROW_IN_TEXT = re.compile(r"(?<=\brow )(\d+)")

Mode = Literal["unchanged", "appended", "full"]


@dataclass(frozen=True)
class Refresh:
    """What one :meth:`CountCache.read` did: read nothing, only the appended records, or the whole source.

    ``records_read`` counts the source records (CSV rows) read this time: 0 when unchanged, the
    appended rows when appended, every row on a full read. ``late_stays`` of the appended records
    change days counted before (the first of those days is ``first_late_day``).
    """

    mode: Mode
    records_read: int
    reason: str
    late_stays: int = 0
    first_late_day: str | None = None


@dataclass(frozen=True)
class CountedSource:
    """A source read through the cache: its data (None when it has errors), the report, and what was read."""

    data: SourceData | None
    report: ValidationReport
    refresh: Refresh

    def loaded(self) -> SourceData:
        """The data, or ``DataContractError`` carrying every problem (as ``load_source`` raises)."""
        if self.data is None:
            raise DataContractError(self.report.problems)
        return self.data

    @property
    def left_out(self) -> dict[str, int]:
        """A node's reading (``CountCache(lenient=True)``): the malformed records left out, by reason, in all."""
        return left_out_of(self.report)


def count_cache_folder(ledger_path: Path) -> Path:
    """Where a node keeps its count cache: ``<ledger>.counts/`` beside its ledger and release."""
    return ledger_path.with_name(ledger_path.name + ".counts")


class CountCache:
    """The daily counts and stays of one source, kept in ``folder`` and brought up to date by reading what is new.

    Parameters
    ----------
    folder : Path
        A folder of the node's own (created 0700): it holds the stays with their patient ids.
    lenient : bool (default: False)
        A node's reading (issue 20, ``sources.inspect_node_source``): a malformed record, in the
        source or in an appended tail, is left out before counting and counted by reason
        (:attr:`CountedSource.left_out`, kept with the counts), never a reason to refuse; an
        appended ``encounter_id`` seen before is then no error either (a node does not count by it).
    """

    def __init__(self, folder: Path, *, lenient: bool = False) -> None:
        self.folder = Path(folder)
        self.lenient = lenient
        self._inspect = inspect_node_source if lenient else inspect_source

    # ------------------------------------------------------------------ public
    def read(self, source: DataSource) -> CountedSource:
        """The source's validated daily records and stays, reading only what changed since the last read."""
        identity = _identity(source, self.lenient)
        state = self._state()
        if identity is None:  # a database server
            return self._full(source, None, "a database server: nothing cheap says whether it changed")
        if state is None:
            return self._full(source, identity, "no count cache yet")
        if state.get("identity") != identity:
            return self._full(source, identity, "the cache holds another source, mapping or counting version")
        if state["kind"] == "append":
            return self._append(source, identity, state)
        if state.get("fingerprint") == _json(source.fingerprint()):
            return self._cached(state, Refresh("unchanged", 0, "the source's files are unchanged"))
        return self._full(source, identity, "the source changed (it is not an encounter CSV: read again in full)")

    # ------------------------------------------------------------------ the three ways
    def _full(self, source: DataSource, identity: dict[str, Any] | None, reason: str) -> CountedSource:
        path = Path(source.location)
        before = _stat(path) if identity is not None else None
        report, data = self._inspect(source)
        records = len(data.stays) if data is not None and data.stays is not None else int(report.summary.get("rows", 0))
        refresh = Refresh("full", records, reason)
        logger.info("%s: counted in full (%s): %s record(s)", source.display, reason, f"{records:,}")
        if identity is None or data is None:
            return CountedSource(data, report, refresh)
        if _stat(path) != before:  # it changed while being read: the watermark would not match what was read
            logger.warning("%s changed while it was read; its counts are not cached this time", source.display)
            return CountedSource(data, report, refresh)
        state: dict[str, Any] = {"identity": identity, "summary": report.summary, "warnings": _dump(report.warnings)}
        if _appendable(source, data) and before is not None:
            size = before[0]
            digest, lines, last_byte = _prefix(path, size)
            state.update(
                kind="append",
                offset=size,
                lines=lines,
                sha256=digest.hexdigest(),
                ends_with_newline=last_byte == b"\n",
                stat=list(before),
                last_day=f"{data.records.frame[DATE].max():%Y-%m-%d}",
            )
        else:
            state.update(kind="fingerprint", fingerprint=_json(source.fingerprint()))
        self._keep(state, data)
        return CountedSource(data, report, refresh)

    def _cached(self, state: dict[str, Any], refresh: Refresh) -> CountedSource:
        stays, daily = self._frames(state)
        report = ValidationReport(state["summary"].get("file", ""), _load(state["warnings"]), dict(state["summary"]))
        frequency = Frequency(state.get("frequency", Frequency.DAILY.value))
        records = UnitRecords(frame=daily, frequency=frequency, source=report.path, shape=state.get("shape", "daily"))
        kept = stays if state.get("has_stays", True) else None
        return CountedSource(SourceData(records, kept, report), report, refresh)

    def _append(self, source: DataSource, identity: dict[str, Any], state: dict[str, Any]) -> CountedSource:
        path = Path(source.location)
        now = _stat(path)
        if now is None:
            return self._full(source, identity, "the file cannot be read")
        if list(now) == state["stat"]:
            return self._cached(state, Refresh("unchanged", 0, "the file is unchanged"))
        offset = int(state["offset"])
        if now[0] < offset:
            return self._full(source, identity, f"the file shrank ({now[0]:,} bytes, {offset:,} counted)")
        digest, lines, _ = _prefix(path, offset)
        if digest.hexdigest() != state["sha256"]:
            return self._full(source, identity, "records already counted changed (the file was edited or replaced)")
        if now[0] == offset:  # touched, not grown
            state["stat"] = list(now)
            self._keep(state, None)
            return self._cached(state, Refresh("unchanged", 0, "the file's records are unchanged"))
        if not state["ends_with_newline"]:
            return self._full(source, identity, "the last record counted had no line end and the file grew after it")
        return self._read_tail(source, identity, state, now, lines, digest)

    # ------------------------------------------------------------------ appended records
    def _read_tail(
        self,
        source: DataSource,
        identity: dict[str, Any],
        state: dict[str, Any],
        now: tuple[int, int],
        lines: int,
        digest: Any,
    ) -> CountedSource:
        """Read the bytes after the watermark (hashing them on the way: the new watermark needs no second pass)."""
        path = Path(source.location)
        offset, size = int(state["offset"]), now[0]
        self._ensure_folder()
        tail = self.folder / "appended.csv"
        with path.open("rb") as handle:
            header = handle.readline()
            handle.seek(offset)
            with _private_file(tail) as out:
                out.write(header)
                remaining = size - offset
                lines_now = lines
                while remaining > 0:
                    block = handle.read(min(_BLOCK, remaining))
                    if not block:
                        break
                    out.write(block)
                    digest.update(block)
                    lines_now += block.count(b"\n")
                    remaining -= len(block)
            handle.seek(max(0, size - 1))
            last_byte = handle.read(1)
        try:
            report, data = self._inspect(DataSource(str(tail), "contract", source.mapping))
        finally:
            tail.unlink(missing_ok=True)
        shift = lines - 1  # the tail's row 2 is the file's row lines + 1
        problems = [_moved(p, str(tail), str(path), shift) for p in report.problems]
        new_rows = int(report.summary.get("rows", 0))
        if data is None or data.stays is None:
            errors = [p for p in problems if p.severity == "error"] or [
                Problem(str(path), "the appended records are not encounter records; expected the file's own columns")
            ]
            failed = ValidationReport(str(path), errors + [p for p in problems if p.severity == "warning"], {})
            return CountedSource(None, failed, Refresh("appended", new_rows, "the appended records have errors"))
        old_stays, old_daily = self._frames(state)
        new_stays = data.stays[list(STAY_COLUMNS)].reset_index(drop=True)
        # ---- checks across the watermark: one row per stay, and a patient's overlapping stays
        repeated = old_stays[ENCOUNTER_ID].isin(set(new_stays[ENCOUNTER_ID]))
        if repeated.any() and not self.lenient:
            first_old = dict(zip(old_stays.loc[repeated, ENCOUNTER_ID], old_stays.index[repeated], strict=True))
            hits = new_stays.index[new_stays[ENCOUNTER_ID].isin(first_old)]
            errors = [
                Problem(
                    str(path),
                    f"duplicate encounter_id {show_value(new_stays.at[i, ENCOUNTER_ID])}, first at row "
                    f"{first_old[new_stays.at[i, ENCOUNTER_ID]] + 2}; expected one row per stay",
                    row=int(i) + lines + 1,
                    column=ENCOUNTER_ID,
                )
                for i in hits[:50]
            ]
            if len(hits) > 50:
                errors.append(
                    Problem(str(path), f"... and {len(hits) - 50:,} more row(s) with the same problem (not listed)")
                )
            failed = ValidationReport(str(path), errors, {})
            return CountedSource(None, failed, Refresh("appended", new_rows, "appended records repeat counted ones"))
        warnings = [p for p in problems if p.severity == "warning" and "previous stay is still open" not in p.message]
        overlap = _overlaps_with_new(old_stays, new_stays, path, lines)
        if overlap is not None:
            warnings.append(overlap)
        # ---- counts: the old days, their open stays carried onto the new days, plus the new stays' own counts
        old_last = pd.Timestamp(state["last_day"])
        daily = _add_stays(old_daily, old_stays, new_stays, old_last)
        admit_day = new_stays[ADMIT_TIME].dt.normalize()
        late = admit_day <= old_last
        refresh = Refresh(
            "appended",
            new_rows,
            f"{new_rows:,} appended record(s) read ({size - offset:,} bytes)",
            late_stays=int(late.sum()),
            first_late_day=f"{admit_day[late].min():%Y-%m-%d}" if late.any() else None,
        )
        if late.any():
            first = int(late.to_numpy().argmax())
            warnings.append(
                Problem(
                    str(path),
                    f"{int(late.sum())} appended stay(s) begin on or before {old_last:%Y-%m-%d}, the last day counted "
                    f"before (the first on {refresh.first_late_day}): those days are counted again with them; a day "
                    "the node has already released keeps its released value and the release reports the correction",
                    row=first + lines + 1,
                    column=ADMIT_TIME,
                    severity="warning",
                )
            )
        stays = pd.concat([old_stays, new_stays], ignore_index=True)
        summary = _summary(dict(state["summary"]), stays, daily, new_rows)
        if self.lenient:  # what the whole file left out: the counted part's and the tail's
            left_out = left_out_of(ValidationReport(str(path), [], dict(state["summary"])))
            for reason, n in left_out_of(report).items():
                left_out[reason] = left_out.get(reason, 0) + n
            summary["left_out"] = left_out
        report = ValidationReport(str(path), _load(state["warnings"]) + warnings, summary)
        records = UnitRecords(frame=daily, frequency=Frequency.DAILY, source=str(path), shape="encounters")
        out = SourceData(records, stays, report)
        if _stat(path) == now:  # not grown again while read: record the new watermark
            state.update(
                offset=size,
                lines=lines_now,
                sha256=digest.hexdigest(),
                ends_with_newline=last_byte == b"\n",
                stat=list(now),
                last_day=f"{daily[DATE].max():%Y-%m-%d}",
                summary=summary,
                warnings=_dump(report.warnings),
            )
            self._keep(state, out, appended=new_stays)
        logger.info("%s: %s", path, refresh.reason)
        return CountedSource(out, report, refresh)

    # ------------------------------------------------------------------ storage
    def _ensure_folder(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _state(self) -> dict[str, Any] | None:
        try:
            state = json.loads((self.folder / _STATE).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(state, dict) or state.get("version") != COUNTS_VERSION:
            return None
        parts = state.get("stays")
        names = [*(parts if isinstance(parts, list) else [None]), state.get("daily")]
        if not all(isinstance(n, str) and (self.folder / n).is_file() for n in names):
            return None
        return state

    def _frames(self, state: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
        parts = [pd.read_parquet(self.folder / name) for name in state["stays"]]
        stays = _typed(pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0], state["stays_dtypes"])
        daily = _typed(pd.read_parquet(self.folder / state["daily"]), state.get("daily_dtypes", {}))
        return stays, daily

    def _keep(self, state: dict[str, Any], data: SourceData | None, appended: pd.DataFrame | None = None) -> None:
        """Save the cache; a write that fails (a full disk) costs the next read its shortcut, never this read."""
        try:
            if data is None:
                self._write_state(state)
            else:
                self._save(state, data, appended)
        except OSError as exc:
            logger.warning(
                "the count cache %s could not be written (%s): the counts are right, the next read reads the source "
                "in full",
                self.folder,
                exc,
            )
            with contextlib.suppress(OSError):
                (self.folder / _STATE).unlink()  # a state naming files that were never written is never used
            for staged in self.folder.glob("*.tmp"):
                with contextlib.suppress(OSError):
                    staged.unlink()

    def _save(self, state: dict[str, Any], data: SourceData, appended: pd.DataFrame | None = None) -> None:
        """New files under a new generation, then the state record naming them, then the old files removed.

        With ``appended`` (the stays an append added) only those are written, as one more part beside
        the parts already kept (up to :data:`_MAX_PARTS`, then all are written again as one).
        """
        self._ensure_folder()
        generation = int(state.get("generation", 0)) + 1
        stays = data.stays if data.stays is not None else pd.DataFrame(columns=list(STAY_COLUMNS))
        kept = list(state.get("stays") or [])
        if appended is None or not kept or len(kept) >= _MAX_PARTS:
            kept, appended = [], stays
        parts = [*kept, f"stays-{generation}.parquet"]
        daily = f"daily-{generation}.parquet"
        for name, frame in ((parts[-1], appended), (daily, data.records.frame)):
            target = self.folder / name
            staged = target.with_name(target.name + ".tmp")
            with _private_file(staged):
                pass
            frame.to_parquet(staged, index=False)
            os.replace(staged, target)
        old = set(state.get("stays") or []) - set(parts) | ({state["daily"]} if state.get("daily") else set())
        names = {"stays": parts, "daily": daily}
        state.update(
            version=COUNTS_VERSION,
            generation=generation,
            shape=data.records.shape,
            frequency=data.records.frequency.value,
            has_stays=data.stays is not None,
            stays_dtypes={c: str(t) for c, t in stays.dtypes.items()},
            daily_dtypes={c: str(t) for c, t in data.records.frame.dtypes.items()},
            **names,
        )
        self._write_state(state)
        for name in old:
            with contextlib.suppress(OSError):
                (self.folder / str(name)).unlink()

    def _write_state(self, state: dict[str, Any]) -> None:
        self._ensure_folder()
        atomic_write_bytes(self.folder / _STATE, json.dumps(state, indent=1, default=str).encode(), mode=0o600)


# ---------------------------------------------------------------------- helpers
def _identity(source: DataSource, lenient: bool = False) -> dict[str, Any] | None:
    if source.fingerprint() is None:
        return None
    location = source.location if source.is_url else str(Path(source.location).resolve())
    identity = {
        "location": location,
        "format": source.format,
        "mapping": repr(source.mapping),
        "version": COUNTS_VERSION,
    }
    if lenient:  # counts read leniently are never served to a strict read, nor the other way round
        identity["lenient"] = True
    return identity


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns) if path.is_file() else None


def _appendable(source: DataSource, data: SourceData) -> bool:
    """An encounter CSV file: records are appended to it as lines."""
    if source.kind() != "contract" or data.stays is None or data.records.shape != "encounters":
        return False
    try:
        with Path(source.location).open("rb") as handle:
            return handle.read(4) != PARQUET_MAGIC
    except OSError:
        return False


def _prefix(path: Path, size: int) -> tuple[Any, int, bytes]:
    """SHA-256 (a hashlib object, to go on with) of the file's first ``size`` bytes, their line ends, the last byte."""
    digest = hashlib.sha256()
    lines = 0
    last = b""
    with path.open("rb") as handle:
        remaining = size
        while remaining > 0:
            block = handle.read(min(_BLOCK, remaining))
            if not block:
                break
            digest.update(block)
            lines += block.count(b"\n")
            last = block[-1:]
            remaining -= len(block)
    return digest, lines, last


@contextlib.contextmanager
def _private_file(path: Path) -> Any:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        yield handle


def _moved(problem: Problem, tail: str, path: str, shift: int) -> Problem:
    """A problem the reader found in the appended records, named by the whole file's rows."""
    if problem.file != tail:
        return problem
    row = problem.row + shift if problem.row is not None and problem.row > 1 else problem.row
    message = _ROW_IN_TEXT.sub(lambda m: str(int(m.group(1)) + shift), problem.message)
    return dataclasses.replace(problem, file=path, row=row, message=message.replace(tail, path))


def _overlaps_with_new(old: pd.DataFrame, new: pd.DataFrame, path: Path, lines: int) -> Problem | None:
    """The contract's overlap warning for appended stays that begin while the same patient's stay is open."""
    patients = set(new[PATIENT_ID])
    mine = old.loc[old[PATIENT_ID].isin(patients), list(STAY_COLUMNS)]
    both = pd.concat([mine.assign(_new=-1), new[list(STAY_COLUMNS)].assign(_new=range(len(new)))], ignore_index=True)
    ordered = both.sort_values([PATIENT_ID, ADMIT_TIME, "_new"], kind="stable")
    previous_end = ordered.groupby(PATIENT_ID)["discharge_time"].shift(1)
    same = ordered[PATIENT_ID].eq(ordered[PATIENT_ID].shift(1))
    hit = same & (previous_end.isna() | (previous_end > ordered[ADMIT_TIME])) & (ordered["_new"] >= 0)
    if not hit.any():
        return None
    first = ordered[hit].iloc[0]
    return Problem(
        str(path),
        f"{int(hit.sum())} stay(s) start while the same patient's previous stay is still open; first here "
        f"(patient {show_value(first[PATIENT_ID])}); both are counted in the census until the first is discharged",
        row=int(first["_new"]) + lines + 1,
        column=ADMIT_TIME,
        severity="warning",
    )


def _add_stays(daily: pd.DataFrame, old: pd.DataFrame, new: pd.DataFrame, old_last: pd.Timestamp) -> pd.DataFrame:
    """Daily counts of old and new stays together, from the old stays' counts and the new stays alone.

    Counts are sums over stays: the old counts, plus the census of the old stays still open at
    ``old_last`` on every day after it, plus the new stays' own counts (on every day they touch,
    before ``old_last`` too) equal the counts of all the stays.
    """
    columns = list(daily.columns)
    values = [c for c in columns if c not in (DATE, UNIT)]
    admit = new[ADMIT_TIME].dt.normalize()
    discharge = new["discharge_time"].dt.normalize()
    last = max(old_last, admit.max(), discharge.max() if discharge.notna().any() else old_last)
    parts = [daily.set_index([UNIT, DATE])[values]]
    if last > old_last:
        still_open = old.loc[old["discharge_time"].isna(), UNIT].value_counts()
        units = daily[UNIT].unique()
        days = pd.date_range(old_last + pd.Timedelta(days=1), last, freq="D")
        index = pd.MultiIndex.from_product([units, days], names=[UNIT, DATE])
        carried = pd.DataFrame(0, index=index, columns=values, dtype="int64")
        carried["census"] = still_open.reindex(index.get_level_values(UNIT), fill_value=0).to_numpy(dtype="int64")
        parts.append(carried)
    parts.append(encounters_to_daily(new, end=last).set_index([UNIT, DATE])[values])
    total = pd.concat(parts).groupby(level=[UNIT, DATE], sort=True).sum().astype("int64")
    out = total.reset_index()[columns]
    out[DATE] = out[DATE].astype(DATE_DTYPE)
    out[UNIT] = out[UNIT].astype(daily[UNIT].dtype)  # as the reader typed it (a full recount's dtype)
    return out.reset_index(drop=True)


def _summary(summary: dict[str, Any], stays: pd.DataFrame, daily: pd.DataFrame, new_rows: int) -> dict[str, Any]:
    summary["rows"] = int(summary.get("rows", 0)) + new_rows
    summary["encounters"] = len(stays)
    summary["open_stays"] = int(stays["discharge_time"].isna().sum())
    summary["daily_rows"] = len(daily)
    summary["units"] = sorted(daily[UNIT].unique().tolist())
    summary["date_start"] = f"{daily[DATE].min():%Y-%m-%d}"
    summary["date_end"] = f"{daily[DATE].max():%Y-%m-%d}"
    return summary


def _typed(frame: pd.DataFrame, dtypes: dict[str, str]) -> pd.DataFrame:
    """A frame read back from Parquet with the dtypes it was written with (text as object or str, as it was)."""
    for column, dtype in dtypes.items():
        if column in frame and str(frame[column].dtype) != dtype:
            frame[column] = frame[column].astype(object if dtype == "object" else dtype)
    return frame


def _dump(problems: list[Problem]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(p) for p in problems]


def _load(items: list[dict[str, Any]]) -> list[Problem]:
    return [Problem(**item) for item in items]
