"""The CLI's standard streams, cleaned of bidirectional controls on the way to the terminal.

Unit and hospital names come from the hospital's own files, and a command prints them in many
places besides its tables: a plan's reasons, an explanation's words, a warning logged by the
loader, an error message. A right-to-left override in one reverses how the rest of the line
displays (``medalloc_core.display``). Wrapping ``sys.stdout`` and ``sys.stderr`` once, when a
command starts, cleans all of them (rich consoles and logging's handler look the stream up there)
without each print having to remember; files the command writes keep the names as they are.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from medalloc_core.display import clean_display

__all__ = ["CleanStream", "clean_standard_streams"]


class CleanStream:
    """A text stream that writes through to ``stream`` with bidirectional controls removed."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        if not isinstance(text, str):  # bytes: the stream's own answer (click probes with write(b""))
            return self._stream.write(text)
        self._stream.write(clean_display(text))
        return len(text)  # what the caller handed over, as TextIO.write promises

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, flush, encoding, buffer, ...
        return getattr(self._stream, name)


def clean_standard_streams() -> None:
    """Wrap ``sys.stdout`` and ``sys.stderr`` in :class:`CleanStream` (once; a second call changes nothing)."""
    if not isinstance(sys.stdout, CleanStream):
        sys.stdout = CleanStream(sys.stdout)
    if not isinstance(sys.stderr, CleanStream):
        sys.stderr = CleanStream(sys.stderr)
