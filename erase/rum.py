"""RUM: refine the forget set by difficulty, then unlearn the pieces in sequence.

Zhao et al., "What makes unlearning hard and what to do about it", NeurIPS 2024,
https://arxiv.org/abs/2406.01257. RUM (Refined-Unlearning Meta-algorithm) has two steps:

1. *Refine*: score every forget sample by how hard it is to unlearn and split the forget set
   into k groups (paper: k = 3, low / mid / high memorisation).
2. *Meta-unlearn*: unlearn the groups one after another, low -> mid -> high, each with the
   method and hyperparameters that suit it. In the official code the retain set of step i is
   the training set minus every group handled so far (``all - (S_1 u ... u S_i)``).

Scores (``rum.score``):

- ``loss`` (default): the ORIGINAL model's denoising loss on the sample's image, a cheap
  memorisation proxy. Per-sample diffusion losses are dominated by the random t and noise, so
  the estimate is made fair: every sample sees the SAME timesteps and the SAME noise tensors,
  and the loss is averaged over ``n_timesteps`` evenly spaced t. A LOW loss means the model
  reproduces the sample well -- memorised, hard to forget (LoReUn's view), so
  ``difficulty = -loss``.
- ``entanglement``: how close the sample lies to the retain set in embedding space. The set-level
  entanglement score of the paper is

      ES = [mean_r ||z_r - mu_R||^2 + mean_f ||z_f - mu_F||^2] / [(||mu_R - mu||^2 + ||mu_F - mu||^2) / 2],
      mu = (mu_R + mu_F) / 2.

  Per sample we replace the forget-set spread by the sample's own squared distance to mu_F;
  the mean of the per-sample scores is exactly ES. ``difficulty = ES_i`` (more entangled =
  harder). Embeddings are CLIP text embeddings (EOS-pooled) of the prompts, or flattened VAE
  latents of the images (``rum.embedding``).

Sequencing lives in :func:`run_rum`, which drives one ordinary trainer run per group (the
trainer stays method-agnostic): each group's phase sees only that group's forget samples and
its own objective / weighting / steps / lr.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import torch
from torch import Tensor

Score = Literal["loss", "entanglement"]


# ----------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------
@dataclass
class RumGroupConfig:
    """What one difficulty group is unlearned with. Unset fields inherit the run's config.

    Attributes:
        objective: objective name for this group (e.g. "esd", "salun", "ga"); "none" skips the
            group (the official RUM examples leave the easiest group to the retain fine-tune).
        steps: optimisation steps of this group's phase.
        lr: learning rate of this group's phase.
        weighting: weighting scheme name for this group (e.g. "uniform", "loreun_d").
        overrides: any other `key=value` overrides of the run's config for this phase, as a
            mapping of dotted keys (e.g. ``{"objective.alpha": 0.5}``).
    """

    objective: str | None = None
    steps: int | None = None
    lr: float | None = None
    weighting: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.steps is not None and self.steps < 0:
            raise ValueError(f"steps: must be >= 0, got {self.steps}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr: must be > 0, got {self.lr}")


@dataclass
class RumConfig:
    """The `rum:` section of a training config. Absent or `groups: []` = no RUM.

    Attributes:
        groups: one entry per group, easiest first; k = len(groups) (paper: 3).
        score: "loss" (original model's denoising loss, memorisation proxy) or "entanglement".
        embedding: for "entanglement": "text" (CLIP EOS-pooled prompt embeddings) or "latent"
            (flattened VAE latents of the images).
        n_timesteps: timesteps averaged per sample for the "loss" score. One t gives a score
            dominated by where on the schedule it was drawn; several evenly spaced t, identical
            for every sample, rank samples by the model, not by the draw.
        fractions: optional group sizes as fractions of the forget set (sum 1); default equal.
        pending_in_retain: put the forget samples of groups not yet handled into the retain
            set of the current phase, as in the official classifier code (retain = all minus
            the handled groups). Off by default: when the groups share one concept (erasing
            "nudity", a digit), retaining the pending samples fights the erasure.
        seed: seed of the shared timesteps/noise of the score.
    """

    groups: list[RumGroupConfig] = field(default_factory=list)
    score: Score = "loss"
    embedding: Literal["text", "latent"] = "text"
    n_timesteps: int = 5
    fractions: list[float] | None = None
    pending_in_retain: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_timesteps < 1:
            raise ValueError(f"n_timesteps: must be >= 1, got {self.n_timesteps}")
        if self.fractions is not None:
            if len(self.fractions) != len(self.groups):
                raise ValueError(f"fractions: {len(self.fractions)} fractions for {len(self.groups)} groups")
            if any(f <= 0 for f in self.fractions) or abs(sum(self.fractions) - 1.0) > 1e-6:
                raise ValueError("fractions: must be positive and sum to 1")

    @property
    def enabled(self) -> bool:
        return len(self.groups) > 0


# ----------------------------------------------------------------------------------------------
# scores
# ----------------------------------------------------------------------------------------------
def shared_timesteps(n: int, num_train_timesteps: int = 1000) -> Tensor:
    """`n` evenly spaced timesteps, centred in n equal bins of the schedule (e.g. 5 -> 100, 300, ... 900)."""
    return ((torch.arange(n, dtype=torch.float64) + 0.5) * num_train_timesteps / n).long().clamp(0, num_train_timesteps - 1)


@torch.no_grad()
def denoising_scores(models: Any, latents: Tensor, prompts: Sequence[str], n_timesteps: int = 5,
                     seed: int = 0, batch_size: int = 16) -> Tensor:
    """Per-sample denoising loss of the ORIGINAL model, [N], averaged over shared t and noise.

    l_i = (1/T) sum_k || eps_k - eps_o(sqrt(abar_tk) x_i + sqrt(1 - abar_tk) eps_k, c_i, t_k) ||^2 / d
    with the same (t_k, eps_k) for every sample i, so that differences between samples come from
    the model and the sample, not from the draw.
    """
    assert latents.shape[0] == len(prompts), f"{latents.shape[0]} latents for {len(prompts)} prompts"
    sched = models.noise_scheduler
    ts = shared_timesteps(n_timesteps, sched.config.num_train_timesteps)
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
                x_t = sched.add_noise(x0, eps, t_b)
                pred = models.eps(x_t.to(models.weight_dtype), t_b, cond).float()
                total += (pred - eps).pow(2).flatten(1).mean(1)
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


# ----------------------------------------------------------------------------------------------
# partition
# ----------------------------------------------------------------------------------------------
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


def difficulty_from_scores(scores: Tensor, score: Score) -> Tensor:
    """Convert a raw score to a difficulty (higher = harder): loss -> -loss, ES -> ES."""
    return -scores if score == "loss" else scores


def group_overrides(group: RumGroupConfig) -> dict[str, Any]:
    """The group's settings as a flat {dotted key: value} mapping (None fields left out)."""
    out = {k: v for k, v in dataclasses.asdict(group).items() if k != "overrides" and v is not None}
    out.update(group.overrides)
    return out
