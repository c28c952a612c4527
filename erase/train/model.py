"""Resolve a run's `model:` source to a pipeline (zoo, builder, folder, Hub id, single file)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from erase.errors import EraseError
from erase.models.loading import resolve_source


def load_model(source: str, where: str = "model") -> StableDiffusionPipeline:
    """A float32 pipeline on CPU from any source a run config accepts."""
    if source.startswith("builder:"):
        from erase.models.builder import build_pipeline

        size = source.split(":", 1)[1]
        if size not in ("tiny", "small", "sd15"):
            raise EraseError(f"{where}: {source}: unknown builder size (tiny, small, sd15)")
        return build_pipeline(size)  # type: ignore[arg-type]
    from erase.models.loading import load_pipeline

    return load_pipeline(resolve_source(source, where), dtype=torch.float32)


def meta_model(source: str, where: str = "model") -> tuple[StableDiffusionPipeline, str]:
    """The source's architecture on the meta device (nothing allocated), and how it was found.

    Folders are built from their own configs; builder sizes directly; anything else (a Hub id or
    single file that may not be here) as the SD-1.x architecture.
    """
    from erase.models.builder import build_pipeline

    if source.startswith("builder:"):
        size = source.split(":", 1)[1]
        return build_pipeline(size, device="meta"), f"builder {size}"  # type: ignore[arg-type]
    try:
        path = Path(resolve_source(source, where))
    except EraseError:
        path = Path(source)
    if path.is_dir() and (path / "model_index.json").is_file():
        from accelerate import init_empty_weights
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        pipe = build_pipeline("tiny")
        with init_empty_weights():
            pipe.unet = UNet2DConditionModel.from_config(json.loads((path / "unet" / "config.json").read_text()))
            pipe.vae = AutoencoderKL.from_config(json.loads((path / "vae" / "config.json").read_text()))
            pipe.text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(path / "text_encoder"))
        return pipe, f"folder {path} (configs only)"
    return build_pipeline("sd15", device="meta"), "SD-1.x architecture (assumed; weights not loaded)"
