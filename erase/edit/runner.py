"""`erase edit`: load the model, build the erase / guide / preserve prompts, run the editor, and write
the run directory `erase train` writes (RUN/model, RUN/run.json, RUN/config.yaml), so `erase
export`, `erase audit` and the benches read an edited model as they read a trained one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from erase.config import dump_yaml
from erase.edit.base import EditSet
from erase.edit.config import EditConfig
from erase.edit.registry import build_editor
from erase.io import atomic_write_json, atomic_write_text
from erase.models.core import Models, pipeline_modules
from erase.train.data import concept_samples, expand
from erase.train.model import load_model
from erase.train.output import write_model_dir
from erase.train.reporting import peak_memory


def edit_set(cfg: EditConfig, where: str = "<config>") -> EditSet:
    """Erase prompts (every concept's, expanded) with their guides and concept ids, and the preserve prompts."""
    prompts, ids, anchors = concept_samples(cfg.concepts, [], where)
    guides = anchors or [cfg.default_guide] * len(prompts)  # concept_samples refuses a mix
    preserve = expand(cfg.preserve, f"{where}: preserve") if (cfg.preserve.prompts or cfg.preserve.file) else []
    erased = set(prompts)
    return EditSet(prompts, guides, ids.tolist(), [p for p in dict.fromkeys(preserve) if p not in erased])


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run_edit(cfg: EditConfig, run_dir: str | Path, where: str = "<config>", pipe: Any = None) -> dict[str, Any]:
    """Edit `cfg.model` into `run_dir` (RUN/model, run.json, config.yaml); returns run.json's dict.
    `pipe`: an already loaded pipeline to edit in place (the scale bench)."""
    t0 = time.time()
    run_dir = Path(run_dir)
    editor = build_editor(cfg.method, cfg.edit, where)
    edits = edit_set(cfg, where)
    if pipe is None:
        pipe = load_model(cfg.model, f"{where}: model", cfg.model_config, cfg.allow_pickle)
    device = _device(cfg.device)
    for name in pipeline_modules(pipe):
        getattr(pipe, name).to(device)
    models = Models.from_pipeline(pipe, device=device)
    info: dict[str, Any] = {
        "status": "running", "kind": "edit", "method": cfg.method, "objective": {"name": cfg.method, **editor.describe()},
        "weighting": None, "base_model": cfg.model, "concept": cfg.concept,
        "concepts": [{"name": c.name, "prompts": sum(1 for k in edits.concept if k == i),
                      "guides": sorted({g for g, k in zip(edits.guide, edits.concept) if k == i})}
                     for i, c in enumerate(cfg.concepts)],
        "forget_prompts": list(dict.fromkeys(edits.erase)), "preserve_prompts": len(edits.preserve),
        "params": {"set": editor.params, "kinds": {"unet": "partial"}},
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))
    atomic_write_json(run_dir / "run.json", info)
    t1 = time.time()
    with torch.no_grad():
        done = editor.edit(models, edits)
    edit_seconds = time.time() - t1
    write_model_dir(pipe, run_dir / "model", cfg.save_dtype)
    info.update(status="completed", metrics={"edit_seconds": round(edit_seconds, 3), **done},
                outputs={"model": str(run_dir / "model")}, peak_memory=peak_memory(),
                wall_time_s=round(time.time() - t0, 2), steps=0, steps_done=0)
    atomic_write_json(run_dir / "run.json", info)
    return info
