"""Crash-safe file writes: a reader sees the old file or the whole new one, never a part.

The privacy ledger, model files and server checkpoints all go through this one function, so
the guarantee (and its tests) holds in one place.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    Temp file in the same directory, fsync, ``os.replace`` (atomic on POSIX), then fsync the
    directory so the rename itself survives a power cut. Missing parent folders are created.

    Parameters
    ----------
    path
        The file to write.
    data
        Its whole new content.
    mode
        Permission bits of the new file (default 0o644: nothing written this way is secret).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(path.parent)
