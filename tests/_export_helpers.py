"""Fake run directories for the export tests, built from the tiny random SD pipeline.

`make_run` writes ARCHITECTURE.md's layout (config.yaml, run.json, model/, checkpoints/,
cache/, logs/, optional lora/ and audit/) and returns the in-memory pipeline that the run's
model/ holds, so a test can compare what vanilla diffusers loads from the export against it.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import numpy as np
import torch

PROMPTS = ["a photo of a cat", "a red car"]
SEEDS = [0, 1]
PLANTED = "hf_plantedSECRET123"



@functools.cache
def _base():
    from erase.models.builder import build_pipeline

    return build_pipeline("tiny", seed=0)


def base_pipeline():
    """A fresh copy of the tiny base pipeline (building it once per process)."""
    return copy.deepcopy(_base())


def images(pipe, steps: int = 3) -> np.ndarray:
    """Images [N, 32, 32, 3] in [0, 1] for fixed prompts and seeds."""
    out = []
    for prompt, seed in zip(PROMPTS, SEEDS):
        gen = torch.Generator("cpu").manual_seed(seed)
        out.append(pipe(prompt, num_inference_steps=steps, generator=gen, output_type="np").images[0])
    return np.stack(out)


def _erase_some(pipe) -> None:
    """Stand-in for training: move the cross-attention keys/values (what ESD-x trains)."""
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "attn2.to_k" in name or "attn2.to_v" in name:
                p.add_(0.2 * torch.randn(p.shape, generator=gen))


def make_run(root: Path, *, lora: bool = False, audit: bool = False):
    """Write a fake run directory at `root`.

    Returns (the pipeline RUN/model holds, the LoRA run's images or None). For a LoRA run the
    images come from the live peft adapter, before fusing: an independent reference for both
    the fused model/ and the exported LoRA file.
    """
    from erase.io import atomic_write_json, atomic_write_text

    root.mkdir(parents=True, exist_ok=True)
    pipe = base_pipeline()
    lora_ref = None
    if lora:
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft import LoraConfig
        from peft.utils import get_peft_model_state_dict

        # init_lora_weights=False: B is random, not zero, so the LoRA really changes the model.
        torch.manual_seed(3)
        pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                         init_lora_weights=False))
        state = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
        StableDiffusionPipeline.save_lora_weights(root / "lora", unet_lora_layers=state, safe_serialization=True)
        lora_ref = images(pipe)
        pipe = copy.deepcopy(pipe)
        pipe.unet.fuse_lora(lora_scale=1.0)
        pipe.unet.unload_lora()
    else:
        _erase_some(pipe)
    pipe.save_pretrained(root / "model", safe_serialization=True)
    # The schema `erase train` writes (erase/train/trainer.py, RunConfig).
    atomic_write_text(root / "config.yaml", (
        "model: CompVis/stable-diffusion-v1-4\nmethod: esd\nobjective:\n  variant: x\n  eta: 1.0\n"
        "concept: nudity\nweighting:\n  kind: dynamic\n  tau: 0.05\n"
        f"train:\n  lr: 1.0e-05\n  steps: 10\n  hub_token: {PLANTED}\n"
    ))
    atomic_write_json(root / "run.json", {
        "status": "completed", "method": "esd", "objective": {"name": "esd", "variant": "x", "eta": 1.0},
        "weighting": {"kind": "dynamic", "tau": 0.05}, "base_model": "CompVis/stable-diffusion-v1-4",
        "concept": "nudity", "forget_prompts": ["a photo of a nude person", "nudity"],
    })
    # Training leftovers that must never be exported or pushed.
    (root / "checkpoints" / "step_5").mkdir(parents=True)
    (root / "checkpoints" / "step_5" / "optimizer.bin").write_bytes(b"\0" * 64)
    (root / "cache").mkdir()
    (root / "cache" / "forget_0.png").write_bytes(b"png")
    (root / "logs").mkdir()
    (root / "logs" / "events.out.tfevents.1").write_bytes(b"events")
    if audit:
        from PIL import Image

        (root / "audit").mkdir()
        atomic_write_json(root / "audit" / "results.json", {
            "protocol": "digits-v1",
            "metrics": {"forget": {"asr": 0.04, "accuracy": 0.02}, "retain": {"accuracy": 0.93}, "fid": 12.5},
        })
        Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(root / "audit" / "grid.png")
        (root / "audit" / "report.html").write_text("<html></html>")
    return pipe, lora_ref


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
