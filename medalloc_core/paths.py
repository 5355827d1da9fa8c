"""Open only regular files: the one check every command and node makes before it reads a path.

A path a user or a config names may be a FIFO (``open()`` blocks for ever waiting for a writer),
a device (``/dev/zero`` and ``/dev/urandom`` never end, and their ``st_size`` is 0, so a size
check on ``stat`` passes them), a socket (``open()`` fails with an obscure ``ENXIO``) or a folder.
:func:`open_regular` checks what the path is with ``stat`` first, then opens it with
``O_NONBLOCK`` (so a FIFO that appears between the two calls cannot block either) and checks the
opened descriptor again with ``fstat``: what is read is what was checked. Size limits are counted
on the bytes actually read (:func:`read_regular_bytes` reads at most ``limit + 1`` bytes), never
on ``st_size``.

The errors are ``OSError`` subclasses whose ``strerror`` is a one-line message, so every reader
that already turns an ``OSError`` into its own clear error (a contract problem, a corrupt ledger,
a model file error) says what the path is without a change.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "FileTooLarge",
    "NotRegularFile",
    "check_regular",
    "describe_mode",
    "open_regular",
    "read_regular_bytes",
    "read_regular_text",
    "why_not_a_file",
]


class NotRegularFile(OSError):
    """The path exists but is not a regular file (a FIFO, a device, a socket, a folder)."""


class FileTooLarge(OSError):
    """The file holds more bytes than its reader accepts (counted on the bytes read)."""


def describe_mode(mode: int) -> str:
    """What a ``st_mode`` is, in words ("a FIFO (named pipe)", "a character device", ...)."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISREG(mode):
        return "a regular file"
    return "not a regular file"


def why_not_a_file(path: str | os.PathLike[str]) -> str:
    """Why ``path`` is no regular file, in words: "no such file", or what it is ("is a FIFO (named pipe), ...").

    For the message of a caller that found ``Path.is_file()`` false: a FIFO or a device exists, and
    "no such file" would send the operator looking for a file that is there.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "no such file"
    return f"is {describe_mode(mode)}, not a regular file"


def _refuse(path: Path, mode: int, what: str) -> NotRegularFile:
    kind = describe_mode(mode)
    code = errno.EISDIR if stat.S_ISDIR(mode) else errno.EINVAL
    message = f"is {kind}, not a regular file; expected {what}"
    return NotRegularFile(code, message, str(path))


def check_regular(path: str | os.PathLike[str], *, what: str = "a regular file") -> None:
    """Raise :class:`NotRegularFile` unless ``path`` (links followed) is a regular file; never blocks.

    ``FileNotFoundError`` (and other ``OSError``) pass through from ``stat``.
    """
    path = Path(path)
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise _refuse(path, mode, what)


def open_regular(path: str | os.PathLike[str], *, what: str = "a regular file") -> BinaryIO:
    """Open ``path`` for binary reading if, and only if, it is a regular file; never blocks.

    Parameters
    ----------
    path
        The file (a symbolic link to a regular file is fine).
    what
        What the caller expects there, for the message ("a .csv or .parquet file").

    Raises
    ------
    NotRegularFile
        A FIFO, device, socket or folder (checked before opening and again on the open descriptor).
    OSError
        As ``open`` (``FileNotFoundError``, ``PermissionError``, ...).
    """
    path = Path(path)
    check_regular(path, what=what)  # a socket cannot be opened at all; say what it is first
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # replaced between stat and open
            raise _refuse(path, mode, what)
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular_bytes(
    path: str | os.PathLike[str], *, limit: int | None = None, what: str = "a regular file"
) -> bytes:
    """The whole content of a regular file, refusing more than ``limit`` bytes (counted as read).

    Raises
    ------
    FileTooLarge
        The file holds more than ``limit`` bytes (``strerror`` names the limit).
    NotRegularFile, OSError
        As :func:`open_regular`.
    """
    with open_regular(path, what=what) as handle:
        data = handle.read() if limit is None else handle.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise FileTooLarge(errno.EFBIG, f"holds more than the {limit:,} bytes this file may have", str(path))
    return data


def read_regular_text(
    path: str | os.PathLike[str], *, limit: int | None = None, encoding: str = "utf-8", what: str = "a regular file"
) -> str:
    """:func:`read_regular_bytes` decoded (``UnicodeDecodeError`` passes through)."""
    return read_regular_bytes(path, limit=limit, what=what).decode(encoding)
