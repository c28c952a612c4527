"""The FLUX.1 transformer as one `.safetensors` in Black Forest Labs' original layout (flux1-dev.safetensors).

The published FLUX.1 checkpoints ship the transformer alone in the layout of black-forest-labs/flux
(`src/flux/model.py`): ComfyUI's `diffusion_models` folder and diffusers'
`FluxTransformer2DModel.from_single_file` read it. diffusers holds only the reading direction
(`diffusers.loaders.single_file_utils.convert_flux_transformer_checkpoint_to_diffusers`); this module is
its inverse, key for key:

    time_in / vector_in / guidance_in .in_layer, .out_layer   <- time_text_embed.{timestep,text,guidance}_embedder.linear_1/2
    txt_in, img_in                                            <- context_embedder, x_embedder
    double_blocks.i.img_mod.lin / txt_mod.lin                 <- transformer_blocks.i.norm1 / norm1_context .linear
    double_blocks.i.img_attn.qkv = [to_q; to_k; to_v]         (rows stacked; txt_attn.qkv from add_q/k/v_proj)
    double_blocks.i.{img,txt}_attn.norm.{query,key}_norm.scale <- attn.norm_q/k, norm_added_q/k
    double_blocks.i.{img,txt}_attn.proj                       <- attn.to_out.0, attn.to_add_out
    double_blocks.i.{img,txt}_mlp.0 / .2                      <- ff / ff_context .net.0.proj, .net.2
    single_blocks.i.linear1 = [to_q; to_k; to_v; proj_mlp]    (rows stacked), linear2 <- proj_out
    single_blocks.i.modulation.lin, .norm.{query,key}_norm.scale
    final_layer.linear                                        <- proj_out
    final_layer.adaLN_modulation.1 = [shift; scale]           <- norm_out.linear = [scale; shift] (halves swapped)

The export checks the inverse with diffusers' own reader on the meta device at the model's shapes
(`check_reader`), where the reader's FLUX.1 constants (inner width 3072, MLP ratio 4) hold; models of other
widths (the tiny test models) are written but diffusers cannot read them back, and the export says so.
"""

from __future__ import annotations

from typing import Any

import torch

EMBEDDERS = {"time_in": "time_text_embed.timestep_embedder", "vector_in": "time_text_embed.text_embedder",
             "guidance_in": "time_text_embed.guidance_embedder"}
DOUBLE = {"img_mod.lin": "norm1.linear", "txt_mod.lin": "norm1_context.linear",
          "img_attn.norm.query_norm.scale": "attn.norm_q.weight", "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
          "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
          "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight",
          "img_attn.proj": "attn.to_out.0", "txt_attn.proj": "attn.to_add_out",
          "img_mlp.0": "ff.net.0.proj", "img_mlp.2": "ff.net.2", "txt_mlp.0": "ff_context.net.0.proj",
          "txt_mlp.2": "ff_context.net.2"}
SINGLE = {"modulation.lin": "norm.linear", "norm.query_norm.scale": "attn.norm_q.weight",
          "norm.key_norm.scale": "attn.norm_k.weight", "linear2": "proj_out"}


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def flux_to_original(state: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """diffusers FluxTransformer2DModel state dict -> Black Forest Labs' keys (no prefix)."""
    out: dict[str, torch.Tensor] = {}

    def linear(dst: str, src: str) -> None:
        for leaf in ("weight", "bias"):
            if f"{src}.{leaf}" in state:
                out[f"{dst}.{leaf}"] = state[f"{src}.{leaf}"]

    for dst, src in EMBEDDERS.items():
        if f"{src}.linear_1.weight" in state:
            linear(f"{dst}.in_layer", f"{src}.linear_1")
            linear(f"{dst}.out_layer", f"{src}.linear_2")
    linear("txt_in", "context_embedder")
    linear("img_in", "x_embedder")
    for i in range(config.num_layers):
        p, q = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for dst, src in DOUBLE.items():
            if dst.endswith(".scale"):
                out[q + dst] = state[p + src]
            else:
                linear(q + dst, p + src)
        for stream, names in (("img_attn", ("to_q", "to_k", "to_v")), ("txt_attn", ("add_q_proj", "add_k_proj", "add_v_proj"))):
            for leaf in ("weight", "bias"):
                out[f"{q}{stream}.qkv.{leaf}"] = torch.cat([state[f"{p}attn.{n}.{leaf}"] for n in names])
    for i in range(config.num_single_layers):
        p, q = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for dst, src in SINGLE.items():
            if dst.endswith(".scale"):
                out[q + dst] = state[p + src]
            else:
                linear(q + dst, p + src)
        for leaf in ("weight", "bias"):
            out[f"{q}linear1.{leaf}"] = torch.cat([state[f"{p}{n}.{leaf}"] for n in ("attn.to_q", "attn.to_k", "attn.to_v",
                                                                                    "proj_mlp")])
    linear("final_layer.linear", "proj_out")
    for leaf in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{leaf}"] = _swap_halves(state[f"norm_out.linear.{leaf}"])
    missing = _unplaced(state, out)
    if missing:
        from erase.errors import EraseError

        raise EraseError(f"single file: transformer.{missing[0]} has no place in the FLUX.1 layout ({len(missing)} tensors)")
    return out


def _unplaced(state: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> list[str]:
    """diffusers tensors the layout did not take (by number of values, since fused tensors change names)."""
    return [] if sum(t.numel() for t in state.values()) == sum(t.numel() for t in out.values()) else sorted(state)[:1]


def check_reader(transformer: Any) -> bool:
    """Whether diffusers' reader maps `flux_to_original` of this architecture back to the model's own keys and
    shapes (meta device, nothing allocated); False where the reader's FLUX.1 constants do not fit the model."""
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    cfg = transformer.config
    if cfg.num_attention_heads * cfg.attention_head_dim != 3072:
        return False
    with torch.device("meta"):
        meta = FluxTransformer2DModel.from_config(cfg)
    state = meta.state_dict()
    back = convert_flux_transformer_checkpoint_to_diffusers(dict(flux_to_original(state, cfg)))
    return set(back) == set(state) and all(back[k].shape == state[k].shape for k in state)
