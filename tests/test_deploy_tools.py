"""The deployment helpers: SuperLink certificates and node key pairs (the Fleet gateway: tests/test_gateway.py)."""

from __future__ import annotations

import hashlib
import ipaddress
import shutil
import socket
import ssl
import stat
import subprocess
import threading
from base64 import b64decode, b64encode
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_ssh_private_key
from typer.testing import CliRunner

from medalloc.client.keys import KeyFileExistsError, fingerprint, generate_key_pair
from medalloc.client.keys import cli as keys_cli
from medalloc.server.certs import CertificateError, write_certificates
from medalloc.server.certs import cli as certs_cli

# --------------------------------------------------------------------------- certificates


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory):
    return write_certificates(tmp_path_factory.mktemp("certs"), hosts=["superlink.example.org", "127.0.0.1"])


def test_server_certificate_is_issued_by_the_ca_for_every_host(certs) -> None:
    ca = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the signature or issuer is wrong
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["superlink.example.org"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    # The private keys match their certificates and are readable by the owner only.
    for key_path, cert in ((certs.ca_key, ca), (certs.server_key, server)):
        key = load_pem_private_key(key_path.read_bytes(), password=None)
        assert key.public_key() == cert.public_key()
        assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


def _tls_handshake(certs, server_hostname: str) -> str:
    """Serve one TLS handshake with the server certificate; connect trusting only the CA."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(certs.server_cert, certs.server_key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
                version = tls.version()
                tls.sendall(b"x")
                return str(version)
    finally:
        thread.join(timeout=5)
        listener.close()


def test_tls_client_trusting_the_ca_accepts_the_listed_hosts_only(certs) -> None:
    assert _tls_handshake(certs, "127.0.0.1").startswith("TLS")
    assert _tls_handshake(certs, "superlink.example.org").startswith("TLS")
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch|doesn't match"):
        _tls_handshake(certs, "other.example.org")


def test_certificates_are_never_overwritten(certs) -> None:
    before = {p: p.read_bytes() for p in (certs.ca_cert, certs.ca_key, certs.server_cert, certs.server_key)}
    with pytest.raises(CertificateError, match="refusing to overwrite"):
        write_certificates(certs.ca_cert.parent, hosts=["127.0.0.1"])
    assert {p: p.read_bytes() for p in before} == before


@pytest.mark.parametrize("host", ["https://x.org", "x.org:9092", "a b", "", "x.org/path"])
def test_bad_host_names_are_refused(tmp_path: Path, host: str) -> None:
    with pytest.raises(CertificateError, match="not a DNS name or IP address"):
        write_certificates(tmp_path / "c", hosts=[host])
    assert not (tmp_path / "c").exists()


def test_certs_cli_exit_status_2_on_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(certs_cli, ["--host", "::1", "--out", str(tmp_path / "c")])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "c" / "ca.crt").is_file()
    again = runner.invoke(certs_cli, ["--host", "::1", "--out", str(tmp_path / "c")])
    assert again.exit_code == 2
    assert "refusing to overwrite" in again.output
    assert "Traceback" not in again.output


# --------------------------------------------------------------------------- node keys


def test_key_pair_loads_the_way_flower_loads_it(tmp_path: Path) -> None:
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import bytes_to_public_key, sign_message, verify_signature

    pair = generate_key_pair(tmp_path / "keys" / "H000")
    # flower-supernode: load_ssh_private_key, must be an EC key (flower_supernode.py).
    private = load_ssh_private_key(pair.private_key.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert isinstance(private.curve, ec.SECP384R1)
    assert stat.S_IMODE(pair.private_key.stat().st_mode) == 0o600
    # flwr supernode register: OpenSSH public key on a NIST curve, stored by the SuperLink as PEM.
    registered = bytes_to_public_key(try_load_public_key(pair.public_key))
    assert registered == private.public_key()
    # What node authentication does with them: the SuperLink verifies the node's signature.
    signature = sign_message(private, b"2026-01-01T00:00:00+00:00")
    assert verify_signature(registered, b"2026-01-01T00:00:00+00:00", signature)
    line = pair.public_key.read_text()
    assert line.startswith("ecdsa-sha2-nistp384 ") and line.rstrip().endswith(" H000")


def test_fingerprint_is_openssh_sha256_of_the_key_blob(tmp_path: Path) -> None:
    pair = generate_key_pair(tmp_path / "H001", comment="Hospital 1")
    blob = b64decode(pair.public_key.read_text().split()[1])
    expected = "SHA256:" + b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    assert pair.fingerprint == expected == fingerprint(pair.public_key.read_bytes())
    if shutil.which("ssh-keygen"):
        out = subprocess.run(["ssh-keygen", "-lf", str(pair.public_key)], capture_output=True, text=True, check=True)
        assert out.stdout.split()[1] == expected


def test_key_pair_is_never_overwritten(tmp_path: Path) -> None:
    pair = generate_key_pair(tmp_path / "H000")
    before = pair.private_key.read_bytes(), pair.public_key.read_bytes()
    with pytest.raises(KeyFileExistsError, match="new node identity"):
        generate_key_pair(tmp_path / "H000")
    assert (pair.private_key.read_bytes(), pair.public_key.read_bytes()) == before
    result = CliRunner().invoke(keys_cli, ["--out", str(tmp_path / "H000")])
    assert result.exit_code == 2 and "refusing to overwrite" in result.output


def test_renewal_with_an_existing_ca_keeps_hospitals_ca_crt(certs, tmp_path: Path) -> None:
    ca_before = certs.ca_cert.read_bytes()
    renewed = write_certificates(tmp_path / "renewed", hosts=["10.0.0.5"], ca_dir=certs.ca_cert.parent)
    assert renewed.ca_cert == certs.ca_cert and certs.ca_cert.read_bytes() == ca_before
    assert sorted(p.name for p in (tmp_path / "renewed").iterdir()) == ["server.key", "server.pem"]
    ca = x509.load_pem_x509_certificate(ca_before)
    server = x509.load_pem_x509_certificate(renewed.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    # A key that does not belong to the certificate is refused, with both file names.
    other = write_certificates(tmp_path / "other", hosts=["127.0.0.1"])
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(certs.ca_cert, mixed / "ca.crt")
    shutil.copy(other.ca_key, mixed / "ca.key")
    with pytest.raises(CertificateError, match="is not the private key of"):
        write_certificates(tmp_path / "x", hosts=["127.0.0.1"], ca_dir=mixed)
    result = CliRunner().invoke(
        certs_cli, ["--host", "127.0.0.1", "--out", str(tmp_path / "y"), "--ca", str(tmp_path / "nope")]
    )
    assert result.exit_code == 2 and "cannot read the CA" in result.output
