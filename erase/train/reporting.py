"""What a training run reports: RUN/run.json, the tracker logs (TensorBoard, W&B) and peak memory.

`write_run_json` records a run's status ("running", "completed", "failed"), its settings and its
last metrics; `log_step` sends a step's losses (and, for LoReUn, the weights) to the trackers;
`log_sample_table` is the end-of-run table of which samples LoReUn upweighted.
"""

from __future__ import annotations

import math
import resource
import time
from typing import TYPE_CHECKING, Any

import torch

from erase.config import to_dict
from erase.io import atomic_write_json
from erase.models.core import pipeline_modules
from erase.train.params import count

if TYPE_CHECKING:
    from erase.train.trainer import Trainer


def write_run_json(trainer: Trainer, status: str, metrics: dict, t0: float, steps_done: int = 0,
                   outputs: dict | None = None) -> None:
    """RUN/run.json: method, objective, weighting, base model, concept(s), status and metrics (main process)."""
    cfg = trainer.cfg
    trainable = sum(p.numel() for p in trainer.params) if hasattr(trainer, "params") else 0
    total = sum(count(getattr(trainer.pipe, n))[1] for n in pipeline_modules(trainer.pipe))
    prompts = trainer.data.forget_prompts
    mean_w = trainer.weighting.mean_weights()
    by_sample = sorted(((float(mean_w[i]), prompts[i], i) for i in range(trainer.N) if not math.isnan(mean_w[i])), reverse=True)
    info = {
        "status": status,
        "method": cfg.method,
        "objective": {"name": cfg.method, **trainer.objective.describe()},
        "weighting": to_dict(cfg.weighting),
        "base_model": cfg.model,
        "concept": cfg.concept or prompts[0],
        "forget_prompts": list(dict.fromkeys(prompts)),  # file prompts too, once each
        "params": {"set": trainer.spec, "kinds": trainer.selection.kinds, "lora": to_dict(cfg.params.lora),
                   "trainable": trainable, "total": total},
        "steps": cfg.train.steps, "steps_done": steps_done,
        "num_processes": trainer.P, "mixed_precision": getattr(trainer, "precision", cfg.train.mixed_precision),
        "mixed_precision_source": "config" if cfg.train.mixed_precision is not None else "launcher",
        "metrics": {k: v for k, v in metrics.items()},
        "peak_memory": peak_memory(),
        "original_model_extra_bytes": trainer.original.extra_bytes,
        "wall_time_s": round(time.time() - t0, 2),
        "sample_weights": [{"id": i, "prompt": p, "mean_weight": round(w, 4)} for w, p, i in by_sample[:20]],
    }
    if cfg.concepts:  # multi-concept: each concept's samples, weight and the mean weight it received
        received = trainer.weighting.concept_mean_weights()
        info["concepts"] = [{"name": c.name, "samples": int((trainer.data.forget_concepts == k).sum()), "weight": c.weight,
                             "mean_sample_weight": None if received[k] is None else round(received[k], 4)}
                            for k, c in enumerate(cfg.concepts)]
    if outputs:
        info["outputs"] = outputs
    atomic_write_json(trainer.run_dir / "run.json", info)


def log_step(trainer: Trainer, step: int, result: dict[str, Any]) -> None:
    """One step's logs to the trackers; with LoReUn on TensorBoard, the weights too (main process)."""
    acc = trainer.acc
    if not acc.is_main_process:
        return
    acc.log({f"train/{k}": v for k, v in result["logs"].items()}, step=step)
    if trainer.cfg.weighting.kind != "uniform" and trainer.cfg.train.report_to == "tensorboard":
        writer = acc.get_tracker("tensorboard", unwrap=True)
        w, ids = result["weights"], result["ids"]
        writer.add_histogram("loreun/weights", w, step)
        writer.add_scalar("loreun/max_weight", float(w.max()), step)
        if trainer.N <= 128:  # one curve per sample: who gets upweighted, over time
            for i, wi in zip(ids.tolist(), w.tolist()):
                writer.add_scalar(f"loreun_weight/{i:04d}", wi, step)


def log_sample_table(trainer: Trainer, step: int) -> None:
    """A TensorBoard text table: sample id, prompt, mean LoReUn weight (most upweighted first)."""
    mean_w = trainer.weighting.mean_weights()
    rows = sorted(((float(mean_w[i]), i) for i in range(trainer.N) if not math.isnan(mean_w[i])), reverse=True)
    table = "| id | prompt | mean weight |\n|---|---|---|\n" + "\n".join(
        f"| {i} | {trainer.data.forget_prompts[i]} | {w:.3f} |" for w, i in rows)
    trainer.acc.get_tracker("tensorboard", unwrap=True).add_text("loreun/sample_weights", table, step)


def peak_memory() -> dict[str, Any]:
    """Peak memory of this process: CUDA allocations on a GPU, else the resident set size."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return {"kind": "cuda_max_memory_allocated", "bytes": int(torch.cuda.max_memory_allocated())}
    return {"kind": "cpu_max_rss", "bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024}
