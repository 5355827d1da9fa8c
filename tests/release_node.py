"""One round of a real forecasting node (the ClientApp's own handlers), for tests that kill it mid-release.

``python -m tests.release_node FOLDER DATA [train|evaluate]`` runs one round with the node's
ledger, state record and release in FOLDER and prints the reply as one JSON line
(``{"error": code}`` or ``{"metrics": {...}}``). tests/test_release_crash.py starts it with
``MEDALLOC_FAULT_POINT`` set, so the process dies (SIGKILL) at that step of the release.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context, RecordDict

from medalloc_core import protocol
from medalloc_core.forecast.features import federation_window_spec
from medalloc_core.forecast.models import ForecasterConfig, build_model, state_arrays
from tests.fed_fixtures import TINY, file_calendar, record, request, task_identity

SPEC = federation_window_spec(history=TINY["history"], horizon=TINY["horizon"], targets=("admissions", "census"))
MODEL = ForecasterConfig.for_spec(SPEC, model="mlp", hidden=TINY["hidden"])


def config(server_round: int = 1) -> dict[str, Any]:
    """A round's instruction: the tiny model, the source release at patient epsilon 1."""
    return {
        protocol.SERVER_ROUND: server_round,
        protocol.LOCAL_EPOCHS: 1,
        protocol.BATCH_SIZE: 32,
        protocol.LR: 0.01,
        protocol.PROXIMAL_MU: 0.0,
        protocol.MODEL_CONFIG: json.dumps(MODEL.to_dict()),
        protocol.WINDOW_SPEC: json.dumps(SPEC.to_dict()),
        protocol.RUN_TAG: "crash-test",
        protocol.SEED: 0,
        "privacy-mechanism": "source",
        "patient-epsilon": 1.0,
        "max-stay-days": 14,
        "simulation-reproducible-noise": False,
    }


def context(folder: Path, data: Path) -> Context:
    """The node's own config: its data, ledger, state record (defaults beside the ledger) and budget."""
    folder.mkdir(parents=True, exist_ok=True)
    node_config = {
        "data-path": str(data),
        "ledger-path": str(folder / "ledger.json"),
        "privacy-epsilon-budget": 4.0,
    } | file_calendar(data)
    return Context(run_id=1, node_id=5, node_config=node_config, state=RecordDict(), run_config={})


def round_reply(folder: Path, data: Path, kind: str = "evaluate") -> dict[str, Any]:
    """Run one round in this process; the reply as JSON-able data."""
    from medalloc.client.app import handle_evaluate, handle_train

    handler = handle_train if kind == "train" else handle_evaluate
    arrays = record(state_arrays(build_model(MODEL, seed=0)))
    with task_identity():
        reply = handler(request(5, arrays, config(), train=kind == "train"), context(folder, data))
    if reply.has_error():
        return {"error": int(reply.error.code), "reason": reply.error.reason}
    metrics = reply.content[protocol.METRICS]
    return {"metrics": {k: float(v) for k, v in metrics.items() if isinstance(v, int | float | np.floating)}}


if __name__ == "__main__":
    folder, data = Path(sys.argv[1]), Path(sys.argv[2])
    print(json.dumps(round_reply(folder, data, sys.argv[3] if len(sys.argv) > 3 else "evaluate")), flush=True)
