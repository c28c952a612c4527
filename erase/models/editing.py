"""What closed-form editors (erase/edit/, e.g. UCE) compute with, for every family.

- `cross_attention_kv(unet)`: the UNet's cross-attention key and value projections (`attn2.to_k`,
  `attn2.to_v`), the linear maps from the text encoders' token states into attention. Their input
  is what `Models.encode` returns as the cross-attention states: CLIP ViT-L's last hidden state
  (SD-1.x, 768 wide), OpenCLIP ViT-H's (SD-2.x, 1024) or, on SDXL, BOTH encoders' penultimate
  states side by side (768 + 1280 = 2048): an SDXL edit of these projections edits the columns
  that read CLIP-L and those that read bigG at once.
- `token_states(models, prompts)`: those states per prompt [B, L, D] with each prompt's last
  token index (BOS = 0 for the empty prompt), the positions UCE takes its keys from.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from erase.models.core import Cond, Models


def cross_attention_kv(unet: nn.Module) -> dict[str, nn.Linear]:
    """Every cross-attention key / value projection of the UNet, by module name, in model order
    (what the official UCE code selects: `'attn2' in name and name.endswith(('to_k', 'to_v'))`)."""
    unet = getattr(unet, "module", unet)
    out = {}
    for name, module in unet.named_modules():
        parts = name.split(".")
        if len(parts) >= 2 and parts[-2] == "attn2" and parts[-1] in ("to_k", "to_v") and isinstance(module, nn.Linear):
            out[name] = module
    return out


def last_token_index(models: Models, prompts: list[str]) -> Tensor:
    """[B] index of each prompt's last token in the padded sequence (the token before the first
    EOS): attention_mask.sum() - 2, as the official UCE code computes it; 0 (BOS) for "" ."""
    tok = models.tokenizer
    mask = tok(list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True,
               return_tensors="pt").attention_mask
    return (mask.sum(1) - 2).clamp_min(0)


@torch.no_grad()
def token_states(models: Models, prompts: list[str], batch_size: int = 64, full: bool = True) -> tuple[Tensor, Tensor]:
    """(the cross-attention states of `prompts` [B, L, D] on the CPU, in float32 or wider, each prompt's
    last token index [B]): the UNet's view of each prompt, as `Models.encode` computes it. `full=False`
    stops after the longest prompt's EOS (L = its last index + 2): the text encoders are causal, so the
    states up to there are the full sequence's, at a fraction of the cost."""
    last = last_token_index(models, prompts)
    length = None if full or not len(last) else min(int(last.max()) + 2, models.tokenizer.model_max_length)
    states = []
    for i in range(0, len(prompts), batch_size):
        c = models.encode(list(prompts[i : i + batch_size]), length=length)
        c = c.embeds if isinstance(c, Cond) else c
        states.append(c.to(torch.promote_types(c.dtype, torch.float32)).cpu())
    return torch.cat(states), last
