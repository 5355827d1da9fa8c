"""``medalloc node check`` and ``medalloc node approve``: what a node will use, checked, with the key to fix.

A ready node (OMOP database long enough for the windows, ledger folder, approved apps, a
SuperLink that presents a certificate the federation's CA vouches for, a private key only
its owner reads) passes with exit 0; each thing wrong fails with exit 2 and names the
node-config or run-config key to set. ``approve --app`` gives the hash Flower's own
``flwr build`` gives the same folder.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medalloc.cli import app
from medalloc.client.keys import generate_key_pair
from medalloc.node.check import Finding, check_node, window_spec
from medalloc.server.certs import write_certificates
from medalloc_core.privacy.ledger import PrivacyLedger
from medalloc_core.sources.synthetic import create_omop_database
from medalloc_core.synthetic import RegionConfig, generate_region, write_region
from tests.source_fixtures import omop_tables

runner = CliRunner()
TOY_APP = Path(__file__).parent / "e2e" / "toy_app"
BIN = Path(sys.executable).parent


def _lines(output: str) -> str:
    return " ".join(output.split())


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("region")
    write_region(
        generate_region(RegionConfig(hospitals=1, days=120, seed=7, shape="encounters", max_beds=80)), out, shape="omop"
    )
    return out


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A TLS server on 127.0.0.1 with a certificate from a fresh federation CA: (address, ca.crt)."""
    paths = write_certificates(tmp_path / "certs", hosts=["127.0.0.1"])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(paths.server_cert, paths.server_key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (OSError, ssl.SSLError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{port}", paths.ca_cert
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


@pytest.fixture
def ready_node(tmp_path: Path, region: Path) -> dict[str, Path]:
    """A node folder whose every check passes (given a SuperLink): node.toml, approved apps, key, ledger folder."""
    node = tmp_path / "node"
    (node / "keys").mkdir(parents=True)
    generate_key_pair(node / "keys" / "H000")
    approved = node / "approved-apps.toml"
    result = runner.invoke(
        app, ["node", "approve", "--app", str(TOY_APP), "--approved-apps", str(approved), "--by", "DPO"]
    )
    assert result.exit_code == 0, result.output
    config = node / "node.toml"
    config.write_text(
        f'data-path = "{region / "H000.sqlite"}"\n'
        f'ledger-path = "{node / "privacy-ledger.json"}"\n'
        "privacy-epsilon-budget = 8.0\n"
        f'approved-apps = "{approved}"\n'
        'calendar-units = "icu,medical,paediatric,surgical"\n'
        'calendar-start = "2023-01-01"\n'
        'calendar-end = "2023-04-30"\n'
    )
    return {"node": node, "config": config, "approved": approved, "key": node / "keys" / "H000"}


def _check(ready: dict[str, Path], *extra: str, superlink: tuple[str, Path] | None = None) -> tuple[int, str]:
    args = ["node", "check", "--node-config", str(ready["config"]), "--history", "14", "--horizon", "7"]
    args += ["--auth-supernode-private-key", str(ready["key"])]
    if superlink is not None:
        args += ["--superlink", superlink[0], "--root-certificates", str(superlink[1])]
    result = runner.invoke(app, [*args, *extra])
    return result.exit_code, _lines(result.output)


def _findings(ready: dict[str, Path], superlink: tuple[str, Path], **kwargs: object) -> dict[str, Finding]:
    from flwr.common.config import parse_config_args

    spec = window_spec(int(kwargs.pop("history", 14)), int(kwargs.pop("horizon", 7)), "admissions,census")
    result = check_node(
        parse_config_args([str(ready["config"])]),
        superlink=superlink[0],
        root_certificates=superlink[1],
        private_key=ready["key"],
        spec=spec,
        **kwargs,  # type: ignore[arg-type]
    )
    return {f"{f.section}/{f.item}": f for f in result.findings}


def test_a_ready_node_passes_and_shows_what_it_will_use(
    ready_node: dict[str, Path], tls_server: tuple[str, Path]
) -> None:
    code, out = _check(ready_node, superlink=tls_server)
    assert code == 0, out
    assert out.endswith("READY: the node can join")
    found = _findings(ready_node, tls_server)
    assert {f.status for f in found.values()} == {"ok"}, [f for f in found.values() if f.status != "ok"]
    expected = {
        "data/source": "(omop, node-config 'data-path')",
        "data/validation": "valid: omop (sqlite), 4 unit(s) (icu, medical, paediatric, surgical)",
        "data/inpatient visits": "(visit_concept_id in 9201, 262, 8717, 32037)",
        "data/history": "needed (history 14, horizon 7, 28 + 28 held out); windows train",
        "data/calendar": "declared: 4 unit(s) (icu, medical, paediatric, surgical), 2023-01-01 .. 2023-04-30",
        "privacy/budget": "privacy-epsilon-budget 8 at privacy-delta 1e-06",
        "privacy/ledger": "none yet; the first round creates it (nothing spent)",
        "apps/approved": "(node-config 'approved-apps'): 1 app(s)",
        "apps/sha256": "medalloc-tests/toyapp 0.1.0, approved by DPO",
        "superlink/certificate": "CN=MedAlloc federation CA, SHA-256",
        "superlink/connection": f"TLS to {tls_server[0]} verified with ca.crt: server commonName=127.0.0.1",
        "node key/private key": "(mode 600), public key SHA256:",
    }
    for key, text in expected.items():
        assert text in found[key].text, (key, found[key])


@pytest.mark.parametrize(
    ("breakage", "failed", "expected", "fix"),
    [
        ("short-history", "data/history", "too short: 160 days needed per unit; days: icu 1", "run-config history=90"),
        (
            "no-approved",
            "apps/approved",
            "no approved-apps list: the node would run whatever app the coordinator sends",
            "set node-config 'approved-apps'",
        ),
        ("ledger-budget", "privacy/ledger", "budget 4, spent 0.000", "set node-config privacy-epsilon-budget=4"),
        ("key-mode", "node key/private key", "(mode 644)", "chmod 600"),
        ("bad-data", "data/validation", "1 error(s):", "medalloc validate"),
        ("mapping-key", "data/mapping", "data-mapping:", "node-config 'data-mapping'"),
        (
            "no-calendar",
            "data/calendar",
            "not declared (calendar-units, calendar-start, calendar-end missing)",
            'set node-config calendar-units="icu,medical,paediatric,surgical" calendar-start="2023-01-01"',
        ),
        (  # a file of daily counts declares its calendar too (issue 20): its rows can depend on the counts
            "no-calendar-daily",
            "data/calendar",
            "not declared (calendar-units, calendar-start, calendar-end missing): a deployed node refuses",
            'set node-config calendar-units="icu,medical,paediatric,surgical" calendar-start="2023-01-01"',
        ),
    ],
)
def test_each_problem_fails_and_names_what_to_set(
    ready_node: dict[str, Path],
    tls_server: tuple[str, Path],
    tmp_path: Path,
    breakage: str,
    failed: str,
    expected: str,
    fix: str,
) -> None:
    config = ready_node["config"]
    text = config.read_text()
    history = ("--history", "14", "--horizon", "7")
    if breakage == "short-history":
        history = ("--history", "90", "--horizon", "14")  # 90 + 14 + 28 + 28 = 160 days per unit; the units have less
    elif breakage == "no-approved":
        config.write_text("\n".join(line for line in text.splitlines() if not line.startswith("approved-apps")))
    elif breakage == "ledger-budget":
        PrivacyLedger.open(ready_node["node"] / "privacy-ledger.json", epsilon_budget=4.0, delta=1e-6)
    elif breakage == "key-mode":
        ready_node["key"].chmod(0o644)
    elif breakage == "bad-data":
        cdm = tmp_path / "bad.sqlite"
        tables = omop_tables()
        tables["visit_detail"] = tables["visit_detail"].assign(care_site_id=[1, 99, 3])
        create_omop_database(tables, f"sqlite:///{cdm}")
        config.write_text(text.replace(text.splitlines()[0], f'data-path = "{cdm}"'))
    elif breakage == "no-calendar":
        config.write_text("\n".join(line for line in text.splitlines() if not line.startswith("calendar-")))
    elif breakage == "no-calendar-daily":
        daily = write_region(
            generate_region(RegionConfig(hospitals=1, days=120, seed=7, shape="encounters", max_beds=80)),
            tmp_path / "daily",
            shape="daily",
        )
        kept = [line for line in text.splitlines() if not line.startswith(("calendar-", "data-path"))]
        config.write_text("\n".join([f'data-path = "{next(p for p in daily if p.suffix == ".csv")}"', *kept]))
    elif breakage == "mapping-key":
        mapping = tmp_path / "mapping.toml"
        mapping.write_text("[omop]\nunit = 'x'\n")
        config.write_text(text + f'data-mapping = "{mapping}"\n')
    args = ["node", "check", "--node-config", str(config), "--offline", "--auth-supernode-private-key"]
    args += [str(ready_node["key"]), "--superlink", tls_server[0], "--root-certificates", str(tls_server[1]), *history]
    result = runner.invoke(app, args)
    out = _lines(result.output)
    assert result.exit_code == 2, out
    assert "NOT READY: 1 problem(s)" in out and "Traceback" not in out, out
    section, item = failed.split("/")
    error = out[out.index(f"error: {section} {item}: ") :]
    assert expected in error and fix in error, error


def test_superlink_checks(ready_node: dict[str, Path], tls_server: tuple[str, Path], tmp_path: Path) -> None:
    other_ca = write_certificates(tmp_path / "other", hosts=["127.0.0.1"]).ca_cert
    code, out = _check(ready_node, superlink=(tls_server[0], other_ca))
    assert code == 2 and f"{tls_server[0]} presents a certificate ca.crt does not vouch for" in out, out
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{sock.getsockname()[1]}"
    code, out = _check(ready_node, superlink=(closed, tls_server[1]))
    assert code == 2 and f"cannot reach {closed}" in out, out
    code, out = _check(ready_node)
    assert code == 2 and "no --superlink given" in out
    not_pem = tmp_path / "ca.crt"
    not_pem.write_text("hello")
    code, out = _check(ready_node, superlink=(tls_server[0], not_pem))
    assert code == 2 and "not a PEM certificate" in out


def test_approve_gives_the_hash_flwr_build_gives(tmp_path: Path) -> None:
    """The coordinator's `flwr run` builds the FAB with Flower's builder: the node's hash must be the same bytes'."""
    source = tmp_path / "toyapp"
    shutil.copytree(TOY_APP, source)
    built = subprocess.run(
        [str(BIN / "flwr"), "build", "--app", str(source)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (fab,) = tmp_path.glob("*.fab")
    expected = hashlib.sha256(fab.read_bytes()).hexdigest()
    approved = tmp_path / "approved.toml"
    for args in (["--app", str(source)], ["--fab", str(fab)], ["--sha256", expected.upper()]):
        result = runner.invoke(app, ["node", "approve", *args, "--approved-apps", str(approved)])
        assert result.exit_code == 0, result.output
    out = _lines(runner.invoke(app, ["node", "hash", "--app", str(source)]).output)
    assert out == f"{expected} medalloc-tests/toyapp 0.1.0"
    text = approved.read_text()
    assert text.count("[[app]]") == 1 and f'sha256 = "{expected}"' in text  # the same app, approved once
    assert 'name = "medalloc-tests/toyapp 0.1.0"' in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sha256", "abc"], "--sha256 must be 64 hexadecimal digits"),
        ([], "give exactly one of --app FOLDER, --fab FILE or --sha256 HASH"),
        (["--app", "/nonexistent"], "no pyproject.toml there"),
    ],
)
def test_approve_refuses_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["node", "approve", *args, "--approved-apps", str(tmp_path / "a.toml")])
    assert result.exit_code == 2 and message in _lines(result.output)
    assert not (tmp_path / "a.toml").exists()


def test_exec_refuses_to_start_without_a_list(tmp_path: Path) -> None:
    result = runner.invoke(app, ["node", "exec", "--node-config", "data-path='x' ledger-path='y'"])
    assert result.exit_code == 2
    assert "the node config has no 'approved-apps'" in _lines(result.output)
    broken = tmp_path / "approved.toml"
    broken.write_text('[[app]]\nsha256 = "nope"\n')
    result = runner.invoke(app, ["node", "exec", "--node-config", f"approved-apps='{broken}'"])
    assert result.exit_code == 2
    assert "sha256 must be 64 hexadecimal digits" in _lines(result.output)
