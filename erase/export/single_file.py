"""One `.safetensors` in the original Stable Diffusion (CompVis/LDM) checkpoint layout.

A1111, ComfyUI and `StableDiffusionPipeline.from_single_file` read the layout of the original
`v1-5-pruned.ckpt` (Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion
Models", https://arxiv.org/abs/2112.10752): one flat state dict with three prefixes

    model.diffusion_model.*           the UNet   (openaimodel.py: input_blocks / middle_block / output_blocks)
    first_stage_model.*               the VAE    (autoencoder: encoder.down.i.block.j, mid.block_1, mid.attn_1 ...)
    cond_stage_model.transformer.*    the CLIP text encoder (transformers' CLIPTextModel, `text_model.` prefix)
    cond_stage_model.model.*          SD-2's OpenCLIP text encoder instead (open_clip's layout, below)

SDXL's published `sd_xl_base_1.0.safetensors` (Stability's generative-models, "sgm") keeps the UNet and
VAE prefixes and puts its two text encoders under `conditioner.embedders`:

    conditioner.embedders.0.transformer.text_model.*   CLIP ViT-L (transformers' layout, as SD-1's)
    conditioner.embedders.1.model.*                    OpenCLIP ViT-bigG: all 32 blocks, ln_final and
                                                       `text_projection` (x @ P: diffusers' Linear weight, transposed)

and the UNet's added (size/crop + pooled text) embedding is `label_emb.0.0` / `label_emb.0.2`
(diffusers' `add_embedding.linear_1/2`). The reading direction is diffusers' convert_ldm_unet_checkpoint
and create_diffusers_clip_model_from_ldm; this module writes what they read.

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

which at real size (23 layers) is 280 tensors.

v-prediction has no tensor of its own, so each reader guesses it differently: diffusers from the
scheduler config it is given (`config=<the exported folder>`), A1111 from a YAML of the same name
beside the checkpoint (else it runs the UNet once and looks at the output), ComfyUI from an
(empty) `v_pred` tensor for SDXL and from a weight statistic for SD-2. The export therefore writes,
for v-prediction models, the `v_pred` marker tensor, and for SD-2 models the companion
`<name>.yaml` (Stability's v2-inference(-v).yaml at the model's own sizes, `parameterization: v`
when it applies), and in every file Stability's ModelSpec metadata (`modelspec.architecture`,
`modelspec.prediction_type` "v" or "epsilon", ...). After writing, the state dict is mapped back with diffusers' own
reader and compared tensor by tensor, so a file that would not load exactly is never written.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from erase.errors import EraseError
from erase.export.layout import modelspec_architecture
from erase.models.family import family_of, prediction_type

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
OPENCLIP_PREFIX = "cond_stage_model.model."
V_PRED_KEY = "v_pred"  # an empty tensor: ComfyUI's (and its forks') marker of a v-prediction checkpoint
_OPENCLIP_LAYER = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
                   "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
           "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_UNET_TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}  # SDXL
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
        value = getattr(config, field, None)
        if value is not None and not (field == "addition_embed_type" and value == "text_time"):
            raise EraseError(f"unet/config.json: {field}: not part of the SD-1.x/2.x/XL architectures the single-file layout describes")
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


def clip_to_original(state: dict[str, torch.Tensor], prefix: str = CLIP_PREFIX) -> dict[str, torch.Tensor]:
    """transformers CLIPTextModel state dict -> `<prefix>text_model.*` (SD-1: cond_stage_model.transformer.,
    SDXL's first encoder: conditioner.embedders.0.transformer.).

    transformers >= 5.6 flattened CLIPTextModel (no `text_model.` level); the original layout
    (and A1111's loader) keeps it, so it is added back.
    """
    out = {}
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue  # a buffer, rebuilt at load time
        key = key if key.startswith("text_model.") else f"text_model.{key}"
        out[prefix + key] = value
    return out


def openclip_to_original(state: dict[str, torch.Tensor], prefix: str = OPENCLIP_PREFIX) -> dict[str, torch.Tensor]:
    """transformers CLIPTextModel(WithProjection) (an OpenCLIP tower) -> open_clip's `<prefix>*`.

    The inverse of diffusers' `convert_open_clip_checkpoint`: q/k/v projections are stacked into
    one `in_proj` tensor. Every layer the model has is written: SD-2's diffusers encoder already
    lacks the last block (SD-2 conditions on the penultimate layer) and has no projection; SDXL's
    second encoder keeps all 32 blocks and its `text_projection` (the pooled embedding), which
    open_clip stores as the matrix P of x @ P, i.e. the Linear weight transposed.
    """
    top = {"embeddings.token_embedding.weight": "token_embedding.weight",
           "embeddings.position_embedding.weight": "positional_embedding",
           "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}
    state = {k.removeprefix("text_model."): v for k, v in state.items() if not k.endswith("position_ids")}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key in top:
            out[prefix + top[key]] = value
        elif key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T
        elif m := re.fullmatch(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", key):
            qkv.setdefault((int(m[1]), m[3]), {})[m[2]] = value
        elif m := re.fullmatch(r"encoder\.layers\.(\d+)\.(self_attn\.out_proj|layer_norm[12]|mlp\.fc[12])\.(weight|bias)", key):
            out[f"{prefix}transformer.resblocks.{m[1]}.{_OPENCLIP_LAYER[m[2]]}.{m[3]}"] = value
        else:
            raise KeyError(f"text_encoder.{key}")
    for (layer, leaf), parts in qkv.items():
        out[f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{leaf}"] = torch.cat([parts[c] for c in "qkv"])
    return out


def _text_to_original(state: dict[str, torch.Tensor], kind: str, prefix: str) -> dict[str, torch.Tensor]:
    return openclip_to_original(state, prefix) if kind == "openclip" else clip_to_original(state, prefix)


def pipeline_to_original(pipe: Any, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The whole pipeline (SD-1.x, SD-2.x or SDXL) as one original-layout state dict (contiguous tensors of `dtype`)."""
    return {k: v.detach().to("cpu", dtype).contiguous() for k, v in original_state(pipe).items()}


def original_state(pipe: Any) -> dict[str, torch.Tensor]:
    """The original-layout state dict as views of the pipeline's own tensors (no copy, no cast:
    works on the meta device, so real-size key names and shapes can be checked without memory)."""
    family = family_of(pipe)
    parts = {}
    try:
        parts.update(unet_to_original(pipe.unet.state_dict(), pipe.unet.config))
        parts.update(vae_to_original(pipe.vae.state_dict(), pipe.vae.config))
        for component, kind, prefix in family.text_encoders:
            parts.update(_text_to_original(getattr(pipe, component).state_dict(), kind, prefix))
    except KeyError as err:
        raise EraseError(f"single file: parameter {err.args[0]} has no place in the original {family.label} layout "
                         "(not an SD-1.x/2.x/XL architecture)") from None
    return parts


def _text_back(encoder, original: dict[str, torch.Tensor], kind: str, prefix: str) -> dict[str, torch.Tensor]:
    """diffusers' reading of one text encoder out of `original` (keys without `text_model.`)."""
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint

    if kind == "openclip":
        back = convert_open_clip_checkpoint(encoder, original, prefix=prefix)
    else:
        back = convert_ldm_clip_checkpoint({k: v for k, v in original.items() if k.startswith(prefix)}, remove_prefix=prefix)
    return {k.removeprefix("text_model."): v for k, v in back.items()}


def verify_roundtrip(original: dict[str, torch.Tensor], pipe: Any) -> None:
    """Map `original` back with diffusers' own single-file reader; every tensor must come back equal."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    checks = {
        "unet": (convert_ldm_unet_checkpoint(original, dict(pipe.unet.config)), pipe.unet.state_dict()),
        "vae": (convert_ldm_vae_checkpoint(original, dict(pipe.vae.config)), pipe.vae.state_dict()),
    }
    for component, kind, prefix in family_of(pipe).text_encoders:
        encoder = getattr(pipe, component)
        checks[component] = (
            _text_back(encoder, original, kind, prefix),
            {k.removeprefix("text_model."): v for k, v in encoder.state_dict().items() if not k.endswith("position_ids")},
        )
    for name, (back, ref) in checks.items():
        missing = sorted(set(ref) - set(back))
        if missing:
            raise EraseError(f"single file: {name}.{missing[0]} would not load back ({len(missing)} tensors missing)")
        for key, tensor in ref.items():
            got = back[key]
            if got.shape != tensor.shape or not torch.equal(got, tensor.detach().to("cpu", got.dtype)):
                raise EraseError(f"single file: {name}.{key} does not round-trip (shape {tuple(got.shape)} vs {tuple(tensor.shape)})")


def _resolution(pipe: Any) -> int:
    """Native image side in pixels: latent sample size x the VAE's downsampling."""
    return int(pipe.unet.config.sample_size) * 2 ** (len(pipe.vae.config.block_out_channels) - 1)


def file_metadata(pipe: Any) -> dict[str, str]:
    """The safetensors header metadata: our layout name and Stability's ModelSpec (sai_model_spec 1.0.0) keys.

    Nothing depends on the file's name or the time (no modelspec.title / date): equal weights
    give equal bytes, whatever the export is called."""
    family, prediction = family_of(pipe), prediction_type(pipe)
    side = _resolution(pipe)
    return {
        "format": "pt", "layout": family.layout,
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": modelspec_architecture(family, prediction),
        "modelspec.implementation": family.implementation,
        "modelspec.resolution": f"{side}x{side}",
        "modelspec.prediction_type": "v" if prediction == "v_prediction" else prediction,
    }


def _sgm_extras(pipe: Any, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Two tensors Stability's sd_xl_base_1.0.safetensors holds that diffusers does not keep, which some
    SDXL loaders and checkpoint tools expect: CLIP-L's `position_ids` (int64 0..76) and OpenCLIP's
    `logit_scale` (ln 100, its trained value; unused for generation)."""
    import math

    if family_of(pipe).key != "sdxl":
        return {}
    positions = pipe.text_encoder.config.max_position_embeddings
    return {
        "conditioner.embedders.0.transformer.text_model.embeddings.position_ids": torch.arange(positions, dtype=torch.int64)[None],
        "conditioner.embedders.1.model.logit_scale": torch.tensor(math.log(100.0), dtype=dtype),
    }


def write_single_file(pipe: Any, path: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write the pipeline's weights as one original-layout `.safetensors` at `path`.

    Load it with `StableDiffusionPipeline.from_single_file(path, config=<the exported diffusers
    folder>)` (`StableDiffusionXLPipeline` for SDXL); without `config`, diffusers guesses the
    architecture from key shapes and fetches the published configs from the Hub -- right only at
    real size. A v-prediction model also gets the empty `v_pred` marker tensor.
    """
    from safetensors.torch import save_file

    family = family_of(pipe)
    if family.key == "flux":
        return _write_flux(pipe, Path(path), dtype)
    if family.key == "sd3":
        return _write_sd3(pipe, Path(path), dtype)
    original = pipeline_to_original(pipe, dtype)
    verify_roundtrip(original, pipe)
    original.update(_sgm_extras(pipe, dtype))
    if prediction_type(pipe) == "v_prediction":
        original[V_PRED_KEY] = torch.zeros(0, dtype=dtype)
    path = Path(path)
    save_file(original, str(path), metadata=file_metadata(pipe))
    canonical_header(path)
    return path


def _write_flux(pipe: Any, path: Path, dtype: torch.dtype) -> Path:
    """FLUX.1: the transformer alone in Black Forest Labs' layout (erase/export/single_file_flux.py), as the
    published flux1-dev.safetensors; the text encoders and VAE stay in the diffusers folder beside it."""
    return write_flux_transformer(pipe.transformer, path, dtype, int(pipe.vae.config.sample_size))


def write_flux_transformer(net: Any, path: Path, dtype: torch.dtype, side: int) -> Path:
    """A FluxTransformer2DModel alone as Black Forest Labs' flux1-dev.safetensors layout at `path` (`side`: the
    native image side in pixels, for the ModelSpec resolution)."""
    from safetensors.torch import save_file

    from erase.export.single_file_flux import check_reader, flux_to_original

    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in flux_to_original(net.state_dict(), net.config).items()}
    readable = check_reader(net)
    metadata = {"format": "pt", "layout": "flux-bfl", "modelspec.sai_model_spec": "1.0.0",
                "modelspec.architecture": "flux-1-dev" if net.config.guidance_embeds else "flux-1-schnell",
                "modelspec.implementation": "https://github.com/black-forest-labs/flux",
                "modelspec.resolution": f"{side}x{side}", "modelspec.prediction_type": "flow",
                "diffusers_reader": "checked" if readable else "not applicable (width other than FLUX.1's 3072)"}
    save_file(state, str(path), metadata=metadata)
    canonical_header(path)
    return path


def _write_sd3(pipe: Any, path: Path, dtype: torch.dtype) -> Path:
    """SD3 / SD3.5: the MMDiT, the VAE and the three text encoders in one file, in the all-in-one layout of
    Stability's published sd3.5_large.safetensors (erase/export/single_file_sd3.py), checked with diffusers'
    own readers before it is written."""
    from safetensors.torch import save_file

    from erase.export.single_file_sd3 import original_state as sd3_state
    from erase.export.single_file_sd3 import verify_sd3

    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in sd3_state(pipe).items()}
    verify_sd3(state, pipe)
    net = pipe.transformer.config
    side = int(net.sample_size) * 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    metadata = {"format": "pt", "layout": family_of(pipe).layout, "modelspec.sai_model_spec": "1.0.0",
                "modelspec.architecture": modelspec_architecture(family_of(pipe), "flow"),
                "modelspec.implementation": family_of(pipe).implementation,
                "modelspec.resolution": f"{side}x{side}", "modelspec.prediction_type": "flow"}
    save_file(state, str(path), metadata=metadata)
    canonical_header(path)
    return path


def original_config(pipe: Any) -> dict[str, Any] | None:
    """Stability's v2-inference(-v).yaml for this SD-2.x pipeline's sizes (what A1111 reads from
    `<checkpoint>.yaml`, and what `from_single_file(original_config=...)` accepts); None for other
    families, or where the UNet's heads are not one width (the YAML has one num_head_channels)."""
    if family_of(pipe).key != "sd2":
        return None
    u, v, s = pipe.unet.config, pipe.vae.config, pipe.scheduler.config
    blocks = list(u.block_out_channels)
    heads = u.attention_head_dim if isinstance(u.attention_head_dim, (list, tuple)) else [u.attention_head_dim] * len(blocks)
    widths = {c // h for c, h in zip(blocks, heads)}
    if len(widths) != 1 or any(c % blocks[0] for c in blocks) or any(c % h for c, h in zip(blocks, heads)):
        return None
    depth = u.transformer_layers_per_block
    params: dict[str, Any] = {}
    if s.get("prediction_type") == "v_prediction":
        params["parameterization"] = "v"
    params.update(
        linear_start=float(s.get("beta_start", 0.00085)), linear_end=float(s.get("beta_end", 0.012)),
        timesteps=int(s.get("num_train_timesteps", 1000)), scale_factor=float(v.scaling_factor),
        unet_config={"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": {
            "image_size": int(u.sample_size), "in_channels": int(u.in_channels), "out_channels": int(u.out_channels),
            "model_channels": blocks[0],
            "attention_resolutions": [2**i for i, t in enumerate(u.down_block_types) if "CrossAttn" in t],
            "num_res_blocks": int(u.layers_per_block), "channel_mult": [c // blocks[0] for c in blocks],
            "num_head_channels": widths.pop(), "use_spatial_transformer": True,
            "use_linear_in_transformer": bool(u.use_linear_projection),
            "transformer_depth": depth if isinstance(depth, int) else list(depth),
            "context_dim": int(u.cross_attention_dim), "legacy": False}},
        first_stage_config={"target": "ldm.models.autoencoder.AutoencoderKL", "params": {
            "embed_dim": int(v.latent_channels),
            "ddconfig": {"double_z": True, "z_channels": int(v.latent_channels), "resolution": int(v.sample_size),
                         "in_channels": int(v.in_channels), "out_ch": int(v.out_channels),
                         "ch": int(v.block_out_channels[0]),
                         "ch_mult": [c // v.block_out_channels[0] for c in v.block_out_channels],
                         "num_res_blocks": int(v.layers_per_block), "attn_resolutions": [], "dropout": 0.0}}},
        cond_stage_config={"target": "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder",
                           "params": {"freeze": True, "layer": "penultimate"}},
    )
    return {"model": {"target": "ldm.models.diffusion.ddpm.LatentDiffusion", "params": params}}


def write_original_config(pipe: Any, path: str | Path) -> Path | None:
    """Write `original_config(pipe)` as YAML at `path` (the checkpoint's name with .yaml); None if there is none."""
    import yaml

    config = original_config(pipe)
    if config is None:
        return None
    path = Path(path)
    head = ("# Original-layout (Stability v2-inference) config of the checkpoint beside this file, at its own sizes:\n"
            "# AUTOMATIC1111 reads <checkpoint>.yaml; diffusers: from_single_file(..., original_config=this file).\n")
    path.write_text(head + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
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
