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
    """The original model and Retrain, as SalUn's `Classification/main_train.py` trains them
    (OPTML-Group/Unlearn-Saliency, `Classification/arg_parser.py:69-78`: SGD lr 0.1, momentum 0.9,
    weight decay 5e-4, batch 256, 182 epochs, the rate x0.1 at epochs 91 and 136 = `schedule`
    "step"; `Classification/dataset.py:549-555`: random crop with 4 pixels of padding on 32 and a
    horizontal flip = `augment`). On 8x8 digits the padding is 1 pixel (the same 1/8 of the side)."""

    epochs: int = 182
    lr: float = 0.1
    batch_size: int = 256
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "step"
    augment: bool = True


def make_optimizer(params, kind: str, lr: float, weight_decay: float = 5e-4) -> torch.optim.Optimizer:
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)


def lr_factor(schedule: str, epoch: int, epochs: int, step: int = 0, total_steps: int = 1) -> float:
    """The learning-rate multiplier at `epoch` (0-based) or `step` of a run:

    - constant: 1. SalUn's and RUM's unlearning loops build MultiStepLR with milestones 91,136
      (Unlearn-Saliency `Classification/unlearn/impl.py:95-97`, RUM `unlearn/impl.py:253-255`), never
      reached in their <= 10 unlearning epochs: the rate is constant.
    - step: x0.1 after half and after three quarters of the epochs (SalUn's 91 and 136 of 182).
    - scrub: SCRUB's repdistiller schedule, x0.1 for every milestone passed, milestones at 50/80/90% of
      the epochs (meghdadk/SCRUB `small_scale_unlearning.ipynb`: sgda_epochs 10, lr_decay_epochs [5, 8, 9]).
    - cosine: 0.5 (1 + cos(pi step / total_steps)) per step (NatMU `sample-wise/natmu.py:30, 196`).
    """
    if schedule == "constant":
        return 1.0
    if schedule == "step":
        return 0.1 ** sum(epoch >= round(f * epochs) for f in (0.5, 0.75))
    if schedule == "scrub":
        return 0.1 ** sum(epoch + 1 > round(f * epochs) for f in (0.5, 0.8, 0.9))
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
    raise ValueError(f"schedule: unknown {schedule!r} (constant, step, scrub, cosine)")


def set_lr(opt: torch.optim.Optimizer, base: float, factor: float) -> None:
    for g in opt.param_groups:
        g["lr"] = base * factor


def augment(x: Tensor, gen: torch.Generator) -> Tensor:
    """Random crop after zero padding (1/8 of the side: 4 on 32, 1 on 8), per sample, as torchvision's
    RandomCrop(size, padding); and for 3-channel (natural) images a random horizontal flip
    (RandomHorizontalFlip). Digits are not mirror-symmetric (a flipped 2 reads as a 5, a flipped 3 as
    an epsilon): measured, flips cost the digits CNN its fit of the training set (retain accuracy 97%
    after 40 epochs), so 1-channel images are cropped only."""
    n, _, h, w = x.shape
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # [n, h, 1]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # [n, 1, w]
    out = padded.permute(0, 2, 3, 1)[torch.arange(n, device=x.device)[:, None, None], rows, cols].permute(0, 3, 1, 2)
    if x.shape[1] != 3:
        return out
    flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


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
    """Train `model` in place on `data`; with `record`, return the true-class confidence [epochs, N]
    (measured on the un-augmented images after each epoch)."""
    g = torch.Generator().manual_seed(seed)
    opt = make_optimizer(model.parameters(), "sgd", recipe.lr, recipe.weight_decay)
    n = len(data)
    steps_per_epoch = math.ceil(n / recipe.batch_size)
    total = recipe.epochs * steps_per_epoch
    history = []
    model.train()
    for epoch in range(recipe.epochs):
        perm = torch.randperm(n, generator=g)
        for s in range(steps_per_epoch):
            set_lr(opt, recipe.lr, lr_factor(recipe.schedule, epoch, recipe.epochs, epoch * steps_per_epoch + s, total))
            b = perm[s * recipe.batch_size:(s + 1) * recipe.batch_size]
            x = augment(data.x[b], g) if recipe.augment else data.x[b]
            loss = F.cross_entropy(model(x), data.y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if record:
            history.append(true_class_confidence(model, data))
    return torch.stack(history) if record else None
