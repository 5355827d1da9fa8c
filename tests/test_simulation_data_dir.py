"""`medalloc simulate` over a folder of the researcher's own files (`[region] data-dir`), and its refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from medalloc.cli import app as cli
from medalloc.simulations.runner import run_scenario
from medalloc.simulations.scenario import ScenarioError, load_scenario

# One Ray actor whatever the CPU count (all CPUs for one virtual node at a time): a second only imports the apps again.
SIMULATION = f"[simulation]\nclient-cpus = {os.cpu_count() or 1}\n"
FEDERATION = (
    """
[federation]
model = "mlp"  # a tiny seeded MLP: the default hybrid's pretrained weights need history 28
init = "none"
num-server-rounds = 2
local-epochs = 1
history = 14
horizon = 7
hidden = 16
batch-size = 32
lr = 0.01
[privacy]
epsilon = 1.0
reproducible-noise = true
[comparisons]
local-only-dp = false
baselines = ["seasonal_naive"]
[output]
forecast-plots = 1
"""
    + SIMULATION
)


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """A folder made by `medalloc generate`, exactly as a researcher would make it."""
    out = tmp_path_factory.mktemp("generated")
    result = CliRunner().invoke(
        cli, ["generate", "--hospitals", "3", "--days", "460", "--seed", "5", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def admissions_only(generated, tmp_path_factory) -> Path:
    """The same hospitals with nothing but admissions, as many small clinics export them."""
    out = tmp_path_factory.mktemp("admissions")
    for path in sorted(generated.glob("H*.csv")):
        pd.read_csv(path)[["date", "unit", "admissions"]].to_csv(out / path.name, index=False)
    return out


def _scenario(tmp_path: Path, region: str, federation: str = FEDERATION) -> Path:
    path = tmp_path / "scenario.toml"
    path.write_text(f'name = "data-dir"\n[region]\n{region}\n{federation}')
    return path


def test_a_generated_folder_gives_one_node_per_file_and_both_targets(tmp_path, generated):
    scenario = load_scenario(_scenario(tmp_path, f'data-dir = "{generated}"'))
    assert scenario.hospitals == 3
    assert scenario.federation["targets"] == "admissions,census"
    assert [p.name for p in scenario.data.files] == ["H000.csv", "H001.csv", "H002.csv"]


def test_a_minimal_scenario_trains_the_default_scenarios_model(tmp_path, generated):
    """Only `[region] data-dir`: the same model, start, windows and optimiser as the default scenario."""
    minimal = load_scenario(_scenario(tmp_path, f'data-dir = "{generated}"', federation=""))
    default = load_scenario(None)
    keys = ("model", "init", "history", "horizon", "hidden", "lr", "num_server_rounds", "local_epochs", "batch_size")
    mine = minimal.federation_config(data_dir=generated, out_dir=tmp_path / "a")
    theirs = default.federation_config(data_dir=generated, out_dir=tmp_path / "b")
    assert {k: getattr(mine, k) for k in keys} == {k: getattr(theirs, k) for k in keys}
    assert mine.model == "hybrid" and mine.init == "pretrained"


def test_targets_follow_the_columns_present(tmp_path, admissions_only):
    scenario = load_scenario(_scenario(tmp_path, f'data-dir = "{admissions_only}"'))
    assert scenario.federation["targets"] == "admissions"


def test_a_relative_data_dir_is_read_from_the_scenario_files_folder(tmp_path, generated):
    (tmp_path / "files").symlink_to(generated)
    assert load_scenario(_scenario(tmp_path, 'data-dir = "files"')).hospitals == 3


def test_generator_keys_beside_data_dir_are_refused(tmp_path, generated):
    with pytest.raises(ScenarioError, match=r"\['days', 'hospitals'\] are generator settings and unused with data-dir"):
        load_scenario(_scenario(tmp_path, f'data-dir = "{generated}"\nhospitals = 3\ndays = 100'))


def test_runner_keys_in_federation_are_refused_not_ignored(tmp_path, generated):
    federation = FEDERATION.replace("[federation]", f'[federation]\nsimulation-data-dir = "{generated}"')
    with pytest.raises(ScenarioError, match=r"'simulation-data-dir': use \[region\] data-dir"):
        load_scenario(_scenario(tmp_path, "hospitals = 3", federation))


def test_a_target_a_file_lacks_names_the_file_and_the_option(tmp_path, admissions_only):
    federation = FEDERATION.replace("[federation]", '[federation]\ntargets = "admissions,census"')
    with pytest.raises(ScenarioError, match=r"H000.csv: no \['census'\] column.*set \[federation\] targets"):
        load_scenario(_scenario(tmp_path, f'data-dir = "{admissions_only}"', federation))


def test_a_history_too_short_for_the_windows_names_the_option(tmp_path, generated):
    federation = FEDERATION.replace("history = 14", "history = 140")
    with pytest.raises(
        ScenarioError,
        match=r"unit '\w+': \d+ days; each unit needs history 140 .* 16 held-out weeks for 8 forecast origins = 287; "
        r"set \[evaluation\] weeks = \d+ .* or lower \[federation\] history",
    ):
        load_scenario(_scenario(tmp_path, f'data-dir = "{generated}"', federation))


def test_files_too_short_for_sixteen_held_out_weeks_name_the_weeks_that_fit(tmp_path, generated):
    """The generated files hold 16 weeks; 120-day ones do not, and the message says how many weeks (and origins) fit."""
    short = tmp_path / "short"
    short.mkdir()
    for path in sorted(generated.glob("H*.csv")):
        frame = pd.read_csv(path)
        frame[frame["date"] >= sorted(frame["date"].unique())[-120]].to_csv(short / path.name, index=False)
    with pytest.raises(
        ScenarioError,
        match=r"H000.csv, unit '\w+': 120 days; .* set \[evaluation\] weeks = 10 and origins = 10 \(7-day forecasts",
    ):
        load_scenario(_scenario(tmp_path, f'data-dir = "{short}"'))
    fewer = FEDERATION + "[evaluation]\nweeks = 10\norigins = 8\n"
    assert load_scenario(_scenario(tmp_path, f'data-dir = "{short}"', fewer)).eval_weeks == 10


def test_a_broken_file_is_reported_with_its_row(tmp_path, generated):
    broken = tmp_path / "broken"
    broken.mkdir()
    frame = pd.read_csv(generated / "H000.csv")
    frame.loc[3, "admissions"] = -4
    frame.to_csv(broken / "H000.csv", index=False)
    with pytest.raises(ScenarioError, match=r"H000.csv, row 5, column 'admissions'"):
        load_scenario(_scenario(tmp_path, f'data-dir = "{broken}"'))


@pytest.mark.slow
def test_simulate_runs_on_a_generated_folder_and_leaves_it_untouched(tmp_path, generated):
    before = sorted(p.name for p in generated.iterdir())
    out = tmp_path / "results"
    summary = run_scenario(load_scenario(_scenario(tmp_path, f'data-dir = "{generated}"')), out)
    assert summary["hospitals"] == ["H000", "H001", "H002"]
    assert {"federated", "local only", "centralized", "seasonal_naive"} <= set(summary["methods"])
    assert (out / "final_model.safetensors").is_file()
    assert sorted(p.name for p in generated.iterdir()) == before  # ledgers live in the results folder
    ledgers = sorted(p.name for p in (out / "region" / "ledgers").glob("H???.json"))
    assert ledgers == ["H000.json", "H001.json", "H002.json"]


@pytest.mark.slow
def test_simulate_runs_on_an_admissions_only_folder(tmp_path, admissions_only):
    out = tmp_path / "results"
    result = CliRunner().invoke(
        cli, ["simulate", "--config", str(_scenario(tmp_path, f'data-dir = "{admissions_only}"')), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    model = json.loads((out / "final_model.json").read_text())
    assert model["window-spec"]["targets"] == ["admissions"]
    assert model["model-config"]["n_targets"] == 1
    federated = json.loads((out / "summary.json").read_text())["methods"]["federated"]["overall"]["volume_weighted"]
    assert 0 < federated["wape"] < 1
    # beds are planned from census forecasts: no plan, said so, and the report is still written
    assert not (out / "allocation").exists()
    assert "no allocation plan" in " ".join(result.output.split())
    assert (out / "report.html").is_file()


@pytest.mark.slow
def test_a_federation_where_every_node_refuses_exits_non_zero_without_a_final_model(tmp_path, generated):
    # Every file has discharges, but a node releases admissions and census only (its release-columns):
    # it cannot train on a column it never released, and says so before spending anything.
    federation = FEDERATION.replace("[federation]", '[federation]\ntargets = "discharges"')
    out = tmp_path / "results"
    result = CliRunner().invoke(
        cli,
        ["simulate", "--config", str(_scenario(tmp_path, f'data-dir = "{generated}"', federation)), "--out", str(out)],
    )
    assert result.exit_code == 1, result.output
    assert "no round of the federation aggregated any update" in result.output
    assert "request-invalid" in result.output
    assert not (out / "final_model.safetensors").exists()
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["model-updated"] is False for r in rounds if r["round"] > 0)
    ledgers = out / "region" / "ledgers"
    assert not any(ledgers.glob("*.released.csv"))  # refused before any release: nothing spent


@pytest.mark.slow
def test_the_hybrid_model_federates_from_the_public_weights(tmp_path, generated):
    federation = (
        FEDERATION.replace("history = 14", "history = 28")
        .replace("horizon = 7", "horizon = 14")
        .replace("hidden = 16", "hidden = 64")
        .replace('model = "mlp"  # a tiny seeded MLP: the default hybrid\'s pretrained weights need history 28\n', "")
        .replace('init = "none"\n', "")
        # what is asserted is the initial model against seasonal naive: one round, and no local-only or centralized
        # hybrid trained beside the federation (most of the test's CPU), which nothing here reads
        .replace("num-server-rounds = 2", "num-server-rounds = 1")
        .replace("local-only-dp = false", "local-only = false\nlocal-only-dp = false\ncentralized = false")
    )  # the default model: the hybrid from the public pretrained weights
    out = tmp_path / "results"
    summary = run_scenario(load_scenario(_scenario(tmp_path, f'data-dir = "{generated}"', federation)), out)
    model = json.loads((out / "final_model.json").read_text())
    assert model["model-config"]["model"] == "hybrid"
    assert model["window-spec"]["scaling"] == "window"
    methods = summary["methods"]
    # the initial model is the public pretrained one, not the classical start: it already beats seasonal naive
    initial = methods["initial model"]["overall"]["volume_weighted"]
    naive = methods["seasonal_naive"]["overall"]["volume_weighted"]
    assert initial["pinball"] < naive["pinball"]


def test_a_folder_with_one_hospital_loads_with_a_warning(tmp_path, generated, caplog):
    one = tmp_path / "one"
    one.mkdir()
    (one / "H000.csv").write_bytes((generated / "H000.csv").read_bytes())
    with caplog.at_level("WARNING"):
        scenario = load_scenario(_scenario(tmp_path, f'data-dir = "{one}"'))
    assert scenario.hospitals == 1
    assert "not a federation" in caplog.text
