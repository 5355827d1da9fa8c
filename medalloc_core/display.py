"""Text for people: names from a hospital's files cleaned of bidirectional controls before any page or table.

A unit called ``"icu\\u202egnp.exe"`` (RIGHT-TO-LEFT OVERRIDE) displays reversed from that
character on, in a browser and in a terminal alike, so a page or a table could show a name
other than the one in the file. :func:`clean_display` removes the Unicode bidirectional
formatting characters (embeddings, overrides, isolates and the implicit marks) from text that is
only shown; the data itself (the unit as a key) is never changed.
"""

from __future__ import annotations

import re

__all__ = ["BIDI_CONTROLS", "clean_display"]

# LRE, RLE, PDF, LRO, RLO (U+202A-U+202E); LRI, RLI, FSI, PDI (U+2066-U+2069); LRM, RLM, ALM.
BIDI_CONTROLS = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
_BIDI = re.compile(f"[{BIDI_CONTROLS}]")


def clean_display(text: object) -> str:
    """``str(text)`` without bidirectional formatting characters (for display only)."""
    return _BIDI.sub("", str(text))
