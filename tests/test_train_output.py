"""Run outputs: LoRA in diffusers format + fused model; mixed precision keeps untrained weights exact."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from diffusers import DiffusionPipeline, StableDiffusionPipeline
from safetensors.torch import load_file

from erase.cli import main
from erase.config import load_config
from erase.errors import EraseError
from erase.models.builder import build_pipeline
from erase.train.config import RunConfig
from erase.train.trainer import Trainer

LORA_ATOL = 1e-4  # base + live adapters vs fused weights: float rounding only (tests/test_export.py)

SALUN_LORA = {
    "model": "builder:tiny",
    "method": "salun",
    "objective": {"alpha": 0.5, "mask_fraction": 0.5},
    "params": {"train": "xattn", "lora": {"rank": 2, "alpha": 4}},
    "data": {"forget": {"prompts": ["a handwritten three"], "samples_per_prompt": 2},
             "retain": {"prompts": ["a handwritten seven", "the number 1"]}, "generate_steps": 2},
    "weighting": {"kind": "static", "tau": 0.01, "static_draws": 2},
    "train": {"steps": 2, "batch_size": 2, "lr": 1.0e-2},
}


def _run(tmp_path: Path, cfg: dict, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / name
    Trainer(load_config(RunConfig, path), out, str(path)).run()
    return out


def test_lora_run_writes_diffusers_lora_and_fused_model(tiny_pipeline, tmp_path):
    out = _run(tmp_path, SALUN_LORA, "lora")
    lora_file = out / "lora" / "pytorch_lora_weights.safetensors"
    keys = load_file(str(lora_file))
    assert keys and all(k.startswith("unet.") and "attn2" in k for k in keys)
    assert min(p.name for p in (out / "cache").iterdir()).startswith("forget_images")
    # vanilla diffusers: base + LoRA file, fused == our RUN/model
    pipe = tiny_pipeline
    base = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    pipe.load_lora_weights(str(out / "lora"))
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    fused_ref = pipe.unet.state_dict()
    model = StableDiffusionPipeline.from_pretrained(out / "model", safety_checker=None)
    ours = model.unet.state_dict()
    assert set(ours) == set(base)
    changed = [k for k in ours if not torch.allclose(ours[k], base[k])]
    assert changed and all("attn2" in k for k in changed)
    assert all(torch.allclose(ours[k], fused_ref[k], atol=1e-6) for k in ours)


def test_bf16_run_keeps_untrained_weights_exact(tiny_pipeline, tmp_path):
    cfg = {"model": "builder:tiny", "method": "esd", "objective": {"ddim_steps": 2},
           "data": {"forget": {"prompts": ["a handwritten three"]}},
           "train": {"steps": 1, "batch_size": 1, "lr": 1.0e-3, "mixed_precision": "bf16"}}
    out = _run(tmp_path, cfg, "bf16")
    base = tiny_pipeline
    model = StableDiffusionPipeline.from_pretrained(out / "model", safety_checker=None)
    for name in ("vae", "text_encoder"):
        ref = getattr(base, name).state_dict()
        got = getattr(model, name).state_dict()
        assert all(got[k].dtype == torch.float32 and torch.equal(got[k], ref[k]) for k in ref)
    u, ub = model.unet.state_dict(), base.unet.state_dict()
    assert any(not torch.equal(u[k], ub[k]) for k in u if "attn2" in k)


@pytest.mark.parametrize("size, spec, components", [
    ("tiny", "text_encoder_layers", {"text_encoder"}),
    ("tiny-sdxl", "text_encoder_layers", {"text_encoder"}),
    ("tiny-sdxl", "text_encoder_layers+text_encoder_2_layers", {"text_encoder", "text_encoder_2"}),
])
def test_text_encoder_lora_trains_and_exports(tmp_path, size, spec, components, sample_images):
    """A LoRA on the text encoder's layers (AdvUnlearn's set; on SDXL CLIP-L, with `text_encoder_2_layers`
    OpenCLIP bigG too) trains for one step, RUN/lora holds those components' layers, `erase export` copies
    them, and vanilla diffusers' base + load_lora_weights draws the fused RUN/model's images."""
    cfg = {"model": f"builder:{size}", "method": "ga", "params": {"train": spec, "lora": {"rank": 4}},
           "data": {"forget": {"prompts": ["a handwritten three"], "samples_per_prompt": 1}, "generate_steps": 2},
           "train": {"steps": 1, "batch_size": 1, "lr": 5.0e-2}}
    out = _run(tmp_path, cfg, "te-lora")
    keys = load_file(str(out / "lora" / "pytorch_lora_weights.safetensors"))
    assert keys and {k.split(".")[0] for k in keys} == components
    assert main(["export", str(out), "--to", str(tmp_path / "export")]) == 0
    assert load_file(str(tmp_path / "export" / "pytorch_lora_weights.safetensors")).keys() == keys.keys()
    fused = DiffusionPipeline.from_pretrained(out / "model", local_files_only=True)
    want = sample_images(fused)
    base = build_pipeline(size)
    assert np.abs(sample_images(base) - want).max() > 10 * LORA_ATOL  # the LoRA changed the text encoder
    base.load_lora_weights(str(tmp_path / "export"))
    assert np.abs(sample_images(base) - want).max() <= LORA_ATOL


def test_text_encoder_2_sets_train_sdxl_openclip_only(tmp_path):
    """`text_encoder_2_layers` without LoRA: only OpenCLIP bigG's layers change in RUN/model; an SD-1 model
    has no second encoder and the set is refused by name."""
    cfg = {"model": "builder:tiny-sdxl", "method": "ga", "params": {"train": "text_encoder_2_layers"},
           "data": {"forget": {"prompts": ["a handwritten three"], "samples_per_prompt": 1}, "generate_steps": 2},
           "train": {"steps": 1, "batch_size": 1, "lr": 1.0e-2}}
    out = _run(tmp_path, cfg, "te2")
    model, base = DiffusionPipeline.from_pretrained(out / "model", local_files_only=True), build_pipeline("tiny-sdxl")
    for name in ("unet", "text_encoder", "vae"):
        ref = getattr(base, name).state_dict()
        assert all(torch.equal(v, ref[k]) for k, v in getattr(model, name).state_dict().items()), name
    ref = base.text_encoder_2.state_dict()
    changed = {k for k, v in model.text_encoder_2.state_dict().items() if not torch.equal(v, ref[k])}
    assert changed and all(".encoder.layers." in k or "final_layer_norm" in k for k in changed)
    with pytest.raises(EraseError, match="text_encoder_2_layers.*does not have"):
        _run(tmp_path, {**cfg, "model": "builder:tiny"}, "sd1-te2")
