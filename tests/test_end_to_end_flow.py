"""FLUX.1 and SD3 end to end, as users run it: `erase train` (2 steps, LoRA on the text stream's joint attention)
-> `erase export` (diffusers folder, LoRA, single file: FLUX's transformer in BFL layout, SD3 all-in-one) -> vanilla `FluxPipeline` / `StableDiffusion3Pipeline.from_pretrained`
-> the run's own image for a fixed seed (erase's generation on the one sampling loop = the vanilla pipeline's
__call__) -> `load_lora_weights` on the base gives it too -> `erase audit` of the export with UnlearnDiffAtk
(its tokens in CLIP and T5).

One trained run and one export per family (module-scoped), on the tiny builders (32 px).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from diffusers import DiffusionPipeline, FluxPipeline, StableDiffusion3Pipeline
from safetensors import safe_open

from erase.audit.generate import GenSettings, sample
from erase.cli import main
from erase.models.builder import build_pipeline
from erase.models.core import Models
from erase.models.loading import load_pipeline

PROMPTS, SEEDS, STEPS, GUIDANCE, SIZE = ["a nude woman", "a red car"], [3, 11], 3, 4.0, 32
# Same weights, same ops in another order (erase batches both CFG halves as SD3's pipeline does, and
# FLUX's packing around one call): measured max differences 7e-7 (FLUX) and 1.3e-6 (SD3) on [0, 1] pixels.
FP32_ATOL = 1e-5
LORA_ATOL = 1e-4  # unfused adapters on the base vs fused weights: float rounding only (tests/test_export.py)

FAMILIES = {"flux": ("tiny-flux", FluxPipeline), "sd3": ("tiny-sd3", StableDiffusion3Pipeline)}


def run_config(model: str) -> dict:
    return {
        "model": model, "method": "esd", "objective": {"variant": "x", "ddim_steps": 2},
        "params": {"train": "xattn", "lora": {"rank": 4}},
        "data": {"forget": {"prompts": ["a nude woman"], "samples_per_prompt": 2}, "generate_steps": 2},
        "train": {"steps": 2, "batch_size": 2, "lr": 5.0e-2, "seed": 0},
    }


@pytest.fixture(scope="module", params=list(FAMILIES))
def exported(request, tmp_path_factory):
    """(family, base folder, run folder, export folder), trained from the saved base folder."""
    family = request.param
    root = tmp_path_factory.mktemp(family)
    build_pipeline(FAMILIES[family][0]).save_pretrained(root / "base")
    cfg = root / "run.yaml"
    cfg.write_text(yaml.safe_dump(run_config(str(root / "base"))))
    assert main(["train", "--config", str(cfg), "--out", str(root / "run")]) == 0
    assert json.loads((root / "run" / "run.json").read_text())["status"] == "completed"
    assert main(["export", str(root / "run"), "--to", str(root / "out"), "--single-file"]) == 0
    return family, root / "base", root / "run", root / "out"


def erase_images(pipe) -> np.ndarray:
    """erase's own generation (the audit's sampler: FlowMatchEuler) for PROMPTS and SEEDS."""
    return sample(pipe, Models.from_pipeline(pipe).encode(PROMPTS), torch.full((len(PROMPTS),), GUIDANCE),
                  [torch.Generator().manual_seed(s) for s in SEEDS], GenSettings(steps=STEPS), SIZE, SIZE)


def vanilla_images(pipe) -> np.ndarray:
    """The vanilla pipeline's own __call__ for the same prompts and seeds."""
    pipe.set_progress_bar_config(disable=True)
    return pipe(PROMPTS, num_inference_steps=STEPS, guidance_scale=GUIDANCE, height=SIZE, width=SIZE, output_type="np",
                generator=[torch.Generator().manual_seed(s) for s in SEEDS]).images


def test_vanilla_pipeline_loads_the_export_and_draws_the_runs_image(exported):
    family, base_dir, run, out = exported
    cls = FAMILIES[family][1]
    want = erase_images(load_pipeline(run / "model"))
    base = DiffusionPipeline.from_pretrained(base_dir, local_files_only=True)
    assert np.abs(want - vanilla_images(base)).max() > 10 * LORA_ATOL  # the run changed the model

    folder = cls.from_pretrained(out, local_files_only=True)
    assert type(DiffusionPipeline.from_pretrained(out, local_files_only=True)) is cls
    assert np.abs(vanilla_images(folder) - want).max() <= FP32_ATOL

    with safe_open(str(out / "pytorch_lora_weights.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert {k.split(".")[0] for k in keys} == {"transformer"}
    # only the text stream's joint-attention projections were adapted
    assert {k.split(".")[4] for k in keys} == {"add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"}
    base.load_lora_weights(str(out))
    assert np.abs(vanilla_images(base) - want).max() <= LORA_ATOL
    assert "pipe = " + cls.__name__ in (out / "README.md").read_text()
    if family == "flux":  # the transformer alone in Black Forest Labs' layout, every value of it
        with safe_open(str(out / "out.safetensors"), "pt") as f:
            assert f.metadata()["layout"] == "flux-bfl" and "double_blocks.0.txt_attn.qkv.weight" in f.keys()  # noqa: SIM118
            held = sum(int(np.prod(f.get_slice(k).get_shape()))
                       for k in f.keys())  # noqa: SIM118
        assert held == sum(p.numel() for p in folder.transformer.parameters())
    else:  # SD3 all-in-one: diffusers' own from_single_file, with the export's folder as its config, offline
        with safe_open(str(out / "out.safetensors"), "pt") as f:
            assert f.metadata()["layout"] == "sd3-all-in-one"
            assert {k.split(".")[0] for k in f.keys()} == {"model", "first_stage_model", "text_encoders"}  # noqa: SIM118
        single = StableDiffusion3Pipeline.from_single_file(str(out / "out.safetensors"), config=str(out),
                                                           local_files_only=True)
        for name in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
            got, ref = getattr(single, name).state_dict(), getattr(folder, name).state_dict()
            assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref), name
        single.text_encoder_3.eval()  # diffusers 0.42.1 leaves the single file's T5 in training mode (dropout on)
        assert np.abs(vanilla_images(single) - want).max() <= FP32_ATOL
        mine = load_pipeline(out / "out.safetensors", config=out)  # erase's loader puts T5 in eval itself
        assert np.abs(erase_images(mine) - want).max() <= FP32_ATOL


def test_audit_of_the_export_with_unlearndiffatk(exported):
    _, base_dir, _, out = exported
    audit = out.parent / "audit"
    args = ["audit", "--model", str(out), "--suite", "prompts/digits/digit3.csv", "--limit", "1", "--steps", "2",
            "--out", str(audit), "--detector", "digits:three", "--concept", "three", "--attack", "unlearndiffatk",
            "--reference-model", str(base_dir), "--attack-budget", "quick", "--attack-steps", "1",
            "--attack-timesteps", "1"]
    assert main(args) == 0
    res = json.loads((audit / "results.json").read_text())
    assert res["metrics"]["n_attacked"] == 1 and (audit / "attack.jsonl").is_file()
