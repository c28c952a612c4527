"""LoRA weights of a LoRA run, in the diffusers format that `pipe.load_lora_weights` reads.

A LoRA run (Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models",
https://arxiv.org/abs/2106.09685) changes each adapted weight by W' = W + (alpha / r) B A. The run
directory already holds `fused` weights W' in RUN/model; the factors A, B travel separately so a
user can apply the erasure to the base model they already have (and scale it), e.g.

    pipe = DiffusionPipeline.from_pretrained(BASE)   # StableDiffusion(XL)Pipeline
    pipe.load_lora_weights(EXPORT_DIR)   # finds pytorch_lora_weights.safetensors

The diffusers format is peft's state dict with the component as prefix:
`unet.<module>.lora_A.weight`, `text_encoder.<module>.lora_B.weight`, for SDXL also
`text_encoder_2.<module>...` (what `StableDiffusionXLPipeline.save_lora_weights` writes), optional `.alpha`s.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from erase.errors import EraseError
from erase.export.run import LORA_WEIGHTS

_COMPONENTS = ("unet.", "transformer.", "text_encoder.", "text_encoder_2.")  # SDXL, FLUX, SD3: text_encoder_2.*; FLUX / SD3: transformer.*


def check_lora_file(path: Path) -> int:
    """Number of LoRA tensors in `path`; EraseError if it is not a diffusers-format LoRA file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise EraseError(f"{path}: corrupt or truncated safetensors file ({str(err).splitlines()[0] if str(err) else err})") from None
    if not keys:
        raise EraseError(f"{path}: contains no tensors")
    bad = [k for k in keys if not k.startswith(_COMPONENTS) or ("lora" not in k and not k.endswith(".alpha"))]
    if bad:
        raise EraseError(
            f"{path}: key {bad[0]!r} is not diffusers LoRA format (expected unet.*.lora_A/lora_B.weight, text_encoder.* or text_encoder_2.*)"
        )
    return len(keys)


def export_lora(lora_file: Path, out_dir: Path) -> Path:
    """Check the run's LoRA file and copy it byte for byte to `out_dir/pytorch_lora_weights.safetensors`."""
    check_lora_file(lora_file)
    target = out_dir / LORA_WEIGHTS
    shutil.copyfile(lora_file, target)
    return target
