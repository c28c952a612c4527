import pytest
import torch

from erase.objectives import build_objective

FORGET = ["a handwritten three", "the number 3", "digit three"]
RETAIN = ["a handwritten seven", "the number 1"]


def _dm(models, pipe, x0, prompts, b, ids, stream=""):
    t = b.rng.randint(ids, 0, 1000, stream=f"t{stream}")
    n = b.rng.randn(ids, (4, 16, 16), stream=f"noise{stream}")
    with torch.no_grad():
        e = pipe.unet(models.noise_scheduler.add_noise(x0, n, t), t, encoder_hidden_states=models.encode(prompts)).sample
    return ((e - n) ** 2).flatten(1).mean(1)


def test_ga_is_negative_denoising_loss_and_a_step_raises_it(make_batch, latents, sgd_step, tiny_models):
    models, pipe, _ = tiny_models("unet")
    x_f = latents(3, seed=3)
    ga = build_objective("ga", {})
    b = make_batch(FORGET, step=1, forget_latents=x_f)
    out = ga.losses(models, b)
    dm = _dm(models, pipe, x_f, FORGET, b, b.forget_ids)
    assert torch.allclose(out.forget.detach(), -dm, rtol=1e-4) and out.retain is None
    assert torch.allclose(out.difficulty, dm, rtol=1e-4)
    sgd_step(models, out.forget.mean(), lr=5.0)
    assert ga.losses(models, b).difficulty.mean() > dm.mean()


def test_neggrad_plus_weights_forget_and_retain_terms(make_batch, latents, tiny_models):
    models, pipe, _ = tiny_models("unet")
    x_f, x_r = latents(3, seed=3), latents(2, seed=4)
    ng = build_objective("neggrad+", {"alpha": 0.25})
    assert ng.needs == {"forget_images", "retain_images"}
    b = make_batch(FORGET, step=1, forget_latents=x_f, retain_prompts=RETAIN, retain_latents=x_r, retain_ids=torch.arange(2))
    out = ng.losses(models, b)
    dm = _dm(models, pipe, x_f, FORGET, b, b.forget_ids)
    dr = _dm(models, pipe, x_r, RETAIN, b, torch.arange(2), stream="r")
    assert torch.allclose(out.forget.detach(), -0.75 * dm, rtol=1e-4)
    assert out.retain.item() == pytest.approx(0.25 * dr.mean().item(), rel=1e-4)
