"""The CLI's tables: ``rich.table.Table`` whose text cells are cleaned of bidirectional controls.

Unit and hospital names come from the hospital's own files; a right-to-left override in one would
reverse how the rest of its row displays (``medalloc_core.display``). Every command builds its
tables from this class.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table as _RichTable
from rich.text import Text

from medalloc_core.display import BIDI_CONTROLS, clean_display

__all__ = ["Table"]


def _clean(cell: Any) -> Any:
    if isinstance(cell, str):
        return clean_display(cell)
    if isinstance(cell, Text) and any(c in cell.plain for c in BIDI_CONTROLS):
        return Text(clean_display(cell.plain), style=cell.style)
    return cell


class Table(_RichTable):
    """A rich table; ``add_row`` cleans every text cell for display."""

    def add_row(self, *renderables: Any, **kwargs: Any) -> None:
        super().add_row(*(_clean(cell) for cell in renderables), **kwargs)
