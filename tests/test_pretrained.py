"""The shipped public weights of the hybrid forecaster and the script that reproduces them."""

from __future__ import annotations

from importlib import resources

import pytest
import torch

from medalloc.simulations import pretrain
from medalloc_core.forecast.models import ForecasterConfig, build_model
from medalloc_core.forecast.pretrained import PRETRAINED_NAME, PretrainedMismatch, load_pretrained, pretrained_info


def _config(**kw) -> ForecasterConfig:
    base = dict(model="hybrid", history=28, horizon=14, n_features=9, n_targets=2, hidden=64, context=1, level="weeks")
    return ForecasterConfig(**(base | kw))


def test_shipped_weights_are_small_versioned_and_load_for_any_target_set():
    files = resources.files("medalloc_core.forecast.pretrained")
    assert len(files.joinpath(f"{PRETRAINED_NAME}.safetensors").read_bytes()) < 400_000
    info = pretrained_info()
    assert info["version"] and info["reproduce"] == "python -m simulations.pretrain"
    two = load_pretrained(_config())
    one = load_pretrained(_config(n_features=5, n_targets=1))  # admissions only: same weights
    assert info["config"]["level"] == "weeks" and info["config"]["context"] == 1  # the level smoothed from weeks
    for a, b in zip(two.state_dict().values(), one.state_dict().values()):
        assert torch.equal(a, b)
    assert any(p.abs().sum() > 0 for p in two.out.parameters())  # trained, not the zero initialisation
    assert not all(
        torch.equal(a, b) for a, b in zip(two.state_dict().values(), build_model(_config()).state_dict().values())
    )


def test_a_model_of_another_shape_is_refused_with_the_setting_to_change():
    with pytest.raises(PretrainedMismatch, match=r"history=56 \(weights: 28\)"):
        load_pretrained(_config(history=56))
    with pytest.raises(PretrainedMismatch, match=r"level='week' \(weights: 'weeks'\).*context 'weeks'"):
        load_pretrained(_config(context=0, level="week", n_features=7))  # a hybrid without the weekly means


@pytest.mark.slow
def test_the_script_writes_weights_that_load(tmp_path):
    assert pretrain.main(["--quick", "--out", str(tmp_path)]) == 0
    from safetensors.torch import load_file

    state = load_file(str(tmp_path / f"{PRETRAINED_NAME}.safetensors"))
    model = build_model(_config())
    model.load_state_dict(state)  # the same parameter names and shapes as the shipped file
    assert (tmp_path / f"{PRETRAINED_NAME}.json").is_file()
