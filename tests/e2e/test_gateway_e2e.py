"""The Fleet gateway in front of a real SuperLink, both started by docs/deploy.md's own commands.

An outsider holding only the public ``ca.crt`` sends raw bytes (no HTTP client cleans the
path) through the gateway: every spelling of a Control or Runtime call is refused, no node
key gets registered, no run is listed or stopped. The same calls sent straight to the
SuperLink's loopback port succeed, which is what makes the refusals meaningful. That real
SuperNodes train through the same gateway is ``test_deployment.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.e2e.harness import ProcessHarness
from tests.e2e.test_deployment import Federation
from tests.gateway_raw import FORBIDDEN_CALLS, PATH_TRICKS, exchange, request_bytes, status_of


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    from tests.test_gateway import _nginx_or_skip

    _nginx_or_skip()
    root = tmp_path_factory.mktemp("gateway-e2e")
    harness = ProcessHarness(root)
    federation = Federation(harness, root)
    try:
        federation.start_coordinator()
        yield federation
    finally:
        left = harness.stop_all()
        assert not left, f"Flower processes still running after teardown: {left}"


def _ca(fed: Federation) -> Path:
    return fed.coord / "certs" / "ca.crt"


def _register_request() -> bytes:
    """A Control API RegisterNodeRequest for a fresh key: what `flwr supernode register` sends."""
    from flwr.proto.control_pb2 import RegisterNodeRequest

    key = ec.generate_private_key(ec.SECP384R1()).public_key()
    public = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return RegisterNodeRequest(public_key=public).SerializeToString()


@pytest.mark.slow
def test_the_calls_work_on_the_superlink_itself(fed: Federation) -> None:
    """The oracle: sent to the SuperLink's port, the outsider's calls succeed: a refusal below is the gateway's."""
    for call in ("control/list-nodes", "control/list-runs"):
        response = exchange(fed.link_port, _ca(fed), request_bytes("POST", f"/v1/{call}"))
        assert status_of(response) == 200, response[:300]


@pytest.mark.slow
@pytest.mark.parametrize("call", FORBIDDEN_CALLS)
def test_no_spelling_of_a_control_or_runtime_call_passes_the_gateway(fed: Federation, call: str) -> None:
    body = _register_request() if call == "control/register-node" else b""
    got = {}
    for trick in PATH_TRICKS:
        target = trick.format(call=call)
        got[target] = status_of(exchange(fed.gateway_port, _ca(fed), request_bytes("POST", target, body)))
    assert {t: s for t, s in got.items() if s not in (400, 404)} == {}


@pytest.mark.slow
def test_an_outsider_registers_no_node_and_sees_no_run(fed: Federation) -> None:
    """Registration attempts through the gateway (Control and Fleet, every trick) leave the node list as it was."""
    before = fed.node_ids()
    for target in [t.format(call="control/register-node") for t in PATH_TRICKS] + ["/v1/fleet/register-node"]:
        status = status_of(exchange(fed.gateway_port, _ca(fed), request_bytes("POST", target, _register_request())))
        assert status in (400, 404), (target, status)
    assert fed.node_ids() == before
    log = (fed.coord / "state" / "gateway" / "access.log").read_text().splitlines()
    forwarded = [line for line in log if "upstream=-" not in line]
    assert forwarded == [], f"requests the gateway forwarded: {forwarded[:5]}"


@pytest.mark.slow
def test_the_flwr_cli_pointed_at_the_gateway_is_refused(fed: Federation) -> None:
    """`flwr list` and `flwr supernode list` through the gateway fail; through loopback they work."""
    conf = fed.root / "coordinator-home" / ".flwr" / "config.toml"
    text = conf.read_text()
    if "[superlink.via-gateway]" not in text:
        conf.write_text(
            text + f'\n[superlink.via-gateway]\naddress = "127.0.0.1:{fed.gateway_port}"\n'
            f'root-certificates = "{_ca(fed)}"\n'
        )
    for args in ("supernode list via-gateway", "list via-gateway"):
        result = fed.sh("via-gateway", f"flwr {args}", fed.coord_env(), cwd=fed.coord)
        assert result.returncode != 0, result.stdout
        assert "404" in result.stdout + result.stderr
    runs = fed.flwr_json("list-direct", "list medalloc")
    assert json.dumps(runs)  # the loopback connection answers
