import math

import pytest
import torch

from erase.config import from_dict
from erase.errors import EraseError
from erase.weighting import Weighting, WeightingConfig, loreun_weights


def test_smaller_loss_gets_larger_weight_and_mean_is_one():
    l = torch.tensor([0.30, 0.10, 0.20, 0.05])
    w = loreun_weights(l, tau=0.1)
    assert torch.argsort(w, descending=True).tolist() == torch.argsort(l).tolist()
    assert w.mean().item() == pytest.approx(1.0, abs=1e-6)
    # the formula itself: softmax(-l / tau) * B
    expected = torch.exp(-l / 0.1) / torch.exp(-l / 0.1).sum() * 4
    assert torch.allclose(w, expected)


def test_dynamic_weights_carry_no_gradient():
    l = torch.tensor([0.3, 0.1, 0.2], requires_grad=True)
    loss_vec = l * 2  # a per-sample forget term that depends on the same values
    w = Weighting(WeightingConfig(kind="dynamic", tau=0.1, estimate="raw"), 3)(loss_vec, torch.arange(3))
    assert not w.requires_grad
    (w * loss_vec).mean().backward()
    # with detached weights the gradient is w_i * 2 / B exactly (no term through the softmax)
    assert torch.allclose(l.grad, w * 2 / 3)


def test_uniform_and_large_tau_give_ones():
    ids = torch.arange(4)
    l = torch.tensor([1.0, 0.0, 0.5, 0.2])
    assert torch.equal(Weighting(WeightingConfig(), 4)(l, ids), torch.ones(4))
    w = Weighting(WeightingConfig(kind="dynamic", tau=1e6, estimate="raw"), 4)(l, ids)
    assert torch.allclose(w, torch.ones(4), atol=1e-5)


def test_static_uses_cached_original_losses_not_current():
    wt = Weighting(WeightingConfig(kind="static", tau=0.1), 4)
    wt.set_static(torch.tensor([0.4, 0.1, 0.3, 0.2]))
    w = wt(torch.tensor([0.0, 9.0]), torch.tensor([0, 1]))  # current losses are ignored
    assert w[1] > w[0] and w.mean().item() == pytest.approx(1.0)


def test_global_normalisation_is_over_the_whole_forget_set():
    wt = Weighting(WeightingConfig(kind="static", tau=0.1, normalize="global"), 4)
    table = torch.tensor([0.4, 0.1, 0.3, 0.2])
    wt.set_static(table)
    full = wt(table, torch.arange(4))
    assert full.mean().item() == pytest.approx(1.0, abs=1e-6)
    # a batch of the two hardest-to-forget samples keeps its (large) global weights: mean > 1
    part = wt(table[[1, 3]], torch.tensor([1, 3]))
    assert torch.allclose(part, full[[1, 3]]) and part.mean() > 1


def test_state_roundtrip_and_mean_weights_per_id():
    cfg = WeightingConfig(kind="dynamic", tau=0.1, normalize="global", estimate="timestep", sample_momentum=0.5)
    wt = Weighting(cfg, 3)
    wt(torch.tensor([0.1, 0.5]), torch.tensor([0, 2]), torch.tensor([10, 990]))
    other = Weighting(cfg, 3)
    other.load_state_dict(wt.state_dict())  # the baseline table and the per-sample averages too
    a = wt(torch.tensor([0.2, 0.3]), torch.tensor([1, 0]), torch.tensor([12, 500]))
    b = other(torch.tensor([0.2, 0.3]), torch.tensor([1, 0]), torch.tensor([12, 500]))
    assert torch.equal(a, b)
    mw = wt.mean_weights()
    assert mw[0] > mw[2] and not math.isnan(mw[1])


def test_bad_config_is_one_line_error():
    with pytest.raises(EraseError, match=r"x.yaml: weighting.tau: must be > 0"):
        from_dict(WeightingConfig, {"kind": "dynamic", "tau": 0}, "x.yaml: weighting")
    with pytest.raises(EraseError, match="kind: expected one of"):
        from_dict(WeightingConfig, {"kind": "loreun"}, "x.yaml: weighting")


def test_reference_estimate_is_static_plus_the_paired_change():
    """estimate reference: l_i = static_i + (loss_i - original loss_i at the same draw)."""
    wt = Weighting(WeightingConfig(kind="dynamic", tau=0.1, normalize="global", estimate="reference"), 4)
    assert wt.needs_static and wt.wants_reference
    static = torch.tensor([0.4, 0.1, 0.3, 0.2])
    wt.set_static(static)
    # at the original weights loss == reference whatever the draw: the weights are the static ones
    draw = torch.tensor([5.0, 0.01, 0.7, 2.0])
    w0 = wt(draw, torch.arange(4), reference=draw)
    assert torch.allclose(wt.latest, static)
    assert torch.allclose(w0, loreun_weights(static, 0.1), atol=1e-6)
    # a sample whose loss rose by 0.5 since the start loses weight; the others keep their ranking
    wt(torch.tensor([1.0]), torch.tensor([1]), reference=torch.tensor([0.5]))
    assert wt.latest[1].item() == pytest.approx(0.6)
    with pytest.raises(AssertionError, match="Losses.reference"):
        wt(draw, torch.arange(4))


def test_timestep_estimate_divides_by_the_running_per_timestep_mean():
    """estimate timestep: a loss twice its timestep's running mean counts twice the overall mean."""
    wt = Weighting(WeightingConfig(kind="dynamic", tau=0.1, estimate="timestep", timestep_buckets=2), 4, 1000)
    # bucket 0 (t < 500) sees 1.0 and 3.0 (mean 2), bucket 1 sees 0.1 and 0.3 (mean 0.2); overall mean 1.1
    wt(torch.tensor([1.0, 3.0, 0.1, 0.3]), torch.arange(4), torch.tensor([0, 499, 500, 999]))
    assert torch.allclose(wt.latest, torch.tensor([0.5, 1.5, 0.5, 1.5]) * 1.1, atol=1e-6)
    # same relative standing at very different timesteps -> same weight
    assert wt.latest[0] == pytest.approx(wt.latest[2].item()) and wt.latest[1] == pytest.approx(wt.latest[3].item())


def test_auto_estimate_uses_the_reference_only_where_it_is_free():
    auto = WeightingConfig(kind="dynamic")
    assert Weighting(auto, 4, reference_is_free=True).estimate == "reference"
    assert Weighting(auto, 4, reference_is_free=False).estimate == "timestep"
    assert not Weighting(auto, 4, reference_is_free=False).needs_static
    from erase.objectives import get_objective

    assert get_objective("esd").reference_is_free and get_objective("advunlearn").reference_is_free
    assert not get_objective("salun").reference_is_free and not get_objective("erasediff").reference_is_free


def test_standardized_losses_make_tau_scale_free():
    """With `standardize`, weights depend on the losses' z-scores only: any affine rescale gives the same
    weights, in a batch and over the global table; without it, tiny losses give near-flat weights."""
    losses = torch.tensor([1e-4, 2e-4, 5e-4, 3e-3, 4e-2])
    ids = torch.arange(5)
    for normalize in ("batch", "global"):
        cfg = WeightingConfig(kind="dynamic", tau=1.0, estimate="raw", normalize=normalize, standardize=True)
        a, b = Weighting(cfg, 5)(losses, ids), Weighting(cfg, 5)(1000 * losses + 3, ids)
        assert torch.allclose(a, b, atol=1e-5) and abs(float(a.mean()) - 1) < 1e-5
        z = (losses - losses.mean()) / losses.std()
        assert float(a.max() / a.min()) == pytest.approx(float(torch.exp(z.max() - z.min())), rel=1e-4)
    flat = Weighting(WeightingConfig(kind="dynamic", tau=1.0, estimate="raw"), 5)(losses, ids)
    assert float(flat.max() / flat.min()) < 1.05
