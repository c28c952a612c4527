"""EraseDiff parity: the outer loss and its gradient equal the official ones for the same draws and L_f*.

Official: JingWu321/EraseDiff sd/train_scripts/erasediff_nsfw.py lines 208-281: loss_dr =
model.shared_step(remain) (209), t and noise per sample (224-230), forget_out = eps(x_t, c_f),
pseudo_out = eps(x_t, "a photo of a pokemon").detach() (233-236, word_wear line 139), loss_du =
MSE(forget_out, pseudo_out) (238), loss_q = loss_du - L_f* (240), loss = loss_dr + lambda_bome *
loss_q (281). L_f* is a constant there (`.detach()`) as here, so the gradient is the official one
whatever value it has; the value here is this batch's loss after the K inner steps (a documented
deviation in erase/objectives/erasediff.py).
"""

import torch

from erase.objectives.erasediff import EraseDiff, EraseDiffConfig

FORGET = ["nudity", "naked", "erotic"]
POKEMON = "a photo of a pokemon"
CLOTHED = "a photo of a person wearing clothes"


def test_erasediff_outer_loss_and_gradient_are_the_official_ones(make_batch, latents, perturb, tiny_models):
    models, pipe, _ = tiny_models("xattn")
    perturb(models)
    obj = EraseDiff(EraseDiffConfig(lam=1.0, inner_steps=2, inner_lr=1e-3, mapping_prompts=[POKEMON]))
    x_f, x_r = latents(3, seed=1), latents(2, seed=2)
    b = make_batch(FORGET, step=3, forget_latents=x_f, retain_prompts=[CLOTHED] * 2, retain_latents=x_r,
              retain_ids=torch.tensor([0, 1]))
    params = list(models.named_trainable().values())
    obj.before_step(models, b, params)
    lf_star = obj._pending[1].mean()
    out = obj.losses(models, b)
    ours = out.forget.mean() + out.retain

    criteria = torch.nn.MSELoss()
    t = b.rng.randint(b.forget_ids, 0, 1000, stream="tf")
    noise = b.rng.randn(b.forget_ids, (4, 16, 16), stream="noisef")
    tr = b.rng.randint(b.retain_ids, 0, 1000, stream="tr")
    nr = b.rng.randn(b.retain_ids, (4, 16, 16), stream="noiser")
    loss_dr = criteria(nr, pipe.unet(models.add_noise(x_r, nr, tr), tr, models.encode([CLOTHED] * 2)).sample)
    forget_noisy = models.add_noise(x_f, noise, t)
    forget_out = pipe.unet(forget_noisy, t, models.encode(FORGET)).sample
    pseudo_out = pipe.unet(forget_noisy, t, models.encode([POKEMON] * 3)).sample.detach()
    loss_q = criteria(forget_out, pseudo_out) - lf_star.detach()
    official = loss_dr + 1.0 * loss_q
    torch.testing.assert_close(ours.detach().double(), official.detach().double(), rtol=1e-5, atol=1e-9)
    g_ours = torch.autograd.grad(ours, params)
    g_off = torch.autograd.grad(official, params)
    for a, o in zip(g_ours, g_off):
        torch.testing.assert_close(a.double(), o.double(), rtol=1e-4, atol=1e-9)
    assert lf_star < out.logs["lf"]  # the inner steps did lower the forget loss
