"""Slow uploads from many addresses cannot lock registered hospitals out of the gateway (issue 22).

The attack of issue 22: 16 uploads from each of 8 addresses, each sending a byte now and then
so ``client_body_timeout`` never fires, filled the gateway's 128 places and every hospital's
heartbeat got 429. Now each address holds at most ``conn_per_ip`` places and heartbeats have
places of their own. Real nginx (`medalloc gateway start`), real TLS, source addresses
127.0.0.2..127.0.0.9 on loopback; the SuperLink is the recording upstream of tests/test_gateway.py
(tests/e2e has the real one).
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from medalloc.server.certs import write_certificates
from medalloc.server.gateway import GatewayLimits, render_config
from tests.gateway_raw import client_context, read_response, request_bytes, status_of
from tests.test_gateway import Gateway, RecordingUpstream, _available, _nginx_or_skip, start_gateway, stop_process

LIMITS = GatewayLimits()
ATTACKERS = [f"127.0.0.{i}" for i in range(2, 10)]  # 8 addresses
PER_ATTACKER = 16
HEARTBEAT = "/v1/fleet/send-node-heartbeat"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    _nginx_or_skip()
    tmp = tmp_path_factory.mktemp("slow")
    certs = write_certificates(tmp / "certs", hosts=["superlink.example.org", "127.0.0.1"])
    upstream = RecordingUpstream(certs.server_cert, certs.server_key)
    upstream.start()
    proc, port, directory = start_gateway(tmp, certs, upstream.port)
    try:
        yield Gateway(port, certs.ca_cert, directory, upstream, proc)
    finally:
        stop_process(proc)
        upstream.close()


def _connect(gw: Gateway, source: str) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", gw.port), timeout=10, source_address=(source, 0))
    return client_context(gw.cafile).wrap_socket(raw, server_hostname="127.0.0.1")


def _call(gw: Gateway, source: str, target: str, body: bytes) -> int:
    with _connect(gw, source) as sock:
        sock.sendall(request_bytes("POST", target, body))
        return status_of(read_response(sock, timeout=20))


def test_the_config_gives_heartbeats_their_own_places(tmp_path: Path) -> None:
    """8 addresses at their cap leave half the upload places free; heartbeats count against their own total."""
    from medalloc.server.gateway import GatewayConfig

    assert LIMITS.conn_per_ip * len(ATTACKERS) <= LIMITS.conn_total // 2
    certs = write_certificates(tmp_path / "certs", hosts=["127.0.0.1"])
    config = GatewayConfig("127.0.0.1", 9443, "127.0.0.1", 9092, certs.server_cert, certs.server_key, certs.ca_cert,
                           tmp_path / "gw")  # fmt: skip
    text = render_config(config)
    block = text.split(f"location = {HEARTBEAT}", 1)[1].split("}", 1)[0]
    assert "limit_conn fleet_heartbeat_total" in block and "limit_conn fleet_total" not in block


def test_eight_addresses_of_slow_uploads_do_not_lock_out_a_hospital(gateway: Gateway) -> None:
    gw = gateway
    gw.upstream.taken()
    head = request_bytes("POST", "/v1/fleet/push-object", b"").replace(b"Content-Length: 0", b"Content-Length: 5000000")
    slow: dict[str, list[ssl.SSLSocket]] = {a: [] for a in ATTACKERS}
    try:
        for address in ATTACKERS:
            for _ in range(PER_ATTACKER):
                sock = _connect(gw, address)
                sock.sendall(head + b"x")  # then nothing: a slow upload holding its place
                slow[address].append(sock)
        time.sleep(2)
        refused = {a: sum(status_of(_available(s)) == 429 for s in socks) for a, socks in slow.items()}
        for socks in slow.values():  # trickle one more byte: the uploads stay alive
            for sock in socks:
                try:
                    sock.setblocking(True)
                    sock.sendall(b"y")
                except OSError:
                    pass
        # The hospitals, from their own addresses, while the attack holds every place it can:
        heartbeats = [_call(gw, "127.0.0.1", HEARTBEAT, b"hb") for _ in range(20)]
        other = [_call(gw, "127.0.0.10", HEARTBEAT, b"hb") for _ in range(5)]
        round_trip = [
            _call(gw, "127.0.0.1", "/v1/fleet/pull-messages", b"pull"),
            _call(gw, "127.0.0.1", "/v1/fleet/push-object", b"x" * 200_000),
            _call(gw, "127.0.0.10", "/v1/fleet/push-messages", b"push"),
        ]
    finally:
        for socks in slow.values():
            for sock in socks:
                sock.close()
    assert heartbeats == [200] * 20 and other == [200] * 5, (heartbeats, other)
    assert round_trip == [200, 200, 200], round_trip
    # each attacking address kept at most conn_per_ip places; the rest were refused at once
    assert all(n == PER_ATTACKER - LIMITS.conn_per_ip for n in refused.values()), refused


def test_a_heartbeat_body_over_its_cap_is_refused(gateway: Gateway) -> None:
    status = _call(gateway, "127.0.0.1", HEARTBEAT, b"h" * (LIMITS.heartbeat_max_body_kib * 1024 + 1))
    assert status == 413


def test_idle_connections_beyond_the_gateways_connections_do_not_lock_out_a_hospital(gateway: Gateway) -> None:
    """Connections per address: nginx 1.22 counts requests, not connections, so 8 addresses open 160 idle TCP
    connections each (1,280, over ``worker_connections``); nginx closes idle ones to accept new ones (they are
    "reusable" until a request arrives), so hospitals' heartbeats and a pull still get 200."""
    gw = gateway
    per_address = (LIMITS.worker_connections + 256) // len(ATTACKERS)
    idle: list[socket.socket] = []
    try:
        for address in ATTACKERS:
            for _ in range(per_address):
                idle.append(socket.create_connection(("127.0.0.1", gw.port), timeout=10, source_address=(address, 0)))
        assert len(idle) > LIMITS.worker_connections
        heartbeats = [_call(gw, "127.0.0.1", HEARTBEAT, b"hb") for _ in range(5)]
        pull = _call(gw, "127.0.0.10", "/v1/fleet/pull-messages", b"pull")
    finally:
        for sock in idle:
            sock.close()
    assert heartbeats == [200] * 5 and pull == 200, (heartbeats, pull)
