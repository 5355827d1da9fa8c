"""Generators for ``plan-page`` (forecast, forecast log, node config, options, paths that are not files) and
for the forecast log ``forecast --forecast-log`` adds to."""

from __future__ import annotations

import json
import random
from typing import Any

from . import fixtures
from .gen_forecast import ARRAYS
from .gen_privacy import bad_forecast_csv
from .registry import SPECIAL_KINDS, Case, argv, generator, pick

LOG = "forecasts.json"
_PAGE = {"--forecast": "forecast.csv", "--data": "H000.csv", "--forecast-log": LOG, "--out": "plan.html"}


def _files() -> dict[str, bytes]:
    return {"forecast.csv": fixtures.forecast_csv(), "H000.csv": fixtures.hospital_csv()}


def _valid_log() -> dict[str, Any]:
    """A one-run log as `medalloc forecast` writes it, made from the fixture forecast."""
    from datetime import timedelta

    import pandas as pd

    from medalloc_core.forecast.history import ForecastRun

    frame = fixtures.forecast_frame()
    first = pd.to_datetime(frame["date"]).min().date()
    run = ForecastRun.from_frame(frame, origin=first - timedelta(days=1), model_version="0123456789ab")
    return {"format": "medalloc-forecast-log", "version": 1, "runs": [run.to_dict()]}


def bad_log(rng: random.Random) -> tuple[bytes, str, tuple[str, ...]]:
    """A forecast log broken one way; (bytes, detail, what the error must name besides the file)."""
    kind = rng.randrange(8)
    if kind == 0:
        return b"", "empty log", ("forecast log",)
    if kind == 1:
        return b'{"format": "medalloc-forecast-log", "runs": [', "truncated", ("forecast log",)
    if kind == 2:
        return json.dumps({"format": "something-else", "runs": []}).encode(), "another format", ("forecast log",)
    body = _valid_log()
    run = body["runs"][0]
    if kind == 3:
        body["version"] = pick(rng, ("2", "0", "v1"))
        return json.dumps(body).encode(), "another version", ("version",)
    if kind == 4:
        field = pick(rng, ("origin", "dates", "levels", "units", "values", "model-version"))
        del run[field]
        return json.dumps(body).encode(), f"no {field}", (field,)
    if kind == 5:
        run["origin"] = pick(rng, ("yesterday", "2026-02-30", "", "1"))
        return json.dumps(body).encode(), f"origin {run['origin']!r}", ("origin",)
    if kind == 6:
        run["values"] = run["values"][: max(1, len(run["values"]) - 1)] if len(run["values"]) > 1 else []
        return json.dumps(body).encode(), "values of the wrong shape", ("values",)
    run["levels"] = rng.choice([[0.9, 0.5, 0.1], [0, 0.5, 1], ["0.1", "0.5", "0.9"], []])
    return json.dumps(body).encode(), f"levels {run['levels']!r}", ("levels",)


@generator("plan-page", "forecast")
def _plan_page_forecast(rng: random.Random) -> Case:
    data, detail, named = bad_forecast_csv(rng)
    return Case("plan-page", argv(_PAGE), _files() | {"forecast.csv": data}, ("forecast.csv", *named), detail)


@generator("plan-page", "forecast-log")
def _plan_page_log(rng: random.Random) -> Case:
    data, detail, named = bad_log(rng)
    return Case("plan-page", argv(_PAGE), _files() | {LOG: data}, (LOG, *named), detail)


@generator("plan-page", "options")
def _plan_page_options(rng: random.Random) -> Case:
    option, value = rng.choice(
        [
            ("--risk-threshold", pick(rng, ("0", "1", "1.5", "-0.1", "nan"))),
            ("--under-cost", pick(rng, ("0", "-1", "1e300", "nan", "inf"))),
            ("--over-cost", pick(rng, ("0", "-1", "1e300", "nan"))),
            ("--nurse-ratio", pick(rng, ("ICU=x", "ICU", "=2", "ICU=0", "ICU=1e9", "ICU=nan"))),
            ("--default-nurse-ratio", pick(rng, ("0", "-4", "1e9", "nan"))),
            ("--shifts", pick(rng, ("0", "25", "-3"))),
        ]
    )
    options = dict(_PAGE) | {option: value}
    return Case("plan-page", argv(options), _files(), (option,), f"{option} {value}")


@generator("plan-page", "node-config")
def _plan_page_node_config(rng: random.Random) -> Case:
    text = pick(
        rng,
        (
            "hospital-id = \n",
            'data-path = "H000.csv"\n',  # no ledger-path
            'hospital-id = "H000"\ndata-path = "H000.csv"\nledger-path = "l.json"\nno-such-key = 1\n',
            "\x00\x01binary",
        ),
    )
    options = {k: v for k, v in _PAGE.items() if k != "--forecast-log"} | {"--node-config": "node.toml"}
    return Case("plan-page", argv(options), _files() | {"node.toml": text.encode()}, ("node.toml",), repr(text))


@generator("plan-page", "not-a-file")
def _plan_page_nonfile(rng: random.Random) -> Case:
    kind = SPECIAL_KINDS[rng.randrange(len(SPECIAL_KINDS))]
    path = rng.choice(["forecast.csv", "H000.csv", LOG])
    files = {k: v for k, v in (_files() | {LOG: json.dumps(_valid_log()).encode()}).items() if k != path}
    return Case("plan-page", argv(_PAGE), files, (path,), f"{path} is {kind}", specials={path: kind})


@generator("forecast", "forecast-log")
def _forecast_log(rng: random.Random) -> Case:
    data, detail, named = bad_log(rng)
    files = {**fixtures.model_files(), "H000.csv": fixtures.hospital_csv(), LOG: data}
    options = {"--model": ARRAYS, "--data": "H000.csv", "--forecast-log": LOG, "--out": "fc"}
    return Case("forecast", argv(options), files, (LOG, *named), detail)
