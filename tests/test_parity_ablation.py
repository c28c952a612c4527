"""Concept ablation parity with the official model-based loss (tiny random model, same draws).

Official: nupurkmr9/concept-ablation diffusers/train.py lines 1077-1141: noise and a timestep per
image (1078-1086), model_pred = unet(noisy, t, c_f), model_pred_anchor = unet(noisy, t, c_anchor)
under no_grad (1099-1108), target = model_pred_anchor (1111-1114); with prior preservation the
instance loss (mask 1: whole generated images) plus prior_loss_weight * MSE(prior pred, noise)
(1129-1141). Default trained set `cross-attn` = attn2.to_k / attn2.to_v (lines 59-63, 392-396).
"""

import torch

from erase.objectives import build_objective

FORGET = ["a handwritten three", "the number 3"]
ANCHOR = ["a handwritten eight", "the number 8"]
RETAIN = ["a handwritten seven", "the number 1"]


def test_ablation_loss_is_the_official_model_based_loss_on_cross_attn_kv(make_batch, latents, perturb, tiny_models):
    obj = build_objective("ablation", {"prior_weight": 0.5})
    models, pipe, sel = tiny_models(obj.default_params)
    assert sel.names["unet"] and all(".attn2.to_k." in f".{n}" or ".attn2.to_v." in f".{n}" for n in sel.names["unet"])
    perturb(models)
    x_a, x_r = latents(2, seed=3), latents(2, seed=4)
    b = make_batch(FORGET, step=2, anchor_prompts=ANCHOR, anchor_latents=x_a, retain_prompts=RETAIN, retain_latents=x_r,
              retain_ids=torch.tensor([0, 1]))
    out = obj.losses(models, b)
    t = b.rng.randint(b.forget_ids, 0, 1000, stream="t")
    noise = b.rng.randn(b.forget_ids, (4, 16, 16), stream="noise")
    tr = b.rng.randint(b.retain_ids, 0, 1000, stream="tr")
    nr = b.rng.randn(b.retain_ids, (4, 16, 16), stream="noiser")
    F = torch.nn.functional
    with torch.no_grad():
        noisy = models.noise_scheduler.add_noise(x_a, noise, t)
        model_pred = pipe.unet(noisy, t, models.encode(FORGET)).sample
        model_pred_anchor = pipe.unet(noisy, t, models.encode(ANCHOR)).sample
        loss = F.mse_loss(model_pred.float(), model_pred_anchor.float(), reduction="none").mean([1, 2, 3]).mean()
        prior = pipe.unet(models.noise_scheduler.add_noise(x_r, nr, tr), tr, models.encode(RETAIN)).sample
        loss = loss + 0.5 * F.mse_loss(prior.float(), nr.float(), reduction="mean")
    torch.testing.assert_close((out.forget.mean() + out.retain).detach().double(), loss.double(), rtol=1e-5, atol=1e-9)
