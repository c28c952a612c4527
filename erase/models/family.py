"""Which Stable Diffusion family a pipeline is: the one family detection loading, training and export use.

The family is read from the pipeline's own components (never from a name): a second text encoder
means SDXL (Podell et al., "SDXL", https://arxiv.org/abs/2307.01952), an OpenCLIP-style (GELU) text
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
}


def family_of(pipe: Any) -> Family:
    """The family of a loaded (or meta-device) diffusers pipeline."""
    if getattr(pipe, "text_encoder_2", None) is not None:
        return FAMILIES["sdxl"]
    return FAMILIES["sd2" if getattr(pipe.text_encoder.config, "hidden_act", "quick_gelu") == "gelu" else "sd1"]


def family_of_index(index: dict[str, Any], text_config: dict[str, Any] | None = None) -> Family:
    """The family of a diffusers folder from its model_index.json (and text_encoder/config.json)."""
    if "text_encoder_2" in index or "XL" in str(index.get("_class_name", "")):
        return FAMILIES["sdxl"]
    return FAMILIES["sd2" if (text_config or {}).get("hidden_act") == "gelu" else "sd1"]


def prediction_type(pipe: Any) -> str:
    """'epsilon' or 'v_prediction' (what the scheduler config says)."""
    return str(pipe.scheduler.config.get("prediction_type", "epsilon"))
