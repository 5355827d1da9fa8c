"""Poisoning benchmark: forecast error of honest hospitals, attacked / clean, per strategy, attack and attacker share.

For each strategy the same federation (the project's ServerApp, reply checks and ClientApp,
each node's source release at patient epsilon 1 and its ledger, in-process grid) runs once clean and once per attack and
attacker share, with the same region, seeds and model initialisation. Attackers are honest
nodes wrapped in ``simulations.attacks.AttackMod``: they train, then corrupt their reply.
The error is the pooled WAPE of the final global model's median forecast on the test splits
of the hospitals that were honest in the attacked run, for both runs; the table shows the
ratio attacked / clean (1.00 = the attack changed nothing).

Run ``python -m simulations.benchmarks.poisoning`` (10 hospitals; 10/20/30% attackers;
FedAvg, FedMedian, FedTrimmedAvg, Krum; a NaN attack the checks drop, and a sign-flipped x10
update they cannot see; ``--attacks nan,sign_flip:10,stealthy`` adds one rescaled to just
under the norm bound), ``--quick`` for a 5-hospital smoke run under a minute.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from ..logs import quiet_flower

if TYPE_CHECKING:
    from medalloc_core.rounds import RoundRecord


def _region(folder: Path, hospitals: int, days: int, seed: int) -> list[Path]:
    from medalloc_core.synthetic import RegionConfig, generate_region, write_region

    config = RegionConfig(
        hospitals=hospitals, days=days, seed=seed, min_beds=40, max_beds=200, short_history_fraction=0.0,
        specialty_centres=0, warmup_days=30,
    )  # fmt: skip
    write_region(generate_region(config), folder)
    return sorted(folder.glob("H*.csv"))


def _attack(name: str) -> Any:
    from ..attacks import Attack

    kind, _, factor = name.partition(":")
    return Attack(kind, factor=float(factor)) if factor else Attack(kind)


def run_one(
    files: list[Path], work: Path, keys: dict[str, Any], *, attack: Any = None, attackers: frozenset[int] = frozenset()
) -> tuple[dict[str, np.ndarray], list[RoundRecord]]:
    """One federation over ``files`` (node i = hospital i); returns the final arrays and the round log."""
    from medalloc.client.app import make_client_app
    from medalloc.server.app import run_federation
    from medalloc.server.config import RunConfig

    from ..attacks import AttackMod
    from ..local_grid import LocalGrid, task_identity

    work.mkdir(parents=True)
    # Virtual nodes over the region's files: the research switch for seeded release noise is theirs (a
    # real node refuses it); every run reuses each node's one release, so runs differ only by the attack.
    nodes = {i + 1: {"partition-id": i, "num-partitions": len(files)} for i in range(len(files))}
    mods = [AttackMod(attack, attackers=attackers)] if attack is not None and attackers else []
    run = keys | {"out-dir": str(work / "out"), "simulation-data-dir": str(files[0].parent)}
    grid = LocalGrid(make_client_app(run, mods=mods), nodes)
    with task_identity():
        result = run_federation(grid, RunConfig.from_mapping(run))
    if not result.final_model_written:
        outcomes = [o for r in result.rounds for o in r.outcomes if o.get("status") != "accepted"]
        raise RuntimeError(f"no round aggregated anything in {work.name}: {outcomes[:3]}")
    return result.arrays, result.rounds


def bench(args: argparse.Namespace, work: Path, console: Console) -> list[dict[str, Any]]:
    """Every (strategy, attack, share) cell; the clean run of a strategy is shared by its cells."""
    from medalloc.server.config import RunConfig

    from ..attacks import honest_wape

    files = _region(work / "region", args.hospitals, args.days, args.seed)
    shares = [float(s) for s in args.shares.split(",")]
    counts = {s: max(1, round(s * args.hospitals)) for s in shares}
    # Nested attacker sets (the 10% attacker is among the 20% ones), chosen by seed, not by size.
    order = [int(i) for i in np.random.default_rng(args.seed).permutation(args.hospitals)]
    attacks = [_attack(a) for a in args.attacks.split(",")]
    strategies = args.strategies.split(",")
    base = {
        "num-server-rounds": args.rounds, "min-available-nodes": args.hospitals, "min-train-nodes": args.hospitals,
        "fraction-evaluate": 0.0, "local-epochs": 1, "model": "mlp", "init": "none",
        "history": 14, "horizon": 7, "hidden": 16, "batch-size": 64,
        "lr": 0.05, "seed": args.seed, "trimmed-beta": 0.2, "krum-malicious-nodes": max(counts.values()),
        "simulation-reproducible-noise": True,  # research: the same seed gives the same releases, hence numbers
    }  # fmt: skip
    config = RunConfig.from_mapping(base)
    rows: list[dict[str, Any]] = []
    total = len(strategies) * (1 + len(attacks) * len(shares))
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("federations", total=total)
        for strategy in strategies:
            keys = base | {"strategy": strategy}
            began = time.perf_counter()
            clean, _ = run_one(files, work / f"{strategy}-clean", keys)
            clean_s = time.perf_counter() - began
            progress.advance(task)
            for attack in attacks:
                row: dict[str, Any] = {"strategy": strategy, "attack": attack.label, "cells": {}}
                for share in shares:
                    attackers = frozenset(order[: counts[share]])
                    honest = [f for i, f in enumerate(files) if i not in attackers]
                    began = time.perf_counter()
                    hit, rounds = run_one(
                        files,
                        work / f"{strategy}-{attack.label}-{share}".replace(" ", "_"),
                        keys,
                        attack=attack,
                        attackers=attackers,
                    )
                    outcomes = [o for r in rounds if r.round > 0 for o in r.outcomes if int(o["node"]) - 1 in attackers]
                    clean_err = honest_wape(clean, honest, config)
                    hit_err = honest_wape(hit, honest, config)
                    row["cells"][share] = {
                        "attackers": len(attackers), "clean": clean_err, "attacked": hit_err,
                        "ratio": hit_err / clean_err,
                        "dropped": sum(o["status"] == "dropped" for o in outcomes), "replies": len(outcomes),
                        "seconds": time.perf_counter() - began,
                    }  # fmt: skip
                    progress.advance(task)
                row["clean_s"] = clean_s
                rows.append(row)
            console.print(f"  {strategy}: done")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hospitals", type=int, default=10, help="hospitals in the region (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="federated rounds per run (default 3)")
    parser.add_argument("--days", type=int, default=150, help="days of records per hospital (default 150: small data)")
    parser.add_argument(
        "--strategies", default="fedavg,fedmedian,fedtrimmedavg,krum", help="comma-separated strategy names"
    )
    parser.add_argument(
        "--attacks",
        default="nan,sign_flip:10",
        help="comma-separated attacks, KIND or KIND:FACTOR "
        "(default nan,sign_flip:10; add stealthy for the worst case under the norm bound)",
    )
    parser.add_argument("--shares", default="0.1,0.2,0.3", help="comma-separated attacker shares (default 0.1,0.2,0.3)")
    parser.add_argument("--seed", type=int, default=0, help="region, model and training seed (default 0)")
    parser.add_argument("--quick", action="store_true", help="5 hospitals, FedAvg and FedMedian, sign-flip at 20%%")
    args = parser.parse_args(argv)
    if args.quick:
        args.hospitals, args.strategies, args.attacks, args.shares = 5, "fedavg,fedmedian", "sign_flip:10", "0.2"
    logging.basicConfig(level=logging.ERROR)
    for name in ("medalloc", "medalloc_core"):
        logging.getLogger(name).setLevel(logging.ERROR)
    quiet_flower()
    torch.set_num_threads(1)
    console = Console()
    began = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="medalloc-poisoning-"))
    try:
        rows = bench(args, work, console)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    shares = [float(s) for s in args.shares.split(",")]
    table = Table(
        title=f"Poisoning: honest hospitals' test WAPE, attacked / clean "
        f"({args.hospitals} hospitals, {args.rounds} rounds, seed {args.seed})"
    )
    for name in ("strategy", "attack", "clean WAPE"):
        table.add_column(name, justify="left" if name != "clean WAPE" else "right")
    for share in shares:
        table.add_column(f"{share:.0%} attackers\nratio (WAPE)", justify="right")
    table.add_column("attacker replies\ndropped", justify="right")
    for row in rows:
        cells = [row["cells"][s] for s in shares]
        ratios = [f"{c['ratio']:.2f}x ({c['attacked']:.3f})" for c in cells]
        dropped = f"{sum(c['dropped'] for c in cells)}/{sum(c['replies'] for c in cells)}"
        # clean WAPE differs slightly per share (different honest set): show the largest share's
        table.add_row(row["strategy"], row["attack"], f"{cells[-1]['clean']:.3f}", *ratios, dropped)
    table.caption = (
        "ratio = pooled WAPE of the final global model (median forecast) on the test splits of the hospitals honest in "
        "that run, attacked run / clean run, same region, seeds and initial model; 1.00x = no effect. "
        "clean WAPE: the clean run on the honest hospitals of the largest share. "
        "Attackers train honestly, then corrupt their reply: nan = one NaN weight (the reply checks drop it); "
        "sign_flip xk = global - k x update; stealthy = the flipped update rescaled to norm 99, just under the "
        "default bound of 100 (both accepted by construction). "
        f"Krum assumes f = {max(max(1, round(s * args.hospitals)) for s in shares)} malicious nodes; "
        "FedTrimmedAvg cuts 20% per tail. "
        "Every node: its counts released once at patient epsilon 1 (seeded noise), a privacy ledger, "
        f"1 epoch of a tiny MLP per round; {os.cpu_count()} CPU(s), "
        f"{time.perf_counter() - began:.0f} s in all."
    )
    console.print(table)


if __name__ == "__main__":
    main()
