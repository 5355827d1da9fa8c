"""Public pretrained weights of the hybrid forecaster: trained on synthetic regions only, so free of privacy cost.

``hybrid-v2.safetensors`` holds the network's parameters and ``hybrid-v2.json`` the
``ForecasterConfig`` fields they fit, the version and how they were made. They are reproduced,
bit for bit on the same machine and library versions, by ``python -m simulations.pretrain``
(docs/forecasting.md). No hospital's record was used: every training series comes from
``medalloc generate``-style synthetic regions with varied settings and from generic synthetic
count processes.
"""

from __future__ import annotations

import json
from dataclasses import replace
from importlib import resources
from typing import Any

import torch

from medalloc_core.forecast.models import ForecasterConfig, ForecasterNet, build_model

__all__ = ["PRETRAINED_NAME", "PretrainedMismatch", "load_pretrained", "pretrained_info"]

PRETRAINED_NAME = "hybrid-v2"
# The fields that shape the parameters (or, for the level, what they mean); n_features and n_targets
# do not (the hybrid is channel-independent and reads only target channels), so one file serves
# every target set.
_SHAPE_FIELDS = ("model", "history", "horizon", "quantiles", "hidden", "layers", "context", "level")


_UNSET = {"level": "week"}  # a field's value in weights stored before it existed


class PretrainedMismatch(ValueError):
    """The requested model shape differs from the shipped weights; the message names the setting to change."""


def pretrained_info(name: str = PRETRAINED_NAME) -> dict[str, Any]:
    """The metadata stored beside the weights (config, version, corpus, training settings)."""
    text = resources.files(__package__).joinpath(f"{name}.json").read_text(encoding="utf-8")
    return dict(json.loads(text))


def _grows(stored: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Context channels the weights were not trained with start with zero weight: the model then
    forecasts exactly as the weights do until training teaches it to read them. The weights' own
    groups come first in ``wanted`` (canonical order: the weekly means, then the others)."""
    return bool(wanted["model"] == "hybrid" and wanted["context"] > stored.get("context", 0))


def check_fits(config: ForecasterConfig, name: str = PRETRAINED_NAME) -> None:
    """Raise ``PretrainedMismatch`` naming the settings to change when ``config`` does not fit the weights ``name``."""
    stored = pretrained_info(name)["config"]
    wanted = config.to_dict()
    grow = _grows(stored, wanted)
    diff = [
        f"{k}={wanted[k]!r} (weights: {stored.get(k, 0)!r})"
        for k in _SHAPE_FIELDS
        if wanted[k] != stored.get(k, _UNSET.get(k, 0)) and not (k == "context" and grow)
    ]
    if diff:
        raise PretrainedMismatch(
            f"the pretrained weights {name} do not fit: {', '.join(diff)}; set history/horizon/hidden to the "
            "weights' values (the hybrid reads the weekly means: context 'weeks'), or start from untrained "
            "weights (init = none)"
        )


def load_pretrained(config: ForecasterConfig, name: str = PRETRAINED_NAME) -> ForecasterNet:
    """A hybrid network for ``config`` holding the shipped public weights.

    Raises
    ------
    PretrainedMismatch
        ``config`` asks for another history, horizon, quantile levels or size than the
        weights were trained with.
    """
    from safetensors.torch import load

    check_fits(config, name)
    model = build_model(replace(config))
    blob = _weights(f"{name}.safetensors")
    state = load(blob)
    state = {k: v.to(torch.float32) for k, v in state.items()}
    if _grows(pretrained_info(name)["config"], config.to_dict()):
        first = state["body.0.weight"]  # (hidden, L * (1 + stored) + 7 + 1): window, context, profile, level
        L = config.history
        have = L * (1 + int(pretrained_info(name)["config"].get("context", 0)))
        zeros = torch.zeros(first.shape[0], L * (1 + config.context) - have)
        state["body.0.weight"] = torch.cat([first[:, :have], zeros, first[:, have:]], dim=1)
    model.load_state_dict(state, strict=True)
    return model


def _weights(filename: str) -> bytes:
    """The weights file's bytes: beside this module, or else the installed ``medalloc``'s copy.

    A Flower App Bundle (``flwr run .``) carries only Flower's built-in file types (``*.py``,
    ``*.json``, ...; no ``.safetensors``, and ``fab-include`` cannot add one), and it comes first
    on ``sys.path``: there the same public file is read from the installed project (a regular
    install's package data, or an editable install's source tree).
    """
    here = resources.files(__package__).joinpath(filename)
    if here.is_file():
        return here.read_bytes()
    from importlib import metadata
    from pathlib import Path
    from urllib.parse import unquote, urlparse

    relative = Path(*__package__.split(".")) / filename
    candidates = []
    try:
        dist = metadata.distribution("medalloc")
        candidates.append(Path(str(dist.locate_file(relative))))
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
        if str(direct.get("url", "")).startswith("file://"):
            candidates.append(Path(unquote(urlparse(direct["url"]).path)) / relative)
    except metadata.PackageNotFoundError:
        pass
    for path in candidates:
        if path.is_file():
            return path.read_bytes()
    raise FileNotFoundError(
        f"the public pretrained weights {filename} are neither beside {here} nor in the installed medalloc; "
        "reinstall MedAlloc (pip install medalloc), or set init = 'none'"
    )
