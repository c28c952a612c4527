"""SD-2.x (v-prediction) and SDXL end to end, as users run it: `erase train` (a LoRA run on the UNet's
cross-attention and the text encoder) -> `erase export --single-file` (diffusers folder, original-layout
single file, LoRA) -> vanilla diffusers loads each (`DiffusionPipeline.from_pretrained`,
`from_single_file(path, config=folder)`, `load_lora_weights` on the base) -> the same image for a fixed
seed as erase's own generation from the trained model -> `erase audit` of the export with an attack.

One trained run and one export per family (module-scoped), 2 training steps on the tiny builders.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from diffusers import DDIMScheduler, DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors import safe_open
from test_sdxl import check_attack_content

from erase.audit.generate import GenSettings, sample
from erase.cli import main
from erase.models.builder import build_pipeline
from erase.models.core import Models
from erase.models.loading import load_pipeline

PROMPTS, SEEDS, STEPS, GUIDANCE = ["a handwritten three", "a red car"], [3, 11], 3, 4.0
FP32_ATOL = 1e-5  # same weights, same ops (tests/test_export_sdxl.py measured 0.0)
LORA_ATOL = 1e-4  # unfused adapters on the base vs fused weights: float rounding only (tests/test_export.py)

# family -> (builder size, pipeline class, the text encoder LoRA components expected in the LoRA file)
FAMILIES = {
    "sd2": ("tiny-sd2", StableDiffusionPipeline, {"unet", "text_encoder"}),
    "sdxl": ("tiny-sdxl", StableDiffusionXLPipeline, {"unet", "text_encoder"}),
}


def run_config(model: str) -> dict:
    return {
        "model": model, "method": "esd", "objective": {"variant": "x", "ddim_steps": 2},
        "params": {"train": "xattn+text_encoder_layers", "lora": {"rank": 4}},
        "data": {"forget": {"prompts": ["a handwritten three"], "samples_per_prompt": 2}, "generate_steps": 2},
        "train": {"steps": 2, "batch_size": 2, "lr": 5.0e-2, "seed": 0},
    }


@pytest.fixture(scope="module", params=list(FAMILIES))
def exported(request, tmp_path_factory):
    """(family, base folder, run folder, export folder): SD-2 trains from a saved folder, SDXL from
    `builder:tiny-sdxl` (the same weights as the saved base)."""
    family = request.param
    size = FAMILIES[family][0]
    root = tmp_path_factory.mktemp(family)
    build_pipeline(size).save_pretrained(root / "base")
    cfg = root / "run.yaml"
    cfg.write_text(yaml.safe_dump(run_config(str(root / "base") if family == "sd2" else f"builder:{size}")))
    assert main(["train", "--config", str(cfg), "--out", str(root / "run")]) == 0
    assert json.loads((root / "run" / "run.json").read_text())["status"] == "completed"
    assert main(["export", str(root / "run"), "--to", str(root / "out"), "--single-file"]) == 0
    return family, root / "base", root / "run", root / "out"


def erase_images(pipe) -> np.ndarray:
    """erase's own generation (the audit's sampler, DDIM) for PROMPTS and SEEDS."""
    size = int(pipe.unet.config.sample_size) * pipe.vae_scale_factor
    return sample(pipe, Models.from_pipeline(pipe).encode(PROMPTS), torch.full((len(PROMPTS),), GUIDANCE),
                  [torch.Generator().manual_seed(s) for s in SEEDS], GenSettings(steps=STEPS), size, size)


def vanilla_images(pipe) -> np.ndarray:
    """The vanilla pipeline's own __call__ with DDIM for the same prompts and seeds."""
    pipe = type(pipe)(**{**pipe.components, "scheduler": DDIMScheduler.from_config(pipe.scheduler.config)})
    pipe.set_progress_bar_config(disable=True)
    return pipe(PROMPTS, num_inference_steps=STEPS, guidance_scale=GUIDANCE, output_type="np",
                generator=[torch.Generator().manual_seed(s) for s in SEEDS]).images


def test_vanilla_diffusers_loads_every_export_and_draws_erases_image(exported):
    family, base_dir, run, out = exported
    _, cls, lora_components = FAMILIES[family]
    ours = load_pipeline(run / "model")
    want = erase_images(ours)
    base = DiffusionPipeline.from_pretrained(base_dir, local_files_only=True)
    assert np.abs(want - vanilla_images(base)).max() > 10 * LORA_ATOL  # the run changed the model

    folder = DiffusionPipeline.from_pretrained(out, local_files_only=True)
    assert type(folder) is cls
    if family == "sd2":
        assert folder.scheduler.config.prediction_type == "v_prediction"
    assert np.abs(vanilla_images(folder) - want).max() <= FP32_ATOL

    single = cls.from_single_file(str(out / f"{out.name}.safetensors"), config=str(out), local_files_only=True)
    assert np.abs(vanilla_images(single) - want).max() <= FP32_ATOL

    with safe_open(str(out / "pytorch_lora_weights.safetensors"), "pt") as f:
        assert {k.split(".")[0] for k in f.keys()} == lora_components  # noqa: SIM118
    base.load_lora_weights(str(out))
    assert np.abs(vanilla_images(base) - want).max() <= LORA_ATOL


def test_audit_of_the_export_with_an_attack(exported):
    _, base_dir, _, out = exported
    audit = out.parent / "audit"
    args = ["audit", "--model", str(out), "--suite", "prompts/digits/digit3.csv", "--limit", "1", "--steps", "2",
            "--out", str(audit), "--detector", "digits:three", "--concept", "three", "--attack", "unlearndiffatk",
            "--reference-model", str(base_dir), "--attack-budget", "quick", "--attack-steps", "1",
            "--attack-timesteps", "1"]
    assert main(args) == 0
    check_attack_content(audit, "unlearndiffatk", steps=1)
