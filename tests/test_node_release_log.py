"""The node's log at its release: one line that says when it released, what its ledger charged and what is left.

The data owner follows a run from the node's own log (docs/hospital.md); this is the line that tells
them a release happened, without opening the ledger. Run through the ClientApp's own handlers."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from medalloc_core.privacy.ledger import PrivacyLedger
from tests.fed_fixtures import small_region
from tests.release_node import round_reply

LINE = re.compile(
    r"H000: released (\d+) unit-days \(\S+\.\.\S+\), noise multiplier \S+ per STAY; "
    r"ledger: epsilon ([\d.]+) spent of ([\d.]+), ([\d.]+) left \(delta \S+\)"
)


def test_the_release_is_logged_once_with_what_was_spent_and_what_is_left(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = small_region(tmp_path / "region", hospitals=1) / "H000.csv"
    caplog.set_level(logging.INFO, logger="medalloc_core")
    first = round_reply(tmp_path / "node", data, "evaluate")
    assert "metrics" in first, first
    lines = [r.getMessage() for r in caplog.records if LINE.search(r.getMessage())]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]
    released, spent, budget, left = LINE.search(lines[0]).groups()  # type: ignore[union-attr]
    ledger = PrivacyLedger.load(tmp_path / "node" / "ledger.json")
    assert int(released) > 0
    assert float(spent) == pytest.approx(ledger.epsilon_spent(), abs=1e-3) and float(spent) > 0
    assert float(budget) == 4.0 and float(left) == pytest.approx(ledger.remaining(), abs=1e-3)
    assert float(spent) + float(left) == pytest.approx(4.0, abs=2e-3)

    caplog.clear()  # the next round reads the same release: nothing is released or logged again
    assert "metrics" in round_reply(tmp_path / "node", data, "train")
    assert not [r for r in caplog.records if LINE.search(r.getMessage())]
