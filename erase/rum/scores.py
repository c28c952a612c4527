"""RUM's refine step as math: per-sample difficulty scores and the partition into groups.

No training and no files: the scores read the ORIGINAL model (`models.original()`, no gradients)
and return tensors; `partition` splits indices. See erase/rum/__init__.py for the definitions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

Score = Literal["loss", "entanglement"]


def shared_timesteps(n: int, num_train_timesteps: int = 1000) -> Tensor:
    """`n` evenly spaced timesteps, centred in n equal bins of the schedule (e.g. 5 -> 100, 300, ... 900)."""
    return ((torch.arange(n, dtype=torch.float64) + 0.5) * num_train_timesteps / n).long().clamp(0, num_train_timesteps - 1)


@torch.no_grad()
def denoising_scores(models: Any, latents: Tensor, prompts: Sequence[str], n_timesteps: int = 5,
                     seed: int = 0, batch_size: int = 16) -> Tensor:
    """Per-sample denoising loss of the ORIGINAL model, [N], averaged over shared t and noise.

    l_i = (1/T) sum_k || eps_k - eps_o(sqrt(abar_tk) x_i + sqrt(1 - abar_tk) eps_k, c_i, t_k) ||^2 / d
    (for v-prediction models the target is v_k = sqrt(abar_tk) eps_k - sqrt(1 - abar_tk) x_i: `Models.target`)
    with the same (t_k, eps_k) for every sample i, so that differences between samples come from
    the model and the sample, not from the draw.
    """
    assert latents.shape[0] == len(prompts), f"{latents.shape[0]} latents for {len(prompts)} prompts"
    sched = models.noise_scheduler
    ts = models.train_timesteps(shared_timesteps(n_timesteps, sched.config.num_train_timesteps)).cpu()
    gen = torch.Generator().manual_seed(seed)
    noises = torch.randn((n_timesteps, *latents.shape[1:]), generator=gen)
    out = []
    with models.original():
        for start in range(0, len(prompts), batch_size):
            x0 = latents[start:start + batch_size].to(models.device, torch.float32)
            cond = models.encode(list(prompts[start:start + batch_size]))
            total = torch.zeros(x0.shape[0], device=models.device)
            for t, eps in zip(ts, noises):
                eps = eps.to(models.device).expand_as(x0)
                t_b = t.expand(x0.shape[0]).to(models.device)
                x_t = models.add_noise(x0, eps, t_b)
                pred = models.pred(x_t.to(models.weight_dtype), t_b, cond).float()
                total += (pred - models.target(x0, eps, t_b)).pow(2).flatten(1).mean(1)
            out.append((total / n_timesteps).cpu())
    return torch.cat(out)


def entanglement_score(forget_z: Tensor, retain_z: Tensor) -> float:
    """Set-level ES of RUM (see module docstring): within-set spread over between-set separation."""
    return float(per_sample_entanglement(forget_z, retain_z).mean())


def per_sample_entanglement(forget_z: Tensor, retain_z: Tensor) -> Tensor:
    """ES_i = [mean_r ||z_r - mu_R||^2 + ||z_f,i - mu_F||^2] / [(||mu_R - mu||^2 + ||mu_F - mu||^2)/2], [N_f].

    Its mean over the forget set equals the set-level ES exactly.
    """
    zf, zr = forget_z.flatten(1).double(), retain_z.flatten(1).double()
    mu_f, mu_r = zf.mean(0), zr.mean(0)
    mu = (mu_f + mu_r) / 2
    spread_r = (zr - mu_r).pow(2).sum(1).mean()
    between = ((mu_r - mu).pow(2).sum() + (mu_f - mu).pow(2).sum()) / 2
    return ((spread_r + (zf - mu_f).pow(2).sum(1)) / between.clamp_min(1e-12)).float()


@torch.no_grad()
def text_embeddings(models: Any, prompts: Sequence[str], batch_size: int = 32) -> Tensor:
    """EOS-pooled CLIP text embeddings of the ORIGINAL text encoder, [N, D]."""
    tok = models.tokenizer
    out = []
    with models.original():
        for start in range(0, len(prompts), batch_size):
            ids = tok(list(prompts[start:start + batch_size]), padding="max_length", truncation=True,
                      max_length=tok.model_max_length, return_tensors="pt").input_ids.to(models.device)
            out.append(models.text_encoder(ids).pooler_output.float().cpu())
    return torch.cat(out)


def partition(difficulty: Tensor, k: int = 3, fractions: Sequence[float] | None = None) -> list[Tensor]:
    """Indices of the forget set split into k groups of increasing difficulty (easiest first).

    Sizes are equal up to one (or follow `fractions`); ties are broken by index, so the split is
    deterministic. Every index appears in exactly one group.
    """
    n = difficulty.shape[0]
    if k < 1:
        raise ValueError(f"k: must be >= 1, got {k}")
    order = torch.sort(difficulty.double(), stable=True).indices
    if fractions is None:
        return [g.clone() for g in torch.tensor_split(order, k)]
    bounds = torch.tensor([0.0, *fractions], dtype=torch.float64).cumsum(0)
    edges = (bounds * n).round().long().tolist()
    edges[-1] = n
    return [order[edges[i]:edges[i + 1]].clone() for i in range(k)]


def difficulty_from_scores(scores: Tensor, score: Score, order: str = "low_loss_first") -> Tensor:
    """Convert a raw score to the partition key (groups run in increasing key): ES -> ES (least
    entangled first); loss -> loss ("low_loss_first", the paper's proxy order) or -loss."""
    if score != "loss":
        return scores
    return scores if order == "low_loss_first" else -scores
