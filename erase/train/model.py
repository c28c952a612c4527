"""Resolve a run's `model:` source to a pipeline (zoo, builder, folder, Hub id, single file)."""

from __future__ import annotations

import torch
from diffusers import StableDiffusionPipeline

from erase.errors import EraseError
from erase.models.loading import resolve_source


def load_model(source: str, where: str = "model", config: str | None = None, allow_pickle: bool = False) -> StableDiffusionPipeline:
    """A float32 pipeline on CPU from any source a run config accepts (`config`, `allow_pickle`:
    the run config's model_config / allow_pickle, for single files)."""
    if source.startswith("builder:"):
        from erase.models.builder import SIZES, build_pipeline

        size = source.split(":", 1)[1]
        if size not in SIZES:
            raise EraseError(f"{where}: {source}: unknown builder size ({', '.join(SIZES)})")
        return build_pipeline(size)  # type: ignore[arg-type]
    from erase.models.loading import load_pipeline

    return load_pipeline(resolve_source(source, where), dtype=torch.float32, config=config, allow_pickle=allow_pickle)
