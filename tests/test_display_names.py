"""Display names cleaned of bidirectional controls before any page or table (issue 22).

A right-to-left override (U+202E) in a unit name reversed how the rest of the name displayed in
the HTML report and in the CLI's tables. The data keeps the name as it is; only what is shown
is cleaned (``medalloc_core.display``).
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from fuzz import fixtures
from medalloc.cli import app
from medalloc.cli.tables import Table
from medalloc_core.display import BIDI_CONTROLS, clean_display
from medalloc_core.report.html import esc

RLO = "\u202e"


def test_every_bidi_control_is_removed_and_nothing_else() -> None:
    name = "icu" + BIDI_CONTROLS + "-2 é 病房"
    assert clean_display(name) == "icu-2 é 病房"


def test_the_report_escapes_and_cleans_a_name() -> None:
    assert esc(f"<b>med{RLO}lacid</b>") == "&lt;b&gt;medlacid&lt;/b&gt;"


def test_cli_tables_show_the_cleaned_name() -> None:
    from rich.console import Console

    table = Table("unit")
    table.add_row(f"med{RLO}lacid")
    console = Console(file=io.StringIO(), width=80)
    console.print(table)
    shown = console.file.getvalue()
    assert "medlacid" in shown and RLO not in shown


def test_validate_never_prints_the_override(tmp_path: Path) -> None:
    frame = pd.read_csv(io.BytesIO(fixtures.hospital_csv()), dtype=str)
    frame["unit"] = frame["unit"].str.replace("medical", f"med{RLO}lacid")
    path = tmp_path / "H000.csv"
    frame.to_csv(path, index=False)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert "medlacid" in result.output and RLO not in result.output
    assert RLO in path.read_text(encoding="utf-8")  # the file (the data) is untouched


def test_no_command_prints_a_bidi_control_anywhere(tmp_path: Path) -> None:
    """Beyond tables: a plan's reasons (allocate) and a loader warning logged by forecast carried the raw name.

    Real processes, whose stdout and stderr are read whole; the files they write keep the name as it is.
    """
    import os
    import subprocess
    import sys

    name = f"med{RLO}ical\u2067x"
    files = {
        "H000.csv": fixtures.hospital_csv(),
        "forecast.csv": fixtures.forecast_csv(),
        "capacity.csv": fixtures.capacity_csv(),
        **fixtures.model_files(),
    }
    for file, data in files.items():
        (tmp_path / file).write_bytes(data.replace(b"medical", name.encode()) if file.endswith(".csv") else data)
    commands = {
        "allocate": ["--forecast", "forecast.csv", "--capacity", "capacity.csv", "--out", "plan"],
        "forecast": ["--model", "final_model.safetensors", "--data", "H000.csv", "--out", "fc"],
    }
    for command, argv in commands.items():
        done = subprocess.run(
            [sys.executable, "-m", "medalloc", command, *argv],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "COLUMNS": "200"},
            check=False,
        )
        assert done.returncode == 0, done.stderr
        shown = done.stdout + done.stderr
        assert "medicalx" in shown, f"{command} did not show the unit at all: {shown[-400:]}"
        assert not [c for c in BIDI_CONTROLS if c in shown], f"{command} printed a bidi control"
    assert name in (tmp_path / "plan" / "plan_explanation.txt").read_text(encoding="utf-8")  # the data is kept
    assert name in (tmp_path / "fc" / "forecast.csv").read_text(encoding="utf-8")
