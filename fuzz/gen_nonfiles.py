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
    path = rng.choice([SIDECAR, ARRAYS, "H000.csv"])
    files = {**fixtures.model_files(), "H000.csv": fixtures.hospital_csv()}
    options = dict(_FORECAST)
    if path == ARRAYS and kind == "folder":
        options["--model"] = SIDECAR  # a folder given as --model is read as a results folder
    return _case("forecast", options, files, path, kind)


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
    path = rng.choice(["forecast.csv", "H000.csv", "ledger.json", "ledger.json.key"])
    files = {"forecast.csv": fixtures.forecast_csv(), "H000.csv": fixtures.hospital_csv(), **fixtures.ledger_files()}
    return _case("share", dict(_SHARE), files, path, kind)
