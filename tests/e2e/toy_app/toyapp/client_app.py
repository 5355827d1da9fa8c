"""Toy ClientApp: one gradient step of squared error towards this node's numbers.

The node reads ``data-path`` (one number per line) and appends one line per training
round to ``ledger-path``, standing in for MedAlloc's privacy ledger.
"""

from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


def _data(context: Context) -> np.ndarray:
    return np.loadtxt(Path(str(context.node_config["data-path"])), ndmin=1)


@app.train()
def train(msg: Message, context: Context) -> Message:
    data = _data(context)
    w = msg.content["arrays"].to_numpy_ndarrays()[0]
    lr = float(context.run_config["learning-rate"])
    w = w - lr * 2.0 * (w - data.mean())
    with Path(str(context.node_config["ledger-path"])).open("a", encoding="utf-8") as f:
        f.write(f"run={context.run_id} steps=1\n")
    content = RecordDict(
        {
            "arrays": ArrayRecord([w]),
            "metrics": MetricRecord({"num-examples": len(data)}),
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    data = _data(context)
    w = msg.content["arrays"].to_numpy_ndarrays()[0]
    loss = float(np.mean((data - w[0]) ** 2))
    content = RecordDict({"metrics": MetricRecord({"loss": loss, "num-examples": len(data)})})
    return Message(content=content, reply_to=msg)
