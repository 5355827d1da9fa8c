"""Save and load a forecaster as safetensors arrays plus a JSON sidecar; nothing is pickled.

The on-disk format is the one the coordinator already writes (``server/checkpoint.py``):

- ``NAME.safetensors`` — the model's parameters (``state_dict`` names);
- ``NAME.json`` — ``model-config`` (:class:`ForecasterConfig` as a dict), ``window-spec``
  (history, horizon, targets, val_periods, test_periods), ``sha256`` of the array file and
  ``format-version``; anything else the writer adds (rounds, strategy, run-config) is kept.

:func:`load_model` also reads what a federation leaves behind: the final model of
``medalloc simulate`` (``<results>/final_model.safetensors``), a results folder, a per-round
checkpoint (``round-000r.json`` / ``.safetensors``) or a checkpoint folder (latest round). A
checkpoint's JSON has no ``window-spec``; it is rebuilt from its ``run-config`` with the
federation's rule (validation and test each ``max(horizon, 28)`` days, as
``medalloc_core.features.federation_window_spec``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from medalloc_core.atomic import atomic_write_bytes
from medalloc_core.features import WindowSpec, federation_window_spec
from medalloc_core.models import ForecasterConfig, build_model

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
FINAL_MODEL_NAME = "final_model.safetensors"  # what `medalloc simulate` and the ServerApp write
_ROUND = re.compile(r"^round-(\d{4,})\.json$")
_SPEC_KEYS = ("history", "horizon", "targets", "val_periods", "test_periods")


class ModelFileError(ValueError):
    """A path is not a loadable MedAlloc model (missing, not a model, altered, inconsistent)."""


@dataclass(frozen=True)
class SavedModel:
    """A loaded forecaster with everything needed to apply it to a hospital's records.

    ``spec`` is the window spec the model was trained with: the targets and ``L``/``H`` it
    expects and the held-out periods that fix which days its per-series scalers are fitted on.
    """

    model: nn.Module
    config: ForecasterConfig
    spec: WindowSpec
    path: Path  # the safetensors file read
    metadata: dict[str, Any] = field(default_factory=dict)


def spec_to_dict(spec: WindowSpec) -> dict[str, Any]:
    """The ``window-spec`` JSON of a resolved spec (the keys the federation sends to nodes)."""
    missing = [k for k in _SPEC_KEYS if getattr(spec, k) is None]
    if missing:
        raise ValueError(f"window spec has unset {missing}; pass spec.resolved(frequency)")
    return {"history": spec.history, "horizon": spec.horizon, "targets": list(spec.targets),
            "val_periods": spec.val_periods, "test_periods": spec.test_periods}


def save_model(
    path: Path,
    model: nn.Module,
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
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: a model file ends in .safetensors")
    config: ForecasterConfig = model.config  # type: ignore[assignment]
    spec_json = spec_to_dict(spec)
    if (spec.history, spec.horizon, len(spec.targets)) != (config.history, config.horizon, config.n_targets):
        raise ValueError(f"window spec {spec_json} does not match the model config {config.to_dict()}")
    sidecar = path.with_suffix(".json")
    for p in (path, sidecar):
        if p.exists() and not overwrite:
            raise FileExistsError(f"{p} exists; pass overwrite=True to replace it")
    data = st_save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    meta = dict(extra or {})
    clash = {"model-config", "window-spec", "sha256", "format-version"} & set(meta)
    if clash:
        raise ValueError(f"extra metadata may not set {sorted(clash)}")
    meta |= {"model-config": config.to_dict(), "window-spec": spec_json,
             "sha256": hashlib.sha256(data).hexdigest(), "format-version": FORMAT_VERSION}
    atomic_write_bytes(sidecar, json.dumps(meta, indent=2, sort_keys=True).encode())  # last: the commit marker
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
        raise ModelFileError(f"{path}: no such file or folder; pass the final model (final_model.safetensors) or a checkpoint")
    if path.is_dir():
        if (path / FINAL_MODEL_NAME).is_file():
            return (path / FINAL_MODEL_NAME).with_suffix(".json")
        for folder in (path, path / "checkpoints"):
            rounds = sorted((int(m.group(1)), p) for p in folder.glob("round-*.json") if (m := _ROUND.match(p.name)))
            if rounds:
                return rounds[-1][1]
        raise ModelFileError(f"{path}: folder holds neither {FINAL_MODEL_NAME} nor round-*.json checkpoints")
    if path.suffix == ".safetensors":
        return path.with_name(path.name[: -len(".safetensors")] + ".json")
    if path.suffix == ".json":
        return path
    raise ModelFileError(f"{path}: not a model file; expected NAME.safetensors with NAME.json beside it")


def _spec_from_meta(meta: Mapping[str, Any], config: ForecasterConfig, where: Path) -> WindowSpec:
    try:
        if "window-spec" in meta:
            raw = meta["window-spec"]
            return WindowSpec(history=int(raw["history"]), horizon=int(raw["horizon"]),
                              targets=tuple(str(t) for t in raw["targets"]),
                              val_periods=int(raw["val_periods"]), test_periods=int(raw["test_periods"]))
        run = meta.get("run-config") or {}
        if "targets" in run:  # a per-round checkpoint: the federation's window rule
            targets = tuple(t.strip() for t in str(run["targets"]).split(",") if t.strip())
            return federation_window_spec(history=int(run.get("history", config.history)),
                                          horizon=int(run.get("horizon", config.horizon)), targets=targets)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{where}: window spec is malformed ({exc})") from exc
    raise ModelFileError(f"{where}: no window-spec (nor a run-config with targets); cannot tell what the model forecasts")


def load_model(path: Path) -> SavedModel:
    """Load a model saved by :func:`save_model`, the ServerApp's final model or a round checkpoint.

    Raises
    ------
    ModelFileError
        The path is missing or not a model, the JSON is unreadable or lacks ``model-config``,
        the arrays' SHA-256 differs from the recorded one, or names/shapes do not fit the config.
    """
    sidecar = resolve_model_path(path)
    stem = sidecar.name[: -len(".json")]
    arrays_path = sidecar.with_name(stem + ".safetensors")
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFileError(f"{sidecar}: missing; a model is NAME.safetensors plus NAME.json (its config)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{sidecar}: not a model's JSON sidecar ({exc})") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("model-config"), dict):
        raise ModelFileError(f"{sidecar}: has no 'model-config'; not a MedAlloc model")
    try:
        config = ForecasterConfig.from_dict(meta["model-config"])
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{sidecar}: model-config is invalid ({exc})") from exc
    spec = _spec_from_meta(meta, config, sidecar)
    if (spec.history, spec.horizon, len(spec.targets)) != (config.history, config.horizon, config.n_targets):
        raise ModelFileError(f"{sidecar}: window spec (L={spec.history}, H={spec.horizon}, targets={list(spec.targets)}) "
                             f"contradicts model-config (L={config.history}, H={config.horizon}, T={config.n_targets})")
    try:
        data = arrays_path.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"{arrays_path}: cannot read the model's arrays ({exc})") from exc
    expected = meta.get("sha256")
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise ModelFileError(f"{arrays_path}: SHA-256 differs from the one in {sidecar.name}; the file was altered or torn")
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{arrays_path}: not a safetensors file ({exc})") from exc
    model = build_model(config)
    own = model.state_dict()
    if set(own) != set(tensors):
        raise ModelFileError(f"{arrays_path}: parameter names do not fit a '{config.model}' model "
                             f"(missing {sorted(set(own) - set(tensors))[:3]}, unexpected {sorted(set(tensors) - set(own))[:3]})")
    for key, tensor in own.items():
        if tuple(tensors[key].shape) != tuple(tensor.shape):
            raise ModelFileError(f"{arrays_path}: '{key}' has shape {tuple(tensors[key].shape)}, the config needs {tuple(tensor.shape)}")
    model.load_state_dict({k: v.to(torch.float32) for k, v in tensors.items()})
    model.eval()
    return SavedModel(model=model, config=config, spec=spec, path=arrays_path, metadata=meta)
