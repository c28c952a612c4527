"""AdvUnlearn (erase/objectives/advunlearn.py) on a tiny random SD model, text encoder trained."""

from __future__ import annotations

import pytest
import torch

from erase.errors import EraseError
from erase.models.soft_prompt import encode_with_slots, tokenize_with_slots
from erase.objectives import build_objective
from erase.objectives.advunlearn import AdvUnlearn
from erase.objectives.base import Batch, Draws, per_sample_mse

FORGET = ["a photo of a nude person", "nude"]


class Data:
    """The SetupData protocol without a run directory (caches kept in memory)."""

    def __init__(self, forget, retain=("a dog", "a house")):
        self.forget_prompts, self.retain_prompts, self.anchor_prompts, self.seed = forget, list(retain), [], 0

    def cached(self, name, make):
        return make()


@pytest.fixture
def setup(tiny_models):
    """`setup(**options)` -> (Models, the set-up AdvUnlearn objective) on a fresh tiny pipeline."""

    def make(**options):
        models, _, _ = tiny_models("text_encoder_layers")
        obj = build_objective("advunlearn", {"ddim_steps": 4, "warmup_steps": 0, **options}, "t.yaml")
        obj.setup(models, Data(FORGET))
        return models, obj

    return make


def batch(step=0) -> Batch:
    g = torch.Generator().manual_seed(3)
    return Batch(forget_prompts=FORGET, forget_ids=torch.tensor([1, 0]), retain_prompts=["a dog", "a house"],
                 retain_latents=torch.randn(2, 4, 16, 16, generator=g), retain_ids=torch.tensor([0, 1]),
                 rng=Draws(seed=0, step=step))


def test_defaults_train_the_text_encoder():
    obj = AdvUnlearn()
    # official text_encoder_full: encoder layers + final layer norm, not the embeddings
    assert obj.default_params == "text_encoder_layers"
    c = obj.config
    assert (c.eta, c.attack_steps, c.attack_lr, c.n_tokens, c.gamma) == (1.0, 30, 1e-3, 1, 0.3)
    assert (c.attack_init, c.warmup_steps, c.attack_every, c.position) == ("random", 200, 1, "prefix")
    assert obj.needs == frozenset({"retain_prompts"})
    assert build_objective("advunlearn", {"gamma": 0}).needs == frozenset()
    with pytest.raises(EraseError, match="attack_lr: must be > 0"):
        build_objective("advunlearn", {"attack_lr": 0}, "x.yaml")


def test_loss_equals_formula_with_attacked_prompt(setup):
    models, obj = setup(gamma=0.5, eta=1.0)
    b = batch()
    obj.delta = torch.randn(1, 32, generator=torch.Generator().manual_seed(0))
    out = obj.losses(models, b)

    x_t, t, _ = obj.sample_xt(models, b)
    te, unet = models.text_encoder, models.unet
    ids, mask = tokenize_with_slots(models.tokenizer, FORGET, 1, "prefix")
    with models.original(), torch.no_grad():  # frozen text encoder (a copy), original UNet
        plain = models.encode(FORGET)
        uncond = models.encode([""]).expand_as(plain)
        e_u = unet(x_t, t, encoder_hidden_states=uncond).sample
        e_c = unet(x_t, t, encoder_hidden_states=plain).sample
    target = e_u - 1.0 * (e_c - e_u)
    pred = unet(x_t, t, encoder_hidden_states=encode_with_slots(te, ids, mask, obj.delta)).sample
    torch.testing.assert_close(out.forget, ((pred - target) ** 2).flatten(1).mean(1), rtol=1e-4, atol=1e-6)
    # the attacked prompt differs from the plain one: the slot really carries delta
    assert not torch.allclose(encode_with_slots(te, ids, mask, obj.delta), plain)

    # retain regulariser: gamma * MSE(eps(x_r, E_theta(c_r)), eps_o(x_r, E_o(c_r))) on the retain
    # prompts' own cached trajectories (official retain_train 'reg'), one position per retain sample
    kr = b.rng.randint(b.retain_ids, 0, 4, stream="k-retain")
    xr = obj.retain_cache["trajectory"][kr, b.retain_ids]
    rt = obj.retain_cache["timesteps"][kr].long()
    with models.original(), torch.no_grad():
        r_target = unet(xr, rt, encoder_hidden_states=models.encode(b.retain_prompts)).sample
    r_pred = unet(xr, rt, encoder_hidden_states=models.encode(b.retain_prompts)).sample
    torch.testing.assert_close(out.retain, 0.5 * per_sample_mse(r_pred, r_target).mean(), rtol=1e-4, atol=1e-7)
    # before any training the trained encoder equals the original: the retain term is ~0
    assert out.retain.item() < 1e-10


def _attack_loss(models, obj, b, delta, steps):
    """Mean attack loss of `delta` over the attack's own draws (t, x_t) of steps 0..steps-1."""
    total = 0.0
    with torch.no_grad():
        for k in range(steps):
            x_t, t = obj.redraw_xt(models, b, k)
            with models.original():
                target = models.pred(x_t, t, models.encode(b.forget_prompts))
            total += per_sample_mse(models.pred(x_t, t, obj.encode_attacked(models, b.forget_prompts, delta)), target).mean().item()
    return total / steps


def test_attack_lowers_its_loss_and_leaves_weights_alone(setup):
    models, obj = setup(attack_steps=8, attack_lr=5e-2, attack_init="latest")
    # a slightly erased model, so there is something to attack
    with torch.no_grad():
        for p in models.text_encoder.parameters():
            p.add_(0.02 * torch.randn_like(p))
    before = {n: p.detach().clone() for n, p in models.text_encoder.named_parameters()}
    b = batch()
    # each attack step draws a new (t, x_t): positions and trajectories differ between steps
    draws = [obj.redraw_xt(models, b, k) for k in range(8)]
    assert len({tuple(t.tolist()) for _, t in draws}) > 1
    assert not torch.equal(draws[0][0], draws[1][0])
    init = obj._initial_delta(models, b)
    obj.before_step(models, b, [p for p in models.text_encoder.parameters()])
    assert obj.delta is not None and obj.delta.shape == (1, 32)
    # over the same draws, the attacked delta matches the original model better than where it started
    assert _attack_loss(models, obj, b, obj.delta, 8) < 0.95 * _attack_loss(models, obj, b, init, 8)
    for n, p in models.text_encoder.named_parameters():
        assert p.grad is None and torch.equal(p, before[n]), n
    # "latest" warm-starts the next attack from this delta
    assert torch.equal(obj._initial_delta(models, b), obj.delta)
    # the latest delta survives a checkpoint round trip
    _, fresh = setup()
    fresh.load_state_dict(obj.state_dict())
    assert torch.equal(fresh.delta, obj.delta)
    # warm-up: no attack before warmup_steps
    _, obj2 = setup(warmup_steps=5)
    obj2.before_step(models, batch(step=3), [])
    assert obj2.delta is None and obj2.losses(models, batch(step=3)).logs["attacked"] == 0.0


def test_one_step_moves_the_text_encoder_towards_the_esd_target(setup):
    models, obj = setup(attack_steps=3, attack_lr=1e-2, gamma=0.3)
    params = [p for p in models.text_encoder.parameters() if p.requires_grad]
    unet_before = {n: p.detach().clone() for n, p in models.unet.named_parameters()}
    opt = torch.optim.Adam(params, lr=1e-3)
    b = batch()
    obj.before_step(models, b, params)
    out0 = obj.losses(models, b)
    opt.zero_grad()
    (out0.forget.mean() + out0.retain).backward()
    assert all(p.grad is not None for p in params[:3])
    opt.step()
    out1 = obj.losses(models, b)
    assert out1.forget.mean() < out0.forget.mean()
    for n, p in models.unet.named_parameters():  # only the text encoder is trained
        assert torch.equal(p, unet_before[n]), n
