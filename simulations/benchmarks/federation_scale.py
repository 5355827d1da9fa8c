"""Federation scale benchmark: startup, time per round and peak memory for 10, 100, 1,000 simulated hospitals.

For each size the same federation (the project's ServerApp and ClientApp, DP-SGD and ledger
on every node, a tiny model and tiny data per hospital) runs twice, side by side:

- on Flower's Simulation Engine (Ray backend, one virtual node per hospital), and
- in a plain in-process loop (``simulations.local_grid.LocalGrid``): the same messages, the
  same ClientApp work, no transport, no scheduler.

The orchestration overhead is the ratio of the two per-round times. Peak memory is the
largest summed RSS of this process and every process under it (Ray's raylet and workers).

Run ``python -m simulations.benchmarks.federation_scale`` (10 and 100 hospitals),
``--sizes 10,100,1000`` for the full sweep, ``--quick`` for a 5-hospital smoke run.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from rich.console import Console
from rich.table import Table

from ..logs import quiet_flower

if TYPE_CHECKING:
    from medalloc_core.rounds import RoundRecord


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(children.get(p, []))
    return out


def _rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total / 1024


class PeakMemory:
    """Samples the summed RSS of this process tree every ``interval`` seconds; ``peak_mb`` is the maximum seen."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, _rss_mb(_descendants(os.getpid())))
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _region(folder: Path, hospitals: int, days: int) -> None:
    from medalloc_core.synthetic import RegionConfig, generate_region, write_region

    config = RegionConfig(
        hospitals=hospitals,
        days=days,
        seed=0,
        min_beds=30,
        max_beds=80,
        short_history_fraction=0.0,
        specialty_centres=0,
        warmup_days=30,
    )
    write_region(generate_region(config), folder)


def _keys(region: Path, out: Path, hospitals: int, rounds: int) -> dict[str, Any]:
    return {
        "simulation-data-dir": str(region),
        "out-dir": str(out),
        "num-server-rounds": rounds,
        "min-available-nodes": hospitals,
        "min-train-nodes": hospitals,
        "fraction-evaluate": 0.0,
        "model": "mlp",  # a small MLP from seeded weights at lr 0.01: what this benchmark has always timed
        "init": "none",
        "lr": 0.01,
        "history": 14,
        "horizon": 7,
        "hidden": 16,
        "batch-size": 64,
        "local-epochs": 1,
        "simulation-epsilon-budget": 1000.0,
    }


def _fresh_copy(region: Path, into: Path) -> Path:
    """The same hospital files with empty ledgers, so both runs spend from zero."""
    into.mkdir(parents=True)
    for path in region.glob("H*.csv"):
        shutil.copy(path, into / path.name)
    return into


def bench(hospitals: int, rounds: int, days: int, work: Path) -> dict[str, float]:
    """Run one size on the Simulation Engine and in the plain loop; return the measurements."""
    from medalloc.client.app import make_client_app
    from medalloc.server.app import run_federation
    from medalloc.server.config import RunConfig

    from ..local_grid import LocalGrid, task_identity
    from ..runner import simulate_federation

    base = work / f"region-{hospitals}"
    began = time.perf_counter()
    _region(base, hospitals, days)
    generate_s = time.perf_counter() - began

    # --- Flower's Simulation Engine ------------------------------------------------------
    region = _fresh_copy(base, work / f"sim-{hospitals}")
    keys = _keys(region, work / f"sim-out-{hospitals}", hospitals, rounds)
    seen: list[tuple[float, RoundRecord]] = []
    started = time.perf_counter()
    with PeakMemory() as memory:
        simulate_federation(keys, hospitals, on_round=lambda r: seen.append((time.perf_counter(), r)))
    total = time.perf_counter() - started
    # Ray starts its actors lazily, inside round 1: steady state is round 2 on, and startup is
    # everything before round 1 would have ended at the steady pace.
    steady = [r.seconds or 0.0 for _, r in seen[1:]] or [seen[0][1].seconds or 0.0]
    sim_round = sum(steady) / len(steady)
    startup = seen[0][0] - started - sim_round

    # --- the same work in a plain loop ---------------------------------------------------
    region = _fresh_copy(base, work / f"loop-{hospitals}")
    keys = _keys(region, work / f"loop-out-{hospitals}", hospitals, rounds)
    grid = LocalGrid(
        make_client_app(keys), {i + 1: {"partition-id": i, "num-partitions": hospitals} for i in range(hospitals)}
    )
    started = time.perf_counter()
    with task_identity():
        result = run_federation(grid, RunConfig.from_mapping(keys))
    loop_total = time.perf_counter() - started
    loop_steady = [r.seconds or 0.0 for r in result.rounds[1:]] or [result.rounds[0].seconds or 0.0]
    loop_round = sum(loop_steady) / len(loop_steady)
    return {
        "hospitals": hospitals,
        "rounds": rounds,
        "generate_s": generate_s,
        "startup_s": startup,
        "sim_round_s": sim_round,
        "sim_total_s": total,
        "loop_round_s": loop_round,
        "loop_total_s": loop_total,
        "overhead": sim_round / loop_round,
        "peak_mb": memory.peak_mb,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        default="10,100",
        help="comma-separated hospital counts (default 10,100; add 1000 for the full sweep)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="federated rounds per run (default 3, at least 2)")
    parser.add_argument("--days", type=int, default=100, help="days of records per hospital (default 100: tiny data)")
    parser.add_argument("--quick", action="store_true", help="3 hospitals, 2 rounds: a smoke run")
    args = parser.parse_args(argv)
    sizes = [3] if args.quick else [int(s) for s in args.sizes.split(",")]
    rounds = 2 if args.quick else max(2, args.rounds)
    logging.basicConfig(level=logging.ERROR)
    quiet_flower()  # Flower's own INFO lines would bury the display
    torch.set_num_threads(1)
    console = Console()
    rows = []
    with tempfile.TemporaryDirectory(prefix="medalloc-scale-") as tmp:
        for n in sizes:
            console.print(f"[bold]{n} hospitals[/], {rounds} round(s) ...")
            rows.append(bench(n, rounds, args.days, Path(tmp)))
    table = Table(
        title=f"Federation scale on {os.cpu_count()} CPU(s): "
        "Flower Simulation Engine (Ray) vs the same work in a plain loop"
    )
    for name in (
        "hospitals",
        "startup s",
        "s / round (Flower)",
        "s / round (plain loop)",
        "overhead ratio",
        "peak memory MB",
        "total s (Flower)",
    ):
        table.add_column(name, justify="right")
    for r in rows:
        table.add_row(
            str(r["hospitals"]),
            f"{r['startup_s']:.1f}",
            f"{r['sim_round_s']:.2f}",
            f"{r['loop_round_s']:.2f}",
            f"{r['overhead']:.2f}x",
            f"{r['peak_mb']:.0f}",
            f"{r['sim_total_s']:.1f}",
        )
    table.caption = (
        "Each node: DP-SGD (1 epoch, tiny MLP) + privacy-ledger spend per round, ~100 days of data. "
        "startup = time to the end of round 1 minus one steady round "
        "(Ray, actors, ServerApp; actors start inside round 1). "
        "s / round = mean of rounds 2+. "
        "overhead ratio = Flower s/round / plain-loop s/round (both run the same ClientApp code; Ray runs "
        "one node per CPU at a time, the plain loop one node after another, so below 1 means parallelism won). "
        "peak memory = summed RSS of this process and its children (Ray)."
    )
    console.print(table)


if __name__ == "__main__":
    main()
