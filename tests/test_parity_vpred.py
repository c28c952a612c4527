"""v-prediction parity: on a tiny SD-2 v-prediction model in float64, ESD's target and the denoising
loss equal the formulas derived by hand in v-space.

With x_t = a x_0 + s eps (a = sqrt(abar_t), s = sqrt(1 - abar_t)) a v-model predicts v = a eps - s x_0.
At a fixed x_t a prediction v implies eps(v) = a v + s x_t and x_0(v) = a x_t - s v. ESD's target in
eps-space is eps_u - eta (eps_c - eps_u); in v-space it is therefore
    v* = a eps* - s x_0(eps*),   x_0(eps*) = (x_t - s eps*) / a,
and the loss ||v_theta - v*||^2 equals ||eps_theta - eps*||^2 / a^2 (erase/models/core.py derives why the
objective's code needs no change). The denoising loss regresses the UNet on v = a eps - s x_0.
"""

from __future__ import annotations

import pytest
import torch

from erase.models.builder import build_pipeline
from erase.models.core import Models
from erase.objectives.base import Batch, Draws, denoising_loss
from erase.objectives.esd import Esd, EsdConfig

PROMPTS = ["a handwritten three", "a red seven"]


@pytest.fixture(scope="module")
def v_models():
    pipe = build_pipeline("tiny-sd2").to(torch.float64)
    models = Models.from_pipeline(pipe, weight_dtype=torch.float64)
    assert models.prediction_type == "v_prediction"
    return pipe, models


def _alpha_sigma(models: Models, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    abar = models.noise_scheduler.alphas_cumprod.double()[t].view(-1, 1, 1, 1)
    return abar.sqrt(), (1 - abar).sqrt()


def _raw(pipe, x_t, t, cond):
    """The UNet's output called directly (no erase helper in between)."""
    return pipe.unet(x_t, t, encoder_hidden_states=cond).sample


def test_esd_target_is_the_hand_derived_v_target(v_models):
    pipe, models = v_models
    g = torch.Generator().manual_seed(0)
    shape = (len(PROMPTS), 4, 16, 16)
    x0, eps = torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)
    t = torch.tensor([150, 820])
    a, s = _alpha_sigma(models, t)
    x_t = a * x0 + s * eps
    eta = 1.5
    obj = Esd(EsdConfig(eta=eta))

    got = obj.target(models, x_t, t, PROMPTS)

    with torch.no_grad():
        cond = pipe.text_encoder(pipe.tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True,
                                                return_tensors="pt").input_ids)[0]
        uncond = pipe.text_encoder(pipe.tokenizer([""], padding="max_length", max_length=77,
                                                  return_tensors="pt").input_ids)[0].expand_as(cond)
        v_u, v_c = _raw(pipe, x_t, t, uncond), _raw(pipe, x_t, t, cond)
        e_u, e_c = a * v_u + s * x_t, a * v_c + s * x_t  # eps implied by each v at this x_t
        e_star = e_u - eta * (e_c - e_u)  # ESD's target in eps-space
        x0_star = (x_t - s * e_star) / a
        v_star = a * e_star - s * x0_star
        torch.testing.assert_close(got, v_star, rtol=1e-10, atol=1e-10)

        # the loss in v-space is the eps-space loss / a^2 at the same x_t
        v_theta = _raw(pipe, x_t, t, cond) + 0.01 * torch.randn(shape, generator=g, dtype=torch.float64)
        e_theta = a * v_theta + s * x_t
        lhs = (v_theta - got).pow(2).flatten(1).mean(1)
        rhs = ((e_theta - e_star).pow(2) / a.pow(2)).flatten(1).mean(1)
        torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-12)


def test_denoising_loss_regresses_v(v_models):
    pipe, models = v_models
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn((len(PROMPTS), 4, 16, 16), generator=g, dtype=torch.float64)
    ids = torch.tensor([3, 5])
    batch = Batch(forget_prompts=PROMPTS, forget_ids=ids, rng=Draws(seed=4, step=2))

    got = denoising_loss(models, batch, x0, PROMPTS, ids)

    # the same draws, by hand: t and noise per sample id from the batch's deterministic streams
    t = batch.rng.randint(ids, 0, 1000, stream="t")
    noise = batch.rng.randn(ids, (4, 16, 16), stream="noise").double()
    a, s = _alpha_sigma(models, t)
    x_t = a * x0 + s * noise
    v = a * noise - s * x0
    with torch.no_grad():
        cond = pipe.text_encoder(pipe.tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True,
                                                return_tensors="pt").input_ids)[0]
        want = (v - _raw(pipe, x_t, t, cond)).pow(2).flatten(1).mean(1)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got.detach(), want, rtol=1e-10, atol=1e-12)
    # regressing on the noise instead would be a different loss (the test can tell them apart)
    assert not torch.allclose(got.detach(), (noise - _raw(pipe, x_t, t, cond)).pow(2).flatten(1).mean(1).detach())


def test_prediction_conversions_invert_each_other(v_models):
    _, models = v_models
    g = torch.Generator().manual_seed(2)
    x0, noise = torch.randn((3, 4, 8, 8), generator=g, dtype=torch.float64), torch.randn((3, 4, 8, 8), generator=g, dtype=torch.float64)
    t = torch.tensor([0, 499, 999])
    x_t = models.add_noise(x0, noise, t)
    v = models.target(x0, noise, t)
    torch.testing.assert_close(models.to_eps(x_t, v, t), noise, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(models.to_x0(x_t, v, t), x0, rtol=1e-9, atol=1e-9)
