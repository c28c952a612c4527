import torch

from erase.objectives import build_objective

FORGET = ["a handwritten three", "the number 3"]
ANCHOR = ["a handwritten eight", "the number 8"]


def test_loss_maps_forget_prompt_onto_anchor_prediction_and_step_reduces_it(make_batch, latents, perturb, sgd_step, tiny_models):
    models, pipe, _ = tiny_models("xattn")
    perturb(models, 0.2)
    x_a = latents(2, seed=5)
    ab = build_objective("ablation", {})
    assert ab.default_params == "xattn_kv" and ab.needs == {"anchor_images", "anchor_prompts"}
    b = make_batch(FORGET, step=4, anchor_prompts=ANCHOR, anchor_latents=x_a)
    out = ab.losses(models, b)
    t = b.rng.randint(b.forget_ids, 0, 1000, stream="t")
    n = b.rng.randn(b.forget_ids, (4, 16, 16), stream="noise")
    x_t = models.noise_scheduler.add_noise(x_a, n, t)
    with torch.no_grad():
        pf = pipe.unet(x_t, t, encoder_hidden_states=models.encode(FORGET)).sample
        pa = pipe.unet(x_t, t, encoder_hidden_states=models.encode(ANCHOR)).sample
    expected = ((pf - pa) ** 2).flatten(1).mean(1)
    assert torch.allclose(out.forget.detach(), expected, rtol=1e-4, atol=1e-9)
    assert torch.allclose(out.difficulty, -expected, rtol=1e-4, atol=1e-9)  # large mismatch = still known
    sgd_step(models, out.forget.mean(), lr=200.0)
    assert ab.losses(models, b).forget.mean() < out.forget.mean().detach()
    assert build_objective("ablation", {"prior_weight": 1.0}).needs >= {"retain_images"}
