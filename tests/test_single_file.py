"""The original-layout single file: diffusers' own reader maps it back exactly, for any SD-1.x shape."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    CHECKPOINT_KEY_NAMES,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    infer_diffusers_model_type,
    is_clip_model,
)
from safetensors import safe_open

from erase.cli import main
from erase.errors import EraseError
from erase.export.single_file import clip_to_original, unet_to_original, vae_to_original
from erase.models.builder import build_pipeline, unet_config, vae_config

# Same tensors, same ops: measured max |diff| 0.0; fp16 single file run in fp32: 5.6e-4.
FP32_ATOL = 1e-5
FP16_ATOL = 2e-2


@pytest.fixture(scope="module")
def run(sample_images, make_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("run") / "run"
    pipe, _ = make_run(root)
    return root, pipe, sample_images(pipe)


def _from_single_file(path, config, **kw):
    pipe = StableDiffusionPipeline.from_single_file(str(path), config=str(config), local_files_only=True,
                                                    safety_checker=None, **kw)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_single_file_roundtrips_through_from_single_file(sample_images, run, tmp_path):
    root, pipe, ref = run
    out = tmp_path / "erased-x"
    assert main(["export", str(root), "--to", str(out), "--single-file"]) == 0
    path = out / "erased-x.safetensors"
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
    assert {k.split(".")[0] for k in keys} == {"model", "first_stage_model", "cond_stage_model"}
    assert "cond_stage_model.transformer.text_model.final_layer_norm.weight" in keys
    loaded = _from_single_file(path, out)
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert np.abs(sample_images(loaded) - ref).max() <= FP32_ATOL


def test_fp16_single_file(sample_images, run, tmp_path):
    root, _, ref = run
    out = tmp_path / "half"
    assert main(["export", str(root), "--to", str(out), "--single-file", "--fp16"]) == 0
    path = out / "half.safetensors"
    with safe_open(str(path), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}  # noqa: SIM118 - safe_open is not iterable
    loaded = _from_single_file(path, out, dtype=torch.float16)
    assert loaded.unet.dtype == torch.float16
    loaded.to(torch.float32)
    assert 0 < np.abs(sample_images(loaded) - ref).max() <= FP16_ATOL


@pytest.mark.parametrize("blocks, layers", [((32, 64), 2), ((32, 64, 64), 1), ((32, 32, 64, 64), 2)])
def test_any_sd1_shape_maps_back_exactly(blocks, layers):
    """Other depths/widths than the tiny model's: diffusers' reader recovers every tensor."""
    torch.manual_seed(0)
    n = len(blocks)
    ucfg = dict(unet_config("tiny"), block_out_channels=blocks, layers_per_block=layers,
                down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1))
    unet = UNet2DConditionModel(**ucfg)
    vcfg = dict(vae_config("tiny"), block_out_channels=blocks, down_block_types=("DownEncoderBlock2D",) * n,
                up_block_types=("UpDecoderBlock2D",) * n, layers_per_block=layers)
    vae = AutoencoderKL(**vcfg)
    original = {**unet_to_original(unet.state_dict(), unet.config), **vae_to_original(vae.state_dict(), vae.config)}
    for model, back in ((unet, convert_ldm_unet_checkpoint(original, dict(unet.config))),
                        (vae, convert_ldm_vae_checkpoint(original, dict(vae.config)))):
        ref = model.state_dict()
        assert back.keys() == ref.keys()
        assert all(torch.equal(back[k], ref[k]) for k in ref)


def test_sd15_architecture_gives_the_original_checkpoint_keys():
    """At real size (meta tensors, nothing allocated) the keys are v1-5-pruned.ckpt's, and
    from_single_file's shape-based guess says SD-1 ("v1") and finds the CLIP text encoder."""
    pipe = build_pipeline("sd15", device="meta")
    original = {**unet_to_original(pipe.unet.state_dict(), pipe.unet.config),
                **vae_to_original(pipe.vae.state_dict(), pipe.vae.config),
                **clip_to_original(pipe.text_encoder.state_dict())}
    expected = {  # key -> shape, as in the original SD-1.5 checkpoint
        "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
        "model.diffusion_model.input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "model.diffusion_model.input_blocks.4.0.skip_connection.weight": (640, 320, 1, 1),
        "model.diffusion_model.input_blocks.11.0.out_layers.3.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.middle_block.1.proj_out.weight": (1280, 1280, 1, 1),
        "model.diffusion_model.middle_block.2.emb_layers.1.weight": (1280, 1280),
        "model.diffusion_model.output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.8.2.conv.weight": (640, 640, 3, 3),
        "model.diffusion_model.output_blocks.11.0.skip_connection.weight": (320, 640, 1, 1),
        "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.ff.net.0.proj.weight": (2560, 320),
        "model.diffusion_model.time_embed.2.weight": (1280, 1280),
        "model.diffusion_model.out.2.weight": (4, 320, 3, 3),
        "first_stage_model.encoder.down.0.downsample.conv.weight": (128, 128, 3, 3),
        "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        "first_stage_model.encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "first_stage_model.decoder.mid.block_2.conv2.weight": (512, 512, 3, 3),
        "first_stage_model.decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
        "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight": (128, 256, 1, 1),
        "first_stage_model.decoder.up.0.block.2.conv2.weight": (128, 128, 3, 3),
        "first_stage_model.decoder.norm_out.weight": (128,),
        "first_stage_model.quant_conv.weight": (8, 8, 1, 1),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
        "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight": (768, 3072),
    }
    for key, shape in expected.items():
        assert tuple(original[key].shape) == shape, key
    assert "model.diffusion_model.input_blocks.12.0.in_layers.0.weight" not in original
    assert "first_stage_model.decoder.up.0.upsample.conv.weight" not in original
    assert "first_stage_model.encoder.down.3.downsample.conv.weight" not in original
    assert CHECKPOINT_KEY_NAMES["v1"] in original and is_clip_model(original)
    assert infer_diffusers_model_type(original) == "v1"


def test_non_sd1_unet_is_refused():
    unet = UNet2DConditionModel(**dict(unet_config("tiny"), class_embed_type="timestep"))
    with pytest.raises(EraseError, match="class_embed_type"):
        unet_to_original(unet.state_dict(), unet.config)
