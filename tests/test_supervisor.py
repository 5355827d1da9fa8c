"""``medalloc node start``'s supervisor against real child processes: a SuperLink that keeps refusing to
activate the node (an unknown key) ends it with a message after the patience; a refusal that passes (a node
the SuperLink still counted online) is retried until the SuperNode gets in.

The children are small Python scripts that print what Flower's SuperNode prints on a refusal (its
``Exit Code: 305`` block, exit status 1); the timing constants are shrunk so the test takes seconds.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from medalloc.node import supervisor
from medalloc.node.supervisor import RetryPolicy, supervise

REFUSAL = (
    "Exit Code: 305\\nFailed to initialize the connection to the SuperLink.\\n"
    "[code: 2004] Failed to activate SuperNode."
)


def _supernode(tmp_path: Path, *, refusals: int | None) -> list[str]:
    """A fake SuperNode: counts its starts in a file; refused ``refusals`` times (None: always), then ends cleanly."""
    starts = tmp_path / "starts"
    script = (
        "import pathlib, sys\n"
        f"p = pathlib.Path({str(starts)!r})\n"
        "n = int(p.read_text()) + 1 if p.exists() else 1\n"
        "p.write_text(str(n))\n"
        f"limit = {refusals!r}\n"
        "if limit is None or n <= limit:\n"
        f"    print('{REFUSAL}', flush=True)\n"
        "    sys.exit(1)\n"
        "print('SuperNode ID: 42', flush=True)\n"
    )
    return [sys.executable, "-c", script]


GATE = [sys.executable, "-c", "import time; time.sleep(60)"]


@pytest.fixture(autouse=True)
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "ACTIVATION_PATIENCE_S", 2.0)
    monkeypatch.setattr(supervisor, "REFUSED_BACKOFF_S", 0.3)


def test_an_unknown_key_ends_the_supervisor_with_what_to_do(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    retry = RetryPolicy(first_backoff_s=0.2, max_backoff_s=5.0)
    with caplog.at_level(logging.WARNING, logger="medalloc.node.supervisor"):
        status = supervise(_supernode(tmp_path, refusals=None), GATE, retry=retry, superlink="127.0.0.1:1")
    starts = int((tmp_path / "starts").read_text())
    assert status == 1
    assert 2 <= starts <= 12, starts  # retried within the patience, then stopped: not for ever
    assert "does not know this node's public key" in caplog.text and "Register the key" in caplog.text


def test_a_refusal_that_passes_is_retried_until_the_node_gets_in(tmp_path: Path) -> None:
    retry = RetryPolicy(first_backoff_s=0.2, max_backoff_s=5.0)
    status = supervise(_supernode(tmp_path, refusals=2), GATE, retry=retry, superlink="127.0.0.1:1")
    assert status == 0
    assert int((tmp_path / "starts").read_text()) == 3
