"""ESD parity: the project's x_t and loss equal the official code's, on a tiny random model.

The official side below never calls erase: prompts are encoded by the pipeline's own `encode_prompt`,
x_t is drawn by the official procedure, and the UNets are called directly. erase's side is observed,
not replaced: a forward pre-hook on the UNet records every input it sees during `setup` and `losses`.

Official data path (rohitgandikota/erasing, esd_sd.py:127-141 with utils/sd_utils.py:209-237): the
pipeline runs from pure noise for `run_till_timestep` = k of N scheduler steps with classifier-free
guidance (guidance 3, "" as negative prompt, esd_sd.py:57/96-100), and x_t is its latent after those k
steps; the loss is taken at t = scheduler.timesteps[k] (esd_sd.py:129). The paper's code
(train-scripts/train-esd.py at commit 414dc94^, lines 205-207 and 226-237) draws x_t the same way through
ldm's DDIM sampler (eta 0, ldm/models/diffusion/ddim.py:166-194) with the model being trained, where
esd_sd.py uses the frozen base (line 127): before the first update the two are the same model, and
that is where erase's x_t is checked against this transcription.

Official loss: train-esd.py:247, criteria(e_n, e_0 - negative_guidance * (e_p - e_0)) with
negative_guidance 1 (line 298); esd_sd.py:191, criteria(noise_pred_esd_model, noise_pred_erase_from -
negative_guidance * (noise_pred_erase - noise_pred_null)) with default 2 (line 62), i.e. eta + 1.
criteria = torch.nn.MSELoss() (a mean over every element; for a batch, the mean of the per-sample means).
"""

import copy

import torch
from diffusers import DDIMScheduler

from erase.objectives.esd import Esd, EsdConfig

PROMPTS = ["nudity", "a nude person", "naked"]
STEPS, GUIDANCE = 4, 3.0
# x_t: float32 latents of magnitude ~20 (a tiny random UNet), erase's batched UNet calls against one-sample
# calls: measured 1.1e-5; a wrong start noise or step count is off by more than 1.
XT_ATOL = 1e-4


class UnetInputs:
    """Every call of `unet` while recording: (x [B, ...], t [B], whether autograd was on)."""

    def __init__(self, unet):
        self.calls: list[tuple[torch.Tensor, torch.Tensor, bool]] = []
        self.handle = unet.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, _module, args, kwargs):
        x = args[0] if args else kwargs["sample"]
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        t = torch.as_tensor(t).reshape(-1).expand(x.shape[0]).detach().clone()
        self.calls.append((x.detach().float().clone(), t, torch.is_grad_enabled()))

    def loss_call(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The trained model's prediction inside `losses`: the last call made with autograd on."""
        x, t, _ = [c for c in self.calls if c[2]][-1]
        return x, t

    def start_noises(self, first_t: int) -> list[torch.Tensor]:
        """Each sample's start x_T: the rows of every no-grad call at the first scheduler timestep
        (a CFG batch holds each x twice)."""
        rows = [row for x, t, grad in self.calls if not grad and (t == first_t).all() for row in x]
        return [r for i, r in enumerate(rows) if not any(torch.equal(r, q) for q in rows[:i])]


def scheduler(pipe) -> DDIMScheduler:
    s = DDIMScheduler.from_config(pipe.scheduler.config)  # the pipeline's own scheduler (tiny: DDIM)
    s.set_timesteps(STEPS)  # esd_sd.py:89
    return s


@torch.no_grad()
def official_xt(pipe, unet, prompt: str, start: torch.Tensor, k: int) -> torch.Tensor:
    """esd_sd_call (utils/sd_utils.py:209-237): k guided steps from `start`, the pipeline's denoising loop."""
    sched = scheduler(pipe)
    cond, uncond = pipe.encode_prompt(prompt, "cpu", 1, True, negative_prompt="")
    latents = start[None] * sched.init_noise_sigma
    for t in sched.timesteps[:k]:
        inp = sched.scale_model_input(torch.cat([latents] * 2), t)
        e_u, e_c = unet(inp, t, encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
        latents = sched.step(e_u + GUIDANCE * (e_c - e_u), t, latents).prev_sample
    return latents[0]


@torch.no_grad()
def official_loss(pipe, original, trained, prompts: list[str], z, t, negative_guidance: float, form: str):
    emb_p, emb_0 = pipe.encode_prompt(prompts, "cpu", 1, True, negative_prompt=[""] * len(prompts))
    e_0 = original(z, t, encoder_hidden_states=emb_0).sample
    e_p = original(z, t, encoder_hidden_states=emb_p).sample
    e_n = trained(z, t, encoder_hidden_states=emb_p).sample
    criteria = torch.nn.MSELoss()
    if form == "train-esd.py":  # line 247
        return criteria(e_n, e_0 - negative_guidance * (e_p - e_0))
    return criteria(e_n, e_p - negative_guidance * (e_p - e_0))  # esd_sd.py:191


def test_esd_xt_is_the_official_partial_trajectory_before_training(setup_stub, make_batch, tiny_models):
    """Before any update (trained == frozen), every x_t erase trains on is the official procedure's
    latent after k guided DDIM steps from one of the start noises erase drew, at t = timesteps[k]."""
    models, pipe, _ = tiny_models("noxattn")
    frozen = copy.deepcopy(pipe.unet).requires_grad_(False)
    rec = UnetInputs(pipe.unet)
    esd = Esd(EsdConfig(eta=1.0, ddim_steps=STEPS, guidance=GUIDANCE))
    esd.setup(models, setup_stub(PROMPTS))
    timesteps = scheduler(pipe).timesteps
    matched_ks = []
    for step in range(3):  # setup's calls stay recorded: a cached trajectory's start noises are seen there
        b = make_batch(PROMPTS, step=step)
        ours = esd.losses(models, b).forget
        x_t, t = rec.loss_call()
        starts = rec.start_noises(int(timesteps[0]))
        for r, prompt in enumerate(b.forget_prompts):
            assert int(t[r]) in timesteps.tolist(), f"t = {int(t[r])} is not one of the DDIM timesteps {timesteps.tolist()}"
            k = timesteps.tolist().index(int(t[r]))
            want = official_loss(pipe, frozen, pipe.unet, [prompt], x_t[r:r + 1], t[r:r + 1], 1.0, "train-esd.py")
            torch.testing.assert_close(ours[r].detach().double(), want.double(), rtol=1e-5, atol=1e-8)
            if k == 0:  # no step yet: x_t is a start noise itself
                continue
            assert starts, "no start noise was seen: x_t does not come from a trajectory"
            gaps = [float((official_xt(pipe, frozen, prompt, s, k) - x_t[r]).abs().max()) for s in starts]
            assert min(gaps) <= XT_ATOL, (prompt, k, min(gaps))
            matched_ks.append(k)
    assert len(set(matched_ks)) >= 2, matched_ks  # several trajectory depths were checked, not only pure noise
    rec.handle.remove()


def test_esd_loss_is_the_official_loss_in_both_parametrisations(setup_stub, make_batch, perturb, tiny_models):
    """After the weights moved: on the x_t, t erase used, its loss is the official one, in the paper's
    parametrisation (negative_guidance = eta) and the newer code's (negative_guidance = eta + 1)."""
    models, pipe, _ = tiny_models("noxattn")
    original = copy.deepcopy(pipe.unet).requires_grad_(False)
    perturb(models)
    for eta in (1.0, 2.0):
        # cached: the loss is checked on the x_t erase used (observed), whichever model drew it
        esd = Esd(EsdConfig(eta=eta, ddim_steps=STEPS, guidance=GUIDANCE, trajectory="cached"))
        esd.setup(models, setup_stub(PROMPTS))
        for ids in ([1], [0, 1, 2]):  # one sample per step (official) and a batch (the mean of its losses)
            rec = UnetInputs(pipe.unet)
            b = make_batch([PROMPTS[i] for i in ids], step=5)
            b.forget_ids = torch.tensor(ids)
            ours = esd.losses(models, b).forget.mean().detach().double()
            rec.handle.remove()
            z, t = rec.loss_call()
            for form, ng in (("train-esd.py", eta), ("esd_sd.py", eta + 1)):
                want = official_loss(pipe, original, pipe.unet, b.forget_prompts, z, t, ng, form).double()
                torch.testing.assert_close(ours, want, rtol=1e-5, atol=1e-8, msg=f"eta {eta}, {form}, ids {ids}")
        # the two parametrisations differ: eta here is not the newer code's negative_guidance
        wrong = official_loss(pipe, original, pipe.unet, b.forget_prompts, z, t, eta, "esd_sd.py").double()
        assert (ours - wrong).abs() > 1e-4 * ours.abs()
