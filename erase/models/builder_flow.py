"""Random-weight FLUX.1 and SD3/3.5 pipelines (flow-matching MMDiT transformers), built offline from configs.

| size | pipeline | transformer | text encoders |
|---|---|---|---|
| `tiny-flux` | FluxPipeline | 2 double + 2 single blocks, width 16, guidance embedding | CLIP 32 (pooled) + T5 32 |
| `flux-dev` | FluxPipeline | FLUX.1-dev: 19 double + 38 single blocks, 24 x 128, guidance embedding (11,901,408,320) | CLIP-L + T5-XXL |
| `flux-schnell` | FluxPipeline | FLUX.1-schnell: the same without the guidance embedding (11,891,178,560) | CLIP-L + T5-XXL |
| `tiny-sd3` | StableDiffusion3Pipeline | 2 joint blocks, 2 x 8, qk RMS norm | CLIP 32 (identity projection, as SD3's CLIP-L) + CLIP 48 (projection) + T5 96 |
| `sd3-medium` | StableDiffusion3Pipeline | SD3-medium: 24 joint blocks, 24 x 64 (2,028,328,000) | CLIP-L + CLIP-G + T5-XXL |
| `sd35-medium` | StableDiffusion3Pipeline | SD3.5-medium: 24 blocks, 13 of them MMDiT-X dual attention, qk norm (2,243,171,520) | same |
| `sd35-large` | StableDiffusion3Pipeline | SD3.5-large: 38 joint blocks, 38 x 64, qk norm (8,056,627,520) | same |

The real-size values are the architecture fields of the published model folders' config.json files
(black-forest-labs/FLUX.1-dev and FLUX.1-schnell, stabilityai/stable-diffusion-3-medium-diffusers,
stable-diffusion-3.5-medium and stable-diffusion-3.5-large): transformer, VAE (16 latent channels, no
quant convs; scaling and shift factors), CLIP ViT-L/14, OpenCLIP ViT-bigG/14 (SD3), T5-XXL v1.1 encoder,
and the FlowMatchEulerDiscreteScheduler (FLUX.1-dev: resolution-dependent "dynamic" shift, base 0.5,
max 1.15; schnell: no shift; SD3: shift 3.0). The transformer parameter counts in the table are
what diffusers 0.42.1 builds from them on the meta device (tests/test_flow_models.py checks each),
the numbers the issue tracker measured. Weights are never downloaded: the meta-device builds are for
dry runs, the tiny ones for tests (seconds on a CPU).

No T5 tokenizer ships offline, so the tiny pipelines carry `erase.tokenizer.t5_tokenizer()` (a small
Unigram vocabulary built in code), saved with the pipeline like any other component.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from erase.tokenizer import CLIP_MAX_LENGTH, CLIP_VOCAB_SIZE, clip_tokenizer, openclip_tokenizer, t5_tokenizer

T5_XXL_VOCAB = 32128

FLUX_TRANSFORMERS = {
    "flux-dev": {"attention_head_dim": 128, "axes_dims_rope": (16, 56, 56), "guidance_embeds": True, "in_channels": 64,
                 "joint_attention_dim": 4096, "num_attention_heads": 24, "num_layers": 19, "num_single_layers": 38,
                 "patch_size": 1, "pooled_projection_dim": 768},
    "tiny-flux": {"attention_head_dim": 8, "axes_dims_rope": (2, 2, 4), "guidance_embeds": True, "in_channels": 16,
                  "joint_attention_dim": 32, "num_attention_heads": 2, "num_layers": 2, "num_single_layers": 2,
                  "patch_size": 1, "pooled_projection_dim": 32},
}
FLUX_TRANSFORMERS["flux-schnell"] = dict(FLUX_TRANSFORMERS["flux-dev"], guidance_embeds=False)

SD3_TRANSFORMERS = {
    "sd3-medium": {"attention_head_dim": 64, "caption_projection_dim": 1536, "in_channels": 16, "joint_attention_dim": 4096,
                   "num_attention_heads": 24, "num_layers": 24, "out_channels": 16, "patch_size": 2,
                   "pooled_projection_dim": 2048, "pos_embed_max_size": 192, "sample_size": 128},
    "sd35-medium": {"attention_head_dim": 64, "caption_projection_dim": 1536, "dual_attention_layers": tuple(range(13)),
                    "in_channels": 16, "joint_attention_dim": 4096, "num_attention_heads": 24, "num_layers": 24,
                    "out_channels": 16, "patch_size": 2, "pooled_projection_dim": 2048, "pos_embed_max_size": 384,
                    "qk_norm": "rms_norm", "sample_size": 128},
    "sd35-large": {"attention_head_dim": 64, "caption_projection_dim": 2432, "in_channels": 16, "joint_attention_dim": 4096,
                   "num_attention_heads": 38, "num_layers": 38, "out_channels": 16, "patch_size": 2,
                   "pooled_projection_dim": 2048, "pos_embed_max_size": 192, "qk_norm": "rms_norm", "sample_size": 128},
    # tiny: CLIP-L 32 + CLIP-G 48 pooled (80), T5 96 = joint attention width; 16 px latents, 32 px images
    "tiny-sd3": {"attention_head_dim": 8, "caption_projection_dim": 16, "in_channels": 4, "joint_attention_dim": 96,
                 "num_attention_heads": 2, "num_layers": 2, "out_channels": 4, "patch_size": 2,
                 "pooled_projection_dim": 80, "pos_embed_max_size": 16, "qk_norm": "rms_norm", "sample_size": 16},
}

# scheduler_config.json of each published folder
FLUX_DEV_SCHEDULER = {"base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096, "max_shift": 1.15,
                      "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True}
FLUX_SCHNELL_SCHEDULER = {"base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096, "max_shift": 1.15,
                          "num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": False}
SD3_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0}

# (latent channels, scaling factor, shift factor): FLUX.1's and SD3's 16-channel VAEs
_VAE = {"flux": (16, 0.3611, 0.1159), "sd3": (16, 1.5305, 0.0609)}


def vae_config(family: str, tiny: bool) -> dict:
    latent, scaling, shift = _VAE[family]
    blocks = (32, 64) if tiny else (128, 256, 512, 512)
    return {
        "in_channels": 3, "out_channels": 3, "latent_channels": 4 if tiny else latent, "block_out_channels": blocks,
        "down_block_types": ("DownEncoderBlock2D",) * len(blocks), "up_block_types": ("UpDecoderBlock2D",) * len(blocks),
        "layers_per_block": 1 if tiny else 2, "norm_num_groups": 32, "sample_size": 32 if tiny else 1024,
        "scaling_factor": scaling, "shift_factor": shift, "use_quant_conv": False, "use_post_quant_conv": False,
        "force_upcast": True, "mid_block_add_attention": True, "act_fn": "silu",
    }


def clip_l_config(tiny: bool) -> CLIPTextConfig:
    """OpenAI CLIP ViT-L/14's text tower (FLUX's `text_encoder`, SD3's first)."""
    w, layers, heads = (32, 2, 4) if tiny else (768, 12, 12)
    return CLIPTextConfig(vocab_size=CLIP_VOCAB_SIZE, hidden_size=w, intermediate_size=4 * w, num_hidden_layers=layers,
                          num_attention_heads=heads, max_position_embeddings=CLIP_MAX_LENGTH, hidden_act="quick_gelu",
                          projection_dim=w, bos_token_id=49406, eos_token_id=49407, pad_token_id=1)


def clip_g_config(tiny: bool) -> CLIPTextConfig:
    """OpenCLIP ViT-bigG/14's text tower (SD3's `text_encoder_2`): GELU, all 32 layers, with projection."""
    w, layers, heads = (48, 2, 4) if tiny else (1280, 32, 20)
    return CLIPTextConfig(vocab_size=CLIP_VOCAB_SIZE, hidden_size=w, intermediate_size=4 * w, num_hidden_layers=layers,
                          num_attention_heads=heads, max_position_embeddings=CLIP_MAX_LENGTH, hidden_act="gelu",
                          projection_dim=w, bos_token_id=49406, eos_token_id=49407, pad_token_id=0)


def t5_config(width: int | None, vocab: int) -> T5Config:
    """google/t5-v1_1-xxl (width None; gated GELU, 24 layers, 64 heads of 64) or a tiny one of that shape."""
    if width is None:
        return T5Config(vocab_size=vocab, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_decoder_layers=24,
                        num_heads=64, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                        feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, tie_word_embeddings=False,
                        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return T5Config(vocab_size=vocab, d_model=width, d_kv=8, d_ff=2 * width, num_layers=2, num_decoder_layers=2,
                    num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=32,
                    feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, tie_word_embeddings=False,
                    decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)


def flow_pipeline(size: str, ctx):
    """FluxPipeline or StableDiffusion3Pipeline of `size` (built under `ctx`: the meta device or none)."""
    tiny = size.startswith("tiny")
    if size in FLUX_TRANSFORMERS:
        t5_tok = t5_tokenizer(77) if tiny else None
        with ctx:
            transformer = FluxTransformer2DModel(**FLUX_TRANSFORMERS[size])
            vae = AutoencoderKL(**vae_config("flux", tiny))
            text_encoder = CLIPTextModel(clip_l_config(tiny))
            text_encoder_2 = T5EncoderModel(t5_config(32 if tiny else None, len(t5_tok) if tiny else T5_XXL_VOCAB))
        sched = FLUX_SCHNELL_SCHEDULER if size == "flux-schnell" else FLUX_DEV_SCHEDULER
        _eval(transformer, vae, text_encoder, text_encoder_2)
        return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**sched), vae=vae, text_encoder=text_encoder,
                            tokenizer=clip_tokenizer(), text_encoder_2=text_encoder_2,
                            tokenizer_2=t5_tok if tiny else t5_tokenizer(256), transformer=transformer)
    t5_tok = t5_tokenizer(77)
    with ctx:
        transformer = SD3Transformer2DModel(**SD3_TRANSFORMERS[size])
        vae = AutoencoderKL(**vae_config("sd3", tiny))
        text_encoder = CLIPTextModelWithProjection(clip_l_config(tiny))
        text_encoder_2 = CLIPTextModelWithProjection(clip_g_config(tiny))
        text_encoder_3 = T5EncoderModel(t5_config(96 if tiny else None, len(t5_tok) if tiny else T5_XXL_VOCAB))
    _eval(transformer, vae, text_encoder, text_encoder_2, text_encoder_3)
    if not text_encoder.text_projection.weight.is_meta:
        # SD3 reads CLIP-L's pooled output unprojected: the identity (diffusers' single-file reader sets it too)
        with torch.no_grad():
            text_encoder.text_projection.weight.copy_(torch.eye(text_encoder.config.hidden_size))
    return StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER), vae=vae, text_encoder=text_encoder,
        tokenizer=clip_tokenizer(), text_encoder_2=text_encoder_2, tokenizer_2=openclip_tokenizer(),
        text_encoder_3=text_encoder_3, tokenizer_3=t5_tok, transformer=transformer)


def _eval(*modules) -> None:
    """Inference mode, as from_pretrained leaves a model (T5's dropout would otherwise be active)."""
    for m in modules:
        m.eval()
