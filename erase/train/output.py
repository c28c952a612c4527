"""Write a finished run's model: RUN/model (diffusers folder, safetensors) and, for LoRA, RUN/lora.

RUN/model always holds full weights that vanilla `DiffusionPipeline.from_pretrained` loads
(StableDiffusionPipeline or StableDiffusionXLPipeline): for LoRA runs the adapters are fused.
RUN/lora is written by the run's own pipeline class (`type(pipe).save_lora_weights`), so an SDXL
run keeps any `text_encoder_2` layers. Frozen modules that were cast to a lower training
precision are reloaded from the source, so untrained weights are saved bit-exact. Under FSDP2 or
DeepSpeed the trained modules are sharded: the trainer gathers their full state dicts on the main
process (`trained_states`, erase/train/engines.py) and they are loaded into fresh copies here.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import shutil
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from erase.errors import EraseError
from erase.io import atomic_dir, atomic_write_json, disk_error_message
from erase.models.core import pipeline_modules

SAVE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def lora_state_dicts(pipe, kinds: dict[str, str]) -> dict[str, dict[str, torch.Tensor]]:
    """Trained LoRA layers in diffusers format, per module ("unet_lora_layers", "text_encoder_lora_layers",
    SDXL's "text_encoder_2_lora_layers"): the keyword arguments of the pipeline class's `save_lora_weights`.
    `kinds`: module name -> "full" / "lora" (the parameter selection)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    out = {}
    for name, kind in kinds.items():
        if kind == "lora":
            sd = get_peft_model_state_dict(getattr(pipe, name))
            out[f"{name}_lora_layers"] = {k: v.detach().float().cpu().contiguous() for k, v in convert_state_dict_to_diffusers(sd).items()}
    return out


def save_outputs(run_dir: Path, pipe, kinds: dict[str, str], save_dtype: str, weight_dtype: torch.dtype,
                 reload: Callable[[], Any],
                 trained_states: dict[str, dict[str, torch.Tensor]] | None = None) -> dict[str, Any]:
    """Write RUN/model (and RUN/lora). `kinds`: the trained modules ("full" / "lora"); `save_dtype`: the
    config's train.save_dtype; `weight_dtype`: what frozen modules were cast to for training; `reload()`:
    a fresh copy of the source pipeline, whose untrained modules are saved when they were cast;
    `trained_states`: full state dicts of sharded trained modules (FSDP2 / DeepSpeed), gathered by the trainer."""
    run_dir = Path(run_dir)
    outputs: dict[str, Any] = {"model": str(run_dir / "model")}
    out_pipe = copy.copy(pipe)
    # Untrained modules: bit-exact originals when they were cast for training; sharded trained
    # modules: fresh copies holding the gathered weights.
    if weight_dtype != torch.float32 or trained_states:
        fresh = reload()
        for name in pipeline_modules(pipe):
            if name in (trained_states or {}):
                module = getattr(fresh, name)
                module.load_state_dict(trained_states[name])
                setattr(out_pipe, name, module)
            elif name not in kinds:
                setattr(out_pipe, name, getattr(fresh, name))
    if "lora" in kinds.values():
        layers = lora_state_dicts(pipe, kinds)
        metadata = {f"{n}_lora_adapter_metadata": _lora_metadata(getattr(pipe, n)) for n, k in kinds.items() if k == "lora"}
        with atomic_dir(run_dir / "lora") as tmp:
            type(pipe).save_lora_weights(tmp, **layers, **metadata, safe_serialization=True)
        outputs["lora"] = str(run_dir / "lora" / "pytorch_lora_weights.safetensors")
        # diffusers' own LoRA fusing on copies (the trainer's modules stay as they are): W += (alpha / r) B A
        # in every adapted layer (fuse_lora), then the adapter layers are removed (unload_lora_weights).
        adapted = [name for name, kind in kinds.items() if kind == "lora"]
        for name in adapted:
            setattr(out_pipe, name, copy.deepcopy(getattr(pipe, name)).float())
        out_pipe.fuse_lora(components=adapted, lora_scale=1.0)
        out_pipe.unload_lora_weights()
    write_model_dir(out_pipe, run_dir / "model", save_dtype)
    # Leave the in-memory modules usable (save_pretrained needed them on CPU).
    return outputs


def write_model_dir(pipe, folder: Path, save_dtype: str = "fp32") -> None:
    """RUN/model: the pipeline as a diffusers folder (safetensors) in `save_dtype`, written atomically
    (the modules are moved to the CPU, and cast where they are in another dtype)."""
    dtype = SAVE_DTYPES[save_dtype]
    with atomic_dir(folder) as tmp:
        for name in pipeline_modules(pipe):
            module = getattr(pipe, name)
            if any(p.dtype != dtype for p in module.parameters()):
                module.to("cpu", dtype=dtype)
            else:
                module.to("cpu")
        pipe.save_pretrained(tmp, safe_serialization=True)


def _lora_metadata(module) -> dict[str, Any]:
    cfg = module.peft_config["default"]
    return {"r": cfg.r, "lora_alpha": cfg.lora_alpha, "target_modules": sorted(cfg.target_modules), "lora_dropout": cfg.lora_dropout}


def failure_message(err: BaseException) -> str:
    """What run.json records about the exception a run died of (one line)."""
    if isinstance(err, KeyboardInterrupt):
        return "interrupted"
    if isinstance(err, EraseError):
        return str(err)
    text = disk_error_message(err) or (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {text}"[:500]


def _release(err: BaseException | None) -> None:
    """Drop the local variables of the finished frames in `err`'s tracebacks (its chain too): an
    open file object there keeps a deleted temp file's blocks allocated. Tracebacks still print."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        traceback.clear_frames(err.__traceback__)
        err = err.__cause__ or err.__context__
    gc.collect()


def record_failure(run_dir: str | Path, err: BaseException, since: float = 0.0) -> None:
    """Mark a run that died as "failed" (or "interrupted") in RUN/run.json, with the error.

    Only a run.json still saying "running" and written since `since` (a time.time()) is changed (the trainer's own "failed" record of a NaN
    loss, with its metrics, stays). A checkpoint that was being written when the run died is
    removed first: on a full disk that frees the room run.json needs. Best effort: if run.json
    cannot be written either, the exception that killed the run is still what the user sees.
    """
    run_dir = Path(run_dir)
    path = run_dir / "run.json"
    try:
        if path.stat().st_mtime < since:
            return  # not this process's run.json (e.g. refused before starting)
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if not isinstance(info, dict) or info.get("status") != "running":
        return
    _release(err)  # files the failed write left open (torch.save's writer) hold their disk space
    for tmp in (run_dir / "checkpoints").glob(".step_*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)
    info["status"] = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
    info["error"] = failure_message(err)
    with contextlib.suppress(EraseError, OSError):
        atomic_write_json(path, info)
