"""Before every run, the app folder Flower installed is compared, file by file, with the approved FAB.

``flwr-clientapp`` unpacks a FAB into ``$FLWR_HOME/apps/<publisher>.<name>.<version>.<hash[:8]>``
and, when that folder exists, reuses it without a look (``flwr/cli/install.py``,
``validate_and_install``): an edited or torn install kept running, and the folder name holds only
32 bits of the hash. ``medalloc node approve --app/--fab`` therefore records the approved FAB's
manifest (every file's SHA-256, keyed by the FAB's full SHA-256) beside the approved list, in
``<approved-apps>.d/<sha256>.json``; before each launch the gate (``medalloc.node.gate``)
compares every installed folder of that hash prefix with it and refuses a run whose folder has a
file changed, added or missing. An app approved by ``--sha256`` alone has no manifest: its
installed folder is removed before each launch, so Flower installs it afresh from the FAB whose
SHA-256 the SuperNode verified.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import zipfile
from pathlib import Path

from medalloc_core.atomic import atomic_write_bytes
from medalloc_core.paths import read_regular_bytes

logger = logging.getLogger(__name__)

__all__ = ["check_installed", "fab_manifest", "installed_folders", "manifest_path", "save_manifest"]

_HASH_PREFIX = 8  # flwr.common.constant.FAB_HASH_TRUNCATION
_MAX_MANIFEST_BYTES = 16 * 2**20


def fab_manifest(data: bytes) -> dict[str, str]:
    """``path -> sha256`` of every file a FAB installs (its ``.info/`` record is not installed)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {
            info.filename: hashlib.sha256(archive.read(info)).hexdigest()
            for info in archive.infolist()
            if not info.is_dir() and not info.filename.startswith(".info/")
        }


def manifest_path(approved_apps: Path, sha256: str) -> Path:
    """Where the manifest of the approved FAB ``sha256`` is kept: ``<approved-apps>.d/<sha256>.json``."""
    approved_apps = Path(approved_apps)
    return approved_apps.with_name(approved_apps.name + ".d") / f"{sha256}.json"


def save_manifest(approved_apps: Path, sha256: str, data: bytes) -> Path:
    """Record the manifest of the FAB ``data`` (whose SHA-256 is ``sha256``); returns its path."""
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError("the FAB's bytes do not hash to the approved sha256")
    path = manifest_path(approved_apps, sha256)
    body = {"fab-sha256": sha256, "files": fab_manifest(data)}
    atomic_write_bytes(path, (json.dumps(body, indent=1, sort_keys=True) + "\n").encode())
    return path


def flwr_home() -> Path:
    """Flower's home folder: ``$FLWR_HOME`` or ``~/.flwr`` (``flwr.common.config.get_flwr_dir``)."""
    return Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr")


def installed_folders(fab_hash: str, home: Path | None = None) -> list[Path]:
    """Every folder Flower would reuse for a FAB of this hash (``*.<hash[:8]>`` under ``apps/``)."""
    apps = (home or flwr_home()) / "apps"
    if not apps.is_dir():
        return []
    return sorted(p for p in apps.glob(f"*.{fab_hash[:_HASH_PREFIX]}") if p.is_dir() or p.is_symlink())


def _files(folder: Path) -> dict[str, Path]:
    """Every entry under ``folder`` but Python's byte-code caches, by relative path."""
    out: dict[str, Path] = {}
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if "__pycache__" in rel.parts or path.suffix == ".pyc":
            continue
        if path.is_dir() and not path.is_symlink():
            continue
        out[rel.as_posix()] = path
    return out


def _drop_byte_code(folder: Path) -> None:
    """Remove Python's byte-code caches from an installed app: a planted ``.pyc`` would run instead of its checked
    source (Python trusts a cache whose header names the source's time and size). The warm launcher's processes
    keep theirs in the node's own folder (``medalloc.node.warm``); a process Flower starts compiles afresh."""
    for root, dirs, files in os.walk(folder, topdown=False):  # never into a linked folder
        inside_cache = "__pycache__" in Path(root).relative_to(folder).parts
        for name in files:
            if inside_cache or name.endswith(".pyc"):
                with contextlib.suppress(FileNotFoundError):  # another process's cache, gone meanwhile
                    os.unlink(os.path.join(root, name))
        for name in dirs:
            path = os.path.join(root, name)
            if not (inside_cache or name == "__pycache__"):
                continue
            with contextlib.suppress(FileNotFoundError, OSError):  # OSError: a file written into it meanwhile
                if os.path.islink(path):
                    os.unlink(path)
                else:
                    os.rmdir(path)
                logger.debug("removed the byte-code cache %s from the installed app", path)


def _differences(folder: Path, expected: dict[str, str]) -> list[str]:
    if folder.is_symlink():
        return ["the folder is a symbolic link"]
    found = _files(folder)
    problems = [f"{name} added" for name in sorted(set(found) - set(expected))]
    problems += [f"{name} missing" for name in sorted(set(expected) - set(found))]
    for name in sorted(set(found) & set(expected)):
        path = found[name]
        try:
            actual = hashlib.sha256(read_regular_bytes(path)).hexdigest()
        except OSError as exc:
            problems.append(f"{name} unreadable ({exc.strerror or exc})")
            continue
        if actual != expected[name]:
            problems.append(f"{name} changed")
    return problems


def check_installed(fab_hash: str, approved_apps: Path, home: Path | None = None) -> str | None:
    """None when every installed copy of the app matches the approved FAB (or none exists); else why not.

    Without a manifest (an approval by hash alone) the installed copies are removed instead, so
    that Flower installs the app again from the verified FAB.
    """
    folders = installed_folders(fab_hash, home)
    if not folders:
        return None
    path = manifest_path(approved_apps, fab_hash)
    if not path.exists():
        for folder in folders:
            logger.info("app %s approved by hash alone: removing its installed copy %s (reinstalled from the FAB)",
                        fab_hash[:12], folder)  # fmt: skip
            if folder.is_symlink():
                folder.unlink()
            else:
                shutil.rmtree(folder)
        return None
    try:
        body = json.loads(read_regular_bytes(path, limit=_MAX_MANIFEST_BYTES))
        expected = {str(k): str(v) for k, v in body["files"].items()}
        if body.get("fab-sha256") != fab_hash:
            raise ValueError(f"it describes FAB {body.get('fab-sha256')!r}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"the manifest {path} of the approved app cannot be read ({exc}); approve the app again"
    for folder in folders:
        if not folder.is_symlink():
            _drop_byte_code(folder)
        problems = _differences(folder, expected)
        if problems:
            shown = ", ".join(problems[:5]) + (f" and {len(problems) - 5} more" if len(problems) > 5 else "")
            return (
                f"its installed copy {folder} differs from the approved FAB ({shown}); remove that folder "
                "(the node then installs the approved app again) or find out who changed it"
            )
    return None
