"""Fixtures for the end-to-end tests: a process harness that stops everything it started."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import ProcessHarness


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[ProcessHarness]:
    """A :class:`ProcessHarness` whose processes are all stopped when the test ends."""
    h = ProcessHarness(tmp_path)
    try:
        yield h
    finally:
        left = h.stop_all()
        assert not left, f"Flower processes still running after teardown: {left}"
