"""Slow uploads from many addresses cannot lock registered hospitals out of the gateway (issue 22).

The attack of issue 22: 16 uploads from each of 8 addresses, each sending a byte now and then
so ``client_body_timeout`` never fires, filled the gateway's 128 places and every hospital's
heartbeat got 429. Now the gateway's TCP front (nginx ``stream`` + njs, server/gateway_stream.py)
enforces a minimum upload rate per request and caps TCP connections per address; each address
holds at most ``conn_per_ip`` requests in progress of ``conn_total``, and heartbeats have places
of their own. Real nginx (`medalloc gateway start`), real TLS, source addresses 127.0.0.x on
loopback; the SuperLink is the recording upstream of tests/test_gateway.py (tests/e2e has the
real one).
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

from medalloc.server.certs import write_certificates
from medalloc.server.gateway import GatewayLimits, render_config
from tests.gateway_raw import client_context, closed_by_peer, read_response, request_bytes, status_of
from tests.test_gateway import Gateway, RecordingUpstream, _available, _nginx_or_skip, start_gateway, stop_process

LIMITS = GatewayLimits(min_upload_kib_s=8)  # the gateway below runs with --min-upload-rate 8
ATTACKERS = [f"127.0.0.{i}" for i in range(2, 66)]  # 64 addresses
PER_ATTACKER = 16
HEARTBEAT = "/v1/fleet/send-node-heartbeat"
MIN_RATE = LIMITS.min_upload_kib_s * 1024  # bytes/s
BELOW_THE_RATE = "js: gateway: upload below"  # the front's line in error.log


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    _nginx_or_skip()
    tmp = tmp_path_factory.mktemp("slow")
    certs = write_certificates(tmp / "certs", hosts=["superlink.example.org", "127.0.0.1"])
    upstream = RecordingUpstream(certs.server_cert, certs.server_key)
    upstream.start()
    proc, port, directory = start_gateway(tmp, certs, upstream.port, extra=("--min-upload-rate", "8"))
    try:
        yield Gateway(port, certs.ca_cert, directory, upstream, proc)
    finally:
        stop_process(proc)
        upstream.close()


def _connect(gw: Gateway, source: str) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", gw.port), timeout=20, source_address=(source, 0))
    return client_context(gw.cafile).wrap_socket(raw, server_hostname="127.0.0.1")


def _call(gw: Gateway, source: str, target: str, body: bytes) -> int:
    with _connect(gw, source) as sock:
        sock.sendall(request_bytes("POST", target, body))
        return status_of(read_response(sock, timeout=20))


def _below_the_rate(gw: Gateway) -> int:
    return (gw.directory / "error.log").read_text().count(BELOW_THE_RATE)


def test_the_config_sizes_the_places_for_far_more_than_a_handful_of_addresses(tmp_path: Path) -> None:
    """128 addresses to fill the uploads' places, each paying the minimum rate; heartbeats count apart."""
    from medalloc.server.gateway import GatewayConfig

    assert LIMITS.conn_total // LIMITS.conn_per_ip >= 128
    assert LIMITS.conn_per_ip * len(ATTACKERS) <= LIMITS.conn_total // 2
    certs = write_certificates(tmp_path / "certs", hosts=["127.0.0.1"])
    config = GatewayConfig("127.0.0.1", 9443, "127.0.0.1", 9092, certs.server_cert, certs.server_key, certs.ca_cert,
                           tmp_path / "gw", inner_port=9444)  # fmt: skip
    assert "js_filter" not in render_config(config) and "load_module" in render_config(config)  # off by default
    config = replace(config, limits=LIMITS)
    text = render_config(config)
    block = text.split(f"location = {HEARTBEAT}", 1)[1].split("}", 1)[0]
    assert "limit_conn fleet_heartbeat_total" in block and "limit_conn fleet_total" not in block
    front = text.split("stream {", 1)[1].split("\nhttp {", 1)[0]
    assert "listen 127.0.0.1:9443 ssl;" in front and "js_filter minrate.filter;" in front
    assert f"limit_conn tcp_per_ip {LIMITS.tcp_conn_per_ip};" in front and "proxy_pass 127.0.0.1:9444;" in front
    # the HTTP server is reachable only through the front, and reads the client's address from it
    http = text.split("\nhttp {", 1)[1]
    assert "listen 127.0.0.1:9444 proxy_protocol default_server;" in http and "real_ip_header proxy_protocol;" in http
    assert " ssl" not in http.split("listen ", 1)[1].split(";", 1)[0]


def test_slow_uploads_from_64_addresses_leave_hospitals_alone_and_are_closed_below_the_minimum_rate(
    gateway: Gateway,
) -> None:
    gw = gateway
    gw.upstream.taken()
    before = _below_the_rate(gw)
    head = request_bytes("POST", "/v1/fleet/push-object", b"", close=False)
    head = head.replace(b"Content-Length: 0", b"Content-Length: 5000000")

    def open_slow(address: str) -> list[ssl.SSLSocket]:
        socks = []
        for _ in range(PER_ATTACKER):
            sock = _connect(gw, address)
            sock.sendall(head + b"x")  # then nothing: a slow upload holding its place
            socks.append(sock)
        return socks

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        slow = dict(zip(ATTACKERS, pool.map(open_slow, ATTACKERS), strict=True))
    opened_in = time.monotonic() - started
    try:
        time.sleep(1)
        answers = {a: [_available(s) for s in socks] for a, socks in slow.items()}
        refused = {a: sum(status_of(got) == 429 for got in answered) for a, answered in answers.items()}
        held = [s for a, socks in slow.items() for s, got in zip(socks, answers[a], strict=True) if not got]
        # The hospitals, from their own addresses, while the attack holds every place it can:
        heartbeats = [_call(gw, "127.0.0.1", HEARTBEAT, b"hb") for _ in range(10)]
        other = [_call(gw, "127.0.0.70", HEARTBEAT, b"hb") for _ in range(5)]
        round_trip = [
            _call(gw, "127.0.0.1", "/v1/fleet/pull-messages", b"pull"),
            _call(gw, "127.0.0.1", "/v1/fleet/push-object", b"x" * 200_000),
            _call(gw, "127.0.0.70", "/v1/fleet/push-messages", b"push"),
        ]
        # A byte from each now (under the body timeout), and one more once the last opened is past the
        # grace: that one is late for every held upload, and the front closes it.
        for _ in range(2):
            for sock in held:
                try:
                    sock.setblocking(True)
                    sock.sendall(b"y")
                except OSError:
                    pass
            time.sleep(max(0.0, LIMITS.min_rate_grace_s + 2 - (time.monotonic() - started - opened_in)))
        with ThreadPoolExecutor(16) as pool:
            closed = list(pool.map(lambda s: closed_by_peer(s, timeout=10), held))
    finally:
        for socks in slow.values():
            for sock in socks:
                sock.close()
    assert heartbeats == [200] * 10 and other == [200] * 5, (heartbeats, other)
    assert round_trip == [200, 200, 200], round_trip
    # each attacking address kept at most conn_per_ip places; the rest were refused at once
    assert all(n == PER_ATTACKER - LIMITS.conn_per_ip for n in refused.values()), refused
    assert len(held) == len(ATTACKERS) * LIMITS.conn_per_ip, (len(held), opened_in)
    assert all(t is not None for t in closed), sum(t is None for t in closed)
    assert _below_the_rate(gw) - before == len(held), "closed by something other than the minimum rate"
    # none of them reached the SuperLink; the hospitals' three calls did
    forwarded = [r for r in gw.upstream.taken() if b"push-object" in r.split(b"\r\n", 1)[0]]
    assert len(forwarded) == 1 and forwarded[0].endswith(b"x" * 200_000)


def _paced_upload(gw: Gateway, source: str, size: int, rate: float) -> tuple[int, float, int]:
    """A push-object of ``size`` bytes sent at ``rate`` bytes/s in 1 KiB pieces: (status, seconds, bytes sent)."""
    body = b"p" * size
    data = request_bytes("POST", "/v1/fleet/push-object", body)
    head, piece = len(data) - size, 1024
    sock = _connect(gw, source)
    start = time.monotonic()
    sent = 0
    try:
        sock.sendall(data[:head])
        sent = head
        while sent < len(data):
            sock.sendall(data[sent : sent + piece])
            sent += piece
            time.sleep(max(0.0, start + (sent - head) / rate - time.monotonic()))
        return status_of(read_response(sock, timeout=20)), time.monotonic() - start, sent
    except OSError:
        return 0, time.monotonic() - start, sent
    finally:
        sock.close()


def test_an_upload_above_the_minimum_rate_is_forwarded_and_one_below_it_is_closed(gateway: Gateway) -> None:
    """Both outlast the grace: at 1.5x the rate the body arrives whole; at half the rate it is cut off
    when its average falls below the rate (about 2 x grace), long before the body timeout could act."""
    gw = gateway
    gw.upstream.taken()
    before = _below_the_rate(gw)
    size = 200 * 1024
    results: dict[str, tuple[int, float, int]] = {}

    def upload(name: str, source: str, rate: float) -> None:
        results[name] = _paced_upload(gw, source, size, rate)

    threads = [
        threading.Thread(target=upload, args=("fast", "127.0.0.80", MIN_RATE * 1.5)),
        threading.Thread(target=upload, args=("slow", "127.0.0.81", MIN_RATE * 0.5)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    fast, slow = results["fast"], results["slow"]
    assert fast[0] == 200 and fast[1] > LIMITS.min_rate_grace_s, fast
    assert slow[0] == 0 and slow[2] < size, slow
    assert 2 * LIMITS.min_rate_grace_s - 3 < slow[1] < 2 * LIMITS.min_rate_grace_s + 5, slow
    assert _below_the_rate(gw) - before == 1
    forwarded = [r for r in gw.upstream.taken() if b"push-object" in r.split(b"\r\n", 1)[0]]
    assert len(forwarded) == 1 and forwarded[0].endswith(b"p" * size)


def test_a_heartbeat_body_over_its_cap_is_refused(gateway: Gateway) -> None:
    status = _call(gateway, "127.0.0.1", HEARTBEAT, b"h" * (LIMITS.heartbeat_max_body_kib * 1024 + 1))
    assert status == 413


def test_tcp_connections_per_address_are_capped_and_idle_ones_do_not_lock_out_a_hospital(gateway: Gateway) -> None:
    """8 addresses open 160 idle TCP connections each (1,280): the front keeps ``tcp_conn_per_ip`` per
    address and closes the rest at once; the hospitals' heartbeats and a pull still get 200."""
    gw = gateway
    per_address = 160
    idle: dict[str, list[socket.socket]] = {a: [] for a in ATTACKERS[:8]}
    try:
        for address, socks in idle.items():
            for _ in range(per_address):
                socks.append(socket.create_connection(("127.0.0.1", gw.port), timeout=10, source_address=(address, 0)))
        time.sleep(1)
        still_open = {}
        for address, socks in idle.items():
            alive = 0
            for sock in socks:
                sock.setblocking(False)
                try:
                    alive += sock.recv(1) != b""
                except BlockingIOError:
                    alive += 1
                except OSError:
                    pass
            still_open[address] = alive
        heartbeats = [_call(gw, "127.0.0.1", HEARTBEAT, b"hb") for _ in range(5)]
        pull = _call(gw, "127.0.0.10", "/v1/fleet/pull-messages", b"pull")
    finally:
        for socks in idle.values():
            for sock in socks:
                sock.close()
    assert heartbeats == [200] * 5 and pull == 200, (heartbeats, pull)
    assert set(still_open.values()) == {LIMITS.tcp_conn_per_ip}, still_open


def test_requests_split_into_small_writes_and_pipelined_pass_the_filter(gateway: Gateway) -> None:
    """The filter follows request boundaries across writes: a header cut into 7-byte writes, then two
    requests pipelined in one write, all within the rate, reach the SuperLink whole."""
    gw = gateway
    gw.upstream.taken()
    first = request_bytes("POST", "/v1/fleet/pull-messages", b"a" * 3000, close=False)
    second = request_bytes("POST", "/v1/fleet/push-messages", b"b" * 5000, close=False)
    third = request_bytes("POST", "/v1/fleet/pull-object", b"c" * 10, close=True)
    with _connect(gw, "127.0.0.90") as sock:
        for at in range(0, len(first), 7):
            sock.sendall(first[at : at + 7])
            time.sleep(0.002)
        sock.sendall(second + third)
        answer = read_response(sock, timeout=20)
    assert answer.count(b"HTTP/1.1 200 ") == 3, answer[:300]
    bodies = [r.split(b"\r\n\r\n", 1)[1] for r in gw.upstream.taken()]
    assert bodies == [b"a" * 3000, b"b" * 5000, b"c" * 10]
