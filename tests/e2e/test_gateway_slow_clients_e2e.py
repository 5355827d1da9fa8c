"""Real SuperNodes finish a round through the gateway while 8 addresses hold slow uploads (issue 22).

The deployment of docs/deploy.md and docs/hospital.md (``test_deployment._deploy``: SuperLink
with TLS and node authentication behind the nginx gateway, registered SuperNodes) with the toy
app; before the run starts, 16 uploads from each of 127.0.0.2..127.0.0.9 are opened against the
gateway and kept alive with a byte every 10 s (under ``client_body_timeout``). On main these
took every place the gateway had and each hospital's heartbeat got 429. Here the run must
finish, every registered node stay online, and each attacking address hold at most
``conn_per_ip`` places.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

from medalloc.server.gateway import GatewayLimits
from tests.e2e.harness import ProcessHarness
from tests.e2e.test_deployment import TOY_APP, Federation, _deploy, generate_region

pytestmark = pytest.mark.slow

ATTACKERS = [f"127.0.0.{i}" for i in range(2, 10)]
PER_ATTACKER = 16


def _slow_uploads(port: int, cafile: Path) -> list[ssl.SSLSocket]:
    context = ssl.create_default_context(cafile=str(cafile))
    head = (
        b"POST /v1/fleet/push-object HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/protobuf\r\nContent-Length: 5000000\r\n\r\nx"
    )
    held = []
    for address in ATTACKERS:
        for _ in range(PER_ATTACKER):
            raw = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(address, 0))
            sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
            sock.sendall(head)
            held.append(sock)
    return held


def test_a_round_finishes_through_the_gateway_under_slow_uploads(harness: ProcessHarness, tmp_path: Path) -> None:
    app = tmp_path / "toy_app"
    shutil.copytree(TOY_APP, app)
    fed = Federation(harness, tmp_path)
    data = generate_region(fed, hospitals=4, days=60)  # three registered, one refused (the toy app waits for 3)
    ids, _ = _deploy(fed, data, validate=False, app=app)

    held = _slow_uploads(fed.gateway_port, fed.coord / "certs" / "ca.crt")
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(10):
            for sock in held:
                try:
                    sock.sendall(b"y")
                except OSError:
                    pass

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        time.sleep(2)
        alive = 0
        for sock in held:
            sock.setblocking(False)
            try:
                got = sock.recv(4096)
                alive += not got.startswith(b"HTTP/1.1 429")
            except (ssl.SSLWantReadError, BlockingIOError):
                alive += 1
            except OSError:
                pass
            finally:
                sock.setblocking(True)
        assert alive <= len(ATTACKERS) * GatewayLimits().conn_per_ip, alive

        run_id = fed.run(app, "num-server-rounds=2 lr=0.5")
        run, _ = fed.wait_run(run_id, timeout=240)
        assert run["status"] == "finished:completed", run
        assert set(fed.node_ids().values()) == {"online"} and set(fed.node_ids()) == set(ids.values())
    finally:
        stop.set()
        thread.join(15)
        for sock in held:
            sock.close()
    access = (fed.root / "coordinator").glob("**/access.log")
    statuses = [line.split('"')[2].split()[0] for path in access for line in path.read_text().splitlines()
                if "send-node-heartbeat" in line and '"' in line]  # fmt: skip
    assert statuses and "429" not in statuses, statuses[-20:]
