"""The Accelerate training loop of `erase train`: method-agnostic, resumable, multi-process.

Per optimizer step (global batch B = processes x accumulation x micro-batch):
    for each micro-batch m:  out = objective.losses(models, batch)
                             w   = weighting(gather(out.difficulty), gather(ids))[this rank]
                             loss = (w * out.forget).mean() + out.retain;  backward(loss / A)
    all-reduce the gradients (mean over processes), apply gradient masks (SalUn), clip, step.

Gradients are averaged with one explicit all-reduce instead of a DDP wrapper, so objectives may
call the UNet any number of times per step (targets, inner loops) without DDP's one-forward
rule; the result is what DDP computes. All randomness of a step is a function of (seed, step),
so a resumed or multi-process run reproduces a single uninterrupted run. Checkpoints are
erase/train/checkpointing.py's; run.json and the tracker logs erase/train/reporting.py's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, broadcast, set_seed
from tqdm.auto import tqdm

from erase.config import dump_yaml
from erase.errors import EraseError
from erase.io import atomic_write_text
from erase.models.core import pipeline_modules
from erase.objectives import build_objective
from erase.objectives.base import Draws, Models
from erase.train.checkpointing import Checkpoints
from erase.train.config import RunConfig
from erase.train.data import RunData, sample_indices
from erase.train.model import load_model
from erase.train.original import Original
from erase.train.output import save_outputs
from erase.train.params import select_parameters, trainable_modules
from erase.train.reporting import log_sample_table, log_step, write_run_json
from erase.weighting import Weighting

DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class Trainer:
    """One run: `Trainer(cfg, run_dir, where).run(resume)` -> the run.json dict.

    Several runs in one process group (RUM's phases, erase/rum/runner.py) pass
    `keep_process_group=True`: the run then ends by finishing its trackers only (`end_training`),
    and the caller ends the process group once, after the last run.
    """

    def __init__(self, cfg: RunConfig, run_dir: str | os.PathLike, where: str = "<config>", *,
                 keep_process_group: bool = False):
        self.cfg, self.run_dir, self.where = cfg, Path(run_dir), where
        self.keep_process_group = keep_process_group
        self.checkpoints = Checkpoints(self.run_dir / "checkpoints", cfg.train.checkpoints_total_limit)

    # ------------------------------------------------------------------ setup
    def _accelerator(self) -> Accelerator:
        t = self.cfg.train
        from accelerate.state import AcceleratorState, GradientState

        # Several runs in one process (tests, RUM stages) may differ in precision; keep the process group.
        AcceleratorState._reset_state()
        GradientState._reset_state()
        # mixed_precision unset = the launcher's choice (`accelerate launch --mixed_precision`, the
        # accelerate config file, ACCELERATE_MIXED_PRECISION), as in diffusers' training examples.
        try:
            acc = Accelerator(
                mixed_precision=t.mixed_precision, log_with=None if t.report_to == "none" else t.report_to,
                project_config=ProjectConfiguration(project_dir=str(self.run_dir), logging_dir=str(self.run_dir / "logs")),
            )
        except (ValueError, RuntimeError, ImportError) as err:
            field = "train.report_to" if "wandb" in str(err).lower() or "tensorboard" in str(err).lower() else "train.mixed_precision"
            raise EraseError(f"{self.where}: {field}: {getattr(t, field.split('.')[1])} is not usable here ({err})") from None
        if acc.mixed_precision not in DTYPES:
            raise EraseError(f"{self.where}: train.mixed_precision: the launcher's {acc.mixed_precision!r} is not supported (no, fp16, bf16)")
        source = "train.mixed_precision" if t.mixed_precision is not None else "the launcher / accelerate config"
        acc.print(f"mixed precision: {acc.mixed_precision} (from {source})")
        return acc

    def _batch_sizes(self, P: int) -> tuple[int, int, int]:
        t = self.cfg.train
        A = t.gradient_accumulation_steps
        micro, rem = divmod(t.batch_size, A * P)
        if rem or micro == 0:
            raise EraseError(f"{self.where}: train.batch_size: {t.batch_size} must be a multiple of gradient_accumulation_steps x processes = {A * P}")
        rb = t.retain_batch_size or t.batch_size
        rmicro, rrem = divmod(rb, A * P)
        if rrem or rmicro == 0:
            raise EraseError(f"{self.where}: train.retain_batch_size: {rb} must be a multiple of gradient_accumulation_steps x processes = {A * P}")
        return micro, rmicro, A

    def build(self) -> None:
        cfg, t = self.cfg, self.cfg.train
        self.acc = acc = self._accelerator()
        self.P, self.rank = acc.num_processes, acc.process_index
        self.micro, self.rmicro, self.A = self._batch_sizes(self.P)
        set_seed(t.seed)
        self.objective = build_objective(cfg.method, cfg.objective, self.where)
        self.spec = cfg.params.train if cfg.params.train != "auto" else self.objective.default_params
        pipe = load_model(cfg.model, f"{self.where}: model", cfg.model_config, cfg.allow_pickle)
        self.pipe = pipe
        self.selection = select_parameters(trainable_modules(pipe), self.spec,
                                           cfg.params.exclude, cfg.params.lora, f"{self.where}: params.train")
        pipe.vae.requires_grad_(False)
        self.precision = acc.mixed_precision  # the resolved choice (config, launcher or accelerate config)
        self.weight_dtype = wd = DTYPES[self.precision]
        for name in pipeline_modules(pipe):
            module = getattr(pipe, name)
            kind = self.selection.kinds.get(name)
            if kind is None or kind == "lora":
                # frozen weights (and LoRA base weights) in the weight dtype
                module.to(acc.device, dtype=wd) if wd != torch.float32 else module.to(acc.device)
                for p in module.parameters():
                    if p.requires_grad:
                        p.data = p.data.float()  # trainable weights stay fp32
            else:
                module.to(acc.device)
        if t.gradient_checkpointing:
            for name in self.selection.kinds:
                m = getattr(pipe, name)
                (m.enable_gradient_checkpointing if hasattr(m, "enable_gradient_checkpointing") else m.gradient_checkpointing_enable)()
        self.models = models = Models.from_pipeline(pipe, device=acc.device, weight_dtype=wd,
                                                    train_text_encoder_2=self.selection.trains("text_encoder_2"))
        self.original = Original(models, self.selection, wd)
        models.original = self.original
        for name, module in trainable_modules(pipe).items():
            module.train() if self.selection.trains(name) else module.eval()

        # Data and one-time caches (generated with the original weights, main process only).
        self.data = RunData(cfg.data, frozenset(self.objective.needs), t.seed, self.run_dir / "cache",
                            cache_key=cfg.model, is_main=acc.is_main_process, wait=acc.wait_for_everyone, where=self.where)
        self.data.prepare(models)
        self.objective.setup(models, self.data)
        self.N = len(self.data.forget_prompts)
        self.weighting = Weighting(cfg.weighting, self.N, models.num_train_timesteps, self.objective.reference_is_free)
        if self.weighting.needs_static:
            self.weighting.set_static(self.data.cached(f"loreun_static_d{cfg.weighting.static_draws}", self._static_losses)["losses"])

        self.named = models.named_trainable()
        self.params = list(self.named.values())
        masks = self.objective.gradient_masks() or {}
        unknown = set(masks) - set(self.named)
        assert not unknown, f"gradient masks for unknown parameters: {sorted(unknown)[:3]}"
        self.masks = [(self.named[n], m.to(self.named[n].device, self.named[n].dtype)) for n, m in masks.items()]
        if self.P > 1:  # identical starting weights on every rank (LoRA init is random)
            for p in self.params:
                p.data.copy_(broadcast(p.data.clone(), from_process=0))
        opt = self._optimizer()
        from diffusers.optimization import get_scheduler

        self.lr_scheduler = get_scheduler(t.lr_scheduler, opt, num_warmup_steps=t.lr_warmup_steps, num_training_steps=t.steps)
        self.optimizer = acc.prepare(opt)
        # The scheduler is stepped once per update by us (not prepared: accelerate would step it P times).
        acc.register_for_checkpointing(self.lr_scheduler)

    def _static_losses(self) -> dict[str, torch.Tensor]:
        """LoReUn-s: each forget sample's difficulty under the ORIGINAL weights, mean over draws."""
        draws = self.cfg.weighting.static_draws
        total = torch.zeros(self.N)
        for d in tqdm(range(draws), desc="LoReUn static losses", leave=False):
            # one draw shared by every sample (no gradient): the samples compare on equal terms
            for batch in self.data.forget_batches(self.micro * self.P, draw=d, shared=True):
                with self.original(), self.acc.autocast():
                    total[batch.forget_ids] += self.objective.difficulty(self.models, batch).cpu()
        return {"losses": total / draws}

    def _optimizer(self) -> torch.optim.Optimizer:
        t = self.cfg.train
        if t.optimizer == "sgd":
            return torch.optim.SGD(self.params, lr=t.lr, weight_decay=t.weight_decay)
        cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
        return cls(self.params, lr=t.lr, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_epsilon, weight_decay=t.weight_decay)

    # ------------------------------------------------------------------ the loop
    def micro_batch(self, step: int, m: int):
        g = step * self.A + m  # global micro-batch number
        fidx = sample_indices(self.N, g * self.micro * self.P, self.micro * self.P, self.cfg.train.seed, "forget")
        fidx = fidx[self.rank * self.micro:(self.rank + 1) * self.micro]
        ridx = None
        if self.data.uses_retain():
            nr = len(self.data.retain_prompts)
            ridx = sample_indices(nr, g * self.rmicro * self.P, self.rmicro * self.P, self.cfg.train.seed, "retain")
            ridx = ridx[self.rank * self.rmicro:(self.rank + 1) * self.rmicro]
        draws = Draws(seed=self.cfg.train.seed, step=step, micro=m, shared=self.cfg.train.shared_draws)
        batch = self.data.batch(fidx, ridx, draws, self.models.device)
        batch.want_reference = self.weighting.wants_reference
        return batch

    def train_step(self, step: int) -> dict[str, Any]:
        acc, A = self.acc, self.A
        logs: dict[str, float] = {}
        all_w, all_ids = [], []
        for m in range(A):
            batch = self.micro_batch(step, m)
            self.objective.before_step(self.models, batch, self.params)
            with acc.autocast():
                out = self.objective.losses(self.models, batch)
            ids = batch.forget_ids.to(acc.device)
            extra = [x.to(acc.device) if x is not None else None for x in (out.timesteps, out.reference)]
            if self.P > 1:  # every rank weights the whole global micro-batch the same way
                diff_all, ids_all = acc.gather(out.difficulty.contiguous()), acc.gather(ids)
                extra = [acc.gather(x.contiguous()) if x is not None else None for x in extra]
            else:
                diff_all, ids_all = out.difficulty, ids
            w_all = self.weighting(diff_all, ids_all, *extra)
            w = w_all[self.rank * self.micro:(self.rank + 1) * self.micro].to(out.forget.device)
            forget = (w * out.forget).mean()
            loss = forget + (out.retain if out.retain is not None else 0.0)
            self._check_finite(loss, step)
            acc.backward(loss / A)
            all_w.append(w_all.cpu())
            all_ids.append(ids_all.cpu())
            for k, v in {"loss": loss.item(), "forget": forget.item(), **out.logs}.items():
                logs[k] = logs.get(k, 0.0) + v / A
        self._sync_gradients()
        with torch.no_grad():
            for p, mask in self.masks:
                if p.grad is not None:
                    p.grad.mul_(mask)
        if self.cfg.train.max_grad_norm:
            norm = acc.clip_grad_norm_(self.params, self.cfg.train.max_grad_norm)
            logs["grad_norm"] = float(norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        logs["lr"] = self.lr_scheduler.get_last_lr()[0]
        return {"logs": logs, "weights": torch.cat(all_w), "ids": torch.cat(all_ids)}

    def _check_finite(self, loss: torch.Tensor, step: int) -> None:
        bad = torch.tensor([0.0 if torch.isfinite(loss.detach()).all() else 1.0], device=self.acc.device)
        if self.P > 1:
            bad = self.acc.reduce(bad, reduction="sum")
        if bad.item() > 0:
            last = str(self.checkpoints.last) if self.checkpoints.last else "none (set train.checkpoint_every)"
            raise NonFiniteLoss(f"{self.where}: step {step + 1}: loss is {loss.item()} (NaN/inf); training stopped; "
                                f"last good checkpoint: {last}; lower train.lr or set train.max_grad_norm")

    def _sync_gradients(self) -> None:
        if self.P == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        flat = self.acc.reduce(flat, reduction="mean")
        offset = 0
        for p, g in zip(self.params, grads):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(p).to(p.dtype)
            offset += n

    def run(self, resume: str | None = None) -> dict[str, Any]:
        t0 = time.time()
        cfg, t = self.cfg, self.cfg.train
        self.build()
        acc = self.acc
        start = 0
        if resume:
            path = self.checkpoints.resolve(resume)
            if path is not None:
                start = self.checkpoints.load(acc, path, self.named, self.objective, self.weighting)
                acc.print(f"resumed from {path} at step {start}")
            else:
                acc.print("no checkpoint to resume from; starting at step 0")
        elif self.checkpoints.list():
            raise EraseError(f"{self.run_dir}: already has checkpoints; pass --resume latest to continue, or choose another --out")
        if acc.is_main_process:
            # the objective as resolved: every hyperparameter, defaults included (e.g. ESD's `trajectory`)
            atomic_write_text(self.run_dir / "config.yaml", dump_yaml(dataclasses.replace(cfg, objective=self.objective.describe())))
            write_run_json(self, "running", {}, t0)
        acc.init_trackers("erase")
        bar = tqdm(total=t.steps, initial=start, desc=f"erase train ({cfg.method})", unit="step",
                   **({} if acc.is_main_process else {"disable": True}))  # main: tqdm's default (TQDM_DISABLE)
        metrics: dict[str, float] = {}
        step = start
        try:
            for step in range(start, t.steps):
                result = self.train_step(step)
                metrics = result["logs"]
                if (step + 1) % t.log_every == 0 or step + 1 == t.steps:
                    log_step(self, step + 1, result)
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}")
                if t.checkpoint_every and (step + 1) % t.checkpoint_every == 0 and step + 1 < t.steps:
                    self.checkpoints.save(acc, step + 1, self.named, self.objective, self.weighting, self.spec)
        except NonFiniteLoss as err:
            bar.close()
            if acc.is_main_process:
                write_run_json(self, "failed", {**metrics, "error": str(err)}, t0, steps_done=step)
            self.end_training()
            raise EraseError(str(err)) from None
        bar.close()
        acc.wait_for_everyone()
        identical = self._ranks_identical()
        if acc.is_main_process and cfg.weighting.kind != "uniform" and t.report_to == "tensorboard":
            log_sample_table(self, t.steps)
        if acc.is_main_process:
            outputs = save_outputs(self)
            outputs["ranks_identical"] = identical
            write_run_json(self, "completed", metrics, t0, steps_done=t.steps, outputs=outputs)
        acc.wait_for_everyone()
        self.end_training()
        return json.loads((self.run_dir / "run.json").read_text()) if acc.is_main_process else {}

    def end_training(self) -> None:
        """Finish the trackers and end Accelerate's run: the process group too, unless
        `keep_process_group` (more runs follow in this process group)."""
        if self.keep_process_group:
            for tracker in self.acc.trackers:
                tracker.finish()
        else:
            self.acc.end_training()

    def _ranks_identical(self) -> bool:
        """Whether every process ends with the same trained weights (exact fingerprints, gathered)."""
        if self.P == 1:
            return True
        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1).double() for p in self.params])
            ramp = torch.linspace(-1, 1, flat.numel(), dtype=torch.float64, device=flat.device)
            fp = torch.stack([flat.sum(), (flat * flat).sum(), (flat * ramp).sum()]).unsqueeze(0)
            allfp = self.acc.gather(fp)
        return bool((allfp == allfp[:1]).all())


class NonFiniteLoss(Exception):
    pass

