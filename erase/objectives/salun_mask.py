"""SalUn's weight saliency mask (Fan et al. 2024, https://arxiv.org/abs/2310.12508 ).

As the official OPTML-Group/Unlearn-Saliency SD/train-scripts/generate_mask.py (lines 33-106):

    g = | sum over one pass of the forget set (batches) of grad_theta L_b(theta_o) |    (signed sum, then |.|)
    m = 1[g among the top `fraction` of all trainable weights]    (one global ranking)

at the ORIGINAL weights; L_b is the forget loss of batch b (a mean over its samples, each with
its own t and noise). During unlearning every gradient is multiplied by m, so only the weights
most salient for the forget data move. SalUn's L_b is built in erase/objectives/salun.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

_EXACT_LIMIT = 20_000_000  # above this many weights, the threshold comes from a fixed subsample


def accumulate_grad(params: dict[str, nn.Parameter], losses: Iterable[Tensor]) -> dict[str, Tensor]:
    """Sum of the SIGNED gradients d loss / d p over the given scalar losses, per parameter (float32, on CPU)."""
    acc = {n: torch.zeros(p.shape, dtype=torch.float32) for n, p in params.items()}
    names = list(params)
    for loss in losses:
        grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
        for n, g in zip(names, grads):
            if g is not None:
                acc[n] += g.detach().float().cpu()
    return acc


def global_threshold(scores: dict[str, Tensor], fraction: float) -> float:
    """The value above which `fraction` of all entries lie (one threshold across every tensor)."""
    flat = torch.cat([s.flatten() for s in scores.values()])
    if flat.numel() > _EXACT_LIMIT:  # kthvalue on billions of entries is slow and needs a copy
        g = torch.Generator().manual_seed(0)
        flat = flat[torch.randint(0, flat.numel(), (_EXACT_LIMIT,), generator=g)]
    k = max(1, round((1.0 - fraction) * flat.numel()))
    return float(torch.kthvalue(flat, min(k, flat.numel())).values)


def saliency_masks(
    params: dict[str, nn.Parameter],
    loss_batches: Callable[[], Iterable[Tensor]],
    fraction: float = 0.5,
) -> dict[str, Tensor]:
    """0/1 masks {name: mask} keeping the top `fraction` of weights by |sum of gradients|."""
    if fraction >= 1.0:
        return {n: torch.ones(p.shape) for n, p in params.items()}
    scores = {n: g.abs() for n, g in accumulate_grad(params, tqdm(loss_batches(), desc="SalUn saliency", unit="batch", leave=False)).items()}
    thr = global_threshold(scores, fraction)
    return {n: (s > thr).float() for n, s in scores.items()}


def jaccard(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    """Agreement of two 0/1 masks: |a and b| / |a or b| over every tensor."""
    inter = sum(float((a[n].bool() & b[n].bool()).sum()) for n in a)
    union = sum(float((a[n].bool() | b[n].bool()).sum()) for n in a)
    return inter / union if union else 1.0
