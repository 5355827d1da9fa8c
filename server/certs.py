"""TLS certificates for a SuperLink: a private CA and a server certificate signed by it.

Run as ``python -m medalloc.server.certs --host superlink.example.org --host 10.0.0.5 --out certs``.
The SuperLink serves its Fleet, Control and Runtime APIs on one HTTPS port with
``--ssl-ca-certfile ca.crt --ssl-certfile server.pem --ssl-keyfile server.key``; hospitals and
the ``flwr`` CLI verify it with ``ca.crt`` only. ``ca.key`` signs certificates: keep it off
the SuperLink machine once the server certificate is made.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from medalloc_core.paths import read_regular_bytes

logger = logging.getLogger(__name__)

# P-384: the curve Flower itself uses for node keys; accepted by every TLS stack we meet.
_CURVE = ec.SECP384R1()
# Backdate validity a little so a SuperNode whose clock runs slightly behind accepts the cert.
_CLOCK_SKEW = datetime.timedelta(minutes=5)

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"


class CertificateError(ValueError):
    """A certificate request that cannot be honoured (bad host name, files already there)."""


@dataclass(frozen=True)
class CertificatePaths:
    """Where :func:`write_certificates` put each file."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


_DNS_NAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*$"
)


def _subject_alt_names(hosts: list[str]) -> list[x509.GeneralName]:
    """One SAN per host: an IP address entry for literal IPs, a DNS entry otherwise."""
    if not hosts:
        raise CertificateError("give at least one --host: the name or IP hospitals connect to")
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host.strip("[]"))))
            continue
        except ValueError:
            pass
        if not _DNS_NAME.match(host):
            raise CertificateError(
                f"host {host!r} is not a DNS name or IP address (give it without scheme, port or path)"
            )
        names.append(x509.DNSName(host))
    return names


def make_ca(
    *, common_name: str = "MedAlloc federation CA", valid_days: int = 825
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Create a self-signed CA key and certificate.

    Parameters
    ----------
    common_name : str, default "MedAlloc federation CA"
        Subject CN, shown when someone inspects the chain.
    valid_days : int, default 825
        Validity; 825 days is the longest lifetime common TLS clients accept.
    """
    if valid_days < 1:
        raise CertificateError(f"valid_days must be at least 1, got {valid_days}")
    key = ec.generate_private_key(_CURVE)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    return key, cert


def make_server_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    *,
    hosts: list[str],
    valid_days: int = 825,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Create a server key and a certificate for ``hosts`` signed by the CA.

    Parameters
    ----------
    ca_key, ca_cert
        The CA from :func:`make_ca`.
    hosts : list[str]
        Every DNS name and IP address clients use to reach the SuperLink; TLS clients
        check the address they dialled against these names, so a missing one fails the
        handshake with a hostname-mismatch error.
    valid_days : int, default 825
        Validity of the server certificate.
    """
    if valid_days < 1:
        raise CertificateError(f"valid_days must be at least 1, got {valid_days}")
    sans = _subject_alt_names(hosts)
    key = ec.generate_private_key(_CURVE)
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    return key, cert


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_new(path: Path, data: bytes, *, secret: bool) -> None:
    """Write a file that must not exist yet; private keys are created owner-only (0600)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    fd = os.open(path, flags, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


_MAX_PEM_BYTES = 1 << 20  # a PEM certificate or key is a few KiB


def _load_ca(ca_dir: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Read an existing CA (``ca.key`` + ``ca.crt``) made by :func:`write_certificates`."""
    try:
        # read as regular files only (a FIFO named ca.key would block for ever), at most 1 MiB each
        cert = x509.load_pem_x509_certificate(read_regular_bytes(ca_dir / CA_CERT, limit=_MAX_PEM_BYTES))
        pem = read_regular_bytes(ca_dir / CA_KEY, limit=_MAX_PEM_BYTES)
        key = serialization.load_pem_private_key(pem, password=None)
    except (OSError, ValueError) as exc:
        raise CertificateError(f"cannot read the CA in {ca_dir} ({CA_CERT} and {CA_KEY}): {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise CertificateError(f"{ca_dir / CA_KEY} is not the private key of {ca_dir / CA_CERT}")
    return key, cert


def write_certificates(
    out_dir: Path, *, hosts: list[str], valid_days: int = 825, ca_dir: Path | None = None
) -> CertificatePaths:
    """Write a SuperLink server certificate for ``hosts`` into ``out_dir``, and a new CA unless given one.

    With ``ca_dir`` (a directory holding ``ca.crt`` and ``ca.key`` from an earlier call) the
    server certificate is signed by that CA, so hospitals keep their ``ca.crt``: that is how
    an expiring or re-addressed server certificate is renewed. Without it a new CA is made
    and written into ``out_dir`` too. Refuses (``CertificateError``) when any file it would
    write already exists: a silently replaced CA would lock every hospital out.
    """
    paths = CertificatePaths(
        ca_cert=(ca_dir or out_dir) / CA_CERT,
        ca_key=(ca_dir or out_dir) / CA_KEY,
        server_cert=out_dir / SERVER_CERT,
        server_key=out_dir / SERVER_KEY,
    )
    to_write = [paths.server_cert, paths.server_key] + ([] if ca_dir else [paths.ca_cert, paths.ca_key])
    existing = [str(p) for p in to_write if p.exists()]
    if existing:
        raise CertificateError(
            f"refusing to overwrite existing certificate files: {', '.join(existing)}; "
            "choose another --out directory or move them away first"
        )
    ca_key, ca_cert = _load_ca(ca_dir) if ca_dir else make_ca(valid_days=valid_days)
    server_key, server_cert = make_server_certificate(ca_key, ca_cert, hosts=hosts, valid_days=valid_days)
    out_dir.mkdir(parents=True, exist_ok=True)
    if ca_dir is None:
        _write_new(paths.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), secret=False)
        _write_new(paths.ca_key, _key_pem(ca_key), secret=True)
    _write_new(paths.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), secret=False)
    _write_new(paths.server_key, _key_pem(server_key), secret=True)
    logger.info("wrote server certificate for %s into %s", hosts, out_dir)
    return paths


cli = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@cli.command()
def main(
    host: Annotated[
        list[str],
        typer.Option("--host", help="DNS name or IP hospitals use to reach the SuperLink (repeat)."),
    ],
    out: Annotated[Path, typer.Option("--out", help="Directory for ca.crt, ca.key, server.pem, server.key.")],
    valid_days: Annotated[int, typer.Option("--valid-days", help="Validity in days.")] = 825,
    ca: Annotated[
        Path | None,
        typer.Option("--ca", help="Directory with an existing ca.crt and ca.key: sign with it, make no new CA."),
    ] = None,
) -> None:
    """Create a private CA and a SuperLink server certificate signed by it (or renew with --ca)."""
    from rich.console import Console

    console = Console(soft_wrap=True)
    try:
        paths = write_certificates(out, hosts=host, valid_days=valid_days, ca_dir=ca)
    except CertificateError as exc:
        Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    console.print(f"CA certificate (give to every hospital): {paths.ca_cert}")
    console.print(f"CA key (keep offline):                   {paths.ca_key}")
    console.print(f"SuperLink certificate:                   {paths.server_cert}")
    console.print(f"SuperLink key:                           {paths.server_key}")


if __name__ == "__main__":
    cli()
