"""Small HTML building blocks for the one-page report: escaping, tables, inlined images, the style sheet.

Everything a page needs is inside it: the style sheet is inline, images are ``data:`` URIs
(base64 PNG), there is no script and no external font, so the file opens anywhere, offline,
and can be mailed or archived as one file.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from medalloc_core.display import clean_display
from medalloc_core.paths import read_regular_bytes

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

STYLE = """
:root { --ink: #1d2733; --muted: #5b6776; --line: #d9dee5; --band: #f4f6f9; --accent: #1f5fa8; --bad: #b3261e; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fff;
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { background: #16324f; color: #fff; padding: 18px 32px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 0; color: #cfd8e3; }
nav { position: sticky; top: 0; background: #fff; border-bottom: 1px solid var(--line); padding: 8px 32px; z-index: 1; }
nav a { color: var(--accent); margin-right: 16px; text-decoration: none; font-size: 14px; }
main { max-width: 1180px; margin: 0 auto; padding: 8px 32px 48px; }
section { margin-top: 28px; }
h2 { font-size: 19px; border-bottom: 2px solid var(--line); padding-bottom: 4px; }
h3 { font-size: 16px; margin-bottom: 6px; }
p.note, .caption { color: var(--muted); font-size: 13px; }
table { border-collapse: collapse; margin: 8px 0 4px; font-size: 14px; }
th, td { border-bottom: 1px solid var(--line); padding: 5px 10px; text-align: left; vertical-align: top; }
th { background: var(--band); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.best td { font-weight: 600; }
td.bad { color: var(--bad); font-weight: 600; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 12px 0; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 10px 14px; min-width: 150px;
        background: var(--band); }
.card b { display: block; font-size: 20px; }
.card span { color: var(--muted); font-size: 13px; }
figure { margin: 12px 0 20px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 13px; }
details { margin: 8px 0; }
pre { background: var(--band); padding: 10px; overflow-x: auto; font-size: 12.5px; }
ul.words li { margin-bottom: 4px; }
"""


def esc(value: object) -> str:
    """HTML-escaped text of any value (quotes too: safe inside attributes), bidirectional controls removed."""
    return html.escape(clean_display(value), quote=True)


def number(value: Any, digits: int = 3) -> str:
    """A number as the page shows it: ``digits`` decimals, '–' for missing or not finite."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return "–"
    if not math.isfinite(value):
        return "–"
    return f"{value:.{digits}f}"


_MAX_IMAGE_BYTES = 64 * 2**20


def image(path: Path, alt: str, caption: str = "") -> str:
    """A figure with the PNG at ``path`` inlined as base64; a note instead when it is missing or not a PNG."""
    try:
        data = read_regular_bytes(path, limit=_MAX_IMAGE_BYTES)  # a FIFO or a device is not a figure
    except OSError:
        return f'<p class="note">({esc(alt)}: {esc(Path(path).name)} is not in the results folder)</p>'
    if not data.startswith(PNG_MAGIC):
        return f'<p class="note">({esc(alt)}: {esc(Path(path).name)} is not a PNG image)</p>'
    encoded = base64.b64encode(data).decode("ascii")
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img alt="{esc(alt)}" src="data:image/png;base64,{encoded}">{cap}</figure>'


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    numeric: Sequence[bool] | None = None,
    table_id: str = "",
    row_classes: Sequence[str] | None = None,
) -> str:
    """A table from already-escaped cell HTML (use :func:`cell` for cells with data attributes)."""
    numeric = list(numeric) if numeric is not None else [False] * len(headers)
    head = "".join(f'<th class="{"num" if n else ""}">{esc(h)}</th>' for h, n in zip(headers, numeric))
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{esc(row_classes[i])}"' if row_classes and row_classes[i] else ""
        cells = "".join(
            c if c.startswith("<td") else f'<td class="{"num" if n else ""}">{c}</td>' for c, n in zip(row, numeric)
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    ident = f' id="{esc(table_id)}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def cell(text: str, *, numeric: bool = True, data: Mapping[str, object] | None = None, css: str = "") -> str:
    """One ``<td>`` with escaped text and ``data-*`` attributes (the test reads them back against summary.json)."""
    classes = " ".join(c for c in ("num" if numeric else "", css) if c)
    attrs = "".join(f' data-{esc(k)}="{esc(v)}"' for k, v in (data or {}).items())
    return f'<td class="{classes}"{attrs}>{esc(text)}</td>'


def page(title: str, subtitle: str, nav: Sequence[tuple[str, str]], sections: Sequence[str]) -> str:
    """The whole document."""
    links = "".join(f'<a href="#{esc(anchor)}">{esc(label)}</a>' for anchor, label in nav)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="generator" content="medalloc report"><link rel="icon" href="data:,">'
        f"<title>{esc(title)}</title><style>{STYLE}</style></head>"
        f"<body><header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header>"
        f"<nav>{links}</nav><main>{''.join(sections)}</main></body></html>\n"
    )
