"""Encode prompts in which some token positions carry free (optimised) embeddings.

UnlearnDiffAtk (https://arxiv.org/abs/2310.11868), AdvUnlearn (https://arxiv.org/abs/2405.15234)
and soft-prompt methods optimise token embeddings e_1..e_k that are spliced into a prompt:

    c = E_text([BOS, e_1, ..., e_k, w_1, ..., w_n, EOS, pad ...])        (prefix)
    c = E_text([BOS, w_1, ..., w_n, e_1, ..., e_k, EOS, pad ...])        (suffix)

transformers 5's `CLIPTextModel.forward` takes `input_ids` only (no `inputs_embeds`), so we put
placeholder ids in the slot positions and, through a forward hook on
`text_encoder.get_input_embeddings()`, overwrite those rows of the token-embedding output with the
given embeddings. Position embeddings, the causal mask and the final layer norm are then applied by
the model itself, exactly as for ordinary tokens, and gradients flow into the given embeddings.

Typical use (AdvUnlearn's one extra token, or any k slots):

    ids, slots = tokenize_with_slots(pipe.tokenizer, ["a photo of a cat"], n_slots=1)
    delta = torch.zeros(1, dim, requires_grad=True)          # [k, D] shared, or [B, k, D]
    cond = encode_with_slots(pipe.text_encoder, ids, slots, delta)   # [B, 77, D], differentiable

A relaxed one-hot over the vocabulary (UnlearnDiffAtk) passes `onehot @ W` as the slot embeddings,
where W = `text_encoder.get_input_embeddings().weight`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch

# Any ordinary token works as a placeholder (its embedding is overwritten); "!" is id 0 in CLIP.
PLACEHOLDER_ID = 0


def tokenize_with_slots(
    tokenizer, prompts: list[str], n_slots: int, where: Literal["prefix", "suffix", "marker"] = "prefix",
    slot_ids: torch.Tensor | None = None, max_length: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids [B, L] with `n_slots` slot positions, and the boolean slot mask [B, L].

    The prompt is truncated so that BOS + slots + prompt + EOS fit the tokenizer's max length; the
    rest is padded as the tokenizer pads (EOS for SD). `slot_ids` ([k] or [B, k]) fills the slots
    with real token ids instead of placeholders -- handy to turn an optimised, projected prompt
    into plain ids for generation without any hook. `where="marker"` puts the slots where each
    prompt has the marker `{}` (at most once; a prompt without it gets them as a prefix), as
    textual inversion's "a photo of {}" captions do. A tokenizer without BOS (T5) gets none, and
    `max_length` (default the tokenizer's own) is the padded length.
    """
    max_len = max_length or tokenizer.model_max_length
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    start = [bos] if bos is not None else []
    specials = len(start) + 1
    if n_slots < 0 or n_slots > max_len - specials:
        raise ValueError(f"n_slots must be in [0, {max_len - specials}], got {n_slots}")
    room = max_len - specials - n_slots
    if where == "marker":
        parts = [p.split("{}", 1) if "{}" in p else ["", p] for p in prompts]
        heads = [tokenizer(h.strip(), add_special_tokens=False).input_ids if h.strip() else [] for h, _ in parts]
        tails = tokenizer([t.strip() for _, t in parts], add_special_tokens=False).input_ids
        split = [(h[:room], t[: max(room - len(h), 0)]) for h, t in zip(heads, tails)]
    else:
        body = tokenizer(list(prompts), add_special_tokens=False, truncation=True, max_length=room).input_ids
        split = [([], toks) if where == "prefix" else (toks, []) for toks in body]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    ids = torch.full((len(prompts), max_len), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), max_len), dtype=torch.bool)
    for b, (head, tail) in enumerate(split):
        seq = start + head + [PLACEHOLDER_ID] * n_slots + tail + [eos]
        ids[b, : len(seq)] = torch.tensor(seq)
        mask[b, len(start) + len(head) : len(start) + len(head) + n_slots] = True
    if slot_ids is not None:
        fill = torch.as_tensor(slot_ids, dtype=torch.long).reshape(-1, n_slots).expand(len(prompts), n_slots)
        ids[mask] = fill.reshape(-1)
    return ids, mask


@contextlib.contextmanager
def slot_embeddings(text_encoder, slot_mask: torch.Tensor, embeds: torch.Tensor) -> Iterator[None]:
    """While active, token embeddings at `slot_mask` positions are replaced by `embeds`.

    `embeds` is [k, D] (the same k embeddings for every prompt) or [B, k, D]; k must equal the
    number of True entries per row of `slot_mask`. The hook is removed on exit, even on error.
    """
    def hook(_module, _inputs, output: torch.Tensor) -> torch.Tensor:
        if output.shape[:2] != slot_mask.shape:
            raise ValueError(f"slot mask {tuple(slot_mask.shape)} does not match token ids {tuple(output.shape[:2])}")
        batch, k = output.shape[0], int(slot_mask[0].sum())
        vals = embeds.to(output.dtype)
        vals = vals.unsqueeze(0).expand(batch, k, -1) if vals.dim() == 2 else vals
        # index_put keeps the graph: gradients reach `embeds`; the overwritten table rows get none.
        out = output.clone()
        out[slot_mask.to(output.device)] = vals.reshape(-1, output.shape[-1]).to(output.device)
        return out

    handles = [m.register_forward_hook(hook) for m in embedding_lookups(text_encoder)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def embedding_lookups(text_encoder) -> list[torch.nn.Module]:
    """The modules that look token ids up in the encoder's input-embedding table: `get_input_embeddings()` and
    every other embedding holding the same weight. T5EncoderModel's `get_input_embeddings()` is `shared`, but its
    forward looks ids up through `encoder.embed_tokens`, a second module tied to the same weight: a hook on
    `shared` alone never fires, and T5 would see the placeholders instead of the slot embeddings."""
    layer = text_encoder.get_input_embeddings()
    found = [m for m in text_encoder.modules() if isinstance(m, torch.nn.Embedding) and m.weight is layer.weight]
    return found or [layer]


def run_text_encoder(text_encoder, input_ids: torch.Tensor, slot_mask: torch.Tensor | None = None,
                     embeds: torch.Tensor | None = None, penultimate: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states [B, L, D], the encoder's first output's pooled row) with slot rows replaced by `embeds`.

    The hidden states are the last layer's (SD-1/2) or, with `penultimate`, the one before (SDXL);
    the second value is `pooler_output` (CLIPTextModel) or `text_embeds` (CLIPTextModelWithProjection:
    SDXL's pooled conditioning). `embeds=None` encodes the ids as they are.
    """
    inner = getattr(text_encoder, "module", text_encoder)  # an eventual DDP wrapper
    device = next(inner.parameters()).device
    ctx = slot_embeddings(inner, slot_mask, embeds) if embeds is not None else contextlib.nullcontext()
    with ctx:
        out = text_encoder(input_ids.to(device), output_hidden_states=penultimate)
    pooled = out[0] if out[0].ndim == 2 else (out[1] if len(out) > 1 else None)  # T5: no pooled output
    return (out.hidden_states[-2] if penultimate else out[0]), pooled


def encode_with_slots(text_encoder, input_ids: torch.Tensor, slot_mask: torch.Tensor,
                      embeds: torch.Tensor | None) -> torch.Tensor:
    """`last_hidden_state` [B, L, D] of the text encoder with slot rows replaced by `embeds`.

    This is SD-1/2's conditioning (diffusers' `encode_prompt` also takes `last_hidden_state`);
    `erase.models.core.Models.encode` is the path for every architecture.
    """
    return run_text_encoder(text_encoder, input_ids, slot_mask, embeds)[0]


def encode_plain(tokenizer, text_encoder, prompts: list[str]) -> torch.Tensor:
    """SD conditioning for ordinary prompts, as diffusers' pipeline computes it (max-length padding)."""
    ids = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    return text_encoder(ids.to(text_encoder.device))[0]
