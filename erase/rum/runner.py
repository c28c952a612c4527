"""RUM's sequence: score and partition the forget set, then one ordinary trainer run per group.

Each phase is a plain `Trainer` run in RUN/rum/phase_i (the trainer stays method-agnostic); the
phases share one process group, so each is built with `keep_process_group=True` and `run_rum`
ends the group once, after the last phase.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from erase.config import dump_yaml, from_dict, to_dict
from erase.errors import EraseError
from erase.io import atomic_dir, atomic_write_json, atomic_write_text
from erase.models.core import Models, pipeline_modules
from erase.objectives import build_objective
from erase.rum.files import merge_folders, write_images
from erase.rum.scores import (
    denoising_scores,
    difficulty_from_scores,
    partition,
    per_sample_entanglement,
    text_embeddings,
)
from erase.train.config import RumConfig, RumGroupConfig, RunConfig
from erase.train.data import RunData
from erase.train.model import load_model
from erase.train.trainer import Trainer


def _set_dotted(d: dict, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for k in parents:
        d = d.setdefault(k, {})
    d[last] = value


def phase_config_dict(base: dict, group: RumGroupConfig, *, model: str, forget: dict, retain: dict | None,
                      output_dir: str) -> dict:
    """The config (plain dict) of one group's phase: the run's config with the group's settings.

    A group that switches to another objective starts from that objective's defaults (the run's
    `objective:` options belong to the run's method), then applies its own `overrides`.
    """
    d = copy.deepcopy(base)
    d.pop("rum", None)
    if group.objective is not None and group.objective != d.get("method"):
        d["method"] = group.objective
        d["objective"] = {}
    if group.steps is not None:
        _set_dotted(d, "train.steps", group.steps)
    if group.lr is not None:
        _set_dotted(d, "train.lr", group.lr)
    if group.weighting is not None:
        _set_dotted(d, "weighting.kind", group.weighting)
    for k, v in group.overrides.items():
        _set_dotted(d, k, v)
    d["model"] = model
    d.setdefault("data", {})["forget"] = forget
    if retain is not None:
        d["data"]["retain"] = retain
    d["output_dir"] = output_dir
    return d


def _state() -> Any:
    """Accelerate's process state, initialised as the trainer's Accelerator will (it is a singleton:
    a PartialState made without the launcher's CPU flag would turn a 2-process CPU launch into two
    independent single-process runs)."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def frozen_models(cfg: RunConfig, where: str) -> Models:
    """The run's ORIGINAL model as `Models` (nothing trained: `original()` is the model itself)."""
    pipe = load_model(cfg.model, f"{where}: model", cfg.model_config, cfg.allow_pickle)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for name in pipeline_modules(pipe):
        getattr(pipe, name).to(device).requires_grad_(False).eval()
    return Models.from_pipeline(pipe, device=device)


def score_and_partition(cfg: RunConfig, run_dir: str | Path, where: str) -> dict[str, Any]:
    """Score the forget set with the ORIGINAL model, split it, write each group's images.

    Writes RUN/rum/partition.json and RUN/rum/data/{group_i,retain}/ (PNG + caption per sample,
    generated once by the original model, so every phase unlearns the same data); returns the
    partition record. Runs on the main process; the others wait.
    """
    state = _state()
    rum: RumConfig = cfg.rum
    root = Path(run_dir) / "rum"
    record_path = root / "partition.json"
    if state.is_main_process and not record_path.is_file():
        models = frozen_models(cfg, where)
        has_retain = bool(cfg.data.retain.prompts or cfg.data.retain.file or cfg.data.retain.images)
        needs = {"forget_images"} | ({"retain_images"} if has_retain else set())
        data = RunData(cfg.data, frozenset(needs), cfg.train.seed, Path(run_dir) / "cache", cache_key=cfg.model, where=where)
        data.prepare(models)
        if rum.score == "loss":
            raw = denoising_scores(models, data.forget_latents, data.forget_prompts, rum.n_timesteps, rum.seed)
        else:
            if not has_retain:
                raise ValueError("rum.score: entanglement needs retain data (data.retain.prompts)")
            if rum.embedding == "text":
                zf, zr = text_embeddings(models, data.forget_prompts), text_embeddings(models, data.retain_prompts)
            else:
                zf, zr = data.forget_latents.flatten(1), data.retain_latents.flatten(1)
            raw = per_sample_entanglement(zf, zr)
        groups = partition(difficulty_from_scores(raw, rum.score, rum.order), len(rum.groups), rum.fractions)
        for gi, ids in enumerate(groups):
            write_images(models, data.forget_latents, data.forget_prompts, ids.tolist(), root / "data" / f"group_{gi}")
        if has_retain:
            write_images(models, data.retain_latents, data.retain_prompts, list(range(len(data.retain_prompts))),
                         root / "data" / "retain")
        record = {
            "score": rum.score, "embedding": rum.embedding if rum.score == "entanglement" else None,
            "order": (f"loss: {rum.order.replace('_', ' ')}" if rum.score == "loss" else "entanglement: lowest first"),
            "groups": [{"ids": ids.tolist(), "prompts": [data.forget_prompts[i] for i in ids.tolist()],
                        "score_min": float(raw[ids].min()) if len(ids) else None,
                        "score_max": float(raw[ids].max()) if len(ids) else None,
                        "score_mean": float(raw[ids].mean()) if len(ids) else None} for ids in groups],
            "retain_prompts": list(data.retain_prompts) if has_retain else [],
            "scores": raw.tolist(),
        }
        atomic_write_json(record_path, record)
        del models, data
    state.wait_for_everyone()
    return json.loads(record_path.read_text())


def phase_configs(cfg: RunConfig, record: dict[str, Any], run_dir: str | Path, where: str) -> list[tuple[int, RunConfig]]:
    """(group index, RunConfig) of every phase to run, in order; groups with objective "none" are skipped.

    Phase i starts from phase i-1's erased model. Its forget set is group i's images; its retain
    set is the run's retain data plus, with `pending_in_retain`, the groups not yet handled --
    never a group already handled.
    """
    state = _state()
    is_main = state.is_main_process
    rum: RumConfig = cfg.rum
    root = Path(run_dir) / "rum"
    base = to_dict(cfg)
    out, model = [], cfg.model
    for gi, group in enumerate(rum.groups):
        if group.objective == "none":
            continue
        g = record["groups"][gi]
        if not g["ids"]:
            continue
        forget = {"prompts": g["prompts"], "templates": ["{}"], "samples_per_prompt": 1,
                  "images": str(root / "data" / f"group_{gi}")}
        retain = None
        pending = [j for j in range(gi + 1, len(rum.groups)) if record["groups"][j]["ids"]] if rum.pending_in_retain else []
        if record["retain_prompts"] or pending:
            retain = {"prompts": list(record["retain_prompts"]) + [p for j in pending for p in record["groups"][j]["prompts"]],
                      "templates": ["{}"], "samples_per_prompt": 1}
            if pending:
                folder = root / "data" / f"retain_for_group_{gi}"
                if is_main and not folder.is_dir():
                    merge_folders([root / "data" / "retain"] + [root / "data" / f"group_{j}" for j in pending], folder)
                retain["images"] = str(folder)
            elif (root / "data" / "retain").is_dir():
                retain["images"] = str(root / "data" / "retain")
        phase_dir = root / f"phase_{gi}"
        d = phase_config_dict(base, group, model=model, forget=forget, retain=retain, output_dir=str(phase_dir))
        out.append((gi, from_dict(RunConfig, d, f"{where}: rum.groups[{gi}]")))
        model = str(phase_dir / "model")
    state.wait_for_everyone()  # merged retain folders are written by the main process
    return out


def check_groups(cfg: RunConfig, where: str) -> None:
    """Fail fast (one line) on a bad group: unknown objective or options, or nothing to run."""
    if cfg.concepts:  # each phase trains on one group's image folder: the concept ids would be lost
        raise EraseError(f"{where}: concepts: RUM partitions one forget set; give its prompts in data.forget")
    rum: RumConfig = cfg.rum
    if all(g.objective == "none" for g in rum.groups):
        raise EraseError(f"{where}: rum.groups: every group has objective none; nothing to unlearn")
    for gi, g in enumerate(rum.groups):
        if g.objective == "none":
            continue
        method = g.objective or cfg.method
        opts = dict(cfg.objective) if method == cfg.method else {}
        opts.update({k.split(".", 1)[1]: v for k, v in g.overrides.items() if k.startswith("objective.")})
        build_objective(method, opts, f"{where}: rum.groups[{gi}]")


def run_rum(cfg: RunConfig, run_dir: str | Path, where: str = "<config>", resume: str | None = None) -> dict[str, Any]:
    """Score, partition, then run one trainer phase per group; RUN/model is the last phase's model."""
    t0 = time.time()
    run_dir = Path(run_dir)
    check_groups(cfg, where)
    root = run_dir / "rum"
    if not resume and any(root.glob("phase_*/run.json")):
        raise EraseError(f"{run_dir}: already has RUM phases; pass --resume latest to continue, or choose another --out")
    state = _state()
    if state.is_main_process:
        atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))
        atomic_write_json(run_dir / "run.json", {"status": "running", "method": "rum", "base_model": cfg.model})
    try:
        record = score_and_partition(cfg, run_dir, where)
    except ValueError as err:
        raise EraseError(f"{where}: {err}") from None
    phases = phase_configs(cfg, record, run_dir, where)
    results = []
    for gi, pcfg in phases:
        phase_dir = Path(pcfg.output_dir)
        done = phase_dir / "run.json"
        if done.is_file() and json.loads(done.read_text()).get("status") == "completed" and (phase_dir / "model").is_dir():
            info = json.loads(done.read_text())
        else:
            # every phase shares the process group: re-creating one per phase over the same
            # rendezvous is flaky, so the trainer leaves it alive and it is ended once, below
            trainer = Trainer(pcfg, phase_dir, f"{where}: rum.groups[{gi}]", keep_process_group=True)
            info = trainer.run(resume="latest" if resume else None)
            state.wait_for_everyone()
            info = info or json.loads(done.read_text())  # other ranks: the main process's record
        results.append({"group": gi, "method": pcfg.method, "steps": pcfg.train.steps, "lr": pcfg.train.lr,
                        "weighting": pcfg.weighting.kind, "size": len(record["groups"][gi]["ids"]),
                        "run_dir": str(phase_dir), "status": info.get("status"), "metrics": info.get("metrics", {})})
    last = Path(phases[-1][1].output_dir) / "model"
    info: dict[str, Any] = {}
    if state.is_main_process:
        with atomic_dir(run_dir / "model") as tmp:
            shutil.copytree(last, tmp, dirs_exist_ok=True)
        kinds = sorted({r["weighting"] for r in results})
        by_id = sorted((i, p) for g in record["groups"] for i, p in zip(g["ids"], g["prompts"]))
        forget_prompts = list(dict.fromkeys(p for _, p in by_id))  # in config order, file prompts too
        info = {
            "status": "completed", "method": "rum", "base_model": cfg.model,
            "objective": {"name": "rum: " + " -> ".join(r["method"] for r in results)},
            "weighting": {"kind": "/".join(kinds)},
            "concept": cfg.concept or forget_prompts[0], "forget_prompts": forget_prompts,
            "rum": {"score": record["score"], "groups": [
                {k: g[k] for k in ("ids", "score_min", "score_max", "score_mean")} for g in record["groups"]],
                "pending_in_retain": cfg.rum.pending_in_retain, "phases": results},
            "outputs": {"model": str(run_dir / "model")}, "wall_time_s": round(time.time() - t0, 2),
        }
        atomic_write_json(run_dir / "run.json", info)
    state.wait_for_everyone()
    if state.num_processes > 1:
        state.destroy_process_group()
    return info
