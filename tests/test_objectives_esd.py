import copy

import pytest
import torch

from erase.objectives import build_objective
from erase.objectives.esd import Esd, EsdConfig

PROMPTS = ["a handwritten three", "the number 3", "digit three"]


@pytest.fixture(scope="module")
def setup(setup_stub, perturb, tiny_models):
    models, pipe, _ = tiny_models("xattn")
    original_unet = copy.deepcopy(pipe.unet).requires_grad_(False)
    esd = Esd(EsdConfig(eta=1.5, ddim_steps=4))
    data = setup_stub(PROMPTS)
    esd.setup(models, data)
    perturb(models)  # the current model now differs from the original
    return models, pipe, original_unet, esd, data


def test_trajectory_cache_is_built_once_from_the_frozen_model(setup):
    models, _, _, esd, data = setup
    assert data.made == ["esd_trajectories_s4_g3.0"]
    traj, ts = esd.cache["trajectory"], esd.cache["timesteps"]
    assert traj.shape == (4, 3, 4, 16, 16) and ts.shape == (4,) and ts[0] > ts[-1]
    esd.setup(models, data)  # a second setup (resume) reuses the cache
    assert data.made == ["esd_trajectories_s4_g3.0"]


def test_loss_equals_the_esd_formula_with_the_original_model(make_batch, setup):
    models, pipe, original_unet, esd, _ = setup
    b = make_batch(PROMPTS, step=3)
    out = esd.losses(models, b)
    # direct computation from the cached trajectory and a separate frozen copy of the original UNet
    k = b.rng.randint(b.forget_ids, 0, 4, stream="k")
    x_t = esd.cache["trajectory"][k, b.forget_ids]
    t = esd.cache["timesteps"][k].long()
    with torch.no_grad():
        cond = models.encode(PROMPTS)
        unc = models.encode([""]).expand_as(cond)
        e_u = original_unet(x_t, t, encoder_hidden_states=unc).sample
        e_c = original_unet(x_t, t, encoder_hidden_states=cond).sample
        target = e_u - 1.5 * (e_c - e_u)
        pred = pipe.unet(x_t, t, encoder_hidden_states=cond).sample
    expected = ((pred - target) ** 2).flatten(1).mean(1)
    assert out.forget.shape == (3,) and out.retain is None
    assert torch.allclose(out.forget.detach(), expected, rtol=1e-4, atol=1e-7)
    # per-sample draws (the default): the positions differ between samples (fixed seed: 3, 3, 0)
    assert len(set(k.tolist())) > 1
    assert torch.equal(out.timesteps, t)
    # difficulty = denoising error against the noise implied by the trajectory's end point
    abar = models.noise_scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    eps_hat = (x_t - abar.sqrt() * esd.cache["latents"][b.forget_ids]) / (1 - abar).sqrt()
    assert torch.allclose(out.difficulty, ((pred - eps_hat) ** 2).flatten(1).mean(1), rtol=1e-4)
    assert not out.difficulty.requires_grad and out.forget.requires_grad


def test_one_step_moves_towards_the_negative_guidance_target(make_batch, sgd_step, setup):
    models, _, _, esd, _ = setup
    saved = {n: p.detach().clone() for n, p in models.named_trainable().items()}
    b = make_batch(PROMPTS, step=5)
    before = esd.losses(models, b).forget
    sgd_step(models, before.mean(), lr=50.0)
    after = esd.losses(models, b).forget
    assert after.mean() < before.mean().detach() * 0.9
    with torch.no_grad():  # leave the shared fixture as it was
        for n, p in models.named_trainable().items():
            p.copy_(saved[n])


def test_variants_choose_parameter_sets_and_bad_values_fail():
    assert build_objective("esd", {"variant": "u"}).default_params == "noxattn"
    assert build_objective("esd", {}).default_params == "xattn"
    from erase.errors import EraseError

    with pytest.raises(EraseError, match="r.yaml: objective.ddim_steps: must be >= 1"):
        build_objective("esd", {"ddim_steps": 0}, "r.yaml")
    with pytest.raises(EraseError, match="r.yaml: objective.etaa: unknown key"):
        build_objective("esd", {"etaa": 1}, "r.yaml")
    with pytest.raises(EraseError, match="unknown method 'esdx'"):
        build_objective("esdx", {}, "r.yaml")


def test_optional_preservation_term_keeps_retain_prompts(make_batch, setup):
    models, pipe, original_unet, _, data = setup
    esd = Esd(EsdConfig(eta=1.5, ddim_steps=4, retain_weight=2.0, retain_on="forget"))
    assert esd.needs == {"retain_prompts"}
    esd.setup(models, data)
    b = make_batch(PROMPTS, step=3, retain_prompts=["a handwritten seven", "the number 1"])
    out = esd.losses(models, b)
    k = b.rng.randint(b.forget_ids, 0, 4, stream="k")
    x_t, t = esd.cache["trajectory"][k, b.forget_ids][:2], esd.cache["timesteps"][k].long()[:2]
    with torch.no_grad():
        c = models.encode(["a handwritten seven", "the number 1"])
        keep = original_unet(x_t, t, encoder_hidden_states=c).sample
        now = pipe.unet(x_t, t, encoder_hidden_states=c).sample
    assert out.retain.item() == pytest.approx(2.0 * ((now - keep) ** 2).mean().item(), rel=1e-4)


def test_preservation_term_on_the_retain_prompts_own_trajectories(setup_stub, make_batch, setup):
    models, pipe, original_unet, _, _ = setup
    retain = ["a handwritten seven", "the number 1", "red ink"]
    data = setup_stub(PROMPTS, retain_prompts=retain)
    esd = Esd(EsdConfig(eta=1.5, ddim_steps=4, retain_weight=2.0))  # retain_on="retain" is the default
    esd.setup(models, data)
    assert data.made == ["esd_trajectories_s4_g3.0", "esd_retain_trajectories_s4_g3.0"]
    assert esd.retain_cache["trajectory"].shape == (4, 3, 4, 16, 16)
    # The retain trajectories are the frozen model's samples FOR the retain prompts, not the forget ones.
    assert not torch.allclose(esd.retain_cache["latents"], esd.cache["latents"])
    b = make_batch(PROMPTS, step=5, retain_prompts=[retain[2], retain[0], retain[1]], retain_ids=torch.tensor([2, 0, 1]))
    out = esd.losses(models, b)
    k = b.rng.randint(b.retain_ids, 0, 4, stream="k-retain")
    x_t = esd.retain_cache["trajectory"][k, b.retain_ids]
    t = esd.retain_cache["timesteps"][k].long()
    with torch.no_grad():
        c = models.encode(b.retain_prompts)
        keep = original_unet(x_t, t, encoder_hidden_states=c).sample
        now = pipe.unet(x_t, t, encoder_hidden_states=c).sample
    assert out.retain.item() == pytest.approx(2.0 * ((now - keep) ** 2).mean().item(), rel=1e-4)
