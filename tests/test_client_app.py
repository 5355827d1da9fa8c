"""ClientApp: node-owned config, the node's caps over the coordinator's proposal, the ledger's last word,
clean refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, RecordDict

from medalloc.client.app import handle_evaluate, handle_train, make_client_app
from medalloc.client.config import NodeConfig, NodeConfigError
from medalloc_core import protocol
from medalloc_core.forecast.features import federation_window_spec
from medalloc_core.forecast.models import ForecasterConfig, build_model, state_arrays
from medalloc_core.protocol import EvaluateInstruction, Refusal
from tests.fed_fixtures import TINY, file_calendar, record, request, small_region, task_identity


@pytest.fixture(autouse=True)
def _identity():
    with task_identity():
        yield


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_region(tmp_path_factory.mktemp("client") / "r")


SPEC = federation_window_spec(history=TINY["history"], horizon=TINY["horizon"], targets=("admissions", "census"))
MODEL = ForecasterConfig.for_spec(SPEC, model="mlp", hidden=TINY["hidden"])


def _config(**overrides) -> dict:
    values = {
        protocol.SERVER_ROUND: 1,
        protocol.LOCAL_EPOCHS: 1,
        protocol.BATCH_SIZE: 32,
        protocol.LR: 0.01,
        protocol.PROXIMAL_MU: 0.0,
        protocol.MODEL_CONFIG: json.dumps(MODEL.to_dict()),
        protocol.WINDOW_SPEC: json.dumps(SPEC.to_dict()),
        protocol.RUN_TAG: "test",
        protocol.SEED: 0,
        protocol.PRIVACY_MECHANISM: "source",
        protocol.PATIENT_EPSILON: 1.0,
        protocol.MAX_STAY_DAYS: 14,
        protocol.REPRODUCIBLE_NOISE: False,
    }
    values.update(overrides)
    return values


def _node(tmp_path: Path, data: Path, **extra) -> Context:
    config = (
        {
            "data-path": str(data),
            "ledger-path": str(tmp_path / "ledger.json"),
            "privacy-epsilon-budget": 20.0,
        }
        | file_calendar(data)
        | extra
    )
    return Context(run_id=1, node_id=5, node_config=config, state=RecordDict(), run_config={})


def _global() -> dict[str, np.ndarray]:
    return state_arrays(build_model(MODEL, seed=0))


# ------------------------------------------------------------------ NodeConfig
def test_node_config_from_a_supernode_ignores_simulation_keys(tmp_path: Path, region: Path):
    ctx = Context(
        run_id=1,
        node_id=5,
        node_config={
            "data-path": str(region / "H001.csv"),
            "ledger-path": "/l.json",
            "privacy-epsilon-budget": 4.0,
            "max-local-epochs": 2,
        },
        state=RecordDict(),
        # a coordinator trying to raise the node's budget through the run config: ignored
        run_config={"simulation-data-dir": str(region), "simulation-epsilon-budget": 1000.0},
    )
    node = NodeConfig.from_context(ctx)
    assert node.data_path == region / "H001.csv" and node.epsilon_budget == 4.0 and node.max_local_epochs == 2
    assert node.hospital_id == "H001" and not node.simulated


def test_node_config_in_simulation_maps_partition_to_its_own_file(region: Path):
    ctx = Context(
        run_id=1, node_id=5, node_config={"partition-id": 2, "num-partitions": 3}, state=RecordDict(), run_config={}
    )
    node = NodeConfig.from_context(
        ctx, run_config={"simulation-data-dir": str(region), "simulation-epsilon-budget": 3.0}
    )
    assert node.data_path == region / "H002.csv" and node.ledger_path == region / "ledgers" / "H002.json"
    assert node.epsilon_budget == 3.0 and node.simulated
    with pytest.raises(NodeConfigError, match="has no hospital file"):
        NodeConfig.from_context(
            Context(run_id=1, node_id=5, node_config={"partition-id": 3}, state=RecordDict(), run_config={}),
            run_config={"simulation-data-dir": str(region)},
        )


@pytest.mark.parametrize(
    ("node_config", "match"),
    [
        ({}, "no 'data-path'"),
        ({"data-path": "/x.csv"}, "no 'ledger-path'"),
        ({"data-path": "/x.csv", "ledger-path": "/l", "privacy-epsilon-budget": -1.0}, "finite number > 0"),
        (
            {"data-path": "/x.csv", "ledger-path": "/l", "privacy-epsilon-budget": 1.0, "min-noise-multiplier": 0.0},
            "never trains without DP",
        ),
    ],
)
def test_node_config_errors_name_the_key(node_config: dict, match: str):
    with pytest.raises(NodeConfigError, match=match):
        NodeConfig.from_context(
            Context(run_id=1, node_id=5, node_config=node_config, state=RecordDict(), run_config={})
        )


# ------------------------------------------------------------------ train
def test_train_reply_carries_arrays_and_aggregate_metrics_only(tmp_path: Path, region: Path):
    g = _global()
    proposal = _config(**{protocol.LOCAL_EPOCHS: 50})
    ctx = _node(
        tmp_path, region / "H000.csv", **{"max-local-epochs": 2, "min-noise-multiplier": 0.8, "max-grad-norm": 0.5}
    )
    reply = handle_train(request(5, record(g), proposal), ctx)
    assert not reply.has_error()
    content = reply.content
    assert set(content.array_records) == {protocol.ARRAYS} and set(content.metric_records) == {protocol.METRICS}
    assert set(content.config_records) == {protocol.NODE_INFO}
    assert dict(content[protocol.NODE_INFO]) == {protocol.HOSPITAL_ID: "H000"}
    metrics = content[protocol.METRICS]
    assert set(metrics) == protocol.TRAIN_METRIC_KEYS
    # the node's cap wins over the proposal; the noise is the release's
    assert metrics[protocol.LOCAL_EPOCHS_USED] == 2 and metrics[protocol.NOISE_MULTIPLIER] == pytest.approx(
        4.2247, abs=1e-3
    )
    arrays = {k: v.numpy() for k, v in content[protocol.ARRAYS].items()}
    assert set(arrays) == set(g) and any(not np.allclose(arrays[k], g[k]) for k in g)
    # the epsilon it reports is the ledger's patient-level one: the release, charged once
    body = json.loads((tmp_path / "ledger.json").read_text())["body"]
    spends = [s for entry in body["entries"].values() for s in entry]
    assert len(spends) == 1 and spends[0]["mechanism"] == "source-release"
    assert spends[0]["noise_multiplier"] == pytest.approx(metrics[protocol.NOISE_MULTIPLIER])
    assert metrics[protocol.EPSILON] == pytest.approx(spends[0]["epsilon_node_after"])
    assert metrics[protocol.EPSILON] == pytest.approx(1.0, abs=1e-3)  # the proposed patient-epsilon
    assert metrics[protocol.EPSILON_BUDGET_LEFT] == pytest.approx(20.0 - metrics[protocol.EPSILON])


def test_exhausted_budget_is_a_clean_refusal_and_nothing_is_trained(tmp_path: Path, region: Path):
    from medalloc_core.privacy.gaussian import gaussian_noise_multiplier
    from medalloc_core.privacy.node_state import open_node_ledger

    ledger = open_node_ledger(
        state_path=tmp_path / "medalloc-node-state.json",
        hospital_id="H000",
        ledger_path=tmp_path / "ledger.json",
        epsilon_budget=0.05,
        delta=1e-6,
        accountant="prv",
        max_stay_days=14,
    )
    z = gaussian_noise_multiplier(epsilon=0.05, delta=1e-6)  # a share that spent the whole budget
    ledger.spend("share", noise_multiplier=z, sample_rate=1.0, steps=1, run_id="share", mechanism="share")
    ctx = _node(tmp_path, region / "H000.csv", **{"privacy-epsilon-budget": 0.05})
    reply = handle_train(request(5, record(_global()), _config()), ctx)
    assert reply.has_error() and reply.error.code == Refusal.PRIVACY_BUDGET_EXCEEDED
    assert reply.error.reason.startswith("privacy-budget-exceeded: ") and "above its budget 0.05" in reply.error.reason
    body = json.loads((tmp_path / "ledger.json").read_text())["body"]
    assert len(body["entries"]["share"]) == 1  # nothing more recorded
    assert not (tmp_path / "ledger.json.released.csv").exists()  # nothing released


def test_corrupt_ledger_is_a_clean_refusal(tmp_path: Path, region: Path):
    ctx = _node(tmp_path, region / "H000.csv")
    assert not handle_train(request(5, record(_global()), _config()), ctx).has_error()
    text = (tmp_path / "ledger.json").read_text()
    (tmp_path / "ledger.json").write_text(text.replace('"steps": ', '"steps": 1'))  # edit a spend by hand
    reply = handle_train(request(5, record(_global()), _config()), ctx)
    assert reply.has_error() and reply.error.code == Refusal.LEDGER_CORRUPT


def test_invalid_data_is_refused_without_leaking_its_contents(tmp_path: Path):
    bad = tmp_path / "bad.csv"
    bad.write_text("date,unit,admissions\n2024-01-01,icu,7\n2024-01-02,icu,secret-value-42\n")
    reply = handle_train(request(5, record(_global()), _config()), _node(tmp_path, bad))
    assert reply.has_error() and reply.error.code == Refusal.DATA_INVALID
    assert "secret-value-42" not in reply.error.reason and "row" not in reply.error.reason


def test_a_global_model_that_does_not_fit_is_refused(tmp_path: Path, region: Path):
    wrong = _config(**{protocol.MODEL_CONFIG: json.dumps(MODEL.to_dict() | {"n_features": 3})})
    reply = handle_train(request(5, record(_global()), wrong), _node(tmp_path, region / "H000.csv"))
    assert reply.has_error() and reply.error.code == Refusal.REQUEST_INVALID and "F=3" in reply.error.reason
    reply = handle_train(
        request(5, record({"w": np.zeros(3, np.float32)}), _config()), _node(tmp_path, region / "H000.csv")
    )
    assert reply.has_error() and reply.error.code == Refusal.REQUEST_INVALID


def test_node_without_data_path_refuses_through_the_app(tmp_path: Path):
    app = make_client_app()
    ctx = Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config={})
    reply = app(request(5, record(_global()), _config()), ctx)
    assert reply.has_error() and reply.error.code == Refusal.NODE_MISCONFIGURED


# ------------------------------------------------------------------ evaluate
def test_evaluate_reports_test_metrics_in_original_units(tmp_path: Path, region: Path):
    ctx = _node(tmp_path, region / "H002.csv")
    req = request(
        5,
        record(_global()),
        EvaluateInstruction(
            server_round=1,
            model_config=MODEL,
            window_spec=SPEC,
            privacy_mechanism="source",
            patient_epsilon=1.0,
            max_stay_days=14,
            reproducible_noise=False,
            seed=0,
            run_tag="test",
        ).to_dict(),
        train=False,
    )
    reply = handle_evaluate(req, ctx)
    assert not reply.has_error()
    metrics = reply.content[protocol.METRICS]
    assert set(metrics) == protocol.EVAL_METRIC_KEYS
    assert metrics[protocol.NUM_EXAMPLES] > 0 and metrics[protocol.EVAL_MAE] > 0 and 0 < metrics[protocol.EVAL_WAPE] < 5
    # evaluation reads the node's release (made on first contact); a second evaluation spends nothing more
    first = (tmp_path / "ledger.json").read_text()
    assert not handle_evaluate(req, ctx).has_error() and (tmp_path / "ledger.json").read_text() == first
    assert ConfigRecord  # imported for the type of node info


def test_an_admissions_only_file_releases_admissions_alone_with_its_own_sensitivity(tmp_path: Path, region: Path):
    import pandas as pd

    from medalloc_core.privacy.release import ReleasePlan

    clinic = tmp_path / "clinic.csv"
    pd.read_csv(region / "H000.csv")[["date", "unit", "admissions"]].to_csv(clinic, index=False)
    spec = federation_window_spec(history=TINY["history"], horizon=TINY["horizon"], targets=("admissions",))
    model = ForecasterConfig.for_spec(spec, model="mlp", hidden=TINY["hidden"])
    proposal = _config(
        **{protocol.MODEL_CONFIG: json.dumps(model.to_dict()), protocol.WINDOW_SPEC: json.dumps(spec.to_dict())}
    )
    reply = handle_train(
        request(5, record(state_arrays(build_model(model, seed=0))), proposal), _node(tmp_path, clinic)
    )
    assert not reply.has_error(), reply.error
    stored = json.loads((tmp_path / "ledger.json.released.csv.json").read_text())
    assert stored["columns"] == ["admissions"]
    # a stay moves at most 2 admissions: less noise than when census (14 nights) is released beside them
    alone = ReleasePlan.calibrate(epsilon=1.0, delta=1e-6, columns=("admissions",)).noise_sd["admissions"]
    both = ReleasePlan.calibrate(epsilon=1.0, delta=1e-6, columns=("admissions", "census")).noise_sd["admissions"]
    assert stored["noise_sd"]["admissions"] == pytest.approx(alone, rel=1e-3) and alone < both
    assert reply.content[protocol.METRICS][protocol.EPSILON] == pytest.approx(1.0, abs=1e-3)


def test_a_target_the_node_does_not_release_is_refused_before_anything_is_spent(tmp_path: Path, region: Path):
    spec = federation_window_spec(history=TINY["history"], horizon=TINY["horizon"], targets=("discharges",))
    model = ForecasterConfig.for_spec(spec, model="mlp", hidden=TINY["hidden"])
    proposal = _config(
        **{protocol.MODEL_CONFIG: json.dumps(model.to_dict()), protocol.WINDOW_SPEC: json.dumps(spec.to_dict())}
    )
    ctx = _node(tmp_path, region / "H000.csv")  # releases admissions and census (the default release-columns)
    reply = handle_train(request(5, record(state_arrays(build_model(model, seed=0))), proposal), ctx)
    assert reply.has_error() and reply.error.code == Refusal.REQUEST_INVALID
    assert "['discharges'] are not among the columns this node releases (admissions, census)" in reply.error.reason
    assert not (tmp_path / "ledger.json.released.csv").exists()
    ledger = tmp_path / "ledger.json"
    assert not ledger.exists() or not json.loads(ledger.read_text())["body"]["entries"]


def test_a_mechanism_the_node_does_not_offer_is_refused_before_anything_is_spent(tmp_path: Path, region: Path):
    """The one 'source' check (privacy.mechanisms.check_offered) answers the node and the coordinator alike."""
    from medalloc.server.config import RunConfig, RunConfigError

    reply = handle_train(
        request(5, record(_global()), _config(**{"privacy-mechanism": "dp-sgd-patient"})),
        _node(tmp_path, region / "H000.csv"),
    )
    assert reply.has_error() and reply.error.code == Refusal.REQUEST_INVALID
    assert "privacy-mechanism 'dp-sgd-patient' is not offered; use 'source'" in reply.error.reason
    assert not (tmp_path / "ledger.json.released.csv").exists()
    with pytest.raises(RunConfigError, match="privacy-mechanism 'dp-sgd-patient' is not offered; use 'source'"):
        RunConfig.from_mapping({"privacy-mechanism": "dp-sgd-patient"})


def test_in_a_clientapp_process_the_library_log_reaches_flowers_console_once() -> None:
    """The node's release and epsilon lines (medalloc_core INFO) show in the SuperNode's log, once."""
    import subprocess
    import sys

    code = (
        "import sys, logging; sys.argv[0] = '/venv/bin/flwr-clientapp'; logging.basicConfig(level=logging.INFO)\n"
        "import medalloc.client.app\n"
        "logging.getLogger('medalloc_core.tasks.forecasting.task').info('H000: released 10 unit-days')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert (out.stdout + out.stderr).count("released 10 unit-days") == 1, out.stderr
    flower = code.replace("medalloc_core.tasks.forecasting.task", "flwr")
    out = subprocess.run([sys.executable, "-c", flower], capture_output=True, text=True, timeout=120)
    assert (out.stdout + out.stderr).count("released 10 unit-days") == 1, out.stderr  # Flower's lines once too
