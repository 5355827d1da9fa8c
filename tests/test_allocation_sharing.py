"""DP sharing for the regional plan: the release is one sample-rate-1 Gaussian step in the node's ledger."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from medalloc.cli import app
from medalloc_core.allocation.regional import gaussian_sigma, share_forecast
from medalloc_core.allocation.sharing import calibrate_share_noise, share_with_ledger
from medalloc_core.privacy.accounting import epsilon_for, noise_multiplier_for
from medalloc_core.privacy.fingerprint import fingerprint_frame
from medalloc_core.privacy.ledger import PrivacyBudgetExceeded, PrivacyLedger
from medalloc_core.validation import load_unit_records
from tests.forecast_fixtures import records

runner = CliRunner()
LEVELS = (0.1, 0.5, 0.9)
TRAINING = (1.3, 0.05, 200)  # a DP-SGD spend already on the node: (sigma, q, steps)


def _forecast(days: int = 7) -> pd.DataFrame:
    dates = pd.date_range("2026-03-02", periods=days)
    rows = [
        {"hospital": "H1", "unit": u, "date": d, "target": t, "q": q, "value": base + 10 * q}
        for u, base in (("icu", 8.0), ("ward", 30.0))
        for d in dates
        for t in ("admissions", "census")
        for q in LEVELS
    ]
    return pd.DataFrame(rows)


@pytest.fixture
def node(tmp_path: Path) -> tuple[Path, Path, str]:
    """A hospital file, its fingerprint, and a ledger that already holds one DP-SGD spend on it."""
    data = tmp_path / "H1.csv"
    recs = records(days=60)
    recs.frame.assign(date=recs.frame["date"].dt.strftime("%Y-%m-%d")).to_csv(data, index=False)
    fp = fingerprint_frame(load_unit_records(data).frame)
    ledger = PrivacyLedger.open(tmp_path / "ledger.json", epsilon_budget=10.0, delta=1e-5)
    ledger.spend(
        fp, noise_multiplier=TRAINING[0], sample_rate=TRAINING[1], steps=TRAINING[2], run_id="federation/round-1"
    )
    return data, ledger.path, fp


def test_ledger_epsilon_after_a_share_is_the_accountants_epsilon_of_the_combined_history(
    node: tuple[Path, Path, str],
) -> None:
    _, path, fp = node
    ledger = PrivacyLedger.load(path)
    before = ledger.epsilon_spent()
    result = share_with_ledger(_forecast(), ledger=ledger, fingerprint=fp, epsilon=1.0, seed=0, run_id="share:test")
    z = noise_multiplier_for(target_epsilon=1.0, delta=1e-5, sample_rate=1.0, steps=1, accountant="prv")
    assert result.noise_multiplier == pytest.approx(z)
    assert result.n_values == 7 * 3  # days x levels: census summed over units
    assert result.sigma == pytest.approx(z * 1.0 * math.sqrt(21))
    # the accountant is an upper bound: never less noise than the exact analytic Gaussian needs
    assert result.sigma >= gaussian_sigma(epsilon=1.0, delta=1e-5, n_values=21)
    assert result.epsilon_release <= 1.0 + 1e-9
    expected = epsilon_for([TRAINING, (z, 1.0, 1)], delta=1e-5, accountant="prv")
    assert PrivacyLedger.load(path).epsilon_spent() == pytest.approx(expected, rel=1e-9)
    assert result.epsilon_node_after == pytest.approx(expected, rel=1e-9)
    assert expected > before and expected > 1.0
    assert sorted(PrivacyLedger.load(path).history(fp)) == sorted([TRAINING, (z, 1.0, 1)])


def test_noise_has_the_recorded_scale_and_is_reproducible_only_by_seed(
    node: tuple[Path, Path, str], tmp_path: Path
) -> None:
    # one quantile level so per-day sorting does not reorder: the differences are the raw noise
    frame = _forecast(days=400)
    frame = frame[frame["q"] == 0.5]
    _, path, fp = node
    ledger = PrivacyLedger.open(tmp_path / "big.json", epsilon_budget=1e6, delta=1e-5)
    clean = share_forecast(frame, epsilon=None, seed=None)["value"].to_numpy()
    a = share_with_ledger(frame, ledger=ledger, fingerprint=fp, epsilon=50.0, seed=3, run_id="share:a")
    b = share_with_ledger(frame, ledger=ledger, fingerprint=fp, epsilon=50.0, seed=3, run_id="share:b")
    pd.testing.assert_frame_equal(a.shared, b.shared)
    noise = a.shared["value"].to_numpy() - clean  # values ~48 >> sigma ~2.4, so clipping at 0 never bites
    assert noise.std() == pytest.approx(a.sigma, rel=0.15)
    assert abs(noise.mean()) < 4 * a.sigma / math.sqrt(len(noise))
    with pytest.raises(ValueError, match="below"):
        share_forecast(frame, epsilon=1.0, delta=1e-5, mechanism="gaussian", seed=0, noise_scale=0.5 * a.sigma)


def test_calibration_handles_sample_rate_one_with_both_accountants() -> None:
    for accountant in ("prv", "rdp"):
        z, sigma = calibrate_share_noise(epsilon=2.0, delta=1e-5, n_values=4, sensitivity=2.0, accountant=accountant)
        assert epsilon_for([(z, 1.0, 1)], delta=1e-5, accountant=accountant) <= 2.0
        assert sigma == pytest.approx(z * 2.0 * 2.0)
        assert z >= gaussian_sigma(
            epsilon=2.0, delta=1e-5, n_values=1
        )  # analytic Gaussian is exact; accountants bound it


def test_cli_share_records_the_release_and_writes_the_table(node: tuple[Path, Path, str], tmp_path: Path) -> None:
    data, path, fp = node
    fc = tmp_path / "forecast.csv"
    _forecast().assign(date=lambda f: f["date"].dt.strftime("%Y-%m-%d")).to_csv(fc, index=False)
    out = tmp_path / "shared.csv"
    result = runner.invoke(
        app,
        [
            "share",
            "--forecast",
            str(fc),
            "--data",
            str(data),
            "--ledger",
            str(path),
            "--epsilon",
            "1",
            "--out",
            str(out),
            "--seed",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    shared = pd.read_csv(out)
    assert list(shared.columns) == ["hospital", "date", "q", "value", "noise_sd"] and len(shared) == 21
    assert shared["noise_sd"].nunique() == 1 and shared["noise_sd"].iloc[0] > 0  # public: the plan accounts for it
    assert (shared.groupby("date")["value"].apply(lambda v: v.is_monotonic_increasing)).all()
    z = noise_multiplier_for(target_epsilon=1.0, delta=1e-5, sample_rate=1.0, steps=1)
    assert PrivacyLedger.load(path).epsilon_spent() == pytest.approx(
        epsilon_for([TRAINING, (z, 1.0, 1)], delta=1e-5), rel=1e-9
    )
    assert PrivacyLedger.load(path).entries()[0].spends[-1].run_id == "share:H1:2026-03-02..2026-03-08"
    # again without --force: refused before anything is spent
    before = path.read_bytes()
    result = runner.invoke(
        app,
        [
            "share",
            "--forecast",
            str(fc),
            "--data",
            str(data),
            "--ledger",
            str(path),
            "--epsilon",
            "1",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 2 and "already exists" in result.output and path.read_bytes() == before


def test_refusal_releases_nothing_and_leaves_the_ledger_unchanged(node: tuple[Path, Path, str], tmp_path: Path) -> None:
    data, path, fp = node
    fc = tmp_path / "forecast.csv"
    _forecast().to_csv(fc, index=False)
    before = path.read_bytes()
    out = tmp_path / "shared.csv"
    result = runner.invoke(
        app,
        [
            "share",
            "--forecast",
            str(fc),
            "--data",
            str(data),
            "--ledger",
            str(path),
            "--epsilon",
            "9.5",
            "--out",
            str(out),
        ],
    )  # training already spent ~1.5 of 10
    assert result.exit_code == 2
    assert "refused" in result.output and "Nothing was shared" in result.output and "Traceback" not in result.output
    assert not out.exists()
    assert path.read_bytes() == before
    ledger = PrivacyLedger.load(path)
    with pytest.raises(PrivacyBudgetExceeded):
        share_with_ledger(_forecast(), ledger=ledger, fingerprint=fp, epsilon=9.5, seed=0, run_id="share:x")
    assert path.read_bytes() == before
    # a delta other than the ledger's is refused too
    result = runner.invoke(
        app,
        [
            "share",
            "--forecast",
            str(fc),
            "--data",
            str(data),
            "--ledger",
            str(path),
            "--epsilon",
            "0.5",
            "--delta",
            "1e-6",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 2 and "delta" in result.output and not out.exists() and path.read_bytes() == before


def test_share_labels_the_table_with_the_nodes_hospital_id_which_allocate_region_accepts(
    node: tuple[Path, Path, str], tmp_path: Path
) -> None:
    """One identity from the node to the regional plan: the forecast says H1 (a file name), the
    node's node.toml says hospital-id = "H003"; the shared table and the capacity table agree on H003."""
    data, path, _ = node
    fc = tmp_path / "forecast.csv"
    _forecast().assign(date=lambda f: f["date"].dt.strftime("%Y-%m-%d")).to_csv(fc, index=False)
    toml = tmp_path / "node.toml"
    toml.write_text(
        f'hospital-id = "H003"\ndata-path = "{data}"\nledger-path = "{path}"\nprivacy-epsilon-budget = 20.0\n'
    )
    out = tmp_path / "shared.csv"
    result = runner.invoke(
        app,
        ["share", "--forecast", str(fc), "--data", str(data), "--node-config", str(toml), "--epsilon", "1",
         "--out", str(out), "--seed", "0"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert set(pd.read_csv(out)["hospital"]) == {"H003"}
    assert PrivacyLedger.load(path).entries()[0].spends[-1].run_id.startswith("share:H003:")
    (tmp_path / "cap.csv").write_text("hospital,beds\nH003,60\n")
    region = runner.invoke(
        app,
        ["allocate-region", "--forecast", str(out), "--capacity", str(tmp_path / "cap.csv"), "--out",
         str(tmp_path / "r")],
    )  # fmt: skip
    assert region.exit_code == 0, region.output
    # neither a ledger nor a node config: refused before anything is read or spent
    bad = runner.invoke(app, ["share", "--forecast", str(fc), "--data", str(data), "--epsilon", "1", "--out", "x.csv"])
    assert bad.exit_code == 2 and "--node-config" in bad.output
