"""Raw bytes over TLS to the Fleet gateway: nothing between the test and nginx rewrites the request.

HTTP client libraries clean a request target before sending it (httpx resolves ``..``,
curl does unless ``--path-as-is``), which is how the old Python gateway's path hole went
unseen by its tests. These helpers write the request line and headers byte for byte.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from pathlib import Path

# The Control and Runtime calls an outsider would want most, with the body that makes the
# SuperLink answer 200 to them when they reach it (an empty protobuf message is valid).
FORBIDDEN_CALLS: tuple[str, ...] = (
    "control/list-nodes",
    "control/list-runs",
    "control/register-node",
    "control/stop-run",
    "control/start-run",
    "control/stream-logs",
    "runtime/acquire-task",
    "runtime/pull-task-input",
)

# Ways to spell "go up from /v1/fleet/ into another API" that a path-normalising proxy
# or framework may resolve after an allow-list check: {call} is e.g. "control/list-nodes".
PATH_TRICKS: tuple[str, ...] = (
    "/v1/{call}",
    "/v1/fleet/../{call}",
    "/v1/fleet/pull-messages/../../{call}",
    "/v1/fleet/%2e%2e/{call}",
    "/v1/fleet/%2E%2E/{call}",
    "/v1/fleet/.%2e/{call}",
    "/v1/fleet/%2e./{call}",
    "/v1/fleet/..%2f{call}",
    "/v1/fleet/..%2F{call}",
    "/v1/fleet/%2e%2e%2f{call}",
    "/v1/fleet%2f..%2f{call}",
    "/v1/fleet/%252e%252e/{call}",
    "/v1/fleet/..;/{call}",
    "/v1/fleet/..\\{call}",
    "/v1/fleet/..%5c{call}",
    "/v1/fleet/./../{call}",
    "/v1/fleet//../{call}",
    "//v1/{call}",
    "/v1//{call}",
    "/./v1/{call}",
    "/v1/./{call}",
    "/V1/{call}",
    "/v1/fleet/pull-messages?/../../{call}",
    "/v1/fleet/pull-messages%3f/../../{call}",
    "/v1/fleet/pull-messages%00/../../{call}",
    "/v1/fleet/pull-messages#/../../{call}",
    "https://127.0.0.1/v1/{call}",
    "/v1/fleet/../../v1/{call}",
)

# Spellings of an allowed route that are not the route: all refused, never forwarded.
ROUTE_VARIANTS: tuple[str, ...] = (
    "/v1/fleet/pull-messages/",
    "/v1/fleet//pull-messages",
    "//v1/fleet/pull-messages",
    "/v1/fleet/./pull-messages",
    "/v1/fleet/x/../pull-messages",
    "/v1/fleet/pull%2dmessages",
    "/v1/fleet%2fpull-messages",
    "/v1/fleet/PULL-MESSAGES",
    "/v1/fleet/pull-messages?x=1",
    "/v1/fleet/pull-messages;x",
    "/v1/fleet/register-node",
    "/v1/fleet/unregister-node",
    "/docs",
    "/openapi.json",
    "/health",
    "/",
)


def client_context(cafile: Path) -> ssl.SSLContext:
    """TLS that trusts only the federation's CA (what a hospital, or an outsider with ca.crt, has)."""
    return ssl.create_default_context(cafile=str(cafile))


def request_bytes(
    method: str,
    target: str,
    body: bytes = b"",
    *,
    content_type: str = "application/protobuf",
    headers: dict[str, str] | None = None,
    close: bool = True,
) -> bytes:
    """A request exactly as written: the target is not parsed, encoded or normalised."""
    lines = [
        f"{method} {target} HTTP/1.1",
        "Host: 127.0.0.1",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
    ]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def tls_connect(port: int, cafile: Path, *, timeout: float = 10.0) -> ssl.SSLSocket:
    """A TLS connection to 127.0.0.1:port, handshake done."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return client_context(cafile).wrap_socket(raw, server_hostname="127.0.0.1")


def read_response(sock: socket.socket, *, timeout: float = 10.0) -> bytes:
    """Read until the server closes the connection (requests are sent with Connection: close)."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ssl.SSLError, ConnectionResetError):
            break
        if not chunk:
            break
        data += chunk
    return data


def exchange(port: int, cafile: Path, data: bytes, *, timeout: float = 10.0) -> bytes:
    """Send ``data`` on a fresh TLS connection and return everything the server sent back."""
    with tls_connect(port, cafile, timeout=timeout) as sock:
        sock.sendall(data)
        return read_response(sock, timeout=timeout)


def status_of(response: bytes) -> int:
    """The status code of a raw HTTP/1.1 response (0 when there is none)."""
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", response)
    return int(match[1]) if match else 0


def body_of(response: bytes) -> bytes:
    return response.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in response else b""


def closed_by_peer(sock: socket.socket, *, timeout: float) -> float | None:
    """Seconds until the peer closes ``sock`` (EOF or reset), or None if it is still open after ``timeout``."""
    start = time.monotonic()
    sock.settimeout(0.5)
    while time.monotonic() - start < timeout:
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        except (ConnectionResetError, ssl.SSLError, OSError):
            return time.monotonic() - start
        if not chunk:
            return time.monotonic() - start
    return None
