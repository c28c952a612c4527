"""Ordinary supervised training (the original model, and Retrain = the same recipe on the retain
set), plus the helpers every unlearning method shares: batched prediction and per-sample loss.

While training the original model, `fit(..., record=True)` returns every training sample's
true-class softmax confidence after each epoch. Its mean over epochs is the confidence proxy of
RUM's memorisation score (kairanzhao/RUM, `memorization_proxy/learning_events.py`, "confidence"):
samples the model learns late and holds weakly are the memorised ones, so
memorisation proxy = 1 - mean confidence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from erase.classification.data import Split


@dataclass(frozen=True)
class TrainRecipe:
    """SGD with momentum and a cosine schedule, as the papers train their CIFAR models."""

    epochs: int = 30
    lr: float = 0.05
    batch_size: int = 64
    momentum: float = 0.9
    weight_decay: float = 5e-4


def make_optimizer(params, kind: str, lr: float, weight_decay: float = 5e-4) -> torch.optim.Optimizer:
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)


def cosine(opt: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    total = max(total_steps, 1)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))


@torch.no_grad()
def logits_of(model: nn.Module, x: Tensor, batch_size: int = 512) -> Tensor:
    was = model.training
    model.eval()
    out = torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]) if len(x) else torch.zeros(0)
    model.train(was)
    return out


def true_class_confidence(model: nn.Module, split: Split) -> Tensor:
    """softmax probability of each sample's own label, [N]."""
    if len(split) == 0:
        return torch.zeros(0)
    return torch.softmax(logits_of(model, split.x).float(), 1).gather(1, split.y[:, None]).squeeze(1)


def per_sample_loss(model: nn.Module, split: Split) -> Tensor:
    """Cross-entropy of each sample under `model` (eval mode), [N]: LoReUn's difficulty l_i."""
    return F.cross_entropy(logits_of(model, split.x).float(), split.y, reduction="none")


def fit(model: nn.Module, data: Split, recipe: TrainRecipe, seed: int, record: bool = False) -> Tensor | None:
    """Train `model` in place on `data`; with `record`, return the true-class confidence [epochs, N]."""
    g = torch.Generator().manual_seed(seed)
    opt = make_optimizer(model.parameters(), "sgd", recipe.lr, recipe.weight_decay)
    n = len(data)
    steps_per_epoch = math.ceil(n / recipe.batch_size)
    sched = cosine(opt, recipe.epochs * steps_per_epoch)
    history = []
    model.train()
    for _ in range(recipe.epochs):
        perm = torch.randperm(n, generator=g)
        for s in range(steps_per_epoch):
            b = perm[s * recipe.batch_size:(s + 1) * recipe.batch_size]
            loss = F.cross_entropy(model(data.x[b]), data.y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if record:
            history.append(true_class_confidence(model, data))
    return torch.stack(history) if record else None
