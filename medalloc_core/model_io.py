"""The one model-file format: safetensors arrays plus a JSON sidecar, for final models and round checkpoints.

- ``NAME.safetensors`` — the parameters (``state_dict`` names); nothing is pickled.
- ``NAME.json`` — ``format-version``, ``model-config`` (:class:`ForecasterConfig`),
  ``window-spec`` (``WindowSpec.to_dict``), ``sha256`` of the array file and ``digest``, a
  SHA-256 over the sidecar's other fields *and* the arrays, so that editing either (relabelled
  quantiles, other targets) is refused instead of silently changing what a forecast means.
  Writers add their own fields (a checkpoint: ``round``, ``strategy``, ``run-config``,
  ``strategy-state``); the digest covers them too.

Before anything of a file's size is allocated, the reader checks the sidecar's size and digest,
the config's types and ranges, the parameter count of the model it describes (built on the
meta device: at most ``MAX_MODEL_PARAMETERS``) and the safetensors header against that
model's shapes; weights must be finite.

The sidecar is written last and is the commit marker. Names: a federation's final model is
``<out>/final_model.safetensors``; its round checkpoints are
``<out>/checkpoints/round-000r.safetensors`` (``server.checkpoint``). :func:`load_model` reads
any of them, a results folder (its final model) or a checkpoint folder (its latest round).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from medalloc_core.atomic import atomic_write_bytes
from medalloc_core.forecast.features import WindowSpec
from medalloc_core.forecast.models import MODELS, Forecaster, ForecasterConfig, build_model, load_arrays, state_arrays

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: one format for final models and checkpoints, with a digest binding config and weights
FINAL_MODEL_NAME = "final_model.safetensors"  # what `medalloc simulate` and the ServerApp write
_ROUND = re.compile(r"^round-(\d{4,})\.json$")
_RESERVED = frozenset({"model-config", "window-spec", "sha256", "digest", "format-version"})
# Resource bounds on a model file, checked before anything of its size is allocated
# (docs/reliability.md, "Bad input"). The default forecaster has about 70 thousand parameters;
# 50 million float32 parameters are 200 MB.
MAX_MODEL_PARAMETERS = 50_000_000
MAX_SIDECAR_BYTES = 16 * 2**20  # a checkpoint's sidecar holds its run config and scalar strategy state
MAX_HEADER_BYTES = 16 * 2**20  # the safetensors JSON header (safetensors itself allows 100 MB)
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
TASK_KEY = "task"  # names a model file's task; a forecaster's file names none (files written before tasks existed)


class ModelFileError(ValueError):
    """A path is not a loadable MedAlloc model (missing, not a model, altered, inconsistent)."""


@dataclass(frozen=True)
class SavedModel:
    """A loaded forecaster with everything needed to apply it to a hospital's records.

    ``spec`` is the window spec the model was trained with: the targets and ``L``/``H`` it
    expects and the held-out periods that fix which days its per-series scalers are fitted on.
    """

    model: Forecaster
    config: ForecasterConfig
    spec: WindowSpec
    path: Path  # the safetensors file read
    metadata: dict[str, Any] = field(default_factory=dict)


def sidecar_digest(meta: Mapping[str, Any], arrays_sha256: str) -> str:
    """SHA-256 over every sidecar field but ``digest`` and the arrays' SHA-256: binds config and weights.

    Unkeyed: it detects edits and damage (a relabelled quantile, another target list), not a
    forger who recomputes it; that one still meets every type, range and shape check below.
    """
    body = {k: v for k, v in meta.items() if k != "digest"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":")) + "\n" + arrays_sha256
    return hashlib.sha256(text.encode()).hexdigest()


def write_model_files(
    path: Path,
    arrays: Mapping[str, np.ndarray],
    *,
    config: ForecasterConfig,
    spec: WindowSpec,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """The forecaster's writer: ``path`` (safetensors) then its JSON sidecar, each atomically; returns the sidecar.

    ``extra`` holds the writer's own JSON-able fields; it may not set the format's keys.
    """
    spec_json = spec.to_dict()
    if (spec.history, spec.horizon, len(spec.targets)) != (config.history, config.horizon, config.n_targets):
        raise ValueError(f"window spec {spec_json} does not match the model config {config.to_dict()}")
    return write_task_model_files(path, arrays, model_config=config.to_dict(), spec=spec_json, extra=extra)


def write_task_model_files(
    path: Path,
    arrays: Mapping[str, np.ndarray],
    *,
    model_config: Mapping[str, Any],
    spec: Mapping[str, Any],
    task: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """The one writer, for any task's model: arrays, then the sidecar (the commit marker).

    ``task`` is the task's ``model_file_task()``: ``None`` for a forecaster (its sidecar has no
    ``task`` field, as files written before tasks existed), any other task's model names its
    task, so that a forecaster is never loaded from another task's weights.
    """
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: a model file ends in .safetensors")
    clash = (_RESERVED | {TASK_KEY}) & set(extra or {})
    if clash:
        raise ValueError(f"extra metadata may not set {sorted(clash)}")
    data = st_save({k: np.ascontiguousarray(v) for k, v in arrays.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    sha = hashlib.sha256(data).hexdigest()
    meta: dict[str, Any] = dict(extra or {}) | {
        "format-version": FORMAT_VERSION,
        "model-config": dict(model_config),
        "window-spec": dict(spec),
        "sha256": sha,
    }
    if task is not None:
        meta[TASK_KEY] = task
    meta["digest"] = sidecar_digest(meta, sha)
    sidecar = sidecar_of(path)
    atomic_write_bytes(sidecar, json.dumps(meta, indent=2, sort_keys=True).encode())  # last: the commit marker
    return sidecar


def model_task(meta: Mapping[str, Any]) -> str | None:
    """The task a sidecar's model names (``None``: a forecaster's file; ``medalloc_core.tasks.task_of_model``)."""
    return None if meta.get(TASK_KEY) is None else str(meta[TASK_KEY])


def read_sidecar(sidecar: Path) -> dict[str, Any]:
    """The sidecar's fields, checked against its own ``digest`` before any of them is used.

    The digest covers every field, ``sha256`` of the arrays included, so a sidecar whose
    config, targets or quantiles were edited is refused here, before the arrays are read.
    """
    try:
        size = sidecar.stat().st_size
        if size > MAX_SIDECAR_BYTES:
            raise ModelFileError(
                f"{sidecar}: {size:,} bytes, over the {MAX_SIDECAR_BYTES:,}-byte limit for a model's JSON sidecar"
            )
        meta = json.loads(sidecar.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ModelFileError(f"{sidecar}: missing; a model is NAME.safetensors plus NAME.json (its config)") from None
    except IsADirectoryError:
        raise ModelFileError(f"{sidecar}: is a folder, not a model's JSON sidecar") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else exc
        raise ModelFileError(f"{sidecar}: not a model's JSON sidecar ({reason})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("model-config"), dict):
        raise ModelFileError(f"{sidecar}: has no 'model-config'; not a MedAlloc model")
    if meta.get("format-version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{sidecar}: format-version {meta.get('format-version')!r}; this MedAlloc reads version {FORMAT_VERSION} "
            "(re-export the model with this version)"
        )
    stored_sha = meta.get("sha256")
    try:
        intact = isinstance(stored_sha, str) and meta.get("digest") == sidecar_digest(meta, stored_sha)
    except (TypeError, ValueError):  # a field JSON cannot write back (NaN is written as NaN, not refused)
        intact = False
    if not intact:
        raise ModelFileError(
            f"{sidecar}: digest does not match its fields and arrays; the sidecar was edited (its config, targets or "
            "quantiles no longer describe these weights)"
        )
    return meta


def arrays_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``name -> (dtype, shape)`` of a safetensors file, read from its header alone.

    Checks that the header is small, well formed and accounts for the whole file exactly, and
    that it holds at most :data:`MAX_MODEL_PARAMETERS` numbers, before any array is read.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
            if not 2 <= length <= min(MAX_HEADER_BYTES, size - 8):
                raise ModelFileError(f"{path}: not a safetensors file (header length {length:,} for {size:,} bytes)")
            header = json.loads(handle.read(length).decode("utf-8"))
    except FileNotFoundError:
        raise ModelFileError(f"{path}: missing; a model is NAME.safetensors plus NAME.json (its config)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ModelFileError(f"{path}: not a safetensors file (unreadable header: {type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: not a safetensors file (the header is not a JSON object)")
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    total, end = 0, 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, stop) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
            ok = (
                dtype in _DTYPE_BYTES
                and all(type(n) is int and 0 <= n <= MAX_MODEL_PARAMETERS for n in shape)
                and type(begin) is int
                and type(stop) is int
            )
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise ModelFileError(f"{path}: not a safetensors file (array '{name}' is described as {entry!r:.200})")
        count = math.prod(shape)
        total += count
        if total > MAX_MODEL_PARAMETERS:
            raise ModelFileError(
                f"{path}: holds more than {MAX_MODEL_PARAMETERS:,} numbers (MAX_MODEL_PARAMETERS); "
                "not a MedAlloc forecaster"
            )
        if not 0 <= begin <= stop or stop - begin != count * _DTYPE_BYTES[dtype]:
            raise ModelFileError(f"{path}: not a safetensors file (array '{name}' has inconsistent offsets)")
        end = max(end, stop)
        out[name] = (dtype, shape)
    if 8 + length + end != size:
        raise ModelFileError(f"{path}: {size:,} bytes, but its header describes {8 + length + end:,}; truncated?")
    return out


def read_model_files(
    sidecar: Path, *, expect: Mapping[str, tuple[int, ...]] | None = None
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The one reader: the sidecar's fields and the arrays, verified against ``sha256`` and ``digest``.

    ``expect`` (parameter name -> shape) is compared with the arrays' header before the arrays
    are read. Raises ``ModelFileError`` for a missing, unreadable, oversized, altered or foreign
    file; never unpickles.
    """
    meta = read_sidecar(sidecar)
    arrays_path = arrays_of(sidecar)
    header = arrays_header(arrays_path)
    if expect is not None:
        described = {name: shape for name, (_, shape) in header.items()}
        if described != dict(expect):
            missing = sorted(set(expect) - set(described))[:3]
            unexpected = sorted(set(described) - set(expect))[:3]
            wrong = [n for n in expect if n in described and described[n] != expect[n]][:3]
            raise ModelFileError(
                f"{arrays_path}: the arrays do not fit the model in {sidecar.name} (missing {missing}, unexpected "
                f"{unexpected}, other shape {[(n, described[n], expect[n]) for n in wrong]})"
            )
    try:
        data = arrays_path.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"{arrays_path}: cannot read the model's arrays ({exc.strerror or exc})") from None
    sha = hashlib.sha256(data).hexdigest()
    if sha != meta.get("sha256"):
        raise ModelFileError(
            f"{arrays_path}: SHA-256 differs from the one in {sidecar.name}; the file was altered or torn"
        )
    try:
        arrays = dict(st_load(data))
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{arrays_path}: not a safetensors file ({exc})") from exc
    return meta, arrays


def parameter_shapes(config: ForecasterConfig) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes a model of ``config`` has, found on the meta device (nothing allocated).

    Raises ``ValueError`` when the model would hold more than :data:`MAX_MODEL_PARAMETERS`.
    """
    with torch.device("meta"):
        model = MODELS[config.model](config)
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    count = sum(math.prod(shape) for shape in shapes.values())
    if count > MAX_MODEL_PARAMETERS:
        raise ValueError(
            f"a '{config.model}' model of this config has {count:,} parameters, over the limit of "
            f"{MAX_MODEL_PARAMETERS:,} (MAX_MODEL_PARAMETERS)"
        )
    return shapes


def sidecar_of(path: Path) -> Path:
    """``NAME.json`` beside ``NAME.safetensors``."""
    return path.with_name(path.name.removesuffix(".safetensors") + ".json")


def arrays_of(sidecar: Path) -> Path:
    """``NAME.safetensors`` beside ``NAME.json``."""
    return sidecar.with_name(sidecar.name.removesuffix(".json") + ".safetensors")


def save_model(
    path: Path,
    model: Forecaster,
    *,
    spec: WindowSpec,
    extra: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` as ``path`` (safetensors) and ``path.with_suffix('.json')``; returns ``path``.

    Parameters
    ----------
    path
        Destination ``.safetensors`` file.
    model
        A forecaster from ``build_model`` (it carries its ``config``).
    spec
        The resolved window spec it was trained on (its L, H and targets must match the config).
    extra
        More JSON-able metadata (e.g. rounds, strategy); may not override the format's keys.
    overwrite
        Replace existing files; default False raises ``FileExistsError``.
    """
    path = Path(path)
    for p in (path, sidecar_of(path)):
        if p.exists() and not overwrite:
            raise FileExistsError(f"{p} exists; pass overwrite=True to replace it")
    write_model_files(path, state_arrays(model), config=model.config, spec=spec, extra=extra)
    logger.info("model saved to %s", path)
    return path


def resolve_model_path(path: Path) -> Path:
    """The JSON sidecar of the model ``path`` names.

    Accepts a ``.safetensors`` or ``.json`` model file, a results folder holding
    ``final_model.safetensors``, or a checkpoint folder (its latest ``round-*.json``;
    ``<folder>/checkpoints`` is searched too).
    """
    path = Path(path)
    if not path.exists():
        raise ModelFileError(
            f"{path}: no such file or folder; pass the final model (final_model.safetensors) or a checkpoint"
        )
    if path.is_dir():
        if (path / FINAL_MODEL_NAME).is_file():
            return (path / FINAL_MODEL_NAME).with_suffix(".json")
        for folder in (path, path / "checkpoints"):
            rounds = sorted((int(m.group(1)), p) for p in folder.glob("round-*.json") if (m := _ROUND.match(p.name)))
            if rounds:
                return rounds[-1][1]
        raise ModelFileError(f"{path}: folder holds neither {FINAL_MODEL_NAME} nor round-*.json checkpoints")
    if path.suffix == ".safetensors":
        return sidecar_of(path)
    if path.suffix == ".json":
        return path
    raise ModelFileError(f"{path}: not a model file; expected NAME.safetensors with NAME.json beside it")


def load_model(path: Path) -> SavedModel:
    """Load a model: a final model, a round checkpoint, a results folder or a checkpoint folder.

    Raises
    ------
    ModelFileError
        The path is missing or not a model, the JSON is unreadable, the arrays or the sidecar
        were altered (``sha256`` / ``digest``), or names/shapes do not fit the config.
    """
    sidecar = resolve_model_path(path)
    meta = read_sidecar(sidecar)
    if model_task(meta) is not None:
        raise ModelFileError(
            f"{sidecar}: is a '{model_task(meta)}' model, not a demand forecaster (see docs/equipment.md for "
            "the equipment task's commands)"
        )
    try:
        config = ForecasterConfig.from_dict(meta["model-config"])
        shapes = parameter_shapes(config)
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{sidecar}: model-config is invalid ({exc})") from None
    try:
        spec = WindowSpec.from_dict(meta.get("window-spec"))
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{sidecar}: window-spec is malformed ({exc})") from None
    if (spec.history, spec.horizon, len(spec.targets)) != (config.history, config.horizon, config.n_targets):
        raise ModelFileError(
            f"{sidecar}: window spec (L={spec.history}, H={spec.horizon}, targets={list(spec.targets)}) "
            f"contradicts model-config (history={config.history}, horizon={config.horizon}, "
            f"n_targets={config.n_targets})"
        )
    meta, arrays = read_model_files(sidecar, expect=shapes)
    bad = [name for name, values in arrays.items() if not np.isfinite(values).all()]
    if bad:
        raise ModelFileError(f"{arrays_of(sidecar)}: array(s) {bad[:3]} hold NaN or infinite weights")
    model = build_model(config)
    try:
        load_arrays(model, arrays)
    except ValueError as exc:
        raise ModelFileError(f"{arrays_of(sidecar)}: the arrays do not fit a '{config.model}' model ({exc})") from exc
    model.eval()
    return SavedModel(model=model, config=config, spec=spec, path=arrays_of(sidecar), metadata=meta)
