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


# `make test` runs `pytest -n 2 --dist worksteal`: xdist's worksteal gives each worker one contiguous half of the
# collection (xdist/scheduler/worksteal.py: the pending list split evenly, in order) and an idle worker takes the
# other's not-yet-started tests from the *end* of its queue. The real-process tests take minutes each and the rest
# seconds, so where they sit decides the wall time: all at the front (the first half) had one worker run every
# one of them in a row while the other ran out of short tests (1486 s of a 1486 s run). So the long modules are
# split into two sets of about equal time, and each half of the collection starts with one set: both workers start
# on minutes-long tests, and the short ones, at the end of each half, are what stealing balances. Seconds are
# module totals from a fresh-clone `make test --durations` (2 cores); a module keeps its tests together, in
# pytest's order, so a module-scoped fixture is set up once. A module missing from the list runs among the short
# ones: slower, never wrong. The two deployment modules' figures are the last run's, scaled by each test's time
# alone after / before the shared toy deployment (tests/e2e/test_toy_deployment.py now holds the toy test and the
# slow-uploads test of tests/e2e/test_gateway_slow_clients_e2e.py on one deployment): toy + gateway (244 + 139) x
# 387 / 654 s, MedAlloc's own (427 - 244) x 778 / 919 s.
LONGEST_MODULES: dict[str, float] = {
    "tests/e2e/test_toy_deployment.py": 227,
    "tests/e2e/test_deployment.py": 155,
    "tests/e2e/test_faults.py": 305,
    "tests/test_docs_commands.py": 150,
    "tests/e2e/test_secure_aggregation_e2e.py": 147,
    "tests/e2e/test_weekly_cycle.py": 350,  # through the gateway since stop 28 (912 s alone at load 11-16)
    "tests/e2e/test_node_rejoin.py": 88,
    "tests/test_sources_federation.py": 60,
    "tests/e2e/test_secure_region_e2e.py": 55,
    "tests/test_equipment_docs.py": 55,
    "tests/e2e/test_approved_apps.py": 50,
    "tests/test_tasks.py": 50,
    "tests/e2e/test_flwr_run.py": 50,
    "tests/test_simulation_data_dir.py": 60,
    "tests/test_report.py": 40,
}


def two_halves(modules: dict[str, list], seconds: dict[str, float]) -> list:
    """The items ordered so that each contiguous half starts with long modules of about equal total time."""
    long = sorted((m for m in modules if m in seconds), key=lambda m: -seconds[m])
    sets: tuple[list[str], list[str]] = ([], [])
    for module in long:  # greedy: the next longest to the lighter set
        lighter = min(sets, key=lambda chosen: sum(seconds[m] for m in chosen))
        lighter.append(module)
    first = [item for m in sets[0] for item in modules[m]]
    second = [item for m in sets[1] for item in modules[m]]
    rest = [item for m, group in modules.items() if m not in seconds for item in group]
    total = len(first) + len(second) + len(rest)
    fill = total // 2 - len(first)  # worksteal sends the first worker pending[: total // 2]
    if fill < 0 or fill > len(rest):
        return first + second + rest
    return first + rest[:fill] + second + rest[fill:]


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each half of the collection starts with long modules of about equal time (see LONGEST_MODULES)."""
    modules: dict[str, list[pytest.Item]] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
    items[:] = two_halves(modules, LONGEST_MODULES)
