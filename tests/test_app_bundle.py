"""The app bundle (FAB) ships only what runs (issue 22): no docs, tests, fuzz campaign, simulations or CLI.

Built with Flower's own builder, as ``flwr run .`` does; ``fab-include`` in ``[tool.flwr.app]``
decides what goes in (docs/deploy.md gives the size).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from medalloc.node.approved import fab_of_app

REPO = Path(__file__).resolve().parents[1]


def test_the_fab_holds_only_the_code_that_runs() -> None:
    data, name = fab_of_app(REPO)
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops <= {"client", "server", "medalloc_core", "pyproject.toml", "LICENSE", ".info"}, tops
    assert {"client/app.py", "server/app.py", "medalloc_core/privacy/ledger.py"} <= set(names)
    assert not [n for n in names if "/test_" in n or n.startswith(("docs/", "tests/", "fuzz/"))]
    assert len(data) < 2 * 2**20, f"{name}: {len(data):,} bytes"
