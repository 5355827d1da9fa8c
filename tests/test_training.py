"""Plain and DP local training: exactness of DP-SGD, clipping, determinism, FedProx, the budget check first."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medalloc_core.forecast.features import WindowSet, WindowSpec, prepare_hospital
from medalloc_core.forecast.models import ForecasterConfig, build_model, pinball_loss_per_sample
from medalloc_core.forecast.training import (
    DPConfig,
    LinearClipper,
    TrainConfig,
    _loader,
    evaluate,
    predict,
    train_local,
)
from medalloc_core.privacy.accounting import epsilon_for
from medalloc_core.privacy.ledger import PrivacyBudgetExceeded, PrivacyLedger
from medalloc_core.privacy.plan import DPPlan
from tests.forecast_fixtures import records

L, H = 14, 4


@pytest.fixture(scope="module")
def ds():
    return prepare_hospital(records(days=200), WindowSpec(history=L, horizon=H, val_periods=28, test_periods=28))


def small(model: str = "mlp") -> ForecasterConfig:
    return ForecasterConfig(model=model, history=L, horizon=H, n_features=7, hidden=16, channels=4, levels=1)


def params(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in net.named_parameters()}


def subset(data: WindowSet, n: int) -> WindowSet:
    return WindowSet(data.X[:n], data.y[:n], data.units[:n], data.target_start[:n])


def per_sample_grads(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """Reference: one backward per sample, flattened into a (B, P) matrix per sample."""
    rows = []
    for i in range(len(x)):
        net.zero_grad()
        pinball_loss_per_sample(net(x[i : i + 1]), y[i : i + 1], net.config.quantiles).sum().backward()
        rows.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    net.zero_grad()
    return rows


@pytest.mark.parametrize("mode", ["linear", "hooks", "ghost"])
def test_dp_with_no_clipping_and_no_noise_is_plain_sgd_on_the_poisson_batches(ds, mode):
    model = "mlp" if mode == "linear" else "tcn"
    data = subset(ds.train, 120 if mode == "linear" else 48)
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05, optimizer="sgd", seed=5)
    net = build_model(small(model), seed=1)
    ref = build_model(small(model), seed=1)
    res = train_local(
        net, data, config=cfg, dp=DPConfig(noise_multiplier=0.0, max_grad_norm=1e6, grad_sample_mode=mode)
    )

    # The reference: the same seeded Poisson batches, summed per-sample loss over the *expected*
    # batch size (what DP-SGD divides by), the same SGD.
    loader = _loader(
        data, cfg.batch_size, cfg.seed, plan=DPPlan(n_examples=len(data), batch_size=cfg.batch_size, epochs=cfg.epochs)
    )
    expected_b = int(len(data) * (1 / len(loader)))
    opt = torch.optim.SGD(ref.parameters(), lr=cfg.lr, momentum=0.9)
    steps = 0
    for _ in range(cfg.epochs):
        for x, y in loader:
            opt.zero_grad()
            (pinball_loss_per_sample(ref(x), y, ref.config.quantiles).sum() / expected_b).backward()
            opt.step()
            steps += 1
    assert res.steps == steps == 2 * len(loader)
    for (n, a), b in zip(net.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=n)


def test_linear_clipping_matches_per_sample_reference_and_respects_bound(ds):
    net = build_model(small("mlp"), seed=0)
    x, y = ds.train.X[:10], ds.train.y[:10]
    C = 0.05
    rows = per_sample_grads(net, x, y)
    assert max(r.norm() for r in rows) > C  # the bound binds on this batch
    clipped = [r * min(1.0, C / (r.norm().item() + 1e-6)) for r in rows]
    clipper = LinearClipper(net)
    try:
        sums, _ = clipper.clipped_sum(x, y, net.config.quantiles, C)
        torch.testing.assert_close(
            torch.cat([s.flatten() for s in sums]), torch.stack(clipped).sum(0), rtol=1e-4, atol=1e-6
        )
        for i in range(len(x)):  # one sample at a time: its clipped gradient's norm is at most C
            one, _ = clipper.clipped_sum(x[i : i + 1], y[i : i + 1], net.config.quantiles, C)
            assert torch.cat([s.flatten() for s in one]).norm() <= C * (1 + 1e-5)
    finally:
        clipper.close()


def test_linear_mode_refuses_models_it_cannot_clip_exactly():
    with pytest.raises(ValueError, match="nn.Linear"):
        LinearClipper(build_model(small("tcn"), seed=0))


@pytest.mark.parametrize("model", ["mlp", "tcn"])
def test_same_seed_same_parameters(ds, model):
    data = subset(ds.train, 40)
    runs = []
    for seed in (7, 7, 8):
        net = build_model(small(model), seed=0)
        train_local(
            net, data, config=TrainConfig(epochs=1, batch_size=20, seed=seed), dp=DPConfig(noise_multiplier=1.0)
        )
        runs.append(params(net))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert any(not torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_opacus_mode_returns_the_original_module(ds):
    net = build_model(small("tcn"), seed=0)
    names = [n for n, _ in net.named_parameters()]
    train_local(
        net,
        subset(ds.train, 40),
        config=TrainConfig(epochs=1, batch_size=20),
        dp=DPConfig(noise_multiplier=1.0, grad_sample_mode="hooks"),
    )
    assert [n for n, _ in net.named_parameters()] == names
    assert all(not hasattr(p, "grad_sample") for p in net.parameters())
    net(ds.train.X[:3]).sum().backward()  # no Opacus hook left behind
    assert all(getattr(p, "grad_sample", None) is None for p in net.parameters())


def test_fedprox_pulls_towards_global_weights(ds):
    data = subset(ds.train, 120)
    global_net = build_model(small(), seed=0)
    g = [p.detach().clone() for p in global_net.parameters()]

    def distance(mu: float) -> float:
        net = build_model(small(), seed=0)
        train_local(net, data, config=TrainConfig(epochs=3, batch_size=16, lr=0.01, fedprox_mu=mu), global_params=g)
        return float(sum(((p.detach() - q) ** 2).sum() for p, q in zip(net.parameters(), g)).sqrt())

    free, prox = distance(0.0), distance(5.0)
    assert 0 < prox < 0.8 * free


FP = "sha256:" + "ab" * 32  # a well-formed dataset fingerprint


def real_ledger(tmp_path, *, budget: float = 50.0, accountant: str = "rdp") -> PrivacyLedger:
    return PrivacyLedger.open(tmp_path / "ledger.json", epsilon_budget=budget, delta=1e-5, accountant=accountant)


def test_ledger_is_asked_for_the_exact_planned_run(ds, tmp_path):
    data = subset(ds.train, 100)  # 100 windows, batch 16 -> 7 Poisson batches per epoch, q = 1/7
    ledger = real_ledger(tmp_path)
    res = train_local(
        build_model(small(), seed=0),
        data,
        config=TrainConfig(epochs=3, batch_size=16),
        dp=DPConfig(noise_multiplier=1.3),
        ledger=ledger,
        fingerprint=FP,
        run_id="r1",
    )
    assert ledger.history(FP) == [(1.3, 1 / 7, 21)]
    assert [s.run_id for e in ledger.entries() for s in e.spends] == ["r1"]
    assert res.steps == 21 and res.sample_rate == 1 / 7 and res.noise_multiplier == 1.3
    # the ledger's cumulative epsilon is the accountant's for exactly that history
    assert ledger.epsilon_spent() == pytest.approx(epsilon_for([(1.3, 1 / 7, 21)], delta=1e-5, accountant="rdp"))
    # epsilon of the call from Opacus' PRV accountant; more noise, less epsilon
    quieter = train_local(
        build_model(small(), seed=0),
        data,
        config=TrainConfig(epochs=3, batch_size=16),
        dp=DPConfig(noise_multiplier=2.6),
    )
    assert 0 < quieter.epsilon_spent_this_call < res.epsilon_spent_this_call < np.inf


def test_ledger_gets_the_samplers_true_rate_when_float_rounding_drops_a_batch(ds, tmp_path):
    # 93 windows, batch 1: q = 1/93, but Opacus' sampler draws int(1 / (1/93)) = 92 batches per epoch
    ledger = real_ledger(tmp_path)
    data = WindowSet(ds.train.X[:93], ds.train.y[:93], ds.train.units[:93], ds.train.target_start[:93])
    res = train_local(
        build_model(small(), seed=0),
        data,
        config=TrainConfig(epochs=1, batch_size=1),
        dp=DPConfig(noise_multiplier=1.0, accountant="rdp"),
        ledger=ledger,
        fingerprint=FP,
    )
    assert ledger.history(FP) == [(1.0, 1 / 93, 92)] and res.steps == 92


def test_budget_refusal_happens_before_any_parameter_changes(ds, tmp_path):
    ledger = real_ledger(tmp_path, budget=0.5)
    ledger_bytes = (tmp_path / "ledger.json").read_bytes()
    net = build_model(small(), seed=0)
    before = params(net)
    with pytest.raises(PrivacyBudgetExceeded):
        train_local(
            net,
            subset(ds.train, 100),
            config=TrainConfig(epochs=1),
            dp=DPConfig(noise_multiplier=1.0),
            ledger=ledger,
            fingerprint=FP,
        )
    after = params(net)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in net.parameters())
    assert (tmp_path / "ledger.json").read_bytes() == ledger_bytes  # nothing recorded either


def test_budget_is_cumulative_over_calls_and_refuses_the_call_that_would_exceed_it(ds, tmp_path):
    data = subset(ds.train, 100)
    one_call = epsilon_for([(1.0, 1 / 7, 7)], delta=1e-5, accountant="rdp")
    two_calls = epsilon_for([(1.0, 1 / 7, 14)], delta=1e-5, accountant="rdp")
    ledger = real_ledger(tmp_path, budget=(two_calls + one_call) / 2)  # room for one call, not two
    cfg, dp = TrainConfig(epochs=1, batch_size=16), DPConfig(noise_multiplier=1.0)
    train_local(build_model(small(), seed=0), data, config=cfg, dp=dp, ledger=ledger, fingerprint=FP)
    # a restart: the node reopens its ledger from disk; the spend is still there
    reopened = PrivacyLedger.open(
        tmp_path / "ledger.json", epsilon_budget=ledger.epsilon_budget, delta=1e-5, accountant="rdp"
    )
    with pytest.raises(PrivacyBudgetExceeded):
        train_local(build_model(small(), seed=0), data, config=cfg, dp=dp, ledger=reopened, fingerprint=FP)
    assert reopened.epsilon_spent() == pytest.approx(one_call)
    assert reopened.epsilon_spent() <= reopened.epsilon_budget


def test_ledger_without_dp_or_fingerprint_is_an_error(ds, tmp_path):
    with pytest.raises(ValueError, match="fingerprint"):
        train_local(
            build_model(small(), seed=0),
            ds.train,
            config=TrainConfig(),
            dp=DPConfig(noise_multiplier=1.0),
            ledger=real_ledger(tmp_path),
        )
    with pytest.raises(ValueError, match="exactly one"):
        DPConfig(noise_multiplier=1.0, target_epsilon=3.0)
    with pytest.raises(TypeError):
        DPConfig(1.0)  # privacy-critical fields are keyword-only


def test_plain_training_learns_and_predict_evaluate_shapes(ds):
    net = build_model(small(), seed=0)
    before = evaluate(net, ds.val)["pinball"]
    res = train_local(net, ds.train, config=TrainConfig(epochs=10, batch_size=32, lr=3e-3))
    after = evaluate(net, ds.val)
    assert res.noise_multiplier is None and res.epsilon_spent_this_call is None and res.num_examples == len(ds.train)
    assert after["pinball"] < 0.9 * before
    pred = predict(net, ds.test.X)
    assert pred.shape == (len(ds.test), H, 2, 3) and (np.diff(pred, axis=-1) >= 0).all()


@pytest.mark.parametrize("mode", ["linear", "hooks"])
def test_empty_poisson_batches_take_a_noise_only_step(ds, mode):
    data = subset(ds.train, 3)  # batch 1 of 3: q = 1/3, an empty batch has probability (2/3)^3 per step
    model = "mlp" if mode == "linear" else "tcn"
    loader = _loader(data, 1, 0, plan=DPPlan(n_examples=len(data), batch_size=1, epochs=1))
    sizes = [len(x) for _ in range(4) for x, _ in loader]
    assert 0 in sizes  # this seed does draw empty batches
    net = build_model(small(model), seed=0)
    before = params(net)
    res = train_local(
        net,
        data,
        config=TrainConfig(epochs=4, batch_size=1, seed=0),
        dp=DPConfig(noise_multiplier=1.0, grad_sample_mode=mode, accountant="rdp"),
    )
    assert res.steps == 12  # 3 Poisson batches per epoch, empty ones included
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert any(not torch.equal(before[n], p) for n, p in net.named_parameters())


@pytest.mark.parametrize("mode", ["linear", "hooks", "ghost"])
def test_one_sample_update_is_clipped_to_the_bound(ds, mode):
    # one window, batch 1: q = 1 (always sampled), expected batch 1; sigma 0 and SGD lr 1 make
    # the parameter change exactly the clipped per-sample gradient
    model = "mlp" if mode == "linear" else "tcn"
    net = build_model(small(model), seed=0)
    before = torch.cat([p.detach().flatten() for p in net.parameters()])
    C = 1e-3
    train_local(
        net,
        subset(ds.train, 1),
        config=TrainConfig(epochs=1, batch_size=1, lr=1.0, optimizer="sgd"),
        dp=DPConfig(noise_multiplier=0.0, max_grad_norm=C, grad_sample_mode=mode, accountant="rdp"),
    )
    step = torch.cat([p.detach().flatten() for p in net.parameters()]) - before
    assert C * 0.99 < step.norm() <= C * (1 + 1e-4)  # the raw gradient is far larger, so it was clipped to C


def test_target_epsilon_calibration(ds):
    from opacus.accountants import PRVAccountant

    from medalloc_core.privacy import accounting

    data = subset(ds.train, 100)
    res = train_local(
        build_model(small(), seed=0),
        data,
        config=TrainConfig(epochs=2, batch_size=16),
        dp=DPConfig(target_epsilon=2.0, planned_rounds=3, delta=1e-5),
    )
    expected = accounting.noise_multiplier_for(
        target_epsilon=2.0, delta=1e-5, sample_rate=1 / 7, steps=3 * 2 * 7, accountant="prv"
    )
    assert res.noise_multiplier == expected
    acct = PRVAccountant()
    acct.history = [(res.noise_multiplier, 1 / 7, 3 * 2 * 7)]
    assert acct.get_epsilon(delta=1e-5) <= 2.0 + 1e-6  # three such calls stay within the target


def test_training_leaves_the_callers_random_state_alone(ds):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_local(build_model(small(), seed=0), subset(ds.train, 40), config=TrainConfig(epochs=1, batch_size=20, seed=9))
    assert torch.equal(torch.rand(3), expected)


def test_linear_clipping_is_exact_for_layers_applied_to_several_rows_per_sample():
    """The hybrid applies its Linear layers to T target rows of each window: the Gram-matrix norm must be exact."""
    torch.manual_seed(0)
    net = build_model(ForecasterConfig(model="hybrid", history=L, horizon=H, n_features=7, n_targets=2, hidden=16))
    with torch.no_grad():  # leave the zero-initialised state, where every gradient below the output is 0
        for p in net.parameters():
            p.normal_(0.0, 0.3)
    x, y = torch.randn(9, L, 7), torch.randn(9, H, 2)
    C = 0.05
    rows = per_sample_grads(net, x, y)
    assert max(r.norm() for r in rows) > C
    clipped = [r * min(1.0, C / (r.norm().item() + 1e-6)) for r in rows]
    clipper = LinearClipper(net)
    try:
        sums, _ = clipper.clipped_sum(x, y, net.config.quantiles, C)
    finally:
        clipper.close()
    torch.testing.assert_close(
        torch.cat([s.flatten() for s in sums]), torch.stack(clipped).sum(0), rtol=1e-4, atol=1e-6
    )
