"""Strategy registry and run config: every registered strategy builds and aggregates checked replies;
client-level DP adds calibrated noise."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, RecordDict
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAdam, FedProx

from medalloc.server.config import RunConfig, RunConfigError
from medalloc.server.reply_checks import ReplyFilter
from medalloc.server.strategies import STRATEGIES, build_strategy, client_dp_epsilon
from medalloc_core import protocol
from tests.fed_fixtures import record, task_identity, train_metrics, train_reply

GLOBAL = {"w": np.zeros((4, 3), dtype=np.float32), "b": np.zeros(3, dtype=np.float32)}


@pytest.fixture(autouse=True)
def _identity():
    with task_identity():
        yield


class _Grid:
    def get_node_ids(self):
        return [1, 2, 3, 4, 5]


def _update(i: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(i)
    return {k: (v + rng.normal(0, 0.1, v.shape)).astype(np.float32) for k, v in GLOBAL.items()}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_builds_and_aggregates_only_checked_replies(name: str):
    config = RunConfig(strategy=name, min_available_nodes=5, min_train_nodes=5, krum_malicious_nodes=1)
    built = build_strategy(config)
    assert isinstance(built.strategy, ReplyFilter)
    g = record(GLOBAL)
    messages = list(built.strategy.configure_train(1, g, ConfigRecord(), _Grid()))
    assert len(messages) == 5
    sent = messages[0].content[protocol.CONFIG]
    assert sent[protocol.SERVER_ROUND] == 1
    if name == "fedprox":
        assert sent[protocol.PROXIMAL_MU] == pytest.approx(config.proximal_mu)
    replies = [train_reply(i + 1, _update(i), train_metrics(), g) for i in range(5)]
    poison = train_reply(9, {k: np.full_like(v, np.nan) for k, v in GLOBAL.items()}, train_metrics(), g)
    arrays, metrics = built.strategy.aggregate_train(1, [*replies, poison])
    assert arrays is not None and metrics is not None
    for key, value in GLOBAL.items():
        out = arrays[key].numpy()
        assert out.shape == value.shape and np.isfinite(out).all()
        # every aggregate stays within the honest updates' range (FedAdam moves by at most ~eta per coordinate)
        honest = np.stack([r[key] for r in map(_update, range(5))])
        slack = config.server_lr * 1.01 if name == "fedadam" else 1e-6
        assert (out >= honest.min(0) - slack).all() and (out <= honest.max(0) + slack).all()
    assert metrics["num-nodes"] >= 1 and metrics["epsilon-max"] == pytest.approx(1.0)


def test_registry_maps_names_to_flower_classes():
    assert isinstance(build_strategy(RunConfig(strategy="fedprox")).base, FedProx)
    assert isinstance(build_strategy(RunConfig(strategy="fedadam")).base, FedAdam)


def test_client_level_dp_wraps_the_strategy_and_adds_noise_of_the_calibrated_size():
    config = RunConfig(
        client_dp=True,
        client_dp_noise_multiplier=2.0,
        client_dp_clipping_norm=0.5,
        min_available_nodes=4,
        min_train_nodes=4,
    )
    built = build_strategy(config, num_sampled_nodes=4)
    assert isinstance(built.dp, DifferentialPrivacyServerSideFixedClipping)
    assert built.strategy.uniform_weights
    wide = {"w": np.zeros((50, 40), dtype=np.float32)}  # 2,000 coordinates: enough for a tight std estimate
    g = record(wide)
    list(built.strategy.configure_train(1, g, ConfigRecord(), _Grid()))
    step = {"w": np.full((50, 40), 0.01, dtype=np.float32)}  # norm 0.447 < clip 0.5: not clipped
    replies = [train_reply(i + 1, step, train_metrics(num_examples=10 * (i + 1)), g) for i in range(4)]
    arrays, _ = built.strategy.aggregate_train(1, replies)
    noise = arrays["w"].numpy() - 0.01  # the honest mean is 0.01 everywhere: the rest is DP noise
    assert noise.std() == pytest.approx(2.0 * 0.5 / 4, rel=0.1)  # sigma * C / n


def test_client_level_dp_drops_a_zero_update_that_would_crash_flowers_clipping():
    config = RunConfig(client_dp=True, min_available_nodes=2, min_train_nodes=2)
    built = build_strategy(config, num_sampled_nodes=2)
    g = record(GLOBAL)
    list(built.strategy.configure_train(1, g, ConfigRecord(), _Grid()))
    replies = [train_reply(1, GLOBAL, train_metrics(), g), train_reply(2, _update(1), train_metrics(), g)]
    arrays, _ = built.strategy.aggregate_train(1, replies)
    assert arrays is not None
    assert [o.status for o in built.strategy.report.train] == ["dropped", "accepted"]


def test_client_dp_epsilon_reference_values():
    assert client_dp_epsilon(noise_multiplier=1.0, releases=0, delta=1e-5) == 0.0
    one = client_dp_epsilon(noise_multiplier=1.0, releases=1, delta=1e-5)
    five = client_dp_epsilon(noise_multiplier=1.0, releases=5, delta=1e-5)
    # Five Gaussian releases are one Gaussian of noise 1/sqrt(5), composed exactly (RDP's bound was 12.3017).
    assert five == pytest.approx(11.4800, abs=1e-3)
    assert one < five < 5 * one  # composition grows sublinearly
    assert client_dp_epsilon(noise_multiplier=4.0, releases=5, delta=1e-5) < five


# ------------------------------------------------------------------ RunConfig
def test_run_config_reads_kebab_keys_and_coerces_toml_ints():
    ctx = Context(
        run_id=1,
        node_id=0,
        node_config={},
        state=RecordDict(),
        run_config={"num-server-rounds": 3, "lr": 1, "strategy": "krum", "client-dp": True},
    )
    config = RunConfig.from_context(ctx)
    assert config.num_server_rounds == 3 and config.lr == 1.0 and isinstance(config.lr, float)
    assert config.strategy == "krum" and config.client_dp is True
    assert RunConfig.from_mapping(config.to_dict()) == config


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"strategy": "fedsgd"}, "unknown; choose one of"),
        ({"num-server-round": 3}, "unknown run-config key 'num-server-round'"),
        ({"fraction-train": 1.5}, r"fraction-train must be in \[0, 1\]"),
        ({"local-epochs": 2.5}, "whole number"),
        ({"secure-aggregation": True}, "the .forecasting. task has no secure-aggregation round"),
        ({"client-dp": "yes"}, "true or false"),
        ({"resume": True}, "resume = true needs out-dir"),
    ],
)
def test_run_config_errors_say_how_to_fix(values, match):
    with pytest.raises(RunConfigError, match=match):
        RunConfig.from_mapping(values)


def test_pyproject_defaults_are_a_valid_run_config():
    import tomllib
    from pathlib import Path

    data = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    keys = data["tool"]["flwr"]["app"]["config"]
    config = RunConfig.from_mapping(keys)
    # `flwr run --run-config` only overrides keys that pyproject declares: every RunConfig key must be there,
    # with the same default, so `flwr run .` and the dataclass agree.
    assert set(keys) == set(RunConfig().to_dict())
    assert config == RunConfig()
    assert math.isfinite(config.lr)
