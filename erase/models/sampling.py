"""DDIM (flow models: FlowMatchEuler) sampling with classifier-free guidance through `Models`, keeping the trajectory.

Used to generate forget/retain/anchor images with the ORIGINAL model and to build ESD's cache of
frozen-model trajectories, and (`denoise_loop`) by the audit's generation. Deterministic: the initial
noise of sample i comes from (seed, i). Works for every family `Models` knows: the scheduler is a
DDIMScheduler from the model's own scheduler config (its betas and prediction type: epsilon or
v_prediction; real SDXL ships EulerDiscreteScheduler and gets DDIM here), and the conditioning is
whatever `Models.encode` returns (SDXL: with pooled embeddings and size ids).
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor
from tqdm.auto import tqdm

from erase.models.core import Conditioning, Models


def seeded_noise(shape: tuple[int, ...], seed: int, key: str) -> Tensor:
    g = torch.Generator(device="cpu")
    g.manual_seed(int.from_bytes(hashlib.blake2b(f"{seed}/{key}".encode(), digest_size=8).digest(), "little") & (2**63 - 1))
    return torch.randn(shape, generator=g)


def denoise_loop(models: Models, scheduler, x: Tensor, cond: Conditioning, uncond: Conditioning, guidance: Tensor | float,
              step_kwargs: dict | None = None, on_step=None, float32: bool = True) -> Tensor:
    """The denoising loop shared by every sampler in erase: from x (already times init_noise_sigma)
    over `scheduler.timesteps`, pred = pred_u + w (pred_c - pred_u) (classifier-free guidance on the
    model's own prediction, eps, v or velocity, as diffusers' pipelines do; `Models.guided_pred`: one
    batch of both halves per step, FLUX one conditional pass with w as its guidance embedding).

    `guidance` is a float or a per-sample [B] tensor; `on_step(t, x)` sees each x_t before its step.
    Predictions are float32 (the training caches) or, with `float32=False`, keep the UNet's dtype
    as the pipelines' loops do (the audit's generation).
    """
    scale = getattr(scheduler, "scale_model_input", None)  # flow-matching schedulers take x as it is
    for t in scheduler.timesteps:
        if on_step is not None:
            on_step(t, x)
        inp = scale(x, t) if scale is not None else x
        pred = models.guided_pred(inp, t, cond, uncond, guidance, float32=float32)
        x = scheduler.step(pred, t, x, **(step_kwargs or {}), return_dict=False)[0]
    return x


@torch.no_grad()
def ddim_sample(
    models: Models,
    prompts: list[str],
    noise: Tensor,
    steps: int = 50,
    guidance: float = 3.0,
    keep_trajectory: bool = False,
    chunk: int | None = None,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Sample latents from `noise` [B, C, h, w] with prompts `prompts` (CFG against "").

    Returns (x_0 latents [B, C, h, w], trajectory [steps, B, C, h, w] or None, timesteps [steps]):
    trajectory[k] is the x_t the UNet saw at timesteps[k] (k = 0 is pure noise).

    `chunk`: sample the rows in consecutive groups of at most this many, one denoising loop each. The
    kernels of a batched call may round differently at another batch size (measured on CPU: the
    digits UNet at batch 16 against 8 + 8 differs by float32 ulps, 4 + 4 against 2 + 2 + 2 + 2 does
    not), and a guided 25-step loop carries those differences on; a fixed chunk makes a row's result
    independent of how many rows come with it, e.g. of the number of processes a batch is split over.
    """
    if chunk is not None and len(prompts) > chunk:
        parts = [ddim_sample(models, prompts[i:i + chunk], noise[i:i + chunk], steps, guidance, keep_trajectory)
                 for i in range(0, len(prompts), chunk)]
        trajectory = torch.cat([p[1] for p in parts], dim=1) if keep_trajectory else None
        return torch.cat([p[0] for p in parts]), trajectory, parts[0][2]
    scheduler = models.sampler(steps, tuple(noise.shape[-2:]))
    cond = models.encode(prompts)
    uncond = models.uncond(len(cond))
    x = noise.to(models.device, torch.float32) * getattr(scheduler, "init_noise_sigma", 1.0)
    traj: list[Tensor] = []
    x = denoise_loop(models, scheduler, x, cond, uncond, guidance,
                  on_step=(lambda t, x_t: traj.append(x_t.float().cpu())) if keep_trajectory else None).float()
    trajectory = torch.stack(traj) if keep_trajectory else None
    return x.cpu(), trajectory, scheduler.timesteps.clone().cpu()


def sample_set(
    models: Models,
    prompts: list[str],
    seed: int,
    key: str,
    steps: int = 50,
    guidance: float = 3.0,
    batch_size: int = 16,
    keep_trajectory: bool = False,
    desc: str = "generating",
) -> dict[str, Tensor]:
    """Generate one sample per prompt (sample i seeded by (seed, key, i)), batched, with a progress bar.

    Returns {"latents": [N, C, h, w]} plus {"trajectory": [steps, N, ...], "timesteps": [steps]}.
    """
    shape = models.latent_shape()
    latents, trajs, timesteps = [], [], None
    with models.original():
        for start in tqdm(range(0, len(prompts), batch_size), desc=desc, unit="batch", leave=False):
            chunk = prompts[start : start + batch_size]
            noise = torch.stack([seeded_noise(shape, seed, f"{key}/{start + j}") for j in range(len(chunk))])
            x0, traj, timesteps = ddim_sample(models, chunk, noise, steps, guidance, keep_trajectory)
            latents.append(x0)
            if traj is not None:
                trajs.append(traj)
    out = {"latents": torch.cat(latents)}
    if keep_trajectory:
        out["trajectory"] = torch.cat(trajs, dim=1)
        out["timesteps"] = timesteps
    return out
