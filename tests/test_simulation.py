"""`medalloc simulate` end to end on Flower's Simulation Engine (Ray), plus the scenario and CLI error paths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from medalloc.cli import app as cli
from medalloc.simulations.runner import ResultsExist, prepare_out_dir, run_scenario
from medalloc.simulations.scenario import ScenarioError, load_scenario, parse_scenario
from medalloc_core.privacy.ledger import PrivacyLedger

SMALL = """
name = "test"
[region]
hospitals = 3
days = 240
seed = 3
short_history_fraction = 0.0
min_beds = 60
max_beds = 300
[federation]
model = "mlp"  # a tiny seeded MLP: the default hybrid's pretrained weights need history 28
init = "none"
num-server-rounds = 2
local-epochs = 2
history = 14
horizon = 7
hidden = 16
batch-size = 32
lr = 0.01
[privacy]
epsilon = 4.0
reproducible-noise = true
[comparisons]
baselines = ["seasonal_naive", "holt_winters"]
[output]
forecast-plots = 2
"""


@pytest.mark.slow
def test_small_simulation_writes_every_result_and_learns(tmp_path: Path):
    scenario_file = tmp_path / "small.toml"
    scenario_file.write_text(SMALL)
    out = tmp_path / "results"
    summary = run_scenario(load_scenario(scenario_file), out)

    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert all(r["nodes"] == {"sampled": 3, "accepted": 3} for r in rounds[1:])
    assert (out / "final_model.safetensors").stat().st_size > 0
    assert json.loads((out / "final_model.json").read_text())["model-config"]["hidden"] == 16
    for png in ["metrics_per_round.png", "comparison_wape.png", "forecast_H000.png", "forecast_H001.png"]:
        assert (out / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "scenario.toml").read_text() == SMALL

    on_disk = json.loads((out / "summary.json").read_text())
    assert set(on_disk["methods"]) == {
        "federated",
        "initial model",
        "local only",
        "local only DP",
        "centralized",
        "seasonal_naive",
        "holt_winters",
    }
    fed = on_disk["methods"]["federated"]
    assert set(fed["per_hospital"]) == {"H000", "H001", "H002"}
    # the federated model beats the initial one on the test split (pinball: the loss it is trained on)
    assert (
        fed["overall"]["volume_weighted"]["pinball"]
        < on_disk["methods"]["initial model"]["overall"]["volume_weighted"]["pinball"]
    )
    # every node released once, at its budget per patient, and the summary reports what the ledgers hold
    for hid in ("H000", "H001", "H002"):
        ledger = PrivacyLedger.load(out / "region" / "ledgers" / f"{hid}.json")
        assert ledger.unit == "patient" and [s.mechanism for s in ledger.spends()] == ["source-release"]
        assert ledger.epsilon_spent() == pytest.approx(4.0, abs=1e-3)
        assert summary["federation"]["epsilon_per_hospital"][hid] == pytest.approx(ledger.epsilon_spent())
        # local-only DP trains on the same release: the same patient-level epsilon, nothing more spent
        assert on_disk["local_only_dp_epsilon"][hid] == pytest.approx(ledger.epsilon_spent())
    assert on_disk["privacy"]["unit"] == "patient" and on_disk["privacy"]["max_stay_days"] == 14
    assert on_disk["privacy"]["epsilon_max"] == pytest.approx(4.0, abs=1e-3) and on_disk["privacy"]["delta"] == 1e-6
    assert rounds[-1]["privacy"]["epsilon-max"] == pytest.approx(4.0, abs=1e-3)

    # rolling-origin evaluation: the nodes held out the 16 scored weeks (and 28 validation days) from training,
    # and every method was scored at the same 8 origins per unit spread over them
    spec = json.loads((out / "final_model.json").read_text())["window-spec"]
    assert spec["test_periods"] == 16 * 7 and spec["val_periods"] == 28
    evaluation = on_disk["evaluation"]
    assert evaluation["weeks"] == 16 and evaluation["origins_per_unit"] == 8
    region = out / "region"
    for hid in ("H000", "H001", "H002"):
        frame = pd.read_csv(region / f"{hid}.csv", parse_dates=["date"])
        assert evaluation["origins_per_hospital"][hid] == 8 * frame["unit"].nunique()
        first_held_out = frame["date"].max() - pd.Timedelta(days=16 * 7 - 1)
        assert evaluation["first_origin"][hid] == str(first_held_out.date())
    per_hospital = {m: v["per_hospital"] for m, v in on_disk["methods"].items()}
    assert all(set(v) == {"H000", "H001", "H002"} for v in per_hospital.values())

    with pytest.raises(ResultsExist, match="--force"):
        run_scenario(load_scenario(scenario_file), out)


def test_results_folder_is_never_replaced_without_force_nor_if_foreign(tmp_path: Path):
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter1.tex").write_text("precious")
    with pytest.raises(ResultsExist, match="--force"):
        prepare_out_dir(foreign, force=False)
    with pytest.raises(ResultsExist, match="not a MedAlloc results folder"):
        prepare_out_dir(foreign, force=True)
    assert (foreign / "chapter1.tex").read_text() == "precious"


def test_every_baseline_a_scenario_accepts_forecasts_its_test_windows(tmp_path: Path):
    """Each name [comparisons] baselines accepts builds (moving_average takes ``window``, not
    ``season``) and forecasts every test window: finite, non-crossing, better than zeros."""
    from medalloc_core.forecast.features import federation_window_spec
    from medalloc_core.tasks.forecasting import comparisons as cmp
    from medalloc_core.tasks.forecasting.local import load_local_data
    from medalloc_core.tasks.forecasting.report import BASELINES
    from tests.fed_fixtures import small_region

    path = sorted(small_region(tmp_path / "region", hospitals=1, days=150).glob("*.csv"))[0]
    data = load_local_data(path, federation_window_spec(history=14, horizon=7, targets=("admissions", "census")))
    test = data.dataset.test
    y = data.dataset.to_original(test.y.numpy(), test)  # (N, H, T)
    quantiles = (0.1, 0.5, 0.9)
    for name in BASELINES:
        q = cmp.baseline_forecasts(name, data, quantiles)
        assert q.shape == (*y.shape, len(quantiles)), name
        assert np.isfinite(q).all() and (np.diff(q, axis=-1) >= 0).all(), name
        assert cmp.score(y, q, quantiles)["wape"] < 1.0, name


def test_embedded_default_scenario_needs_no_file():
    scenario = load_scenario()
    assert scenario.source == "embedded default" and scenario.hospitals == 5
    # it states nothing the run config's defaults already say: its model is the product default
    assert scenario.federation == {}
    run = scenario.federation_config(data_dir=Path("."), out_dir=Path("."))
    assert (run.strategy, run.model, run.init, run.lr, run.history) == ("fedavg", "hybrid", "pretrained", 3e-4, 28)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[federation]\nstrategy = 'fedsgd'\n", "strategy 'fedsgd' is unknown"),
        ("[federation]\nnum-rounds = 3\n", "unknown run-config key 'num-rounds'"),
        ("[region]\nhospitals = 0\n", "hospitals must be from 1 to 1000"),
        ("[comparisons]\nbaselines = ['arima']\n", "unknown baseline"),
        ("[extras]\nx = 1\n", "unknown section"),
        ("[evaluation]\nhorizon = 7\n", r"unknown key\(s\) \['horizon'\] in \[evaluation\]"),
        ("[evaluation]\nweeks = 1\norigins = 8\n", "8 origins of 14-day forecasts do not fit in 1 weeks"),
        ("[federation]\ntest-days = 56\n", r"'test-days': use \[evaluation\] weeks"),
        (
            "[region]\ndays = 300\nshort_history_fraction = 0.4\n",
            r"every unit needs 182 days .* as short as 120 days; raise \[region\] days, or set \[evaluation\] weeks",
        ),
    ],
)
def test_bad_scenarios_name_the_problem(text: str, match: str):
    import tomllib

    with pytest.raises(ScenarioError, match=match):
        parse_scenario(tomllib.loads(text))


def test_show_default_prints_the_embedded_scenario_verbatim():
    import tomllib

    from medalloc.simulations.scenario import default_scenario_text

    result = CliRunner().invoke(cli, ["simulate", "--show-default"])
    assert result.exit_code == 0 and result.output == default_scenario_text()
    assert tomllib.loads(result.output)["federation"] == {}  # the run config's defaults: nothing to repeat


def test_cli_exits_2_with_a_message_for_a_bad_scenario_or_an_existing_folder(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[federation]\nlr = 'fast'\n")
    result = CliRunner().invoke(cli, ["simulate", "--config", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "run-config 'lr' must be a finite number" in result.output
    missing = CliRunner().invoke(
        cli, ["simulate", "--config", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "o")]
    )
    assert missing.exit_code == 2 and "cannot read the scenario" in missing.output
    existing = tmp_path / "done"
    existing.mkdir()
    (existing / "summary.json").write_text("{}")
    result = CliRunner().invoke(cli, ["simulate", "--out", str(existing)])
    assert result.exit_code == 2 and "--force" in result.output


def test_the_verdict_says_whether_federated_beats_holt_winters_and_by_how_much():
    from medalloc.cli.simulate import verdict

    def summary(fed_wape: float, fed_pinball: float) -> dict:
        return {
            "methods": {
                "federated": {"overall": {"volume_weighted": {"wape": fed_wape, "pinball": fed_pinball}}},
                "holt_winters": {"overall": {"volume_weighted": {"wape": 0.120, "pinball": 2.80}}},
            },
            "method_epsilon": {"federated": {"H000": 1.0, "H001": 0.98}},
        }

    assert verdict(summary(0.114, 2.66)) == (
        "Federated at patient-level epsilon 1.00 against Holt-Winters: WAPE 0.114 vs 0.120 (0.950x, 5.0 % below); "
        "pinball loss 2.660 vs 2.800 (0.950x, 5.0 % below)."
    )
    assert "WAPE 0.131 vs 0.120 (1.092x, MISSES by 9.2 %)" in verdict(summary(0.131, 2.70))
