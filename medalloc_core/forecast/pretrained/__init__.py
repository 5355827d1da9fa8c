"""Public pretrained weights of the hybrid forecaster: trained on synthetic regions only, so free of privacy cost.

``hybrid-v1.safetensors`` holds the network's parameters and ``hybrid-v1.json`` the
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

from medalloc_core.forecast.models import Forecaster, ForecasterConfig, build_model

__all__ = ["PRETRAINED_NAME", "PretrainedMismatch", "load_pretrained", "pretrained_info"]

PRETRAINED_NAME = "hybrid-v1"
# The fields that shape the parameters; n_features and n_targets do not (the hybrid is
# channel-independent and reads only target channels), so one file serves every target set.
_SHAPE_FIELDS = ("model", "history", "horizon", "quantiles", "hidden", "layers")


class PretrainedMismatch(ValueError):
    """The requested model shape differs from the shipped weights; the message names the setting to change."""


def pretrained_info(name: str = PRETRAINED_NAME) -> dict[str, Any]:
    """The metadata stored beside the weights (config, version, corpus, training settings)."""
    text = resources.files(__package__).joinpath(f"{name}.json").read_text(encoding="utf-8")
    return dict(json.loads(text))


def load_pretrained(config: ForecasterConfig, name: str = PRETRAINED_NAME) -> Forecaster:
    """A hybrid network for ``config`` holding the shipped public weights.

    Raises
    ------
    PretrainedMismatch
        ``config`` asks for another history, horizon, quantile levels or size than the
        weights were trained with.
    """
    from safetensors.torch import load

    info = pretrained_info(name)
    stored = info["config"]
    wanted = config.to_dict()
    diff = [f"{k}={wanted[k]!r} (weights: {stored[k]!r})" for k in _SHAPE_FIELDS if wanted[k] != stored[k]]
    if diff:
        raise PretrainedMismatch(
            f"the pretrained weights {name} do not fit: {', '.join(diff)}; set history/horizon/hidden to the "
            "weights' values, or start from untrained weights (init = none)"
        )
    model = build_model(replace(config))
    blob = resources.files(__package__).joinpath(f"{name}.safetensors").read_bytes()
    state = load(blob)
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    return model
