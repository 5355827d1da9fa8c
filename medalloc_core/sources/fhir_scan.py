"""FHIR Encounters at hospital scale: DuckDB scans the export, Python explains only what it flags.

The engine reads every NDJSON line (or Bundle entry) once, in bounded memory, extracting the
few elements a stay needs (``resourceType``, ``id``, ``status``, ``class.code``,
``subject.reference``, ``partOf``, ``period``, ``location[]``; a ``Location``'s ``name``)
with their JSON types, checks them (types, FHIR dateTime syntax, ids, the location history,
times in order, one resource per id) and turns the clean inpatient encounters into one row
per stay: encounter, patient, unit, admit and discharge time in the site's zone. Python holds
those rows (bounded by the number of stays, never by the file) and nothing else.

A record the engine flags is explained by the per-record reader of
:mod:`medalloc_core.sources.fhir` (``fhir.resources`` models), so problems name the file,
line or entry, resource and element in the same words as ever, and millions of bad records
cost the first examples and a count, not a message each. Only elements a stay uses are
checked on this path: an invalid element elsewhere in a resource (an extension, a
participant) does not stop the node counting its stays.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from medalloc_core.contract import ADMIT_TIME, DISCHARGE_TIME, ENCOUNTER_ID, PATIENT_ID, UNIT
from medalloc_core.sources.bundle_stream import SplitBundle
from medalloc_core.sources.engine import daily_counts, first_overlap, hand_over, quote, string_list
from medalloc_core.sources.mapping import FhirMapping

logger = logging.getLogger(__name__)

# FHIR R4 dateTime with at least a full date (the spec's regex, year-month(-day) required).
_DATETIME = (
    r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|3[0-1])"
    r"(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00)))?"
)
_ID = r"[A-Za-z0-9\-\.]{1,64}"
_CODE = r"[^\s]+( [^\s]+)*"
_PATHS = (
    "$.resourceType",  # 1
    "$.id",  # 2
    "$.status",  # 3
    "$.class",  # 4
    "$.class.code",  # 5
    "$.subject",  # 6
    "$.subject.reference",  # 7
    "$.partOf",  # 8
    "$.partOf.reference",  # 9
    "$.period",  # 10
    "$.period.start",  # 11
    "$.period.end",  # 12
    "$.location",  # 13
    "$.name",  # 14
)
_LOC_PATHS = (
    "$.location",  # 1
    "$.location.reference",  # 2
    "$.location.display",  # 3
    "$.status",  # 4
    "$.period",  # 5
    "$.period.start",  # 6
    "$.period.end",  # 7
)


@dataclass
class ScanResult:
    """What the engine found: stays (when nothing was flagged), flagged records, counts for the summary."""

    resources: int = 0
    encounters: int = 0  # Encounter resources (in and out of the mapping's classes)
    locations: int = 0  # Location resources with an id
    ignored: list[tuple[str, int]] = field(default_factory=list)
    flagged: int = 0
    flagged_reasons: list[tuple[str, int]] = field(default_factory=list)
    examples: list[tuple[str, int]] = field(default_factory=list)  # (file, ordinal) of the first flagged
    inpatient: int = 0
    total: int = 0
    skipped_status: list[tuple[str, int]] = field(default_factory=list)
    skipped_class: list[tuple[str, int]] = field(default_factory=list)
    outside: list[tuple[str, int]] = field(default_factory=list)
    outside_total: int = 0
    daily: pd.DataFrame | None = None
    overlaps: int = 0
    overlap_at: tuple[Any, ...] | None = None  # (file, ordinal, record, field) of the first
    stays: pd.DataFrame | None = None
    left_out: dict[str, int] = field(default_factory=dict)  # a node's reading: records left out, by reason


def _ok_time(column: str) -> str:
    return f"({column} IS NULL OR regexp_full_match({column}, '{_DATETIME}'))"


def _local(column: str, zone: str) -> str:
    """A FHIR date/dateTime text as the site's wall clock (TIMESTAMP); offsets converted to ``zone`` or dropped."""
    if zone:
        timed = f"timezone({quote(zone)}, TRY_CAST({column} AS TIMESTAMPTZ))"
    else:
        timed = f"TRY_CAST(regexp_replace({column}, '(Z|[+-][0-9][0-9]:[0-9][0-9])$', '') AS TIMESTAMP)"
    return (
        f"CASE WHEN {column} IS NULL THEN NULL WHEN length({column}) > 10 THEN {timed} "
        f"ELSE TRY_CAST({column} AS DATE)::TIMESTAMP END"
    )


def known_elements() -> dict[str, list[str]]:
    """The element names ``fhir.resources`` accepts in each object the scan reads (any other is an error there)."""
    from fhir.resources.R4B.encounter import Encounter, EncounterLocation
    from fhir.resources.R4B.location import Location
    from fhir.resources.R4B.period import Period

    def names(model: Any) -> list[str]:
        return sorted({f.alias or n for n, f in model.model_fields.items()} | {"resourceType"})

    return {
        "Encounter": names(Encounter),
        "Location": names(Location),
        "EncounterLocation": names(EncounterLocation),
        "Period": names(Period),
    }


#: The top-level elements a stay uses, read by the engine's JSON reader as JSON values (types kept).
_TOP = ("resourceType", "id", "status", "class", "subject", "partOf", "period", "location", "name")


def _typed_ndjson(
    path: Path,
    label: str,
    max_line_bytes: int,
    keys_ok: Any,
    bad_entries: str = "",
    *,
    wrapped: bool = False,
    array: bool = False,
    ignore_errors: bool = False,
) -> str:
    """The scan's resource rows of one NDJSON file, read by ``read_ndjson`` with explicit columns.

    The engine's typed reader materialises only the elements a stay uses (each as a JSON value,
    so its JSON type is still checked here), several times faster than extracting them from
    whole-object text. Element names outside the FHIR model are found by a second, key-only
    pass (``json_keys``) that keeps just the ordinals of records with one. A line that is not a
    JSON object makes the reader fail, and the caller explains line by line. ``bad_entries``
    (a relation of ordinals) marks Bundle entries without a resource; ``wrapped``: each line is
    a Bundle entry (``{"resource": {...}, ...}``), the resource read from it; ``array``: the
    file is one JSON array of entries (a Bundle's ``entry``), element n entry n. ``ignore_errors``
    (a node's reading of NDJSON): a line that is not a JSON object is read as a record of nulls, which
    the checks flag (no ``resourceType``) and a node leaves out, instead of failing the whole read.
    """
    name = quote(str(path))
    fmt = "array" if array else "newline_delimited"
    lax = ", ignore_errors = true" if ignore_errors and not array else ""
    # location as a list of JSON values: its entries unnested without parsing the array again (a location
    # that is not an array makes the reader fail, and the whole-object scan flags it)
    types = {c: "JSON[]" if c == "location" else "JSON" for c in _TOP}
    fields = ", ".join(f"{quote(c)}: '{t}'" for c, t in types.items())
    if wrapped:
        struct = ", ".join(f'"{c}" {t}' for c, t in types.items())
        columns, obj = f"{{'resource': 'STRUCT({struct})'}}", "(json -> '$.resource')"
        expand = "resource IS NOT NULL AS has_resource, unnest(resource)"
    else:
        columns, expand, obj = "{" + fields + "}", "TRUE AS has_resource, *", "json"
    unknown = f"""
        SELECT ordinality AS ord FROM read_json_objects({name}, format = '{fmt}',
                                                        maximum_object_size = {max_line_bytes}{lax})
                                                        WITH ORDINALITY
        WHERE CASE json_extract_string({obj}, '$.resourceType')
                  WHEN 'Encounter' THEN NOT {keys_ok(obj, "Encounter")}
                  WHEN 'Location' THEN NOT {keys_ok(obj, "Location")}
                  ELSE FALSE END
    """
    entry_ok = f"has_resource AND ord NOT IN ({bad_entries})" if bad_entries else "has_resource"
    return f"""
        WITH r AS (
            SELECT ordinality AS ord, {expand} FROM read_json({name}, columns = {columns}, records = true,
                                                      format = '{fmt}',
                                                      maximum_object_size = {max_line_bytes}{lax}) WITH ORDINALITY
        )
        SELECT {quote(label)} AS file, ord, {entry_ok} AS entry_ok, 'OBJECT' AS jt,
               "resourceType" ->> '$' AS rt, json_type("resourceType") AS rt_t, id ->> '$' AS id,
               json_type(id) AS id_t, status ->> '$' AS status, json_type(status) AS status_t,
               json_type(class) AS class_t, json_extract_string(class, '$.code') AS code,
               json_type(class, '$.code') AS code_t, json_type(subject) AS subject_t,
               json_extract_string(subject, '$.reference') AS subject,
               json_type(subject, '$.reference') AS subject_ref_t,
               json_type("partOf") AS part_of_t, json_extract_string("partOf", '$.reference') AS part_of,
               json_type("partOf", '$.reference') AS part_of_ref_t, json_type(period) AS period_t,
               json_extract_string(period, '$.start') AS p_start, json_type(period, '$.start') AS p_start_t,
               json_extract_string(period, '$.end') AS p_end, json_type(period, '$.end') AS p_end_t,
               location AS locs, CASE WHEN location IS NOT NULL THEN 'ARRAY' END AS locs_t,
               name ->> '$' AS name, json_type(name) AS name_t,
               ord NOT IN ({unknown})
                   AND CASE "resourceType" ->> '$' WHEN 'Encounter'
                       THEN json_type(period) IS DISTINCT FROM 'OBJECT' OR {keys_ok("period", "Period")}
                       ELSE TRUE END AS keys_ok
        FROM r
    """


def scan_fhir(
    connection: Any,
    files: list[Path],
    *,
    bundle: bool,
    mapping: FhirMapping,
    max_line_bytes: int,
    examples: int,
    split: SplitBundle | None = None,
    handed: Path | None = None,
    lenient: bool = False,
) -> ScanResult:
    """Scan the files with ``connection`` (see :func:`medalloc_core.sources.engine.connect`).

    ``lenient`` is a node's reading (issue 20): a record the checks flag is left out in the engine
    (deleted from the scanned tables before its stays are built, and a stay whose location history is
    flagged is deleted with its encounter), each counted once by reason in ``result.left_out``;
    ``result.flagged`` stays 0 and the stays are what is left. A Location left out no longer names a unit.

    With ``handed`` (:func:`medalloc_core.sources.engine.handoff`) the stays are written there
    and ``result.stays`` is left unset: the caller reads them (:func:`stays_frame` of
    ``take_over``) after closing the engine, so the two never hold memory together.

    Raises ``duckdb.Error`` when the engine cannot read a file as JSON at all (a line that is
    not JSON, a line over ``max_line_bytes``): the caller then explains line by line.
    """
    import duckdb

    ext = string_list(_PATHS)
    known = known_elements()

    def keys_ok(value: str, model: str) -> str:
        allowed = ", ".join(quote(k) for k in known[model])
        return (
            f"(json_type({value}) <> 'OBJECT' "
            f"OR len(list_filter(json_keys({value}), lambda k: k NOT IN ({allowed}))) = 0)"
        )

    def extract(source: str) -> str:
        return f"""
        WITH e0 AS (
            SELECT file, ord, entry_ok, j, json_extract(j, {ext}) AS e FROM ({source})
        ), x AS (
            SELECT file, ord, entry_ok, e, json_type(j) AS jt,
                   list_transform(e, lambda y: y ->> '$') AS v, list_transform(e, lambda y: json_type(y)) AS t,
                   CASE e[1] ->> '$'
                       WHEN 'Encounter' THEN {keys_ok("j", "Encounter")}
                            AND (json_type(e[10]) IS DISTINCT FROM 'OBJECT' OR {keys_ok("e[10]", "Period")})
                       WHEN 'Location' THEN {keys_ok("j", "Location")}
                       ELSE TRUE END AS keys_ok
            FROM e0
        )
        SELECT file, ord, entry_ok, jt,
               v[1] AS rt, t[1] AS rt_t, v[2] AS id, t[2] AS id_t, v[3] AS status, t[3] AS status_t,
               t[4] AS class_t, v[5] AS code, t[5] AS code_t, t[6] AS subject_t, v[7] AS subject, t[7] AS subject_ref_t,
               t[8] AS part_of_t, v[9] AS part_of, t[9] AS part_of_ref_t, t[10] AS period_t,
               v[11] AS p_start, t[11] AS p_start_t, v[12] AS p_end, t[12] AS p_end_t,
               CASE WHEN t[13] = 'ARRAY' THEN CAST(json_extract(e[13], '$[*]') AS JSON[]) END AS locs, t[13] AS locs_t,
               v[14] AS name, t[14] AS name_t,
               keys_ok
        FROM x
        """

    if bundle:  # the Bundle split into NDJSON (bundle_stream): line n is entry n
        if split is None:
            raise ValueError("a Bundle is scanned from its split NDJSON (bundle_stream.split_bundle)")
        import pyarrow as pa

        connection.register("bad_entries", pa.table({"ord": pa.array(split.bad_entries, type=pa.int64())}))
        typed = _typed_ndjson(
            split.ndjson,
            str(files[0]),
            max_line_bytes,
            keys_ok,
            "SELECT ord FROM bad_entries",
            wrapped=True,
            array=split.array,
        )
        connection.execute(f"CREATE OR REPLACE TEMP TABLE res AS {typed}")
    else:  # one scan per file: the engine's ordinality is then the file's own object number
        for n, path in enumerate(files):
            verb = "CREATE OR REPLACE TEMP TABLE res AS" if n == 0 else "INSERT INTO res"
            try:
                typed = _typed_ndjson(path, str(path), max_line_bytes, keys_ok, ignore_errors=lenient)
                connection.execute(f"{verb} {typed}")
            except duckdb.InvalidInputException:
                lax = ", ignore_errors = true" if lenient else ""
                # A line that is a JSON value but not an object: the whole-object scan flags each one
                # (and a line that is not JSON at all fails there too: the caller explains line by line).
                one = f"""
                    SELECT filename AS file, ordinality AS ord, TRUE AS entry_ok, json AS j
                    FROM read_ndjson_objects({quote(str(path))}, filename = true,
                                             maximum_object_size = {max_line_bytes}{lax}) WITH ORDINALITY
                """
                connection.execute(f"{verb} {extract(one)}")
    classes = string_list(mapping.encounter_classes)
    skip = string_list(mapping.skip_statuses)
    connection.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE enc AS
        SELECT *, coalesce(code IN (SELECT unnest({classes})), FALSE) AS in_class,
               coalesce(status IN (SELECT unnest({skip})), FALSE) AS skipped
        FROM res
        WHERE entry_ok AND jt = 'OBJECT' AND rt_t = 'VARCHAR' AND rt = 'Encounter'
              AND NOT coalesce(code_t = 'VARCHAR' AND code NOT IN (SELECT unnest({classes})), FALSE)
        """
    )
    # Per-resource checks: a reason when the record must be explained record by record.
    connection.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE flags AS
        SELECT file, ord, reason FROM (
            SELECT file, ord, CASE
                WHEN NOT entry_ok THEN 'entry without a resource'
                WHEN jt <> 'OBJECT' THEN 'not a JSON object'
                WHEN rt_t IS DISTINCT FROM 'VARCHAR' THEN 'no resourceType'
                WHEN rt = 'Location' AND NOT keys_ok THEN 'unknown element'
                WHEN rt = 'Location' AND NOT ((id_t IS NULL OR (id_t = 'VARCHAR' AND regexp_full_match(id, '{_ID}')))
                                              AND (name_t IS NULL OR name_t = 'VARCHAR')) THEN 'invalid Location'
            END AS reason FROM res
            UNION ALL
            SELECT file, ord, CASE
                WHEN NOT keys_ok THEN 'unknown element'
                WHEN code_t IS DISTINCT FROM 'VARCHAR' OR class_t <> 'OBJECT' THEN 'invalid class'
                WHEN id_t IS DISTINCT FROM 'VARCHAR' OR NOT regexp_full_match(id, '{_ID}') THEN 'invalid or missing id'
                WHEN status_t IS DISTINCT FROM 'VARCHAR' OR NOT regexp_full_match(status, '{_CODE}')
                     THEN 'invalid status'
                WHEN NOT (subject_t IS NULL
                          OR (subject_t = 'OBJECT' AND (subject_ref_t IS NULL OR subject_ref_t = 'VARCHAR')))
                     OR NOT (part_of_t IS NULL
                             OR (part_of_t = 'OBJECT' AND (part_of_ref_t IS NULL OR part_of_ref_t = 'VARCHAR')))
                     OR NOT (period_t IS NULL OR period_t = 'OBJECT')
                     OR NOT (locs_t IS NULL OR locs_t = 'ARRAY') THEN 'invalid element type'
                WHEN NOT (p_start_t IS NULL OR p_start_t = 'VARCHAR') OR NOT (p_end_t IS NULL OR p_end_t = 'VARCHAR')
                     OR NOT {_ok_time("p_start")} OR NOT {_ok_time("p_end")} THEN 'invalid period'
                WHEN NOT skipped AND (subject IS NULL OR trim(subject) = '') THEN 'no subject.reference'
            END AS reason FROM enc
        ) WHERE reason IS NOT NULL
        """
    )
    # Duplicated Encounter ids (every occurrence is explained: the first is named by the others).
    connection.execute(
        """
        INSERT INTO flags
        SELECT file, ord, 'Encounter id more than once' FROM (
            SELECT file, ord, count(*) OVER (PARTITION BY id) AS n FROM enc WHERE id_t = 'VARCHAR'
        ) WHERE n > 1
        """
    )
    if lenient:  # a node: what is flagged so far is left out before any stay is built from it
        _leave_out(connection, "res", "enc")
    # Location history of the encounters that are stays: one row per entry.
    name_by = "reference" if mapping.unit_name == "reference" else "name"
    connection.execute("CREATE OR REPLACE TEMP TABLE unit_map (key VARCHAR, unit VARCHAR)")
    if mapping.units:
        connection.executemany(
            "INSERT INTO unit_map VALUES (?, ?)", [(str(k), str(v)) for k, v in mapping.units.items()]
        )
    loc_ext = string_list(_LOC_PATHS)
    connection.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE entries AS
        WITH used AS (
            SELECT e.* FROM enc e
            WHERE in_class AND NOT skipped AND locs IS NOT NULL
              AND id NOT IN (SELECT substr(part_of, 11) FROM enc
                             WHERE part_of LIKE 'Encounter/%' AND substr(part_of, 11) IN (SELECT id FROM enc))
        ), items AS (
            SELECT file, ord, id, status, subject, p_start, p_end,
                   unnest(range(0, len(locs))) AS i, unnest(locs) AS loc
            FROM used
        ), typed AS (
            SELECT *, json_type(loc) AS loc_t, json_extract_string(loc, {loc_ext}) AS lv,
                   json_type(loc, {loc_ext}) AS lt,
                   {keys_ok("loc", "EncounterLocation")} AND (json_type(loc, '$.period') IS DISTINCT FROM 'OBJECT'
                       OR {keys_ok("json_extract(loc, '$.period')", "Period")}) AS loc_keys_ok
            FROM items
        )
        SELECT file, ord, id, status, subject, p_start, p_end, i, loc_t,
               lt[1] AS ref_obj_t, lv[2] AS ref, lt[2] AS ref_t, lv[3] AS display, lt[3] AS display_t,
               lv[4] AS loc_status, lt[4] AS loc_status_t, lt[5] AS lp_t, lv[6] AS l_start, lt[6] AS l_start_t,
               lv[7] AS l_end, lt[7] AS l_end_t, loc_keys_ok
        FROM typed
        """
    )
    zone = mapping.timezone
    connection.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE stays AS
        WITH hist AS (
            SELECT *, count(*) OVER (PARTITION BY file, ord) AS n_hist
            FROM entries WHERE loc_t = 'OBJECT' AND loc_status IS DISTINCT FROM 'planned'
        ), named AS (
            SELECT h.*,
                   CASE WHEN l_start IS NOT NULL THEN l_start WHEN n_hist = 1 THEN p_start END AS s_text,
                   CASE WHEN l_start IS NOT NULL OR n_hist > 1 THEN 'location[' || i || '].period.start'
                        WHEN p_start IS NOT NULL THEN 'period.start' ELSE 'location[' || i || '].period.start' END
                        AS admit_field,
                   CASE WHEN l_end IS NOT NULL THEN l_end WHEN n_hist = 1 THEN p_end END AS e_text,
                   CASE WHEN l_end IS NOT NULL OR n_hist > 1 THEN 'location[' || i || '].period.end'
                        WHEN p_end IS NOT NULL THEN 'period.end' ELSE 'location[' || i || '].period.end' END
                        AS discharge_field,
                   coalesce(trim(ref), '') AS ref_s,
                   CASE WHEN '{name_by}' = 'reference' THEN coalesce(trim(ref), '')
                        ELSE coalesce(nullif(ln.name, ''), nullif(trim(display), ''), coalesce(trim(ref), ''))
                   END AS lname
            FROM hist h
            LEFT JOIN (SELECT 'Location/' || id AS key, any_value(coalesce(trim(name), '')) AS name FROM res
                       WHERE rt = 'Location' AND id_t = 'VARCHAR' AND id <> '' GROUP BY id) ln
              ON ln.key = coalesce(trim(h.ref), '')
        )
        SELECT n.*, {_local("s_text", zone)} AS admit, {_local("e_text", zone)} AS discharge,
               CASE WHEN (SELECT count(*) FROM unit_map) = 0 THEN lname
                    ELSE coalesce((SELECT unit FROM unit_map WHERE key = lname),
                                  (SELECT unit FROM unit_map WHERE key = ref_s)) END AS unit
        FROM named n
        """
    )
    connection.execute(
        f"""
        INSERT INTO flags
        SELECT file, ord, reason FROM (
            SELECT file, ord, CASE
                WHEN loc_t <> 'OBJECT' OR NOT loc_keys_ok THEN 'invalid location entry'
                WHEN NOT (ref_obj_t IS NULL OR ref_obj_t = 'OBJECT') OR NOT (ref_t IS NULL OR ref_t = 'VARCHAR')
                     OR NOT (display_t IS NULL OR display_t = 'VARCHAR')
                     OR NOT (loc_status_t IS NULL
                             OR (loc_status_t = 'VARCHAR' AND regexp_full_match(loc_status, '{_CODE}')))
                     OR NOT (lp_t IS NULL OR lp_t = 'OBJECT')
                     OR NOT (l_start_t IS NULL OR l_start_t = 'VARCHAR') OR NOT (l_end_t IS NULL OR l_end_t = 'VARCHAR')
                     OR NOT {_ok_time("l_start")} OR NOT {_ok_time("l_end")} THEN 'invalid location entry'
            END AS reason FROM entries
            UNION ALL
            SELECT file, ord, CASE
                WHEN s_text IS NULL THEN 'stay without a start'
                WHEN admit IS NULL OR (e_text IS NOT NULL AND discharge IS NULL) THEN 'invalid date'
                WHEN e_text IS NULL AND status = 'finished' THEN 'finished stay without an end'
                WHEN lname = '' THEN 'location without a reference or display'
                WHEN admit NOT BETWEEN TIMESTAMP '1678-01-01' AND TIMESTAMP '2261-12-31 23:59:59'
                     OR discharge NOT BETWEEN TIMESTAMP '1678-01-01' AND TIMESTAMP '2261-12-31 23:59:59'
                     THEN 'time outside the supported dates'
                WHEN discharge < admit THEN 'stay ends before it begins'
            END AS reason FROM stays
        ) WHERE reason IS NOT NULL
        """
    )
    connection.execute(
        """
        INSERT INTO flags
        SELECT file, ord, 'no location history' FROM enc e
        WHERE in_class AND NOT skipped AND subject IS NOT NULL
          AND id NOT IN (SELECT substr(part_of, 11) FROM enc WHERE part_of LIKE 'Encounter/%')
          AND NOT EXISTS (SELECT 1 FROM stays s WHERE s.file = e.file AND s.ord = e.ord)
        """
    )
    result = ScanResult()
    if lenient:  # a stay whose encounter has a flagged location entry or stay goes with its encounter
        _leave_out(connection, "stays")
        result.left_out = {
            str(reason): int(n)
            for reason, n in connection.execute(
                "SELECT reason, count(*) AS n FROM (SELECT min(reason) AS reason FROM flags GROUP BY file, ord) "
                "GROUP BY reason ORDER BY n DESC, reason"
            ).fetchall()
        }
        connection.execute("DELETE FROM flags")
    result.resources, result.locations = connection.execute(
        "SELECT count(*), count(DISTINCT CASE WHEN rt = 'Location' AND id_t = 'VARCHAR' AND id <> '' THEN id END) "
        "FROM res"
    ).fetchall()[0]
    result.encounters = connection.execute(
        "SELECT count(*) FROM res WHERE jt = 'OBJECT' AND rt = 'Encounter' AND rt_t = 'VARCHAR'"
    ).fetchall()[0][0]
    result.ignored = [
        (str(k), int(n))
        for k, n, _ in connection.execute(
            "SELECT left(rt, 40) AS k, count(*) AS n, min(file || ':' || lpad(ord::VARCHAR, 20, '0')) AS first "
            "FROM res WHERE entry_ok AND jt = 'OBJECT' AND rt_t = 'VARCHAR' AND rt NOT IN ('Encounter', 'Location') "
            "GROUP BY k ORDER BY n DESC, first LIMIT 6"
        ).fetchall()
    ]
    result.flagged = connection.execute("SELECT count(DISTINCT (file, ord)) FROM flags").fetchall()[0][0]
    if result.flagged:
        result.flagged_reasons = [
            (str(r), int(n))
            for r, n in connection.execute(
                "SELECT reason, count(DISTINCT (file, ord)) AS n FROM flags GROUP BY reason ORDER BY n DESC, reason"
            ).fetchall()
        ]
        result.examples = [
            (str(f), int(o))
            for f, o in connection.execute(
                f"SELECT DISTINCT file, ord FROM flags ORDER BY file, ord LIMIT {int(examples)}"
            ).fetchall()
        ]
        return result
    # Nothing flagged: the summary's counts, then the stays.
    status_rows = connection.execute(
        "SELECT status, count(*) AS n, min(ord) AS first FROM enc WHERE in_class AND skipped "
        "GROUP BY status ORDER BY n DESC, first"
    ).fetchall()
    result.skipped_status = [(str(s), int(n)) for s, n, _ in status_rows]
    class_rows = connection.execute(
        f"""
        SELECT k, n FROM (
            SELECT left(code, 40) AS k, count(*) AS n, 0 AS grp,
                   min(file || ':' || lpad(ord::VARCHAR, 20, '0')) AS first
            FROM res WHERE entry_ok AND jt = 'OBJECT' AND rt = 'Encounter' AND code_t = 'VARCHAR'
                 AND code NOT IN (SELECT unnest({classes}))
            GROUP BY k
            UNION ALL
            SELECT 'parent of sub-encounters', count(*), 1, '' FROM enc
            WHERE in_class AND NOT skipped
              AND id IN (SELECT substr(part_of, 11) FROM enc WHERE part_of LIKE 'Encounter/%')
            HAVING count(*) > 0
        ) ORDER BY n DESC, grp, first LIMIT 6
        """
    ).fetchall()
    result.skipped_class = [(str(k), int(n)) for k, n in class_rows]
    other = connection.execute(
        f"SELECT count(*) FROM res WHERE entry_ok AND jt = 'OBJECT' AND rt = 'Encounter' AND code_t = 'VARCHAR' "
        f"AND code NOT IN (SELECT unnest({classes}))"
    ).fetchall()[0][0]
    in_enc = connection.execute("SELECT count(*) FROM enc").fetchall()[0][0]
    parents = sum(n for k, n in result.skipped_class if k == "parent of sub-encounters")
    result.total = int(in_enc + other)
    result.inpatient = int(result.total - sum(n for _, n in result.skipped_status) - other - parents)
    result.outside = [
        (str(k), int(n))
        for k, n in connection.execute(
            "SELECT lname, count(*) AS n FROM stays WHERE unit IS NULL GROUP BY lname ORDER BY n DESC, lname LIMIT 6"
        ).fetchall()
    ]
    result.outside_total = int(connection.execute("SELECT count(*) FROM stays WHERE unit IS NULL").fetchall()[0][0])
    kept = "SELECT *, subject AS patient_id FROM stays WHERE unit IS NOT NULL"
    if connection.execute(f"SELECT count(*) FROM ({kept})").fetchall()[0][0]:
        result.daily = daily_counts(connection, kept)
        result.overlaps, first = first_overlap(connection, kept, "file, ord, i")
        if result.overlaps:
            found = connection.execute(
                "SELECT file, ord, 'Encounter/' || id, admit_field FROM stays WHERE file = ? AND ord = ? AND i = ?",
                [first[0], first[1], first[2]],
            ).fetchall()
            result.overlap_at = found[0] if found else None
    stays_sql = """
        SELECT 'Encounter/' || id || '#' || i AS encounter_id, subject AS patient_id, unit,
               admit AS admit_time, discharge AS discharge_time, admit_field AS _admit_field,
               discharge_field AS _discharge_field, file AS _file, ord AS _row, 'Encounter/' || id AS _record
        FROM stays WHERE unit IS NOT NULL ORDER BY file, ord, i
        """
    if handed is not None:  # read by the caller once the engine is closed (engine.handoff)
        hand_over(connection, stays_sql, handed)
        return result
    result.stays = stays_frame(connection.sql(stays_sql).to_arrow_table().to_pandas())
    return result


def _leave_out(connection: Any, *tables: str) -> None:
    """Delete the records ``flags`` names from ``tables`` (a node's reading); nothing flagged costs one count."""
    if not connection.execute("SELECT count(*) FROM flags").fetchall()[0][0]:
        return
    for table in tables:
        connection.execute(f"DELETE FROM {table} USING flags f WHERE {table}.file = f.file AND {table}.ord = f.ord")


def stays_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The scan's stays as the reader keeps them: times typed, the repeated origin texts as categories."""
    for column in ("_admit_field", "_discharge_field", "_file"):
        frame[column] = frame[column].astype("category")
    for column in (ADMIT_TIME, DISCHARGE_TIME):
        frame[column] = frame[column].astype("datetime64[ns]")
    return frame[[ENCOUNTER_ID, PATIENT_ID, UNIT, ADMIT_TIME, DISCHARGE_TIME, *frame.columns[5:]]]
