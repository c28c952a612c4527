"""P4D: prompting4debugging, real-token prompts that make the ERASED model denoise like the original.

Chin et al., "Prompting4Debugging: Red-Teaming Text-to-Image Diffusion Models by Finding
Problematic Prompts", ICML 2024, https://arxiv.org/abs/2309.06135. Follows the official code,
joycenerd/P4D: `prompt_optimization/optimize_n.py` (P4D-N), `prompt_optimization/optimize_k.py`
(P4D-K), `run_p4dn.py` (the target images, the per-row seeds) and
`configs/esd_nudity_optmz_config.json` (the published budget).

For a concept prompt p with seed s, the ORIGINAL model's image for (p, s) is the target (the same
x_0 UnlearnDiffAtk uses: `--reference-model` or `--target-images`); z_0 is its VAE latent. Soft
embeddings P = (p_1..p_n) are optimised, but every forward pass uses their projection onto the
nearest vocabulary tokens (`nn_project`: cosine nearest neighbour, optimize_n.py lines 68-96), and
the gradient with respect to the projected embeddings is applied to the soft ones (PEZ style,
optimize_n.py lines 150-155 and 244-249):

    min_P  || eps_erased(z_t, c([BOS, proj(P), EOS]), t) - eps_orig(z_t, c(p), t) ||^2,
    z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps,  t ~ U{0..999},  eps ~ N(0, I)

(optimize_n.py lines 172-241), AdamW lr 0.1, weight decay 0.1, 3000 iterations, batch 1. Every 50
iterations (from iteration 0) the projected tokens are decoded to text, rendered by the erased
model with the row's seed and guidance, and judged (lines 258-278).
- P4D-N (`variant: n`): n = 16 free tokens, initialised as random vocabulary tokens (lines 21-47).
- P4D-K (`variant: k`): the prompt's own tokens with one free token in front of every k = 3 of
  them (positions i with i mod (k + 1) = 0 are free, the others hold the prompt's tokens and get
  no gradient; optimize_k.py lines 21-54 and 254-256).

Budgets (`--attack-budget`): "official" (default) = P4D-N as published (16 tokens, 3000 iterations,
judged every 50); "official_k" = P4D-K as published; "quick" / "quick_k" = 100 iterations judged
every 25, for demos and tests (NOT comparable with the published numbers).

Deliberate deviations from the official code, each with its reason:
- Selection: the official keeps, over the run, the prompt whose image is most CLIP-similar to the
  target image and reports whether THAT prompt's image is unsafe. Here each render is judged by
  the audit's detector and the first flagged one stops the attack (as UnlearnDiffAtk's official
  code does): ASR counts the detector's verdict, and a prompt the detector flags is a success
  whatever its CLIP similarity; not every audit has a CLIP model (the digits world has none).
- Pixels: the official feeds the target image to the VAE in [0, 1] (`transforms.ToTensor()`,
  run_p4dn.py lines 170-176 with optimize_n.py line 143); diffusers' VAE expects [-1, 1], as every
  pipeline's image processor gives it: here the image is normalised. The scaling factor is the
  VAE's own (the official hard-codes SD-1's 0.18215).
- Token layout: the official P4D-N pads the 77 positions after EOS with token 0 ("!") and P4D-K
  writes its tokens over the EOS position (no EOS at all); here the optimised sequence is laid out
  as the found prompt is when it is rendered as text ([BOS, tokens, EOS] padded as the model's own
  tokenizer pads), so the attack optimises what it then renders.
- Text encoder: the official encodes the adversarial tokens with the ORIGINAL model's text encoder
  and runs them through the erased UNet; here the audited model's own text encoder (the one its
  rendered prompt goes through). The two are the same for every method that erases the UNet only.
- BOS and EOS are never chosen by the projection (a prompt must stay printable text).
- Several text encoders (the official has one, SD-1.4's CLIP). The search space is CLIP's vocabulary
  (`Models.token_tables`); a soft token is one embedding per encoder side by side, the nearest token
  scores the sum of each encoder's cosine, and the projected token goes into EVERY encoder of the
  model (`Models.encode` with slots): SDXL's two CLIP encoders; FLUX's CLIP-L (pooled) and T5; SD3's
  CLIP-L, CLIP-G and T5. T5's vocabulary differs: it sees a CLIP token as the mean embedding of the T5
  pieces of that token's text, one position per CLIP token (`erase.models.flow.vocab_map`, the mapping
  UnlearnDiffAtk, AdvUnlearn and concept inversion use). The found prompt is the CLIP tokens decoded to
  text; rendering it, T5 re-tokenises that text into its own pieces, so on FLUX / SD3 the optimised T5
  input is that mean-of-pieces approximation of what the rendered prompt gives T5, while the CLIP side
  is exact. The judged image is always the plain text's render.
- Timesteps: the official's t ~ U{0..999} is the DDPM training draw; FLUX / SD3 draw it through their
  own training distribution (`Models.train_timesteps`, the identity for DDPM models) and the loss
  compares velocities at z_t = (1 - s) z_0 + s eps (`Models.add_noise`).
- Randomness: the noise comes from a generator seeded with the row's seed (as the official does);
  what the official draws from the global RNG (initial tokens, the latent sample, timesteps) comes
  from a second generator seeded with seed + 1, so a row's attack is reproducible.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from erase.audit.attacks.common import check_budget_name, frozen, judge
from erase.audit.attacks.unlearndiffatk import render
from erase.audit.generate import GenSettings, pipeline_models
from erase.audit.suites import PromptRow
from erase.models.core import Models, denoiser, pipeline_modules, vae_shift


@dataclass(frozen=True)
class P4DSettings:
    budget: str = "official"
    variant: str = "n"         # "n": P4D-N (free tokens only), "k": P4D-K (a free token every k prompt tokens)
    tokens: int = 16           # P4D-N free tokens (config "prompt_len": 16)
    every_k: int = 3           # P4D-K (config "every_k": 3)
    iterations: int = 3000     # config "iter": 3000
    lr: float = 0.1            # AdamW (config "lr": 0.1)
    weight_decay: float = 0.1  # config "weight_decay": 0.1
    eval_every: int = 50       # config "eval_step": 50

    BUDGETS: ClassVar[dict[str, dict]] = {
        "official": {}, "official_k": {"variant": "k"},
        "quick": {"iterations": 100, "eval_every": 25}, "quick_k": {"variant": "k", "iterations": 100, "eval_every": 25},
    }

    def __post_init__(self):
        check_budget_name(type(self), self.budget)
        if self.variant not in ("n", "k"):
            raise ValueError(f"variant: must be 'n' or 'k', got {self.variant!r}")
        for name in ("tokens", "every_k", "iterations", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ValueError(f"lr: must be > 0 (and weight decay >= 0), got {self.lr}, {self.weight_decay}")


def nn_project(soft: torch.Tensor, tables: list[torch.Tensor], banned: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings of the nearest tokens [n, D], their ids [n]): cosine nearest neighbour in every
    encoder's table over CLIP's ids (`Models.token_tables`), scores summed (one encoder: optimize_n.py
    `nn_project`, lines 68-96)."""
    with torch.no_grad():
        parts = soft.split([int(w.shape[-1]) for w in tables], dim=-1)
        score = sum(F.normalize(q.to(w.device, w.dtype), dim=-1) @ F.normalize(w, dim=-1).T
                    for q, w in zip(parts, tables))
        score[:, banned] = -float("inf")
        ids = score.argmax(-1)
        return torch.cat([w[ids.to(w.device)] for w in tables], dim=-1).to(soft.device, soft.dtype), ids


def initial_tokens(models: Models, prompt: str, cfg: P4DSettings, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(soft embeddings [L, D], the mask [L] of the free positions) (optimize_{n,k}.py `initialize_prompt`).

    P4D-N: L = n random tokens, all free. P4D-K: L = len(prompt tokens) + len // k + 1 positions;
    position i is free when i mod (k + 1) == 0, the others hold the prompt's tokens in order."""
    vocab = models.vocab_size
    if cfg.variant == "n":
        ids = torch.randint(vocab, (cfg.tokens,), generator=g)
        return models.token_embeddings(ids), torch.ones(cfg.tokens, dtype=torch.bool)
    text = models.tokenizer(prompt, add_special_tokens=False).input_ids
    n = len(text) + len(text) // cfg.every_k + 1
    ids = torch.randint(vocab, (n,), generator=g)
    free = torch.tensor([i % (cfg.every_k + 1) == 0 for i in range(n)])
    ids[~free] = torch.tensor(text, dtype=torch.long)
    return models.token_embeddings(ids), free


def p4d_loss(models: Models, ref: Models, projected: torch.Tensor, target_cond, z0: torch.Tensor,
             noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """MSE(erased prediction for [BOS, projected, EOS], original prediction for the prompt) at the same z_t
    (optimize_n.py lines 179-241); `target_cond` is the ORIGINAL model's encoding of the prompt."""
    zt = models.add_noise(z0, noise, t)
    with torch.no_grad():
        target = ref.pred(zt, t, target_cond)
    cond = models.encode([""], len(projected), projected)
    return F.mse_loss(models.pred(zt, t, cond).float(), target.float())


def p4d_step(models: Models, ref: Models, soft: torch.Tensor, free: torch.Tensor, opt: torch.optim.Optimizer,
             target_cond, z0: torch.Tensor, g_noise: torch.Generator, g: torch.Generator,
             banned: list[int], tables: list[torch.Tensor]) -> tuple[float, torch.Tensor]:
    """One iteration: project, loss at a fresh (eps, t), gradient of the projection onto the soft
    embeddings (free positions only), AdamW step. Returns (loss, the projected ids used).

    t: a uniform draw over the training timesteps (the official's U{0..999}), through the model's own
    training distribution (`Models.train_timesteps`: the draw itself for DDPM models; FLUX / SD3: the
    flow timestep diffusers' training examples draw)."""
    projected, ids = nn_project(soft.detach(), tables, banned)
    projected = projected.requires_grad_(True)
    torch.randperm(len(z0), generator=g)  # the official draws a batch permutation (batch 1: one image)
    noise = torch.randn(z0.shape, generator=g_noise).to(z0.device, z0.dtype)
    k = torch.randint(0, models.num_train_timesteps, (len(z0),), generator=g)
    t = models.train_timesteps(k).to(z0.device)
    loss = p4d_loss(models, ref, projected, target_cond, z0, noise, t)
    grad, = torch.autograd.grad(loss, [projected])
    soft.grad = grad.to(soft.dtype) * free.to(grad.device, grad.dtype)[:, None]
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach()), ids


@torch.no_grad()
def target_latent(ref_pipe, image: np.ndarray, g: torch.Generator) -> torch.Tensor:
    """z_0: a sample of the ORIGINAL VAE's posterior for the target image, scaled (optimize_n.py line 143;
    FLUX's and SD3's VAEs also shift: (z - shift) * scale, as their pipelines do)."""
    x = torch.from_numpy(np.asarray(image, np.float32)).permute(2, 0, 1)[None] * 2 - 1
    x = x.to(ref_pipe.vae.device, ref_pipe.vae.dtype)
    z = ref_pipe.vae.encode(x).latent_dist.sample(generator=g)
    return (z - vae_shift(ref_pipe.vae)) * ref_pipe.vae.config.scaling_factor


def optimise(pipe, ref_pipe, prompt: str, target: np.ndarray, cfg: P4DSettings, seed: int) -> Iterator[tuple]:
    """The optimisation, one iteration per item: (step, loss, projected ids used, soft embeddings).

    Draw order as the official's: initial tokens, the target latent, then per iteration the batch
    permutation, the noise (row-seeded generator) and the timestep."""
    g_noise = torch.Generator("cpu").manual_seed(int(seed))
    g = torch.Generator("cpu").manual_seed(int(seed) + 1)
    models, ref = pipeline_models(pipe), pipeline_models(ref_pipe)
    tables = models.token_tables()
    banned = [pipe.tokenizer.bos_token_id, pipe.tokenizer.eos_token_id]
    soft, free = initial_tokens(models, prompt, cfg, g)
    soft = soft.to(torch.promote_types(soft.dtype, torch.float32)).requires_grad_(True)
    opt = torch.optim.AdamW([soft], lr=cfg.lr, weight_decay=cfg.weight_decay)
    net = denoiser(pipe)
    z0 = target_latent(ref_pipe, target, g).to(net.device, net.dtype)
    with frozen(*(getattr(pipe, n) for n in pipeline_modules(pipe))), \
            frozen(*(getattr(ref_pipe, n) for n in pipeline_modules(ref_pipe))):
        with torch.no_grad():
            target_cond = ref.encode([prompt])
        for step in range(cfg.iterations):
            loss, ids = p4d_step(models, ref, soft, free, opt, target_cond, z0, g_noise, g, banned, tables)
            yield step, loss, ids, soft


def attack_row(pipe, ref_pipe, row: PromptRow, target: np.ndarray, detector, gen: GenSettings,
               cfg: P4DSettings) -> dict:
    """Attack one prompt. Returns {"success", "steps", "tokens", "adv_prompt", "image", "detection", "loss"}."""
    result: dict = {"success": False, "steps": 0}
    with contextlib.closing(optimise(pipe, ref_pipe, row.prompt, target, cfg, row.seed)) as steps:
        for step, loss, ids, _ in steps:
            result.update(steps=step + 1, loss=loss)
            if step % cfg.eval_every:
                continue
            tokens = ids.tolist()
            prompt = pipe.tokenizer.decode(tokens).strip()
            image = render(pipe, row, prompt, gen)
            det = judge(detector, image)
            result.update(tokens=tokens, adv_prompt=prompt, image=image, detection=det)
            if det["flag"]:
                result["success"] = True
                break
    return result
