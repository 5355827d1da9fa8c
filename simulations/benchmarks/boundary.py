"""Benchmark: what refusing hostile input costs, beside what accepting ordinary input costs.

Run ``python -m simulations.benchmarks.boundary`` from the repository root. Three parts, each a
table of peak memory and time, measured in this one run on this machine:

1. model files: loading a default-size forecaster, against refusing ``hidden=60000, layers=4``
   (a 14 GB model, re-signed so only the size check can stop it) and a safetensors header that
   claims one 60000 x 60000 array; each in a fresh interpreter, whose peak resident memory is
   read at its end (importing torch alone is most of it);
2. data files: ``load_unit_records`` on a valid 40 MB daily file, against a 300 MB file
   (``MAX_FILE_BYTES``), a 1.3 MB file of 200,000 columns (``MAX_COLUMNS``; the issue's 1.9 MB
   one ran for minutes in the quadratic repeated-column check) and a 40 MB file holding one
   20 MB line (``MAX_LINE_BYTES``);
3. the nginx Fleet gateway (skipped without nginx): its memory at rest, and while one client
   streams a 300 MiB body at it (the Python gateway went from 44 MB to 968 MB), the time to the
   413, and how long 20 connections that send half a header stay open;
4. the gateway under load (skipped without nginx): 200 node sessions, each from its own loopback
   address (127.1.0.1..127.1.0.200) on one kept-alive TLS connection, send a heartbeat every
   2 s to a stand-in SuperLink that answers at once; heartbeat latency p50/p99 and the share
   answered 200 (every 5th call a pull-messages, which counts against the uploads' places),
   without the attack, then with the slow-client attack of issue 22 from 8 and from 64 addresses
   (16 uploads from each, stalled after one byte, then a byte every 5 s, each one the gateway
   closes opened again). ``--sessions`` and ``--seconds`` size it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[2]
MiB = 2**20


def _peak(script: str, *, cwd: Path) -> tuple[float, float, str]:
    """(peak MiB, seconds, last output line) of ``script`` in a fresh interpreter."""
    # The interpreter's own peak (VmHWM, kB): getrusage's ru_maxrss keeps the forking parent's peak across exec.
    code = script + (
        "\nprint('PEAK', next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')))\n"
    )
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    lines = done.stdout.strip().splitlines()
    peak = int(lines[-1].split()[1]) / 1024
    return peak, seconds, (lines[-2] if len(lines) > 1 else "")[:90]


# ---------------------------------------------------------------------------- 1. model files

_MODEL_SETUP = """
import hashlib, json, struct
from pathlib import Path
from medalloc_core.forecast.features import WindowSpec
from medalloc_core.model_io import save_model, sidecar_digest
from medalloc_core.forecast.models import ForecasterConfig, build_model
spec = WindowSpec(history=56, horizon=14, val_periods=56, test_periods=56)
model = build_model(ForecasterConfig.for_spec(spec, model="mlp", hidden=64), seed=0)
path = save_model(Path("default.safetensors"), model, spec=spec, overwrite=True)
def resign(meta, arrays=None):
    if arrays is not None:
        meta["sha256"] = hashlib.sha256(arrays).hexdigest()
    meta["digest"] = sidecar_digest(meta, meta["sha256"])
    return json.dumps(meta).encode()
meta = json.loads(Path("default.json").read_text())
big = dict(meta, **{"model-config": dict(meta["model-config"], hidden=60000, layers=4)})
Path("big.safetensors").write_bytes(path.read_bytes())
Path("big.json").write_bytes(resign(big))
header = json.dumps({"body.0.weight": {"dtype": "F32", "shape": [60000, 60000], "data_offsets": [0, 4 * 60000**2]}})
arrays = struct.pack("<Q", len(header)) + header.encode() + bytes(64)
Path("claims.safetensors").write_bytes(arrays)
Path("claims.json").write_bytes(resign(dict(meta), arrays))
"""

_LOAD = """
from medalloc_core.model_io import ModelFileError, load_model
try:
    model = load_model({path!r})
    print("loaded", sum(p.numel() for p in model.model.parameters()), "parameters")
except ModelFileError as exc:
    print("refused:", str(exc).split(": ", 1)[1])
"""


def bench_models(root: Path) -> list[tuple[str, float, float, str]]:
    subprocess.run(
        [sys.executable, "-c", _MODEL_SETUP], check=True, cwd=root, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    rows = [("import torch and medalloc_core.model_io",) + _peak("import medalloc_core.model_io", cwd=root)]
    for name, what in (
        ("default.safetensors", "load the default-size model (hidden 64)"),
        ("big.safetensors", "refuse hidden=60000, layers=4 (14 GB)"),
        ("claims.safetensors", "refuse a header claiming 60000 x 60000"),
    ):
        rows.append((what, *_peak(_LOAD.format(path=name), cwd=root)))
    return rows


# ---------------------------------------------------------------------------- 2. data files


def _daily_csv(path: Path, target_bytes: int) -> None:
    """A valid daily file of about ``target_bytes``: many units, ten years each."""
    days = pd.date_range("2015-01-01", periods=3650, freq="D").strftime("%Y-%m-%d")
    block = pd.DataFrame({"date": days, "admissions": 5, "discharges": 5, "census": 40, "capacity": 50})
    one = len(block.assign(unit="U0000").to_csv(index=False, header=False).encode())
    units = max(1, target_bytes // one)
    frames = [block.assign(unit=f"U{u:04d}") for u in range(units)]
    pd.concat(frames).loc[:, ["date", "unit", "admissions", "discharges", "census", "capacity"]].to_csv(
        path, index=False
    )


_READ = """
from medalloc_core.contract import DataContractError
from medalloc_core.validation import load_unit_records
try:
    records = load_unit_records({path!r})
    print("loaded", len(records.frame), "rows")
except DataContractError as exc:
    print("refused:", str(exc.problems[0]).split(": ", 1)[1])
"""


def bench_files(root: Path) -> list[tuple[str, float, float, str]]:
    _daily_csv(root / "valid.csv", 40 * MiB)
    with (root / "huge.csv").open("wb") as handle:  # over MAX_FILE_BYTES; refused before it is read
        handle.write(b"date,unit,census\n")
        handle.write(b"2024-01-01,icu,3\n" * (300 * MiB // 17))
    names = [np.base_repr(i, 36).lower() for i in range(200_000)]  # short names: the header stays under 1 MiB
    (root / "wide.csv").write_text(",".join(names) + "\n" + ",".join("1" for _ in names) + "\n")
    with (root / "long.csv").open("wb") as handle:
        handle.write(b"date,unit,census\n" + b"2024-01-01,icu,3\n" * (20 * MiB // 17))
        handle.write(b"2024-01-02,icu," + b"9" * (20 * MiB) + b"\n")
    rows = [("import the loader",) + _peak("import medalloc_core.validation", cwd=root)]
    for name, what in (
        ("valid.csv", f"load a valid {(root / 'valid.csv').stat().st_size / MiB:.0f} MiB daily file"),
        ("huge.csv", f"refuse a {(root / 'huge.csv').stat().st_size / MiB:.0f} MiB file"),
        ("wide.csv", f"refuse {(root / 'wide.csv').stat().st_size / MiB:.1f} MiB of 200,000 columns"),
        ("long.csv", f"refuse a {(root / 'long.csv').stat().st_size / MiB:.0f} MiB file with a 20 MiB line"),
    ):
        rows.append((what, *_peak(_READ.format(path=name), cwd=root)))
    return rows


# ---------------------------------------------------------------------------- 3. the gateway


def _rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return total / 1024


def _nginx_pids(master: int) -> list[int]:
    children = Path(f"/proc/{master}/task/{master}/children")
    extra = [int(p) for p in children.read_text().split()] if children.exists() else []
    return [master, *extra]


def bench_gateway(root: Path) -> list[tuple[str, str]]:
    from medalloc.server.certs import write_certificates
    from medalloc.server.gateway import GatewayError, find_nginx

    try:
        find_nginx()
    except GatewayError as exc:
        return [("skipped", str(exc))]
    certs = write_certificates(root / "certs", hosts=["127.0.0.1"])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "medalloc.cli", "gateway", "start", "--listen", f"127.0.0.1:{port}",
         "--superlink", "127.0.0.1:9", "--certs", str(certs.server_cert.parent), "--dir", str(root / "gw")],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the gateway did not start")
            time.sleep(0.1)
        time.sleep(0.5)
        pids = _nginx_pids(proc.pid)
        context = ssl.create_default_context(cafile=str(certs.ca_cert))
        rows = [("nginx at rest (master + worker)", f"{_rss_mib(pids):.1f} MiB")]
        # One client streams a 300 MiB body; the gateway answers 413 from the declared length.
        sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="127.0.0.1")
        start = time.perf_counter()
        sock.sendall(
            b"POST /v1/fleet/push-object HTTP/1.1\r\nHost: x\r\nContent-Type: application/protobuf\r\n"
            + f"Content-Length: {300 * MiB}\r\n\r\n".encode()
        )
        sock.settimeout(0.05)
        # The client keeps sending after the answer (as a hostile one would): nginx reads and drops
        # the rest for at most lingering_time, holding none of it.
        answer, sent, peak, chunk, answered_at = b"", 0, 0.0, bytes(MiB), None
        while sent < 300 * MiB:
            try:
                sock.sendall(chunk)
                sent += MiB
            except (OSError, ssl.SSLError):
                break
            try:
                answer += sock.recv(4096)
            except (TimeoutError, ssl.SSLWantReadError, ssl.SSLError, OSError):
                pass
            if answer and answered_at is None:
                answered_at, sent_then = time.perf_counter() - start, sent
            peak = max(peak, _rss_mib(pids))
        status = answer.split(b"\r\n", 1)[0].decode(errors="replace") or "(no answer)"
        when = f"after {answered_at:.2f} s and {sent_then / MiB:.0f} MiB" if answered_at is not None else "never"
        rows.append(
            (
                "a 300 MiB body streamed at it",
                f"{status} {when}; {sent / MiB:.0f} MiB sent in all; nginx peak {peak:.1f} MiB",
            )
        )
        sock.close()
        # 20 connections that send half a header and then wait.
        slow = []
        for _ in range(20):
            s = context.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="127.0.0.1")
            s.sendall(b"POST /v1/fleet/pull-messages HTTP/1.1\r\nHost: x\r\n")
            s.settimeout(0.2)
            slow.append(s)
        start = time.perf_counter()
        open_ = list(slow)
        while open_ and time.perf_counter() - start < 60:
            still = []
            for s in open_:
                try:
                    if s.recv(4096) == b"":
                        continue
                except (TimeoutError, ssl.SSLWantReadError):
                    still.append(s)
                    continue
                except (OSError, ssl.SSLError):
                    continue
            open_ = still
        closed = f"{20 - len(open_)} of 20 closed by the gateway after {time.perf_counter() - start:.1f} s"
        rows.append(
            (
                "20 connections with half a header",
                f"{closed} (client_header_timeout 10 s); nginx {_rss_mib(pids):.1f} MiB",
            )
        )
        for s in slow:
            s.close()
        return rows
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


# ---------------------------------------------------------------------------- 4. the gateway under load


def _upstream(certs: Any) -> tuple[Any, int]:
    """A stand-in SuperLink: HTTPS, HTTP/1.1 keep-alive, answers every POST with 200 at once."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Type", "application/protobuf")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.server_cert, certs.server_key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def _heartbeats(
    port: int, cafile: Path, sessions: int, seconds: float
) -> tuple[list[float], list[float], int, int, list[int]]:
    """Each session on its own address and kept-alive connection; every 5th call a pull-messages.

    Returns (latencies of heartbeats on an open connection, of those that opened one, in s;
    heartbeats answered 200; heartbeats sent; [pulls answered 200, pulls sent])."""
    import threading

    context = ssl.create_default_context(cafile=str(cafile))
    request = (
        b"POST /v1/fleet/send-node-heartbeat HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/protobuf\r\nContent-Length: 2\r\n\r\nhb"
    )
    pull = request.replace(b"send-node-heartbeat", b"pull-messages")
    latencies: list[float] = []
    handshakes: list[float] = []
    counts = [0, 0]
    pulls = [0, 0]
    lock = threading.Lock()

    def session(i: int) -> None:
        source = f"127.1.{i // 250}.{i % 250 + 1}"
        end = time.monotonic() + seconds
        time.sleep((i % 20) * 0.1)  # spread the sessions over the interval
        sock = None
        calls = 0
        while time.monotonic() < end:
            calls += 1
            is_pull = calls % 5 == 0
            start = time.perf_counter()
            status = 0
            fresh = sock is None  # this request pays the TCP and TLS handshake: reported apart
            try:
                if sock is None:
                    raw = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
                    sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
                sock.sendall(pull if is_pull else request)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = sock.recv(4096)
                    if not chunk:
                        raise ConnectionError("closed")
                    data += chunk
                head, body = data.split(b"\r\n\r\n", 1)
                length = next(
                    (int(x.split(b":")[1]) for x in head.split(b"\r\n") if x.lower().startswith(b"content-length")), 0
                )
                while len(body) < length:
                    body += sock.recv(4096)
                status = int(head.split(b" ", 2)[1])
                if b"connection: close" in head.lower():
                    sock.close()
                    sock = None
            except (OSError, ssl.SSLError, ValueError, IndexError):
                if sock is not None:
                    sock.close()
                sock = None
            elapsed = time.perf_counter() - start
            with lock:
                if is_pull:
                    pulls[0] += status == 200
                    pulls[1] += 1
                else:
                    counts[1] += 1
                    if status == 200:
                        counts[0] += 1
                        (handshakes if fresh else latencies).append(elapsed)
            time.sleep(max(0.0, 2.0 - elapsed))
        if sock is not None:
            sock.close()

    threads = [threading.Thread(target=session, args=(i,), daemon=True) for i in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    return latencies, handshakes, counts[0], counts[1], pulls


SLOW_HEAD = (
    b"POST /v1/fleet/push-object HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Content-Type: application/protobuf\r\nContent-Length: 5000000\r\n\r\nx"
)


class _SlowUploads:
    """The attack of issue 22, persistent: 16 uploads from each of ``addresses`` (127.0.0.2...),
    stalled after one byte, then a byte every 5 s each, and each one the gateway closes (or
    refuses) opened again, for as long as the attack lasts."""

    def __init__(self, port: int, cafile: Path, addresses: int) -> None:
        import threading
        from concurrent.futures import ThreadPoolExecutor

        self.port = port
        self.context = ssl.create_default_context(cafile=str(cafile))
        self.reopened = 0
        names = [f"127.0.{2 + i // 250}.{2 + i % 250}" for i in range(addresses)]
        with ThreadPoolExecutor(8) as pool:
            opened = list(pool.map(lambda a: [self._open(a) for _ in range(16)], names))
        self.held = [(a, sock) for a, socks in zip(names, opened, strict=True) for sock in socks]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._persist, daemon=True)
        self._thread.start()

    def _open(self, address: str) -> ssl.SSLSocket | None:
        try:
            raw = socket.create_connection(("127.0.0.1", self.port), timeout=10, source_address=(address, 0))
            sock = self.context.wrap_socket(raw, server_hostname="127.0.0.1")
            sock.sendall(SLOW_HEAD)
        except OSError:
            return None
        return sock

    def _persist(self) -> None:
        while not self._stop.wait(5):
            for i, (address, sock) in enumerate(self.held):
                if self._stop.is_set():
                    return
                try:
                    if sock is None:
                        raise OSError("closed")
                    sock.sendall(b"y")
                except OSError:
                    if sock is not None:
                        sock.close()
                    self.held[i] = (address, self._open(address))
                    self.reopened += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(60)
        for _, sock in self.held:
            if sock is not None:
                sock.close()


def bench_gateway_load(root: Path, sessions: int, seconds: float) -> list[tuple[str, str]]:
    from medalloc.server.certs import write_certificates
    from medalloc.server.gateway import GatewayError, find_nginx

    try:
        find_nginx()
    except GatewayError as exc:
        return [("skipped", str(exc))]
    certs = write_certificates(root / "certs-load", hosts=["127.0.0.1"])
    upstream, upstream_port = _upstream(certs)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "medalloc.cli", "gateway", "start", "--listen", f"127.0.0.1:{port}",
         "--superlink", f"127.0.0.1:{upstream_port}", "--certs", str(certs.server_cert.parent),
         "--dir", str(root / "gw-load")],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    rows = []
    try:
        deadline = time.monotonic() + 60
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the gateway did not start")
            time.sleep(0.1)
        time.sleep(0.5)
        error_log = root / "gw-load" / "error.log"
        for attackers in (0, 8, 64):
            label = f"with {attackers} x 16 slow uploads" if attackers else "without attack"
            closed_before = error_log.read_text().count("js: gateway: upload below")
            attack = _SlowUploads(port, certs.ca_cert, attackers) if attackers else None
            try:
                latencies, handshakes, ok, sent, pulls = _heartbeats(port, certs.ca_cert, sessions, seconds)
            finally:
                if attack is not None:
                    attack.close()
            ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
            first = np.array(handshakes) * 1000 if handshakes else np.array([np.nan])
            rows.append(
                (
                    f"{sessions} sessions, {label}",
                    f"heartbeat p50 {np.percentile(ms, 50):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms "
                    f"(with the TLS handshake: p50 {np.percentile(first, 50):.0f} ms, p99 "
                    f"{np.percentile(first, 99):.0f} ms); {ok} of {sent} answered 200; "
                    f"pull-messages {pulls[0]} of {pulls[1]} answered 200",
                )
            )
            if attack is not None:
                closed = error_log.read_text().count("js: gateway: upload below") - closed_before
                rows.append(
                    (
                        "",
                        f"the attack: {closed} uploads closed below the minimum rate, {attack.reopened} opened again",
                    )
                )
            time.sleep(1)
        return rows
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        upstream.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--skip-gateway", action="store_true", help="leave out parts 3 and 4 (nginx)")
    parser.add_argument("--only-load", action="store_true", help="run part 4 (the gateway under load) alone")
    parser.add_argument("--sessions", type=int, default=200, help="concurrent node sessions in part 4 (<= 1000)")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long each phase of part 4 runs")
    args = parser.parse_args()
    if not 1 <= args.sessions <= 1000:
        parser.error("--sessions must be 1..1000 (each is a thread and a loopback address)")
    if args.only_load:
        with tempfile.TemporaryDirectory() as tmp:
            print("\nnginx Fleet gateway under load")
            for what, result in bench_gateway_load(Path(tmp), args.sessions, args.seconds):
                print(f"  {what:<40} {result}")
        return
    np.seterr(all="ignore")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for title, rows in (("model files", bench_models(root)), ("data files", bench_files(root))):
            print(f"\n{title}: peak resident memory of a fresh interpreter, and wall time")
            base = rows[0][1]
            for what, peak, seconds, said in rows:
                extra = f"  +{peak - base:7.1f} MiB over the import" if what != rows[0][0] else ""
                print(f"  {what:<52} {peak:8.1f} MiB {seconds:6.2f} s{extra}")
                if said:
                    print(f"      {said}")
        if not args.skip_gateway:
            print("\nnginx Fleet gateway")
            for what, result in bench_gateway(root):
                print(f"  {what:<40} {result}")
            print("\nnginx Fleet gateway under load")
            for what, result in bench_gateway_load(root, args.sessions, args.seconds):
                print(f"  {what:<40} {result}")
    print(json.dumps({"python": sys.version.split()[0], "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
