"""One array per model on the wire (issue 25): the packing both apps use, the ServerApp's side (server.grid_io)
and the node's (client.wire, the ClientApp's outermost mod). The deployed path on real processes:
tests/e2e (a federation through flower-superlink and SuperNodes) and ``python -m simulations.benchmarks.deployment``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from medalloc.client.app import make_client_app
from medalloc.server.grid_io import pack_messages, unpack_replies
from medalloc_core import protocol
from medalloc_core.forecast.features import federation_window_spec
from medalloc_core.forecast.models import ForecasterConfig, build_model, state_arrays
from medalloc_core.protocol import Refusal
from medalloc_core.wire import PACKED_NAME, WireError, pack_arrays, unpack_arrays
from tests.fed_fixtures import TINY, file_calendar, record, request, small_region, task_identity

SPEC = federation_window_spec(history=TINY["history"], horizon=TINY["horizon"], targets=("admissions", "census"))
MODEL = ForecasterConfig.for_spec(SPEC, model="mlp", hidden=TINY["hidden"])


@pytest.fixture(autouse=True)
def _identity():
    with task_identity():
        yield


def _arrays() -> dict[str, np.ndarray]:
    return {
        "w": np.arange(12, dtype=np.float32).reshape(3, 4),
        "b": np.array([1.5, -2.0], dtype=np.float64),
        "steps": np.array(7, dtype=np.int64),  # 0-d
        "mask": np.array([True, False]),
        "empty": np.zeros((0, 5), dtype=np.float32),
    }


def test_packing_keeps_every_name_order_dtype_shape_and_value() -> None:
    arrays = _arrays()
    packed = pack_arrays(arrays)
    assert packed.dtype == np.uint8 and packed.ndim == 1
    back = unpack_arrays(packed)
    assert list(back) == list(arrays)
    for name, value in arrays.items():
        assert back[name].dtype == value.dtype and back[name].shape == value.shape
        np.testing.assert_array_equal(back[name], value)
    back["w"][0, 0] = 99  # each its own copy, writable
    assert arrays["w"][0, 0] == 0


def _with_header(header: object, body: bytes = b"") -> np.ndarray:
    text = json.dumps(header).encode()
    return np.frombuffer(len(text).to_bytes(8, "little") + text + body, dtype=np.uint8)


@pytest.mark.parametrize(
    ("packed", "match"),
    [
        (np.zeros(3, dtype=np.uint8), "shorter than its header length"),
        (np.frombuffer((10**9).to_bytes(8, "little") + b"[]", dtype=np.uint8), "exceeds the data"),
        (np.frombuffer((2).to_bytes(8, "little") + b"{{", dtype=np.uint8), "not JSON"),
        (_with_header({"w": 1}), "not a list"),
        (_with_header([["w", "|O", [1]]], b"\0" * 8), "not a number type"),
        (_with_header([["w", "<f4", [-1]]]), "non-negative integers"),
        (_with_header([["w", "<f4", [2]]], b"\0" * 4), "runs past the end"),
        (_with_header([["w", "<f4", [1]]], b"\0" * 5), "1 bytes after its last array"),
        (_with_header([["w", "<f4", [1]], ["w", "<f4", [1]]], b"\0" * 8), "appears twice"),
        (np.zeros((2, 2), dtype=np.uint8), "1-D uint8"),
    ],
)
def test_a_packed_model_that_is_not_one_is_refused_with_what_is_wrong(packed: np.ndarray, match: str) -> None:
    with pytest.raises(WireError, match=match):
        unpack_arrays(packed)


def test_packing_refuses_what_it_could_not_restore() -> None:
    with pytest.raises(WireError, match="not a number type"):
        pack_arrays({"names": np.array(["a", "b"], dtype=object)})
    with pytest.raises(WireError, match="may not be named"):
        pack_arrays({PACKED_NAME: np.zeros(1)})


def test_the_serverapp_sends_the_model_as_one_array_and_far_fewer_objects() -> None:
    model = state_arrays(build_model(MODEL, seed=0))
    assert len(model) >= 4
    shared = record(model)  # a round's messages share the global model's record, as the strategies build them
    messages = [request(node, shared, {protocol.SERVER_ROUND: 1}) for node in (1, 2)]
    before = len(get_all_nested_objects(request(1, shared, {protocol.SERVER_ROUND: 1})))
    sent = pack_messages(messages)
    after = len(get_all_nested_objects(sent[0]))
    assert list(sent[0].content[protocol.ARRAYS].keys()) == [PACKED_NAME]
    assert sent[0].content[protocol.ARRAYS] is sent[1].content[protocol.ARRAYS]  # packed once
    assert before - after == 2 * (len(model) - 1)  # each further array was an Array and its chunk
    assert list(sent[0].content[protocol.CONFIG].keys()) == [protocol.SERVER_ROUND]  # the rest as it was
    # a record of one array, or none, is sent as it is
    single = request(1, record({"w": np.zeros(3)}))
    assert list(pack_messages([single])[0].content[protocol.ARRAYS].keys()) == ["w"]


def _reply(arrays: ArrayRecord) -> Message:
    asked = request(1, record({"w": np.zeros(1)}))
    content = RecordDict({protocol.ARRAYS: arrays, protocol.METRICS: MetricRecord({"loss": 0.5})})
    return Message(content, reply_to=asked)


def test_the_serverapp_unpacks_replies_and_leaves_a_malformed_one_for_the_reply_checks() -> None:
    arrays = _arrays()
    good = _reply(ArrayRecord({PACKED_NAME: Array(pack_arrays(arrays))}))
    bad = _reply(ArrayRecord({PACKED_NAME: Array(np.zeros(3, dtype=np.uint8))}))
    plain = _reply(record(arrays))
    got = unpack_replies([good, bad, plain])
    assert list(got[0].content[protocol.ARRAYS].keys()) == list(arrays)
    np.testing.assert_array_equal(got[0].content[protocol.ARRAYS]["w"].numpy(), arrays["w"])
    assert list(got[1].content[protocol.ARRAYS].keys()) == [PACKED_NAME]  # not a model: refused downstream
    assert list(got[2].content[protocol.ARRAYS].keys()) == list(arrays)


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_region(tmp_path_factory.mktemp("wire") / "r")


def _train_config() -> dict:
    return {
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


def _context(tmp_path: Path, data: Path) -> Context:
    config = {"data-path": str(data), "ledger-path": str(tmp_path / "ledger.json"), "privacy-epsilon-budget": 20.0}
    config |= file_calendar(data)  # a deployed node declares its calendar (issue 20)
    return Context(run_id=1, node_id=5, node_config=config, state=RecordDict(), run_config={})


def test_a_node_trains_on_a_packed_request_and_answers_packed(tmp_path: Path, region: Path) -> None:
    model = state_arrays(build_model(MODEL, seed=0))
    (sent,) = pack_messages([request(5, record(model), _train_config())])
    reply = make_client_app()(sent, _context(tmp_path, region / "H000.csv"))
    assert not reply.has_error(), reply.error
    assert list(reply.content[protocol.ARRAYS].keys()) == [PACKED_NAME]
    (back,) = unpack_replies([reply])
    trained = {k: v.numpy() for k, v in back.content[protocol.ARRAYS].items()}
    assert list(trained) == list(model) and all(trained[k].shape == model[k].shape for k in model)
    assert any(not np.allclose(trained[k], model[k]) for k in model)
    assert set(back.content[protocol.METRICS]) == protocol.TRAIN_METRIC_KEYS  # the metrics as they were
    assert (tmp_path / "ledger.json").is_file()  # the ledger charged the release, as for any request


def test_a_node_answers_an_unpacked_request_unpacked(tmp_path: Path, region: Path) -> None:
    model = state_arrays(build_model(MODEL, seed=0))
    reply = make_client_app()(request(5, record(model), _train_config()), _context(tmp_path, region / "H000.csv"))
    assert not reply.has_error(), reply.error
    assert list(reply.content[protocol.ARRAYS].keys()) == list(model)


def test_a_packed_request_that_does_not_unpack_is_declined_before_anything_runs(tmp_path: Path, region: Path) -> None:
    broken = request(5, ArrayRecord({PACKED_NAME: Array(np.zeros(5, dtype=np.uint8))}), _train_config())
    reply = make_client_app()(broken, _context(tmp_path, region / "H000.csv"))
    assert reply.has_error() and reply.error.code == Refusal.REQUEST_INVALID
    assert "packed model does not unpack" in reply.error.reason
    assert not (tmp_path / "ledger.json").exists()  # nothing read, trained or spent
