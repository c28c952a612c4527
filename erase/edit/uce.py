"""Unified Concept Editing (UCE), Gandikota et al. 2024, https://arxiv.org/abs/2308.14761

Every cross-attention key and value projection W (`attn2.to_k`, `attn2.to_v`) is replaced, in closed
form, by the minimiser of

    sum_i s_e ||W' c_i - v*_i||^2 + sum_j s_p ||W' p_j - W p_j||^2 + lamb ||W' - W||_F^2,

where c_i are the text states of the prompts to erase, v*_i = W g_i the ORIGINAL projection of the
guide prompt's states (what c_i should now look like), and p_j the states of prompts to preserve:

    W' = (lamb W + s_e sum_i v*_i c_i^T + s_p sum_j (W p_j) p_j^T) (lamb I + s_e sum_i c_i c_i^T + s_p sum_j p_j p_j^T)^-1.

Official code (rohitgandikota/unified-concept-editing, trainscripts/uce_sd_erase.py at 28c81ed):
every `attn2` `to_k` and `to_v` (lines 17-20); one key per prompt, its last token's state,
`attention_mask.sum() - 2` (lines 34-42); v* from the ORIGINAL modules (lines 44-53); the closed form
(lines 56-82: mat1 = lamb W (61) + erase (70) + preserve (78); mat2 = lamb I (63) + erase (71) +
preserve (79); the inverse in float32 (82)); defaults erase_scale 1, preserve_scale 1, lamb 0.5
(lines 105-107); the guide "" for objects and "art" for art styles, one guide for every prompt
unless one is given per prompt (lines 136-143). SDXL runs the same script on the pipeline's
`encode_prompt`, i.e. both encoders' states side by side (README "SDXL"): here `Models.encode`.
The legacy script (train-scripts/train_erase.py at 35e91e2, `edit_model`) took as keys the states
from the last token to the end of the sequence (EOS and padding, which carry the prompt too),
aligned with the guide's (lines 253-260), and every token of a preserve prompt (lines 289-303):
`tokens: last_to_end` here.

Computed once for all layers (an exact rewriting, not an approximation): since v*_i = W g_i + b,

    W' = W A B^-1 + b (B^-1 s)^T,  A = lamb I + s_e sum_i g_i c_i^T + s_p sum_j p_j p_j^T,
                                   B = lamb I + s_e sum_i c_i c_i^T + s_p sum_j p_j p_j^T,
                                   s = s_e sum_i c_i + s_p sum_j p_j  (b: the bias; SD's projections have none),

and A, B depend on the text states only, not on the layer: one d x d solve (float64) serves every
projection of the same input width, then each layer is one matrix product. Editing 100 concepts
costs their text encoding and that product (`erase bench edit`). tests/test_parity_uce.py checks
the result against a transcription of the official per-layer loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from erase.edit.base import Editor, EditorConfig, EditSet
from erase.edit.registry import register_editor
from erase.models.core import Models
from erase.models.editing import cross_attention_kv, token_states


@dataclass
class UceConfig(EditorConfig):
    """UCE hyperparameters (the `edit:` mapping when `method: uce`); defaults: uce_sd_erase.py:105-107."""

    erase_scale: float = 1.0     # uce_sd_erase.py:105
    preserve_scale: float = 1.0  # uce_sd_erase.py:106
    lamb: float = 0.5            # uce_sd_erase.py:107
    # last: one key per prompt, its last token (uce_sd_erase.py:34-42); last_to_end: the last token and
    # every state after it, and every token of a preserve prompt (legacy train_erase.py:253-260, 289-303)
    tokens: Literal["last", "last_to_end"] = "last"
    projections: Literal["kv", "v"] = "kv"  # kv: to_k and to_v (uce_sd_erase.py:18); v: legacy with_to_k=False

    def __post_init__(self) -> None:
        for name in ("erase_scale", "preserve_scale"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if not self.lamb > 0:
            raise ValueError(f"lamb: must be > 0 (it keeps the system invertible), got {self.lamb}")


def erase_keys(states_e: Tensor, last_e: Tensor, states_g: Tensor, last_g: Tensor,
               tokens: str) -> tuple[Tensor, Tensor]:
    """(keys c [n, d], guide keys g [n, d]) of aligned erase / guide prompts' states [B, L, d]."""
    if tokens == "last":
        rows = torch.arange(len(states_e))
        return states_e[rows, last_e], states_g[rows, last_g]
    cs, gs = [], []
    length = states_e.shape[1]
    for se, fe, sg, fg in zip(states_e, last_e.tolist(), states_g, last_g.tolist()):
        far = max(fe, fg)  # both runs end where the longer prompt's padding ends (train_erase.py:255-260)
        cs.append(se[fe : length - max(0, far - fe)])
        gs.append(sg[fg : length - max(0, far - fg)])
    return torch.cat(cs), torch.cat(gs)


def preserve_keys(states_p: Tensor, last_p: Tensor, tokens: str) -> Tensor:
    """Keys [m, d] of the preserve prompts: last token each, or every token (last_to_end)."""
    if tokens == "last":
        return states_p[torch.arange(len(states_p)), last_p]
    return states_p.reshape(-1, states_p.shape[-1])


def closed_form(c: Tensor, g: Tensor, p: Tensor, erase_scale: float, preserve_scale: float,
                lamb: float) -> tuple[Tensor, Tensor]:
    """(T = A B^-1 [d, d], u = B^-1 s [d]) in float64, so that every projection W (bias b) becomes
    W T + b u^T (the module docstring's rewriting)."""
    c, g, p = (x.double() for x in (c, g, p))
    d = c.shape[1]
    eye = torch.eye(d, dtype=torch.float64)
    keep = preserve_scale * (p.T @ p) if len(p) else torch.zeros(d, d, dtype=torch.float64)
    a = lamb * eye + erase_scale * (g.T @ c) + keep
    b = lamb * eye + erase_scale * (c.T @ c) + keep
    s = erase_scale * c.sum(0) + (preserve_scale * p.sum(0) if len(p) else 0.0)
    # T = A B^-1 = (B^-T A^T)^T, and B is symmetric
    t = torch.linalg.solve(b, a.T).T
    u = torch.linalg.solve(b, s)
    return t, u


class Uce(Editor):
    config_class = UceConfig

    @property
    def params(self) -> str:
        return "xattn_kv" if self.config.projections == "kv" else "xattn_v"

    def edit(self, models: Models, edits: EditSet) -> dict[str, Any]:
        cfg = self.config
        # every distinct prompt is encoded once (100 concepts guided to "art": one "art");
        # "last" keys need no state past a prompt's EOS (token_states(full=False))
        unique = list(dict.fromkeys([*edits.erase, *edits.guide, *edits.preserve]))
        states, last = token_states(models, unique, full=cfg.tokens != "last")
        row = {p: i for i, p in enumerate(unique)}

        def pick(prompts: list[str]) -> tuple[Tensor, Tensor]:
            idx = torch.tensor([row[p] for p in prompts], dtype=torch.long)
            return states[idx], last[idx]

        c, g = erase_keys(*pick(edits.erase), *pick(edits.guide), cfg.tokens)
        if edits.preserve:
            p = preserve_keys(*pick(edits.preserve), cfg.tokens)
        else:
            p = c.new_zeros(0, c.shape[1])
        t, u = closed_form(c, g, p, cfg.erase_scale, cfg.preserve_scale, cfg.lamb)
        layers = {n: m for n, m in cross_attention_kv(models.unet).items() if cfg.projections == "kv" or n.endswith("to_v")}
        if not layers:
            raise ValueError("the UNet has no cross-attention key/value projections (attn2.to_k / to_v)")
        moved = 0.0
        with torch.no_grad():
            for module in layers.values():
                w = module.weight
                if w.shape[1] != t.shape[0]:
                    raise ValueError(f"a projection of input width {w.shape[1]} for text states of width {t.shape[0]}")
                wd = torch.promote_types(w.dtype, torch.float32)  # float32 (float64 stays float64)
                new = w.to(wd) @ t.to(w.device, wd)
                if module.bias is not None:
                    new += torch.outer(module.bias.to(wd), u.to(w.device, wd))
                moved += float((new - w.to(wd)).pow(2).sum())
                w.copy_(new.to(w.dtype))
        return {"layers": len(layers), "erase_keys": len(c), "preserve_keys": len(p), "key_width": int(t.shape[0]),
                "weight_change_norm": moved ** 0.5}


register_editor("uce", Uce)
