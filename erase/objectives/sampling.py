"""DDIM sampling with classifier-free guidance through `Models`, keeping the trajectory.

Used to generate forget/retain/anchor images with the ORIGINAL model and to build ESD's cache of
frozen-model trajectories. Deterministic: the initial noise of sample i comes from (seed, i).
"""

from __future__ import annotations

import hashlib

import torch
from diffusers import DDIMScheduler
from torch import Tensor
from tqdm.auto import tqdm

from erase.objectives.base import Models


def seeded_noise(shape: tuple[int, ...], seed: int, key: str) -> Tensor:
    g = torch.Generator(device="cpu")
    g.manual_seed(int.from_bytes(hashlib.blake2b(f"{seed}/{key}".encode(), digest_size=8).digest(), "little") & (2**63 - 1))
    return torch.randn(shape, generator=g)


def latent_shape(models: Models) -> tuple[int, int, int]:
    cfg = models.unet.config if hasattr(models.unet, "config") else models.unet.module.config
    return (int(cfg.in_channels), int(cfg.sample_size), int(cfg.sample_size))


@torch.no_grad()
def ddim_sample(
    models: Models,
    prompts: list[str],
    noise: Tensor,
    steps: int = 50,
    guidance: float = 3.0,
    keep_trajectory: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Sample latents from `noise` [B, C, h, w] with prompts `prompts` (CFG against "").

    Returns (x_0 latents [B, C, h, w], trajectory [steps, B, C, h, w] or None, timesteps [steps]):
    trajectory[k] is the x_t the UNet saw at timesteps[k] (k = 0 is pure noise).
    """
    scheduler = DDIMScheduler.from_config(models.noise_scheduler.config)
    scheduler.set_timesteps(steps)
    cond = models.encode(prompts)
    uncond = models.encode([""]).expand_as(cond)
    x = noise.to(models.device, torch.float32) * scheduler.init_noise_sigma
    traj = []
    for t in scheduler.timesteps:
        if keep_trajectory:
            traj.append(x.cpu())
        inp = torch.cat([x, x])
        e_u, e_c = models.eps(scheduler.scale_model_input(inp, t), t, torch.cat([uncond, cond])).chunk(2)
        e = e_u + guidance * (e_c - e_u)
        x = scheduler.step(e, t, x).prev_sample.float()
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
    shape = latent_shape(models)
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
