"""One contract suite over every registered forecaster, plus the quantile head and the pinball loss."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.validators import ModuleValidator

from medalloc_core.forecast.models import (
    MODELS,
    ForecasterConfig,
    PinballLoss,
    QuantileHead,
    build_model,
    pinball_loss,
    pinball_loss_per_sample,
)


def tiny(model: str, **kw) -> ForecasterConfig:
    base = dict(model=model, history=12, horizon=3, n_features=7, n_targets=2, hidden=16, channels=8, levels=2)
    base.update(kw)
    return ForecasterConfig(**base)


@pytest.fixture(params=sorted(MODELS))
def name(request) -> str:
    return request.param


def test_output_shape(name):
    net = build_model(tiny(name), seed=0)
    assert tuple(net(torch.randn(4, 12, 7)).shape) == (4, 3, 2, 3)
    with pytest.raises(AssertionError, match="expected"):
        net(torch.randn(4, 11, 7))


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    scale=st.floats(0.01, 1e3),
    quantiles=st.sampled_from([(0.1, 0.5, 0.9), (0.05, 0.25, 0.5, 0.75, 0.95), (0.5,), (0.5, 0.9), (0.02, 0.1)]),
)
def test_quantiles_never_cross(seed, scale, quantiles):
    for name in MODELS:
        net = build_model(tiny(name, quantiles=quantiles), seed=seed % 97)
        x = torch.randn(8, 12, 7, generator=torch.Generator().manual_seed(seed)) * scale
        out = net(x)
        assert out.shape[-1] == len(quantiles)
        assert (out[..., 1:] >= out[..., :-1]).all()


def test_head_is_non_crossing_even_with_adversarial_weights():
    cfg = tiny("mlp")
    head = QuantileHead(4, cfg)
    with torch.no_grad():
        head.proj.weight.fill_(-50.0)  # pushes every raw output, increments included, hugely negative
        head.proj.bias.fill_(-50.0)
    out = head(torch.ones(2, 4))
    assert (out[..., 1:] >= out[..., :-1]).all()


def test_deterministic_init_under_seed(name):
    a, b, c = build_model(tiny(name), seed=3), build_model(tiny(name), seed=3), build_model(tiny(name), seed=4)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and torch.equal(pa, pb)
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))


def test_opacus_validator_accepts(name):
    assert ModuleValidator.validate(build_model(tiny(name), seed=0), strict=False) == []


def test_gradient_reaches_every_parameter(name):
    """After one optimiser step (the hybrid's zero-initialised output layer blocks gradients at step 0 by design)."""
    net = build_model(tiny(name), seed=0)
    x, y = torch.randn(6, 12, 7), torch.randn(6, 3, 2)
    optimiser = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(2):
        optimiser.zero_grad()
        pinball_loss(net(x), y, net.config.quantiles).backward()
        if _ == 0:
            optimiser.step()
    for n, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n


def test_config_round_trip_and_validation():
    cfg = tiny("tcn", quantiles=(0.05, 0.5, 0.95))
    again = ForecasterConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    with pytest.raises(ValueError, match="unknown model"):
        ForecasterConfig(model="lstm")
    with pytest.raises(ValueError, match="strictly increasing"):
        ForecasterConfig(quantiles=(0.9, 0.1))
    with pytest.raises(ValueError, match="unknown ForecasterConfig keys"):
        ForecasterConfig.from_dict({"model": "mlp", "batchnorm": True})


def test_pinball_hand_computed():
    q = (0.1, 0.5, 0.9)
    pred = torch.tensor([[[[1.0, 2.0, 3.0]]], [[[0.0, 0.0, 0.0]]]])  # (B=2, H=1, T=1, Q=3)
    y = torch.tensor([[[2.0]], [[-1.0]]])
    # sample 0: e = 1, 0, -1 -> 0.1*1, 0, (0.9-1)*(-1)=0.1 -> mean 0.2/3
    # sample 1: e = -1 each -> 0.9, 0.5, 0.1 -> mean 1.5/3 = 0.5
    per = pinball_loss_per_sample(pred, y, q)
    torch.testing.assert_close(per, torch.tensor([0.2 / 3, 0.5]))
    assert pinball_loss(pred, y, q).item() == pytest.approx((0.2 / 3 + 0.5) / 2)
    crit = PinballLoss(q, reduction="none")
    assert crit(pred, y).shape == (2,)
    crit.reduction = "sum"
    assert crit(pred, y).item() == pytest.approx(0.2 / 3 + 0.5)


def test_median_only_reduces_to_half_mae():
    pred = torch.randn(5, 3, 2, 1)
    y = torch.randn(5, 3, 2)
    assert pinball_loss(pred, y, (0.5,)).item() == pytest.approx(0.5 * (y - pred[..., 0]).abs().mean().item(), rel=1e-6)
