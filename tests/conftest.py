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


# `make test` runs `pytest -n 2 --dist worksteal`: each worker starts on one half of the collection and an idle
# one takes the other's not-yet-started tests from the end of its queue. The real-process tests take minutes each
# and the rest seconds, so the longest modules go first, where only one worker reaches them while the other
# works through the short ones and then takes what remains: the run does not end with one worker alone in a
# long test (with xdist's default `load`, the first worker got all of tests/e2e/ in its first chunk and ran
# them one after another: most of the suite's wall time). Longest first, by the `--durations` of a `-m slow` run
# (seconds, module totals, before the SecAgg+ and weekly e2e got faster); a module keeps its tests together, in
# pytest's order, so a module-scoped fixture is set up once. Then every other module with a slow test, then the
# rest as collected. A module missing from the list only runs later: slower, never wrong.
LONGEST_MODULES = (
    "tests/e2e/test_faults.py",  # 360: four tests on one module-scoped federation
    "tests/e2e/test_deployment.py",  # 281
    "tests/e2e/test_secure_aggregation_e2e.py",  # 232
    "tests/e2e/test_secure_region_e2e.py",  # new: three SuperNodes, one SecAgg+ round
    "tests/test_docs_commands.py",  # 110
    "tests/e2e/test_gateway_slow_clients_e2e.py",  # 108
    "tests/e2e/test_weekly_cycle.py",  # 128 for 3 weeks, 2 weeks now
    "tests/e2e/test_node_rejoin.py",  # 92
    "tests/e2e/test_approved_apps.py",  # 81
    "tests/test_equipment_docs.py",  # 65
    "tests/e2e/test_flwr_run.py",  # 65
    "tests/test_simulation_data_dir.py",  # 60
)


def _module_rank(path: str, has_slow: bool) -> int:
    if path in LONGEST_MODULES:
        return LONGEST_MODULES.index(path)
    return len(LONGEST_MODULES) + (0 if has_slow else 1)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest modules first (see LONGEST_MODULES), each module's tests kept together and in their order."""
    modules: dict[str, list[pytest.Item]] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
    slow = {path for path, group in modules.items() if any(i.get_closest_marker("slow") for i in group)}
    order = sorted(modules, key=lambda path: _module_rank(path, path in slow))  # stable: collection order otherwise
    items[:] = [item for path in order for item in modules[path]]
