"""Crash-safe file writes: a reader sees the old file or the whole new one, never a part.

The privacy ledger, model files and server checkpoints all go through this one function, so
the guarantee (and its tests) holds in one place. A write that fails (a full disk, a
read-only folder) raises :class:`WriteFailed`, an ``OSError`` whose message names the file and
says that the previous file is intact; no temp file is left behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WriteFailed(OSError):
    """A file could not be written (``errno`` as the cause: ``ENOSPC``, ``EROFS``, ``EACCES``...); nothing changed."""


def _failed(path: Path, exc: OSError) -> WriteFailed:
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        reason += f" on the disk holding {path.parent}; free some space"
    message = f"cannot write {path} ({reason}); nothing was changed: the previous {path.name}, if any, is intact"
    return WriteFailed(exc.errno or errno.EIO, message, str(path))


def _stage(path: Path, data: bytes, mode: int) -> str:
    """``data`` in a synced temp file beside ``path`` (removed again if anything fails); its name."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, mode)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    return tmp_name


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
    atomic_write_files({Path(path): data}, mode=mode)


def atomic_write_files(
    files: Mapping[Path, bytes], *, mode: int = 0o644, between: Callable[[], None] | None = None
) -> None:
    """Write several files so that a full disk changes none of them: all are staged (written and
    synced to temp files) before the first is renamed into place.

    A failed write (``ENOSPC`` while staging) leaves every file as it was and raises
    :class:`WriteFailed`. Renames need no space, so once staging succeeded only a crash can
    separate the files; a caller that needs them together across a crash records its intent
    first (``medalloc_core.privacy.transaction``). ``between`` runs after the first rename (tests
    kill the process there).
    """
    staged: list[tuple[str, Path]] = []
    current = Path(".")
    try:
        for path, data in files.items():
            current = Path(path)
            current.parent.mkdir(parents=True, exist_ok=True)
            staged.append((_stage(current, data, mode), current))
        for i, (tmp_name, path) in enumerate(staged):
            current = path
            os.replace(tmp_name, path)
            if i == 0 and between is not None and len(staged) > 1:
                between()
        for directory in {path.parent for _, path in staged}:
            _fsync_dir(directory)
    except OSError as exc:
        for tmp_name, _ in staged:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
        if isinstance(exc, WriteFailed):
            raise
        raise _failed(current, exc) from exc
    except BaseException:
        for tmp_name, _ in staged:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
        raise


def create_exclusive(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Create ``path`` with ``data``, never over an existing file, and never half-made.

    The content is staged and synced in a temp file, then hard-linked to ``path`` (``link`` fails
    if ``path`` exists, as ``O_EXCL`` does): a full disk leaves no empty or partial ``path``.
    Raises ``FileExistsError`` if ``path`` exists, :class:`WriteFailed` if it cannot be written.
    """
    path = Path(path)
    try:
        tmp_name = _stage(path, data, mode)
    except OSError as exc:
        raise _failed(path, exc) from exc
    try:
        os.link(tmp_name, path)
    except FileExistsError:
        raise
    except OSError as exc:
        raise _failed(path, exc) from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
    _fsync_dir(path.parent)


def atomic_savefig(fig: Any, path: Path, **kwargs: Any) -> None:
    """Save a matplotlib figure to ``path`` atomically (rendered in memory, then :func:`atomic_write_bytes`).

    The format comes from ``path``'s suffix, as with ``Figure.savefig``.
    """
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format=Path(path).suffix.lstrip(".") or "png", **kwargs)
    atomic_write_bytes(Path(path), buffer.getvalue())
