"""Equipment failure risk and the week's service plan: federated DP against what each hospital has alone.

Run: ``python -m simulations.benchmarks.equipment [--hospitals 12 --rounds 20 --noise 3 --seed 0]``.

A synthetic region of fleets (``medalloc_core.equipment.synthetic``) is generated with its
hidden state kept at the planning weeks. The risk model is trained

- federated with device-level DP-SGD: ``--rounds`` rounds of FedAvg, each node ``--local-epochs``
  epochs at noise ``--noise``, charged to its own equipment ledger,
- by each hospital alone with the same DP noise and steps (the same device epsilon) and
  without DP, and on all hospitals' snapshots pooled (no privacy),

and compared with the age rule and the interval rule on every hospital's test period (AUROC,
Brier score, expected calibration error over all test device-days). Then, in ``--weeks``
planning weeks per hospital, each model's service plan, the age rule's (oldest first), the
plan of the true risks and the perfect-foresight oracle get the same technician hours
(``--hours-share`` of the hours servicing the whole fleet once would take) and are judged on
``--worlds`` simulated futures: true failures prevented per technician hour, as ratios.

The federation runs the project's real ServerApp round loop and ClientApp handlers over an
in-process Grid (``simulations.local_grid``), the same code ``medalloc simulate`` and a
deployment run; ``--plots DIR`` writes the reliability diagram.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from medalloc.client.app import make_client_app
from medalloc.server.app import run_federation
from medalloc.server.config import RunConfig
from medalloc_core.equipment.comparisons import (
    compare_plans,
    model_predictions,
    rule_predictions,
    score_predictions,
    train_alone,
    train_pooled,
)
from medalloc_core.equipment.contract import Fleet
from medalloc_core.equipment.features import SnapshotSpec
from medalloc_core.equipment.local import prepare_fleet
from medalloc_core.equipment.model import DeviceDP, RiskModelConfig, RiskTrainConfig, load_risk_model
from medalloc_core.equipment.plots import reliability_plot
from medalloc_core.equipment.synthetic import FleetConfig, generate_fleets, write_fleets
from medalloc_core.privacy.ledger import PrivacyLedger
from medalloc_core.simulation import simulated_ledger_path
from medalloc_core.tasks import get_task

from ..local_grid import LocalGrid, task_identity
from ..logs import quiet_flower

logger = logging.getLogger(__name__)
DELTA = 1e-5


def federated(
    region_dir: Path,
    out: Path,
    *,
    hospitals: int,
    rounds: int,
    local_epochs: int,
    options: dict[str, float | int | bool],
) -> tuple[nn.Module, dict[str, float]]:
    """The federation: the project's ServerApp round loop and ClientApp (one virtual node per fleet) in-process.

    The nodes are simulated ones (``partition-id``): each reads its own fleet folder and keeps
    its own equipment ledger in ``region_dir/ledgers``; the run asks for reproducible noise so
    that the printed figures repeat (a real node refuses that switch).
    """
    keys = {
        "task": "equipment",
        "num-server-rounds": rounds,
        "local-epochs": local_epochs,
        "min-available-nodes": hospitals,
        "min-train-nodes": hospitals,
        "out-dir": str(out),
        "simulation-data-dir": str(region_dir),
        "simulation-epsilon-budget": 1000.0,
        "simulation-delta": DELTA,
        "simulation-reproducible-noise": True,
    } | {f"equipment.{k}": v for k, v in options.items()}
    nodes = {i + 1: {"partition-id": i, "num-partitions": hospitals} for i in range(hospitals)}
    logging.getLogger("medalloc_core.tasks.equipment.task").setLevel(
        logging.ERROR
    )  # one reproducible-noise line per round
    with task_identity():
        run_federation(LocalGrid(make_client_app(keys), nodes), RunConfig.from_mapping(keys), run_id=1)
    task = get_task(keys["task"])
    ledgers = {
        h: simulated_ledger_path(region_dir, task.name, h) for h in map(task.hospital_id_of, task.node_data(region_dir))
    }
    epsilons = {h: PrivacyLedger.load(p).epsilon_spent() for h, p in ledgers.items() if p.exists()}
    return load_risk_model(out).model, epsilons


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join((__doc__ or "").split("\n\n")[0].split()))
    parser.add_argument("--hospitals", type=int, default=12)
    parser.add_argument("--days", type=int, default=730)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=4)
    parser.add_argument("--noise", type=float, default=3.0, help="DP-SGD noise multiplier (device level)")
    parser.add_argument("--clip", type=float, default=0.2, help="per-device gradient clipping bound")
    parser.add_argument("--batch", type=int, default=64, help="expected devices per DP-SGD step")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--hidden", type=int, default=0, help="hidden width (0: logistic regression)")
    parser.add_argument("--weeks", type=int, default=4, help="planning weeks per hospital")
    parser.add_argument("--worlds", type=int, default=200, help="simulated futures per planning week")
    parser.add_argument("--hours-share", type=float, default=0.04)
    parser.add_argument("--plots", type=Path, default=None, help="folder for the reliability diagram")
    args = parser.parse_args()
    torch.set_num_threads(1)
    quiet_flower()
    console = Console(width=140)
    began = time.perf_counter()

    spec = SnapshotSpec()
    fleet_config = FleetConfig(hospitals=args.hospitals, days=args.days, seed=args.seed)
    last = fleet_config.days - 1 - spec.horizon_days
    plan_days = tuple(sorted(last - 35 * k for k in range(args.weeks)))
    region = generate_fleets(fleet_config, keep_states=plan_days)
    locals_ = {
        h.hospital_id: prepare_fleet(Fleet(h.devices, h.events, Path(h.hospital_id)), spec) for h in region.hospitals
    }
    devices = sum(len(h.devices) for h in region.hospitals)
    test_days = next(iter(locals_.values())).dataset.test.dates
    console.print(
        f"{args.hospitals} synthetic hospitals, {devices:,} devices, {args.days} days of logs (seed {args.seed}); "
        f"risk of failure within {spec.horizon_days} days, test period = last {spec.test_days} labelled days "
        f"(to {test_days[last]:%Y-%m-%d})",
        highlight=False,
    )

    config = RiskModelConfig(n_features=spec.n_features, hidden=args.hidden)
    rng = np.random.default_rng(args.seed)
    dp = DeviceDP(noise_multiplier=args.noise, max_grad_norm=args.clip)
    alone = RiskTrainConfig(epochs=args.local_epochs * args.rounds, batch_size=args.batch, lr=args.lr)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    options = {"noise-multiplier": args.noise, "max-grad-norm": args.clip, "batch-size": args.batch, "lr": args.lr}
    options |= {"hidden": args.hidden}
    with tempfile.TemporaryDirectory() as tmp:
        write_fleets(region, Path(tmp) / "region")
        federated_model, epsilons = federated(
            Path(tmp) / "region",
            Path(tmp) / "out",
            hospitals=args.hospitals,
            rounds=args.rounds,
            local_epochs=args.local_epochs,
            options=options,
        )
    timings["federated"] = time.perf_counter() - t
    t = time.perf_counter()
    local_dp = {
        h: train_alone(config, local, train=alone, dp=dp, rng=rng, seed=args.seed) for h, local in locals_.items()
    }
    local_plain = {
        h: train_alone(config, local, train=alone, dp=None, rng=rng, seed=args.seed) for h, local in locals_.items()
    }
    timings["local"] = time.perf_counter() - t
    t = time.perf_counter()
    pooled_train = RiskTrainConfig(epochs=args.local_epochs * args.rounds, batch_size=args.batch * 4, lr=args.lr)
    pooled = train_pooled(config, locals_, train=pooled_train, rng=rng, seed=args.seed)
    timings["pooled"] = time.perf_counter() - t

    models: dict[str, Callable[[str], nn.Module]] = {
        "federated DP": lambda h: federated_model,
        "local only DP": lambda h: local_dp[h],
        "local only (no DP)": lambda h: local_plain[h],
        "pooled (no privacy)": lambda h: pooled,
    }
    predictions = {name: model_predictions(m, locals_) for name, m in models.items()}
    predictions["age rule"] = rule_predictions(locals_, "age")
    predictions["interval rule"] = rule_predictions(locals_, "service")
    eps = max(epsilons.values())
    privacy = {"federated DP": f"{eps:.2f}", "local only DP": f"{eps:.2f}"}
    table = Table(title="Failure within 30 days: all hospitals' test device-days (weekly snapshots)")
    for name in ("method", "AUROC", "Brier", "ECE", "mean p", "base rate", "device epsilon"):
        table.add_column(name, justify="left" if name == "method" else "right")
    scores = {}
    for name, pred in predictions.items():
        s = score_predictions(locals_, pred)["overall"]
        scores[name] = s
        table.add_row(
            name,
            f"{s['auroc']:.3f}",
            f"{s['brier']:.4f}",
            f"{s['ece']:.4f}",
            f"{s['mean_prediction']:.4f}",
            f"{s['base_rate']:.4f}",
            privacy.get(name, "none" if "no " in name else "-"),
        )
    table.caption = (
        f"epsilon per device (a device's whole history) at delta={DELTA:g}, max over nodes; federated: "
        f"{args.rounds} rounds x {args.local_epochs} epochs, noise {args.noise:g}, clip {args.clip:g}; local only DP: "
        "the same noise and steps. ECE: 10 equal-mass bins."
    )
    console.print(table)
    fed, ref = scores["federated DP"], scores["age rule"]
    console.print(
        f"federated DP vs age rule: AUROC {fed['auroc']:.3f} vs {ref['auroc']:.3f}; vs local only DP "
        f"{scores['local only DP']['auroc']:.3f}; vs pooled {scores['pooled (no privacy)']['auroc']:.3f}",
        highlight=False,
    )

    t = time.perf_counter()
    truth = {h.hospital_id: (locals_[h.hospital_id], h) for h in region.hospitals}
    comparison = compare_plans(
        truth,
        {"federated DP model": lambda h: federated_model, "pooled model": lambda h: pooled},
        spec,
        days=plan_days,
        start=fleet_config.start,
        hours_share=args.hours_share,
        worlds=args.worlds,
        seed=args.seed,
    )
    timings["plans"] = time.perf_counter() - t
    table = Table(
        title=(
            f"Service plans: {args.weeks} weeks x {args.hospitals} hospitals, technician hours = "
            f"{args.hours_share:.0%} of a full fleet service per week; truth from {args.worlds} simulated futures"
        )
    )
    for name in ("plan", "failures prevented", "hours used", "per hour", "/ oracle", "/ age rule"):
        table.add_column(name, justify="left" if name == "plan" else "right")
    for name in ("perfect foresight", "true risk", "federated DP model", "pooled model", "age rule"):
        tally = comparison.tallies[name]
        table.add_row(
            name,
            f"{tally.prevented:.1f}",
            f"{tally.hours:.0f}",
            f"{tally.per_hour:.4f}",
            f"{comparison.ratio(name, 'perfect foresight'):.3f}",
            f"{comparison.ratio(name, 'age rule'):.2f}",
        )
    table.caption = (
        "failures prevented: true failures in the next 30 days that the plan's services avoid (mean over futures, "
        "summed over weeks); perfect foresight knows each future; true risk knows the true probabilities"
    )
    console.print(table)
    console.print(
        f"federated DP plan: failures prevented per technician hour = "
        f"{comparison.ratio('federated DP model', 'perfect foresight'):.3f} x the oracle's, "
        f"{comparison.ratio('federated DP model', 'age rule'):.2f} x the age rule's",
        highlight=False,
    )
    if args.plots:
        outcomes = {
            name: (
                np.concatenate([locals_[h].dataset.test.y for h in pred]),
                np.concatenate(list(pred.values())),
            )
            for name, pred in predictions.items()
            if name in ("federated DP", "local only DP", "pooled (no privacy)", "age rule")
        }
        path = reliability_plot(args.plots / "equipment_reliability.png", outcomes)
        console.print(f"wrote {path}", highlight=False)
    timings["total"] = time.perf_counter() - began
    console.print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()), highlight=False)


if __name__ == "__main__":
    main()
