"""Gradient ascent and NegGrad+ parity with the official losses (tiny random model, same draws).

Official: OPTML-Group/Unlearn-Saliency SD/train-scripts/gradient_ascent.py line 86
(`forget_loss = -model.shared_step(forget_batch)[0]`; with alpha 0, line 94, that is GA), the LDM
shared_step being MSE(noise, eps(q_sample(x_0, t, noise), c, t)) with t and noise per sample; and
NegGrad+ as kairanzhao/RUM unlearn/neggrad.py line 42: alpha * r_loss - (1 - alpha) * del_loss.
"""

import torch

from erase.objectives import build_objective

FORGET = ["a handwritten three", "the number 3", "digit three"]
RETAIN = ["a handwritten seven", "the number 1"]


def shared_step(models, unet, x0, prompts, t, noise):
    """LDM p_losses with the default l2 loss: an MSE over every element."""
    x_t = models.noise_scheduler.add_noise(x0, noise, t)
    return torch.nn.functional.mse_loss(unet(x_t, t, encoder_hidden_states=models.encode(prompts)).sample, noise)


def test_ga_and_neggrad_plus_are_the_official_losses(make_batch, latents, perturb, tiny_models):
    models, pipe, _ = tiny_models("xattn")
    perturb(models)
    x_f, x_r = latents(3, seed=1), latents(2, seed=2)
    b = make_batch(FORGET, step=7, forget_latents=x_f, retain_prompts=RETAIN, retain_latents=x_r, retain_ids=torch.tensor([1, 0]))
    t = b.rng.randint(b.forget_ids, 0, 1000, stream="t")
    noise = b.rng.randn(b.forget_ids, (4, 16, 16), stream="noise")
    tr = b.rng.randint(b.retain_ids, 0, 1000, stream="tr")
    nr = b.rng.randn(b.retain_ids, (4, 16, 16), stream="noiser")
    with torch.no_grad():
        l_f = shared_step(models, pipe.unet, x_f, FORGET, t, noise)
        l_r = shared_step(models, pipe.unet, x_r, RETAIN, tr, nr)
    ga = build_objective("ga", {}).losses(models, b)
    torch.testing.assert_close(ga.forget.mean().detach().double(), -l_f.double(), rtol=1e-5, atol=1e-9)  # gradient_ascent.py:86
    ng = build_objective("neggrad+", {"alpha": 0.8}).losses(models, b)
    ours = ng.forget.mean() + ng.retain
    torch.testing.assert_close(ours.detach().double(), (0.8 * l_r - 0.2 * l_f).double(), rtol=1e-5, atol=1e-9)  # neggrad.py:42
