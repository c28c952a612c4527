"""Random-weight pipelines of Stable Diffusion architecture, built offline from configs.

`tiny` and `small` are for tests (seconds on a CPU). `sd15` is the real SD-1.x architecture
(860M-parameter UNet, CLIP ViT-L/14 text encoder), built on the meta device for dry runs that
check parameter selection and estimate memory without allocating anything.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from erase.tokenizer import CLIP_MAX_LENGTH, CLIP_VOCAB_SIZE, clip_tokenizer

Size = Literal["tiny", "small", "sd15"]

# SD-1.x's noise schedule (identical across 1.4 and 1.5).
SD_SCHEDULER = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
}

_ARCH = {
    # size: (unet block_out, layers_per_block, latent px, cross dim / text width, text layers, vae block_out)
    "tiny": ((32, 64), 1, 16, 32, 2, (32, 64)),
    "small": ((32, 64), 2, 32, 32, 2, (32, 64)),
    "sd15": ((320, 640, 1280, 1280), 2, 64, 768, 12, (128, 256, 512, 512)),
}


def unet_config(size: Size) -> dict:
    block_out, layers, sample, cross, _, _ = _ARCH[size]
    n = len(block_out)
    return {
        "sample_size": sample, "in_channels": 4, "out_channels": 4, "layers_per_block": layers,
        "block_out_channels": block_out, "cross_attention_dim": cross,
        "down_block_types": ("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        "attention_head_dim": 8, "norm_num_groups": 32,
    }


def text_config(size: Size) -> CLIPTextConfig:
    _, _, _, width, layers, _ = _ARCH[size]
    heads = 12 if width == 768 else 4
    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE, hidden_size=width, intermediate_size=4 * width,
        num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=CLIP_MAX_LENGTH,
        hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=1,
        projection_dim=width,
    )


def vae_config(size: Size) -> dict:
    _, _, sample, _, _, block_out = _ARCH[size]
    n = len(block_out)
    return {
        "in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": block_out,
        "down_block_types": ("DownEncoderBlock2D",) * n, "up_block_types": ("UpDecoderBlock2D",) * n,
        "layers_per_block": 1 if size != "sd15" else 2, "norm_num_groups": 32,
        "sample_size": sample * 2 ** (n - 1),
    }


def build_pipeline(size: Size = "tiny", seed: int = 0, device: str | torch.device = "cpu") -> StableDiffusionPipeline:
    """A random-weight StableDiffusionPipeline of the given size (safety checker off).

    `device="meta"` allocates nothing: use it for dry runs at real size.
    """
    ctx = torch.device("meta") if str(device) == "meta" else contextlib.nullcontext()
    torch.manual_seed(seed)
    with ctx:
        unet = UNet2DConditionModel(**unet_config(size))
        vae = AutoencoderKL(**vae_config(size))
        text_encoder = CLIPTextModel(text_config(size))
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), unet=unet,
        scheduler=DDIMScheduler(**SD_SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    if str(device) not in ("cpu", "meta"):
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def count_parameters(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
