"""Flow-matching parity: on tiny FLUX / SD3 models in float64, ESD's target and the denoising loss equal the
formulas derived by hand in velocity space, with the transformer called as diffusers' training examples call it
(examples/dreambooth/train_dreambooth_lora_flux.py / _sd3.py at huggingface/diffusers 58eb52c), never through erase.

x_t = (1 - s) x_0 + s eps with s = t / 1000, velocity v = eps - x_0. At a fixed x_t a velocity implies
eps(v) = x_t + (1 - s) v and x_0(v) = x_t - s v. ESD's target in eps-space is eps_u - eta (eps_c - eps_u); in
velocity space it is therefore v* = eps* - x_0(eps*) with x_0(eps*) = (x_t - s eps*) / (1 - s), and the loss
||v_theta - v*||^2 equals ||eps_theta - eps*||^2 / (1 - s)^2 (erase/models/flow.py derives why ESD's code needs
no change). The denoising loss regresses the transformer on noise - x_0 (the examples' `target`) at the timesteps
the examples draw (`noise_scheduler_copy.timesteps[indices]`).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
from scipy.stats import norm

from erase.models.builder import build_pipeline
from erase.models.core import Models
from erase.objectives.base import Batch, Draws, denoising_loss
from erase.objectives.esd import Esd, EsdConfig

PROMPTS = ["a nude woman", "a red car"]


@pytest.fixture(scope="module", params=["tiny-flux", "tiny-sd3"])
def flow_models(request):
    pipe = build_pipeline(request.param).to(torch.float64)
    models = Models.from_pipeline(pipe, weight_dtype=torch.float64)
    assert models.prediction_type == "flow"
    return request.param, pipe, models


def _raw(size: str, pipe, x_t: torch.Tensor, t: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """The transformer called as the training examples call it, on diffusers' own prompt encoding."""
    b, c, h, w = x_t.shape
    if size == "tiny-flux":
        embeds, pooled, text_ids = pipe.encode_prompt(prompts, None, max_sequence_length=512)
        packed = FluxPipeline._pack_latents(x_t, b, c, h, w)
        ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, x_t.device, x_t.dtype)
        guidance = torch.tensor([3.5]).expand(b)  # train_dreambooth_lora_flux.py --guidance_scale 3.5
        out = pipe.transformer(hidden_states=packed, timestep=t / 1000, guidance=guidance, pooled_projections=pooled,
                               encoder_hidden_states=embeds, txt_ids=text_ids, img_ids=ids, return_dict=False)[0]
        return FluxPipeline._unpack_latents(out, h, w, 1)
    embeds, _, pooled, _ = pipe.encode_prompt(prompts, prompts, prompts, do_classifier_free_guidance=False,
                                              max_sequence_length=256)
    return pipe.transformer(hidden_states=x_t, timestep=t, encoder_hidden_states=embeds, pooled_projections=pooled,
                            return_dict=False)[0]


def test_esd_target_is_the_hand_derived_velocity_target(flow_models):
    size, pipe, models = flow_models
    g = torch.Generator().manual_seed(0)
    shape = (len(PROMPTS), *models.latent_shape())
    x0, eps = torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)
    t = torch.tensor([150.0, 820.0], dtype=torch.float64)
    s = (t / 1000).view(-1, 1, 1, 1)
    x_t = (1 - s) * x0 + s * eps
    eta = 1.5

    got = Esd(EsdConfig(eta=eta)).target(models, x_t, t, PROMPTS)

    with torch.no_grad():
        v_u, v_c = _raw(size, pipe, x_t, t, [""] * len(PROMPTS)), _raw(size, pipe, x_t, t, PROMPTS)
        e_u, e_c = x_t + (1 - s) * v_u, x_t + (1 - s) * v_c  # eps implied by each velocity at this x_t
        e_star = e_u - eta * (e_c - e_u)  # ESD's target in eps-space
        x0_star = (x_t - s * e_star) / (1 - s)
        v_star = e_star - x0_star
        torch.testing.assert_close(got, v_star, rtol=1e-9, atol=1e-9)

        # the loss in velocity space is the eps-space loss / (1 - s)^2 at the same x_t
        v_theta = v_c + 0.01 * torch.randn(shape, generator=g, dtype=torch.float64)
        e_theta = x_t + (1 - s) * v_theta
        lhs = (v_theta - got).pow(2).flatten(1).mean(1)
        rhs = ((e_theta - e_star).pow(2) / (1 - s).pow(2)).flatten(1).mean(1)
        torch.testing.assert_close(lhs, rhs, rtol=1e-9, atol=1e-12)


def test_denoising_loss_regresses_the_velocity_at_the_examples_timesteps(flow_models):
    size, pipe, models = flow_models
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn((len(PROMPTS), *models.latent_shape()), generator=g, dtype=torch.float64)
    ids = torch.tensor([3, 5])
    batch = Batch(forget_prompts=PROMPTS, forget_ids=ids, rng=Draws(seed=7, step=2))

    got = denoising_loss(models, batch, x0, PROMPTS, ids)

    k = batch.rng.randint(ids, 0, 1000, stream="t")
    noise = batch.rng.randn(ids, tuple(x0.shape[1:]), stream="noise").to(torch.float64)
    table = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config).timesteps  # noise_scheduler_copy
    if size == "tiny-flux":  # --weighting_scheme none: u uniform, indices = (u * 1000).long(), any index alike
        t = table.flip(0)[k].double()
        assert torch.equal(t, (k + 1).double())  # dynamic shifting: the training table is unshifted
    else:  # --weighting_scheme logit_normal: u = sigmoid(N(0, 1)); our k is its quantile (k + 0.5) / 1000
        u = 1 / (1 + np.exp(-norm.ppf((k.numpy() + 0.5) / 1000)))
        t = table[torch.as_tensor((u * 1000).astype(np.int64))].double()
    s = (t / 1000).view(-1, 1, 1, 1)
    x_t = (1 - s) * x0 + s * noise
    with torch.no_grad():
        want = (_raw(size, pipe, x_t, t, PROMPTS) - (noise - x0)).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(got.detach(), want, rtol=1e-9, atol=1e-12)


def test_sd3_training_table_is_the_shifted_one():
    """SD3's scheduler config shifts statically (shift 3): the examples' table is sigma' = 3 s / (1 + 2 s)."""
    pipe = build_pipeline("tiny-sd3")
    models = Models.from_pipeline(pipe)
    s = torch.arange(1, 1001, dtype=torch.float64) / 1000
    from erase.models.flow import train_table

    torch.testing.assert_close(train_table(models).double() / 1000, 3 * s / (1 + 2 * s), rtol=0, atol=1e-6)
