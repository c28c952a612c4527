"""SalUn's weight saliency mask (Fan et al. 2024, https://arxiv.org/abs/2310.12508 ).

    g = sum over one pass of the forget set of |grad_theta L_f(theta_o)|     (at the ORIGINAL weights)
    m = 1[g > quantile(g, 1 - fraction)]   over ALL trainable weights at once (a global threshold)

During unlearning every gradient is multiplied by m, so only the weights most salient for the
forget data move. L_f is the ordinary denoising loss of the forget images with their prompts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

_EXACT_LIMIT = 20_000_000  # above this many weights, the threshold comes from a fixed subsample


def accumulate_abs_grad(params: dict[str, nn.Parameter], losses: Iterable[Tensor]) -> dict[str, Tensor]:
    """Sum of |d loss / d p| over the given scalar losses, per parameter (float32, on CPU)."""
    acc = {n: torch.zeros(p.shape, dtype=torch.float32) for n, p in params.items()}
    names = list(params)
    for loss in losses:
        grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
        for n, g in zip(names, grads):
            if g is not None:
                acc[n] += g.detach().float().abs().cpu()
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
    """0/1 masks {name: mask} keeping the top `fraction` of weights by accumulated |gradient|."""
    if fraction >= 1.0:
        return {n: torch.ones(p.shape) for n, p in params.items()}
    scores = accumulate_abs_grad(params, tqdm(loss_batches(), desc="SalUn saliency", unit="batch", leave=False))
    thr = global_threshold(scores, fraction)
    return {n: (s > thr).float() for n, s in scores.items()}
