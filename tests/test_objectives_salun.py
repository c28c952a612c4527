import pytest
import torch

from erase.objectives.salun import SalUn, SalUnConfig
from erase.objectives.salun_mask import global_threshold, saliency_masks

FORGET = ["a handwritten three", "the number 3", "digit three", "a three"]
RETAIN = ["a handwritten seven", "the number 1"]


def test_loss_equals_formula_and_mask_keeps_the_top_fraction(setup_stub, make_batch, latents, tiny_models):
    models, pipe, _ = tiny_models("unet")
    x_f, x_r = latents(4, seed=1), latents(2, seed=2)
    obj = SalUn(SalUnConfig(alpha=0.3, mask_fraction=0.25, mapping_prompts=["a handwritten seven"]))
    obj.setup(models, setup_stub(FORGET, RETAIN, forget_latents=x_f))
    masks = obj.gradient_masks()
    kept = sum(m.sum() for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert kept == pytest.approx(0.25, abs=0.01)
    assert set(masks) == set(models.named_trainable())

    b = make_batch(FORGET, step=2, forget_latents=x_f, retain_prompts=RETAIN, retain_latents=x_r, retain_ids=torch.arange(2))
    out = obj.losses(models, b)
    t = b.rng.randint(b.forget_ids, 0, 1000, stream="t")
    noise = b.rng.randn(b.forget_ids, (4, 16, 16), stream="noise")
    x_t = models.noise_scheduler.add_noise(x_f, noise, t)
    tr = b.rng.randint(torch.arange(2), 0, 1000, stream="tr")
    nr = b.rng.randn(torch.arange(2), (4, 16, 16), stream="noiser")
    with torch.no_grad():
        pred = pipe.unet(x_t, t, encoder_hidden_states=models.encode(FORGET)).sample
        target = pipe.unet(x_t, t, encoder_hidden_states=models.encode(["a handwritten seven"] * 4)).sample
        pr = pipe.unet(models.noise_scheduler.add_noise(x_r, nr, tr), tr, encoder_hidden_states=models.encode(RETAIN)).sample
    assert torch.allclose(out.forget.detach(), ((pred - target) ** 2).flatten(1).mean(1), rtol=1e-4, atol=1e-8)
    assert out.retain.item() == pytest.approx(0.3 * ((pr - nr) ** 2).mean().item(), rel=1e-4)
    assert torch.allclose(out.difficulty, ((pred - noise) ** 2).flatten(1).mean(1), rtol=1e-4)

    # one step (gradients masked, as the trainer does) lowers the forget term; masked weights stay put
    params = models.named_trainable()
    before = {n: p.detach().clone() for n, p in params.items()}
    loss = out.forget.mean()
    grads = torch.autograd.grad(loss, list(params.values()))
    with torch.no_grad():
        for (n, p), g in zip(params.items(), grads):
            p.sub_(20.0 * g * masks[n])
    after = obj.losses(models, b).forget.mean()
    assert after < loss.detach()
    for n, p in params.items():
        assert torch.equal(p[masks[n] == 0], before[n][masks[n] == 0])


def test_saliency_is_taken_at_the_given_weights_and_thresholds_globally():
    a = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
    b = torch.nn.Parameter(torch.tensor([10.0]))
    masks = saliency_masks({"a": a, "b": b}, lambda: [(a * torch.tensor([1.0, -5.0, 0.1])).sum() + b * 0.5], fraction=0.5)
    assert masks["a"].tolist() == [1.0, 1.0, 0.0] and masks["b"].tolist() == [0.0]
    assert global_threshold({"x": torch.arange(10.0)}, 0.3) == 6.0
