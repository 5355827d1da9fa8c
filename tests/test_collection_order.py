"""The suite's collection order (tests/conftest.py): each xdist worker's first part starts with its share of the long
modules, checked against xdist's own worksteal scheduler (the one `make test` runs) with recording workers."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from xdist.scheduler.worksteal import WorkStealingScheduling

from tests.conftest import LONGEST_MODULES, balanced_parts, worksteal_parts


class _Worker:
    """What the scheduler needs of a worker: it records the test indices it is sent."""

    shutting_down = False

    def __init__(self, name: str) -> None:
        self.gateway = SimpleNamespace(id=name)
        self.sent: list[int] = []

    def send_runtest_some(self, indices: list[int]) -> None:
        self.sent += indices


def _first_parts(collection: list[str], workers: int) -> list[list[str]]:
    """What xdist's worksteal sends each of ``workers`` idle workers when the run starts."""
    config = SimpleNamespace(getvalue=lambda name: [f"{workers}*popen"] if name == "tx" else None)
    scheduler = WorkStealingScheduling(config)  # type: ignore[arg-type]
    nodes = [_Worker(f"gw{k}") for k in range(workers)]
    for node in nodes:
        scheduler.add_node(node)  # type: ignore[arg-type]
        scheduler.add_node_collection(node, collection)  # type: ignore[arg-type]
    scheduler.schedule()
    return [[collection[i] for i in node.sent] for node in nodes]


def _suite_like() -> dict[str, list[str]]:
    """Modules shaped like the suite: the long ones with a few tests each, many short modules of many tests."""
    modules = {m: [f"{m}::t{i}" for i in range(1 + len(m) % 4)] for m in LONGEST_MODULES}
    modules |= {
        f"tests/test_short_{k}.py": [f"tests/test_short_{k}.py::t{i}" for i in range(k % 9 + 1)] for k in range(200)
    }
    return dict(sorted(modules.items()))  # pytest collects in file order: long and short modules mixed


@pytest.mark.parametrize("workers", [1, 2, 3, 4, 5])
def test_each_worker_starts_with_its_share_of_the_long_modules(workers: int) -> None:
    modules = _suite_like()
    ordered = balanced_parts(modules, LONGEST_MODULES, workers)
    assert sorted(ordered) == sorted(item for group in modules.values() for item in group)
    parts = _first_parts(ordered, workers) if workers > 1 else [ordered]
    assert [len(p) for p in parts] == worksteal_parts(len(ordered), workers)
    assert [item for part in parts for item in part] == ordered  # contiguous, in order: all of it sent

    def module(item: str) -> str:
        return item.split("::", 1)[0]

    shares = []
    for part in parts:
        names = list(dict.fromkeys(module(item) for item in part))
        long = [m for m in names if m in LONGEST_MODULES]
        assert names[: len(long)] == long, names  # the long modules first, then only short ones
        shares.append(sum(LONGEST_MODULES[m] for m in long))
    assert sum(shares) == pytest.approx(sum(LONGEST_MODULES.values()))  # every long module at a part's start
    # Greedy, longest first: no share exceeds an equal split by more than the longest module alone.
    assert max(shares) - sum(shares) / workers <= max(LONGEST_MODULES.values())
    for m in LONGEST_MODULES:  # each long module in one part, its items together and in pytest's order
        where = [ordered.index(item) for item in modules[m]]
        assert where == list(range(where[0], where[0] + len(where)))
        assert sum(bool(set(modules[m]) & set(part)) for part in parts) == 1


def test_a_long_set_larger_than_its_part_keeps_every_item() -> None:
    modules = {"tests/long.py": [f"tests/long.py::t{i}" for i in range(10)], "tests/short.py": ["tests/short.py::t"]}
    ordered = balanced_parts(modules, {"tests/long.py": 100.0}, 3)
    assert ordered == modules["tests/long.py"] + modules["tests/short.py"]
