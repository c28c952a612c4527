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
    esd = Esd(EsdConfig(eta=1.5, ddim_steps=4, trajectory="cached"))
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
    with pytest.raises(EraseError, match="r.yaml: objective.sample_batch: must be >= 1"):
        build_objective("esd", {"sample_batch": 0}, "r.yaml")
    with pytest.raises(EraseError, match="r.yaml: objective.etaa: unknown key"):
        build_objective("esd", {"etaa": 1}, "r.yaml")
    with pytest.raises(EraseError, match="unknown method 'esdx'"):
        build_objective("esdx", {}, "r.yaml")


def test_optional_preservation_term_keeps_retain_prompts(make_batch, setup):
    models, pipe, original_unet, _, data = setup
    esd = Esd(EsdConfig(eta=1.5, ddim_steps=4, retain_weight=2.0, retain_on="forget", trajectory="cached"))
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
    esd = Esd(EsdConfig(eta=1.5, ddim_steps=4, retain_weight=2.0, trajectory="cached"))  # retain_on="retain": default
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


def _trajectory(unet, models, prompts, noise, steps=4, guidance=3.0):
    """A guided DDIM trajectory written out with diffusers and bare UNet calls: [steps, B, ...] of the
    x_t each step sees (k = 0 is the noise), and the end point."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(models.noise_scheduler.config)
    sched.set_timesteps(steps)
    with torch.no_grad():
        cond = models.text_encoder(models.tokenize(prompts))[0]
        unc = models.text_encoder(models.tokenize([""]))[0].expand_as(cond)
        x, traj = noise * sched.init_noise_sigma, []
        for t in sched.timesteps:
            traj.append(x)
            e_u, e_c = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([unc, cond])).sample.chunk(2)
            x = sched.step(e_u + guidance * (e_c - e_u), t, x).prev_sample
    return torch.stack(traj), x


def test_online_trajectory_is_the_current_models_own(setup_stub, make_batch, perturb, tiny_models):
    """The default `trajectory: online`: x_t lies on a DDIM trajectory of the CURRENT weights from the
    step's own noise, not on the frozen model's; after the weights move, the next step's x_t moves too."""
    models, pipe, _ = tiny_models("xattn")
    frozen = copy.deepcopy(pipe.unet).requires_grad_(False)
    esd = Esd(EsdConfig(eta=1.5, ddim_steps=4))
    assert esd.config.trajectory == "online" and esd.describe()["trajectory"] == "online"
    data = setup_stub(PROMPTS)
    esd.setup(models, data)
    assert data.made == []  # no frozen-model cache is made
    perturb(models, scale=0.2)
    b = make_batch(PROMPTS, step=7)
    out = esd.losses(models, b)
    x_t, t, _ = esd.sample_xt(models, b)  # the same draw: the same trajectories
    noise = b.rng.randn(b.forget_ids, (4, 16, 16), stream="x_T")
    k = b.rng.randint(b.forget_ids, 0, 4, stream="k")
    assert (k > 0).any()  # fixed seed: at least one sample past the pure noise
    cols = torch.arange(len(PROMPTS))
    current, x0 = _trajectory(pipe.unet, models, PROMPTS, noise)
    torch.testing.assert_close(x_t, current[k, cols], rtol=1e-4, atol=1e-5)
    original, _ = _trajectory(frozen, models, PROMPTS, noise)
    moved = k > 0
    assert (x_t[moved] - original[k, cols][moved]).abs().max() > 1e-3  # not the frozen model's point
    # the difficulty is taken against the current trajectory's own end point
    abar = models.noise_scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    eps_hat = (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()
    with torch.no_grad():
        pred = pipe.unet(x_t, t, encoder_hidden_states=models.encode(PROMPTS)).sample
    torch.testing.assert_close(out.difficulty, ((pred - eps_hat) ** 2).flatten(1).mean(1), rtol=1e-4, atol=1e-7)
    # a weight change: the next step's trajectories are recomputed from the new weights
    perturb(models, scale=0.2, seed=2)
    b2 = make_batch(PROMPTS, step=8)
    x2, _, _ = esd.sample_xt(models, b2)
    k2 = b2.rng.randint(b2.forget_ids, 0, 4, stream="k")
    again, _ = _trajectory(pipe.unet, models, PROMPTS, b2.rng.randn(b2.forget_ids, (4, 16, 16), stream="x_T"))
    torch.testing.assert_close(x2, again[k2, cols], rtol=1e-4, atol=1e-5)
    before, _ = _trajectory(frozen, models, PROMPTS, b2.rng.randn(b2.forget_ids, (4, 16, 16), stream="x_T"))
    assert ((x2 - before[k2, cols]).flatten(1).abs().amax(1)[k2 > 0] > 1e-3).all()


def test_cached_trajectory_stays_on_the_frozen_models_points(setup):
    """`trajectory: cached` (the speed option) reads the frozen model's trajectories whatever the weights."""
    models, _, _, esd, _ = setup  # the fixture's model was perturbed after its cache was made
    assert esd.config.trajectory == "cached"
    traj, _, x0 = esd.forget_trajectories(models, type("B", (), {"forget_ids": torch.tensor([2, 0])})())
    torch.testing.assert_close(traj, esd.cache["trajectory"][:, [2, 0]])
    torch.testing.assert_close(x0, esd.cache["latents"][[2, 0]])


def test_online_trajectories_do_not_depend_on_how_the_batch_is_split(setup_stub, tiny_models):
    """A sample's online trajectory is the same float32 numbers whether one process samples the whole
    micro-batch or each of two processes samples its half: the noise comes from (seed, step, sample id)
    and the samples run in chunks of `sample_batch` aligned with the per-process split (esd.py)."""
    from erase.objectives.base import Batch, Draws

    models, _, _ = tiny_models("xattn")
    prompts = ["a handwritten three", "the number 3", "digit three", "a three"]
    esd = Esd(EsdConfig(ddim_steps=3, sample_batch=2))
    esd.setup(models, setup_stub(prompts))

    def trajectories(ids: list[int]):
        batch = Batch(forget_prompts=[prompts[i] for i in ids], forget_ids=torch.tensor(ids), rng=Draws(seed=0, step=5))
        return esd.forget_trajectories(models, batch)

    whole, halves = trajectories([0, 1, 2, 3]), [trajectories([0, 1]), trajectories([2, 3])]
    assert torch.equal(whole[0], torch.cat([h[0] for h in halves], dim=1))  # [K, B, ...]: every x_t
    assert torch.equal(whole[2], torch.cat([h[2] for h in halves]))  # the end points x_0
    assert not torch.equal(whole[0][:, 0], whole[0][:, 1])  # different samples: the check is not vacuous
