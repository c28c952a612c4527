"""One `.safetensors` in the original Stable Diffusion (CompVis/LDM) checkpoint layout.

A1111, ComfyUI and `StableDiffusionPipeline.from_single_file` read the layout of the original
`v1-5-pruned.ckpt` (Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion
Models", https://arxiv.org/abs/2112.10752): one flat state dict with three prefixes

    model.diffusion_model.*           the UNet   (openaimodel.py: input_blocks / middle_block / output_blocks)
    first_stage_model.*               the VAE    (autoencoder: encoder.down.i.block.j, mid.block_1, mid.attn_1 ...)
    cond_stage_model.transformer.*    the CLIP text encoder (transformers' CLIPTextModel, `text_model.` prefix)
    cond_stage_model.model.*          SD-2's OpenCLIP text encoder instead (open_clip's layout, below)

diffusers ships only the reading direction (`diffusers.loaders.single_file_utils`); this module is
the writing direction. Unlike diffusers' SD-only script (scripts/convert_diffusers_to_original_
stable_diffusion.py, hard-coded to 4 blocks x 2 layers) the index arithmetic here follows the
UNet/VAE config, so any SD-1.x-architecture model maps, including the tiny test models:

    down block b, layer l  -> input_blocks[1 + b (L+1) + l]   (.0 resnet, .1 attention)
    downsampler of block b -> input_blocks[(b+1)(L+1)].0.op
    up block b, layer l    -> output_blocks[b (L+1) + l]      (.0 resnet, .1 attention)
    upsampler of block b   -> output_blocks[b (L+1) + L].1 (no attention) or .2 (attention)
    VAE decoder up_blocks[i] -> decoder.up[n-1-i]             (LDM counts decoder levels bottom-up)

with L = layers_per_block. SD-2's text encoder is OpenCLIP ViT-H (Stability's v2-inference.yaml:
FrozenOpenCLIPEmbedder, layer "penultimate"); diffusers keeps it as a CLIPTextModel with
hidden_act "gelu" and one layer fewer. Its original layout is open_clip's:

    token_embedding.weight, positional_embedding, ln_final.{weight,bias}
    transformer.resblocks.i.{ln_1, ln_2}.*, .attn.in_proj_{weight,bias} (q, k, v stacked),
    .attn.out_proj.*, .mlp.c_fc.*, .mlp.c_proj.*

which at real size (23 layers) is 280 tensors. After writing, the state dict is mapped back with diffusers' own
reader and compared tensor by tensor, so a file that would not load exactly is never written.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from erase.errors import EraseError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
OPENCLIP_PREFIX = "cond_stage_model.model."
# file metadata: the layout name per text encoder
LAYOUTS = {"clip": "ldm-stable-diffusion-v1", "openclip": "ldm-stable-diffusion-v2"}
_OPENCLIP_LAYER = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
                   "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
           "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_UNET_TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
_VAE_TOP = {"conv_in": "conv_in", "conv_out": "conv_out", "conv_norm_out": "norm_out"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _split(key: str) -> tuple[str, str]:
    """'a.b.c.weight' -> ('a.b.c', 'weight')."""
    head, _, leaf = key.rpartition(".")
    return head, leaf


def _resnet(rest: str) -> str:
    """Rename one diffusers ResnetBlock2D parameter path (e.g. 'conv1.weight') to LDM's ResBlock."""
    layer, leaf = _split(rest)
    if layer not in _RESNET:
        raise KeyError(rest)
    return f"{_RESNET[layer]}.{leaf}"


def _check_unet(config) -> int:
    layers = config.layers_per_block
    if not isinstance(layers, int):
        raise EraseError(f"unet/config.json: layers_per_block: the original SD layout needs one integer, got {layers}")
    for field in ("class_embed_type", "addition_embed_type", "encoder_hid_dim_type", "time_cond_proj_dim"):
        if getattr(config, field, None) is not None:
            raise EraseError(f"unet/config.json: {field}: not part of the SD-1.x architecture the single-file layout describes")
    if config.mid_block_type not in (None, "UNetMidBlock2DCrossAttn"):
        raise EraseError(f"unet/config.json: mid_block_type: expected UNetMidBlock2DCrossAttn, got {config.mid_block_type}")
    return layers


def unet_to_original(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """diffusers UNet2DConditionModel state dict -> LDM `model.diffusion_model.*` keys."""
    L = _check_unet(config)
    has_attn_up = ["CrossAttn" in t for t in config.up_block_types]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        head, leaf = _split(key)
        if head in _UNET_TOP:
            new = f"{_UNET_TOP[head]}.{leaf}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            b, kind, l, rest = int(m[1]), m[2], int(m[3]), m[4]
            i = 1 + b * (L + 1) + l
            new = f"input_blocks.{i}.0.{_resnet(rest)}" if kind == "resnets" else f"input_blocks.{i}.1.{rest}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key):
            new = f"input_blocks.{(int(m[1]) + 1) * (L + 1)}.0.op.{m[2]}"
        elif m := re.fullmatch(r"mid_block\.resnets\.(\d)\.(.+)", key):
            new = f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
            new = f"middle_block.1.{m[1]}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            b, kind, l, rest = int(m[1]), m[2], int(m[3]), m[4]
            i = b * (L + 1) + l
            new = f"output_blocks.{i}.0.{_resnet(rest)}" if kind == "resnets" else f"output_blocks.{i}.1.{rest}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key):
            b = int(m[1])
            new = f"output_blocks.{b * (L + 1) + L}.{2 if has_attn_up[b] else 1}.conv.{m[2]}"
        else:
            raise KeyError(key)
        out[UNET_PREFIX + new] = value
    return out


def vae_to_original(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL state dict -> LDM `first_stage_model.*` keys.

    The LDM VAE's mid-block attention uses 1x1 convolutions where diffusers uses linear layers,
    so those weights get two trailing singleton dimensions (the layout A1111 expects).
    """
    n = len(config.up_block_types)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        head, leaf = _split(key)
        part, _, rest_head = head.partition(".")
        if head in ("quant_conv", "post_quant_conv"):
            new = key
        elif part in ("encoder", "decoder") and rest_head in _VAE_TOP:
            new = f"{part}.{_VAE_TOP[rest_head]}.{leaf}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(\w+)", key):
            new = f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}.{m[4]}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key):
            new = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(\w+)", key):
            new = f"decoder.up.{n - 1 - int(m[1])}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}.{m[4]}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key):
            new = f"decoder.up.{n - 1 - int(m[1])}.upsample.conv.{m[2]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(\w+)\.(\w+)", key):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}.{m[4]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(\w+)", key):
            new = f"{m[1]}.mid.attn_1.{_VAE_ATTN[m[2]]}.{m[3]}"
            if m[2] != "group_norm" and m[3] == "weight" and value.ndim == 2:
                value = value[:, :, None, None]
        else:
            raise KeyError(key)
        out[VAE_PREFIX + new] = value
    return out


def clip_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers CLIPTextModel state dict -> `cond_stage_model.transformer.text_model.*`.

    transformers >= 5.6 flattened CLIPTextModel (no `text_model.` level); the original layout
    (and A1111's loader) keeps it, so it is added back.
    """
    out = {}
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue  # a buffer, rebuilt at load time
        key = key if key.startswith("text_model.") else f"text_model.{key}"
        out[CLIP_PREFIX + key] = value
    return out


def text_encoder_kind(config) -> str:
    """'openclip' for SD-2's text encoder (OpenCLIP: GELU), 'clip' for SD-1's (OpenAI CLIP: quick GELU)."""
    return "openclip" if getattr(config, "hidden_act", "quick_gelu") == "gelu" else "clip"


def openclip_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers CLIPTextModel (SD-2's OpenCLIP tower) -> open_clip's `cond_stage_model.model.*`.

    The inverse of diffusers' `convert_open_clip_checkpoint`: q/k/v projections are stacked into
    one `in_proj` tensor; `text_projection` is not written (SD-2 conditions on the penultimate
    layer's hidden states, and diffusers' reader ignores it).
    """
    top = {"embeddings.token_embedding.weight": "token_embedding.weight",
           "embeddings.position_embedding.weight": "positional_embedding",
           "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}
    state = {k.removeprefix("text_model."): v for k, v in state.items() if not k.endswith("position_ids")}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key in top:
            out[OPENCLIP_PREFIX + top[key]] = value
        elif m := re.fullmatch(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", key):
            qkv.setdefault((int(m[1]), m[3]), {})[m[2]] = value
        elif m := re.fullmatch(r"encoder\.layers\.(\d+)\.(self_attn\.out_proj|layer_norm[12]|mlp\.fc[12])\.(weight|bias)", key):
            out[f"{OPENCLIP_PREFIX}transformer.resblocks.{m[1]}.{_OPENCLIP_LAYER[m[2]]}.{m[3]}"] = value
        else:
            raise KeyError(f"text_encoder.{key}")
    for (layer, leaf), parts in qkv.items():
        out[f"{OPENCLIP_PREFIX}transformer.resblocks.{layer}.attn.in_proj_{leaf}"] = torch.cat([parts[c] for c in "qkv"])
    return out


def pipeline_to_original(pipe: StableDiffusionPipeline, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The whole pipeline as one original-layout state dict (contiguous tensors of `dtype`)."""
    parts = {}
    try:
        parts.update(unet_to_original(pipe.unet.state_dict(), pipe.unet.config))
        parts.update(vae_to_original(pipe.vae.state_dict(), pipe.vae.config))
        if text_encoder_kind(pipe.text_encoder.config) == "openclip":
            parts.update(openclip_to_original(pipe.text_encoder.state_dict()))
        else:
            parts.update(clip_to_original(pipe.text_encoder.state_dict()))
    except KeyError as err:
        raise EraseError(f"single file: parameter {err.args[0]} has no place in the original SD layout (not an SD-1.x/2.x architecture)") from None
    return {k: v.detach().to("cpu", dtype).contiguous() for k, v in parts.items()}


def verify_roundtrip(original: dict[str, torch.Tensor], pipe: StableDiffusionPipeline) -> None:
    """Map `original` back with diffusers' own single-file reader; every tensor must come back equal."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
    )

    if text_encoder_kind(pipe.text_encoder.config) == "openclip":
        text = convert_open_clip_checkpoint(pipe.text_encoder, original, prefix=OPENCLIP_PREFIX)
    else:
        text = convert_ldm_clip_checkpoint(original)
    checks = {
        "unet": (convert_ldm_unet_checkpoint(original, dict(pipe.unet.config)), pipe.unet.state_dict()),
        "vae": (convert_ldm_vae_checkpoint(original, dict(pipe.vae.config)), pipe.vae.state_dict()),
        "text_encoder": (
            {k.removeprefix("text_model."): v for k, v in text.items()},
            {k.removeprefix("text_model."): v for k, v in pipe.text_encoder.state_dict().items() if not k.endswith("position_ids")},
        ),
    }
    for name, (back, ref) in checks.items():
        missing = sorted(set(ref) - set(back))
        if missing:
            raise EraseError(f"single file: {name}.{missing[0]} would not load back ({len(missing)} tensors missing)")
        for key, tensor in ref.items():
            got = back[key]
            if got.shape != tensor.shape or not torch.equal(got, tensor.detach().to("cpu", got.dtype)):
                raise EraseError(f"single file: {name}.{key} does not round-trip (shape {tuple(got.shape)} vs {tuple(tensor.shape)})")


def write_single_file(pipe: StableDiffusionPipeline, path: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write the pipeline's weights as one original-layout `.safetensors` at `path`.

    Load it with `StableDiffusionPipeline.from_single_file(path, config=<the exported diffusers
    folder>)`; without `config`, diffusers guesses the architecture from key shapes and, for
    anything it calls "v1", fetches SD-1.5's configs from the Hub -- right only at real size.
    """
    from safetensors.torch import save_file

    original = pipeline_to_original(pipe, dtype)
    verify_roundtrip(original, pipe)
    path = Path(path)
    layout = LAYOUTS[text_encoder_kind(pipe.text_encoder.config)]
    save_file(original, str(path), metadata={"format": "pt", "layout": layout})
    canonical_header(path)
    return path


def canonical_header(path: str | Path) -> None:
    """Rewrite a safetensors header in place with sorted keys, so equal tensors give equal bytes.

    safetensors writes `__metadata__` from a hash map, so its key order (and the file's bytes)
    varies from run to run. Sorting changes neither the header's length nor any data offset.
    """
    import json
    import struct

    with open(path, "r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        if len(text) > n:
            raise EraseError(f"{path}: safetensors header would grow when sorted ({len(text)} > {n} bytes)")
        f.seek(8)
        f.write(text + b" " * (n - len(text)))
