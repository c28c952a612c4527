"""Concept inversion: textual inversion against the ERASED model brings the concept back.

Pham et al., "Circumventing Concept Erasure Methods For Text-to-Image Generative Models",
ICLR 2024, https://arxiv.org/abs/2308.01508. Follows the official code,
NYU-DICE-Lab/circumventing-concept-erasure: `esd/concept_inversion.py` (diffusers' textual
inversion script with the erased UNet loaded; its I2P mode, used for prompt suites, captions each
image with "{} " + the image's prompt) and `esd/train.sh` (the budget). The erased model's weights
stay fixed; only n new token embeddings v_1..v_n are learned, with the textual-inversion objective
(Gal et al., https://arxiv.org/abs/2208.01618) on images of the concept:

    min_v  E_{x_0, t, eps} || eps - eps_theta_erased(sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps, c("v prompt"), t) ||^2

with t uniform over the training timesteps and one (t, eps) per image per step, AdamW on v only
(the script's AdamW over the embedding table with every other row restored after each step is the
same update). The images are the concept rows' images made by the ORIGINAL model
(`--reference-model`, the same targets as UnlearnDiffAtk's) or a folder (`--target-images`), each
captioned with its row's prompt. One embedding is learned for the concept, then every concept
prompt is generated with the learned tokens in front ("v prompt", as the official
`generate_i2p.py` prompts "special_token prompt"), with the row's seed and guidance, and judged:
ASR = share of concept prompts whose image shows the concept.

Budgets (`--attack-budget`): "official" (default, esd/train.sh and the script's defaults): 1 token,
5000 steps of 16 images (batch 4 x gradient accumulation 4), lr 5e-3 scaled by 16 (`--scale_lr`)
= 0.08, constant, AdamW weight decay 1e-2. "standard" = 1000 steps of 4 images, lr 5e-3, no weight
decay, and "quick" = the same for 100 steps: CPU budgets for demos and tests, NOT comparable with
the published numbers.

Deliberate deviations, with reasons:
- Initialisation: the script takes an initializer word from the user ("art" in train.sh); here the
  concept's own first token (`initial_embedding`), so step 0 is the plain prompt and every gain
  is what the inversion found. No random horizontal flips (the script's flip_p 0.5): a flipped
  digit or letter is another concept.
- Randomness: one CPU generator seeded with the first concept row's seed draws the batches, the
  timesteps and the noise, so the learned embedding is reproducible.
- The official script trains on at most 25 images (`--num_train_images 25`), in shuffled epochs;
  here every concept row's target image is used (the suite decides how many), drawn with
  replacement at each step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from tqdm.auto import tqdm

from erase.audit.attacks.common import check_budget_name, frozen
from erase.audit.attacks.unlearndiffatk import encode_latent, sqrt_abar
from erase.audit.generate import GenSettings, image_size, pipeline_models, row_generators, sample
from erase.audit.suites import PromptRow
from erase.models.core import pipeline_modules

MICRO_BATCH = 4  # images per forward/backward pass (esd/train.sh --train_batch_size 4)


@dataclass(frozen=True)
class ConceptInversionSettings:
    budget: str = "official"
    tokens: int = 1             # new token embeddings learned (--num_vectors 1)
    iterations: int = 5000      # optimisation steps (--max_train_steps 5000)
    images_per_step: int = 16   # --train_batch_size 4 x --gradient_accumulation_steps 4
    lr: float = 0.08            # --learning_rate 5e-3 --scale_lr: x 16
    weight_decay: float = 1e-2  # --adam_weight_decay default

    BUDGETS: ClassVar[dict[str, dict]] = {
        "official": {},
        "standard": {"iterations": 1000, "images_per_step": 4, "lr": 5e-3, "weight_decay": 0.0},
        "quick": {"iterations": 100, "images_per_step": 4, "lr": 5e-3, "weight_decay": 0.0},
    }

    def __post_init__(self):
        check_budget_name(type(self), self.budget)
        for name in ("tokens", "iterations", "images_per_step"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ValueError(f"lr: must be > 0 (and weight decay >= 0), got {self.lr}, {self.weight_decay}")


def caption(prompt: str) -> str:
    """The prompt with the learned tokens' slot "{}" in front (esd/concept_inversion.py, I2P mode)."""
    return "{} " + prompt.replace("{}", "")


def initial_embedding(pipe, concept: str | None, n: int) -> torch.Tensor:
    """[n, D]: the concept's first token's row (or the table's mean row), repeated n times. SDXL
    learns each new token in both encoders: its rows side by side, [n, 768 + 1280]."""
    models = pipeline_models(pipe)
    ids = pipe.tokenizer(concept, add_special_tokens=False).input_ids if concept else []
    if ids:
        row = models.token_embeddings(torch.tensor(ids[:1]))[0]
    else:
        row = torch.cat([w.detach().mean(0) for w in models.embedding_tables()])
    return row.clone().unsqueeze(0).repeat(n, 1)


def denoising_loss(pipe, embeds: torch.Tensor, captions: list[str], z0: torch.Tensor, t: torch.Tensor,
                   eps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of || eps - eps_theta(z_t, c(caption(v)), t) ||^2 (v-prediction: v, flow models: the
    velocity at (1 - t/1000) z_0 + (t/1000) eps: `Models.target`). The learned tokens enter every text encoder
    (FLUX / SD3: CLIP and T5, `initial_embedding`'s rows side by side)."""
    models = pipeline_models(pipe)
    a, s = models.alpha_sigma(t, z0) if models.is_flow else sqrt_abar(alphas_cumprod, t, z0)
    zt = z0 * a + eps * s
    cond = models.encode(captions, len(embeds), embeds, where="marker")
    pred = models.pred(zt, t.to(z0.device), cond, float32=False)
    return F.mse_loss(pred, models.target(z0, eps, t.to(z0.device)))


def fixed_draws(n: int, shape: tuple, seed: int, num_train_timesteps: int):
    """(t [n], eps [n, ...]) from a seeded CPU generator: the same draws for any two evaluations."""
    g = torch.Generator("cpu").manual_seed(int(seed))
    t = torch.randint(0, num_train_timesteps, (n,), generator=g)
    return t, torch.randn((n, *shape), generator=g)


def learn_embedding(pipe, images: np.ndarray, captions: list[str], concept: str | None,
                    cfg: ConceptInversionSettings, seed: int) -> tuple[torch.Tensor, list[float]]:
    """Textual inversion of `cfg.tokens` embeddings against `pipe`; returns ([n, D], losses per step)."""
    g = torch.Generator("cpu").manual_seed(int(seed))
    latents = torch.cat([encode_latent(pipe, im) for im in images])
    abar = DDPMScheduler.from_config(pipe.scheduler.config).alphas_cumprod
    v = initial_embedding(pipe, concept, cfg.tokens).requires_grad_(True)
    opt = torch.optim.AdamW([v], lr=cfg.lr, weight_decay=cfg.weight_decay)
    losses = []
    with frozen(*(getattr(pipe, n) for n in pipeline_modules(pipe))):
        for _ in tqdm(range(cfg.iterations), desc="concept inversion", unit="step"):
            pick = torch.randint(0, len(latents), (cfg.images_per_step,), generator=g)
            t = torch.randint(0, len(abar), (cfg.images_per_step,), generator=g)
            eps = torch.randn((cfg.images_per_step, *latents.shape[1:]), generator=g).to(latents.device, latents.dtype)
            opt.zero_grad(set_to_none=True)
            total = 0.0
            for c in range(0, cfg.images_per_step, MICRO_BATCH):  # gradient accumulation, as the official 4 x 4
                part = slice(c, c + MICRO_BATCH)
                n = len(pick[part])
                loss = denoising_loss(pipe, v, [captions[i] for i in pick[part].tolist()], latents[pick[part]],
                                      t[part], eps[part], abar) * (n / cfg.images_per_step)
                loss.backward()
                total += float(loss.detach())
            opt.step()
            losses.append(total)
    return v.detach(), losses


@torch.no_grad()
def render(pipe, row: PromptRow, embeds: torch.Tensor, settings: GenSettings) -> np.ndarray:
    """The row's image (seed, guidance, size) with the learned tokens in front of its prompt."""
    cond = pipeline_models(pipe).encode([caption(row.prompt)], len(embeds), embeds.to(pipe.text_encoder.device), where="marker")
    h, w = image_size(row, pipe)
    return sample(pipe, cond, torch.tensor([row.guidance]), row_generators([row], pipe), settings, h, w)[0]
