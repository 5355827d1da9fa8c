"""Benchmark: the same hospital's stays read from every source, side by side with the contract's encounter CSV.

One generated hospital (``--days`` of records, encounters) is written as an encounter CSV,
an OMOP CDM (SQLite; CSV and Parquet exports) and a FHIR R4 export (Bulk Data NDJSON and a
Bundle), with the non-inpatient records real exports hold around the stays. Each is loaded
with ``medalloc_core.sources.load_source`` (validation and daily records included); the table
gives the best of ``--repeats`` times, stays per second, and the ratio to the encounter CSV.
Every source must give the same daily records (checked, or the benchmark fails).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from medalloc_core.sources import DataSource, load_source
from medalloc_core.sources.synthetic import fhir_resources, omop_tables, write_fhir, write_omop
from medalloc_core.synthetic import RegionConfig, generate_region


def _best(repeats: int, source: DataSource) -> tuple[float, pd.DataFrame]:
    times, frame = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        frame = load_source(source).records.frame
        times.append(time.perf_counter() - start)
    assert frame is not None
    return min(times), frame.reset_index(drop=True)


def main() -> None:
    """Write one hospital in every format, load each, print times and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=365, help="days of records (default 365)")
    parser.add_argument("--beds", type=int, default=300, help="the hospital's size in beds (default 300)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.getLogger("medalloc_core").setLevel(logging.ERROR)
    config = RegionConfig(
        hospitals=1, days=args.days, seed=args.seed, shape="encounters", min_beds=args.beds, max_beds=args.beds
    )
    hospital = generate_region(config).hospitals[0]
    assert hospital.encounters is not None
    stays = len(hospital.encounters)
    console = Console(width=140)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        csv = out / "H000.csv"
        hospital.encounters.to_csv(csv, index=False, date_format="%Y-%m-%d %H:%M:%S")
        tables = omop_tables(hospital.encounters, hospital_id="H000", seed=args.seed)
        resources = fhir_resources(hospital.encounters, hospital_id="H000", seed=args.seed)
        sources = {
            "encounter CSV (contract)": DataSource(str(csv)),
            "OMOP SQLite": DataSource(str(write_omop(tables, out / "H000.sqlite", "sqlite"))),
            "OMOP CSV export": DataSource(str(write_omop(tables, out / "csv.omop", "csv"))),
            "OMOP Parquet export": DataSource(str(write_omop(tables, out / "parquet.omop", "parquet"))),
            "FHIR Bulk NDJSON": DataSource(str(write_fhir(resources, out / "H000.fhir", "ndjson"))),
            "FHIR Bundle": DataSource(str(write_fhir(resources, out / "H000.fhir.json", "bundle"))),
        }
        records = {
            "encounter CSV (contract)": stays,
            "OMOP SQLite": sum(len(t) for t in tables.values()),
            "OMOP CSV export": sum(len(t) for t in tables.values()),
            "OMOP Parquet export": sum(len(t) for t in tables.values()),
            "FHIR Bulk NDJSON": sum(len(r) for r in resources.values()),
            "FHIR Bundle": sum(len(r) for r in resources.values()),
        }
        results = {name: _best(args.repeats, source) for name, source in sources.items()}
    baseline, expected = results["encounter CSV (contract)"]
    for name, (_, frame) in results.items():
        pd.testing.assert_frame_equal(frame, expected, check_dtype=False, obj=name)
    table = Table(
        title=f"load_source on one {args.beds}-bed hospital, {args.days} days: {stays:,} stays "
        f"(best of {args.repeats}; every source gave the same {len(expected):,} daily rows)"
    )
    for column in ("source", "records read", "seconds", "stays/s", "x encounter CSV"):
        table.add_column(column, justify="left" if column == "source" else "right")
    for name, (seconds, _) in results.items():
        table.add_row(
            name, f"{records[name]:,}", f"{seconds:.2f}", f"{stays / seconds:,.0f}", f"{seconds / baseline:.1f}"
        )
    console.print(table)


if __name__ == "__main__":
    main()
