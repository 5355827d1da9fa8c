"""The privacy mechanism registry and the one DP-SGD step every DP-SGD path runs (on Opacus)."""

from __future__ import annotations

import pytest
import torch

from medalloc_core.privacy.dpsgd import DPSGDStep, os_generator
from medalloc_core.privacy.mechanisms import (
    MECHANISMS,
    SHIPPED_MECHANISM,
    MechanismNotOffered,
    check_offered,
    get_mechanism,
)
from medalloc_core.privacy.plan import DPPlan
from medalloc_core.privacy.release import ReleasePlan


def test_the_registry_holds_the_shipped_release_and_the_research_mechanisms_beside_it():
    assert SHIPPED_MECHANISM == "source" and MECHANISMS["source"].shipped
    assert set(MECHANISMS) == {"source", "dp-sgd-patient", "dp-sgd-window", "dp-sgd-device"}
    assert not MECHANISMS["dp-sgd-patient"].shipped and not MECHANISMS["dp-sgd-window"].shipped
    for mechanism in MECHANISMS.values():
        assert mechanism.name and mechanism.unit and mechanism.charge  # what it protects and how it is charged


def test_each_mechanism_names_the_ledger_item_it_charges():
    plan = ReleasePlan.calibrate(epsilon=1.0, delta=1e-6, max_stay_days=14)
    assert get_mechanism("source").ledger_item(plan) == (plan.noise_multiplier, 1.0, 1)
    assert get_mechanism("dp-sgd-patient").ledger_item((8.0, 0.5, 100)) == (2.0, 0.75, 100)
    dp_plan = DPPlan(n_examples=1000, batch_size=100, epochs=2)
    assert get_mechanism("dp-sgd-window").ledger_item((dp_plan, 1.3)) == (1.3, 0.1, 20)
    with pytest.raises(KeyError, match="known: source"):
        get_mechanism("laplace")


def test_only_the_source_release_is_offered_to_nodes():
    assert check_offered("source") is MECHANISMS["source"]
    for name in ("dp-sgd-patient", "none", ""):
        with pytest.raises(MechanismNotOffered, match=f"privacy-mechanism '{name}' is not offered; use 'source'"):
            check_offered(name)


def test_the_step_clips_each_example_sums_noises_and_divides_by_the_expected_batch():
    w = torch.zeros(2, requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    step = DPSGDStep([w, b], noise_multiplier=0.0, max_grad_norm=0.1, expected_batch_size=2)
    # example 1 has norm 5 (clipped to 0.1), example 2 norm 0.05 (kept)
    step.from_grad_samples([torch.tensor([[3.0, 4.0], [0.03, 0.04]]), torch.zeros(2, 1)])
    torch.testing.assert_close(w.grad, (torch.tensor([0.06, 0.08]) + torch.tensor([0.03, 0.04])) / 2, atol=1e-6, rtol=0)
    assert not hasattr(w, "grad_sample") or w.grad_sample is None
    step.from_clipped_sums([torch.tensor([1.0, 2.0]), torch.tensor([4.0])])
    torch.testing.assert_close(w.grad, torch.tensor([0.5, 1.0]))
    step.close()
    assert not hasattr(w, "summed_grad") and not hasattr(w, "grad_sample")


def test_the_noise_has_sd_sigma_c_over_the_batch_and_an_empty_batch_still_gets_it():
    p = torch.zeros(50_000, requires_grad=True)
    step = DPSGDStep([p], noise_multiplier=2.0, max_grad_norm=0.5, expected_batch_size=4)
    step.from_grad_samples([torch.zeros((0, 50_000))])
    assert float(p.grad.std()) == pytest.approx(2.0 * 0.5 / 4, rel=0.02)


def test_noise_comes_from_the_os_unless_a_research_generator_is_given():
    def draw(generator: torch.Generator | None) -> torch.Tensor:
        p = torch.zeros(64, requires_grad=True)
        DPSGDStep(
            [p], noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=1, generator=generator
        ).from_clipped_sums([torch.zeros(64)])
        return p.grad.clone()

    assert not torch.equal(draw(None), draw(None))  # default: seeded from os.urandom, never repeats
    assert torch.equal(draw(torch.Generator().manual_seed(3)), draw(torch.Generator().manual_seed(3)))
    assert os_generator().initial_seed() != os_generator().initial_seed()


def test_bad_settings_are_refused():
    p = torch.zeros(2, requires_grad=True)
    for kwargs in ({"noise_multiplier": -1.0}, {"max_grad_norm": 0.0}, {"expected_batch_size": 0}):
        settings = {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "expected_batch_size": 4} | kwargs
        with pytest.raises(ValueError, match="DP-SGD needs"):
            DPSGDStep([p], **settings)
    with pytest.raises(ValueError, match="1 clipped sums for 1 parameters|2 clipped sums"):
        DPSGDStep([p], noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=1).from_clipped_sums(
            [torch.zeros(2), torch.zeros(2)]
        )


def test_the_callers_gradients_can_be_privatised_again():
    """Opacus marks what it processed; the step marks its own views, never the caller's tensors."""
    p = torch.zeros(3, requires_grad=True)
    step = DPSGDStep([p], noise_multiplier=0.0, max_grad_norm=1.0, expected_batch_size=1)
    grads = [torch.tensor([[0.1, 0.2, 0.2]])]
    step.from_grad_samples(grads)
    step.from_grad_samples(grads)
    torch.testing.assert_close(p.grad, grads[0][0])
