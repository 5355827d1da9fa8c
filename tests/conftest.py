"""Suite-wide settings: one torch thread, so results and run times don't depend on the core count.

On a 2-core machine torch's default intra-op threads fight the test's own processes (Ray,
Flower SuperNodes); one thread is both faster here and the same on every machine.
"""

import torch

torch.set_num_threads(1)


# Reset detection keeps one record per machine (medalloc_core.privacy.source_registry): never the
# real one in a test. A session folder for processes started by module fixtures, one per test otherwise.
import os  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402

os.environ["MEDALLOC_STATE_DIR"] = tempfile.mkdtemp(prefix="medalloc-state-")


@pytest.fixture(autouse=True)
def _own_data_source_record(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDALLOC_STATE_DIR", str(tmp_path_factory.mktemp("state")))
