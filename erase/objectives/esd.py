"""Erased Stable Diffusion (ESD), Gandikota et al. 2023, https://arxiv.org/abs/2303.07345

With the frozen original model eps_o, a forget prompt c_f and a partially denoised x_t:

    target = eps_o(x_t, "", t) - eta * (eps_o(x_t, c_f, t) - eps_o(x_t, "", t))
    L_i    = || eps_theta(x_t, c_f, t) - target ||^2          (mean over latent elements)

i.e. the trained model is pushed towards NEGATIVE guidance away from the concept. Variants by
trained parameters: ESD-x = cross-attention only (prompt-specific erasure), ESD-u = everything
but cross-attention (global erasure), full.

Official code (rohitgandikota/erasing): the original train-scripts/train-esd.py (line 247 at
commit 414dc94^) writes exactly this target, `e_0 - negative_guidance * (e_p - e_0)`, with
`--negative_guidance` 1 (line 298), lr 1e-5, 1000 iterations, start guidance 3, DDIM 50. The newer
esd_sd.py (line 191) writes `e_c - negative_guidance * (e_c - e_u)` with default 2 (line 62),
which is eta' = eta + 1: its 2 is eta = 1 here. So eta = 1 in both; `eta` is always in the
paper's (first) form.

Where x_t comes from (`trajectory`), and the deliberate deviations, each for a reason:
* "online" (the default, as the papers' code runs it): every step, each forget sample starts from a
  fresh noise (drawn from (seed, step, sample id)) and the CURRENT weights (the trainable modules,
  under no_grad) run the guided DDIM loop of erase/models/sampling.py with c_f (CFG `guidance`,
  `ddim_steps` steps); x_t is the point at a position k drawn per sample. Official: the original
  train-scripts/train-esd.py (commit 414dc94^) samples with `model`, the model being trained
  (`quick_sample_till_t`, lines 205-207, called at line 237 for a t_enc drawn at line 226), and so
  does esd_diffusers.py (commit 6eb7dc8, lines 78-90: `with finetuner:` around the partial
  diffusion). The official loop stops at t_enc; ours runs the trajectory to its end, because the
  LoReUn difficulty below needs the trajectory's own x_0 (a batch of 8 draws its largest k near the
  end anyway; at batch 1 this costs up to 2x the official's trajectory passes), and so every process
  of a multi-process run makes the same number of UNet calls whatever k it draws (under FSDP2 each
  call is a collective: erase/train/engines.py). The samples run `sample_batch` (4) at a time, so
  a sample's trajectory is the same float32 numbers whether one process samples the whole batch or
  each of P processes samples its share, when `sample_batch` divides the share (kernels round
  differently at other batch sizes, and a guided loop carries that on).
* "cached" (a speed option, a deviation): the FROZEN model's trajectories, generated ONCE per forget
  sample in `setup` and cached (RUN/cache), a position k drawn per sample each step: one UNet call
  per sample-step instead of `ddim_steps` guided ones. It is NOT the official distribution once the
  weights move: the trained model is only ever asked about points the original model visits, from
  a finite set of start noises. (The newest official script, esd_sd.py at 25613d2, lines 127-141,
  also samples with the frozen `base_unet`, but from a fresh seed every step.)
* t is the DDIM timestep of position k. The old official code draws the DDPM t uniformly inside
  the DDIM interval of k (train-esd.py, `t_enc_ddpm`); the new one uses the DDIM timestep, as here.
* Several samples per step (`train.batch_size`); the official code trains on one.
No images are needed. `retain_weight > 0` adds an optional preservation term (an extension, off by
default): on points x_t of the frozen model's OWN trajectories for the retain prompts (cached in
`setup` under either `trajectory`), the trained model must keep the original predictions. On the forget
trajectories alone the term never sees, e.g., a red two being drawn, and erasing "3" in
cross-attention then also dulls colour words and neighbouring digits.

LoReUn difficulty: the trajectory's end point x_0 defines the noise it implies at step k,
eps_hat = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t); the difficulty is the current model's
denoising error ||eps_hat - eps_theta(x_t, c_f, t)||^2 from the same forward pass, reported with
its timestep t (LoReUn divides by a per-timestep baseline). For v-prediction models the error is
taken against v_hat = sqrt(abar_t) eps_hat - sqrt(1 - abar_t) x_0 (`Models.target`); ESD's target
itself needs no change in v-space (the derivation is in erase/models/core.py). Flow-matching models
(FLUX, SD3): x_t = (1 - s) x_0 + s eps, eps_hat = (x_t - (1 - s) x_0) / s, the error is taken against the
velocity eps_hat - x_0, and the target again needs no change (erase/models/flow.py derives it); the
trajectories are the FlowMatchEuler sampler's, FLUX's with `guidance` as its guidance embedding (one pass).

SDXL (official esd_sdxl.py): the null prompt is "" encoded by both encoders (as `uncond_prompt` here),
the trajectories use the pipeline's guidance with its zero unconditional input (as `Models.uncond`),
and the size ids are the image size; the official trajectories use SDXL's Euler scheduler, ours DDIM
from the same config (erase/models/sampling.py). SMALL means the model, prompted with
c_f, still steers x_t to the concept image: it still knows the sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from erase.models.sampling import ddim_sample, sample_set
from erase.objectives.base import Batch, Losses, Models, Objective, ObjectiveConfig, SetupData, per_sample_mse
from erase.objectives.registry import register_objective

_PARAMS = {"x": "xattn", "u": "noxattn", "full": "unet"}


@dataclass
class EsdConfig(ObjectiveConfig):
    """ESD hyperparameters (`objective:` mapping when `method: esd`)."""

    variant: Literal["x", "u", "full"] = "x"  # default trained set: x = attn2, u = all but attn2
    eta: float = 1.0  # negative guidance in the paper's form (newer official code's `negative_guidance` minus 1)
    guidance: float = 3.0  # CFG of the frozen model's trajectories
    ddim_steps: int = 50  # trajectory length; k is drawn uniformly from [0, ddim_steps)
    uncond_prompt: str = ""
    # Optional preservation term (not in the paper; like AdvUnlearn's retain regulariser):
    # retain_weight * ||eps_theta(x_t, c_r, t) - eps_o(x_t, c_r, t)||^2 with retain prompts c_r.
    retain_weight: float = 0.0
    # Where the retain term evaluates: "retain" = the retain prompts' own cached trajectories
    # (in-distribution for what must be kept), "forget" = the forget sample's x_t (cheaper setup).
    # A cached trajectory costs ddim_steps x latent size in fp32: 3.3 MB per prompt for SD-1.5 at
    # 50 steps (64x64x4), so 1000 retain prompts need ~3.3 GB of RUN/cache and disk.
    retain_on: Literal["retain", "forget"] = "retain"
    # Where each step's forget x_t comes from (module docstring): "online" = a DDIM trajectory of the
    # CURRENT weights, sampled afresh every step, as the official code does; "cached" = the frozen
    # model's trajectories, sampled once in setup (a speed option and a deviation).
    trajectory: Literal["online", "cached"] = "online"
    # Online trajectories are sampled this many forget samples at a time (guided UNet batches of twice
    # as many), whatever the number of processes: a run over P processes then rounds like one process
    # when it divides the per-process micro-batch (train.batch_size / P). It also bounds sampling memory.
    sample_batch: int = 4

    def __post_init__(self) -> None:
        if self.ddim_steps < 1:
            raise ValueError(f"ddim_steps: must be >= 1, got {self.ddim_steps}")
        if self.sample_batch < 1:
            raise ValueError(f"sample_batch: must be >= 1, got {self.sample_batch}")


class Esd(Objective):
    config_class = EsdConfig
    reference_is_free = True  # the target's eps_o(x_t, c_f, t) is the reference prediction

    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset({"retain_prompts"}) if self.config.retain_weight > 0 else frozenset()

    def __init__(self, config: EsdConfig | None = None):
        super().__init__(config)
        self.cache: dict[str, Tensor] | None = None
        self.retain_cache: dict[str, Tensor] | None = None
        self._online: tuple[tuple, tuple[Tensor, Tensor, Tensor]] | None = None  # (draw key, trajectories)

    @property
    def default_params(self) -> str:
        return _PARAMS[self.config.variant]

    def setup(self, models: Models, data: SetupData) -> None:
        c = self.config
        if c.trajectory == "cached":
            self.cache = data.cached(
                f"esd_trajectories_s{c.ddim_steps}_g{c.guidance}",
                lambda: sample_set(models, data.forget_prompts, data.seed, "esd", c.ddim_steps, c.guidance,
                                   keep_trajectory=True, desc="ESD trajectories"),
            )
        if c.retain_weight > 0 and c.retain_on == "retain" and data.retain_prompts:
            self.retain_cache = data.cached(
                f"esd_retain_trajectories_s{c.ddim_steps}_g{c.guidance}",
                lambda: sample_set(models, data.retain_prompts, data.seed, "esd-retain", c.ddim_steps, c.guidance,
                                   keep_trajectory=True, desc="ESD retain trajectories"),
            )

    def forget_trajectories(self, models: Models, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """(trajectories [K, B, ...], timesteps [K], end points x_0 [B, ...]) of the batch's forget samples,
        column b for sample b: the cached frozen-model ones, or (`online`) fresh ones of the CURRENT weights.

        Online trajectories are made once per micro-batch (the same draw gives the same ones: AdvUnlearn's
        attack and its defence step share them) with `ddim_sample`, the guided DDIM loop of erase, in
        chunks of `sample_batch` samples: a sample's trajectory does not depend on the process count."""
        ids = batch.forget_ids.cpu()
        if self.config.trajectory == "cached":
            assert self.cache is not None, "Esd.setup() must run before losses()"
            return self.cache["trajectory"][:, ids], self.cache["timesteps"], self.cache["latents"][ids]
        r = batch.rng
        key = (r.seed, r.step, r.micro, r.shared, tuple(ids.tolist()), tuple(batch.forget_prompts))
        if self._online is None or self._online[0] != key:
            noise = r.randn(ids, models.latent_shape(), stream="x_T")
            x0, traj, timesteps = ddim_sample(models, batch.forget_prompts, noise, self.config.ddim_steps,
                                              self.config.guidance, keep_trajectory=True,
                                              chunk=self.config.sample_batch)
            self._online = (key, (traj, timesteps, x0))
        return self._online[1]

    def sample_xt(self, models: Models, batch: Batch, retain: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """(x_t [B, ...], t [B], the implied denoising target [B, ...]) for the batch's forget (or retain)
        samples: the implied noise eps_hat, or v = alpha_t eps_hat - sigma_t x_0 for v-prediction models.
        Retain samples always read the frozen model's cached trajectories."""
        if retain:
            assert self.retain_cache is not None, "Esd.setup() must run before losses()"
            ids = batch.retain_ids.cpu()
            traj, timesteps, x0 = (self.retain_cache["trajectory"][:, ids], self.retain_cache["timesteps"],
                                   self.retain_cache["latents"][ids])
        else:
            ids = batch.forget_ids.cpu()
            traj, timesteps, x0 = self.forget_trajectories(models, batch)
        k = batch.rng.randint(ids, 0, traj.shape[0], stream="k-retain" if retain else "k")
        x_t = traj[k, torch.arange(len(ids))].to(models.device, torch.float32)
        t = timesteps[k].to(models.device)  # DDIM: integer timesteps; flow models: the sampler's float timesteps
        a, s = models.alpha_sigma(t, x_t)
        x0_ids = x0.to(models.device, torch.float32)
        eps_hat = (x_t - a * x0_ids) / s
        return x_t, t, models.target(x0_ids, eps_hat, t)  # the implied noise, or its v for v-prediction

    def target(self, models: Models, x_t: Tensor, t: Tensor, prompts: list[str]) -> Tensor:
        """eps_o(x_t, "", t) - eta * (eps_o(x_t, c_f, t) - eps_o(x_t, "", t)) with the ORIGINAL weights."""
        return self.target_and_original(models, x_t, t, prompts)[0]

    def target_and_original(self, models: Models, x_t: Tensor, t: Tensor, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """(the target, eps_o(x_t, c_f, t)): the original model's conditional prediction comes for free."""
        with models.original(), torch.no_grad():
            cond = models.encode(prompts)
            uncond = models.encode([self.config.uncond_prompt]).expand_as(cond)
            e_u, e_c = models.pred(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([uncond, cond])).chunk(2)
        return e_u - self.config.eta * (e_c - e_u), e_c

    def losses(self, models: Models, batch: Batch) -> Losses:
        x_t, t, eps_hat = self.sample_xt(models, batch)
        target, e_c = self.target_and_original(models, x_t, t, batch.forget_prompts)
        pred = models.pred(x_t, t, models.encode(batch.forget_prompts))
        forget = per_sample_mse(pred, target)
        difficulty = per_sample_mse(pred.detach(), eps_hat)
        reference = per_sample_mse(e_c, eps_hat) if batch.want_reference else None
        logs = {"esd": forget.mean().item(), "difficulty": difficulty.mean().item()}
        retain = None
        if self.config.retain_weight > 0 and batch.retain_prompts:
            if self.retain_cache is not None and batch.retain_ids is not None:
                xr, tr, _ = self.sample_xt(models, batch, retain=True)
                prompts = batch.retain_prompts
            else:
                n = min(len(batch.retain_prompts), len(x_t))
                xr, tr, prompts = x_t[:n], t[:n], batch.retain_prompts[:n]
            with models.original(), torch.no_grad():
                keep = models.pred(xr, tr, models.encode(prompts))
            retain = self.config.retain_weight * per_sample_mse(models.pred(xr, tr, models.encode(prompts)), keep).mean()
            logs["retain"] = retain.item()
        return Losses(forget=forget, retain=retain, difficulty=difficulty, logs=logs, timesteps=t, reference=reference)


register_objective("esd", Esd)
