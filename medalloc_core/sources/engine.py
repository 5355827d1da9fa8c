"""The scan engine: DuckDB, opened in memory with the node's limits, for files too big to hold.

A hospital's own export may hold ten million encounters: it is scanned by DuckDB (a
maintained, streaming, multi-threaded engine for NDJSON, JSON, CSV and Parquet), which
extracts and checks the few fields a stay needs and aggregates in bounded memory
(``memory_limit``, spilling to a private temporary folder past it). Python then holds only
the stays (bounded by their number, not by the file) and explains, record by record, only
what the engine flagged.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from medalloc_core.sources.mapping import EngineSettings

logger = logging.getLogger(__name__)


class EngineUnavailable(RuntimeError):
    """DuckDB is not installed."""


@contextlib.contextmanager
def connect(settings: EngineSettings) -> Iterator[Any]:
    """An in-memory DuckDB connection bounded by ``settings``; its spill folder removed on exit."""
    try:
        import duckdb
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise EngineUnavailable("reading sources needs DuckDB: pip install duckdb") from exc
    with tempfile.TemporaryDirectory(prefix="medalloc-scan-") as spill:
        connection = duckdb.connect(
            ":memory:",
            config={
                "memory_limit": settings.memory_limit,
                "threads": settings.threads,
                "temp_directory": spill,
                # Nothing outside the files named: no extension downloads, no other files.
                "autoinstall_known_extensions": False,
                "autoload_known_extensions": True,
            },
        )
        try:
            connection.execute("SET TimeZone = 'UTC'")
            connection.execute("SET enable_progress_bar = false")  # a long scan draws nothing on stdout
            yield connection
        finally:
            connection.close()


@contextlib.contextmanager
def handoff() -> Iterator[Path]:
    """A private file that outlives the engine's connection, for the stays it hands to Python.

    The engine writes the stays there as Parquet (:func:`hand_over`) and they are read once the
    connection is closed (:func:`take_over`): the engine's memory (up to its ``memory_limit``) and
    the stays' are then held one after the other, never together.
    """
    with tempfile.TemporaryDirectory(prefix="medalloc-stays-") as folder:
        yield Path(folder) / "stays.parquet"


def hand_over(connection: Any, sql: str, path: Path) -> None:
    """Write the rows of ``sql`` to ``path`` (Parquet, in their order)."""
    connection.execute(f"COPY ({sql}) TO {quote(str(path))} (FORMAT parquet, PRESERVE_ORDER true)")


def take_over(path: Path) -> Any:
    """The rows :func:`hand_over` wrote, as a pandas frame (Arrow buffers released as each column converts)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return table.to_pandas(self_destruct=True, split_blocks=True)


def quote(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def string_list(values: Iterable[str]) -> str:
    """A SQL list of string literals (``['a', 'b']``); ``[]::VARCHAR[]`` when empty."""
    items = [quote(str(v)) for v in values]
    return "[" + ", ".join(items) + "]" if items else "[]::VARCHAR[]"


def lines_of_ordinals(path: Path, ordinals: Iterable[int], *, chunk: int = 1 << 20) -> dict[int, int]:
    """The line number of the n-th non-blank line of an NDJSON file, for each wanted n (1-based).

    DuckDB numbers the objects it reads, skipping blank lines; a problem names the line an
    editor shows. One streaming pass over the file with a fixed-size buffer (a line of any
    length costs no memory), stopping at the last wanted ordinal.
    """
    wanted = sorted(set(int(o) for o in ordinals))
    out: dict[int, int] = {}
    if not wanted:
        return out
    line = 1
    ordinal = 0
    blank = True  # the current line holds only whitespace so far
    target = iter(wanted)
    next_wanted = next(target)
    with path.open("rb") as handle:
        while True:
            block = handle.read(chunk)
            if not block:
                break
            for byte in _scan(block):
                if byte == 10:  # newline
                    if not blank:
                        ordinal += 1
                        if ordinal == next_wanted:
                            out[ordinal] = line
                            next_wanted = next(target, -1)
                            if next_wanted < 0:
                                return out
                    line += 1
                    blank = True
                else:
                    blank = False
    if not blank:
        ordinal += 1
        if ordinal == next_wanted:
            out[ordinal] = line
    return out


def _scan(block: bytes) -> Iterator[int]:
    """Newlines (10) and, between them, one marker (1) per run of non-blank bytes: enough to count lines."""
    start = 0
    while True:
        end = block.find(b"\n", start)
        piece = block[start:] if end < 0 else block[start:end]
        if piece.strip():
            yield 1
        if end < 0:
            return
        yield 10
        start = end + 1


def daily_counts(connection: Any, stays: str) -> Any:
    """Daily unit records of the stays in relation ``stays`` (columns unit, admit, discharge), counted in the engine.

    The same records as :func:`medalloc_core.encounters.encounters_to_daily` (which stays the
    reference, tested against this): admissions on the admit day, discharges on the discharge
    day, census at the midnight closing the day, every day from a unit's first admission to the
    last admission or discharge day, sorted by unit and date.
    """
    frame = connection.execute(
        f"""
        WITH s AS (
            SELECT unit, CAST(admit AS DATE) AS a, CAST(discharge AS DATE) AS d FROM ({stays})
        ), last AS (
            SELECT greatest(max(a), coalesce(max(d), max(a))) AS l FROM s
        ), units AS (
            SELECT unit, min(a) AS f FROM s GROUP BY unit
        ), grid AS (
            SELECT unit, CAST(unnest(generate_series(f, (SELECT l FROM last), INTERVAL 1 DAY)) AS DATE) AS day
            FROM units
        ), adm AS (
            SELECT unit, a AS day, count(*) AS n FROM s GROUP BY unit, a
        ), dis AS (
            SELECT unit, d AS day, count(*) AS n FROM s WHERE d IS NOT NULL GROUP BY unit, d
        )
        SELECT CAST(g.day AS TIMESTAMP) AS date, g.unit, coalesce(adm.n, 0) AS admissions,
               coalesce(dis.n, 0) AS discharges,
               sum(coalesce(adm.n, 0) - coalesce(dis.n, 0)) OVER (PARTITION BY g.unit ORDER BY g.day) AS census
        FROM grid g LEFT JOIN adm USING (unit, day) LEFT JOIN dis USING (unit, day)
        ORDER BY g.unit, g.day
        """
    ).df()
    for column in ("admissions", "discharges", "census"):
        frame[column] = frame[column].astype("int64")
    frame["date"] = frame["date"].astype("datetime64[ns]")
    frame["unit"] = frame["unit"].astype(object)
    return frame


def first_overlap(connection: Any, stays: str, order: str) -> tuple[int, Any]:
    """How many stays begin while the same patient's previous stay is open, and ``order``'s value for the first.

    ``stays`` has patient_id, admit, discharge and the columns of ``order`` (the stays' source
    order, e.g. ``file, ord``); the first is the earliest in (patient, admit) order, as the
    contract's warning names it.
    """
    row = connection.execute(
        f"""
        WITH o AS (
            SELECT *, lag(discharge) OVER w AS prev_end, lag(patient_id) OVER w AS prev_patient,
                   row_number() OVER w AS k
            FROM ({stays})
            WINDOW w AS (PARTITION BY patient_id ORDER BY admit, {order})
        ), hit AS (
            SELECT * FROM o WHERE k > 1 AND (prev_end IS NULL OR prev_end > admit)
        )
        SELECT (SELECT count(*) FROM hit), (SELECT row({order}) FROM hit ORDER BY patient_id, admit, {order}
                                             LIMIT 1)
        """
    ).fetchall()[0]
    first = row[1]
    return int(row[0]), (tuple(first.values()) if isinstance(first, dict) else first)
