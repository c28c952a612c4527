"""EraseDiff: unlearning as a bilevel problem (Wu et al., https://arxiv.org/abs/2401.05779).

Official code: JingWu321/EraseDiff, sd/train_scripts/erasediff_nsfw.py (nudity; run by
sd/train_scripts/train_nsfw.sh line 4: `--train_method noxattn --epochs 5 --K_steps 2
--lambda_bome 1. --lr 1e-5 --batch_size 16`).

EraseDiff keeps the model's denoising ability on retain data while pushing the forget loss to what
a few steps of pure forgetting would reach:

    min_theta  L_r(theta) + lambda * ( L_f(theta) - sg[ L_f(theta*_K) ] )        (lines 238-281)

where theta*_K is K inner optimiser steps that minimise L_f from the current weights, after which
the weights are RESET to theta (line 198; only the value L_f* survives). The forget loss maps
forget images to another prompt (like SalUn's mapping; lines 161-182, c_map "a photo of a
pokemon" for nudity, line 139):

    L_f,i = || eps_theta(x_t^f,i, c_f,i, t_i) - sg[ eps_theta(x_t^f,i, c_map,i, t_i) ] ||^2

and L_r is the ordinary denoising loss on retain images: L_r = || eps - eps_theta(x_t^r, c_r, t) ||^2
(LDM shared_step, line 209). (t, eps) are drawn per sample (lines 170-176, 224-230).

Per-sample form (so LoReUn applies): forget_i = lambda * (L_f,i - sg L_f*,i), where L_f*,i is
the same sample's forget loss, at the same (x_t, t, noise), after the K inner steps. The sg term
shifts the value only; the gradient is lambda * grad L_f,i, exactly the official gradient.

Deliberate deviations, each for a reason:
* Inner loop per update: the official code runs the K inner "steps" as K passes over the WHOLE
  forget loader once per epoch, each batch stepping the outer Adam, and takes L_f* as the mean
  forget loss of the last inner pass (lines 149-198); here each update runs K steps on its own
  batch, and L_f* is that batch's loss after them. Per-update inner steps keep the run resumable
  at any step and the per-sample L_f*; the gradient of the outer loss is the same (L_f* is a
  constant either way), only the reported value of the forget term differs.
* The inner optimiser is a fresh Adam (official: the outer Adam, whose moments the inner steps
  then change); a fresh one keeps the outer optimiser state untouched and a resumed run exact.
* Latents are the VAE posterior mean (official: a posterior sample).
The inner loop runs on the trainable parameters in place and restores them bit for bit; it leaves
`.grad` as it found it, so gradient accumulation is unaffected. Its gradients: `autograd.grad`
through the unwrapped module (under DDP: this process's micro-batch, no gradient sync), or, when
the parameters are sharded DTensors (FSDP2: autograd reaches the gathered weights, not the
shards), one `backward` whose gradients the engine averages over processes into the shards'
`.grad`, taken and cleared again. Either way only the VALUE of L_f* depends on it: the gradient of
the outer loss is lambda * grad L_f. The LoReUn difficulty is the sample's
denoising error ||eps - eps_theta(x_t^f, c_f, t)||^2 from the same forward pass: SMALL means the
model still reproduces the forget image.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from erase.objectives.base import (
    Batch,
    Losses,
    Models,
    Objective,
    ObjectiveConfig,
    noisy,
    original_error,
    per_sample_mse,
    retain_loss,
)
from erase.objectives.registry import register_objective


@dataclass
class EraseDiffConfig(ObjectiveConfig):
    """Hyperparameters of EraseDiff.

    Attributes:
        mapping_prompts: the prompts forget images are mapped to (c_map), cycled by sample id
            (nudity: ["a photo of a person wearing clothes"]). Empty uses the batch's retain
            prompts, as the official style/object code does.
        lam: lambda, the weight of the forget term relative to the retain loss (official argparse
            default 0.1; the nudity script passes 1.0).
        inner_steps: K, inner Adam steps that minimise L_f to get L_f* (official: 2). 0 gives
            L_f* = 0 (plain L_r + lambda L_f).
        inner_lr: learning rate of the inner steps. Fresh Adam moves every weight by about
            inner_lr per step, so set it to the run's learning rate.
        retain_weight: weight of L_r (paper: 1).
    """

    mapping_prompts: list[str] = field(default_factory=list)
    lam: float = 0.1
    inner_steps: int = 2
    inner_lr: float = 1e-5
    retain_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.lam < 0:
            raise ValueError(f"lam: must be >= 0, got {self.lam}")
        if self.inner_steps < 0:
            raise ValueError(f"inner_steps: must be >= 0, got {self.inner_steps}")
        if not self.inner_lr > 0:
            raise ValueError(f"inner_lr: must be > 0, got {self.inner_lr}")
        if self.retain_weight < 0:
            raise ValueError(f"retain_weight: must be >= 0, got {self.retain_weight}")


def _unwrap(module: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel: inner loops must not start DDP's gradient sync."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def inner_gradients(loss: Tensor, params: list[nn.Parameter]) -> list[Tensor | None]:
    """d loss / d params, leaving every `.grad` as it was (see the module docstring)."""
    if not any(isinstance(p, DTensor) for p in params):
        return list(torch.autograd.grad(loss, params, allow_unused=True))
    held = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        loss.backward()
        return [p.grad for p in params]
    finally:
        for p, g in zip(params, held):
            p.grad = g


def trainable_parameters(models: Models) -> list[nn.Parameter]:
    """Parameters that require grad in the UNet and the text encoder(s) (the run's trained set)."""
    seen: set[int] = set()
    out = []
    for module in (m for m in (models.unet, models.text_encoder, models.text_encoder_2) if m is not None):
        for p in module.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


class EraseDiff(Objective):
    """EraseDiff's bilevel objective with per-sample forget terms (see the module docstring)."""

    config_class: ClassVar[type] = EraseDiffConfig
    needs: ClassVar[frozenset[str]] = frozenset({"forget_images", "retain_images", "retain_prompts"})

    def __init__(self, config: EraseDiffConfig | None = None):
        super().__init__(config)
        self._pending: tuple[tuple, Tensor] | None = None  # (batch key, L_f*) from before_step

    @property
    def default_params(self) -> str:
        return "unet"

    # --- pieces ----------------------------------------------------------------------------
    def _map_prompts(self, batch: Batch) -> list[str]:
        maps = self.config.mapping_prompts
        if maps:
            return [maps[int(i) % len(maps)] for i in batch.forget_ids]
        if not batch.retain_prompts:
            raise ValueError("erasediff: mapping_prompts is empty and the batch has no retain prompts")
        r = batch.retain_prompts
        return [r[i % len(r)] for i in range(len(batch))]

    def _forget(self, models: Models, batch: Batch) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, Tensor]]:
        """(L_f [B] with grad, denoising error [B] detached, t [B], x_t, noise) at the batch's fixed draw."""
        assert batch.forget_latents is not None, "erasediff needs forget images (needs: forget_images)"
        x0 = batch.forget_latents.to(models.device)
        x_t, noise, t = noisy(models, batch, x0, batch.forget_ids, stream="f")
        pred = models.pred(x_t, t, models.encode(batch.forget_prompts))
        with torch.no_grad():
            target = models.pred(x_t, t, models.encode(self._map_prompts(batch)))
        denoise = models.target(x0, noise, t)  # the noise, or v for v-prediction
        return per_sample_mse(pred, target), per_sample_mse(pred.detach(), denoise), t, (x_t, denoise)

    @staticmethod
    def _key(batch: Batch) -> tuple:
        return (batch.rng.seed, batch.rng.step, batch.rng.micro, tuple(int(i) for i in batch.forget_ids))

    def inner_optimum(self, models: Models, batch: Batch, params: list[nn.Parameter]) -> Tensor:
        """L_f*,i [B]: the forget loss after K fresh-Adam steps on mean_i L_f,i; weights restored after."""
        cfg = self.config
        if cfg.inner_steps == 0 or not params:
            return torch.zeros(len(batch), device=models.device)
        sharded = any(isinstance(p, DTensor) for p in params)
        local = models if sharded else dataclasses.replace(models, unet=_unwrap(models.unet),
                                                           text_encoder=_unwrap(models.text_encoder))
        saved = [p.detach().clone() for p in params]
        m = [torch.zeros_like(p) for p in params]
        v = [torch.zeros_like(p) for p in params]
        b1, b2, eps = 0.9, 0.999, 1e-8
        try:
            for k in range(1, cfg.inner_steps + 1):
                with torch.enable_grad():
                    lf = self._forget(local, batch)[0]
                    grads = inner_gradients(lf.mean(), params)
                with torch.no_grad():
                    for p, g, m_, v_ in zip(params, grads, m, v):
                        if g is None:
                            continue
                        m_.mul_(b1).add_(g, alpha=1 - b1)
                        v_.mul_(b2).addcmul_(g, g, value=1 - b2)
                        step = (m_ / (1 - b1**k)) / ((v_ / (1 - b2**k)).sqrt() + eps)
                        p.sub_(step.to(p.dtype), alpha=cfg.inner_lr)
            with torch.no_grad():
                lf_star = self._forget(local, batch)[0]
        finally:
            with torch.no_grad():
                for p, s in zip(params, saved):
                    p.copy_(s)
        return lf_star.detach()

    # --- hooks -----------------------------------------------------------------------------
    def before_step(self, models: Models, batch: Batch, params: list[nn.Parameter]) -> None:
        self._pending = (self._key(batch), self.inner_optimum(models, batch, params))

    def losses(self, models: Models, batch: Batch) -> Losses:
        cfg = self.config
        lf, err, t, (x_t, denoise) = self._forget(models, batch)
        if self._pending is not None and self._pending[0] == self._key(batch):
            lf_star = self._pending[1]
        elif torch.is_grad_enabled():
            lf_star = self.inner_optimum(models, batch, trainable_parameters(models))
        else:  # difficulty-only calls (static LoReUn) need no inner loop
            lf_star = torch.zeros_like(lf)
        self._pending = None
        forget = cfg.lam * (lf - lf_star.to(lf.device))
        retain = None
        logs = {"lf": float(lf.detach().mean()), "lf_star": float(lf_star.mean()), "denoise_f": float(err.mean())}
        if cfg.retain_weight > 0 and batch.retain_latents is not None:
            lr_ = retain_loss(models, batch)
            retain = cfg.retain_weight * lr_
            logs["lr"] = float(lr_.detach())
        reference = original_error(models, batch, x_t, t, batch.forget_prompts, denoise)
        return Losses(forget=forget, retain=retain, difficulty=err, logs=logs, timesteps=t, reference=reference)


register_objective("erasediff", EraseDiff)
