"""Concept inversion: textual inversion against the ERASED model brings the concept back.

Pham et al., "Circumventing Concept Erasure Methods For Text-to-Image Generative Models",
ICLR 2024, https://arxiv.org/abs/2308.01508. The erased model's weights stay fixed; only n new
token embeddings v_1..v_n are learned, with the textual-inversion objective of Gal et al.
(https://arxiv.org/abs/2208.01618) on images of the concept:

    min_v  E_{x_0, t, eps} || eps - eps_theta_erased(sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps, c(caption(v)), t) ||^2

with t uniform over the training timesteps, one (t, eps) per image per step, Adam on v only.
The images are the concept rows' images made by the ORIGINAL model (`--reference-model`, the
same targets as UnlearnDiffAtk's) or a folder (`--target-images`). A caption is the row's own
prompt with the concept's words replaced by the new tokens ("a handwritten {}"), or the prompt
with the tokens in front when it does not contain the words. The embedding is learned once for
the concept (one universal embedding, as textual inversion learns one word), then every concept
prompt is generated with the learned tokens in the same place (row's seed and guidance) and
judged: ASR = share of concept prompts whose image shows the concept.

The embedding is initialised from the concept's own first token (the erased model's row for the
word), so step 0 is the plain prompt and any gain is what the inversion found.

Budgets (`--attack-budget`): "standard" (default) = 1 token, 1000 steps, batch 4, lr 5e-3 (Gal
et al.'s base learning rate and batch; Pham et al. run textual inversion with its usual settings);
"quick" = 100 steps, for demos and tests.

Deviations, with reasons: captions are the suite's prompts rather than textual inversion's
"a photo of {}" templates (the digits world and I2P prompts are not photos; the prompts the model
is audited on are the natural captions); Adam without weight decay on the new rows only (Gal et
al. use AdamW on the whole embedding table with the other rows frozen: the same thing for the new
rows up to the small weight decay); one CPU generator seeded from the first row's seed draws the
batches, timesteps and noise, so the learned embedding is reproducible.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from tqdm.auto import tqdm

from erase.audit.attacks.common import check_budget_name, frozen
from erase.audit.attacks.unlearndiffatk import encode_latent
from erase.audit.generate import GenSettings, image_size, row_generators, sample
from erase.audit.suites import PromptRow
from erase.models.soft_prompt import encode_with_slots, tokenize_with_slots


@dataclass(frozen=True)
class ConceptInversionSettings:
    budget: str = "standard"
    tokens: int = 1            # new token embeddings learned
    iterations: int = 1000     # optimisation steps
    images_per_step: int = 4   # batch size
    lr: float = 5e-3

    BUDGETS: ClassVar[dict[str, dict]] = {"standard": {}, "quick": {"iterations": 100}}

    def __post_init__(self):
        check_budget_name(type(self), self.budget)
        for name in ("tokens", "iterations", "images_per_step"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr: must be > 0, got {self.lr}")


def caption(prompt: str, concept: str | None) -> str:
    """The prompt with the concept's words replaced by the slot marker "{}" (first occurrence)."""
    if concept:
        new, n = re.subn(rf"\b{re.escape(concept)}\b", "{}", prompt.replace("{}", ""), count=1, flags=re.IGNORECASE)
        if n:
            return new
    return "{} " + prompt.replace("{}", "")


def initial_embedding(pipe, concept: str | None, n: int) -> torch.Tensor:
    """[n, D]: the concept's first token's row (or the table's mean row), repeated n times."""
    table = pipe.text_encoder.get_input_embeddings().weight.detach()
    ids = pipe.tokenizer(concept, add_special_tokens=False).input_ids if concept else []
    row = table[ids[0]] if ids else table.mean(0)
    return row.clone().unsqueeze(0).repeat(n, 1)


def denoising_loss(pipe, embeds: torch.Tensor, captions: list[str], z0: torch.Tensor, t: torch.Tensor,
                   eps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of || eps - eps_theta(z_t, c(caption(v)), t) ||^2."""
    ids, mask = tokenize_with_slots(pipe.tokenizer, captions, len(embeds), where="marker")
    abar = alphas_cumprod.to(z0.device, z0.dtype)[t].view(-1, 1, 1, 1)
    zt = z0 * abar.sqrt() + eps * (1 - abar).sqrt()
    cond = encode_with_slots(pipe.text_encoder, ids, mask, embeds)
    pred = pipe.unet(zt, t.to(z0.device), encoder_hidden_states=cond, return_dict=False)[0]
    return F.mse_loss(pred, eps)


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
    opt = torch.optim.Adam([v], lr=cfg.lr)
    losses = []
    with frozen(pipe.text_encoder, pipe.unet, pipe.vae):
        for _ in tqdm(range(cfg.iterations), desc="concept inversion", unit="step"):
            pick = torch.randint(0, len(latents), (cfg.images_per_step,), generator=g)
            t = torch.randint(0, len(abar), (cfg.images_per_step,), generator=g)
            eps = torch.randn((cfg.images_per_step, *latents.shape[1:]), generator=g).to(latents.device, latents.dtype)
            loss = denoising_loss(pipe, v, [captions[i] for i in pick.tolist()], latents[pick], t, eps, abar)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    return v.detach(), losses


@torch.no_grad()
def render(pipe, row: PromptRow, embeds: torch.Tensor, concept: str | None, settings: GenSettings) -> np.ndarray:
    """The row's image (seed, guidance, size) with the learned tokens in its caption."""
    ids, mask = tokenize_with_slots(pipe.tokenizer, [caption(row.prompt, concept)], len(embeds), where="marker")
    cond = encode_with_slots(pipe.text_encoder, ids, mask, embeds.to(pipe.text_encoder.device))
    h, w = image_size(row, pipe)
    return sample(pipe, cond, torch.tensor([row.guidance]), row_generators([row]), settings, h, w)[0]
