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
from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402

from tests import pg_server  # noqa: E402

os.environ["MEDALLOC_STATE_DIR"] = tempfile.mkdtemp(prefix="medalloc-state-")


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pg_server.PostgresServer]:
    """A throwaway PostgreSQL cluster for a module's tests (skipped where no PostgreSQL is installed)."""
    reason = pg_server.unavailable_reason()
    if reason:
        pytest.skip(reason)
    with pg_server.postgres_server(tmp_path_factory.mktemp("pg")) as server:
        yield server


@pytest.fixture(autouse=True)
def _own_data_source_record(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDALLOC_STATE_DIR", str(tmp_path_factory.mktemp("state")))


# `make test` runs `pytest -n 4 --dist worksteal`: xdist's worksteal gives each of the N workers one contiguous part
# of the collection (xdist/scheduler/worksteal.py, check_schedule: each idle worker in turn gets len(pending) // the
# workers left, in order) and an idle worker takes a busy one's not-yet-started tests from the *end* of its queue.
# The real-process tests take minutes each and the rest seconds, so where they sit decides the wall time: all at the
# front (the first part) had one worker run every one of them in a row while the other ran out of short tests (1486 s
# of a 1486 s run). So the long modules are split into N sets of about equal time, and each part of the collection
# starts with one set: every worker starts on minutes-long tests, and the short ones, at the end of each part, are
# what stealing balances. More workers than the 2 cores: the real-process tests mostly wait (process starts, Flower's
# pulls, heartbeats, round timeouts), and at -n 2 the cores were 60 % busy. Seconds are module totals (setup
# included) from a fresh-clone `make test --durations=30` at -n 2 (2 cores, pytest 1390 s), less what a test lost
# since, measured side by side with the test before: the toy deployment 33 s (its refused node starts first: 232 ->
# 199 s), the weekly cycle 27 s (its restarted node comes back during the hospitals' Monday: 290 -> 263 s). A module
# whose other tests were not among that run's 30 slowest (their time unknown) keeps its earlier figure where that is
# larger. A module keeps its tests together, in pytest's order, so a module-scoped fixture is set up once. A module
# missing from the list runs among the short ones: slower, never wrong.
LONGEST_MODULES: dict[str, float] = {
    "tests/e2e/test_weekly_cycle.py": 261,  # through the gateway since stop 28 (912 s alone at load 11-16)
    "tests/e2e/test_faults.py": 305,
    "tests/e2e/test_deployment.py": 187,
    "tests/e2e/test_toy_deployment.py": 127,
    "tests/test_docs_commands.py": 70,  # 150 s less its measured CPU cut (setup in process, Opacus when used: 0.45x)
    "tests/e2e/test_secure_aggregation_e2e.py": 125,
    "tests/e2e/test_node_rejoin.py": 91,
    "tests/e2e/test_approved_apps.py": 67,
    "tests/test_equipment_docs.py": 60,
    "tests/test_simulation_data_dir.py": 60,
    "tests/e2e/test_secure_region_e2e.py": 54,
    "tests/test_tasks.py": 50,
    "tests/e2e/test_flwr_run.py": 50,
    "tests/test_sources_federation.py": 43,
    "tests/test_report.py": 40,
}


def worksteal_parts(total: int, workers: int) -> list[int]:
    """The sizes of the contiguous parts xdist's worksteal first sends its workers, in order (``check_schedule``:
    each idle worker in turn gets ``len(pending) // workers_left``)."""
    sizes = []
    for left in range(workers, 0, -1):
        sizes.append((total - sum(sizes)) // left)
    return sizes


def balanced_parts(modules: dict[str, list], seconds: dict[str, float], workers: int) -> list:
    """The items ordered so that each of the ``workers`` contiguous parts that worksteal sends starts with long modules
    of about equal total time (``seconds``), the short modules after them, each module's items together."""
    long = sorted((m for m in modules if m in seconds), key=lambda m: -seconds[m])
    sets: list[list[str]] = [[] for _ in range(max(1, workers))]
    for module in long:  # greedy: the next longest to the lightest set
        lighter = min(sets, key=lambda chosen: sum(seconds[m] for m in chosen))
        lighter.append(module)
    heads = [[item for m in chosen for item in modules[m]] for chosen in sets]
    rest = [item for m, group in modules.items() if m not in seconds for item in group]
    sizes = worksteal_parts(sum(map(len, heads)) + len(rest), len(sets))
    fills = [size - len(head) for head, size in zip(heads, sizes, strict=True)]
    if min(fills) < 0:  # a set longer than its part: the parts cannot each start with one
        return [item for head in heads for item in head] + rest
    ordered = []
    for head, fill in zip(heads, fills, strict=True):
        ordered += head + rest[:fill]
        rest = rest[fill:]
    return ordered + rest


def _workers() -> int:
    """How many xdist workers run the collection (each worker's environment says), 1 without xdist."""
    return int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each worker's part of the collection starts with long modules of about equal time (see LONGEST_MODULES)."""
    modules: dict[str, list[pytest.Item]] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
    items[:] = balanced_parts(modules, LONGEST_MODULES, _workers())
