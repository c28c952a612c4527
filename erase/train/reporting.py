"""What a training run reports: RUN/run.json, the tracker logs (TensorBoard, W&B) and peak memory.

`write_run_json` records a run's status ("running", "completed", "failed"), its settings and its
last metrics; `log_step` sends a step's losses (and, for LoReUn, the weights) to the trackers;
`log_sample_table` is the end-of-run table of which samples LoReUn upweighted.
"""

from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from erase.config import to_dict
from erase.io import atomic_write_json


@dataclass
class RunFacts:
    """What run.json says about a run besides its status and metrics: the values the trainer hands
    over (this module never sees the Trainer itself)."""

    run_dir: Path
    cfg: Any                      # the resolved RunConfig
    objective: dict[str, Any]     # {"name": method, **objective.describe()}
    spec: str                     # the parameter set trained
    kinds: dict[str, str]         # module -> "full" / "lora"
    trainable: int
    total: int
    num_processes: int
    mixed_precision: str | None
    original_extra_bytes: int
    forget_prompts: list[str]
    distributed: dict[str, Any]   # the launch as accelerate resolved it (distributed_facts)
    concepts: list[dict[str, Any]] | None = None  # multi-concept runs: samples, weight, mean weight received


def write_run_json(facts: RunFacts, status: str, metrics: dict, t0: float, mean_weights, steps_done: int = 0,
                   outputs: dict | None = None) -> None:
    """RUN/run.json: method, objective, weighting, base model, concept(s), status and metrics (main process).
    `mean_weights`: each forget sample's mean LoReUn weight so far (NaN: not drawn yet)."""
    cfg, prompts = facts.cfg, facts.forget_prompts
    by_sample = sorted(((float(mean_weights[i]), prompts[i], i) for i in range(len(prompts))
                        if not math.isnan(mean_weights[i])), reverse=True)
    info = {
        "status": status,
        "method": cfg.method,
        "objective": facts.objective,
        "weighting": to_dict(cfg.weighting),
        "base_model": cfg.model,
        "concept": cfg.concept or prompts[0],
        "forget_prompts": list(dict.fromkeys(prompts)),  # file prompts too, once each
        "params": {"set": facts.spec, "kinds": facts.kinds, "lora": to_dict(cfg.params.lora),
                   "trainable": facts.trainable, "total": facts.total},
        "steps": cfg.train.steps, "steps_done": steps_done,
        "num_processes": facts.num_processes, "distributed": facts.distributed,
        "mixed_precision": facts.mixed_precision,
        "mixed_precision_source": "config" if cfg.train.mixed_precision is not None else "launcher",
        "metrics": {k: v for k, v in metrics.items()},
        "peak_memory": peak_memory(),
        "original_model_extra_bytes": facts.original_extra_bytes,
        "wall_time_s": round(time.time() - t0, 2),
        "sample_weights": [{"id": i, "prompt": p, "mean_weight": round(w, 4)} for w, p, i in by_sample[:20]],
    }
    if facts.concepts:  # multi-concept: each concept's samples, weight and the mean weight it received
        info["concepts"] = facts.concepts
    if outputs:
        info["outputs"] = outputs
    atomic_write_json(Path(facts.run_dir) / "run.json", info)


def distributed_facts(acc, engine: str | None, prepared: dict) -> dict[str, Any]:
    """The launch as accelerate resolved it: distributed type (NO, MULTI_CPU, MULTI_GPU, FSDP,
    DEEPSPEED), the engine erase ran (erase/train/engines.py), processes, and each trained module's
    class after `accelerator.prepare` (DistributedDataParallel, FSDP2's FSDP<Module>, DeepSpeedEngine)."""
    if acc is None:
        return {}
    from erase.train.engines import wrapper_classes

    return {"type": acc.distributed_type.value, "engine": engine, "num_processes": acc.num_processes,
            "wrappers": wrapper_classes(prepared)}


def log_step(acc, step: int, result: dict[str, Any], weighting_kind: str, report_to: str, n_samples: int) -> None:
    """One step's logs to the trackers; with LoReUn on TensorBoard, the weights too (main process)."""
    if not acc.is_main_process:
        return
    acc.log({f"train/{k}": v for k, v in result["logs"].items()}, step=step)
    if weighting_kind != "uniform" and report_to == "tensorboard":
        writer = acc.get_tracker("tensorboard", unwrap=True)
        w, ids = result["weights"], result["ids"]
        writer.add_histogram("loreun/weights", w, step)
        writer.add_scalar("loreun/max_weight", float(w.max()), step)
        if n_samples <= 128:  # one curve per sample: who gets upweighted, over time
            for i, wi in zip(ids.tolist(), w.tolist()):
                writer.add_scalar(f"loreun_weight/{i:04d}", wi, step)


def log_sample_table(acc, prompts: list[str], mean_weights, step: int) -> None:
    """A TensorBoard text table: sample id, prompt, mean LoReUn weight (most upweighted first)."""
    rows = sorted(((float(mean_weights[i]), i) for i in range(len(prompts)) if not math.isnan(mean_weights[i])),
                  reverse=True)
    table = "| id | prompt | mean weight |\n|---|---|---|\n" + "\n".join(
        f"| {i} | {prompts[i]} | {w:.3f} |" for w, i in rows)
    acc.get_tracker("tensorboard", unwrap=True).add_text("loreun/sample_weights", table, step)


def peak_memory() -> dict[str, Any]:
    """Peak memory of this process: CUDA allocations on a GPU, else the resident set size."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return {"kind": "cuda_max_memory_allocated", "bytes": int(torch.cuda.max_memory_allocated())}
    return {"kind": "cpu_max_rss", "bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024}
