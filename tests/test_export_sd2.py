"""SD-2.x (v-prediction) export: diffusers folder, single file with its v-prediction signals, card."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from diffusers import DiffusionPipeline, StableDiffusionPipeline
from diffusers.loaders.single_file_utils import (
    create_unet_diffusers_config_from_ldm,
    create_vae_diffusers_config_from_ldm,
)
from safetensors import safe_open

from erase.cli import main
from erase.export.single_file import OPENCLIP_PREFIX, original_config
from erase.models.builder import build_pipeline
from erase.models.family import family_of
from erase.models.loading import load_pipeline

FP32_ATOL = 1e-5  # same tensors, same ops: measured 0.0 (as tests/test_single_file.py)


def images(pipe) -> np.ndarray:
    gen = torch.Generator("cpu").manual_seed(0)
    return pipe("a red car", num_inference_steps=2, generator=gen, output_type="np").images


def same_weights(a, b) -> bool:
    for name in ("unet", "vae", "text_encoder"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        if sa.keys() != sb.keys() or not all(torch.equal(sa[k], sb[k]) for k in sa):
            return False
    return True


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd2")
    pipe = build_pipeline("tiny-sd2")
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    with torch.no_grad():  # a non-zero norm bias, so nothing below passes by zeros
        pipe.unet.up_blocks[1].attentions[0].transformer_blocks[0].norm1.bias.normal_()
    pipe.save_pretrained(root / "m")
    assert main(["export", str(root / "m"), "--to", str(root / "out"), "--single-file"]) == 0
    return pipe, root / "out"


def test_folder_loads_as_v_prediction_in_vanilla_diffusers(exported):
    pipe, out = exported
    loaded = DiffusionPipeline.from_pretrained(out, local_files_only=True)
    assert type(loaded) is StableDiffusionPipeline
    assert loaded.scheduler.config.prediction_type == "v_prediction"
    assert same_weights(pipe, loaded)
    loaded.set_progress_bar_config(disable=True)
    assert np.abs(images(loaded) - images(pipe)).max() <= FP32_ATOL


def test_single_file_loads_back_identically_and_carries_v(exported):
    pipe, out = exported
    path = out / "out.safetensors"
    with safe_open(str(path), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert "v_pred" in keys and OPENCLIP_PREFIX + "positional_embedding" in keys
    assert meta["modelspec.prediction_type"] == "v" and meta["modelspec.architecture"] == "stable-diffusion-v2-768-v"
    assert meta["layout"] == "ldm-stable-diffusion-v2"
    loaded = StableDiffusionPipeline.from_single_file(str(path), config=str(out), local_files_only=True)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.scheduler.config.prediction_type == "v_prediction"
    assert same_weights(pipe, loaded)
    assert np.abs(images(loaded) - images(pipe)).max() <= FP32_ATOL


def test_companion_yaml_describes_the_model(exported, monkeypatch):
    """<name>.yaml: diffusers' own YAML reader rebuilds the UNet/VAE configs from it, and erase
    loads the single file offline with it as the only config, predicting v."""
    pipe, out = exported
    original = yaml.safe_load((out / "out.yaml").read_text())
    assert original["model"]["params"]["parameterization"] == "v"
    with safe_open(str(out / "out.safetensors"), "pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    unet = create_unet_diffusers_config_from_ldm(original, state)
    for key in ("block_out_channels", "layers_per_block", "cross_attention_dim", "attention_head_dim",
                "use_linear_projection", "down_block_types", "up_block_types", "transformer_layers_per_block"):
        want = pipe.unet.config[key]
        assert (list(unet[key]) if isinstance(unet[key], (list, tuple)) else unet[key]) == \
            (list(want) if isinstance(want, (list, tuple)) else want), key
    vae = create_vae_diffusers_config_from_ldm(original, state)
    for key in ("block_out_channels", "latent_channels", "layers_per_block", "scaling_factor"):
        assert (list(vae[key]) if isinstance(vae[key], (list, tuple)) else vae[key]) == \
            (list(pipe.vae.config[key]) if isinstance(pipe.vae.config[key], (list, tuple)) else pipe.vae.config[key]), key
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_pipeline(out / "out.safetensors", config=out / "out.yaml")
    assert loaded.scheduler.config.prediction_type == "v_prediction"
    assert same_weights(pipe, loaded)


def test_real_size_sd21_yaml_is_stabilitys_v2_inference_v():
    """At SD-2.1 (768-v) size the generated YAML holds the published v2-inference-v.yaml values."""
    params = original_config(build_pipeline("sd21", device="meta"))["model"]["params"]
    unet, dd = params["unet_config"]["params"], params["first_stage_config"]["params"]["ddconfig"]
    assert params["parameterization"] == "v" and params["scale_factor"] == pytest.approx(0.18215)
    assert (params["linear_start"], params["linear_end"], params["timesteps"]) == (0.00085, 0.012, 1000)
    assert unet["model_channels"] == 320 and unet["channel_mult"] == [1, 2, 4, 4]
    assert unet["attention_resolutions"] == [1, 2, 4]  # the same set as the published [4, 2, 1]
    assert unet["num_head_channels"] == 64 and unet["num_res_blocks"] == 2 and unet["transformer_depth"] == 1
    assert unet["context_dim"] == 1024 and unet["use_linear_in_transformer"] is True and unet["image_size"] == 96
    assert (dd["ch"], dd["ch_mult"], dd["num_res_blocks"], dd["z_channels"]) == (128, [1, 2, 4, 4], 2, 4)
    assert params["cond_stage_config"]["params"]["layer"] == "penultimate"


def test_epsilon_sd2_gets_no_parameterization_and_no_marker(tmp_path):
    pipe = build_pipeline("tiny-sd2")
    pipe.scheduler.register_to_config(prediction_type="epsilon")
    assert "parameterization" not in original_config(pipe)["model"]["params"]
    from erase.export.single_file import write_single_file

    with safe_open(str(write_single_file(pipe, tmp_path / "e.safetensors")), "pt") as f:
        assert "v_pred" not in f.keys()  # noqa: SIM118
        assert f.metadata()["modelspec.architecture"] == "stable-diffusion-v2-512"


def test_card_says_sd2_v_prediction(exported):
    pipe, out = exported
    text = (out / "README.md").read_text()
    assert "(SD-2.x, v-prediction)" in text and "`out.yaml`" in text and "v_pred" in text
    assert "StableDiffusionPipeline.from_single_file" in text and "license: openrail++" in text
    assert "- v-prediction" in text and family_of(pipe).label == "SD-2.x"
