"""RUN/checkpoints/step_N: save, find, resume and rotate the checkpoints of `erase train`.

A checkpoint is Accelerate's `save_state` folder (optimizer, lr scheduler, RNG states of every
process) plus what the trainer adds: the trained tensors (`trainable.safetensors`), the
weighting's state, each rank's objective state and `trainer_state.json` (step, parameter set,
engine). Under FSDP2 and DeepSpeed (erase/train/engines.py) the model and optimizer are
`save_state`'s sharded files instead of `trainable.safetensors` (FSDP2: `fsdp_state_dict_type`
SHARDED_STATE_DICT, torch.distributed.checkpoint; DeepSpeed: the engine's ZeRO shards), and a
checkpoint resumes under the engine kind it was written by (sharded or not).
It is written to `.step_N.tmp` and renamed, so a checkpoint appears whole or not at all;
`train.checkpoints_total_limit` keeps the newest ones.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from torch import nn

from erase.errors import EraseError
from erase.train.engines import SHARDED


class Checkpoints:
    """The checkpoints of one run folder; `last` is the newest one saved or loaded by this process."""

    def __init__(self, folder: Path, limit: int | None = None):
        self.folder, self.limit = Path(folder), limit
        self.last: Path | None = None

    def list(self) -> list[Path]:
        """step_N folders, oldest first."""
        if not self.folder.is_dir():
            return []
        found = [p for p in self.folder.iterdir() if p.is_dir() and p.name.startswith("step_") and p.name[5:].isdigit()]
        return sorted(found, key=lambda p: int(p.name[5:]))

    def resolve(self, resume: str) -> Path | None:
        """`--resume latest` (None when there is no checkpoint yet) or a checkpoint folder."""
        if resume == "latest":
            found = self.list()
            return found[-1] if found else None
        path = Path(resume).expanduser()
        if not path.is_dir():
            raise EraseError(f"--resume: {resume}: no such checkpoint folder")
        return path

    def save(self, acc: Accelerator, step: int, trained: dict[str, nn.Parameter], objective: Any, weighting: Any,
             spec: str, engine: str = "single") -> Path:
        """Write step_`step` (every process calls this: Accelerate saves each rank's RNG state)."""
        final = self.folder / f"step_{step}"
        tmp = self.folder / f".step_{step}.tmp"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))  # optimizer, lr scheduler, RNG states of every process (sharded: the model too)
        acc.wait_for_everyone()  # the folder exists before each rank adds its objective state
        objective_state = {k: v.contiguous() for k, v in objective.state_dict().items()}
        if objective_state:  # per rank: e.g. each rank's own adversarial token
            save_file(objective_state, str(tmp / f"objective_rank{acc.process_index}.safetensors"))
        acc.wait_for_everyone()
        if acc.is_main_process:
            if engine not in SHARDED:
                save_file({n: p.detach().cpu().contiguous() for n, p in trained.items()}, str(tmp / "trainable.safetensors"))
            save_file({k: v.contiguous() for k, v in weighting.state_dict().items()}, str(tmp / "weighting.safetensors"))
            (tmp / "trainer_state.json").write_text(json.dumps({"step": step, "spec": spec, "engine": engine,
                                                                 "num_processes": acc.num_processes}))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)  # a checkpoint appears whole or not at all
            if self.limit is not None:
                for old in self.list()[:-self.limit]:
                    shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        self.last = final
        return final

    def load(self, acc: Accelerator, path: Path, trained: dict[str, nn.Parameter], objective: Any, weighting: Any,
             engine: str = "single") -> int:
        """Restore a checkpoint into the prepared run; returns its step."""
        state_file = path / "trainer_state.json"
        if not state_file.is_file():
            raise EraseError(f"{path}: not a checkpoint of `erase train` (no trainer_state.json)")
        state = json.loads(state_file.read_text())
        written = state.get("engine", "single")
        if (written in SHARDED) != (engine in SHARDED) or (engine in SHARDED and written != engine):
            raise EraseError(f"{path}: written under {written} ({state.get('num_processes', 1)} processes); this launch is "
                             f"{engine}: resume with the accelerate config it was written with")
        acc.load_state(str(path))  # sharded engines: the model's shards too
        if engine not in SHARDED:
            weights = load_file(str(path / "trainable.safetensors"))
            missing = set(trained) - set(weights)
            if missing:
                raise EraseError(f"{path}: checkpoint does not match this config's trained parameters (missing {min(missing)})")
            with torch.no_grad():
                for n, p in trained.items():
                    p.copy_(weights[n].to(p.device, p.dtype))
        weighting.load_state_dict(load_file(str(path / "weighting.safetensors")))
        objective_file = path / f"objective_rank{acc.process_index}.safetensors"
        if objective_file.is_file():
            objective.load_state_dict(load_file(str(objective_file)))
        self.last = path
        return int(state["step"])
