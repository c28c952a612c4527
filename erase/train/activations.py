"""Activation memory of one training forward of the UNet, counted on the meta device (no memory, no compute).

What a backward pass needs is what autograd saves during the forward. This module runs the
UNet's forward on meta tensors (shapes only) at batch 1 in bf16 and adds up every tensor autograd
saves (`torch.autograd.graph.saved_tensors_hooks`), each tensor once. With the trainable selection
already applied (`requires_grad`), only what the backward to those weights needs is saved --
ESD-x, whose trained weights sit deep in the network, still saves nearly everything downstream of
the first cross-attention.

Weights saved for the backward are counted too: a module trained in fp32 under bf16 autocast
(Accelerate's mixed precision, which erase uses) keeps a bf16 copy of every weight the backward
needs, about 2 bytes per parameter downstream of the first trained one (returned separately as
`weight_copies`; with gradient checkpointing only the non-recomputed layers keep theirs).

Two substitutions make the count match a GPU run rather than the meta device's fallbacks:
attention is counted as a memory-efficient (flash) kernel saves it -- q, k, v, the output and a
float32 log-sum-exp per query, never the L x L attention matrix (PyTorch's SDPA on the GPU picks such
a kernel in bf16) -- and the meta device's fp32 upcasts inside the math attention path are avoided
by the same replacement.

Gradient checkpointing (diffusers: every ResnetBlock2D and BasicTransformerBlock is recomputed in the
backward, non-reentrant) keeps the tensors saved outside those units, each unit's inputs, and at
any moment one unit's recomputed activations: counted as outside + unit inputs + the largest unit.

Not counted (so the numbers are lower bounds of the activation term): the gradient buffers of the
activations alive during the backward (about the largest layer's output at a time), allocator
fragmentation and the CUDA context (~0.5 GiB), temporary workspaces of kernels, the frozen
model's no-grad forwards (freed immediately), and the VAE / text encoders unless they are trained.
"""

from __future__ import annotations

from typing import Any

import torch


class _FlashAttention(torch.autograd.Function):
    """Saves what a memory-efficient attention kernel saves; counting only (no backward)."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty((*q.shape[:-1], v.shape[-1]))
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("activation counting runs forwards only")


class _CountingAttnProcessor:
    """diffusers' attention (to_q/k/v, heads, attention, to_out) with _FlashAttention in the middle."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        b, h = q.shape[0], attn.heads
        q, k, v = (t.view(b, -1, h, t.shape[-1] // h).transpose(1, 2) for t in (q, k, v))
        out = _FlashAttention.apply(q, k, v)
        out = out.transpose(1, 2).reshape(b, -1, h * out.shape[-1])
        return attn.to_out[1](attn.to_out[0](out))


def _unet_inputs(unet, dtype: torch.dtype) -> tuple[tuple, dict[str, Any]]:
    """Batch-1 inputs at the UNet's native sample size: latents, a timestep, the text conditioning
    (77 tokens) and, for SDXL (`text_time`), the pooled text embedding and the six size/crop ids."""
    c = unet.config
    device = next(unet.parameters()).device
    meta = {"device": device, "dtype": dtype}
    latents = torch.empty(1, c.in_channels, c.sample_size, c.sample_size, **meta)
    kwargs: dict[str, Any] = {"encoder_hidden_states": torch.empty(1, 77, c.cross_attention_dim, **meta)}
    if c.addition_embed_type == "text_time":
        pooled = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.empty(1, pooled, **meta), "time_ids": torch.empty(1, 6, **meta)}
    return (latents, torch.tensor([500], device=device)), kwargs


def _units(unet) -> list[torch.nn.Module]:
    """The modules diffusers recomputes under gradient checkpointing (FLUX / SD3: each transformer block)."""
    from diffusers.models.attention import BasicTransformerBlock, JointTransformerBlock
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.transformers.transformer_flux import (
        FluxSingleTransformerBlock,
        FluxTransformerBlock,
    )

    kinds = (ResnetBlock2D, BasicTransformerBlock, JointTransformerBlock, FluxTransformerBlock, FluxSingleTransformerBlock)
    return [m for m in unet.modules() if isinstance(m, kinds)]


def _flash_sdpa(query, key, value, *args, **kwargs):
    """torch's scaled_dot_product_attention as a memory-efficient kernel saves it (counting only)."""
    return _FlashAttention.apply(query, key, value)


def count_unet_activations(unet, dtype: torch.dtype = torch.bfloat16, weight_copies: bool = True,
                           forward_inputs=None, latent_size: int | None = None) -> dict[str, int]:
    """Bytes autograd keeps for one batch-1 UNet forward at native size, without and with gradient
    checkpointing (and the latent side it was counted at). `unet` is normally on the meta device with its trainable selection applied; it is
    cast to `dtype` (meta: free) and its attention processors are restored afterwards.

    `weight_copies`: whether saved weights are extra memory -- True when the UNet is held in fp32 and
    autocast makes the `dtype` copies the backward keeps (full or partial training), False when its
    weights already are `dtype` (LoRA on a bf16 base), so saving them costs nothing."""
    saved: dict[int, tuple[torch.Tensor, int, int | None]] = {}  # storage -> (tensor kept alive, bytes, unit)
    inputs: dict[int, tuple[torch.Tensor, int]] = {}
    stack: list[int] = []
    weights: set[int] = set()

    def key(t: torch.Tensor) -> int:
        return t.untyped_storage()._cdata  # views share it: each storage once (works on meta)

    def pack(t: torch.Tensor) -> torch.Tensor:
        if key(t) not in saved and (weight_copies or key(t) not in weights):
            saved[key(t)] = (t, t.untyped_storage().nbytes(), stack[0] if stack else None)
        return t

    def enter(i: int):
        def hook(module, args, kwargs):
            if not stack:  # the outermost unit: what checkpointing keeps are its inputs
                for t in (*args, *kwargs.values()):
                    if isinstance(t, torch.Tensor):
                        inputs.setdefault(key(t), (t, t.untyped_storage().nbytes()))
            stack.append(i)
        return hook

    def leave(module, args, output):
        stack.pop()

    processors = unet.attn_processors
    unet.to(dtype)
    weights.update(key(p) for p in unet.parameters())
    handles = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    try:
        if forward_inputs is None:
            unet.set_attn_processor(_CountingAttnProcessor())
        else:
            torch.nn.functional.scaled_dot_product_attention = _flash_sdpa
        for i, m in enumerate(_units(unet)):
            handles += [m.register_forward_pre_hook(enter(i), with_kwargs=True), m.register_forward_hook(leave)]
        args, kwargs = _unet_inputs(unet, dtype) if forward_inputs is None else forward_inputs(unet, dtype)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            unet(*args, **kwargs)
    finally:
        torch.nn.functional.scaled_dot_product_attention = sdpa
        for h in handles:
            h.remove()
        unet.set_attn_processor(processors)
    per_unit: dict[int, int] = {}
    outside: dict[int, int] = {}
    for key, (_, nbytes, unit) in saved.items():
        if unit is None:
            outside[key] = nbytes
        else:
            per_unit[unit] = per_unit.get(unit, 0) + nbytes
    kept = {**{k: b for k, (_, b) in inputs.items()}, **outside}
    return {
        "no_checkpointing": sum(b for _, b, _ in saved.values()),
        "checkpointing": sum(kept.values()) + max(per_unit.values(), default=0),
        "weight_copies": sum(b for k, (_, b, _) in saved.items() if k in weights),
        "latent_size": int(latent_size if latent_size is not None else unet.config.sample_size),
    }


def allocated_by_forward(unet, args: tuple, kwargs: dict[str, Any], autocast: bool = False) -> int:
    """Bytes one real CPU forward leaves allocated (the allocator's own events, torch.profiler), less its
    output: what the count above should equal, measured. For calibration (tests, scripts/calibrate_activations.py)."""
    import contextlib
    import gc

    from torch.profiler import ProfilerActivity, profile

    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with torch.no_grad(), ctx:
        unet(*args, **kwargs)  # warm-up: one-time allocations outside the measurement
    gc.collect()
    gc.disable()  # no unrelated frees inside the window
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof, ctx:
            out = unet(*args, **kwargs).sample
    finally:
        gc.enable()
    return sum(e.self_cpu_memory_usage for e in prof.events()) - out.numel() * out.element_size()
