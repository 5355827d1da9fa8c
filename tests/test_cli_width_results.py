"""The tables a hospital and a coordinator read after a run fit an 80-column terminal: `medalloc forecast`,
`explain`, `maintenance-plan`, `audit` and `simulate`, each in a real process with COLUMNS=80.

No cell is cut ("…"), no column collapses to nothing, no table row is wider than 80 characters, and
the values the person needs are on the screen (tests/test_cli_width.py does the same for the other
commands)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from medalloc.cli.maintenance_plan import _table as service_table
from medalloc_core.equipment.features import SnapshotSpec
from medalloc_core.equipment.model import RiskModelConfig, build_risk_model, save_risk_model
from medalloc_core.forecast.features import WindowSpec, prepare_hospital
from medalloc_core.forecast.models import ForecasterConfig, build_model
from medalloc_core.forecast.training import TrainConfig, train_local
from medalloc_core.model_io import save_model
from medalloc_core.synthetic import RegionConfig, generate_region, write_region
from medalloc_core.validation import load_unit_records
from tests.equipment_fixtures import fleet_copy
from tests.test_cli_width import _readable

SERVICE_HOURS = (
    "ventilator=3,infusion_pump=1,syringe_pump=0.5,patient_monitor=0.75,defibrillator=1,"
    "dialysis_machine=2.5,ultrasound=2,anaesthesia_machine=3"
)


def _medalloc(args: list[str], cwd: Path, *, ok: bool = True) -> str:
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(cwd), "COLUMNS": "80"}
    out = subprocess.run(
        [sys.executable, "-m", "medalloc.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0 or not ok, text
    return text


@pytest.fixture(scope="module")
def hospital(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with one generated hospital (region/H000.csv, with a long unit name) and a model trained on it."""
    folder = tmp_path_factory.mktemp("results-width")
    config = RegionConfig(
        hospitals=1, days=150, seed=4, min_beds=40, max_beds=80, short_history_fraction=0.0, specialty_centres=0,
        warmup_days=30,
    )  # fmt: skip
    data = next(p for p in write_region(generate_region(config), folder / "region") if p.suffix == ".csv")
    frame = pd.read_csv(data)
    # a unit name as long as real ones get: it must wrap, not be cut
    frame["unit"] = frame["unit"].replace({"medical": "paediatric intensive care (level 3)"})
    frame.to_csv(data, index=False)
    spec = WindowSpec(history=14, horizon=7, val_periods=14, test_periods=14)
    dataset = prepare_hospital(load_unit_records(data), spec)
    model = build_model(
        ForecasterConfig(history=14, horizon=7, n_features=dataset.n_features, n_targets=2, hidden=16), seed=0
    )
    train_local(model, dataset.train, config=TrainConfig(epochs=1, batch_size=32, lr=0.01))
    save_model(folder / "model" / "final_model.safetensors", model, spec=dataset.spec)
    return folder


def test_forecast_reads_whole_at_80_columns(hospital: Path) -> None:
    args = ["forecast", "--model", "model", "--data", "region/H000.csv", "--out", "fc", "--force"]
    text = _medalloc(args, hospital)
    _readable(text)
    assert "Forecast (mean over the horizon)" in text and "P90" in text, text
    assert "paediatric" in text and "(level 3)" in text, text


def test_explain_reads_whole_at_80_columns(hospital: Path) -> None:
    args = ["explain", "--model", "model", "--data", "region/H000.csv", "--out", "ex", "--force"]
    text = _medalloc(args, hospital)
    _readable(text)
    assert "what drives the" in text and "share" in text, text


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fleet-width")
    spec = SnapshotSpec()
    model = build_risk_model(RiskModelConfig(n_features=spec.n_features), seed=1)
    save_risk_model(folder / "model" / "final_model.safetensors", model, spec=spec)
    fleet_copy(folder)
    return folder


def test_maintenance_plan_reads_whole_at_80_columns(fleet: Path) -> None:
    args = ["maintenance-plan", "--model", "model", "--fleet", "fleets-csv/H000", "--hours", "40"]
    text = _medalloc([*args, "--service-hours", SERVICE_HOURS, "--out", "plan.csv", "--date", "2023-11-01"], fleet)
    _readable(text)
    assert "Service this week" in text and "prevented" in text, text


def test_the_service_table_shows_every_device_type_and_a_long_id_whole_at_80_columns(fleet: Path) -> None:
    """Whichever devices a week selects: the fleet's longest type names and a long device id, all selected."""
    types = [pair.split("=")[0] for pair in SERVICE_HOURS.split(",")]
    ids = [f"{t[:4].upper()}-{i:04d}" for i, t in enumerate(types)]
    ids[0] = "ICU-WEST-VENTILATOR-000123"  # a hospital's own asset number
    n = len(types)
    frame = pd.DataFrame(
        {
            "device_id": ids, "device_type": types, "unit": ["THEATRE", "DIALYSIS"] * (n // 2),
            "service_hours": np.full(n, 2.5), "risk_now": np.full(n, 0.4321), "risk_serviced": np.full(n, 0.1234),
            "benefit": np.full(n, 0.3087), "selected": np.ones(n, dtype=bool),
        }
    )  # fmt: skip
    console = Console(width=80, record=True)
    console.print(service_table(frame))
    text = console.export_text()
    _readable(text)
    joined = " ".join(text.replace("│", " ").split())
    for t in types:  # shown with spaces so that it wraps between its words
        for word in t.split("_"):
            assert word in joined, (word, text)
    # the long id folds onto further lines of its own column: read down that column
    column = "".join(line.split("│")[1].strip() for line in text.splitlines() if line.startswith("│"))
    assert "ICU-WEST-VENTILATOR-000123" in column, text


def test_the_service_table_cuts_nothing_where_rich_would(fleet: Path) -> None:
    """The test above can fail: the same rows with rich's default columns are cut at 80 columns."""
    from medalloc.cli.tables import Table

    table = Table()
    for name in ("device", "type", "unit", "hours", "risk now", "if serviced", "prevented"):
        table.add_column(name)
    table.add_row("ICU-WEST-VENTILATOR-000123", "anaesthesia_machine", "DIALYSIS", "2.5", "0.432", "0.123", "0.309")
    console = Console(width=80, record=True)
    console.print(table)
    with pytest.raises(AssertionError):
        _readable(console.export_text())


def _ragged(help_text: str, width: int = 80) -> list[str]:
    """Lines of a command's description (before its first option box) that end where the next word would
    still have fit: a line break from the docstring's source, not from the terminal."""
    bad = []
    lines = help_text.split("╭", 1)[0].splitlines()
    for line, following in zip(lines, lines[1:]):
        text, after = line.rstrip(), following.strip()
        if not text.strip() or not after or after.startswith(("- ", "* ", "•")):
            continue
        if len(text) + 1 + len(after.split()[0]) <= width - 1:
            bad.append(f"{text!r} / {after!r}")
    return bad


def test_every_commands_help_is_wrapped_by_the_terminal_at_80_columns(tmp_path: Path) -> None:
    from medalloc.cli import COMMANDS, load_command

    names = list(COMMANDS)
    node = load_command("node")
    assert isinstance(node, __import__("click").Group)
    names += [f"node {sub}" for sub in node.commands]
    ragged = {}
    for name in names:
        text = _medalloc([*name.split(), "--help"], tmp_path)
        assert "Usage:" in text and "--help" in text, text
        if bad := _ragged(text):
            ragged[name] = bad
    assert not ragged, ragged


def test_the_ragged_check_sees_a_docstrings_line_breaks() -> None:
    from medalloc.cli import reflow

    doc = """First line.

    A paragraph that the docstring wraps at a hundred columns, as this project's code is wrapped,
    so that at eighty columns it reads
    short, long, short.

    - a list item
    - another one that stays on its own line
    """
    console = Console(width=80, record=True)
    console.print(" " + doc.replace("\n    ", "\n "))
    assert _ragged(console.export_text())
    console = Console(width=80, record=True)
    console.print(reflow(doc))
    text = console.export_text()
    assert not _ragged(text) and "\n- another one that stays on its own line" in text, text


@pytest.mark.slow
def test_audit_reads_whole_at_80_columns_without_its_own_hospitals_warnings(tmp_path: Path) -> None:
    """`medalloc audit --quick`: its two tables whole at 80 columns, not buried under ~70 warnings about the
    synthetic hospitals it generates for itself (census over capacity on some day, the seeded replay)."""
    text = _medalloc(["audit", "--quick"], tmp_path, ok=False)
    _readable(text)
    assert "Patient-level audit" in text and "Release checks" in text, text
    assert "WARNING" not in text, text
    assert "warnings about the audit's own synthetic hospitals hidden" in text, text


@pytest.mark.slow
def test_simulate_reads_whole_at_80_columns(tmp_path: Path) -> None:
    """`medalloc simulate`: its progress lines keep their bar, count and time (a long step wraps), and its
    results table wraps its long privacy header rather than cutting a number."""
    from tests.test_report import SMALL

    (tmp_path / "small.toml").write_text(SMALL)
    text = _medalloc(["simulate", "--config", "small.toml", "--out", "results"], tmp_path)
    _readable(text)
    assert "…" not in text, text
    assert "2/2" in text and "Rolling-origin accuracy" in text and "seasonal_naive" in text, text
