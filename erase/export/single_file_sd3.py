"""SD3 / SD3.5 as one all-in-one `.safetensors` (the layout of `sd3_medium_incl_clips_t5xxlfp16.safetensors`,
`sd3.5_large.safetensors` and `sd3.5_medium.safetensors` as Stability publishes them).

One flat state dict in the key names of Stability's MMDiT reference code (Stability-AI/sd3.5, `mmditx.py`),
with four prefixes:

    model.diffusion_model.*                 the MMDiT (below)
    first_stage_model.*                     the 16-channel VAE, LDM keys (as SD-1's; no quant convs)
    text_encoders.clip_l.transformer.*      CLIP ViT-L/14 in transformers' layout (`text_model.*`)
    text_encoders.clip_g.transformer.*      OpenCLIP ViT-bigG/14 in transformers' layout, with `text_projection`
    text_encoders.t5xxl.transformer.*       T5-XXL encoder in transformers' layout (`shared`, `encoder.block.N`)

diffusers ships only the reading direction (`diffusers.loaders.single_file_utils`: the prefixes are its
CHECKPOINT_KEY_NAMES "clip_sd3" / "open_clip_sd3" and `is_t5_in_single_file`; the MMDiT is read by
`convert_sd3_transformer_checkpoint_to_diffusers`); this module is its inverse, key for key:

    pos_embed                          <- pos_embed.pos_embed
    x_embedder.proj                    <- pos_embed.proj
    t_embedder.mlp.0 / .2              <- time_text_embed.timestep_embedder.linear_1 / _2
    y_embedder.mlp.0 / .2              <- time_text_embed.text_embedder.linear_1 / _2   (the pooled text)
    context_embedder                   <- context_embedder
    joint_blocks.i.x_block.attn.qkv    = [to_q; to_k; to_v]           (rows stacked)
    joint_blocks.i.context_block.attn.qkv = [add_q_proj; add_k_proj; add_v_proj]
    joint_blocks.i.{x,context}_block.attn.ln_q / ln_k   <- attn.norm_q / norm_k, norm_added_q / norm_added_k
    joint_blocks.i.x_block.attn.proj   <- attn.to_out.0 ; context_block.attn.proj <- attn.to_add_out
    joint_blocks.i.x_block.attn2.*     <- attn2.* (SD3.5-medium's MMDiT-X blocks: qkv stacked, ln_q/k, proj)
    joint_blocks.i.{x,context}_block.adaLN_modulation.1 <- norm1.linear, norm1_context.linear
    joint_blocks.i.{x,context}_block.mlp.fc1 / fc2      <- ff / ff_context .net.0.proj, .net.2
    final_layer.linear                 <- proj_out
    final_layer.adaLN_modulation.1 = [shift; scale]  <- norm_out.linear = [scale; shift] (halves swapped)

The last joint block is "pre-only" on the text side (diffusers' context_pre_only): its context block has no
attention output projection and no MLP, and its modulation is [shift; scale] (2 x width), so its halves are
swapped as the final layer's.

SD3 reads CLIP-L's pooled output unprojected: diffusers' reader sets CLIP-L's `text_projection` to the identity
(single_file_utils.py, create_diffusers_clip_model_from_ldm, the "clip_sd3" branch), so a model whose CLIP-L
projection is anything else cannot be written in this layout, and the export refuses it. After writing the
state dict is mapped back with diffusers' own readers and compared tensor by tensor (`verify_sd3`), so a file
that would not load exactly is never written.
"""

from __future__ import annotations

from typing import Any

import torch

from erase.errors import EraseError

TRANSFORMER_PREFIX = "model.diffusion_model."
CLIP_L, CLIP_G, T5 = "text_encoders.clip_l.transformer.", "text_encoders.clip_g.transformer.", \
    "text_encoders.t5xxl.transformer."
_TOP = {"pos_embed.proj": "x_embedder.proj",
        "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
        "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
        "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
        "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
        "context_embedder": "context_embedder", "proj_out": "final_layer.linear"}
_BLOCK = {"attn.norm_q": "x_block.attn.ln_q", "attn.norm_k": "x_block.attn.ln_k",
          "attn.norm_added_q": "context_block.attn.ln_q", "attn.norm_added_k": "context_block.attn.ln_k",
          "attn.to_out.0": "x_block.attn.proj", "attn.to_add_out": "context_block.attn.proj",
          "attn2.norm_q": "x_block.attn2.ln_q", "attn2.norm_k": "x_block.attn2.ln_k",
          "attn2.to_out.0": "x_block.attn2.proj",
          "norm1.linear": "x_block.adaLN_modulation.1", "norm1_context.linear": "context_block.adaLN_modulation.1",
          "ff.net.0.proj": "x_block.mlp.fc1", "ff.net.2": "x_block.mlp.fc2",
          "ff_context.net.0.proj": "context_block.mlp.fc1", "ff_context.net.2": "context_block.mlp.fc2"}
_QKV = {"attn": ("x_block.attn.qkv", ("to_q", "to_k", "to_v")),
        "attn_context": ("context_block.attn.qkv", ("add_q_proj", "add_k_proj", "add_v_proj")),
        "attn2": ("x_block.attn2.qkv", ("to_q", "to_k", "to_v"))}


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def sd3_to_original(state: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """diffusers SD3Transformer2DModel state dict -> the MMDiT's original keys (no prefix)."""
    out: dict[str, torch.Tensor] = {}
    last = config.num_layers - 1
    for key, value in state.items():
        head, _, leaf = key.rpartition(".")
        if key == "pos_embed.pos_embed":
            out["pos_embed"] = value
        elif head in _TOP:
            out[f"{_TOP[head]}.{leaf}"] = value
        elif key.startswith("norm_out.linear."):
            out[f"final_layer.adaLN_modulation.1.{leaf}"] = _swap_halves(value)
        elif key.startswith("transformer_blocks."):
            _, i, rest = key.split(".", 2)
            sub = rest.rpartition(".")[0]
            if sub in _BLOCK:
                moved = _swap_halves(value) if (int(i) == last and sub == "norm1_context.linear") else value
                out[f"joint_blocks.{i}.{_BLOCK[sub]}.{leaf}"] = moved
            elif not any(sub == f"{a}.{n}" for a in ("attn", "attn2") for n in ("to_q", "to_k", "to_v", "add_q_proj",
                                                                                   "add_k_proj", "add_v_proj")):
                raise EraseError(f"single file: transformer.{key} has no place in the SD3 all-in-one layout")
        else:
            raise EraseError(f"single file: transformer.{key} has no place in the SD3 all-in-one layout")
    for i in range(config.num_layers):
        p = f"transformer_blocks.{i}."
        for attn, (dst, names) in _QKV.items():
            module = "attn" if attn == "attn_context" else attn
            for leaf in ("weight", "bias"):
                parts = [f"{p}{module}.{n}.{leaf}" for n in names]
                if all(k in state for k in parts):
                    out[f"joint_blocks.{i}.{dst}.{leaf}"] = torch.cat([state[k] for k in parts])
    return out


def _text(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A transformers text encoder's state dict under `prefix`, in its own key names (CLIP: `text_model.*` and
    `text_projection`; transformers >= 5.6 flattened CLIPTextModel, so `text_model.` is added back where missing).
    Buffers rebuilt at load (position_ids) are left out. T5's `encoder.embed_tokens` is `shared` itself; both are
    written (a copy: safetensors stores no shared tensors), since with transformers 5 diffusers' reader leaves an
    absent `encoder.embed_tokens` on the meta device instead of tying it."""
    out = {}
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue
        if key == "encoder.embed_tokens.weight":
            value = value.clone()
        if prefix != T5 and not key.startswith(("text_model.", "text_projection.")):
            key = f"text_model.{key}"
        out[prefix + key] = value
    return out


def original_state(pipe: Any) -> dict[str, torch.Tensor]:
    """The all-in-one state dict as views of the pipeline's tensors (no copy for most keys; works on the meta
    device, where the CLIP-L identity check is skipped)."""
    from erase.export.single_file import vae_to_original

    proj = pipe.text_encoder.state_dict().get("text_projection.weight")
    if proj is not None and not proj.is_meta and not torch.equal(proj.detach().cpu(), torch.eye(proj.shape[0], dtype=proj.dtype)):
        raise EraseError("single file: text_encoder.text_projection is not the identity; SD3's all-in-one layout holds "
                         "CLIP-L unprojected (diffusers' reader sets the identity), so this model cannot be written in it")
    net = pipe.transformer
    parts = {TRANSFORMER_PREFIX + k: v for k, v in sd3_to_original(net.state_dict(), net.config).items()}
    try:
        parts.update(vae_to_original(pipe.vae.state_dict(), pipe.vae.config))
    except KeyError as err:
        raise EraseError(f"single file: vae.{err.args[0]} has no place in the SD3 all-in-one layout") from None
    for component, prefix in (("text_encoder", CLIP_L), ("text_encoder_2", CLIP_G), ("text_encoder_3", T5)):
        parts.update(_text(getattr(pipe, component).state_dict(), prefix))
    return parts


def read_back(original: dict[str, torch.Tensor], pipe: Any, name: str) -> dict[str, torch.Tensor]:
    """diffusers' own reader of component `name` applied to `original`: the diffusers state dict it gives."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_sd3_t5_checkpoint_to_diffusers,
        convert_sd3_transformer_checkpoint_to_diffusers,
    )

    if name == "transformer":  # the converter pops from the dict it is given: its own copy of the key set
        return convert_sd3_transformer_checkpoint_to_diffusers(
            {k: v for k, v in original.items() if k.startswith(TRANSFORMER_PREFIX)})
    if name == "vae":
        return convert_ldm_vae_checkpoint(original, dict(pipe.vae.config))
    if name == "text_encoder":
        clip_l = convert_ldm_clip_checkpoint(original, CLIP_L)
        width = pipe.text_encoder.config.hidden_size
        clip_l["text_projection.weight"] = torch.eye(width, dtype=next(iter(clip_l.values())).dtype)
        return clip_l
    if name == "text_encoder_2":
        return convert_ldm_clip_checkpoint(original, CLIP_G)
    return convert_sd3_t5_checkpoint_to_diffusers(original)


def verify_sd3(original: dict[str, torch.Tensor], pipe: Any, values: bool = True) -> None:
    """Every tensor of every component comes back from diffusers' readers with its name and shape (and, with
    `values`, equal). One component at a time: the extra memory is the largest component's read-back copy."""
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        back = read_back(original, pipe, name)
        ref = {k: v for k, v in getattr(pipe, name).state_dict().items() if not k.endswith("position_ids")}
        missing, extra = sorted(set(ref) - set(back)), sorted(set(back) - set(ref))
        if missing or extra:
            key = (missing or extra)[0]
            raise EraseError(f"single file: {name}.{key} would not load back "
                             f"({len(missing)} tensors missing, {len(extra)} unexpected)")
        for key, tensor in ref.items():
            got = back[key]
            same = got.shape == tensor.shape and (not values or torch.equal(got, tensor.detach().to("cpu", got.dtype)))
            if not same:
                raise EraseError(f"single file: {name}.{key} does not round-trip "
                                 f"(shape {tuple(got.shape)} vs {tuple(tensor.shape)})")
