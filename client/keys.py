"""A hospital node's authentication key pair, in the format Flower 1.42 expects.

Run as ``python -m medalloc.client.keys --out keys/H000``. It writes ``keys/H000`` (the private key,
OpenSSH format, owner-only) and ``keys/H000.pub`` (``ecdsa-sha2-nistp384 ...``, one line).
The hospital starts ``flower-supernode --auth-supernode-private-key keys/H000``; the
coordinator registers the ``.pub`` file with ``flwr supernode register keys/H000.pub``.
The SuperNode loads the private key with ``load_ssh_private_key`` and accepts only an
elliptic-curve key; ``flwr supernode register`` accepts only NIST-curve EC public keys in
OpenSSH format (flwr/supernode/cli/flower_supernode.py, flwr/cli/supernode/register.py).
The same pair comes from ``ssh-keygen -t ecdsa -b 384 -N "" -f keys/H000``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from base64 import b64decode, b64encode
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

logger = logging.getLogger(__name__)


class KeyFileExistsError(ValueError):
    """The key files are already there; a node key is never replaced silently."""


@dataclass(frozen=True)
class NodeKeyPair:
    """Paths of a written key pair and the public key's SHA-256 fingerprint."""

    private_key: Path
    public_key: Path
    fingerprint: str


def fingerprint(public_openssh: bytes) -> str:
    """OpenSSH-style fingerprint (``SHA256:...``) of a one-line OpenSSH public key.

    Both sides can compare it over the phone before the coordinator registers the key:
    ``ssh-keygen -lf H000.pub`` prints the same string.
    """
    blob = public_openssh.split()[1]

    digest = hashlib.sha256(b64decode(blob)).digest()
    return "SHA256:" + b64encode(digest).decode("ascii").rstrip("=")


def generate_key_pair(private_key_path: Path, *, comment: str | None = None) -> NodeKeyPair:
    """Write a new P-384 key pair to ``private_key_path`` and ``private_key_path.pub``.

    Refuses (``KeyFileExistsError``) when either file exists: a replaced key is a different node
    identity, and the coordinator would have to register it again.

    Parameters
    ----------
    private_key_path : Path
        Where the private key goes; its public half goes next to it with ``.pub`` added.
    comment : str | None, default None
        Appended to the public key line (e.g. the hospital id) so the coordinator can tell
        keys apart; defaults to the file name.
    """
    public_key_path = private_key_path.with_name(private_key_path.name + ".pub")
    existing = [str(p) for p in (private_key_path, public_key_path) if p.exists()]
    if existing:
        raise KeyFileExistsError(
            f"refusing to overwrite existing key files: {', '.join(existing)}; "
            "a new key is a new node identity that must be registered again"
        )
    key = ec.generate_private_key(ec.SECP384R1())
    private_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public_bytes = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    label = comment if comment is not None else private_key_path.name
    public_line = public_bytes + (b" " + label.encode("utf-8") if label else b"") + b"\n"

    private_key_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_bytes)
    fd = os.open(public_key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(public_line)
    pair = NodeKeyPair(private_key_path, public_key_path, fingerprint(public_bytes))
    logger.info("wrote node key pair %s (%s)", private_key_path, pair.fingerprint)
    return pair


cli = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@cli.command()
def main(
    out: Annotated[Path, typer.Option("--out", help="Private key path; the public key gets .pub added.")],
    comment: Annotated[
        str | None, typer.Option("--comment", help="Label on the public key line (default: file name).")
    ] = None,
) -> None:
    """Generate this hospital node's authentication key pair (ECDSA P-384, OpenSSH format)."""
    from rich.console import Console

    try:
        pair = generate_key_pair(out, comment=comment)
    except KeyFileExistsError as exc:
        Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    console = Console(soft_wrap=True)
    console.print(f"private key (stays here):          {pair.private_key}")
    console.print(f"public key (send to coordinator):  {pair.public_key}")
    console.print(f"fingerprint (read it out to them): {pair.fingerprint}")


if __name__ == "__main__":
    cli()
