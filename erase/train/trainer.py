"""The Accelerate training loop of `erase train`: method-agnostic, resumable, multi-process.

Per optimizer step (global batch B = processes x accumulation x micro-batch):
    for each micro-batch m:  out = objective.losses(models, batch)
                             w   = weighting(gather(out.difficulty), gather(ids))[this rank]
                             loss = (w * out.forget).mean() + out.retain;  accelerator.backward(loss)
    apply gradient masks (SalUn), clip, step.

The trained modules go through `accelerator.prepare` with the optimizer, and the launcher's
accelerate config decides the engine (erase/train/engines.py): DDP (`MULTI_GPU` / `MULTI_CPU`),
FSDP2 or DeepSpeed ZeRO-2/3; the engine averages the gradients over processes. Objectives may call
the wrapped modules several times per step (targets, retain terms): there is ONE backward per
micro-batch, the original model's passes run under `no_grad` (the frozen copy, swapped-in
originals or disabled adapters, erase/train/original.py), and inner loops (EraseDiff,
AdvUnlearn's attack) differentiate through the unwrapped module or with respect to their own
tensors. Under DDP the first A - 1 micro-batches of a step run under `no_sync`. All randomness of
a step is a function of (seed, step), so a resumed or multi-process run reproduces a single
uninterrupted run. Checkpoints are erase/train/checkpointing.py's; run.json and the tracker logs
erase/train/reporting.py's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from erase.config import dump_yaml
from erase.errors import EraseError
from erase.io import atomic_write_text
from erase.models.core import pipeline_modules
from erase.objectives import build_objective
from erase.objectives.base import Draws, Models
from erase.train import engines
from erase.train.checkpointing import Checkpoints
from erase.train.config import RunConfig
from erase.train.data import RunData, sample_indices
from erase.train.model import load_model
from erase.train.original import Original
from erase.train.output import save_outputs
from erase.train.params import count, select_parameters, trainable_modules
from erase.train.reporting import RunFacts, distributed_facts, log_sample_table, log_step, write_run_json
from erase.weighting import Weighting

DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class Trainer:
    """One run: `Trainer(cfg, run_dir, where).run(resume)` -> the run.json dict.

    Several runs in one process group (RUM's phases, erase/rum/runner.py) pass
    `keep_process_group=True`: the run then ends by finishing its trackers only (`end_training`),
    and the caller ends the process group once, after the last run.
    """

    def __init__(self, cfg: RunConfig, run_dir: str | os.PathLike, where: str = "<config>", *,
                 keep_process_group: bool = False, device: str | None = None):
        self.cfg, self.run_dir, self.where = cfg, Path(run_dir), where
        self.keep_process_group = keep_process_group
        # "cpu": train on the CPU even where a GPU is (Accelerate's `cpu=True`); None: Accelerate's choice
        self.device = device
        self.checkpoints = Checkpoints(self.run_dir / "checkpoints", cfg.train.checkpoints_total_limit)

    # ------------------------------------------------------------------ setup
    def _accelerator(self) -> Accelerator:
        t = self.cfg.train
        from accelerate.state import AcceleratorState, GradientState, PartialState

        # Several runs in one process (tests, RUM stages) may differ in precision; keep the process group.
        # Accelerate keeps the first run's device choice (cpu=...) in its PartialState and ignores a later
        # one: a single process whose earlier run chose otherwise starts that state afresh too.
        shared = PartialState._shared_state
        fresh = bool(shared) and shared.get("_cpu") != (self.device == "cpu") and shared.get("num_processes", 1) == 1
        AcceleratorState._reset_state(reset_partial_state=fresh)
        GradientState._reset_state()
        # mixed_precision unset = the launcher's choice (`accelerate launch --mixed_precision`, the
        # accelerate config file, ACCELERATE_MIXED_PRECISION), as in diffusers' training examples.
        # gradient_accumulation_steps: accelerator.backward divides each micro-batch's loss by it
        # (DeepSpeed: its engine does, and steps at the boundary)
        try:
            acc = Accelerator(
                cpu=self.device == "cpu", mixed_precision=t.mixed_precision,
                log_with=None if t.report_to == "none" else t.report_to,
                gradient_accumulation_steps=t.gradient_accumulation_steps,
                project_config=ProjectConfiguration(project_dir=str(self.run_dir), logging_dir=str(self.run_dir / "logs")),
                **engines.accelerator_kwargs(),
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
        self.engine = engines.engine_of(acc)
        self.P, self.rank = acc.num_processes, acc.process_index
        self.micro, self.rmicro, self.A = self._batch_sizes(self.P)
        set_seed(t.seed)
        self.objective = build_objective(cfg.method, cfg.objective, self.where)
        self.spec = cfg.params.train if cfg.params.train != "auto" else self.objective.default_params
        pipe = load_model(cfg.model, f"{self.where}: model", cfg.model_config, cfg.allow_pickle)
        self.pipe = pipe
        self.selection = select_parameters(trainable_modules(pipe), self.spec,
                                           cfg.params.exclude, cfg.params.lora, f"{self.where}: params.train")
        engines.check_engine(acc, self.engine, self.selection, False, self.where)  # before any cache is built
        pipe.vae.requires_grad_(False)
        self.precision = acc.mixed_precision  # the resolved choice (config, launcher or accelerate config)
        self.weight_dtype = wd = DTYPES[self.precision]
        for name in pipeline_modules(pipe):
            module = getattr(pipe, name)
            kind = self.selection.kinds.get(name)
            if kind is None or (kind == "lora" and self.engine not in engines.SHARDED):
                # frozen weights (and LoRA base weights) in the weight dtype
                module.to(acc.device, dtype=wd) if wd != torch.float32 else module.to(acc.device)
                for p in module.parameters():
                    if p.requires_grad:
                        p.data = p.data.float()  # trainable weights stay fp32
            else:
                # trained modules in fp32; FSDP2's and DeepSpeed's mixed precision cast for compute
                module.to(acc.device)
        if t.gradient_checkpointing:
            for name in self.selection.kinds:
                engines.enable_checkpointing(getattr(pipe, name))
        self.models = models = Models.from_pipeline(pipe, device=acc.device, weight_dtype=wd,
                                                    train_text_encoder_2=self.selection.trains("text_encoder_2"))
        self.original = Original(models, self.selection, wd)
        models.original = self.original
        models.process_mean = engines.process_mean(acc)
        for name, module in trainable_modules(pipe).items():
            module.train() if self.selection.trains(name) else module.eval()

        # Data and one-time caches (generated with the original weights, main process only).
        self.data = RunData(cfg.data, frozenset(self.objective.needs), t.seed, self.run_dir / "cache",
                            cache_key=cfg.model, is_main=acc.is_main_process, wait=acc.wait_for_everyone, where=self.where,
                            concepts=cfg.concepts)
        self.data.prepare(models)
        self.objective.setup(models, self.data)
        self.N = len(self.data.forget_prompts)
        self.weighting = Weighting(cfg.weighting, self.N, models.num_train_timesteps, self.objective.reference_is_free)
        if cfg.concepts:
            self.weighting.set_concepts(self.data.forget_concepts, [c.weight for c in cfg.concepts])
        if self.weighting.needs_static:
            self.weighting.set_static(self.data.cached(f"loreun_static_d{cfg.weighting.static_draws}", self._static_losses)["losses"])

        masks = self.objective.gradient_masks() or {}
        if masks:
            engines.check_engine(acc, self.engine, self.selection, True, self.where)
        self.params = list(models.named_trainable().values())
        opt = self._optimizer()
        from diffusers.optimization import get_scheduler

        # Stepped once per update by us (not prepared: accelerate would step it P times). On the raw
        # optimizer: its param groups stay the ones every engine's optimizer steps with.
        self.lr_scheduler = get_scheduler(t.lr_scheduler, opt, num_warmup_steps=t.lr_warmup_steps, num_training_steps=t.steps)
        # The trained modules and the optimizer through accelerate: DDP broadcasts rank 0's weights
        # (LoRA init is random), FSDP2 shards them in place, DeepSpeed builds its engine.
        self.prepared, self.optimizer = engines.prepare(acc, self.engine, {n: getattr(pipe, n) for n in self.selection.kinds},
                                                        opt, self.micro, self.A, t.max_grad_norm)
        for name, module in self.prepared.items():
            setattr(models, name, module)
        self.original.rebind()
        self.named = models.named_trainable()  # FSDP2: the sharded parameters the optimizer now holds
        self.params = list(self.named.values())
        unknown = set(masks) - set(self.named)
        assert not unknown, f"gradient masks for unknown parameters: {sorted(unknown)[:3]}"
        self.masks = [(self.named[n], engines.shard_like(m, self.named[n])) for n, m in masks.items()]
        if self.engine not in engines.SHARDED:
            engines.skip_model_files(acc)  # checkpoints keep the trained tensors only
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
            with acc.accumulate(), self._no_sync():  # sync_gradients: True on the step's last micro-batch
                batch = self.micro_batch(step, m)
                self.objective.before_step(self.models, batch, self.params)
                if self.engine == "fsdp":  # an inner loop may have moved the shards and restored them
                    for module in self.prepared.values():
                        engines.reshard(module)
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
                acc.backward(loss)  # divided by A (DeepSpeed: by its engine, which also steps at the boundary)
            all_w.append(w_all.cpu())
            all_ids.append(ids_all.cpu())
            for k, v in {"loss": loss.item(), "forget": forget.item(), **out.logs}.items():
                logs[k] = logs.get(k, 0.0) + v / A
        with torch.no_grad():
            for p, mask in self.masks:
                if p.grad is not None:
                    p.grad.mul_(mask)
        if self.cfg.train.max_grad_norm and self.engine != "deepspeed":  # DeepSpeed clips inside its step
            logs["grad_norm"] = engines.scalar(acc.clip_grad_norm_(self.params, self.cfg.train.max_grad_norm))
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        logs["lr"] = self.lr_scheduler.get_last_lr()[0]
        return {"logs": logs, "weights": torch.cat(all_w), "ids": torch.cat(all_ids)}

    def _no_sync(self) -> contextlib.AbstractContextManager:
        """DDP: no gradient all-reduce before the step's last micro-batch. FSDP2 reduce-scatters every
        micro-batch (inner loops run their own backward there); DeepSpeed follows `sync_gradients`."""
        stack = contextlib.ExitStack()
        if self.engine == "ddp" and not self.acc.sync_gradients:
            for module in self.prepared.values():
                stack.enter_context(self.acc.no_sync(module))
        return stack

    def _check_finite(self, loss: torch.Tensor, step: int) -> None:
        bad = torch.tensor([0.0 if torch.isfinite(loss.detach()).all() else 1.0], device=self.acc.device)
        if self.P > 1:
            bad = self.acc.reduce(bad, reduction="sum")
        if bad.item() > 0:
            last = str(self.checkpoints.last) if self.checkpoints.last else "none (set train.checkpoint_every)"
            raise NonFiniteLoss(f"{self.where}: step {step + 1}: loss is {loss.item()} (NaN/inf); training stopped; "
                                f"last good checkpoint: {last}; lower train.lr or set train.max_grad_norm")

    def run(self, resume: str | None = None) -> dict[str, Any]:
        t0 = time.time()
        cfg, t = self.cfg, self.cfg.train
        self.build()
        acc = self.acc
        start = 0
        if resume:
            path = self.checkpoints.resolve(resume)
            if path is not None:
                start = self.checkpoints.load(acc, path, self.named, self.objective, self.weighting, self.engine)
                acc.print(f"resumed from {path} at step {start}")
            else:
                acc.print("no checkpoint to resume from; starting at step 0")
        elif self.checkpoints.list():
            raise EraseError(f"{self.run_dir}: already has checkpoints; pass --resume latest to continue, or choose another --out")
        if acc.is_main_process:
            # the objective as resolved: every hyperparameter, defaults included (e.g. ESD's `trajectory`)
            atomic_write_text(self.run_dir / "config.yaml", dump_yaml(dataclasses.replace(cfg, objective=self.objective.describe())))
            write_run_json(self.facts(), "running", {}, t0, self.weighting.mean_weights())
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
                    log_step(acc, step + 1, result, cfg.weighting.kind, t.report_to, self.N)
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}")
                if t.checkpoint_every and (step + 1) % t.checkpoint_every == 0 and step + 1 < t.steps:
                    self.checkpoints.save(acc, step + 1, self.named, self.objective, self.weighting, self.spec, self.engine)
        except NonFiniteLoss as err:
            bar.close()
            if acc.is_main_process:
                write_run_json(self.facts(), "failed", {**metrics, "error": str(err)}, t0, self.weighting.mean_weights(),
                               steps_done=step)
            self.end_training()
            raise EraseError(str(err)) from None
        bar.close()
        acc.wait_for_everyone()
        identical = self._ranks_identical()
        full = engines.full_state_dicts(acc, self.engine, self.prepared)  # sharded engines: gathered on the main process
        if acc.is_main_process and cfg.weighting.kind != "uniform" and t.report_to == "tensorboard":
            log_sample_table(acc, self.data.forget_prompts, self.weighting.mean_weights(), t.steps)
        if acc.is_main_process:
            outputs = save_outputs(self.run_dir, self.pipe, self.selection.kinds, t.save_dtype, self.weight_dtype,
                                   lambda: load_model(cfg.model, "model", cfg.model_config, cfg.allow_pickle),
                                   trained_states=full)
            outputs["ranks_identical"] = identical
            write_run_json(self.facts(), "completed", metrics, t0, self.weighting.mean_weights(), steps_done=t.steps,
                           outputs=outputs)
        acc.wait_for_everyone()
        self.end_training()
        return json.loads((self.run_dir / "run.json").read_text()) if acc.is_main_process else {}

    def facts(self) -> RunFacts:
        """What run.json records about this run (erase/train/reporting.py takes these values, not the trainer)."""
        return RunFacts(
            run_dir=self.run_dir, cfg=self.cfg, objective={"name": self.cfg.method, **self.objective.describe()},
            spec=self.spec, kinds=self.selection.kinds, trainable=sum(p.numel() for p in getattr(self, "params", [])),
            total=sum(count(getattr(self.pipe, n))[1] for n in pipeline_modules(self.pipe)), num_processes=self.P,
            mixed_precision=getattr(self, "precision", self.cfg.train.mixed_precision),
            original_extra_bytes=self.original.extra_bytes, forget_prompts=self.data.forget_prompts,
            distributed=distributed_facts(getattr(self, "acc", None), getattr(self, "engine", None),
                                          getattr(self, "prepared", {})),
            concepts=self._concept_facts())

    def _concept_facts(self) -> list[dict] | None:
        """Multi-concept runs: each concept's samples, weight and the mean LoReUn weight it received."""
        if not self.cfg.concepts:
            return None
        received = self.weighting.concept_mean_weights()
        return [{"name": c.name, "samples": int((self.data.forget_concepts == k).sum()), "weight": c.weight,
                 "mean_sample_weight": None if received[k] is None else round(received[k], 4)}
                for k, c in enumerate(self.cfg.concepts)]

    def end_training(self) -> None:
        """Finish the trackers and end Accelerate's run: the process group too, unless
        `keep_process_group` (more runs follow in this process group)."""
        if self.keep_process_group:
            for tracker in self.acc.trackers:
                tracker.finish()
        else:
            self.acc.end_training()

    def _ranks_identical(self) -> bool | None:
        """Whether every process ends with the same trained weights (exact fingerprints, gathered);
        None under FSDP2 / DeepSpeed, which hold one sharded copy."""
        if self.P == 1:
            return True
        if self.engine in engines.SHARDED:
            return None
        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1).double() for p in self.params])
            ramp = torch.linspace(-1, 1, flat.numel(), dtype=torch.float64, device=flat.device)
            fp = torch.stack([flat.sum(), (flat * flat).sum(), (flat * ramp).sum()]).unsqueeze(0)
            allfp = self.acc.gather(fp)
        return bool((allfp == allfp[:1]).all())


class NonFiniteLoss(Exception):
    pass

