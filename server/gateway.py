"""The Fleet gateway: an nginx reverse proxy that lets hospitals reach only the Fleet API.

Flower 1.42 serves its Fleet, Control and Runtime APIs on one HTTPS port, and in the
open-source build the Control API has no authentication: whoever reaches that port can
register a node key, start and stop runs, read logs and claim ServerApp tasks. So the
SuperLink listens on loopback and nginx, from the operating system's packages, listens on
the address hospitals dial. This module writes its configuration and starts and stops it;
nginx does the parsing, the limits and the logging (a hand-written proxy on a security
boundary is what the project's style guide steers away from).

What the generated configuration lets through, and nothing else:

* ``POST`` with ``Content-Type: application/protobuf`` to exactly one of
  :data:`FLEET_ROUTES`, the request target compared byte for byte before any decoding:
  dot-segments (plain or percent-encoded), doubled or encoded slashes, a query string, an
  absolute-form target all fail the comparison and get 404;
* bodies up to ``client_max_body_size``, headers within ``client_header_timeout``, bodies
  without a pause longer than ``client_body_timeout``;
* with ``min_upload_kib_s`` set (off by default), every request's bytes at that rate on average
  or faster once ``min_rate_grace_s`` have passed (:mod:`server.gateway_stream`, the TCP front
  that terminates TLS);
* at most ``tcp_conn_per_ip`` TCP connections and ``conn_per_ip`` requests in progress per
  client address, ``conn_total`` requests in progress in all (heartbeats apart), at most
  ``rate_per_ip`` requests per second per address (bursts of ``burst_per_ip``).

Every request, refused or forwarded, is one line of ``access.log`` in the gateway folder.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from medalloc_core.paths import read_regular_bytes, why_not_a_file

from . import gateway_stream

logger = logging.getLogger(__name__)

# The Fleet API calls a SuperNode with a registered key makes, read from flwr 1.42's
# supernode/fleet_http_client.py (FleetHttpClient) and supernode/fleet_http_connection.py:
# every call is a protobuf-over-HTTP/1.1 POST to one of these paths. `register-node` and
# `unregister-node` are left out on purpose: a node only calls them when it has no
# authentication keys (self-registration), which this deployment never allows
# (--enable-supernode-auth; keys are registered by the coordinator over the Control API).
FLEET_ROUTES: tuple[str, ...] = (
    "/v1/fleet/activate-node",
    "/v1/fleet/deactivate-node",
    "/v1/fleet/send-node-heartbeat",
    "/v1/fleet/pull-messages",
    "/v1/fleet/push-messages",
    "/v1/fleet/get-run",
    "/v1/fleet/get-fab",
    "/v1/fleet/push-object",
    "/v1/fleet/pull-object",
    "/v1/fleet/confirm-message-received",
)
HEARTBEAT = "/v1/fleet/send-node-heartbeat"
PROTOBUF_MEDIA_TYPE = "application/protobuf"
CONFIG_NAME = "nginx.conf"
PID_NAME = "nginx.pid"
ACCESS_LOG = "access.log"
ERROR_LOG = "error.log"


class GatewayError(ValueError):
    """A gateway that cannot be configured, started or stopped as asked; the message says why."""


@dataclass(frozen=True)
class GatewayLimits:
    """Resource bounds of the gateway, each an nginx directive (docs/deploy.md explains them).

    Attributes
    ----------
    max_body_mib : int
        ``client_max_body_size``. Flower splits arrays into chunks of 5 MiB
        (``FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE``), the largest request body a SuperNode sends;
        8 MiB leaves room for the protobuf envelope. Larger bodies get 413 before any byte
        reaches the SuperLink.
    header_timeout_s : int
        ``client_header_timeout`` (also the TLS handshake): a connection that has not sent
        a whole request header by then is closed. This is what bounds idle connections.
    body_timeout_s : int
        ``client_body_timeout``: the longest pause between two reads of a request body.
    send_timeout_s : int
        ``send_timeout``: the longest pause while a client reads a response.
    keepalive_timeout_s : int
        How long an idle kept-alive connection stays open between two requests.
    conn_per_ip : int
        ``limit_conn`` per client address: requests in progress at once. A SuperNode has
        at most two (its heartbeat thread and its main loop); 8 leaves room for four nodes
        behind one address (a hospital's NAT, or every node of a loopback test).
    conn_total : int
        ``limit_conn`` over all clients, heartbeats apart: ``conn_total / conn_per_ip`` = 128
        addresses are needed to fill it (a byte every 29 s keeps a place without a minimum
        upload rate; with one, each place costs that rate). With ``max_body_mib`` it bounds the
        memory request bodies can take: 1024 x 8 MiB = 8 GiB, reached only by clients that
        send those 8 GiB (nginx takes a body's buffer from the system as its bytes arrive).
    heartbeat_conn_total : int
        Heartbeats have places of their own (``limit_conn`` over all clients on
        ``send-node-heartbeat`` only, bodies of at most ``heartbeat_max_body_kib``), so uploads
        stalled on the other routes never make a registered node's heartbeat wait or fail.
    heartbeat_max_body_kib : int
        ``client_max_body_size`` of a heartbeat (Flower's is a few dozen bytes).
    rate_per_ip : int
        ``limit_req`` rate, requests per second per client address.
    burst_per_ip : int
        ``limit_req`` burst: requests above the rate that are served at once, not delayed.
    worker_connections : int
        nginx's cap on open connections of all kinds: a client costs three (the TCP front's,
        the front's to the HTTP server, the HTTP server's) and a forwarded request one more.
    tcp_conn_per_ip : int
        ``limit_conn`` of the TCP front per client address: connections open at once, idle
        or not. Beyond it a new connection is closed at once.
    min_upload_kib_s : int
        The minimum upload rate (KiB/s), 0 for none (the default): from a request's first
        byte to its last, its bytes must average this once ``min_rate_grace_s`` have passed,
        or the connection is closed at the next byte that arrives late (one that stops
        sending is closed after ``body_timeout_s``). Off by default because njs 0.7 (Debian
        12's) keeps every byte its filter passes until the connection closes: measured,
        nginx grew 1.07 MiB per MiB sent through one kept-alive connection, so the filter
        turns any client's upload volume into gateway memory (``--min-upload-rate 8``: 64
        kbit/s, a 5 MiB array chunk may take 650 s).
    min_rate_grace_s : int
        The first seconds of every request, free of the minimum rate.
    upstream_timeout_s : int
        How long the gateway waits for the SuperLink's answer.
    """

    max_body_mib: int = 8
    header_timeout_s: int = 10
    body_timeout_s: int = 30
    send_timeout_s: int = 60
    keepalive_timeout_s: int = 15
    conn_per_ip: int = 8
    conn_total: int = 1024
    heartbeat_conn_total: int = 1024
    heartbeat_max_body_kib: int = 64
    rate_per_ip: int = 50
    burst_per_ip: int = 500
    worker_connections: int = 8192
    upstream_timeout_s: int = 120
    tcp_conn_per_ip: int = 32
    min_upload_kib_s: int = 0
    min_rate_grace_s: int = 10


@dataclass(frozen=True)
class GatewayConfig:
    """Where the gateway listens, where the SuperLink is, and the TLS files.

    Attributes
    ----------
    listen_host, listen_port
        The address hospitals dial (``0.0.0.0`` for every interface).
    superlink_host, superlink_port
        The SuperLink's own listener; must be a loopback address.
    certfile, keyfile
        The server certificate and key hospitals check (``server.pem``, ``server.key``).
    ca_certfile
        The CA that signed the SuperLink's certificate: the gateway verifies the SuperLink.
    directory
        The folder the gateway owns: configuration, PID file, logs.
    limits
        Resource bounds (:class:`GatewayLimits`).
    inner_port
        The loopback port of the HTTP server behind the TCP front (PROXY protocol only); 0:
        a free one is taken when the configuration is written.
    """

    listen_host: str
    listen_port: int
    superlink_host: str
    superlink_port: int
    certfile: Path
    keyfile: Path
    ca_certfile: Path
    directory: Path
    limits: GatewayLimits = GatewayLimits()
    inner_port: int = 0

    def __post_init__(self) -> None:
        if not _is_loopback(self.superlink_host):
            raise GatewayError(
                f"--superlink {self.superlink_host}:{self.superlink_port}: the SuperLink must listen on a "
                "loopback address (127.0.0.1), or its Control API is open to everyone who can reach it"
            )
        for what, path in (
            ("the SuperLink's certificate", self.certfile),
            ("the SuperLink's private key", self.keyfile),
            ("the federation's CA certificate", self.ca_certfile),
        ):
            if not Path(path).is_file():
                raise GatewayError(
                    f"{path}: {why_not_a_file(path)} "
                    f"({what}; --certs names the folder `python -m medalloc.server.certs` wrote)"
                )
        if self.listen_port == self.superlink_port and (
            self.listen_host in ("0.0.0.0", "::") or _is_loopback(self.listen_host)
        ):
            raise GatewayError(f"--listen and --superlink use the same port {self.listen_port}")


def parse_host_port(value: str, option: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` to a pair; :class:`GatewayError` naming ``option`` otherwise."""
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise GatewayError(f"{option} {value!r}: expected HOST:PORT with a port from 1 to 65535")
    if any(c.isspace() or c in ";{}'\"\\#$" for c in host):
        raise GatewayError(f"{option} {value!r}: the host holds a character nginx would read as syntax")
    return host, int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _quote(path: Path) -> str:
    """A path as an nginx string; refuses characters that would end the string."""
    text = str(Path(path).resolve())
    if any(c in text for c in '"\\$;{}\n\r'):
        raise GatewayError(f"{text}: the path holds a character nginx cannot quote; use another folder")
    return f'"{text}"'


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def upstream_tls_name(certfile: Path, fallback: str) -> str:
    """The name nginx checks the SuperLink's certificate against: its first DNS name, else ``fallback``.

    nginx (1.22) matches ``proxy_ssl_name`` against DNS names and, when the certificate has
    none, its common name; it never matches IP address entries. ``server.certs`` puts the
    SuperLink's DNS names and IPs in one certificate, so a DNS name from it is the one the
    check can pass with; the CA vouches for every name in it alike.
    """
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(read_regular_bytes(certfile, limit=1 << 20, what="a PEM certificate"))
    except (OSError, ValueError) as exc:
        raise GatewayError(f"{certfile}: not a PEM certificate ({exc})") from exc
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName
        )
    except x509.ExtensionNotFound:
        names = []
    return names[0] if names else fallback


DEFAULT_MODULES = (gateway_stream.DEBIAN_MODULES_DIR / gateway_stream.STREAM_MODULE,)


def render_config(config: GatewayConfig, *, modules: Sequence[Path] = DEFAULT_MODULES) -> str:
    """The complete nginx.conf for ``config``: self-contained, no file outside it is included.

    ``modules`` are the stream (and njs) modules to load (:func:`server.gateway_stream.nginx_modules`
    finds them for an nginx binary; Debian's stream module by default). With a minimum upload
    rate, the njs script it names, ``minrate.js`` in the gateway folder, is written beside it by
    :func:`write_config`.
    """
    lim = config.limits
    d = config.directory
    inner = _address("127.0.0.1", config.inner_port)
    front = gateway_stream.render_stream(
        listen=_address(config.listen_host, config.listen_port),
        inner=inner,
        certfile=_quote(config.certfile),
        keyfile=_quote(config.keyfile),
        script=_quote(d / gateway_stream.MINRATE_NAME) if lim.min_upload_kib_s else None,
        handshake_timeout_s=lim.header_timeout_s,
        tcp_conn_per_ip=lim.tcp_conn_per_ip,
        idle_timeout_s=lim.upstream_timeout_s + lim.send_timeout_s,
    )
    routes = "\n".join(f"        {route} 1;" for route in FLEET_ROUTES)
    locations = "\n".join(
        f"        location = {route} {{ proxy_pass https://superlink; }}"
        for route in FLEET_ROUTES
        if route != HEARTBEAT
    )
    # A location with its own limit_conn inherits none from the server: heartbeats are counted
    # per address as everything else, but against their own total, with a small body cap.
    locations += f"""
        location = {HEARTBEAT} {{
            limit_conn fleet_per_ip {lim.conn_per_ip};
            limit_conn fleet_heartbeat_total {lim.heartbeat_conn_total};
            client_max_body_size {lim.heartbeat_max_body_kib}k;
            proxy_pass https://superlink;
        }}"""
    upstream_name = config.superlink_host if config.superlink_host != "localhost" else "127.0.0.1"
    return f"""\
# Generated by `medalloc gateway start`; edits are overwritten on the next start.
# Only the Fleet API routes below reach the SuperLink (docs/deploy.md, "The Fleet gateway").
{gateway_stream.load_module_lines(modules)}worker_processes 1;
worker_rlimit_nofile {2 * lim.worker_connections + 64};
daemon off;
pid {_quote(d / PID_NAME)};
error_log {_quote(d / ERROR_LOG)} warn;

events {{
    worker_connections {lim.worker_connections};
}}

# Hospitals dial the TCP front: TLS, connections per address, the minimum upload rate.
{front}
http {{
    server_tokens off;
    default_type text/plain;
    charset utf-8;
    # Nothing is rewritten before the checks below: // stays //, so it fails them.
    merge_slashes off;
    ignore_invalid_headers on;
    underscores_in_headers off;

    # Bodies stay in memory and responses are not spooled to disk, so the gateway writes no
    # temporary files: the body buffer is one MiB larger than the body cap, so a body within
    # the cap always fits and a chunked body is refused (413) when it passes the cap, before
    # nginx would spill to a file (as root, nginx's workers run as an unprivileged user that
    # may not write the gateway's folder: a spill was a 500). The paths only keep nginx's
    # defaults (/var/lib/nginx) out of it.
    client_body_temp_path {_quote(d / "tmp" / "body")};
    proxy_temp_path {_quote(d / "tmp" / "proxy")};
    fastcgi_temp_path {_quote(d / "tmp" / "fastcgi")};
    uwsgi_temp_path {_quote(d / "tmp" / "uwsgi")};
    scgi_temp_path {_quote(d / "tmp" / "scgi")};

    log_format fleet '$remote_addr [$time_iso8601] "$request" $status '
                     'body=$request_length sent=$bytes_sent time=$request_time '
                     'upstream=$upstream_status';
    access_log {_quote(d / ACCESS_LOG)} fleet;

    client_max_body_size {lim.max_body_mib}m;
    client_body_buffer_size {lim.max_body_mib + 1}m;
    client_body_in_single_buffer on;
    client_header_buffer_size 1k;
    large_client_header_buffers 4 8k;
    client_header_timeout {lim.header_timeout_s}s;
    client_body_timeout {lim.body_timeout_s}s;
    send_timeout {lim.send_timeout_s}s;
    keepalive_timeout {lim.keepalive_timeout_s}s;
    keepalive_requests 1000;
    reset_timedout_connection on;

    limit_conn_zone $binary_remote_addr zone=fleet_per_ip:10m;
    limit_conn_zone $server_name zone=fleet_total:1m;
    limit_conn_zone $server_name zone=fleet_heartbeat_total:1m;
    limit_req_zone $binary_remote_addr zone=fleet_rate:10m rate={lim.rate_per_ip}r/s;
    limit_conn_status 429;
    limit_req_status 429;

    # The allow-list, on the request target exactly as received ($request_uri: not decoded,
    # no dot-segments resolved, query string included).
    map $request_uri $fleet_route {{
        default 0;
{routes}
    }}

    upstream superlink {{
        server {_address(upstream_name, config.superlink_port)};
        keepalive 8;
    }}

    server {{
        # Only the TCP front connects here; it names the client in a PROXY protocol header,
        # and that address is the one every limit and log line below uses.
        listen {inner} proxy_protocol default_server;
        server_name _;
        set_real_ip_from 127.0.0.1;
        real_ip_header proxy_protocol;

        limit_conn fleet_per_ip {lim.conn_per_ip};
        limit_conn fleet_total {lim.conn_total};
        limit_req zone=fleet_rate burst={lim.burst_per_ip} nodelay;

        if ($fleet_route = 0) {{
            return 404 "not a Fleet API route\\n";
        }}
        if ($request_method != POST) {{
            return 405 "only POST\\n";
        }}
        if ($content_type != "{PROTOBUF_MEDIA_TYPE}") {{
            return 415 "only {PROTOBUF_MEDIA_TYPE}\\n";
        }}

        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $proxy_host;
        # The SuperLink (uvicorn) trusts X-Forwarded-For from 127.0.0.1: set it to the real
        # client, so its log shows the hospital's address and no client can claim another.
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_set_header X-Forwarded-Proto https;
        proxy_set_header Forwarded "";
        proxy_ssl_verify on;
        proxy_ssl_verify_depth 2;
        proxy_ssl_trusted_certificate {_quote(config.ca_certfile)};
        proxy_ssl_name {upstream_tls_name(config.certfile, upstream_name)};
        proxy_ssl_session_reuse on;
        proxy_connect_timeout 10s;
        proxy_send_timeout {lim.upstream_timeout_s}s;
        proxy_read_timeout {lim.upstream_timeout_s}s;
        proxy_request_buffering on;
        proxy_buffering on;
        proxy_max_temp_file_size 0;
        proxy_redirect off;
        proxy_intercept_errors off;

{locations}

        location / {{
            return 404 "not a Fleet API route\\n";
        }}
    }}
}}
"""


def find_nginx(explicit: str | None = None) -> Path:
    """The nginx binary: ``explicit``, else ``nginx`` on PATH, else /usr/sbin/nginx."""
    candidates = [explicit] if explicit else [shutil.which("nginx"), "/usr/sbin/nginx"]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    raise GatewayError(
        f"nginx not found ({explicit or 'PATH and /usr/sbin'}): install it from your distribution "
        "(Debian/Ubuntu: apt-get install nginx) or give --nginx PATH"
    )


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 now (the HTTP server behind the front binds it moments later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(config: GatewayConfig, *, modules: Sequence[Path] = DEFAULT_MODULES) -> Path:
    """Write ``nginx.conf`` and the front's ``minrate.js`` into the gateway folder (atomically).

    Returns the configuration's path. An ``inner_port`` of 0 is replaced by a free loopback port.
    """
    from medalloc_core.atomic import atomic_write_bytes

    if config.inner_port == 0:
        config = replace(config, inner_port=free_loopback_port())
    lim = config.limits
    config.directory.mkdir(parents=True, exist_ok=True)
    (config.directory / "tmp").mkdir(exist_ok=True)
    script = gateway_stream.render_minrate_js(
        rate_bytes_s=lim.min_upload_kib_s * 1024,
        grace_s=lim.min_rate_grace_s,
        max_head_bytes=64 * 1024,
        header_bytes=1024 + 4 * 8 * 1024,
        max_body_bytes=lim.max_body_mib * 1024 * 1024,
    )
    if lim.min_upload_kib_s:
        atomic_write_bytes(config.directory / gateway_stream.MINRATE_NAME, script.encode())
    path = config.directory / CONFIG_NAME
    atomic_write_bytes(path, render_config(config, modules=modules).encode())
    return path


def nginx_modules(nginx: Path, limits: GatewayLimits | None = None) -> tuple[Path, ...]:
    """The stream (and, with a minimum upload rate, njs) modules for ``nginx``; :class:`GatewayError`
    naming the packages when one is missing."""
    try:
        return gateway_stream.nginx_modules(nginx, js=bool((limits or GatewayLimits()).min_upload_kib_s))
    except (OSError, subprocess.SubprocessError) as exc:
        raise GatewayError(str(exc)) from exc


def nginx_argv(nginx: Path, directory: Path) -> list[str]:
    """The nginx command line for the configuration in ``directory`` (``-e``: no stray /var/log write)."""
    d = directory.resolve()
    return [str(nginx), "-p", str(d), "-e", str(d / ERROR_LOG), "-c", str(d / CONFIG_NAME)]


def check_config(nginx: Path, directory: Path) -> None:
    """``nginx -t`` on the written configuration; :class:`GatewayError` with nginx's reason."""
    result = subprocess.run([*nginx_argv(nginx, directory), "-t", "-q"], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        reason = " ".join(line.strip() for line in result.stderr.splitlines() if "[emerg]" in line or "[crit]" in line)
        raise GatewayError(
            f"nginx refused the configuration {directory / CONFIG_NAME}: {reason or result.stderr.strip()}"
        )


def running_pid(directory: Path) -> int | None:
    """The PID of the gateway running from ``directory``, or None (no PID file, or a stale one)."""
    pid_file = directory / PID_NAME
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    # A stale PID file whose number now belongs to another process must not be signalled.
    if b"nginx" not in cmdline:
        return None
    return pid


def start(config: GatewayConfig, *, nginx: Path) -> list[str]:
    """Write and check the configuration; return the argv that runs nginx in the foreground.

    The caller ``exec``s it, so the gateway's PID is nginx's master process: a supervisor
    (systemd, a terminal) stops it with SIGTERM or SIGQUIT like any other service.
    """
    if (pid := running_pid(config.directory)) is not None:
        raise GatewayError(f"a gateway already runs from {config.directory} (pid {pid}); stop it first")
    write_config(config, modules=nginx_modules(nginx, config.limits))
    check_config(nginx, config.directory)
    return nginx_argv(nginx, config.directory)


def stop(directory: Path, *, timeout: float = 30.0) -> int | None:
    """Stop the gateway running from ``directory`` (graceful SIGQUIT, SIGTERM after ``timeout``).

    Returns the stopped PID, or None when none was running.
    """
    pid = running_pid(directory)
    if pid is None:
        return None
    os.kill(pid, signal.SIGQUIT)  # finish requests in flight, then exit
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return pid
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    return pid


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in ("Z", "X")
