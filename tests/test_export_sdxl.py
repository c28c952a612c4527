"""SDXL export: original-layout single file, LoRA and card, checked with vanilla diffusers.

The tiny SDXL is the builder's "tiny-sdxl": its encoders differ in width (32, 64) as SDXL's do
(768, 1280), because diffusers' single-file reader tells them apart by width
(create_diffusers_clip_model_from_ldm: the CLIP-L branch wins when the position-embedding widths
match); test_single_file_loads_back_identically_in_vanilla_diffusers checks every encoder's weights.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from diffusers import (
    DiffusionPipeline,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
)
from diffusers.loaders.single_file_utils import (
    infer_diffusers_model_type,
    is_clip_sdxl_model,
    is_open_clip_sdxl_model,
)
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig, inject_adapter_in_model
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open

from erase.export.card import build_card
from erase.export.lora import check_lora_file
from erase.export.run import read_run
from erase.export.single_file import original_state, write_original_config, write_single_file
from erase.models.builder import build_pipeline
from erase.models.family import family_of

FP32_ATOL = 1e-5  # same tensors, same ops: measured 0.0 (as tests/test_single_file.py)
COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


def tiny_sdxl(seed: int = 0, prediction: str = "epsilon") -> StableDiffusionXLPipeline:
    """Builder "tiny-sdxl" (a 32-wide CLIP and a 64-wide OpenCLIP encoder), optionally v-prediction."""
    pipe = build_pipeline("tiny-sdxl", seed=seed)
    if prediction != "epsilon":
        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, prediction_type=prediction)
    return pipe


def images(pipe) -> np.ndarray:
    gen = torch.Generator("cpu").manual_seed(0)
    return pipe("a red car", num_inference_steps=2, generator=gen, output_type="np").images


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """tiny SDXL -> diffusers folder + single file; vanilla from_single_file with the folder as config."""
    root = tmp_path_factory.mktemp("sdxl")
    pipe = tiny_sdxl()
    pipe.save_pretrained(root / "folder")
    path = write_single_file(pipe, root / "model.safetensors")
    loaded = StableDiffusionXLPipeline.from_single_file(str(path), config=str(root / "folder"), local_files_only=True)
    loaded.set_progress_bar_config(disable=True)
    return pipe, path, loaded, root


def test_single_file_loads_back_identically_in_vanilla_diffusers(exported):
    pipe, _, loaded, _ = exported
    for name in COMPONENTS:
        a, b = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        a = {k: v for k, v in a.items() if not k.endswith("position_ids")}
        assert set(a) <= set(b), name
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert np.abs(images(loaded) - images(pipe)).max() <= FP32_ATOL


def test_single_file_has_sgm_prefixes_and_modelspec(exported):
    pipe, path, _, root = exported
    with safe_open(str(path), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert {k.split(".")[0] for k in keys} == {"model", "first_stage_model", "conditioner"}
    assert "conditioner.embedders.1.model.text_projection" in keys and "model.diffusion_model.label_emb.0.0.weight" in keys
    assert not any(k.startswith("cond_stage_model.") for k in keys)
    with safe_open(str(path), "pt") as f:  # as in sd_xl_base_1.0.safetensors, though diffusers keeps neither
        ids = f.get_tensor("conditioner.embedders.0.transformer.text_model.embeddings.position_ids")
        assert ids.dtype == torch.int64 and ids.tolist() == [list(range(77))]
        assert f.get_slice("conditioner.embedders.1.model.logit_scale").get_shape() == []
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base"
    assert meta["modelspec.prediction_type"] == "epsilon" and "v_pred" not in keys
    assert meta["modelspec.resolution"] == "32x32"
    assert write_original_config(pipe, root / "x.yaml") is None  # SDXL needs no companion YAML


def test_v_prediction_sdxl_gets_the_v_pred_marker(tmp_path):
    pipe = tiny_sdxl(prediction="v_prediction")
    path = write_single_file(pipe, tmp_path / "v.safetensors")
    with safe_open(str(path), "pt") as f:
        assert "v_pred" in f.keys() and f.get_slice("v_pred").get_shape() == [0]  # noqa: SIM118
        assert f.metadata()["modelspec.prediction_type"] == "v"
    pipe.save_pretrained(tmp_path / "folder")
    loaded = StableDiffusionXLPipeline.from_single_file(str(path), config=str(tmp_path / "folder"), local_files_only=True)
    assert loaded.scheduler.config.prediction_type == "v_prediction"


def test_real_size_sdxl_has_the_published_keys_and_shapes():
    """Keys and shapes of Stability's sd_xl_base_1.0.safetensors (meta device: nothing allocated),
    including the ones diffusers' model-type detection reads."""
    pipe = build_pipeline("sdxl", device="meta")
    original = original_state(pipe)
    expected = {
        "model.diffusion_model.label_emb.0.0.weight": (1280, 2816),
        "model.diffusion_model.label_emb.0.2.weight": (1280, 1280),
        "model.diffusion_model.time_embed.0.weight": (1280, 320),
        "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
        "model.diffusion_model.input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight": (640, 2048),
        "model.diffusion_model.input_blocks.8.1.transformer_blocks.9.attn2.to_v.weight": (1280, 2048),
        "model.diffusion_model.input_blocks.4.1.proj_in.weight": (640, 640),
        "model.diffusion_model.middle_block.1.transformer_blocks.9.ff.net.2.weight": (1280, 5120),
        "model.diffusion_model.output_blocks.2.2.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.5.2.conv.weight": (640, 640, 3, 3),
        "model.diffusion_model.output_blocks.8.0.skip_connection.weight": (320, 640, 1, 1),
        "model.diffusion_model.out.2.weight": (4, 320, 3, 3),
        "first_stage_model.decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
        "first_stage_model.encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight": (77, 768),
        "conditioner.embedders.0.transformer.text_model.encoder.layers.11.mlp.fc1.weight": (3072, 768),
        "conditioner.embedders.1.model.positional_embedding": (77, 1280),
        "conditioner.embedders.1.model.token_embedding.weight": (49408, 1280),
        "conditioner.embedders.1.model.text_projection": (1280, 1280),
        "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight": (3840, 1280),
        "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": (1280,),
        "conditioner.embedders.1.model.ln_final.weight": (1280,),
    }
    for key, shape in expected.items():
        assert tuple(original[key].shape) == shape, key
    assert "model.diffusion_model.output_blocks.8.2.conv.weight" not in original  # no upsampler at full resolution
    assert "model.diffusion_model.input_blocks.1.1.proj_in.weight" not in original  # first level: no attention
    assert not any(".resblocks.32." in k for k in original)
    assert is_clip_sdxl_model(original) and is_open_clip_sdxl_model(original)
    assert infer_diffusers_model_type(original) == "xl_base"
    unet = sum(v.numel() for k, v in original.items() if k.startswith("model.diffusion_model."))
    assert unet == 2_567_463_684


def test_lora_saved_by_the_xl_pipeline_loads_in_vanilla_diffusers(tmp_path):
    """LoRA on the UNet and both text encoders -> StableDiffusionXLPipeline.save_lora_weights ->
    our check -> vanilla load_lora_weights on the base gives the fused model's image."""
    base = tiny_sdxl()
    ref = copy.deepcopy(base)
    torch.manual_seed(3)
    layers = {}
    for name, targets in (("unet", ["to_q", "to_k", "to_v", "to_out.0"]), ("text_encoder", ["q_proj", "v_proj"]),
                          ("text_encoder_2", ["q_proj", "v_proj"])):
        module = getattr(ref, name)
        # peft directly: transformers' add_adapter wants a newer peft than diffusers does
        inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights=False), module)
        layers[f"{name}_lora_layers"] = convert_state_dict_to_diffusers(get_peft_model_state_dict(module))
    StableDiffusionXLPipeline.save_lora_weights(tmp_path, **layers, safe_serialization=True)
    lora_file = tmp_path / "pytorch_lora_weights.safetensors"
    with safe_open(str(lora_file), "pt") as f:
        assert {k.split(".")[0] for k in f.keys()} == {"unet", "text_encoder", "text_encoder_2"}  # noqa: SIM118
    assert check_lora_file(lora_file) > 0
    want = images(ref)
    ref.fuse_lora(components=["unet", "text_encoder", "text_encoder_2"], lora_scale=1.0)
    fused = images(ref)
    base.load_lora_weights(str(tmp_path))
    got = images(base)
    assert np.abs(want - images(tiny_sdxl())).max() > 1e-3  # the LoRA changes the image
    assert np.abs(got - want).max() <= FP32_ATOL * 10 and np.abs(fused - want).max() <= FP32_ATOL * 10


def test_card_names_the_xl_pipeline_and_license(tmp_path):
    pipe = tiny_sdxl()
    pipe.save_pretrained(tmp_path / "m")
    card = build_card(read_run(tmp_path / "m"), "m", single_file="m.safetensors", family=family_of(pipe))
    text = str(card)
    assert "StableDiffusionXLPipeline.from_pretrained" in text and "StableDiffusionPipeline" not in text
    assert "(SDXL, epsilon prediction)" in text
    assert card.data.license == "openrail++" and "stable-diffusion-xl" in card.data.tags
    assert card.data.to_dict()["architecture"] == "SDXL"


@pytest.mark.parametrize("size, base, label, pipeline, license, tag", [
    ("tiny", "CompVis/stable-diffusion-v1-4", "SD-1.x, epsilon prediction", "StableDiffusionPipeline",
     "creativeml-openrail-m", "stable-diffusion"),
    ("tiny-sd2", "stabilityai/stable-diffusion-2-1", "SD-2.x, v-prediction", "StableDiffusionPipeline", "openrail++",
     "v-prediction"),
    ("tiny-sdxl", "stabilityai/stable-diffusion-xl-base-1.0", "SDXL, epsilon prediction", "StableDiffusionXLPipeline",
     "openrail++", "stable-diffusion-xl"),
])
def test_card_per_family(tmp_path, size, base, label, pipeline, license, tag):
    """Architecture line, pipeline class, license default and tags follow the pipeline, for a run on a Hub base."""
    from erase.export.run import RunInfo
    from erase.models.family import prediction_type

    pipe = build_pipeline(size)
    run = RunInfo(root=tmp_path, model_dir=tmp_path, meta={"base_model": base, "concept": "nudity"})
    card = build_card(run, "m", family=family_of(pipe), prediction=prediction_type(pipe))
    text = str(card)
    assert f"({label})" in text and f"{pipeline}.from_pretrained" in text
    assert card.data.license == license and tag in card.data.tags
    assert card.data.base_model == base and card.data.pipeline_tag == "text-to-image"


def test_export_run_of_an_sdxl_folder(tmp_path):
    """`erase export` of an SDXL folder: vanilla DiffusionPipeline.from_pretrained picks the XL class."""
    from erase.export import export_run

    pipe = tiny_sdxl()
    pipe.save_pretrained(tmp_path / "m")
    result = export_run(tmp_path / "m", tmp_path / "out", single_file=True)
    assert result.pipeline == "StableDiffusionXLPipeline"
    loaded = DiffusionPipeline.from_pretrained(result.out, local_files_only=True)
    assert type(loaded) is StableDiffusionXLPipeline
    loaded.set_progress_bar_config(disable=True)
    assert np.abs(images(loaded) - images(pipe)).max() <= FP32_ATOL
    assert (result.out / "out.safetensors").is_file() and not (result.out / "out.yaml").exists()


def test_export_of_an_sdxl_folder_with_fp16_variant_and_single_file(tmp_path):
    """The export's own steps for SDXL (erase's loader, folder, fp16 variant, single file, card), no stand-ins."""
    import erase.export.diffusers_folder as folder_export

    pipe = tiny_sdxl()
    pipe.save_pretrained(tmp_path / "m")
    result = folder_export.export_run(tmp_path / "m", tmp_path / "out", single_file=True, fp16=True)
    assert result.pipeline == "StableDiffusionXLPipeline" and result.original_config is None
    assert {"text_encoder_2/model.safetensors", "text_encoder_2/model.fp16.safetensors", "out.safetensors"} <= set(result.files)
    loaded = DiffusionPipeline.from_pretrained(result.out, local_files_only=True)
    assert type(loaded) is StableDiffusionXLPipeline and loaded.text_encoder_2.dtype == torch.float32
    loaded.set_progress_bar_config(disable=True)
    assert np.abs(images(loaded) - images(pipe)).max() <= FP32_ATOL
    with safe_open(str(result.out / "out.safetensors"), "pt") as f:
        assert f.get_slice("conditioner.embedders.1.model.text_projection").get_dtype() == "F16"
    assert "StableDiffusionXLPipeline.from_single_file" in (result.out / "README.md").read_text()
