"""Which diffusion family a pipeline is: the one family detection loading, training and export use.

The family is read from the pipeline's own components (never from a name): a FluxTransformer2DModel
means FLUX.1, an SD3Transformer2DModel SD3/3.5 (both flow-matching transformers, `Family.flow`,
whose denoiser is `pipe.transformer`); else a second text encoder means SDXL (Podell et al., "SDXL", https://arxiv.org/abs/2307.01952), an OpenCLIP-style (GELU) text
encoder means SD-2.x, else SD-1.x. The prediction type is the scheduler's (`epsilon` or
`v_prediction`, Salimans & Ho, https://arxiv.org/abs/2202.00512). Everything else -- the pipeline
class the model card and the LoRA loader name, the text encoders' prefixes in the original-layout
single file, the ModelSpec architecture string -- follows from the family (erase/export/layout.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Family:
    key: str                  # "sd1", "sd2", "sdxl"
    label: str                # what people call it
    pipeline: str             # the diffusers pipeline class (type(pipe).__name__ of a loaded model)
    # (pipeline component, text-encoder layout, key prefix in the original single file)
    text_encoders: tuple[tuple[str, str, str], ...]
    layout: str               # our metadata "layout" value
    implementation: str       # ModelSpec implementation: the code whose key names the file uses
    tags: tuple[str, ...]     # Hub tags
    denoiser: str = "unet"    # the pipeline component that denoises: "unet", or "transformer" (FLUX, SD3)
    flow: bool = False        # flow matching (velocity prediction, FlowMatchEulerDiscreteScheduler)


FAMILIES = {
    "sd1": Family("sd1", "SD-1.x", "StableDiffusionPipeline",
                  (("text_encoder", "clip", "cond_stage_model.transformer."),),
                  "ldm-stable-diffusion-v1", "https://github.com/CompVis/stable-diffusion",
                  ("stable-diffusion", "stable-diffusion-diffusers")),
    "sd2": Family("sd2", "SD-2.x", "StableDiffusionPipeline",
                  (("text_encoder", "openclip", "cond_stage_model.model."),),
                  "ldm-stable-diffusion-v2", "https://github.com/Stability-AI/stablediffusion",
                  ("stable-diffusion", "stable-diffusion-diffusers")),
    "sdxl": Family("sdxl", "SDXL", "StableDiffusionXLPipeline",
                   (("text_encoder", "clip", "conditioner.embedders.0.transformer."),
                    ("text_encoder_2", "openclip", "conditioner.embedders.1.model.")),
                   "sgm-stable-diffusion-xl", "https://github.com/Stability-AI/generative-models",
                   ("stable-diffusion-xl", "stable-diffusion-xl-diffusers")),
    # FLUX.1 and SD3 single files as people share them: the FLUX transformer alone in Black Forest Labs'
    # layout (flux1-dev.safetensors: no text encoders in the file), SD3 all-in-one (sd3.5_large.safetensors:
    # the MMDiT under model.diffusion_model., the VAE, and the text encoders under text_encoders.*).
    "flux": Family("flux", "FLUX.1", "FluxPipeline", (), "flux-bfl", "https://github.com/black-forest-labs/flux",
                   ("flux", "flux-diffusers", "text-to-image"), denoiser="transformer", flow=True),
    "sd3": Family("sd3", "SD3", "StableDiffusion3Pipeline",
                  (("text_encoder", "clip", "text_encoders.clip_l.transformer."),
                   ("text_encoder_2", "clip", "text_encoders.clip_g.transformer."),
                   ("text_encoder_3", "t5", "text_encoders.t5xxl.transformer.")),
                  "sd3-all-in-one", "https://github.com/Stability-AI/sd3.5",
                  ("stable-diffusion-3", "stable-diffusion-3-diffusers", "text-to-image"), denoiser="transformer", flow=True),
}
TRANSFORMER_FAMILIES = {"FluxTransformer2DModel": "flux", "SD3Transformer2DModel": "sd3"}
PIPELINE_FAMILIES = {"FluxPipeline": "flux", "StableDiffusion3Pipeline": "sd3"}


def family_of(pipe: Any) -> Family:
    """The family of a loaded (or meta-device) diffusers pipeline."""
    transformer = getattr(pipe, "transformer", None)
    if transformer is not None:
        name = type(getattr(transformer, "module", transformer)).__name__
        if name not in TRANSFORMER_FAMILIES:
            raise ValueError(f"a pipeline with a {name} transformer is not supported (FLUX.1, SD3/3.5)")
        return FAMILIES[TRANSFORMER_FAMILIES[name]]
    if getattr(pipe, "text_encoder_2", None) is not None:
        return FAMILIES["sdxl"]
    return FAMILIES["sd2" if getattr(pipe.text_encoder.config, "hidden_act", "quick_gelu") == "gelu" else "sd1"]


def family_of_index(index: dict[str, Any], text_config: dict[str, Any] | None = None) -> Family:
    """The family of a diffusers folder from its model_index.json (and text_encoder/config.json)."""
    cls = str(index.get("_class_name", ""))
    if cls in PIPELINE_FAMILIES:
        return FAMILIES[PIPELINE_FAMILIES[cls]]
    if "text_encoder_2" in index or "XL" in str(index.get("_class_name", "")):
        return FAMILIES["sdxl"]
    return FAMILIES["sd2" if (text_config or {}).get("hidden_act") == "gelu" else "sd1"]


def prediction_type(pipe: Any) -> str:
    """'epsilon' or 'v_prediction' (what the scheduler config says), 'flow' for the flow-matching families."""
    if family_of(pipe).flow:
        return "flow"
    return str(pipe.scheduler.config.get("prediction_type", "epsilon"))


# Parameter sets on a flow-matching transformer (FLUX double blocks `transformer_blocks`, single blocks
# `single_transformer_blocks`; SD3's joint blocks `transformer_blocks`, SD3.5-medium's extra image-only
# `attn2`). erase/train/params.py names them like the UNet's: "xattn" (the attention that reads the text)
# is the TEXT STREAM's joint-attention projections in the double/joint blocks -- add_q_proj, add_k_proj,
# add_v_proj (text tokens' queries, keys and values in the joint attention) and to_add_out (the text
# tokens' output projection); the image stream's to_q/k/v/to_out and the single blocks are not in it.
# EraseAnything (tomguluson92/EraseAnything, train_flux_lora.py:205-218) trains LoRA on a subset of this
# set (add_q_proj, add_k_proj).
TEXT_ATTENTION = ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out")


def _in_joint_block(name: str) -> bool:
    return name.startswith("transformer_blocks.")


def _has(name: str, parts: tuple[str, ...]) -> bool:
    dotted = f".{name}."
    return any(f".{p}." in dotted for p in parts)


def text_attention(name: str) -> bool:
    return _in_joint_block(name) and _has(name, TEXT_ATTENTION)


TRANSFORMER_PARAM_SETS = {
    "xattn": text_attention,
    "noxattn": lambda n: not text_attention(n),
    "xattn_kv": lambda n: _in_joint_block(n) and _has(n, ("attn.add_k_proj", "attn.add_v_proj")),
    "selfattn": lambda n: _has(n, ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out", "attn2.to_q", "attn2.to_k",
                                   "attn2.to_v", "attn2.to_out")),
    "unet": lambda n: True,
    "transformer": lambda n: True,
}
