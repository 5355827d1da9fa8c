"""The hospital's and coordinator's tables read whole in an 80-column terminal: no cell cut ("…"), no
column collapsed to nothing. Each command runs in a real process with COLUMNS=80."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from medalloc_core.privacy.gaussian import gaussian_noise_multiplier
from medalloc_core.privacy.ledger import PrivacyLedger

REPO = Path(__file__).resolve().parents[1]
# a row of a rich table whose column collapsed to nothing: two borders with nothing between them
COLLAPSED = re.compile(r"[┃│] ?[┃│]|┳┳|╇╇|┴┴")


def _medalloc(args: list[str], cwd: Path) -> str:
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(cwd), "COLUMNS": "80"}
    out = subprocess.run(
        [sys.executable, "-m", "medalloc.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    text = out.stdout + out.stderr
    assert out.returncode in (0, 2), text
    return text


def _readable(text: str) -> None:
    assert "…" not in text, text
    assert not COLLAPSED.search(text), text
    # table rows fit the terminal; messages are soft-wrapped by the terminal itself (copy-paste whole)
    rows = [line for line in text.splitlines() if any(c in line for c in "┃│┏┗└┌━─")]
    assert all(len(line) <= 80 for line in rows), text


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("width") / "privacy-ledger.json"
    ledger = PrivacyLedger.open(path, epsilon_budget=1.5, delta=1e-6, unit="patient", max_stay_days=14)
    z = gaussian_noise_multiplier(epsilon=0.5, delta=1e-6)
    ledger.spend(
        "release-H000", noise_multiplier=z, sample_rate=1.0, steps=1, run_id="run-7329834585915342115",
        mechanism="source-release",
    )  # fmt: skip
    ledger.spend(
        "share", noise_multiplier=2 * z, sample_rate=1.0, steps=1, run_id="share-2026-03-02", mechanism="share"
    )
    return path


def test_privacy_spends_read_whole_at_80_columns(ledger: Path) -> None:
    text = _medalloc(["privacy", "--ledger", str(ledger)], ledger.parent)
    _readable(text)
    for value in ("run-7329834585915342115", "source-release", "share-2026-03-02", "0.563"):
        assert value in text, text


def test_the_wide_spends_table_is_kept_where_it_fits(ledger: Path) -> None:
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(ledger.parent), "COLUMNS": "140"}
    out = subprocess.run(
        [sys.executable, "-m", "medalloc.cli", "privacy", "--ledger", str(ledger)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert "┃ when (UTC)" in out.stdout and "…" not in out.stdout


def test_validate_and_generate_read_whole_at_80_columns(tmp_path: Path) -> None:
    _readable(_medalloc(["generate", "--hospitals", "2", "--days", "60", "--out", "region"], tmp_path))
    text = _medalloc(["validate", "region/H000.csv", "region/H001.csv"], tmp_path)
    _readable(text)
    (tmp_path / "bad.csv").write_text("date,unit,admissions,census,capacity\n2024-01-01,ICU,-1,3,10\n")
    _readable(_medalloc(["validate", "bad.csv"], tmp_path))


def test_allocate_and_allocate_region_read_whole_at_80_columns(tmp_path: Path) -> None:
    from medalloc_core.allocation.forecast_io import write_forecast
    from tests.allocation_fixtures import forecast_frame

    units = {("H000", "ICU"): [(8.0, 10.0, 14.0), (9.0, 11.0, 13.0)], ("H000", "medical"): [(30.0, 35.0, 42.0)] * 2}
    write_forecast(forecast_frame(units), tmp_path / "forecast.csv")
    (tmp_path / "capacity.csv").write_text("unit,beds,staffed\nICU,13,10\nmedical,60,40\n")
    args = ["allocate", "--forecast", "forecast.csv", "--capacity", "capacity.csv", "--out", "plan"]
    text = _medalloc(args, tmp_path)
    _readable(text)
    assert "Bed and staff plan" in text and "medical" in text, text

    for hospital, quantiles in (("A", (11.0, 12.0, 13.0)), ("B", (4.0, 5.0, 6.0))):
        write_forecast(forecast_frame({(hospital, "ward"): [quantiles]}), tmp_path / f"{hospital}.csv")
    (tmp_path / "cap.csv").write_text("hospital,unit,beds\nA,ward,10\nB,ward,10\n")
    args = ["allocate-region", "--capacity", "cap.csv", "--out", "r", "--pool", "1", "--scenarios", "5"]
    text = _medalloc([*args, "--forecast", "A.csv", "--forecast", "B.csv"], tmp_path)
    _readable(text)
    assert "Binding constraints" in text and "surge pool" in text, text


def test_node_check_reads_whole_at_80_columns(tmp_path: Path) -> None:
    _medalloc(["generate", "--hospitals", "1", "--days", "60", "--out", "region"], tmp_path)
    (tmp_path / "node.toml").write_text(
        'data-path = "region/H000.csv"\nledger-path = "ledger.json"\napproved-apps = "approved.toml"\n'
    )
    args = ["node", "check", "--node-config", "node.toml", "--superlink", "127.0.0.1:9", "--insecure"]
    text = _medalloc(args, tmp_path)
    _readable(text)
    assert "privacy-epsilon-budget" in text and "NOT READY" in text, text
