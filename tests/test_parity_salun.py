"""SalUn parity: the loss and the saliency mask equal the official code's for the same draws.

Official: OPTML-Group/Unlearn-Saliency.
* Loss, SD/train-scripts/nsfw_removal.py lines 112-149: remain_loss = model.shared_step(remain)
  (MSE(noise, eps(x_t^r, c_r, t)), t and noise per sample); t per sample (132-137), noise (138),
  forget_out = eps(q_sample(x_f, t, noise), c_f), pseudo_out = eps(same x_t, c_map).detach()
  (140-144); loss = MSE(forget_out, pseudo_out) + alpha * remain_loss (146-149).
* Mask, SD/train-scripts/generate_mask.py lines 136-200 (nsfw): per batch, t and noise per
  sample (156-159), preds = (1 + c_guidance) * eps(x_t, c) - c_guidance * eps(x_t, "") (163-166),
  loss = -MSE(noise, preds) (168), the SIGNED gradients summed over batches (171-174), then
  |.| (176-178); rank all weights together and keep the top half (180-207).
"""

import torch

from erase.objectives.salun import SalUn, SalUnConfig

FORGET = ["a photo of a nude person"] * 3 + ["nude"] * 2
CLOTHED = "a photo of a person wearing clothes"


def test_salun_loss_is_the_official_loss(setup_stub, make_batch, latents, perturb, tiny_models):
    models, pipe, _ = tiny_models("xattn")
    obj = SalUn(SalUnConfig(alpha=0.1, mask_fraction=1.0, mapping_prompts=[CLOTHED]))
    x_f, x_r = latents(3, seed=1), latents(3, seed=2)
    obj.setup(models, setup_stub(FORGET[:3], [CLOTHED], forget_latents=x_f))
    perturb(models)
    b = make_batch(FORGET[:3], step=4, forget_latents=x_f, retain_prompts=[CLOTHED] * 3, retain_latents=x_r,
              retain_ids=torch.tensor([2, 0, 1]))
    out = obj.losses(models, b)
    criteria = torch.nn.MSELoss()
    t = b.rng.randint(b.forget_ids, 0, 1000, stream="t")
    noise = b.rng.randn(b.forget_ids, (4, 16, 16), stream="noise")
    tr = b.rng.randint(b.retain_ids, 0, 1000, stream="tr")
    nr = b.rng.randn(b.retain_ids, (4, 16, 16), stream="noiser")
    with torch.no_grad():
        remain_loss = criteria(nr, pipe.unet(models.add_noise(x_r, nr, tr), tr, models.encode([CLOTHED] * 3)).sample)
        forget_noisy = models.add_noise(x_f, noise, t)
        forget_out = pipe.unet(forget_noisy, t, models.encode(FORGET[:3])).sample
        pseudo_out = pipe.unet(forget_noisy, t, models.encode([CLOTHED] * 3)).sample
        loss = criteria(forget_out, pseudo_out) + 0.1 * remain_loss
    torch.testing.assert_close((out.forget.mean() + out.retain).detach().double(), loss.double(), rtol=1e-5, atol=1e-9)


def official_mask(models, unet, params, batches, c_guidance, fraction):
    """generate_mask.py, transcribed: signed gradient sums, |.|, global rank, top `fraction`."""
    gradients = {n: torch.zeros_like(p) for n, p in params.items()}
    for b in batches:
        t = b.rng.randint(b.forget_ids, 0, 1000, stream="tmask")
        noise = b.rng.randn(b.forget_ids, (4, 16, 16), stream="noisemask")
        forget_noisy = models.add_noise(b.forget_latents, noise, t)
        forget_out = unet(forget_noisy, t, models.encode(b.forget_prompts)).sample
        null_out = unet(forget_noisy, t, models.encode([""] * len(b))).sample
        preds = (1 + c_guidance) * forget_out - c_guidance * null_out
        loss = -torch.nn.MSELoss()(noise, preds)
        for n, g in zip(params, torch.autograd.grad(loss, list(params.values()))):
            gradients[n] += g
    gradients = {n: g.abs() for n, g in gradients.items()}
    all_elements = -torch.cat([g.flatten() for g in gradients.values()])
    ranks = torch.argsort(torch.argsort(all_elements))
    threshold_index = int(len(all_elements) * fraction)
    masks, start = {}, 0
    for n, g in gradients.items():
        masks[n] = (ranks[start:start + g.numel()] < threshold_index).float().reshape(g.shape)
        start += g.numel()
    return masks


def test_salun_mask_is_the_official_mask(setup_stub, latents, tiny_models):
    models, pipe, _ = tiny_models("xattn")
    x_f = latents(len(FORGET), seed=5)
    data = setup_stub(FORGET, [CLOTHED], forget_latents=x_f)
    obj = SalUn(SalUnConfig(mask_fraction=0.5, saliency_batch_size=2, mask_guidance=7.5))
    obj.setup(models, data)
    params = models.named_trainable()
    want = official_mask(models, pipe.unet, params, list(data.forget_batches(2)), 7.5, 0.5)
    got = obj.gradient_masks()
    assert set(got) == set(want)
    for n in want:
        assert torch.equal(got[n].cpu(), want[n]), n
    kept = sum(m.sum() for m in got.values()) / sum(m.numel() for m in got.values())
    assert abs(float(kept) - 0.5) < 1e-3
