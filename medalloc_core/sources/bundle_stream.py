"""FHIR Bundles streamed: entries read one at a time, never the whole Bundle in memory.

A Bundle is one JSON document; a hospital's may hold millions of entries and gigabytes. DuckDB
reads a JSON document only whole (its ``maximum_object_size`` must hold the Bundle), so the
Bundle is first split into a temporary NDJSON file, one line per entry, which the engine then
scans like any NDJSON export: line n is entry n, so every problem still names the Bundle's
entry. The split walks the Bundle's top-level object and hands each value to the standard
library's JSON decoder (``json.JSONDecoder.raw_decode``, C speed), writing each entry's own
text (its whitespace folded onto one line), so nothing is re-encoded; memory is one buffer of
at most ``max_entry_bytes`` whatever the file. :func:`bundle_entries` fetches a few entries
by number for the record-by-record explanation (``ijson``, streamed).
"""

from __future__ import annotations

import codecs
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from medalloc_core.paths import open_regular

logger = logging.getLogger(__name__)

#: Bytes read from the Bundle at a time.
_CHUNK = 1 << 22
_SPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
#: What an entry without a ``resource`` object is written as (its number is kept in ``bad_entries``).
_NO_RESOURCE = '{"resource":{}}\n'


class BundleUnavailable(RuntimeError):
    """ijson is not installed."""


class _NotABundle(Exception):
    """The file is not a JSON Bundle the split can read (the record-by-record reader explains)."""


@dataclass
class SplitBundle:
    """A Bundle split into NDJSON (one entry object per line), how many entries, and those without a resource."""

    ndjson: Path
    entries: int
    bad_entries: list[int] = field(default_factory=list)  # 1-based entry numbers
    array: bool = False  # ``ndjson`` is the Bundle's entry array itself (a JSON array), not NDJSON


class _Text:
    """The Bundle's text, decoded incrementally into a buffer that holds at most one value past ``limit``."""

    def __init__(self, handle: IO[bytes], limit: int) -> None:
        self.handle = handle
        self.limit = limit
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.buf = ""
        self.pos = 0
        self.eof = False
        self.base = 0  # bytes of the file before ``buf``

    def offset(self) -> int:
        """The byte offset in the file of the buffer position."""
        return self.base + len(self.buf[: self.pos].encode("utf-8"))

    def more(self) -> None:
        if self.eof:
            raise _NotABundle("ends inside a value")
        block = self.handle.read(_CHUNK)
        self.eof = not block
        self.base = self.offset()
        self.buf = self.buf[self.pos :] + self.decoder.decode(block, final=self.eof)
        self.pos = 0

    def peek(self) -> str:
        """The next character that is not JSON whitespace ('' at the end of the file)."""
        while True:
            match = _SPACE.match(self.buf, self.pos)
            self.pos = match.end() if match else self.pos
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if self.eof:
                return ""
            self.more()

    def expect(self, char: str) -> None:
        if self.peek() != char:
            raise _NotABundle(f"expected {char!r}")
        self.pos += 1

    def value(self) -> tuple[Any, int, int]:
        """The next JSON value, decoded, with its start and end in the buffer."""
        self.peek()
        while True:
            try:
                obj, end = _DECODER.raw_decode(self.buf, self.pos)
            except ValueError:
                obj, end = None, -1
            if end - self.pos > self.limit:
                raise _NotABundle(f"a value over {self.limit:,} characters")
            if end >= 0 and (end < len(self.buf) or self.eof):  # a number at the buffer's end may go on
                start, self.pos = self.pos, end
                return obj, start, end
            if len(self.buf) - self.pos > self.limit:
                raise _NotABundle(f"a value over {self.limit:,} bytes")
            self.more()


def _ijson() -> Any:
    try:
        import ijson
    except ImportError as exc:  # pragma: no cover - part of the fhir extra
        raise BundleUnavailable("reading FHIR Bundles needs ijson: pip install 'medalloc[fhir]'") from exc
    return ijson


#: How a Bundle whose entry array comes last ends: the array's ``]``, the Bundle's ``}``.
_TAIL = re.compile(rb"\][ \t\n\r]*\}[ \t\n\r]*\Z")


def entry_array(path: Path, out: Path, *, max_entry_bytes: int) -> SplitBundle | None:
    """Copy the Bundle's ``entry`` array, byte for byte, to ``out`` (a JSON array the engine streams).

    The fast path, taken when the Bundle says ``"resourceType": "Bundle"`` before its
    ``entry`` array and ends with it (as exporters write it): only the few keys before the
    array are decoded here; the copy costs a file read, nothing per entry. Element n of the
    array is entry n. None otherwise (:func:`split_bundle` then walks the whole Bundle).
    """
    size = path.stat().st_size
    with open_regular(path, what="a FHIR Bundle (.json)") as handle:
        try:
            text = _Text(handle, max_entry_bytes)
            text.expect("{")
            kind: Any = None
            while text.peek() not in ("}", ""):
                key, _, _ = text.value()
                text.expect(":")
                if key == "entry":
                    if kind != "Bundle" or text.peek() != "[":
                        return None
                    start = text.offset()
                    break
                value, _, _ = text.value()
                if key == "resourceType":
                    kind = value
                text.expect(",")
            else:
                return None
        except (_NotABundle, UnicodeDecodeError):
            return None
        handle.seek(max(start, size - 4096))
        tail = handle.read()
        found = _TAIL.search(tail)
        if found is None:
            return None
        end = size - len(tail) + found.start() + 1  # through the array's "]"
        handle.seek(start)
        left = end - start
        with out.open("wb") as sink:
            while left > 0:
                block = handle.read(min(left, _CHUNK))
                if not block:
                    return None
                sink.write(block)
                left -= len(block)
    return SplitBundle(out, 0, array=True)


def split_bundle(path: Path, out: Path, *, max_entry_bytes: int) -> SplitBundle | None:
    """Write each entry of the Bundle at ``path`` as one line of ``out``.

    Returns None when the file is not a JSON Bundle with at least one entry, is not JSON
    somewhere, or holds a value over ``max_entry_bytes``: the record-by-record reader then says
    what is wrong, in its words. An entry that is not an object with a ``resource`` object is
    written as ``{"resource":{}}`` (its line kept, so numbering stays the Bundle's) and listed
    in ``bad_entries``.
    """
    split = SplitBundle(out, 0)
    kind: Any = None
    try:
        with open_regular(path, what="a FHIR Bundle (.json)") as handle, out.open("w", encoding="utf-8") as sink:
            text = _Text(handle, max_entry_bytes)
            text.expect("{")
            while text.peek() != "}":
                key, _, _ = text.value()
                text.expect(":")
                if key == "entry":
                    text.expect("[")
                    while text.peek() != "]":
                        if split.entries:
                            text.expect(",")
                        entry, start, end = text.value()
                        split.entries += 1
                        if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
                            # JSON allows no raw line break inside a string: folding them keeps the text exact.
                            sink.write(text.buf[start:end].replace("\n", " ").replace("\r", " "))
                            sink.write("\n")
                        else:
                            split.bad_entries.append(split.entries)
                            sink.write(_NO_RESOURCE)
                    text.expect("]")
                else:
                    value, _, _ = text.value()
                    if key == "resourceType":
                        kind = value
                if text.peek() == ",":
                    text.pos += 1
                elif text.peek() != "}":
                    raise _NotABundle("expected ',' or '}'")
            text.expect("}")
            if text.peek() != "":
                raise _NotABundle("text after the Bundle")
    except (_NotABundle, UnicodeDecodeError) as exc:
        logger.debug("%s cannot be split (%s); the record-by-record reader explains", path, exc)
        return None
    return split if kind == "Bundle" and split.entries else None


def bundle_entries(path: Path, only: set[int]) -> Iterator[tuple[int, Any]]:
    """(entry number, entry) of the wanted entries (1-based), streamed; stops after the last wanted."""
    ijson = _ijson()
    last = max(only, default=0)
    with open_regular(path, what="a FHIR Bundle (.json)") as handle:
        for number, entry in enumerate(ijson.items(handle, "entry.item", use_float=True), start=1):
            if number in only:
                yield number, entry
            if number >= last:
                return
