"""Generators for ``forecast``: model files (arrays and JSON sidecar), the records, the output folder."""

from __future__ import annotations

import hashlib
import json
import random
import struct
from typing import Any

from . import fixtures
from .registry import Case, argv, generator

SIDECAR = "final_model.json"
ARRAYS = "final_model.safetensors"
_ARGS = argv({"--model": ARRAYS, "--data": "H000.csv", "--out": "fc"})


def _files(**replace: bytes) -> dict[str, bytes]:
    files = {**fixtures.model_files(), "H000.csv": fixtures.hospital_csv()}
    files.update({name.replace("__", "."): data for name, data in replace.items()})
    return files


def resign(meta: dict[str, Any], arrays: bytes | None = None) -> bytes:
    """The sidecar with ``sha256`` and ``digest`` recomputed: an edit made by someone who knows the format."""
    from medalloc_core.model_io import sidecar_digest

    if arrays is not None:
        meta["sha256"] = hashlib.sha256(arrays).hexdigest()
    meta["digest"] = sidecar_digest(meta, meta["sha256"])
    return json.dumps(meta, indent=2, sort_keys=True).encode()


def _config_edit(rng: random.Random) -> tuple[str, object, str]:
    """(field, bad value, what the error must name) for model-config."""
    choices: list[tuple[str, list[object]]] = [
        ("hidden", [1.5, 0, -8, "8", None, True, [8], 2_000_000, 60000]),
        ("layers", [0, 1.5, 65, 10**9, "2", None]),
        ("history", [0, -14, 14.5, 10**12, "14"]),
        ("horizon", [0, 7.0001, "7", None]),
        ("n_features", [0, 3.5, 10**7]),
        ("n_targets", [0, 3, "2", None]),
        ("quantiles", [[], [0.9, 0.1], [0, 0.5], [0.1, 1.0], ["a"], "abc", 0.5, [0.1, 0.1], [True], None]),
        ("model", ["gpt", "", None, 7, ["mlp"]]),
        ("dropout", [1.0, -0.1, "0", None, float("nan")]),
        ("channels", [0, 2.5, 10**9]),
        ("kernel_size", [0, "3"]),
        ("levels", [0, 65, 4.5]),
    ]
    field, values = rng.choice(choices)
    value = rng.choice(values)
    return field, value, field


@generator("forecast", "sidecar-edit")
def _sidecar_edit(rng: random.Random) -> Case:
    """A sidecar field changed without updating its digest: relabelled quantiles, other targets, another size."""
    meta = fixtures.model_meta()
    kind = rng.randrange(5)
    if kind == 0:
        meta["model-config"]["quantiles"] = rng.choice([[0.05, 0.5, 0.95], [0.1, 0.5, 0.8], [0.25, 0.5, 0.75]])
        detail = f"quantiles {meta['model-config']['quantiles']}"
    elif kind == 1:
        meta["window-spec"]["targets"] = rng.choice([["census", "admissions"], ["admissions", "discharges"]])
        detail = f"targets {meta['window-spec']['targets']}"
    elif kind == 2:
        field, value, _ = _config_edit(rng)
        meta["model-config"][field] = value
        detail = f"{field}={value!r}"
    elif kind == 3:
        meta["extra-field"] = rng.choice([1, "x", None])
        detail = "a field added"
    else:
        del meta[rng.choice(["sha256", "window-spec"])]
        detail = "a field removed"
    data = json.dumps(meta, indent=2, sort_keys=True).encode()
    return Case("forecast", _ARGS, _files(final_model__json=data), (SIDECAR,), f"unsigned edit: {detail}")


@generator("forecast", "model-config")
def _model_config(rng: random.Random) -> Case:
    """A re-signed sidecar whose config is invalid or describes a model too large to build."""
    meta = fixtures.model_meta()
    field, value, named = _config_edit(rng)
    meta["model-config"][field] = value
    if field == "hidden" and value == 60000:
        meta["model-config"]["layers"] = 4  # the 14 GB model
        named = "MAX_MODEL_PARAMETERS"
    return Case("forecast", _ARGS, _files(final_model__json=resign(meta)), (SIDECAR, named), f"{field}={value!r}")


@generator("forecast", "window-spec")
def _window_spec(rng: random.Random) -> Case:
    """A re-signed sidecar whose window spec is malformed or contradicts the config."""
    meta = fixtures.model_meta()
    spec = meta["window-spec"]
    key, value = rng.choice(
        [
            ("history", 28),
            ("horizon", 14),
            ("targets", ["admissions"]),
            ("targets", []),
            ("targets", "census"),
            ("history", -1),
            ("history", "14"),
            ("day_of_week", "hourly"),
            ("val_periods", -5),
        ]
    )
    spec[key] = value
    if rng.random() < 0.2:
        meta["window-spec"] = rng.choice([None, [], "x", 3])
        detail = f"window-spec={meta['window-spec']!r}"
    else:
        detail = f"window-spec {key}={value!r}"
    return Case("forecast", _ARGS, _files(final_model__json=resign(meta)), (SIDECAR,), detail)


@generator("forecast", "sidecar-bytes")
def _sidecar_bytes(rng: random.Random) -> Case:
    """A sidecar that is not a model's JSON at all."""
    good = fixtures.model_files()[SIDECAR]
    data, detail = rng.choice(
        [
            (b"", "empty"),
            (good[: rng.randrange(1, len(good))], "truncated"),
            (b"[" * 100_000, "deep nesting"),
            (b"\xff\xfe{}", "not UTF-8"),
            (b"[1, 2, 3]", "a list"),
            (b'{"format-version": 2}', "no model-config"),
            (rng.randbytes(300), "random bytes"),
            (json.dumps({**fixtures.model_meta(), "format-version": 1}).encode(), "format-version 1"),
        ]
    )
    return Case("forecast", _ARGS, _files(final_model__json=data), (SIDECAR,), detail)


def _safetensors(header: dict[str, Any], body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


@generator("forecast", "arrays")
def _arrays(rng: random.Random) -> Case:
    """Weights that are damaged, foreign, oversized by their header, or non-finite (sidecar re-signed to match)."""
    import numpy as np
    from safetensors.numpy import load as st_load
    from safetensors.numpy import save as st_save

    good = fixtures.model_files()[ARRAYS]
    meta = fixtures.model_meta()
    kind = rng.randrange(8)
    if kind == 0:  # damaged in place: the sidecar's SHA-256 no longer matches
        flipped = bytearray(good)
        flipped[rng.randrange(len(flipped))] ^= 1 + rng.randrange(255)
        return Case("forecast", _ARGS, _files(final_model__safetensors=bytes(flipped)), (ARRAYS,), "a byte flipped")
    if kind == 1:
        data = good[: rng.randrange(len(good))]
        return Case("forecast", _ARGS, _files(final_model__safetensors=data), (ARRAYS,), "truncated")
    if kind == 2:  # a header claiming a 60000 x 60000 array over a few bytes
        shape = rng.choice([[60000, 60000], [2**40], [10**9, 10**9]])
        size = 4
        for n in shape:
            size *= n
        data = _safetensors({"body.0.weight": {"dtype": "F32", "shape": shape, "data_offsets": [0, size]}}, b"\0" * 64)
        named = ARRAYS
    elif kind == 3:  # header length past the end of the file
        data = struct.pack("<Q", rng.choice([2**63, 10**9, len(good)])) + good[8:]
        named = ARRAYS
    elif kind == 4:  # arrays of another model (other shapes), consistently signed
        arrays = {k: np.zeros(tuple(s + 1 for s in v.shape), np.float32) for k, v in st_load(good).items()}
        data = st_save(arrays)
        named = ARRAYS
    elif kind == 5:  # a renamed or missing array
        arrays = dict(st_load(good))
        name = sorted(arrays)[rng.randrange(len(arrays))]
        value = arrays.pop(name)
        if rng.random() < 0.5:
            arrays[name + ".x"] = value
        data = st_save(arrays)
        named = ARRAYS
    elif kind == 6:  # NaN or infinite weights
        arrays = dict(st_load(good))
        name = sorted(arrays)[rng.randrange(len(arrays))]
        arrays[name] = arrays[name].copy()
        arrays[name].flat[rng.randrange(arrays[name].size)] = rng.choice([np.nan, np.inf, -np.inf])
        data = st_save(arrays)
        named = "NaN or infinite"
    else:  # not safetensors at all (a pickle, say), signed
        data = b"\x80\x04\x95" + rng.randbytes(rng.randrange(16, 200))
        named = ARRAYS
    files = _files(final_model__safetensors=data, final_model__json=resign(meta, data))
    return Case("forecast", _ARGS, files, (named,), f"arrays kind {kind}")


@generator("forecast", "paths")
def _paths(rng: random.Random) -> Case:
    """--model, --data and --out that name the wrong kind of thing."""
    files = _files()
    kind = rng.randrange(8)
    if kind == 0:
        return Case("forecast", argv({"--model": "nope.safetensors", "--data": "H000.csv"}), files, ("nope",), "none")
    if kind == 1:
        files["empty/.keep"] = b""
        return Case("forecast", argv({"--model": "empty", "--data": "H000.csv"}), files, ("empty",), "empty folder")
    if kind == 2:
        return Case("forecast", argv({"--model": "H000.csv", "--data": "H000.csv"}), files, ("H000.csv",), "a CSV")
    if kind == 3:
        del files[ARRAYS]
        return Case("forecast", _ARGS, files, (ARRAYS,), "arrays missing")
    if kind == 4:
        files["folder/.keep"] = b""
        return Case("forecast", argv({"--model": ARRAYS, "--data": "folder"}), files, ("folder",), "data is a folder")
    if kind == 5:
        return Case("forecast", argv({"--model": ARRAYS, "--data": "none.csv"}), files, ("none.csv",), "no data")
    if kind == 6:
        if rng.random() < 0.5:
            files["fc/forecast.csv"] = b"old"
            return Case("forecast", _ARGS, files, ("forecast.csv", "--force"), "output exists")
        files["fc"] = b"a file where the output folder goes"
        return Case("forecast", _ARGS, files, ("--out fc", "is a file"), "--out is a file")
    files[SIDECAR.replace(".json", ".x.safetensors")] = fixtures.model_files()[ARRAYS]
    return Case("forecast", argv({"--model": "final_model.x.safetensors", "--data": "H000.csv"}), files,
                ("final_model.x.json",), "sidecar missing")  # fmt: skip


@generator("forecast", "data")
def _data(rng: random.Random) -> Case:
    """Records the model cannot be applied to: too short, without a forecast column, invalid."""
    import io

    import pandas as pd

    frame = pd.read_csv(io.BytesIO(fixtures.hospital_csv()), dtype=str)
    kind = rng.randrange(4)
    if kind == 0:
        short = frame.groupby("unit").head(rng.randrange(1, 40))
        data, named, detail = short.to_csv(index=False).encode(), "H000.csv", "too short"
    elif kind == 1:
        column = rng.choice(["admissions", "census"])
        data, named, detail = frame.drop(columns=[column]).to_csv(index=False).encode(), column, f"no {column}"
    elif kind == 2:
        row = rng.randrange(len(frame))
        frame.loc[row, "census"] = rng.choice(["-1", "many", "1e9", "nan"])
        data, named, detail = frame.to_csv(index=False).encode(), "census", "bad count"
    else:
        data, named, detail = b"date,unit\n", "H000.csv", "no records"
    return Case("forecast", _ARGS, _files(H000__csv=data), ("H000.csv", named), detail)
