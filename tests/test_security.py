"""Security properties: nothing read back is unpickled, and no record reaches a log or the coordinator's files."""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import pickle
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

from medalloc.client.app import make_client_app
from medalloc.server.app import METRICS_FILE, run_federation
from medalloc.server.checkpoint import Checkpoint, CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from medalloc.server.config import RunConfig
from medalloc_core import model_io
from medalloc_core.forecast.features import WindowSpec, federation_window_spec
from medalloc_core.forecast.models import ForecasterConfig, build_model
from medalloc_core.model_io import ModelFileError, load_model, save_model
from tests.fed_fixtures import TINY, DirectGrid, file_calendar, small_region, task_identity

REPO = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this runs code: it creates the marker file named at pickling time."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # noqa: D105
        return (Path.touch, (Path(self.marker),))


def _malicious_pickle(path: Path, marker: Path) -> bytes:
    torch.save({"weight": _Payload(marker)}, path)
    data = path.read_bytes()
    with pytest.raises(pickle.UnpicklingError):  # sanity: our own safe loader refuses it too...
        torch.load(path, weights_only=True)
    assert not marker.exists()
    return data


def _swap_arrays(safetensors_path: Path, sidecar: Path, data: bytes) -> None:
    """Replace a saved file's arrays by ``data`` and re-sign its sidecar, so only the format can stop it."""
    safetensors_path.write_bytes(data)
    meta = json.loads(sidecar.read_text())
    meta["sha256"] = hashlib.sha256(data).hexdigest()
    meta["digest"] = model_io.sidecar_digest(meta, meta["sha256"])
    sidecar.write_text(json.dumps(meta))


def test_a_pickled_model_file_is_refused_and_never_executed(tmp_path: Path) -> None:
    config = ForecasterConfig(history=14, horizon=7, n_features=8, n_targets=2, hidden=8)
    path = save_model(
        tmp_path / "model.safetensors",
        build_model(config, seed=0),
        spec=WindowSpec(history=14, horizon=7, val_periods=28, test_periods=28),
    )
    marker = tmp_path / "pwned"
    _swap_arrays(path, path.with_suffix(".json"), _malicious_pickle(tmp_path / "evil.pt", marker))

    with pytest.raises(ModelFileError):
        load_model(path)
    assert not marker.exists()


def test_a_pickled_checkpoint_is_refused_and_never_executed(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    marker_json = save_checkpoint(
        folder,
        Checkpoint(
            round=1,
            arrays={"w": torch.zeros(3).numpy()},
            strategy="fedavg",
            model_config=ForecasterConfig(history=14),
            window_spec=federation_window_spec(history=14, horizon=14, targets=("admissions", "census")),
        ),
    )
    marker = tmp_path / "pwned"
    arrays = marker_json.with_suffix(".safetensors")
    _swap_arrays(arrays, marker_json, _malicious_pickle(tmp_path / "evil.pt", marker))

    with pytest.raises(CheckpointError):
        load_checkpoint(marker_json)
    assert latest_checkpoint(folder) is None  # skipped, so a resume starts clean rather than running it
    assert not marker.exists()


def _calls(tree: ast.AST) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)]


def _name(func: ast.expr) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def _keyword(call: ast.Call, name: str) -> object:
    for kw in call.keywords:
        if kw.arg == name and isinstance(kw.value, ast.Constant):
            return kw.value.value
    return None


def test_no_code_path_unpickles_what_it_reads() -> None:
    offenders = []
    for package in ("medalloc_core", "client", "server", "simulations"):
        for path in sorted((REPO / package).rglob("*.py")):
            for call in _calls(ast.parse(path.read_text(), filename=str(path))):
                name = _name(call.func)
                where = f"{path.relative_to(REPO)}:{call.lineno} {name}"
                if name in {
                    "pickle.load",
                    "pickle.loads",
                    "cloudpickle.load",
                    "cloudpickle.loads",
                    "pd.read_pickle",
                    "pandas.read_pickle",
                    "dill.load",
                    "dill.loads",
                    "marshal.loads",
                }:
                    offenders.append(where)
                elif name == "torch.load" and _keyword(call, "weights_only") is not True:
                    offenders.append(where + " without weights_only=True")
                elif name in {"np.load", "numpy.load"} and _keyword(call, "allow_pickle") is True:
                    offenders.append(where + " with allow_pickle=True")
    assert offenders == []


def leak_patterns(frame: pd.DataFrame, run: int = 7) -> list[re.Pattern[str]]:
    """Ways a hospital's records could show up in text: a CSV row, a whitespace-separated row, a run of values."""
    patterns = []
    counts = ["admissions", "discharges", "census", "capacity"]
    for row in frame.head(60).itertuples(index=False):
        values = [str(getattr(row, c)) for c in counts]
        patterns.append(re.compile(re.escape(",".join([str(row.date), str(row.unit), *values]))))
        patterns.append(re.compile(r"\s+".join([re.escape(str(row.unit)), *map(re.escape, values)])))
    for _unit, series in frame.groupby("unit"):
        census = series["census"].astype(str).tolist()
        for start in range(0, len(census) - run, run):
            chunk = census[start : start + run]
            patterns.append(re.compile(r"[\s,\[]+".join(chunk)))  # list, numpy and CSV renderings
    return patterns


@pytest.mark.slow
def test_no_record_reaches_a_log_or_the_coordinators_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    region = small_region(tmp_path / "region", hospitals=3)
    out = tmp_path / "out"
    (out / "ledgers").mkdir(parents=True)
    nodes = {
        i + 1: {
            "partition-id": i,
            "data-path": str(region / f"H{i:03d}.csv"),
            "ledger-path": str(out / "ledgers" / f"{i}.json"),
            "privacy-epsilon-budget": 100.0,
            "privacy-accountant": "rdp",
        }
        | file_calendar(region / f"H{i:03d}.csv")
        for i in range(3)
    }
    config = {
        "out-dir": str(out),
        "num-server-rounds": 2,
        "min-available-nodes": 3,
        "min-train-nodes": 3,
        "local-epochs": 1,
    } | TINY
    with caplog.at_level(logging.DEBUG), task_identity():
        run_federation(DirectGrid(make_client_app(), nodes), RunConfig.from_mapping(config))

    logs = "\n".join(r.getMessage() for r in caplog.records)
    assert "round" in logs.lower()  # the run did log: an empty capture would prove nothing
    coordinator_files = "\n".join(
        p.read_text(errors="replace")
        for p in out.rglob("*")
        if p.is_file() and p.suffix in {".json", ".jsonl"} and "ledgers" not in p.parts
    )
    assert (out / METRICS_FILE).is_file()
    records = pd.read_csv(region / "H000.csv")
    patterns = leak_patterns(records)
    assert patterns and any(p.search(records.head(60).to_csv(index=False)) for p in patterns)  # they do find records
    leaked = [p.pattern for p in patterns if p.search(logs) or p.search(coordinator_files)]
    assert leaked == []
