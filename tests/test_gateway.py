"""The nginx Fleet gateway as `medalloc gateway start` runs it, probed with raw bytes.

The SuperLink behind it is replaced here by a recording HTTPS server (the real SuperLink
is behind the same gateway in tests/e2e/test_gateway_e2e.py and test_deployment.py), so each
test can assert not only what the client got back but exactly which bytes reached the
upstream: a refused request must never be forwarded, an allowed one must arrive unchanged.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from medalloc.server.certs import write_certificates
from medalloc.server.gateway import FLEET_ROUTES, GatewayConfig, GatewayError, GatewayLimits, find_nginx, render_config
from tests.gateway_raw import (
    FORBIDDEN_CALLS,
    PATH_TRICKS,
    ROUTE_VARIANTS,
    body_of,
    closed_by_peer,
    exchange,
    read_response,
    request_bytes,
    status_of,
    tls_connect,
)

REPO = Path(__file__).resolve().parents[1]
LIMITS = GatewayLimits()


def _nginx_or_skip() -> Path:
    from medalloc.server.gateway import nginx_modules

    try:
        nginx = find_nginx()
        nginx_modules(nginx, GatewayLimits(min_upload_kib_s=8))  # the TCP front's stream and njs modules
        return nginx
    except GatewayError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must have nginx (the Makefile's test set-up installs it): {exc}")
        pytest.skip(f"nginx is not installed ({exc}); `make install-dev` installs it")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RecordingUpstream:
    """An HTTPS server standing in for the SuperLink: records every request it receives, answers 200."""

    certfile: Path
    keyfile: Path
    port: int = 0
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.certfile, self.keyfile)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._ctx = ctx
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with self._ctx.wrap_socket(conn, server_side=True) as tls:
                buffer = b""
                while True:
                    while b"\r\n\r\n" not in buffer:
                        chunk = tls.recv(65536)
                        if not chunk:
                            return
                        buffer += chunk
                    head, buffer = buffer.split(b"\r\n\r\n", 1)
                    length = next(
                        (
                            int(line.split(b":", 1)[1])
                            for line in head.split(b"\r\n")
                            if line.lower().startswith(b"content-length:")
                        ),
                        0,
                    )
                    while len(buffer) < length:
                        chunk = tls.recv(65536)
                        if not chunk:
                            return
                        buffer += chunk
                    body, buffer = buffer[:length], buffer[length:]
                    with self._lock:
                        self.requests.append(head + b"\r\n\r\n" + body)
                    tls.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/protobuf\r\nContent-Length: 8\r\n\r\nupstream"
                    )
        except (OSError, ssl.SSLError, ValueError):
            return

    def taken(self) -> list[bytes]:
        """The requests received so far, and forget them."""
        with self._lock:
            out, self.requests = self.requests, []
        return out

    def close(self) -> None:
        self._listener.close()


@dataclass
class Gateway:
    port: int
    cafile: Path
    directory: Path
    upstream: RecordingUpstream
    proc: subprocess.Popen[bytes]

    def send(self, data: bytes, timeout: float = 10.0) -> bytes:
        return exchange(self.port, self.cafile, data, timeout=timeout)

    def access_log(self) -> list[str]:
        return (self.directory / "access.log").read_text().splitlines()


class PortTaken(Exception):
    """The free port was taken by another process before nginx bound it."""


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path, directory: Path, timeout: float = 60) -> None:
    """Until nginx has bound ``port`` (its PID file exists: written after the listening sockets) and accepts."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = log.read_text()
            if "Address already in use" in text:
                raise PortTaken(text)
            raise AssertionError(f"gateway exited {proc.returncode}:\n{text}")
        if (directory / "nginx.pid").exists():
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return
        time.sleep(0.1)
    raise AssertionError(f"gateway never listened on {port}:\n{log.read_text()}")


def start_gateway(
    tmp: Path, certs, upstream_port: int, *, ca: Path | None = None, extra: tuple[str, ...] = ()
) -> tuple[subprocess.Popen[bytes], int, Path]:
    """`medalloc gateway start` as docs/deploy.md runs it, in a real process; returns (process, port, folder).

    A port found free can be taken by a parallel test before nginx binds it: then it is tried
    again on another port (three times at most).
    """
    for attempt in range(3):
        try:
            return _start_gateway(
                tmp, certs, upstream_port, ca=ca if attempt == 0 else None, reuse=attempt > 0, extra=extra
            )
        except PortTaken:
            continue
    raise AssertionError("no free port for the gateway after three tries")


def _start_gateway(
    tmp: Path, certs, upstream_port: int, *, ca: Path | None, reuse: bool, extra: tuple[str, ...] = ()
) -> tuple[subprocess.Popen[bytes], int, Path]:
    port = _free_port()
    directory = tmp / "gateway"
    log = tmp / "gateway.log"
    cert_dir = certs.server_cert.parent
    if reuse and (tmp / "certs-other-ca").is_dir():
        cert_dir = tmp / "certs-other-ca"
    if ca is not None:  # a folder whose ca.crt is another CA: the upstream check must fail
        cert_dir = tmp / "certs-other-ca"
        cert_dir.mkdir()
        for name in ("server.pem", "server.key"):
            (cert_dir / name).write_bytes((certs.server_cert.parent / name).read_bytes())
        (cert_dir / "ca.crt").write_bytes(ca.read_bytes())
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "medalloc.cli",
                "gateway",
                "start",
                "--listen",
                f"127.0.0.1:{port}",
                "--superlink",
                f"127.0.0.1:{upstream_port}",
                "--certs",
                str(cert_dir),
                "--dir",
                str(directory),
                *extra,
            ],
            cwd=REPO,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _wait_listening(port, proc, log, directory)
    return proc, port, directory


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    _nginx_or_skip()
    tmp = tmp_path_factory.mktemp("gateway")
    certs = write_certificates(tmp / "certs", hosts=["superlink.example.org", "127.0.0.1"])
    upstream = RecordingUpstream(certs.server_cert, certs.server_key)
    upstream.start()
    proc, port, directory = start_gateway(tmp, certs, upstream.port)
    try:
        yield Gateway(port, certs.ca_cert, directory, upstream, proc)
    finally:
        stop_process(proc)
        upstream.close()


@pytest.fixture
def gw(gateway: Gateway) -> Gateway:
    gateway.upstream.taken()
    return gateway


# ------------------------------------------------------------------ what passes, unchanged


def test_every_fleet_route_reaches_the_superlink_byte_for_byte(gw: Gateway) -> None:
    """The routes a SuperNode calls are forwarded with the path, body and node-signature headers untouched."""
    signed = {"flwr-public-key": "cHVibGlj", "flwr-signature": "c2ln", "flwr-timestamp": "2026-01-01T00:00:00+00:00"}
    for route in FLEET_ROUTES:
        body = b"\x0a\x03abc" + route.encode()
        response = gw.send(request_bytes("POST", route, body, headers={**signed, "X-Forwarded-For": "10.9.9.9"}))
        assert status_of(response) == 200 and body_of(response) == b"upstream", (route, response[:200])
        [seen] = gw.upstream.taken()
        head, received = seen.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0] == f"POST {route} HTTP/1.1"
        assert received == body
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        for name, value in signed.items():
            assert headers[name] == value
        # The client's claim is replaced by its real address; no client can pose as another.
        assert headers["x-forwarded-for"] == "127.0.0.1"


# ------------------------------------------------------------------ what never passes


@pytest.mark.parametrize("call", FORBIDDEN_CALLS)
def test_path_tricks_into_control_and_runtime_are_refused_and_never_forwarded(gw: Gateway, call: str) -> None:
    """Dot-segments (plain, percent- and double-encoded), encoded and doubled slashes, absolute forms.

    Each gets 404 or 400, and the upstream sees nothing.
    """
    got = {}
    for trick in PATH_TRICKS:
        target = trick.format(call=call)
        got[target] = status_of(gw.send(request_bytes("POST", target)))
    assert gw.upstream.taken() == []
    assert {t: s for t, s in got.items() if s not in (400, 404)} == {}


def test_other_spellings_of_a_fleet_route_and_other_paths_are_refused(gw: Gateway) -> None:
    got = {target: status_of(gw.send(request_bytes("POST", target))) for target in ROUTE_VARIANTS}
    assert gw.upstream.taken() == []
    assert {t: s for t, s in got.items() if s not in (400, 404)} == {}


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND", "post"])
def test_only_post_is_forwarded(gw: Gateway, method: str) -> None:
    status = status_of(gw.send(request_bytes(method, "/v1/fleet/pull-messages", b"x")))
    assert status in (400, 405), status
    assert gw.upstream.taken() == []


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "text/plain", "application/protobuf; charset=utf-8", "application/x-www-form-urlencoded", ""],
)
def test_only_protobuf_bodies_are_forwarded(gw: Gateway, content_type: str) -> None:
    status = status_of(gw.send(request_bytes("POST", "/v1/fleet/pull-messages", b"{}", content_type=content_type)))
    assert status == 415
    assert gw.upstream.taken() == []


def test_a_body_over_the_cap_is_refused_before_it_is_read(gw: Gateway) -> None:
    """A declared 300 MiB body gets 413 at once: the gateway does not wait for it, the SuperLink never sees it."""
    head = request_bytes("POST", "/v1/fleet/push-object")
    head = head.replace(b"Content-Length: 0", f"Content-Length: {300 * 2**20}".encode())
    assert status_of(gw.send(head)) == 413
    assert gw.upstream.taken() == []


def test_a_chunked_body_over_the_cap_is_cut_off(gw: Gateway) -> None:
    """Without a Content-Length the cap holds too: nginx counts the chunks and stops at the limit."""
    head = (
        b"POST /v1/fleet/push-object HTTP/1.1\r\nHost: x\r\nContent-Type: application/protobuf\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    chunk = b"%x\r\n" % 2**20 + b"\0" * 2**20 + b"\r\n"
    with tls_connect(gw.port, gw.cafile) as sock:
        sock.sendall(head)
        try:
            for _ in range(LIMITS.max_body_mib + 4):
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass  # the gateway may close as soon as it has answered
        response = read_response(sock)
    assert status_of(response) == 413
    assert gw.upstream.taken() == []


def test_a_body_at_the_cap_is_forwarded_whole(gw: Gateway) -> None:
    """The cap is above Flower's 5 MiB array chunks: a body of exactly the cap reaches the SuperLink intact."""
    body = os.urandom(LIMITS.max_body_mib * 2**20)
    response = gw.send(request_bytes("POST", "/v1/fleet/push-object", body), timeout=30)
    assert status_of(response) == 200
    [seen] = gw.upstream.taken()
    assert seen.split(b"\r\n\r\n", 1)[1] == body


def test_conflicting_length_headers_are_refused(gw: Gateway) -> None:
    """Content-Length with Transfer-Encoding (request smuggling) is a 400, never forwarded."""
    data = (
        b"POST /v1/fleet/pull-messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/protobuf\r\n"
        b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n"
    )
    assert status_of(gw.send(data)) == 400
    assert gw.upstream.taken() == []


# ------------------------------------------------------------------ connection bounds


@pytest.mark.slow
def test_a_slow_header_is_cut_off_at_the_header_timeout(gw: Gateway) -> None:
    """One header byte a second (slowloris): the gateway closes the connection at client_header_timeout."""
    with tls_connect(gw.port, gw.cafile) as sock:
        sock.sendall(b"POST /v1/fleet/pull-messages HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        start = time.monotonic()
        closed_after = None
        while time.monotonic() - start < LIMITS.header_timeout_s + 10:
            try:
                sock.sendall(b"a")
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
                closed_after = time.monotonic() - start
                break
            if (left := closed_by_peer(sock, timeout=1.0)) is not None:
                closed_after = time.monotonic() - start
                break
            del left
    assert closed_after is not None, "the slow header was still being read after the header timeout"
    assert closed_after < LIMITS.header_timeout_s + 10
    assert gw.upstream.taken() == []


@pytest.mark.slow
def test_many_idle_connections_are_closed_and_do_not_block_a_hospital(gw: Gateway) -> None:
    """200 connections that never send a byte: a real request still passes; all 200 close at the header timeout.

    From 8 other addresses, 25 each: one address may hold ``tcp_conn_per_ip`` (32) connections at once
    (tests/test_gateway_slow_clients.py tries more)."""
    idle = [
        socket.create_connection(("127.0.0.1", gw.port), timeout=5, source_address=(f"127.0.0.{2 + i % 8}", 0))
        for i in range(200)
    ]
    try:
        response = gw.send(request_bytes("POST", "/v1/fleet/send-node-heartbeat", b"hb"))
        assert status_of(response) == 200
        deadline = time.monotonic() + LIMITS.header_timeout_s + 15
        still_open = list(idle)
        while still_open and time.monotonic() < deadline:
            still_open = [s for s in still_open if closed_by_peer(s, timeout=0.01) is None]
            time.sleep(0.5)
        assert still_open == [], f"{len(still_open)} idle connections still open after the header timeout"
    finally:
        for sock in idle:
            sock.close()
    assert len(gw.upstream.taken()) == 1


def test_requests_in_progress_per_address_are_capped(gw: Gateway) -> None:
    """24 uploads stalled mid-body from one address: the first conn_per_ip proceed, the rest get 429 at once."""
    n = LIMITS.conn_per_ip + 8
    head = request_bytes("POST", "/v1/fleet/push-object", b"").replace(b"Content-Length: 0", b"Content-Length: 1000")
    socks = []
    try:
        for _ in range(n):
            sock = tls_connect(gw.port, gw.cafile)
            sock.sendall(head + b"partial")
            socks.append(sock)
        time.sleep(2)  # every answer the gateway gives at once has arrived by now
        statuses = [status_of(_available(s)) for s in socks]
    finally:
        for sock in socks:
            sock.close()
    assert statuses.count(429) == n - LIMITS.conn_per_ip, statuses
    assert gw.upstream.taken() == []


def _available(sock: ssl.SSLSocket) -> bytes:
    """What the server has sent so far, without waiting for more."""
    sock.setblocking(False)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ssl.SSLWantReadError, BlockingIOError, ConnectionResetError, ssl.SSLError):
        pass
    return data


# ------------------------------------------------------------------ logging and the upstream check


def test_every_refusal_is_in_the_access_log(gw: Gateway) -> None:
    target = "/v1/fleet/%2e%2e/control/register-node"
    assert status_of(gw.send(request_bytes("POST", target))) == 404
    time.sleep(0.2)
    line = next(line for line in reversed(gw.access_log()) if target in line)
    assert '" 404 ' in line and "upstream=-" in line and line.startswith("127.0.0.1 ")


def test_an_upstream_with_a_certificate_from_another_ca_gets_nothing(tmp_path: Path) -> None:
    """The gateway verifies the SuperLink: a listener with a certificate from another CA gets nothing."""
    _nginx_or_skip()
    certs = write_certificates(tmp_path / "certs", hosts=["127.0.0.1"])
    impostor_certs = write_certificates(tmp_path / "impostor", hosts=["127.0.0.1"])
    impostor = RecordingUpstream(impostor_certs.server_cert, impostor_certs.server_key)
    impostor.start()
    proc, port, _ = start_gateway(tmp_path, certs, impostor.port, ca=certs.ca_cert)
    try:
        response = exchange(port, certs.ca_cert, request_bytes("POST", "/v1/fleet/pull-messages", b"secret"))
        assert status_of(response) == 502
        assert impostor.taken() == []
    finally:
        stop_process(proc)
        impostor.close()


# ------------------------------------------------------------------ the tool itself


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "medalloc.cli", "gateway", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--superlink", "10.0.0.5:9091"], "must listen on a loopback address"),
        (["--superlink", "0.0.0.0:9091"], "must listen on a loopback address"),
        (["--listen", "9092"], "--listen '9092': expected HOST:PORT"),
        (["--listen", "0.0.0.0:70000"], "port from 1 to 65535"),
        (["--listen", "a;b:9092"], "character nginx would read as syntax"),
        (["--certs", "/nonexistent"], "/nonexistent/server.pem: no such file (the SuperLink's certificate"),
        (["--nginx", "/nonexistent/nginx"], "nginx not found (/nonexistent/nginx)"),
    ],
)
def test_gateway_start_refuses_bad_arguments_with_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    certs = write_certificates(tmp_path / "certs", hosts=["127.0.0.1"])
    base = {
        "--listen": "127.0.0.1:19092",
        "--superlink": "127.0.0.1:19091",
        "--certs": str(certs.server_cert.parent),
        "--dir": str(tmp_path / "gw"),
    }
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    result = _cli("start", *[x for kv in base.items() for x in kv])
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in " ".join((result.stdout + result.stderr).split())
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "gw" / "nginx.pid").exists()


def test_the_allow_list_is_what_flowers_supernode_calls_minus_self_registration() -> None:
    """Read from the installed flwr: an upgrade that adds or renames a Fleet call fails here, not in a hospital."""
    import flwr.supernode.fleet_http_client as fleet_client

    called = set(re.findall(r'path="(/v1/fleet/[a-z-]+)"', Path(fleet_client.__file__).read_text()))
    assert set(FLEET_ROUTES) <= called
    assert called - set(FLEET_ROUTES) == {"/v1/fleet/register-node", "/v1/fleet/unregister-node"}


def test_render_config_allows_exactly_the_fleet_routes(tmp_path: Path) -> None:
    """The allow-list in the file is FLEET_ROUTES and nothing else (no prefix, no regex location)."""
    certs = write_certificates(tmp_path / "certs", hosts=["superlink.example.org", "127.0.0.1"])
    config = GatewayConfig(
        "0.0.0.0", 9092, "127.0.0.1", 9091, certs.server_cert, certs.server_key, certs.ca_cert, tmp_path / "gateway"
    )
    text = render_config(config)

    exact = re.findall(r"location = (\S+) \{", text)
    assert sorted(exact) == sorted(FLEET_ROUTES) and len(exact) == len(set(exact))
    assert text.count("proxy_pass https://superlink;") == len(FLEET_ROUTES)  # each route's block, nothing else
    assert re.findall(r"location (?!= )(\S+)", text) == ["/"]
    assert "location ~" not in text and "proxy_pass https://superlink;" in text
    assert "merge_slashes off;" in text and "proxy_ssl_verify on;" in text
    # nginx never matches an IP entry of a certificate: it checks the SuperLink by its DNS name.
    assert "proxy_ssl_name superlink.example.org;" in text


def test_gateway_stop_stops_the_one_it_started(tmp_path: Path) -> None:
    _nginx_or_skip()
    certs = write_certificates(tmp_path / "certs", hosts=["127.0.0.1"])
    upstream = RecordingUpstream(certs.server_cert, certs.server_key)
    upstream.start()
    proc, port, directory = start_gateway(tmp_path, certs, upstream.port)
    try:
        again = _cli(
            "start",
            "--listen",
            f"127.0.0.1:{_free_port()}",
            "--superlink",
            f"127.0.0.1:{upstream.port}",
            "--certs",
            str(certs.server_cert.parent),
            "--dir",
            str(directory),
        )
        assert again.returncode == 2 and "already runs" in again.stderr
        stopped = _cli("stop", "--dir", str(directory))
        assert stopped.returncode == 0 and f"pid {proc.pid}" in stopped.stdout
        proc.wait(timeout=30)
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0
        assert "no gateway runs" in _cli("stop", "--dir", str(directory)).stdout
    finally:
        stop_process(proc)
        upstream.close()
