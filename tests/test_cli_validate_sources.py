"""``medalloc validate`` on OMOP databases and FHIR exports: the same summaries, error lines and exit codes."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from medalloc.cli import app
from medalloc_core.sources.synthetic import create_omop_database
from tests.source_fixtures import fhir_resources, omop_tables, write_ndjson

runner = CliRunner()
REPO_ROOT = Path(__file__).resolve().parents[1]


def _lines(output: str) -> list[str]:
    return [" ".join(line.split()) for line in output.splitlines()]


def test_omop_database_and_fhir_export_summaries(tmp_path: Path) -> None:
    cdm = tmp_path / "cdm.sqlite"
    create_omop_database(omop_tables(), f"sqlite:///{cdm}")
    export = write_ndjson(fhir_resources(), tmp_path / "fhir")
    result = runner.invoke(app, ["validate", f"sqlite:///{cdm}", str(export)])
    assert result.exit_code == 0, result.output
    lines = _lines(result.output)
    for expected in (
        f"OK sqlite:///{cdm}",
        "format omop (sqlite)",
        "units 3: Emergency department, ICU, Ward 3",
        "date range 2025-01-01 .. 2025-01-04",
        "stays (open) 5 (1 open)",
        "tables visit_occurrence 4, visit_detail 3, care_site 4 rows",
        "inpatient visits 3 of 4 (visit_concept_id in 9201, 262, 8717, 32037)",
        "left out 1 visits of other concepts (9202: 1)",
        f"OK {export}",
        "format fhir ndjson",
        "left out status entered-in-error: 1, class AMB: 1",
        "2 of 2 file(s) valid",
    ):
        assert expected in lines, result.output


def test_a_mapping_file_changes_what_counts(tmp_path: Path) -> None:
    cdm = tmp_path / "cdm.sqlite"
    create_omop_database(omop_tables(), f"sqlite:///{cdm}")
    mapping = tmp_path / "mapping.toml"
    mapping.write_text('[omop]\nunits = { "ICU" = "ICU" }\n')
    result = runner.invoke(app, ["validate", str(cdm), "--mapping", str(mapping)])
    assert result.exit_code == 0, result.output
    assert "units 1: ICU" in _lines(result.output)
    mapping.write_text("[omop]\nunit = 'x'\n")
    result = runner.invoke(app, ["validate", str(cdm), "--mapping", str(mapping)])
    assert result.exit_code == 2
    assert f"error: {mapping}: [omop] unknown key(s) ['unit']; known keys: " in result.output


def test_broken_fhir_export_exits_2_naming_line_resource_and_field(tmp_path: Path) -> None:
    resources = fhir_resources()
    next(r for r in resources if r.get("id") == "e1")["location"][1]["period"]["end"] = "yesterday"
    export = write_ndjson(resources, tmp_path / "fhir")
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in export.iterdir()}
    result = runner.invoke(app, ["validate", str(export)])
    assert result.exit_code == 2
    assert f"INVALID {export}: 1 error(s), 0 warning(s)" in result.output
    assert (
        f"error: {export / 'Encounter.ndjson'}, line 1, Encounter/e1, field 'location[1].period.end': "
        "DateTime value string does not match spec regex.; expected a valid FHIR R4 Encounter"
    ) in " ".join(result.output.split())
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in export.iterdir()} == before


def test_bad_format_option_and_a_real_process(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", "x", "--format", "hl7"])
    assert result.exit_code == 2 and "error: --format must be one of auto, contract, omop, fhir" in result.output
    export = write_ndjson(fhir_resources(), tmp_path / "fhir")
    done = subprocess.run(
        [sys.executable, "-m", "medalloc.cli", "validate", "--format", "omop", str(export)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert f"error: {export}: no visit_occurrence table" in done.stdout


def test_daily_out_writes_the_records_the_node_derives_and_forecast_reads(tmp_path: Path) -> None:
    from medalloc_core.sources import load_source
    from medalloc_core.validation import load_unit_records

    cdm = tmp_path / "cdm.sqlite"
    create_omop_database(omop_tables(), f"sqlite:///{cdm}")
    daily = tmp_path / "H000-daily.csv"
    result = runner.invoke(app, ["validate", f"sqlite:///{cdm}", "--daily-out", str(daily)])
    assert result.exit_code == 0, result.output
    derived = load_source(f"sqlite:///{cdm}").records.frame.reset_index(drop=True)
    written = load_unit_records(daily).frame.reset_index(drop=True)  # a contract file, as forecast reads it
    assert written.equals(derived[written.columns]) and list(written.columns) == list(derived.columns)
    # never over an existing file, and nothing from an invalid source
    before = daily.read_bytes()
    again = runner.invoke(app, ["validate", f"sqlite:///{cdm}", "--daily-out", str(daily)])
    assert again.exit_code == 2 and "already exists" in again.output and daily.read_bytes() == before
    resources = fhir_resources()
    next(r for r in resources if r.get("id") == "e1")["location"][1]["period"]["end"] = "yesterday"
    export = write_ndjson(resources, tmp_path / "fhir")
    bad = runner.invoke(app, ["validate", str(export), "--daily-out", str(tmp_path / "x.csv")])
    assert bad.exit_code == 2 and not (tmp_path / "x.csv").exists()
    two = runner.invoke(app, ["validate", str(cdm), str(cdm), "--daily-out", str(tmp_path / "y.csv")])
    assert two.exit_code == 2 and "give one SOURCE, not 2" in two.output and not (tmp_path / "y.csv").exists()
