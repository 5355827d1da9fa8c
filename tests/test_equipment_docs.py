"""docs/equipment.md, followed verbatim: every ``bash e2e:NAME`` block runs, in order, in a fresh folder."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "equipment.md"


def blocks() -> dict[str, str]:
    text = PAGE.read_text(encoding="utf-8")
    found = {m[1]: m[2] for m in re.finditer(r"^```bash e2e:(\S+)\n(.*?)^```", text, re.M | re.S)}
    assert list(found) == ["validate", "plan", "generate", "simulate"], list(found)
    return found


def scenario() -> str:
    text = PAGE.read_text(encoding="utf-8")
    match = re.search(r"with `equipment.toml`:\n\n```toml\n(.*?)^```", text, re.M | re.S)
    assert match, "docs/equipment.md lost its equipment.toml"
    return match[1]


def run(block: str, cwd: Path) -> str:
    bin_dir = Path(sys.executable).parent
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(cwd), "MPLBACKEND": "Agg"},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Traceback" not in output
    return output


@pytest.mark.slow
def test_the_researcher_and_bme_commands_of_equipment_md_run_as_written(tmp_path: Path) -> None:
    found = blocks()
    (tmp_path / "equipment.toml").write_text(scenario(), encoding="utf-8")
    out = run(found["generate"], tmp_path)
    assert "wrote 3 fleet folders" in " ".join(out.split())
    out = run(found["validate"], tmp_path)
    assert "2 of 2 file(s) valid" in " ".join(out.split())
    out = run(found["simulate"], tmp_path)
    summary = tmp_path / "results" / "equipment" / "summary.json"
    assert summary.is_file() and (tmp_path / "results" / "equipment" / "plots" / "reliability.png").is_file()
    assert "federated DP" in out and "perfect" in out
    out = run(found["plan"], tmp_path)
    plan = pd.read_csv(tmp_path / "plan" / "H000.csv")
    assert plan.loc[plan["selected"], "service_hours"].sum() <= 12
    assert (tmp_path / "plan" / "H000.png").is_file() and "The age rule" in out
