"""The data owner's list of approved apps: the SHA-256 of each Flower App Bundle (FAB) the node may run.

A FAB's hash is what Flower itself calls the app (``run.fab_hash``, the name of the folder it
unpacks into): ``flwr run`` builds the FAB from a source folder deterministically (fixed
timestamps, sorted files), so a hospital that reviewed a release's source gets the same hash
from its own build (``medalloc node approve --app DIR``) as the coordinator submits.

The file (``approved-apps`` in the node config) is TOML, one ``[[app]]`` table per approval::

    [[app]]
    sha256 = "3f5a..."                     # 64 hex digits: the FAB's SHA-256
    name = "medalloc/medalloc 0.1.0"       # publisher/name version, from the app's pyproject
    approved-by = "J. Smith, data protection officer"
    approved-at = "2026-05-01T09:30:00+00:00"
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medalloc_core.atomic import atomic_write_bytes
from medalloc_core.paths import read_regular_text

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_KEYS = ("sha256", "name", "approved-by", "approved-at")


class ApprovalError(ValueError):
    """The approved-apps file cannot be read or holds a malformed entry; the message names the file and entry."""


@dataclass(frozen=True)
class ApprovedApp:
    """One approval: the FAB hash and who approved what, when."""

    sha256: str
    name: str = ""
    approved_by: str = ""
    approved_at: str = ""

    def to_toml(self) -> dict[str, str]:
        return {
            "sha256": self.sha256,
            "name": self.name,
            "approved-by": self.approved_by,
            "approved-at": self.approved_at,
        }


def read_approved(path: Path) -> list[ApprovedApp]:
    """Every approval in ``path``, in file order.

    Raises
    ------
    ApprovalError
        If the file is missing or unreadable, not TOML, or an entry lacks a valid ``sha256``
        or has an unknown key. A node treats this as "nothing is approved".
    """
    path = Path(path)
    try:
        raw = tomllib.loads(read_regular_text(path, limit=16 * 2**20, what="the approved-apps TOML file"))
    except FileNotFoundError:
        raise ApprovalError(f"{path}: no such file; create it with `medalloc node approve`") from None
    except OSError as exc:
        raise ApprovalError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ApprovalError(f"{path}: not valid TOML ({exc})") from None
    unknown = sorted(set(raw) - {"app"})
    if unknown:
        raise ApprovalError(f"{path}: unknown key(s) {unknown}; expected [[app]] tables only")
    entries = raw.get("app", [])
    if not isinstance(entries, list):
        raise ApprovalError(f"{path}: 'app' must be a list of [[app]] tables")
    apps = []
    for number, entry in enumerate(entries, start=1):
        apps.append(_entry(path, number, entry))
    return apps


def _entry(path: Path, number: int, entry: Any) -> ApprovedApp:
    where = f"{path}: [[app]] number {number}"
    if not isinstance(entry, dict):
        raise ApprovalError(f"{where} is not a table")
    unknown = sorted(set(entry) - set(_KEYS))
    if unknown:
        raise ApprovalError(f"{where}: unknown key(s) {unknown}; known: {', '.join(_KEYS)}")
    digest = entry.get("sha256")
    if not isinstance(digest, str) or not _HEX64.match(digest.lower()):
        raise ApprovalError(f"{where}: sha256 must be 64 hexadecimal digits (a FAB's SHA-256), got {digest!r}")
    values = {k: entry.get(k, "") for k in _KEYS[1:]}
    for key, value in values.items():
        if not isinstance(value, str):
            raise ApprovalError(f"{where}: {key} must be text, got {value!r}")
    return ApprovedApp(digest.lower(), values["name"], values["approved-by"], values["approved-at"])


def approved_hashes(path: Path) -> set[str]:
    """The approved FAB hashes (raises ApprovalError like :func:`read_approved`)."""
    return {app.sha256 for app in read_approved(path)}


def add_approved(path: Path, app: ApprovedApp) -> bool:
    """Add ``app`` to the file (created if missing), atomically; False when its hash was approved already."""
    path = Path(path)
    apps = read_approved(path) if path.exists() else []
    if any(a.sha256 == app.sha256 for a in apps):
        return False
    apps.append(app)
    atomic_write_bytes(path, render(apps).encode("utf-8"))
    return True


def render(apps: list[ApprovedApp]) -> str:
    """The file's text: a header comment, then one [[app]] table per approval."""
    import tomli_w

    header = (
        "# Apps this node's data owner approved to run next to the node's data: the SHA-256 of each\n"
        "# Flower App Bundle (FAB). `medalloc node exec` runs nothing else; `medalloc node approve` adds one.\n\n"
    )
    return header + tomli_w.dumps({"app": [a.to_toml() for a in apps]})


def fab_of_app(app_dir: Path) -> tuple[bytes, str]:
    """The FAB ``flwr run`` would submit for the app in ``app_dir``, and the app's ``publisher/name version``.

    Uses Flower's own builder (``flwr.cli.build.build_fab_from_disk``), so the bytes, and the
    hash, are exactly the ones the coordinator's ``flwr run`` sends from the same source.
    """
    from flwr.cli.build import build_fab_from_disk
    from flwr.cli.config_utils import load_and_validate

    app_dir = Path(app_dir).expanduser().resolve()
    fab = build_fab_from_disk(app_dir)
    config, _ = load_and_validate(app_dir / "pyproject.toml", check_module=False)
    name = f"{config['tool']['flwr']['app']['publisher']}/{config['project']['name']} {config['project']['version']}"
    return fab, name


def fab_name(fab: bytes) -> str:
    """``publisher/name version`` read from a FAB's own pyproject.toml ('' if it has none)."""
    import io
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(fab)) as archive:
            config = tomllib.loads(archive.read("pyproject.toml").decode("utf-8"))
        app = config["tool"]["flwr"]["app"]
        return f"{app['publisher']}/{config['project']['name']} {config['project']['version']}"
    except Exception:  # noqa: BLE001 - a name is a convenience; the hash is what is approved
        return ""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
