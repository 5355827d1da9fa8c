"""Toy ServerApp: FedAvg over a one-number model; writes metrics.jsonl and the final model."""

import json
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    out = Path(str(cfg["out-dir"]))
    out.mkdir(parents=True, exist_ok=True)
    nodes = int(cfg["min-train-nodes"])
    strategy = FedAvg(
        min_train_nodes=nodes,
        min_evaluate_nodes=nodes,
        min_available_nodes=int(cfg["min-available-nodes"]),
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord([np.zeros(1)]),
        num_rounds=int(cfg["num-server-rounds"]),
    )
    with (out / "metrics.jsonl").open("w", encoding="utf-8") as f:
        for rnd, metrics in sorted(result.evaluate_metrics_clientapp.items()):
            f.write(json.dumps({"round": rnd, **dict(metrics)}) + "\n")
    np.save(out / "final_model.npy", result.arrays.to_numpy_ndarrays()[0])
