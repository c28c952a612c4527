"""Random-weight pipelines of Stable Diffusion architecture, built offline from configs.

Three architecture families, each as a tiny model for tests (seconds on a CPU) and at real size
(built on the meta device for dry runs that check parameter selection and estimate memory
without allocating anything):

| size | family | what it is |
|---|---|---|
| `tiny`, `small` | SD-1.x | CLIP text encoder (quick GELU), epsilon prediction, DDIM |
| `sd15` | SD-1.x | the real SD-1.4/1.5 architecture (860M-parameter UNet, CLIP ViT-L/14) |
| `tiny-sd2` | SD-2.x | OpenCLIP-style text encoder (GELU, "!" padding), linear attention projections, per-block head counts, v-prediction |
| `sd21` | SD-2.x | the real SD-2.1 (768-v) architecture: OpenCLIP ViT-H/14 (23 of 24 layers), v-prediction |
| `tiny-sdxl` | SDXL | two text encoders (CLIP + OpenCLIP with projection: pooled embedding), `text_time` added conditioning, Euler scheduler |
| `sdxl` | SDXL | the real SDXL-base-1.0 architecture (2,567,463,684-parameter UNet, CLIP ViT-L + OpenCLIP bigG) |
| `tiny-flux`, `flux-dev`, `flux-schnell` | FLUX.1 | flow-matching MMDiT, CLIP-L pooled + T5 (erase/models/builder_flow.py) |
| `tiny-sd3`, `sd3-medium`, `sd35-medium`, `sd35-large` | SD3/3.5 | flow-matching MMDiT, CLIP-L + CLIP-G + T5 |

The real-size configs are those of the published model folders' config.json files
(runwayml/stable-diffusion-v1-5, stabilityai/stable-diffusion-2-1, stabilityai/stable-diffusion-xl-base-1.0).
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from erase.tokenizer import CLIP_MAX_LENGTH, CLIP_VOCAB_SIZE, clip_tokenizer, openclip_tokenizer

Size = Literal["tiny", "small", "sd15", "tiny-sd2", "sd21", "tiny-sdxl", "sdxl", "tiny-flux", "flux-dev", "flux-schnell",
               "tiny-sd3", "sd3-medium", "sd35-medium", "sd35-large"]
SIZES: tuple[str, ...] = ("tiny", "small", "sd15", "tiny-sd2", "sd21", "tiny-sdxl", "sdxl", "tiny-flux", "flux-dev",
                          "flux-schnell", "tiny-sd3", "sd3-medium", "sd35-medium", "sd35-large")

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


def _sd1_pipeline(size: str, ctx) -> StableDiffusionPipeline:
    with ctx:
        unet = UNet2DConditionModel(**unet_config(size))
        vae = AutoencoderKL(**vae_config(size))
        text_encoder = CLIPTextModel(text_config(size))
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), unet=unet,
        scheduler=DDIMScheduler(**SD_SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


FLOW_SIZES = ("tiny-flux", "flux-dev", "flux-schnell", "tiny-sd3", "sd3-medium", "sd35-medium", "sd35-large")


def build_pipeline(size: Size = "tiny", seed: int = 0, device: str | torch.device = "cpu"):
    """A random-weight pipeline of the given size (see the table above; safety checker off):
    StableDiffusionPipeline for SD-1.x and SD-2.x, StableDiffusionXLPipeline for SDXL, FluxPipeline and
    StableDiffusion3Pipeline for the flow-matching transformers (erase/models/builder_flow.py).

    `device="meta"` allocates nothing: use it for dry runs at real size.
    """
    if size not in SIZES:
        raise ValueError(f"unknown builder size {size!r} (choose from {', '.join(SIZES)})")
    ctx = torch.device("meta") if str(device) == "meta" else contextlib.nullcontext()
    torch.manual_seed(seed)
    if size in FLOW_SIZES:
        from erase.models.builder_flow import flow_pipeline

        pipe = flow_pipeline(size, ctx)
        if str(device) not in ("cpu", "meta"):
            pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        return pipe
    family = _sd2_pipeline if size in _SD2 else _sdxl_pipeline if size in _SDXL else _sd1_pipeline
    pipe = family(size, ctx)
    if str(device) not in ("cpu", "meta"):
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# SD-2.x: (unet block_out, heads per block, latent px, cross dim / text width, text layers, text heads, vae block_out)
_SD2 = {
    "tiny-sd2": ((32, 64), (2, 4), 16, 64, 2, 1, (32, 64)),
    "sd21": ((320, 640, 1280, 1280), (5, 10, 20, 20), 96, 1024, 23, 16, (128, 256, 512, 512)),
}


def _openclip_text_config(width: int, layers: int, heads: int, projection: int) -> CLIPTextConfig:
    """OpenCLIP's text tower as transformers holds it: GELU (not CLIP's quick GELU), "!" (id 0) padding."""
    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=CLIP_MAX_LENGTH, hidden_act="gelu",
        bos_token_id=49406, eos_token_id=49407, pad_token_id=0, projection_dim=projection,
    )


def _sd2_pipeline(size: str, ctx) -> StableDiffusionPipeline:
    block_out, heads, sample, width, layers, text_heads, vae_out = _SD2[size]
    n = len(block_out)
    with ctx:
        unet = UNet2DConditionModel(
            sample_size=sample, in_channels=4, out_channels=4, layers_per_block=2 if size == "sd21" else 1,
            block_out_channels=block_out, cross_attention_dim=width, attention_head_dim=heads,
            use_linear_projection=True, norm_num_groups=32,
            down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        )
        vae = AutoencoderKL(**dict(vae_config("sd15" if size == "sd21" else "tiny"), block_out_channels=vae_out,
                                   sample_size=sample * 8 if size == "sd21" else sample * 2))
        text_encoder = CLIPTextModel(_openclip_text_config(width, layers, text_heads,
                                                           512 if size == "sd21" else width))
    scheduler = DDIMScheduler(**SD_SCHEDULER, prediction_type="v_prediction")
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=openclip_tokenizer(), unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


# SDXL: (unet block_out, heads per block, transformer layers per block, latent px, text widths (CLIP, OpenCLIP),
#        text layers, text heads, time embed dim, vae block_out)
_SDXL = {
    # tiny: CLIP 32 wide, OpenCLIP 64 wide (cross-attention 96, added embedding 6 * 8 + 64): diffusers' single-file
    # reader tells SDXL's two encoders apart by width, so they must differ as they do at real size (768, 1280).
    "tiny-sdxl": ((32, 64), (2, 4), (1, 2), 16, (32, 64), (2, 2), (4, 4), 8, (32, 64)),
    "sdxl": ((320, 640, 1280), (5, 10, 20), (1, 2, 10), 128, (768, 1280), (12, 32), (12, 20), 256,
             (128, 256, 512, 512)),
}
SDXL_VAE_SCALING = 0.13025


def _sdxl_pipeline(size: str, ctx) -> StableDiffusionXLPipeline:
    block_out, heads, depth, sample, (w1, w2), (l1, l2), (h1, h2), time_dim, vae_out = _SDXL[size]
    with ctx:
        unet, vae, text_encoder, text_encoder_2 = _sdxl_modules(
            block_out, heads, depth, sample, (w1, w2), (l1, l2), (h1, h2), time_dim, vae_out, size)
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        steps_offset=1, timestep_spacing="leading", prediction_type="epsilon",
    )
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=clip_tokenizer(),
        tokenizer_2=openclip_tokenizer(), unet=unet, scheduler=scheduler, add_watermarker=False,
    )


def _sdxl_modules(block_out, heads, depth, sample, widths, layers, text_heads, time_dim, vae_out, size):
    (w1, w2), (l1, l2), (h1, h2) = widths, layers, text_heads
    unet = UNet2DConditionModel(
        sample_size=sample, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=block_out,
        attention_head_dim=heads, transformer_layers_per_block=depth, cross_attention_dim=w1 + w2,
        use_linear_projection=True, norm_num_groups=32,
        addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + w2,  # 6 size/crop ids + the pooled OpenCLIP embedding
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (len(block_out) - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (len(block_out) - 1) + ("UpBlock2D",),
    )
    vae = AutoencoderKL(**dict(vae_config("sd15" if size == "sdxl" else "tiny"), block_out_channels=vae_out,
                               sample_size=sample * 8 if size == "sdxl" else sample * 2,
                               scaling_factor=SDXL_VAE_SCALING, force_upcast=True))
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE, hidden_size=w1, intermediate_size=4 * w1, num_hidden_layers=l1,
        num_attention_heads=h1, max_position_embeddings=CLIP_MAX_LENGTH, hidden_act="quick_gelu",
        bos_token_id=49406, eos_token_id=49407, pad_token_id=1, projection_dim=w1,
    ))
    text_encoder_2 = CLIPTextModelWithProjection(_openclip_text_config(w2, l2, h2, w2))
    return unet, vae, text_encoder, text_encoder_2


def count_parameters(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
