"""EraseDiff (erase/objectives/erasediff.py) on a tiny random SD model."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from erase.config import from_dict
from erase.errors import EraseError
from erase.objectives import build_objective
from erase.objectives.base import Batch, Draws, Models, per_sample_mse
from erase.objectives.erasediff import EraseDiff, EraseDiffConfig

MAP = "a photo of a person wearing clothes"


@pytest.fixture(scope="module")
def pipe(make_tiny_pipeline):
    return make_tiny_pipeline()


def make_models(pipe, unet=None) -> Models:
    unet = unet if unet is not None else copy.deepcopy(pipe.unet)
    unet.requires_grad_(False)
    for n, p in unet.named_parameters():
        if "attn2" not in n:  # ESD-u-like selection: everything but cross-attention
            p.requires_grad_(True)
    pipe.text_encoder.requires_grad_(False)
    return dataclasses.replace(Models.from_pipeline(pipe, device="cpu"), unet=unet)


def make_batch(step=0) -> Batch:
    g = torch.Generator().manual_seed(1)
    return Batch(forget_prompts=["a photo of a nude person", "a nude figure", "nude"], forget_ids=torch.tensor([4, 1, 7]),
                 forget_latents=torch.randn(3, 4, 8, 8, generator=g),
                 retain_prompts=["a dog", "a house"], retain_latents=torch.randn(2, 4, 8, 8, generator=g),
                 retain_ids=torch.tensor([3, 0]),
                 rng=Draws(seed=0, step=step, micro=0, shared=True))


def manual_lf(models: Models, batch: Batch, unet) -> tuple[torch.Tensor, torch.Tensor]:
    """L_f by the formula, computed independently of the objective's helpers."""
    ids = batch.forget_ids
    t = batch.rng.randint(ids, 0, 1000, stream="tf")
    noise = batch.rng.randn(ids, (4, 8, 8), stream="noisef")
    x_t = models.noise_scheduler.add_noise(batch.forget_latents, noise, t)
    enc = lambda ps: models.text_encoder(models.tokenize(ps))[0]
    pred = unet(x_t, t, encoder_hidden_states=enc(batch.forget_prompts)).sample
    with torch.no_grad():
        target = unet(x_t, t, encoder_hidden_states=enc([MAP] * len(batch))).sample
    return ((pred - target) ** 2).flatten(1).mean(1), ((pred.detach() - noise) ** 2).flatten(1).mean(1)


def test_loss_matches_formula_with_adam_inner_steps(pipe):
    cfg = EraseDiffConfig(mapping_prompts=[MAP], lam=0.1, inner_steps=2, inner_lr=1e-3)
    obj = EraseDiff(cfg)
    models = make_models(pipe)
    batch = make_batch()
    params = [p for p in models.unet.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]

    obj.before_step(models, batch, params)
    # the inner loop restores the weights bit for bit and leaves .grad alone
    assert all(torch.equal(a, p) for a, p in zip(before, params))
    assert all(p.grad is None for p in params)
    out = obj.losses(models, batch)

    # reference: K steps of torch.optim.Adam (fresh) on a copy, minimising mean L_f
    ref_unet = copy.deepcopy(models.unet)
    ref_params = [p for p in ref_unet.parameters() if p.requires_grad]
    opt = torch.optim.Adam(ref_params, lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        manual_lf(models, batch, ref_unet)[0].mean().backward()
        opt.step()
    with torch.no_grad():
        lf_star = manual_lf(models, batch, ref_unet)[0]
    lf, err = manual_lf(models, batch, models.unet)

    assert lf_star.mean() < lf.mean()  # the inner steps did minimise L_f
    torch.testing.assert_close(out.forget, 0.1 * (lf - lf_star), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out.difficulty, err)
    assert out.forget.requires_grad and not out.difficulty.requires_grad
    # retain term: ordinary denoising loss on retain images
    rid = batch.retain_ids
    t = batch.rng.randint(rid, 0, 1000, stream="tr")
    noise = batch.rng.randn(rid, (4, 8, 8), stream="noiser")
    x_t = models.noise_scheduler.add_noise(batch.retain_latents, noise, t)
    pred = models.unet(x_t, t, encoder_hidden_states=models.encode(batch.retain_prompts)).sample
    torch.testing.assert_close(out.retain, per_sample_mse(pred, noise).mean())


def test_one_step_moves_forget_towards_mapping(pipe):
    obj = build_objective("erasediff", {"mapping_prompts": [MAP], "lam": 1.0, "inner_lr": 1e-3}, "t.yaml")
    models = make_models(pipe)
    batch = make_batch()
    params = [p for p in models.unet.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3)
    lf0 = manual_lf(models, batch, models.unet)[0].detach()
    for _ in range(2):
        obj.before_step(models, batch, params)
        out = obj.losses(models, batch)
        opt.zero_grad()
        (out.forget.mean() + out.retain).backward()
        opt.step()
    lf1 = manual_lf(models, batch, models.unet)[0].detach()
    assert lf1.mean() < 0.9 * lf0.mean()


def test_losses_without_before_step_and_retain_prompt_mapping(pipe):
    # mapping_prompts empty -> the batch's retain prompts (official style/object code)
    obj = EraseDiff(EraseDiffConfig(inner_steps=1))
    models = make_models(pipe)
    batch = make_batch()
    assert obj._map_prompts(batch) == ["a dog", "a house", "a dog"]
    out = obj.losses(models, batch)  # runs its own inner loop
    assert out.logs["lf_star"] < out.logs["lf"]
    with torch.no_grad():
        assert obj.losses(models, batch).logs["lf_star"] == 0.0


def test_config_errors():
    with pytest.raises(EraseError, match="x.yaml: objective.lam: must be >= 0"):
        from_dict(EraseDiffConfig, {"lam": -1}, "x.yaml: objective")
    with pytest.raises(EraseError, match="inner_stepz"):
        build_objective("erasediff", {"inner_stepz": 2}, "x.yaml")
