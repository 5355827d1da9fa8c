"""Toy ClientApp: one gradient step of squared error towards this node's mean admissions.

It reads the same node config as MedAlloc's ClientApp (``data-path``: a hospital file with
an ``admissions`` column; ``ledger-path``) and appends one JSON line per training round to
the ledger file, standing in for MedAlloc's privacy ledger.
"""

import csv
import json
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


def _admissions(context: Context) -> np.ndarray:
    with Path(str(context.node_config["data-path"])).open(newline="", encoding="utf-8") as f:
        return np.array([float(row["admissions"]) for row in csv.DictReader(f)])


@app.train()
def train(msg: Message, context: Context) -> Message:
    data = _admissions(context)
    w = msg.content["arrays"].to_numpy_ndarrays()[0]
    lr = float(context.run_config["lr"])
    w = w - lr * 2.0 * (w - data.mean())
    with Path(str(context.node_config["ledger-path"])).open("a", encoding="utf-8") as f:
        f.write(json.dumps({"run": context.run_id, "steps": 1}) + "\n")
    content = RecordDict({"arrays": ArrayRecord([w]), "metrics": MetricRecord({"num-examples": len(data)})})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    data = _admissions(context)
    w = msg.content["arrays"].to_numpy_ndarrays()[0]
    loss = float(np.mean((data - w[0]) ** 2))
    content = RecordDict({"metrics": MetricRecord({"eval-loss": loss, "num-examples": len(data)})})
    return Message(content=content, reply_to=msg)
