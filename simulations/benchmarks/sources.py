"""Benchmark: a node reading its own source at hospital scale, beside DuckDB doing the same aggregation.

``python -m simulations.benchmarks.sources [--sizes 0.1,1,10] [--sources csv,parquet,...]
[--postgres-url postgresql://USER@HOST/DB] [--readings validate,node,malformed]``

One small hospital is generated once (the synthetic generator, a year of encounters); each
size is that hospital copied with new encounter and patient ids until it holds the number of
encounters asked for, written by DuckDB or plain string copies in seconds (never by the slow
generator). For every source kind, MedAlloc's reader (``load_source``: validate, stays with
their patient ids, daily unit records) runs in a child process, and so does a reference:
DuckDB (or, for SQLite, the database itself) counting the same admissions and discharges per
unit and day from the same file (for PostgreSQL, the server itself: the CDM is written into a
fresh schema of the database ``--postgres-url`` names, dropped afterwards; without that
option the ``omop-postgres`` tier is skipped). Seconds are wall clock; peak memory is the child's maximum
resident set (``os.wait4``'s ``ru_maxrss``). Goal (issue 23): 10 million encounters from any
source in <= 2 minutes and <= 1 GB, within 3x the reference. ``csv-append`` times the node's
count cache (``sources.incremental``) bringing the counts of the CSV up to date after its last
day's rows (1/365 of them) are appended: seconds of that refresh alone (the first, full read is
not timed, but is in the peak memory), beside DuckDB aggregating the whole file. ``--readings
validate,node`` times each source both ways, in a row each: ``validate`` as ``load_source`` reads it
(strict: what `medalloc validate` checks), ``node`` as a node counts it (issue 20:
``inspect_node_source``, a count cache with ``lenient=True``; a malformed record left out in the engine),
``malformed`` as a node counts a copy of the file with one malformed record added (a stay without its
patient, an Encounter without its subject, a visit that ends before it begins; not for csv-append
and omop-postgres): what leaving it out costs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SOURCES = ("csv", "csv-append", "parquet", "fhir-ndjson", "fhir-bundle", "omop-sqlite", "omop-postgres")
BASE_DAYS = 365

_READ = """
import sys, time, json
from medalloc_core.sources import DataSource, inspect_node_source, load_source
from medalloc_core.sources.mapping import EngineSettings, OmopMapping, SourceMapping
start = time.perf_counter()
omop = OmopMapping(schema=sys.argv[5]) if len(sys.argv) > 5 else OmopMapping()
mapping = SourceMapping(omop=omop, engine=EngineSettings(memory_limit=sys.argv[2], threads=int(sys.argv[3])))
if sys.argv[4] == "node":
    report, data = inspect_node_source(DataSource(sys.argv[1], mapping=mapping))
    assert data is not None, report.problems[:3]
else:
    data = load_source(DataSource(sys.argv[1], mapping=mapping))
print(json.dumps({"seconds": time.perf_counter() - start, "stays": len(data.stays), "rows": len(data.records.frame)}))
"""

# csv-append: the node's count cache (sources.incremental) holds the file's counts but for its last day; that day's
# rows are appended and the cache brought up to date: the time and records read are of that refresh alone.
_APPEND = """
import sys, time, json, tempfile
from pathlib import Path
from medalloc_core.sources import DataSource
from medalloc_core.sources.incremental import CountCache
from medalloc_core.sources.mapping import EngineSettings, SourceMapping
mapping = SourceMapping(engine=EngineSettings(memory_limit=sys.argv[2], threads=int(sys.argv[3])))
path, tail = Path(sys.argv[1]), Path(sys.argv[4])
with tempfile.TemporaryDirectory() as folder:
    cache = CountCache(Path(folder), lenient=sys.argv[5] == "node")
    first = cache.read(DataSource(str(path), mapping=mapping))
    assert first.data is not None, first.report.problems[:3]
    del first  # as a node started again: only the cache on disk is left (the peak is then the refresh's)
    with path.open("ab") as handle:
        handle.write(tail.read_bytes())
    start = time.perf_counter()
    counted = cache.read(DataSource(str(path), mapping=mapping))
    seconds = time.perf_counter() - start
    assert counted.refresh.mode == "appended" and counted.data is not None, counted.refresh
print(json.dumps({"seconds": seconds, "read": counted.refresh.records_read, "rows": len(counted.data.records.frame)}))
"""

_REFERENCE = """
import sys, time, json
start = time.perf_counter()
kind, path, memory, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if kind.startswith("omop"):
    cast = (lambda x: f"date({x})") if kind == "omop-sqlite" else (lambda x: f"CAST({x} AS date)")
    prefix = "" if kind == "omop-sqlite" else f"{sys.argv[5]}."
    sql = f'''
        WITH s AS (
            SELECT coalesce(d.care_site_id, v.care_site_id) AS unit,
                   {cast("coalesce(d.visit_detail_start_datetime, v.visit_start_datetime)")} AS a,
                   {cast("coalesce(d.visit_detail_end_datetime, v.visit_end_datetime)")} AS e
            FROM {prefix}visit_occurrence v LEFT JOIN {prefix}visit_detail d USING (visit_occurrence_id)
            WHERE v.visit_concept_id IN (9201, 262, 8717, 32037)
        )
        SELECT unit, day, sum(adm), sum(dis) FROM (
            SELECT unit, a AS day, 1 AS adm, 0 AS dis FROM s UNION ALL
            SELECT unit, e, 0, 1 FROM s WHERE e IS NOT NULL
        ) x GROUP BY unit, day
    '''
    if kind == "omop-sqlite":
        import sqlite3
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        rows = connection.execute(sql).fetchall()
    else:
        import psycopg
        with psycopg.connect(path) as connection:
            rows = connection.execute(sql).fetchall()
else:
    import duckdb
    connection = duckdb.connect(config={"memory_limit": memory, "threads": threads})
    connection.execute("SET enable_progress_bar = false")
    if kind in ("csv", "csv-append", "parquet"):
        source = (f"read_csv('{path}', header=true, all_varchar=true)" if kind != "parquet"
                  else f"read_parquet('{path}')")
        stays = f"SELECT unit, CAST(admit_time AS TIMESTAMP) AS a, CAST(discharge_time AS TIMESTAMP) AS e FROM {source}"
    else:
        if kind == "fhir-ndjson":
            objects = f"SELECT json AS j FROM read_ndjson_objects('{path}/*.ndjson')"
        else:
            objects = (f"SELECT unnest(CAST(json_extract(json, '$.entry[*].resource') AS JSON[])) AS j "
                       f"FROM read_json_objects('{path}', format='unstructured', maximum_object_size=4000000000)")
        stays = f'''
            SELECT json_extract_string(l, '$.location.reference') AS unit,
                   CAST(json_extract_string(l, '$.period.start') AS TIMESTAMPTZ) AS a,
                   CAST(json_extract_string(l, '$.period.end') AS TIMESTAMPTZ) AS e
            FROM (SELECT unnest(CAST(json_extract(j, '$.location[*]') AS JSON[])) AS l FROM ({objects})
                  WHERE json_extract_string(j, '$.resourceType') = 'Encounter'
                    AND json_extract_string(j, '$.class.code') IN ('IMP', 'ACUTE', 'NONAC'))
        '''
    sql = f'''
        WITH s AS ({stays})
        SELECT unit, day, sum(adm), sum(dis) FROM (
            SELECT unit, CAST(a AS DATE) AS day, 1 AS adm, 0 AS dis FROM s UNION ALL
            SELECT unit, CAST(e AS DATE), 0, 1 FROM s WHERE e IS NOT NULL
        ) GROUP BY unit, day
    '''
    rows = connection.execute(sql).fetchall()
print(json.dumps({"seconds": time.perf_counter() - start, "rows": len(rows)}))
"""


def _child(args: list[str], timeout: float) -> dict[str, Any]:
    """Run a Python child; its JSON line, its peak resident memory (MB) and whether it failed."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    process = subprocess.Popen(
        [sys.executable, "-c", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        return {"error": f"over {timeout:.0f} s"}
    # communicate() reaped the child; its rusage is what RUSAGE_CHILDREN gained, measured per child below
    result: dict[str, Any] = {}
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if process.returncode != 0 or not lines:
        tail = (err or out).strip().splitlines()[-1:] or ["no output"]
        return {"error": tail[0][:120]}
    result.update(json.loads(lines[-1]))
    return result


def _measured(args: list[str], timeout: float) -> dict[str, Any]:
    """:func:`_child` in a fresh intermediate process, so RUSAGE_CHILDREN's ru_maxrss is this child's alone."""
    wrapper = (
        "import json, resource, subprocess, sys\n"
        "p = subprocess.run([sys.executable, '-c', *sys.argv[1:]], capture_output=True, text=True, "
        f"timeout={timeout})\n"
        "print(p.stderr[-2000:], file=sys.stderr)\n"
        "print(p.stdout, end='')\n"
        "print(json.dumps({'peak_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, "
        "'rc': p.returncode}))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    try:
        done = subprocess.run(
            [sys.executable, "-c", wrapper, *args], capture_output=True, text=True, env=env, timeout=timeout + 30
        )
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout:.0f} s"}
    # a line may begin with what a progress bar left (no newline after it): the JSON is from its first '{"'
    lines = [json.loads(line[line.index('{"') :]) for line in done.stdout.splitlines() if '{"' in line]
    result: dict[str, Any] = {}
    for line in lines:
        result.update(line)
    if result.get("rc") != 0 or "seconds" not in result:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip() and "Warning" not in line]
        tail = lines[-1:] or ["no message"]
        return {"error": f"exit status {result.get('rc')}: {tail[0][:160]}", "peak_mb": result.get("peak_mb")}
    return result


# ---------------------------------------------------------------------- building the files
def _base(seed: int) -> Any:
    from medalloc_core.synthetic import RegionConfig, generate_region

    region = generate_region(
        RegionConfig(hospitals=1, days=BASE_DAYS, seed=seed, shape="encounters", min_beds=400, max_beds=400)
    )
    return region.hospitals[0]


def _write_encounters(stays: Any, copies: int, limit: int, out: Path, fmt: str) -> Path:
    import duckdb

    frame = stays[["encounter_id", "patient_id", "unit", "admit_time", "discharge_time"]].copy()
    for column in ("admit_time", "discharge_time"):
        frame[column] = frame[column].dt.strftime("%Y-%m-%d %H:%M:%S")
    connection = duckdb.connect()
    connection.register("base", frame)
    path = out / f"stays.{fmt}"
    options = "(HEADER, DELIMITER ',')" if fmt == "csv" else "(FORMAT parquet)"
    connection.execute(
        f"""
        COPY (SELECT 'c' || c.range || '-' || encounter_id AS encounter_id, 'c' || c.range || '-' || patient_id
                     AS patient_id, unit, admit_time, discharge_time
              FROM range({copies}) c, base ORDER BY c.range LIMIT {limit}) TO '{path}' {options}
        """
    )
    return path


def _split_last_day(path: Path, rows: int) -> Path:
    """Cut the last ``rows`` records off an encounter CSV into ``<path>.tail`` (no header), to be appended later."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        back = min(size, 256 * rows + 4096)
        handle.seek(size - back)
        block = handle.read()
    lines = block.split(b"\n")[:-1]  # the file ends with a line end
    cut = size - sum(len(line) + 1 for line in lines[-rows:])
    tail = path.with_name(path.name + ".tail")
    with path.open("rb") as handle:
        handle.seek(cut)
        tail.write_bytes(handle.read())
    with path.open("r+b") as handle:
        handle.truncate(cut)
    return tail


def _copy(text: str, c: int) -> str:
    return (
        text.replace('"id": "', f'"id": "c{c}-')
        .replace('"reference": "Patient/', f'"reference": "Patient/c{c}-')
        .replace('"reference": "Encounter/', f'"reference": "Encounter/c{c}-')
    )


def _write_fhir(resources: dict[str, list[dict[str, Any]]], copies: int, limit: int, out: Path, bundle: bool) -> Path:
    encounters = [json.dumps(r) for r in resources["Encounter"]]
    locations = [json.dumps(r) for r in resources.get("Location", [])]
    written = 0
    if bundle:
        path = out / "encounters.json"
        with path.open("w") as handle:
            handle.write('{"resourceType": "Bundle", "type": "collection", "entry": [\n')
            handle.write(",\n".join('{"resource": ' + r + "}" for r in locations))
            for c in range(copies):
                take = encounters[: max(0, limit - written)]
                if not take:
                    break
                handle.write(",\n" + _copy(",\n".join('{"resource": ' + r + "}" for r in take), c))
                written += len(take)
            handle.write("\n]}\n")
        return path
    folder = out / "fhir"
    folder.mkdir()
    (folder / "Location.ndjson").write_text("\n".join(locations) + "\n")
    with (folder / "Encounter.ndjson").open("w") as handle:
        full = "\n".join(encounters) + "\n"
        for c in range(copies):
            n = min(len(encounters), limit - written)
            if n <= 0:
                break
            handle.write(_copy(full if n == len(encounters) else "\n".join(encounters[:n]) + "\n", c))
            written += n
    return folder


def _write_sqlite(tables: dict[str, Any], copies: int, limit: int, out: Path) -> Path:
    from medalloc_core.sources.synthetic import create_omop_database

    path = out / "cdm.sqlite"
    create_omop_database(tables, f"sqlite:///{path}")
    visits = len(tables["visit_occurrence"])
    step = 10 ** (len(str(int(tables["visit_occurrence"]["visit_occurrence_id"].max()))) + 1)
    detail_step = 10 ** (len(str(int(tables["visit_detail"]["visit_detail_id"].max()))) + 1)
    person_step = 10 ** (len(str(int(tables["visit_occurrence"]["person_id"].max()))) + 1)
    with sqlite3.connect(path) as connection:
        for table in ("visit_occurrence", "visit_detail"):
            connection.execute(f"ALTER TABLE {table} RENAME TO base_{table}")
            connection.execute(f"CREATE TABLE {table} AS SELECT * FROM base_{table} WHERE 0")
        columns = {
            t: [r[1] for r in connection.execute(f"PRAGMA table_info(base_{t})")]
            for t in ("visit_occurrence", "visit_detail")
        }

        def shifted(table: str) -> str:
            out = []
            for column in columns[table]:
                if column == "visit_occurrence_id":
                    out.append(f"visit_occurrence_id + c.n * {step}")
                elif column == "visit_detail_id":
                    out.append(f"visit_detail_id + c.n * {detail_step}")
                elif column == "person_id":
                    out.append(f"person_id + c.n * {person_step}")
                else:
                    out.append(column)
            return ", ".join(out)

        wanted = math.ceil(limit / visits)
        series = f"WITH RECURSIVE c(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM c WHERE n + 1 < {wanted})"
        connection.execute(
            f"INSERT INTO visit_occurrence {series} SELECT {shifted('visit_occurrence')} FROM c, base_visit_occurrence "
            f"ORDER BY c.n LIMIT {limit}"
        )
        connection.execute(
            f"INSERT INTO visit_detail {series} SELECT {shifted('visit_detail')} FROM c, base_visit_detail "
            f"WHERE visit_occurrence_id + c.n * {step} IN (SELECT visit_occurrence_id FROM visit_occurrence)"
        )
        for table in ("visit_occurrence", "visit_detail"):
            connection.execute(f"DROP TABLE base_{table}")
        connection.commit()
    with sqlite3.connect(path) as connection:
        connection.execute("VACUUM")
    return path


def _write_postgres(tables: dict[str, Any], copies: int, limit: int, url: str, schema: str) -> None:
    """The CDM in a fresh ``schema`` of the database at ``url``: the base tables copied with shifted ids, in SQL."""
    import psycopg

    from medalloc_core.sources.synthetic import create_omop_database

    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        connection.execute(f"CREATE SCHEMA {schema}")
        connection.execute(f"DROP SCHEMA IF EXISTS {schema}_base CASCADE")
        connection.execute(f"CREATE SCHEMA {schema}_base")
    create_omop_database(tables, url, schema=f"{schema}_base")
    step = 10 ** (len(str(int(tables["visit_occurrence"]["visit_occurrence_id"].max()))) + 1)
    detail_step = 10 ** (len(str(int(tables["visit_detail"]["visit_detail_id"].max()))) + 1)
    person_step = 10 ** (len(str(int(tables["visit_occurrence"]["person_id"].max()))) + 1)
    shift = {"visit_occurrence_id": step, "visit_detail_id": detail_step, "person_id": person_step}
    with psycopg.connect(url, autocommit=True) as connection:
        for table in ("visit_occurrence", "visit_detail", "care_site"):
            columns = [
                r[0]
                for r in connection.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
                    "ORDER BY ordinal_position",
                    (f"{schema}_base", table),
                ).fetchall()
            ]
            connection.execute(f"CREATE TABLE {schema}.{table} (LIKE {schema}_base.{table} INCLUDING ALL)")
            if table == "care_site":
                connection.execute(f"INSERT INTO {schema}.care_site SELECT * FROM {schema}_base.care_site")
                continue
            moved = ", ".join(f"{c} + c.n * {shift[c]}" if c in shift else c for c in columns)
            source = f"generate_series(0, {copies - 1}) c(n), {schema}_base.{table}"
            if table == "visit_occurrence":
                tail = f"ORDER BY c.n LIMIT {limit}"
            else:
                kept = f"(SELECT visit_occurrence_id FROM {schema}.visit_occurrence)"
                tail = f"WHERE visit_occurrence_id + c.n * {step} IN {kept}"
            connection.execute(f"INSERT INTO {schema}.{table} SELECT {moved} FROM {source} {tail}")
        connection.execute(f"DROP SCHEMA {schema}_base CASCADE")
        connection.execute(f"ANALYZE {schema}.visit_occurrence")
        connection.execute(f"ANALYZE {schema}.visit_detail")


def _drop_schema(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def _with_malformed(kind: str, path: Path, out: Path) -> Path | None:
    """A copy of the source with one malformed record added (None for a kind that has none here)."""
    bad = out / ("malformed-" + path.name)
    if kind == "csv":
        shutil.copy(path, bad)
        with bad.open("a") as handle:
            handle.write("E-malformed,,icu,2023-03-10 10:00:00,2023-03-12 10:00:00\n")  # no patient_id
    elif kind == "parquet":
        import duckdb

        duckdb.connect().execute(
            f"COPY (SELECT * FROM read_parquet('{path}') UNION ALL SELECT 'E-malformed', NULL, 'icu', "
            f"'2023-03-10 10:00:00', '2023-03-12 10:00:00') TO '{bad}' (FORMAT parquet)"
        )
    elif kind == "fhir-ndjson":
        shutil.copytree(path, bad)
        with (bad / "Encounter.ndjson").open("a") as handle:
            handle.write(json.dumps(_MALFORMED_ENCOUNTER) + "\n")
    elif kind == "fhir-bundle":  # written by _write_fhir: it ends with "\n]}\n"
        with path.open("rb") as source, bad.open("wb") as handle:
            shutil.copyfileobj(source, handle)
            handle.seek(-4, os.SEEK_END)
            handle.truncate()
            handle.write(b',\n{"resource": ' + json.dumps(_MALFORMED_ENCOUNTER).encode() + b"}\n]}\n")
    elif kind == "omop-sqlite":
        shutil.copy(path, bad)
        with sqlite3.connect(bad) as connection:
            columns = [r[1] for r in connection.execute("PRAGMA table_info(visit_occurrence)")]
            row = list(connection.execute("SELECT * FROM visit_occurrence LIMIT 1").fetchone())
            row[columns.index("visit_occurrence_id")] = 10**15
            for column, value in (("visit_end_date", "1999-01-01"), ("visit_end_datetime", "1999-01-01 00:00:00")):
                if column in columns:
                    row[columns.index(column)] = value
            connection.execute(f"INSERT INTO visit_occurrence VALUES ({', '.join('?' * len(row))})", row)
    else:
        return None
    return bad


#: An inpatient Encounter without its subject: a malformed record the scan flags.
_MALFORMED_ENCOUNTER = {
    "resourceType": "Encounter",
    "id": "malformed-1",
    "status": "finished",
    "class": {"code": "IMP"},
    "period": {"start": "2023-03-10T10:00:00+00:00", "end": "2023-03-12T10:00:00+00:00"},
    "location": [{"location": {"reference": "Location/x", "display": "icu"}}],
}


def _size_mb(path: Path) -> float:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir()) / 2**20
    return path.stat().st_size / 2**20


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="0.1,1", help="millions of encounters, comma-separated (e.g. 0.1,1,10)")
    parser.add_argument("--sources", default=",".join(SOURCES), help=f"comma-separated: {', '.join(SOURCES)}")
    parser.add_argument("--memory-limit", default="512MB", help="the scan engine's memory limit ([engine])")
    parser.add_argument("--threads", type=int, default=2, help="the scan engine's threads")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed to one read")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None, help="folder for the generated files (default: temporary)")
    parser.add_argument(
        "--postgres-url",
        default=None,
        help="a PostgreSQL database the omop-postgres tier may write a schema into (skipped without it)",
    )
    parser.add_argument(
        "--readings",
        default="validate",
        help="comma-separated: validate (load_source, strict), node (as a node counts it, issue 20), "
        "malformed (as a node, one malformed record added)",
    )
    args = parser.parse_args(argv)
    readings = [r.strip() for r in args.readings.split(",") if r.strip()]
    if not readings or set(readings) - {"validate", "node", "malformed"}:
        parser.error(f"--readings takes validate, node and/or malformed, got {args.readings!r}")
    sizes = [float(s) for s in args.sizes.split(",") if s.strip()]
    kinds = [s.strip() for s in args.sources.split(",") if s.strip()]
    unknown = sorted(set(kinds) - set(SOURCES))
    if unknown:
        parser.error(f"unknown source(s) {unknown}; expected {', '.join(SOURCES)}")
    if "omop-postgres" in kinds and args.postgres_url is None:
        print("omop-postgres skipped: give --postgres-url (a database the benchmark may write a schema into)")
        kinds.remove("omop-postgres")

    from medalloc_core.sources.synthetic import fhir_resources, omop_tables

    start = time.perf_counter()
    hospital = _base(args.seed)
    stays = hospital.encounters
    resources = fhir_resources(stays, hospital_id=hospital.hospital_id, seed=args.seed)
    tables = omop_tables(stays, hospital_id=hospital.hospital_id, seed=args.seed)
    print(
        f"base hospital: {len(stays):,} stays, {len(resources['Encounter']):,} FHIR Encounters, "
        f"{len(tables['visit_occurrence']):,} OMOP visits over {BASE_DAYS} days "
        f"(generated in {time.perf_counter() - start:.0f} s); engine memory_limit {args.memory_limit}, "
        f"threads {args.threads}; {os.cpu_count()} CPU(s)"
    )
    work = Path(tempfile.mkdtemp(prefix="medalloc-bench-sources-")) if args.work is None else args.work
    work.mkdir(parents=True, exist_ok=True)
    header = (
        f"{'source':<12} {'encounters':>11} {'file MB':>8} {'MedAlloc s':>10} {'peak MB':>8} "
        f"{'reference':<9} {'ref s':>7} {'ref MB':>7} {'x ref':>6}"
    )
    print(header)
    print("-" * len(header))
    try:
        for size in sizes:
            limit = int(round(size * 1_000_000))
            for kind in kinds:
                out = work / f"{kind}-{size:g}"
                if out.exists():
                    shutil.rmtree(out)
                out.mkdir()
                if kind in ("csv", "parquet"):
                    base_count = len(stays)
                    path = _write_encounters(stays, math.ceil(limit / base_count), limit, out, kind)
                    count = limit
                elif kind == "csv-append":
                    base_count = len(stays)
                    path = _write_encounters(stays, math.ceil(limit / base_count), limit, out, "csv")
                    tail = _split_last_day(path, max(1, limit // BASE_DAYS))
                    count = limit
                elif kind.startswith("fhir"):
                    base_count = len(resources["Encounter"])
                    path = _write_fhir(resources, math.ceil(limit / base_count), limit, out, kind == "fhir-bundle")
                    count = limit
                elif kind == "omop-sqlite":
                    base_count = len(tables["visit_occurrence"])
                    path = _write_sqlite(tables, math.ceil(limit / base_count), limit, out)
                    count = limit
                else:
                    base_count = len(tables["visit_occurrence"])
                    schema = f"bench_{limit}"
                    _write_postgres(tables, math.ceil(limit / base_count), limit, args.postgres_url, schema)
                    count = limit
                settings = [args.memory_limit, str(args.threads)]
                results: list[tuple[str, dict[str, Any]]] = []
                for n, reading in enumerate(readings):
                    if reading == "malformed":  # a copy with one malformed record, read as a node reads
                        bad = _with_malformed(kind, path, out)
                        if bad is None:  # csv-append, omop-postgres: not measured this way
                            continue
                        ours = _measured([_READ, str(bad), *settings, "node"], args.timeout)
                        shutil.rmtree(bad) if bad.is_dir() else bad.unlink()
                    elif kind == "omop-postgres":
                        ours = _measured([_READ, args.postgres_url, *settings, reading, schema], args.timeout)
                    elif kind == "csv-append":
                        if n:  # the cache's first refresh appended the tail: cut it off again for this reading
                            path = _write_encounters(stays, math.ceil(limit / len(stays)), limit, out, "csv")
                            tail = _split_last_day(path, max(1, limit // BASE_DAYS))
                        ours = _measured([_APPEND, str(path), *settings, str(tail), reading], args.timeout)
                    else:
                        ours = _measured([_READ, str(path), *settings, reading], args.timeout)
                    results.append((reading, ours))
                if kind == "omop-postgres":
                    url = args.postgres_url
                    ref = _measured([_REFERENCE, kind, url, *settings, schema], args.timeout)
                    _drop_schema(url, schema)
                    path = out  # nothing on disk here: the size column shows 0
                else:
                    ref = _measured([_REFERENCE, kind, str(path), *settings], args.timeout)
                reference = {"omop-sqlite": "SQLite", "omop-postgres": "Postgres"}.get(kind, "DuckDB")

                def cell(result: dict[str, Any], key: str, fmt: str, width: int) -> str:
                    value = result.get(key)
                    return f"{value:{width}{fmt}}" if value is not None else f"{'-':>{width}}"

                for reading, ours in results:
                    ratio = f"{ours['seconds'] / ref['seconds']:.1f}" if "seconds" in ours and "seconds" in ref else "-"
                    label = kind if len(readings) == 1 else f"{kind[:7]} {reading[:4]}"
                    line = (
                        f"{label:<12} {count:>11,} {_size_mb(path):>8.0f} {cell(ours, 'seconds', '.1f', 10)} "
                        f"{cell(ours, 'peak_mb', '.0f', 8)} {reference:<9} {cell(ref, 'seconds', '.1f', 7)} "
                        f"{cell(ref, 'peak_mb', '.0f', 7)} {ratio:>6}"
                    )
                    if "read" in ours:
                        line += f"   {ours['read']:,} appended rows read"
                    print(line + (f"   MedAlloc: {ours['error']}" if "error" in ours else ""), flush=True)
                if "error" in ref:
                    print(f"{'':<12} reference: {ref['error']}", flush=True)
                shutil.rmtree(out)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
