"""The distributed engine of a run, as the launcher's accelerate config decides it: what the trainer
hands to `accelerator.prepare` and what differs per engine afterwards.

| engine | launcher config | trained modules | gradient sync | checkpoint (save_state) |
|---|---|---|---|---|
| single | one process | as they are | none | trainable.safetensors + optimizer |
| ddp | `MULTI_GPU` / `MULTI_CPU` (configs/accelerate/ddp.yaml) | `DistributedDataParallel` | DDP's all-reduce (mean) | trainable.safetensors + optimizer |
| fsdp | `FSDP`, `fsdp_version: 2` (fsdp.yaml) | `fully_shard` (FSDP2, in place) | reduce-scatter | sharded model + optimizer (DCP) |
| deepspeed | `DEEPSPEED`, ZeRO-2/3 (deepspeed_zero{2,3}.yaml) | `DeepSpeedEngine` | the engine, in `backward` | the engine's own shards |

The trainable modules (the UNet and/or text encoders a parameter set names) go through
`accelerator.prepare` with the optimizer; frozen modules (the VAE, untrained encoders, the frozen
original-model copy) are never prepared. FSDP2 and DeepSpeed take one model per `prepare`, so a
run under them trains one module (the UNet, or one text encoder). The wrapped module is what
objectives call: several calls per step are fine (one backward per step, see erase/train/trainer.py).

Under FSDP2 (and ZeRO-3) every forward of the sharded module, under no_grad too, is a collective
(an all-gather of its shards): every process must call it the same number of times, in the same
order. So no objective lets a per-sample draw decide how many calls it makes: ESD's online
trajectories (erase/objectives/esd.py) run all `ddim_steps` guided passes whatever position k each
sample draws (tests/test_engines.py counts them); inner loops have fixed lengths.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn

from erase.errors import EraseError

SHARDED = ("fsdp", "deepspeed")


def engine_of(acc: Accelerator) -> str:
    """"single", "ddp", "fsdp" (FSDP2) or "deepspeed"."""
    kind = acc.distributed_type
    if kind == DistributedType.FSDP:
        return "fsdp"
    if kind == DistributedType.DEEPSPEED:
        return "deepspeed"
    return "ddp" if acc.num_processes > 1 else "single"


def check_engine(acc: Accelerator, engine: str, selection: Any, masks: bool, where: str) -> None:
    """Refuse, on one line, what an engine cannot do with this run (before any work)."""
    if engine == "fsdp" and not getattr(acc, "is_fsdp2", False):
        raise EraseError(f"{where}: the accelerate config uses FSDP version 1; set `fsdp_version: 2` "
                         "(configs/accelerate/fsdp.yaml)")
    if engine not in SHARDED:
        return
    name = "FSDP2" if engine == "fsdp" else "DeepSpeed"
    if len(selection.kinds) > 1:
        raise EraseError(f"{where}: params.train: {selection.spec!r} trains {' and '.join(selection.kinds)}; {name} "
                         "prepares one model per run: train one module, or launch with configs/accelerate/ddp.yaml")
    if "lora" in selection.kinds.values():
        raise EraseError(f"{where}: params.lora: LoRA adapters are small; launch LoRA runs with "
                         f"configs/accelerate/ddp.yaml ({name} shards full or partial training)")
    if engine == "deepspeed":
        if masks:
            raise EraseError(f"{where}: method: this objective masks gradients before the optimizer step, which "
                             "DeepSpeed takes inside backward; launch with configs/accelerate/fsdp.yaml or ddp.yaml")
        stage = int(acc.state.deepspeed_plugin.zero_stage or 0)
        kind = next(iter(selection.kinds.values()))
        if stage == 3 and kind == "partial":
            raise EraseError(f"{where}: params.train: {selection.spec!r} trains part of a module; ZeRO-3 partitions "
                             "every weight, so the original model's values cannot be swapped in: use "
                             "configs/accelerate/fsdp.yaml or deepspeed_zero2.yaml")


def accelerator_kwargs() -> dict[str, Any]:
    """DDP options: no unused parameters to search (one backward per step reaches every trained
    weight) and no static graph (gradient checkpointing is non-reentrant, see `enable_checkpointing`)."""
    from accelerate.utils import DistributedDataParallelKwargs

    return {"kwargs_handlers": [DistributedDataParallelKwargs(find_unused_parameters=False, static_graph=False)]}


def enable_checkpointing(module: nn.Module) -> None:
    """Gradient checkpointing, non-reentrant: a reentrant one re-runs forwards inside backward and
    DDP then marks a parameter ready twice when a module is called several times per step."""
    if hasattr(module, "enable_gradient_checkpointing"):  # diffusers: non-reentrant by default
        module.enable_gradient_checkpointing()
    else:
        module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def prepare(acc: Accelerator, engine: str, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer,
            micro_batch: int, accumulation: int, max_grad_norm: float | None) -> tuple[dict[str, nn.Module], torch.optim.Optimizer]:
    """The trained modules and the optimizer through `accelerator.prepare` (one call).

    DeepSpeed accumulates and clips inside its engine: the run config's batch split, accumulation
    and clipping (the one source of the global batch) are written into its config first."""
    if engine == "deepspeed":
        cfg = acc.state.deepspeed_plugin.deepspeed_config
        wanted = {"train_micro_batch_size_per_gpu": micro_batch, "gradient_accumulation_steps": accumulation,
                  "train_batch_size": micro_batch * accumulation * acc.num_processes,
                  "gradient_clipping": float(max_grad_norm or 0.0)}
        changed = [f"{k} {cfg.get(k)} -> {v}" for k, v in wanted.items() if cfg.get(k, "auto") not in ("auto", v)]
        if changed:
            acc.print(f"deepspeed config: from the run config: {', '.join(changed)}")
        cfg.update(wanted)
    if engine == "fsdp":
        for module in modules.values():  # one per FSDP2 run (check_engine)
            wrap_own_layers(acc, module)
    names = list(modules)
    *prepared, optimizer = acc.prepare(*modules.values(), optimizer)
    return dict(zip(names, prepared)), optimizer


def wrap_own_layers(acc: Accelerator, module: nn.Module) -> None:
    """FSDP2 with TRANSFORMER_BASED_WRAP (configs/accelerate/fsdp.yaml): the class list accelerate wraps,
    made one it can wrap (`wrap_classes`); a list the user gave and had to change is said on one line."""
    plugin = acc.state.fsdp_plugin
    if plugin is None:
        return
    given = plugin.transformer_cls_names_to_wrap
    keep = wrap_classes(module, given)
    if keep is None:
        return
    if given is not None:
        acc.print(f"fsdp: not wrapping {sorted(set(given) - set(keep))} on their own: they hold the input "
                  "embedding, which accelerate shards as a unit of its own")
    plugin.transformer_cls_names_to_wrap = keep


def wrap_classes(module: nn.Module, given: list[str] | None) -> list[str] | None:
    """The classes FSDP2 may wrap in `module`, from the user's list `given` or (None) the module's own
    `_no_split_modules`, which accelerate takes and refuses a run when one is not in the module
    (transformers' CLIP text encoder lists CLIPVisionEmbeddings): absent classes of the module's own
    list go. Accelerate also shards the module's input embedding as a unit of its own, AFTER the
    listed classes (accelerate/utils/fsdp_utils.py, `fsdp2_prepare_model`): a listed class that
    contains it (CLIP's CLIPTextEmbeddings) would make its weight a DTensor first, which the second
    `fully_shard` takes for tensor parallelism and fails on ("value was None when it should not
    be"); such classes go from either list. None: nothing to change."""
    listed = list(given) if given is not None else list(getattr(module, "_no_split_modules", None) or [])
    embed = getattr(module, "get_input_embeddings", lambda: None)()
    holders = set()
    if isinstance(embed, nn.Module):
        holders = {type(m).__name__ for m in module.modules()
                   if m is not module and m is not embed and any(s is embed for s in m.modules())}
    present = {type(m).__name__ for m in module.modules()}
    keep = [name for name in listed if name not in holders and (given is not None or name in present)]
    return None if keep == listed else keep


def process_mean(acc: Accelerator) -> Callable[[torch.Tensor], torch.Tensor]:
    """`Models.process_mean`: the mean of a (small) tensor over the processes, the same on every
    process (an all-reduce); one process: the tensor itself. Objectives call it without knowing the
    engine: AdvUnlearn's attack averages its gradients with it, so every process fits ONE attack on
    the global batch, as one process fits it on the whole batch."""
    if acc.num_processes == 1:
        return lambda x: x
    return lambda x: acc.reduce(x.detach().contiguous(), reduction="mean")


def unwrapped(module: nn.Module) -> nn.Module:
    """The module inside a DDP or DeepSpeed wrapper (FSDP2 shards in place: the module itself)."""
    return getattr(module, "module", module)


def wrapper_classes(prepared: dict[str, nn.Module]) -> dict[str, str]:
    """Each trained module's class after `prepare` (run.json): DistributedDataParallel,
    FSDPUNet2DConditionModel (FSDP2's class), DeepSpeedEngine, or the module's own."""
    return {name: type(m).__name__ for name, m in prepared.items()}


def skip_model_files(acc: Accelerator) -> None:
    """Unsharded engines: `save_state` writes the optimizer, scheduler and RNG states but not whole
    models; the checkpoint keeps only the trained tensors (trainable.safetensors), as before."""
    def drop_weights(models, weights, output_dir):
        weights.clear()

    def drop_models(models, input_dir):
        models.clear()

    acc.register_save_state_pre_hook(drop_weights)
    acc.register_load_state_pre_hook(drop_models)


def shard_like(mask: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """A full-size gradient mask laid out like `param` (FSDP2: this rank's shard of it)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(param, DTensor):
        return distribute_tensor(mask.to(param.device, param.dtype), param.device_mesh, param.placements)
    return mask.to(param.device, param.dtype)


def reshard(module: nn.Module) -> None:
    """FSDP2: drop every gathered (unsharded) copy of `module`'s weights, so the next forward gathers
    them again from the shards. Needed after the shards' values change outside the optimizer step
    (the original model's values swapped in, an inner loop's steps): FSDP2 keeps the root module's
    weights gathered from a forward to the backward, and a forward under no_grad has no backward."""
    from torch.distributed.fsdp import FSDPModule

    for m in module.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def scalar(x: Any) -> float:
    """A norm `clip_grad_norm_` returned (a DTensor under FSDP2; None under DeepSpeed) as a float."""
    if x is None:
        return float("nan")
    full = getattr(x, "full_tensor", None)
    return float(full() if full is not None else x)


def full_state_dicts(acc: Accelerator, engine: str, prepared: dict[str, nn.Module]) -> dict[str, dict[str, torch.Tensor]]:
    """Sharded engines: each trained module's full state dict, gathered on the main process (every
    process calls this: a collective); {} on the other processes and for unsharded engines."""
    if engine not in SHARDED:
        return {}
    out = {name: acc.get_state_dict(m) for name, m in prepared.items()}
    return out if acc.is_main_process else {}
