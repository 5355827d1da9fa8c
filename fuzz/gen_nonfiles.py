"""Generators for paths that are not regular files: every input a command reads, made a FIFO, a link
to ``/dev/zero``, ``/dev/urandom`` or ``/dev/null``, a socket or a folder.

Each command must refuse the path with exit 2 and a message naming it, without blocking (a FIFO
makes ``open()`` wait for a writer for ever), without reading for ever (a device never ends and
has ``st_size`` 0) and without a traceback (a socket cannot be opened at all).
"""

from __future__ import annotations

import random

from . import fixtures
from .gen_forecast import ARRAYS, SIDECAR
from .registry import SPECIAL_KINDS, Case, argv, generator

_FORECAST = {"--model": ARRAYS, "--data": "H000.csv", "--out": "fc"}
_ALLOCATE = {"--forecast": "forecast.csv", "--capacity": "capacity.csv", "--out": "plan"}
_SHARE = {
    "--forecast": "forecast.csv",
    "--data": "H000.csv",
    "--ledger": "ledger.json",
    "--epsilon": "1.0",
    "--out": "shared.csv",
}


def _kind(rng: random.Random) -> str:
    return SPECIAL_KINDS[rng.randrange(len(SPECIAL_KINDS))]


def _case(command: str, options: dict[str, str], files: dict[str, bytes], path: str, kind: str) -> Case:
    files = {k: v for k, v in files.items() if k != path}
    return Case(command, argv(options), files, (path,), f"{path} is {kind}", specials={path: kind})


@generator("validate", "not-a-file")
def _validate(rng: random.Random) -> Case:
    kind = _kind(rng)
    name = rng.choice(["H000.csv", "H000.parquet", "H000.ndjson", "H000.fhir.json", "H000.sqlite"])
    if kind == "folder" and name.endswith((".csv", ".parquet")):
        name = "H000.csv.d"  # a folder named like a file; its contents decide an OMOP/FHIR export
    return Case("validate", (name,), {}, (name,), f"{name} is {kind}", specials={name: kind})


@generator("privacy", "not-a-file")
def _privacy(rng: random.Random) -> Case:
    kind = _kind(rng)
    path = rng.choice(["ledger.json", "ledger.json.key"])
    files = dict(fixtures.ledger_files())
    case = _case("privacy", {"--ledger": "ledger.json"}, files, path, kind)
    return case


@generator("forecast", "not-a-file")
def _forecast(rng: random.Random) -> Case:
    kind = _kind(rng)
    path = rng.choice([SIDECAR, ARRAYS, "H000.csv", "node.toml", "released.csv", "log.json"])
    files = {**fixtures.model_files(), "H000.csv": fixtures.hospital_csv(), **fixtures.ledger_files()}
    options = dict(_FORECAST)
    if path == ARRAYS and kind == "folder":
        options["--model"] = SIDECAR  # a folder given as --model is read as a results folder
    if path == "node.toml":
        options["--node-config"] = path
    elif path == "released.csv":
        options["--release"] = path  # the node's release store, for the forecast's noise band
    elif path == "log.json":
        options["--forecast-log"] = path
    return _case("forecast", options, files, path, kind)


@generator("explain", "not-a-file")
def _explain(rng: random.Random) -> Case:
    kind = _kind(rng)
    path = rng.choice([SIDECAR, ARRAYS, "H000.csv"])
    files = {**fixtures.model_files(), "H000.csv": fixtures.hospital_csv()}
    options = {"--model": SIDECAR if path == ARRAYS and kind == "folder" else ARRAYS, "--data": "H000.csv"}
    return _case("explain", options | {"--out": "ex"}, files, path, kind)


@generator("node check", "not-a-file")
def _node_check(rng: random.Random) -> Case:
    """``node check`` on a node.toml that is not a file (its data and ledger are checks, reported in the table)."""
    kind = _kind(rng)
    return _case("node check", {"--node-config": "node.toml"}, {"H000.csv": fixtures.hospital_csv()}, "node.toml", kind)


@generator("node approve", "not-a-file")
def _node_approve(rng: random.Random) -> Case:
    kind = _kind(rng)
    if rng.random() < 0.5:
        return _case("node approve", {"--fab": "app.fab", "--approved-apps": "approved.toml"}, {}, "app.fab", kind)
    options = {"--sha256": "ab" * 32, "--approved-apps": "approved.toml"}  # the node's approved-apps file itself
    return _case("node approve", options, {}, "approved.toml", kind)


@generator("allocate", "not-a-file")
def _allocate(rng: random.Random) -> Case:
    kind = _kind(rng)
    path = rng.choice(["forecast.csv", "capacity.csv", "unit_config.csv"])
    files = {
        "forecast.csv": fixtures.forecast_csv(),
        "capacity.csv": fixtures.capacity_csv(),
        "unit_config.csv": fixtures.unit_config_csv(),
    }
    options = dict(_ALLOCATE)
    if path == "unit_config.csv":
        options["--unit-config"] = "unit_config.csv"
    if path == "forecast.csv" and kind == "folder":
        path = "fc.d"  # a forecast folder without forecast.csv
        options["--forecast"] = path
    return _case("allocate", options, files, path, kind)


@generator("share", "not-a-file")
def _share(rng: random.Random) -> Case:
    kind = _kind(rng)
    path = rng.choice(["forecast.csv", "H000.csv", "ledger.json", "ledger.json.key", "node.toml"])
    files = {"forecast.csv": fixtures.forecast_csv(), "H000.csv": fixtures.hospital_csv(), **fixtures.ledger_files()}
    options = dict(_SHARE)
    if path == "node.toml":  # the ledger from the node's config (a FIFO here used to block `share` for ever)
        options = {k: v for k, v in options.items() if k != "--ledger"} | {"--node-config": path}
    return _case("share", options, files, path, kind)
