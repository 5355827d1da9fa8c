"""Generators for ``explain`` (the model files and records ``forecast`` reads, and its own options) and ``report``."""

from __future__ import annotations

import dataclasses
import random

from . import fixtures
from .gen_forecast import _arrays, _model_config, _sidecar_bytes, _sidecar_edit, _window_spec
from .registry import Case, argv, generator

_EXPLAIN = ("--model", "final_model.safetensors", "--data", "H000.csv", "--out", "ex")


@generator("explain", "model")
def _explain_model(rng: random.Random) -> Case:
    """Every model-file breakage of the forecast generators, given to `explain` (it loads models the same way)."""
    make = rng.choice([_sidecar_edit, _model_config, _window_spec, _sidecar_bytes, _arrays])
    case = make(rng)
    return dataclasses.replace(case, command="explain", argv=_EXPLAIN, detail=f"explain: {case.detail}")


@generator("explain", "options")
def _explain_options(rng: random.Random) -> Case:
    option, value, named = rng.choice(
        [
            ("--method", "shap", "--method"),
            ("--method", "", "--method"),
            ("--level", "0", "--level"),
            ("--level", "1.5", "--level"),
            ("--level", "nan", "--level"),
            ("--date", "2024-02-30", "--date"),
            ("--date", "tomorrow", "--date"),
            ("--target", "beds", "beds"),
            ("--unit", "no-such-unit", "no-such-unit"),
        ]
    )
    files = {**fixtures.model_files(), "H000.csv": fixtures.hospital_csv()}
    return Case("explain", argv({**dict(zip(_EXPLAIN[::2], _EXPLAIN[1::2])), option: value}), files, (named,),
                f"{option} {value!r}")  # fmt: skip


def _summary(rng: random.Random) -> tuple[bytes, str]:
    """A summary.json no report can be made from.

    Sections of the wrong type inside a well-formed object are not generated: the report renders
    what it can read and leaves such a section empty, by design (medalloc_core/report/page.py).
    """
    return rng.choice(
        [
            (b"", "empty"),
            (b"[" * 100_000, "deep nesting"),
            (b"\xff\xfe{}", "not UTF-8"),
            (b"[1, 2]", "a list"),
            (b'{"scenario": ', "truncated"),
            (b"NaN", "a bare NaN"),
            (b'"a string"', "a string"),
        ]
    )


@generator("report", "results")
def _report_results(rng: random.Random) -> Case:
    kind = rng.randrange(4)
    if kind == 0:
        return Case("report", ("missing",), {}, ("missing",), "no folder")
    if kind == 1:
        return Case("report", ("results",), {"results/metrics.jsonl": b""}, ("summary.json",), "no summary.json")
    if kind == 2:
        return Case("report", ("file.txt",), {"file.txt": b"x"}, ("file.txt",), "a file")
    data, detail = _summary(rng)
    return Case("report", ("results",), {"results/summary.json": data}, ("summary.json",), f"summary.json: {detail}")
