"""Crash-safe file writes: a reader sees the old file or the whole new one, never a part.

The privacy ledger, model files and server checkpoints all go through this one function, so
the guarantee (and its tests) holds in one place.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any


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


def atomic_savefig(fig: Any, path: Path, **kwargs: Any) -> None:
    """Save a matplotlib figure to ``path`` atomically (rendered in memory, then :func:`atomic_write_bytes`).

    The format comes from ``path``'s suffix, as with ``Figure.savefig``.
    """
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format=Path(path).suffix.lstrip(".") or "png", **kwargs)
    atomic_write_bytes(Path(path), buffer.getvalue())
