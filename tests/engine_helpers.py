"""Shared helpers for the engine tests: tiny real models (never mocks)."""

from __future__ import annotations

import copy
from functools import lru_cache

import torch
from diffusers import DDPMScheduler

from erase.models.builder import build_pipeline
from erase.objectives.base import Batch, Draws, Models
from erase.train.config import LoraOptions
from erase.train.original import Original
from erase.train.params import select_parameters


@lru_cache(maxsize=1)
def _base_pipeline():
    return build_pipeline("tiny", seed=0)


def tiny_pipeline():
    return copy.deepcopy(_base_pipeline())


def tiny_models(spec: str = "xattn", lora: LoraOptions | None = None):
    """(Models with original(), pipeline, selection) on a fresh copy of the tiny random pipeline."""
    pipe = tiny_pipeline()
    pipe.vae.requires_grad_(False)
    sel = select_parameters({"unet": pipe.unet, "text_encoder": pipe.text_encoder}, spec, lora=lora)
    models = Models(unet=pipe.unet, text_encoder=pipe.text_encoder, vae=pipe.vae, tokenizer=pipe.tokenizer,
                    noise_scheduler=DDPMScheduler.from_config(pipe.scheduler.config), device=torch.device("cpu"))
    models.original = Original(models, sel, torch.float32)
    return models, pipe, sel


def perturb(models: Models, scale: float = 0.05, seed: int = 1) -> None:
    """Move every trainable weight, so the current model differs from the original."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in models.named_trainable().values():
            p.add_(scale * torch.randn(p.shape, generator=g))


def latents(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 4, 16, 16, generator=torch.Generator().manual_seed(seed))


def batch(prompts: list[str], step: int = 0, **kw) -> Batch:
    return Batch(forget_prompts=prompts, forget_ids=torch.arange(len(prompts)), rng=Draws(seed=0, step=step), **kw)


def sgd_step(models: Models, loss: torch.Tensor, lr: float) -> None:
    params = list(models.named_trainable().values())
    grads = torch.autograd.grad(loss, params)
    with torch.no_grad():
        for p, g in zip(params, grads):
            p.sub_(lr * g)


class SetupStub:
    """A minimal SetupData: prompts plus an in-memory cache (make() runs once per name)."""

    def __init__(self, forget_prompts, retain_prompts=(), anchor_prompts=(), forget_latents=None, seed=0):
        self.forget_prompts = list(forget_prompts)
        self.retain_prompts = list(retain_prompts)
        self.anchor_prompts = list(anchor_prompts)
        self.forget_latents = forget_latents
        self.seed = seed
        self.store: dict = {}
        self.made: list[str] = []

    def cached(self, name, make):
        if name not in self.store:
            self.made.append(name)
            self.store[name] = make()
        return self.store[name]

    def forget_batches(self, batch_size, draw=0, shared=True):
        n = len(self.forget_prompts)
        for s in range(0, n, batch_size):
            idx = list(range(s, min(n, s + batch_size)))
            yield Batch(forget_prompts=[self.forget_prompts[i] for i in idx], forget_ids=torch.tensor(idx),
                        forget_latents=self.forget_latents[idx], rng=Draws(seed=self.seed, step=-1 - draw))
