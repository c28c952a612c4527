"""`erase train --dry-run`: build the run at real size without weights, check it, estimate memory.

Everything is built on the meta device (nothing allocated): the objective and its config, the
parameter selection (LoRA adapters included), and the data prompts. The architecture comes from
the model's real configs -- a diffusers folder, the local Hugging Face cache, `model_config`
(a folder of configs or an original-layout YAML) with a single file's header shapes -- or, for
the SD-1.4/1.5 Hub ids, from their published configs (erase's `sd15` builder reproduces them);
anything else fails with one line naming what the dry run needs. SD-1.x, SD-2.x and SDXL
(two text encoders, `text_time`) are read alike; SD-2.1 and SDXL-base-1.0 Hub ids that are not
cached are built from erase's `sd21` / `sdxl` builders (their published configs). FLUX.1 and SD3/3.5
(FluxPipeline, StableDiffusion3Pipeline: a transformer, CLIP and T5 encoders) are read from their folders'
configs the same way; their Hub ids that are not cached (FLUX.1-dev/schnell, SD3-medium, SD3.5-medium/large)
from erase's `flux-dev` ... `sd35-large` builders, whose transformer parameter counts are the published ones.

Memory, two estimates:
- in the config's precision: weights in their training dtypes, the original-model copy the
  selection implies, fp32 trainable weights + gradients + optimizer states (activations excluded);
- the peak at bf16, batch 1, native resolution, with and without gradient checkpointing: the
  same weight terms with frozen weights in bf16, plus the activations autograd saves in one
  UNet forward, counted on the meta device (erase/train/activations.py: what it counts and what
  it leaves out). It is an estimate, not a measurement: it ignores the CUDA context, allocator
  fragmentation and kernel workspaces, and methods that run several trainable forwards per step
  (forget + retain batches) keep a multiple of the activation term.

`erase train --dry-run` also reports the other way of training the same parameter set beside the config's
own (LoRA <-> full weights; a full recipe's LoRA at erase's default LoRA options): trainable parameters per
component and both peaks, and with `--num-gpus` both columns' peaks per GPU and the engine's refusals.

Several GPUs (`--num-gpus N --engine ddp|fsdp|deepspeed_zero2|deepspeed_zero3`): the same peak per
GPU with what each engine shards (configs/accelerate/, erase/train/engines.py), batch 1 per GPU:

| term | ddp | zero2 | fsdp (FSDP2, FULL_SHARD) / zero3 |
|---|---|---|---|
| trained module's fp32 weights | whole | bf16 copy whole + fp32 master / N | / N |
| its frozen weights (partial sets) | whole | whole (bf16) | / N |
| gradients, Adam states | whole | / N | / N |
| saved originals of a partial set | whole | whole | / N |
| frozen modules, a full set's frozen original copy | whole (bf16) | whole | whole |
| gathered for compute (transient) | - | - | the root group + two units in bf16, one unit's fp32 grads |
| activations | batch 1 | batch 1 | batch 1 (no kept weight copies: they are resharded) |

A unit is a module of the model's `_no_split_modules` classes (the UNet's transformer and resnet
blocks, CLIP's encoder layers): what accelerate's TRANSFORMER_BASED_WRAP shards as one group.
DeepSpeed's communication buckets, NCCL buffers and the allocator's fragmentation are not counted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from erase.errors import EraseError
from erase.models.core import denoiser, pipeline_modules
from erase.objectives import build_objective
from erase.prompts import read_suite
from erase.train.config import RunConfig
from erase.train.data import concept_samples, expand
from erase.train.params import count, select_parameters, trainable_modules

# Hub ids whose published configs are SD-1.x's, built at real size by `build_pipeline("sd15")`.
SD1_HUB_IDS = ("CompVis/stable-diffusion-v1-4", "stable-diffusion-v1-5/stable-diffusion-v1-5", "runwayml/stable-diffusion-v1-5",
               "CompVis/stable-diffusion-v1-1", "CompVis/stable-diffusion-v1-2", "CompVis/stable-diffusion-v1-3")
# Other Hub ids whose published configs an erase builder reproduces (meta device).
PUBLISHED = {"stabilityai/stable-diffusion-2-1": "sd21", "stabilityai/stable-diffusion-xl-base-1.0": "sdxl",
             "black-forest-labs/FLUX.1-dev": "flux-dev", "black-forest-labs/FLUX.1-schnell": "flux-schnell",
             "stabilityai/stable-diffusion-3-medium-diffusers": "sd3-medium",
             "stabilityai/stable-diffusion-3.5-medium": "sd35-medium", "stabilityai/stable-diffusion-3.5-large": "sd35-large"}


def _meta_pipeline(unet_cfg: dict, vae_cfg: dict, text_cfgs: list, prediction: str = "epsilon"):
    """A pipeline of these configs on the meta device: StableDiffusionXLPipeline when there are two
    text encoders (the second with projection, SDXL's pooled embedding), else StableDiffusionPipeline."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from erase.models.builder import build_pipeline

    pipe = build_pipeline("tiny-sdxl" if len(text_cfgs) == 2 else "tiny", device="meta")
    with init_empty_weights():
        pipe.unet = UNet2DConditionModel.from_config(unet_cfg)
        pipe.vae = AutoencoderKL.from_config(vae_cfg)
        pipe.text_encoder = CLIPTextModel(text_cfgs[0])
        if len(text_cfgs) == 2:
            pipe.text_encoder_2 = CLIPTextModelWithProjection(text_cfgs[1])
    pipe.scheduler.register_to_config(prediction_type=prediction)
    return pipe


def _flow_folder_pipeline(folder: Path, index: dict, where: str):
    """A FluxPipeline / StableDiffusion3Pipeline on the meta device from a folder's configs (config.json of the
    transformer, VAE and each text encoder; the scheduler's config)."""
    import json

    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxTransformer2DModel,
        SD3Transformer2DModel,
    )
    from transformers import AutoConfig, CLIPTextModel, CLIPTextModelWithProjection, T5EncoderModel

    from erase.models.builder import build_pipeline
    from erase.models.family import family_of_index
    from erase.models.loading import read_json_object

    flux = family_of_index(index).key == "flux"
    texts = ("text_encoder", "text_encoder_2") if flux else ("text_encoder", "text_encoder_2", "text_encoder_3")
    for part in ("transformer", "vae", *texts):
        if not (folder / part / "config.json").is_file():
            raise EraseError(f"{where}: {folder}: {part}/config.json missing (a dry run reads the model's configs)")
    try:
        configs = {t: AutoConfig.from_pretrained(folder / t) for t in texts}
    except (OSError, ValueError, json.JSONDecodeError) as err:
        raise EraseError(f"{where}: {folder}: a text encoder's config.json is not readable ({err})") from None
    import torch

    pipe = build_pipeline("tiny-flux" if flux else "tiny-sd3", device="meta")
    cls = FluxTransformer2DModel if flux else SD3Transformer2DModel
    # everything on the meta device, buffers too (SD3's position embedding is a buffer; T5's tied embeddings stay one)
    with torch.device("meta"):
        pipe.transformer = cls.from_config(read_json_object(folder / "transformer" / "config.json", where))
        pipe.vae = AutoencoderKL.from_config(read_json_object(folder / "vae" / "config.json", where))
        for t in texts:
            cfg = configs[t]
            if cfg.model_type == "t5":
                model = T5EncoderModel(cfg)
            else:
                cfg = getattr(cfg, "text_config", cfg)
                model = (CLIPTextModel if flux else CLIPTextModelWithProjection)(cfg)
            setattr(pipe, t, model)
    sched = folder / "scheduler" / "scheduler_config.json"
    if sched.is_file():
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(read_json_object(sched, where))
    return pipe


def _folder_configs(folder: Path, where: str) -> tuple[dict, dict, list, str]:
    from transformers import CLIPTextConfig

    from erase.models.family import family_of_index
    from erase.models.loading import check_supported_folder, read_json_object

    index = read_json_object(folder / "model_index.json", where)
    xl = family_of_index(index).key == "sdxl"
    if not xl:
        check_supported_folder(folder, where)
    texts = ("text_encoder", "text_encoder_2") if xl else ("text_encoder",)
    for part in ("unet", "vae", *texts):
        if not (folder / part / "config.json").is_file():
            raise EraseError(f"{where}: {folder}: {part}/config.json missing (a dry run reads the model's configs)")
    unet = read_json_object(folder / "unet" / "config.json", where)
    if (unet.get("addition_embed_type") == "text_time") != xl:
        raise EraseError(f"{where}: {folder}: unet/config.json: addition_embed_type: {unet.get('addition_embed_type')!r} "
                         f"does not fit a pipeline with {len(texts)} text encoder(s) (SDXL has two and text_time)")
    sched = folder / "scheduler" / "scheduler_config.json"
    prediction = read_json_object(sched, where).get("prediction_type", "epsilon") if sched.is_file() else "epsilon"
    return (unet, read_json_object(folder / "vae" / "config.json", where),
            [CLIPTextConfig.from_pretrained(folder / t) for t in texts], prediction)


def _folder_pipeline(folder: Path, where: str):
    """A meta-device pipeline of a diffusers folder's configs (any supported family)."""
    from erase.models.family import family_of_index
    from erase.models.loading import read_json_object

    index = read_json_object(folder / "model_index.json", where)
    if family_of_index(index).flow:
        return _flow_folder_pipeline(folder, index, where)
    return _meta_pipeline(*_folder_configs(folder, where))


def _describe(pipe, origin: str) -> str:
    from erase.models.family import family_of
    from erase.models.loading import describe_pipeline

    if family_of(pipe).key != "sdxl":
        kind, _, rest = describe_pipeline(pipe).partition(": ")
        return f"{kind} architecture from {origin}: {rest}"
    u, t1, t2 = pipe.unet.config, pipe.text_encoder.config, pipe.text_encoder_2.config
    return (f"SDXL architecture from {origin}: unet {list(u.block_out_channels)} x {u.layers_per_block}, transformer depth "
            f"{list(u.transformer_layers_per_block) if not isinstance(u.transformer_layers_per_block, int) else u.transformer_layers_per_block}, "
            f"cross-attention {u.cross_attention_dim}, added conditioning {u.addition_embed_type}; text encoders "
            f"{t1.num_hidden_layers} x {t1.hidden_size} ({t1.hidden_act}) + {t2.num_hidden_layers} x {t2.hidden_size} ({t2.hidden_act}, "
            f"projection {t2.projection_dim}); vae latent {pipe.vae.config.latent_channels}; "
            f"{pipe.scheduler.config.get('prediction_type', 'epsilon')} prediction")


def _check_header(pipe, shapes: dict[str, tuple[int, ...]], path: Path, where: str) -> None:
    """The single file's tensors must hold as many numbers per component as the configs describe."""
    import math

    from erase.export.single_file import OPENCLIP_PREFIX, UNET_PREFIX, VAE_PREFIX
    from erase.models.family import family_of
    from erase.models.loading import SDXL_KEY

    family = family_of(pipe)
    if (SDXL_KEY in shapes) != (family.key == "sdxl"):
        raise EraseError(f"{where}: {path}: the file is {'an SDXL' if SDXL_KEY in shapes else 'a single-text-encoder (SD-1/2)'} "
                         f"checkpoint but the config describes {family.label}: the config is not this checkpoint's architecture")
    if family.key != "sdxl":
        openclip = any(k.startswith(OPENCLIP_PREFIX) for k in shapes)
        if openclip != (pipe.text_encoder.config.hidden_act == "gelu"):
            raise EraseError(f"{where}: {path}: its text encoder is {'OpenCLIP (SD-2)' if openclip else 'CLIP (SD-1)'} but the config "
                             f"describes {pipe.text_encoder.config.hidden_act} activations: the config is not this checkpoint's architecture")
    proj = next((shapes[k] for k in shapes if k.startswith(UNET_PREFIX) and k.endswith("proj_in.weight")), None)
    if proj is not None and (len(proj) == 2) != bool(pipe.unet.config.use_linear_projection):
        raise EraseError(f"{where}: {path}: its UNet attention projections are {'linear' if len(proj) == 2 else 'convolutions'} but "
                         "the config says otherwise (use_linear_projection): the config is not this checkpoint's architecture")
    # tensors diffusers does not hold: SD-2's unused last OpenCLIP block and projection, OpenCLIP's logit_scale
    skip = (OPENCLIP_PREFIX + "transformer.resblocks.23.", OPENCLIP_PREFIX + "text_projection", "logit_scale", "position_ids")
    prefixes = {"unet": UNET_PREFIX, "vae": VAE_PREFIX, **{c: p for c, _, p in family.text_encoders}}
    for name, pre in prefixes.items():
        keys = [k for k in shapes if k.startswith(pre) and not any(x in k for x in skip)]
        in_file = sum(math.prod(shapes[k]) for k in keys)
        in_config = count(getattr(pipe, name))[1]
        if in_file != in_config:
            raise EraseError(f"{where}: {path}: its {name} tensors hold {in_file:,} numbers but the config describes "
                             f"{in_config:,}: the config is not this checkpoint's architecture")


def model_architecture(source: str, model_config: str | None, where: str = "model"):
    """(pipeline on the meta device, one line saying where its architecture was read from)."""
    from erase.models.builder import build_pipeline
    from erase.models.loading import _HUB_ID, _SINGLE_FILE, not_a_model, resolve_source

    if source.startswith("builder:"):
        size = source.split(":", 1)[1]
        pipe = build_pipeline(size, device="meta")  # type: ignore[arg-type]
        return pipe, _describe(pipe, f"builder {size}")
    path = Path(resolve_source(source, where)).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise EraseError(f"{where}: {path}: not a diffusers folder (no model_index.json)")
        pipe = _folder_pipeline(path, where)
        return pipe, _describe(pipe, f"folder {path} (configs only)")
    if path.suffix.lower() in _SINGLE_FILE:
        return _single_file_architecture(path, model_config, where)
    try:
        not_a_model(path)
    except EraseError as err:
        raise EraseError(f"{where}: {err}") from None
    if _HUB_ID.match(source):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, "model_index.json")
        if isinstance(cached, str):
            folder = Path(cached).parent
            pipe = _folder_pipeline(folder, where)
            return pipe, _describe(pipe, f"{source} in the local Hugging Face cache (configs only)")
        size = "sd15" if source in SD1_HUB_IDS else PUBLISHED.get(source)
        if size is not None:
            pipe = build_pipeline(size, device="meta")  # type: ignore[arg-type]
            return pipe, _describe(pipe, f"the published configs of {source} (not in the local cache; weights not loaded)")
        raise EraseError(f"{where}: {source}: not in the local Hugging Face cache, and a dry run reads the model's configs: "
                         f"fetch them (`hf download {source} --include '*.json'`) or pass a local folder")
    raise EraseError(f"{where}: {source}: no such folder or file, and not a Hub id of the form owner/name")


def _single_file_architecture(path: Path, model_config: str | None, where: str):
    from erase.models.loading import (
        SDXL_KEY,
        check_model_config,
        header_shapes,
        read_original_yaml,
        text_config_from_shapes,
        text_encoder_kind,
    )

    if not path.is_file():
        raise EraseError(f"{where}: {path}: no such file")
    if path.suffix.lower() != ".safetensors":
        raise EraseError(f"{where}: {path}: a dry run reads the architecture from a .safetensors header; "
                         "convert the pickle checkpoint or run without --dry-run (--allow-pickle)")
    shapes = header_shapes(path)
    cfg = check_model_config(model_config, f"{where}: model_config")
    from erase.models.loading import FLUX_KEY, SD3_KEY

    if FLUX_KEY in shapes or SD3_KEY in shapes:
        return _flow_single_file_architecture(path, shapes, cfg, FLUX_KEY in shapes, where)
    if SDXL_KEY in shapes and cfg is not None and not cfg.is_dir():
        raise EraseError(f"{where}: {path}: an SDXL checkpoint's dry run reads a diffusers folder of configs (model_config DIR), "
                         f"not an original-layout YAML ({cfg.name})")
    if cfg is None and SDXL_KEY in shapes:
        raise EraseError(f"{where}: {path}: a single file's architecture needs model_config (an SDXL checkpoint: "
                         "`--model-config DIR` with a diffusers SDXL folder of configs, e.g. "
                         "`hf download stabilityai/stable-diffusion-xl-base-1.0 --include '*.json' --local-dir DIR`)")
    if cfg is None:
        raise EraseError(f"{where}: {path}: a single file's architecture needs model_config (`--model-config DIR` "
                         "with a diffusers folder of configs, or an original-layout YAML such as v1-inference.yaml)")
    if cfg.is_dir():
        pipe = _meta_pipeline(*_folder_configs(cfg, where))
        origin = f"configs {cfg} + {path.name} header ({len(shapes)} tensors)"
    else:
        import torch
        from diffusers.loaders.single_file_utils import (
            create_unet_diffusers_config_from_ldm,
            create_vae_diffusers_config_from_ldm,
        )

        original = read_original_yaml(cfg)
        meta = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
        kind = text_encoder_kind(original)
        try:
            unet = create_unet_diffusers_config_from_ldm(original, meta)
            vae = create_vae_diffusers_config_from_ldm(original, meta)
        except (KeyError, TypeError, ValueError) as err:
            raise EraseError(f"{where}: {cfg}: cannot read the UNet/VAE configuration ({err})") from None
        prediction = "v_prediction" if original["model"]["params"].get("parameterization") == "v" else "epsilon"
        pipe = _meta_pipeline(unet, vae, [text_config_from_shapes(shapes, kind, path)], prediction)
        origin = f"{cfg.name} + {path.name} header ({len(shapes)} tensors)"
    _check_header(pipe, shapes, path, where)
    return pipe, _describe(pipe, origin)

def _flow_single_file_architecture(path: Path, shapes: dict, cfg: Path | None, flux: bool, where: str):
    """A FLUX transformer file (BFL layout) or SD3 all-in-one file: the architecture from model_config DIR,
    checked against the file's transformer tensors (their number of values)."""
    import math

    from erase.models.family import family_of

    kind = "a FLUX transformer (BFL layout)" if flux else "an SD3 all-in-one checkpoint"
    if cfg is None or not cfg.is_dir():
        raise EraseError(f"{where}: {path}: {kind}'s dry run reads a diffusers folder of configs (`--model-config DIR`, "
                         "e.g. `hf download black-forest-labs/FLUX.1-dev --include '*.json' --local-dir DIR`)")
    pipe = _folder_pipeline(cfg, where)
    if (family_of(pipe).key == "flux") != flux:
        raise EraseError(f"{where}: {path}: {kind}, but model_config {cfg} describes {family_of(pipe).label}")
    keys = [k for k in shapes if flux or k.startswith("model.diffusion_model.")]
    in_file = sum(math.prod(shapes[k]) for k in keys)
    in_config = count(pipe.transformer)[1]
    if in_file != in_config:
        raise EraseError(f"{where}: {path}: its transformer tensors hold {in_file:,} numbers but the config describes "
                         f"{in_config:,}: the config is not this checkpoint's architecture")
    return pipe, _describe(pipe, f"configs {cfg} + {path.name} header ({len(shapes)} tensors)")


BYTES = {"no": 4, "fp16": 2, "bf16": 2}
OPT_STATES = {"adamw": 2, "adam": 2, "sgd": 0}


def _weight_bytes(pipe, names: tuple[str, ...], kinds: dict[str, str], wbytes: int, optimizer: str) -> dict[str, int]:
    """Frozen weights (at `wbytes` each), the original-model copy the selection implies, and fp32
    trainable weights + gradients + optimizer states."""
    frozen = original = trainable = 0
    for name in names:
        tr, tot = count(getattr(pipe, name))
        trainable += tr
        kind = kinds.get(name)
        if kind in (None, "lora"):
            frozen += (tot - tr) * wbytes
        elif kind == "partial":
            frozen += (tot - tr) * 4
            original += tr * 4  # saved originals of the trained tensors
        else:
            original += tot * wbytes  # frozen copy
    trained = trainable * 4 * (1 + 1 + OPT_STATES[optimizer])  # fp32 weights + grads + optimizer
    return {"frozen_weights": frozen, "original_model": original, "trainable_weights_grads_optimizer": trained}


_ACTIVATIONS: dict[str, dict[str, int]] = {}


def _flow_inputs(pipe) -> dict[str, Any]:
    """For FLUX / SD3: the transformer's batch-1 inputs at the native latent size and the pipeline's T5 length."""
    from erase.models.core import Models
    from erase.models.family import family_of

    if not family_of(pipe).flow:
        return {}
    models = Models.from_pipeline(pipe, device="meta")
    from erase.models.flow import transformer_inputs

    side = models.latent_shape()[-1]
    return {"inputs": transformer_inputs(models.family, side, models.max_sequence_length), "latent_size": side}


def _activations(unet, weight_copies: bool, inputs=None, latent_size: int | None = None) -> dict[str, int]:
    """count_unet_activations, once per UNet config and trainable set in a process (recipes that differ
    only in their weighting share it)."""
    import hashlib
    import json

    from erase.train.activations import count_unet_activations

    trained = hashlib.sha256("\n".join(n for n, p in unet.named_parameters() if p.requires_grad).encode()).hexdigest()
    key = json.dumps(dict(unet.config), sort_keys=True, default=str) + trained + str(weight_copies)
    if key not in _ACTIVATIONS:
        _ACTIVATIONS[key] = count_unet_activations(unet, weight_copies=weight_copies, forward_inputs=inputs,
                                                    latent_size=latent_size)
    return _ACTIVATIONS[key]


ENGINES = ("ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3")


def _units(module) -> tuple[int, int]:
    """(params of the root group, params of the largest unit) when `module` is sharded per its
    `_no_split_modules` classes: each unit owns its parameters minus those of units inside it."""
    classes = set(getattr(module, "_no_split_modules", None) or ())
    owner: dict[int, str] = {}
    for name, m in module.named_modules():  # parents come first: inner units take their parameters over
        if type(m).__name__ in classes:
            for p in m.parameters():
                owner[id(p)] = name
    sizes: dict[str, int] = {}
    for p in module.parameters():
        key = owner.get(id(p), "")
        sizes[key] = sizes.get(key, 0) + p.numel()
    root = sizes.pop("", 0)
    return root, max(sizes.values(), default=0)


def engine_peak(pipe, names: tuple[str, ...], kinds: dict[str, str], optimizer: str, engine: str, n: int,
                activations: dict[str, int]) -> dict[str, Any]:
    """Peak bytes per GPU at bf16, batch 1 per GPU, on `n` GPUs under `engine` (module docstring table)."""
    opt = OPT_STATES[optimizer]
    sharded = engine in ("fsdp", "deepspeed_zero3")
    terms = {"frozen_modules": 0, "original_model": 0, "trained_weights": 0, "gradients_optimizer": 0, "gathered": 0}
    for name in names:
        tr, tot = count(getattr(pipe, name))
        kind = kinds.get(name)
        if kind is None or kind == "lora":  # not prepared (LoRA: ddp only): whole, frozen part in bf16
            terms["frozen_modules"] += (tot - tr) * 2
            terms["trained_weights"] += tr * 4
            terms["gradients_optimizer"] += tr * 4 * (1 + opt)
            continue
        frozen = tot - tr
        if engine == "ddp":
            terms["trained_weights"] += tr * 4 + frozen * 4
            terms["gradients_optimizer"] += tr * 4 * (1 + opt)
        elif engine == "deepspeed_zero2":
            terms["trained_weights"] += (tr + frozen) * 2 + tr * 4 / n
            terms["gradients_optimizer"] += tr * 4 * (1 + opt) / n
        else:
            terms["trained_weights"] += (tr + frozen) * 4 / n
            terms["gradients_optimizer"] += tr * 4 * (1 + opt) / n
            root, unit = _units(getattr(pipe, name))
            terms["gathered"] += (root + 2 * unit) * 2 + unit * 4
        if kind == "partial":
            terms["original_model"] += tr * 4 / (n if sharded else 1)
        else:
            terms["original_model"] += tot * 2  # a frozen bf16 copy on every GPU
    terms = {k: int(v) for k, v in terms.items()}
    base = sum(terms.values())
    act, act_ckpt = activations["no_checkpointing"], activations["checkpointing"]
    return {"engine": engine, "num_gpus": n, **terms, "activations": act, "activations_checkpointing": act_ckpt,
            "peak": base + act, "peak_checkpointing": base + act_ckpt}


def _refusal(engine: str, kinds: dict[str, str]) -> str | None:
    """Why a launch under `engine` would refuse this run (erase/train/engines.py: check_engine), or None."""
    if engine == "ddp":
        return None
    if len(kinds) > 1:
        return f"trains {' and '.join(kinds)}: {engine} prepares one module per run"
    if "lora" in kinds.values():
        return "LoRA runs use ddp"
    if engine == "deepspeed_zero3" and "partial" in kinds.values():
        return "a partial parameter set under ZeRO-3 (partitioned weights cannot take the original values)"
    return None


def _other_params(cfg: RunConfig) -> RunConfig:
    """The same run with the other way of training the same parameter set: LoRA <-> full weights (a LoRA for a
    full recipe at erase's default LoRA options, what `params.lora={}` gives)."""
    import dataclasses

    from erase.train.config import LoraOptions

    lora = None if cfg.params.lora is not None else LoraOptions()
    return dataclasses.replace(cfg, params=dataclasses.replace(cfg.params, lora=lora))


def _variant(report: dict[str, Any], lora: Any) -> dict[str, Any]:
    """What the side-by-side table shows of one report: trainable per component, peaks, per-GPU peaks."""
    peak = report["peak_bf16_batch1"]
    gpu = report.get("per_gpu")
    return {"label": f"LoRA rank {lora.rank}" if lora is not None else "full",
            "trainable": {name: m["trainable"] for name, m in report["modules"].items()},
            "lora_adapters": sum(m["lora_adapters"] for m in report["modules"].values()),
            "peak": peak["peak"], "peak_checkpointing": peak["peak_checkpointing"],
            "per_gpu": None if gpu is None else {k: gpu[k] for k in ("peak", "peak_checkpointing", "refused")}}


def dry_run(cfg: RunConfig, where: str = "<config>", activations: bool = True, num_gpus: int = 1,
            engine: str | None = None, compare: bool = False) -> dict[str, Any]:
    """The dry-run report; `activations=False` skips the meta-device activation count (about 2 s at SDXL size).
    `num_gpus`, `engine`: also the peak per GPU on that many GPUs under that engine (ENGINES).
    `compare` (with `activations`; `erase train --dry-run` sets it): also the other way of training the same set
    (LoRA <-> full), side by side (`report["side_by_side"]`: LoRA first)."""
    objective = build_objective(cfg.method, cfg.objective, where)
    spec = cfg.params.train if cfg.params.train != "auto" else objective.default_params
    pipe, how = model_architecture(cfg.model, cfg.model_config, f"{where}: model")
    pipe.vae.requires_grad_(False)
    sel = select_parameters(trainable_modules(pipe), spec, cfg.params.exclude,
                            cfg.params.lora, f"{where}: params.train")
    t = cfg.train
    names = pipeline_modules(pipe)
    report: dict[str, Any] = {"architecture": how, "method": cfg.method, "param_set": spec, "kinds": sel.kinds, "modules": {},
                              "tensors": {m: _kinds_of_tensors(names) for m, names in sel.names.items()}}
    for name in names:
        tr, tot = count(getattr(pipe, name))
        adapters = sum(p.numel() for n, p in getattr(pipe, name).named_parameters() if "lora_" in n)
        # total: the model's own parameters (the published count); LoRA adapters are counted apart
        report["modules"][name] = {"trainable": tr, "total": tot - adapters, "lora_adapters": adapters}
    # unset mixed precision: the launcher's choice, counted as fp32
    weights = _weight_bytes(pipe, names, sel.kinds, BYTES[t.mixed_precision or "no"], t.optimizer)
    report.update(
        trainable=sum(m["trainable"] for m in report["modules"].values()),
        total=sum(m["total"] for m in report["modules"].values()),
        forget_samples=(len(concept_samples(cfg.concepts, [], where)[0]) if cfg.concepts
                        else len(expand(cfg.data.forget, f"{where}: data.forget"))),
        retain_samples=len(expand(cfg.data.retain, f"{where}: data.retain")),
        needs=sorted(objective.needs),
        prompt_files=_prompt_files(cfg),
        memory_bytes={**weights, "total_excluding_activations": sum(weights.values())},
    )
    if activations:
        bf16 = sum(_weight_bytes(pipe, names, sel.kinds, BYTES["bf16"], t.optimizer).values())
        # a UNet trained in full or in part is held in fp32: autocast's bf16 weight copies are extra memory
        net_name = "transformer" if getattr(pipe, "transformer", None) is not None else "unet"
        act = _activations(denoiser(pipe), weight_copies=sel.kinds.get(net_name) in ("full", "partial"),
                           **_flow_inputs(pipe))
        side = act["latent_size"] * 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        report["peak_bf16_batch1"] = {
            "resolution": side, "weights_grads_optimizer": bf16,
            "activations": act["no_checkpointing"], "activations_checkpointing": act["checkpointing"],
            "peak": bf16 + act["no_checkpointing"], "peak_checkpointing": bf16 + act["checkpointing"],
        }
        if engine is not None:
            if engine in ("fsdp", "deepspeed_zero3") and net_name in sel.kinds:
                # gathered bf16 weights are resharded, not kept for backward
                act = _activations(denoiser(pipe), weight_copies=False, **_flow_inputs(pipe))
            report["per_gpu"] = engine_peak(pipe, names, sel.kinds, t.optimizer, engine, num_gpus, act)
            report["per_gpu"]["refused"] = _refusal(engine, sel.kinds)
        if compare:
            other_cfg = _other_params(cfg)
            other = dry_run(other_cfg, where, activations=True, num_gpus=num_gpus, engine=engine, compare=False)
            pair = [_variant(report, cfg.params.lora), _variant(other, other_cfg.params.lora)]
            report["side_by_side"] = pair if cfg.params.lora is not None else pair[::-1]
    return report


def _prompt_files(cfg: RunConfig) -> list[str]:
    """Per data.*.file: the loader's counts and which column fed which field."""
    lines = []
    for key in ("forget", "retain", "anchor"):
        ps = getattr(cfg.data, key)
        if ps.file:
            suite = read_suite(ps.file)  # already validated by expand() above
            lines += [f"data.{key}.file: {suite.summary()}", f"data.{key}.file: {suite.describe_columns()}"]
    return lines


def _kinds_of_tensors(names: list[str]) -> dict[str, Any]:
    """Trained tensors summarised by the last three non-numeric parts of their names (e.g.
    attn2.to_k.weight), and their number."""
    kinds = sorted({".".join([p for p in n.split(".") if not p.isdigit()][-3:]) for n in names})
    return {"count": len(names), "kinds": kinds}


def format_report(r: dict[str, Any]) -> str:
    gib = 1024**3
    lines = [
        f"dry run: {r['method']} on {r['architecture']}",
        f"  trained parameter set: {r['param_set']} ({', '.join(f'{k}: {v}' for k, v in r['kinds'].items())})",
    ]
    for name, m in r["modules"].items():
        extra = f" (+ {m['lora_adapters']:,} in LoRA adapters)" if m.get("lora_adapters") else ""
        lines.append(f"  {name:<14} trainable {m['trainable']:>13,} / {m['total']:>14,}{extra}")
        t = r.get("tensors", {}).get(name)
        if t:
            shown = ", ".join(t["kinds"][:8]) + (f", ... ({len(t['kinds'])} kinds)" if len(t["kinds"]) > 8 else "")
            lines.append(f"  {'':<14} {t['count']} tensors: {shown}")
    lines.append(f"  total          trainable {r['trainable']:>13,} / {r['total']:>14,} ({100 * r['trainable'] / max(1, r['total']):.2f}%)")
    lines.append(f"  data: {r['forget_samples']} forget samples, {r['retain_samples']} retain samples; needs: {', '.join(r['needs']) or 'prompts only'}")
    lines += [f"  {line}" for line in r.get("prompt_files", [])]
    mem = r["memory_bytes"]
    lines.append("  estimated memory (weights, grads, optimizer; activations not included):")
    for k, v in mem.items():
        lines.append(f"    {k:<34} {v / gib:8.2f} GiB")
    peak = r.get("peak_bf16_batch1")
    if peak:
        px = peak["resolution"]
        lines += [
            f"  estimated peak memory, bf16, batch 1, {px}x{px} px (weights + grads + Adam states + activations; an estimate):",
            f"    {'weights_grads_optimizer_bf16':<34} {peak['weights_grads_optimizer'] / gib:8.2f} GiB",
            f"    {'activations':<34} {peak['activations'] / gib:8.2f} GiB",
            f"    {'activations_gradient_checkpointing':<34} {peak['activations_checkpointing'] / gib:8.2f} GiB",
            f"    {'peak':<34} {peak['peak'] / gib:8.2f} GiB",
            f"    {'peak_gradient_checkpointing':<34} {peak['peak_checkpointing'] / gib:8.2f} GiB",
        ]
    gpu = r.get("per_gpu")
    if gpu:
        lines.append(f"  estimated peak memory PER GPU on {gpu['num_gpus']} GPUs under {gpu['engine']} "
                     "(bf16, batch 1 per GPU; configs/accelerate/; an estimate):")
        for k in ("trained_weights", "gradients_optimizer", "original_model", "frozen_modules", "gathered",
                  "activations", "activations_checkpointing", "peak", "peak_checkpointing"):
            lines.append(f"    {k:<34} {gpu[k] / gib:8.2f} GiB")
        if gpu.get("refused"):
            lines.append(f"    note: a launch under {gpu['engine']} refuses this run: {gpu['refused']}")
    lines += _side_by_side(r)
    return "\n".join(lines)


def _side_by_side(r: dict[str, Any]) -> list[str]:
    """LoRA and full training of the same parameter set, in two columns."""
    pair = r.get("side_by_side")
    if not pair:
        return []
    gib = 1024**3
    px = r["peak_bf16_batch1"]["resolution"]
    gpu = r.get("per_gpu")

    def row(label: str, values: list[str]) -> str:
        return f"    {label:<34} " + " ".join(f"{v:>16}" for v in values)

    lines = [f"  full and LoRA side by side (parameter set {r['param_set']}; bf16, batch 1, {px}x{px} px; estimates):",
             row("", [v["label"] for v in pair])]
    for name in pair[0]["trainable"]:
        lines.append(row(f"{name} trainable", [f"{v['trainable'][name]:,}" for v in pair]))
    lines.append(row("total trainable", [f"{sum(v['trainable'].values()):,}" for v in pair]))
    lines.append(row("peak", [f"{v['peak'] / gib:.2f} GiB" for v in pair]))
    lines.append(row("peak_gradient_checkpointing", [f"{v['peak_checkpointing'] / gib:.2f} GiB" for v in pair]))
    if gpu:
        lines.append(f"    per GPU on {gpu['num_gpus']} GPUs under {gpu['engine']}:")
        lines.append(row("  peak", [f"{v['per_gpu']['peak'] / gib:.2f} GiB" for v in pair]))
        lines.append(row("  peak_gradient_checkpointing", [f"{v['per_gpu']['peak_checkpointing'] / gib:.2f} GiB"
                                                            for v in pair]))
        for v in pair:
            if v["per_gpu"]["refused"]:
                lines.append(f"    note: {v['label']}: a launch under {gpu['engine']} refuses it: {v['per_gpu']['refused']}")
    return lines
