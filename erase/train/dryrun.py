"""`erase train --dry-run`: build the run at real size without weights, check it, estimate memory.

Everything is built on the meta device (nothing allocated): the objective and its config, the
parameter selection (LoRA adapters included), and the data prompts. The architecture comes from
the model's real configs -- a diffusers folder, the local Hugging Face cache, `model_config`
(a folder of configs or an original-layout YAML) with a single file's header shapes -- or, for
the SD-1.4/1.5 Hub ids, from their published configs (erase's `sd15` builder reproduces them);
anything else fails with one line naming what the dry run needs. SDXL is refused by name. The memory estimate counts
weights in their training dtypes, the original-model copy the selection implies, gradients and
optimizer state; activations are not counted (they depend on resolution and batch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from erase.errors import EraseError
from erase.objectives import build_objective
from erase.prompts import read_suite
from erase.train.config import RunConfig
from erase.train.data import expand
from erase.train.params import count, select_parameters

# Hub ids whose published configs are SD-1.x's, built at real size by `build_pipeline("sd15")`.
SD1_HUB_IDS = ("CompVis/stable-diffusion-v1-4", "stable-diffusion-v1-5/stable-diffusion-v1-5", "runwayml/stable-diffusion-v1-5",
               "CompVis/stable-diffusion-v1-1", "CompVis/stable-diffusion-v1-2", "CompVis/stable-diffusion-v1-3")


def _meta_pipeline(unet_cfg: dict, vae_cfg: dict, text_cfg, prediction: str = "epsilon"):
    """A StableDiffusionPipeline of these configs on the meta device."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from erase.models.builder import build_pipeline

    pipe = build_pipeline("tiny", device="meta")
    with init_empty_weights():
        pipe.unet = UNet2DConditionModel.from_config(unet_cfg)
        pipe.vae = AutoencoderKL.from_config(vae_cfg)
        pipe.text_encoder = CLIPTextModel(text_cfg)
    pipe.scheduler.register_to_config(prediction_type=prediction)
    return pipe


def _folder_configs(folder: Path, where: str) -> tuple[dict, dict, Any, str]:
    from transformers import CLIPTextConfig

    from erase.models.loading import check_supported_folder, read_json_object, unsupported

    check_supported_folder(folder, where)
    for part in ("unet", "vae", "text_encoder"):
        if not (folder / part / "config.json").is_file():
            raise EraseError(f"{where}: {folder}: {part}/config.json missing (a dry run reads the model's configs)")
    unet = read_json_object(folder / "unet" / "config.json", where)
    if unet.get("addition_embed_type") == "text_time":
        raise unsupported(f"{where}: {folder}: Stable Diffusion XL (unet addition_embed_type text_time)")
    sched = folder / "scheduler" / "scheduler_config.json"
    prediction = read_json_object(sched, where).get("prediction_type", "epsilon") if sched.is_file() else "epsilon"
    return unet, read_json_object(folder / "vae" / "config.json", where), CLIPTextConfig.from_pretrained(folder / "text_encoder"), prediction


def _describe(pipe, origin: str) -> str:
    from erase.models.loading import describe_pipeline

    kind, _, rest = describe_pipeline(pipe).partition(": ")
    return f"{kind} architecture from {origin}: {rest}"


def _check_header(pipe, shapes: dict[str, tuple[int, ...]], path: Path, where: str) -> None:
    """The single file's tensors must hold as many numbers per component as the configs describe."""
    import math

    from erase.export.single_file import OPENCLIP_PREFIX, UNET_PREFIX, VAE_PREFIX

    openclip = any(k.startswith(OPENCLIP_PREFIX) for k in shapes)
    if openclip != (pipe.text_encoder.config.hidden_act == "gelu"):
        raise EraseError(f"{where}: {path}: its text encoder is {'OpenCLIP (SD-2)' if openclip else 'CLIP (SD-1)'} but the config "
                         f"describes {pipe.text_encoder.config.hidden_act} activations: the config is not this checkpoint's architecture")
    proj = next((shapes[k] for k in shapes if k.startswith(UNET_PREFIX) and k.endswith("proj_in.weight")), None)
    if proj is not None and (len(proj) == 2) != bool(pipe.unet.config.use_linear_projection):
        raise EraseError(f"{where}: {path}: its UNet attention projections are {'linear' if len(proj) == 2 else 'convolutions'} but "
                         "the config says otherwise (use_linear_projection): the config is not this checkpoint's architecture")
    text_extra = (OPENCLIP_PREFIX + "transformer.resblocks.23.", OPENCLIP_PREFIX + "text_projection", OPENCLIP_PREFIX + "logit_scale")
    prefixes = {"unet": (UNET_PREFIX,), "vae": (VAE_PREFIX,), "text_encoder": ("cond_stage_model.",)}
    for name, (pre,) in prefixes.items():
        keys = [k for k in shapes if k.startswith(pre) and not k.endswith("position_ids") and not k.startswith(text_extra)]
        in_file = sum(math.prod(shapes[k]) for k in keys)
        in_config = count(getattr(pipe, name))[1]
        if in_file != in_config:
            raise EraseError(f"{where}: {path}: its {name} tensors hold {in_file:,} numbers but the config describes "
                             f"{in_config:,}: the config is not this checkpoint's architecture")


def model_architecture(source: str, model_config: str | None, where: str = "model"):
    """(pipeline on the meta device, one line saying where its architecture was read from)."""
    from erase.models.builder import build_pipeline
    from erase.models.loading import (
        _HUB_ID,
        _SINGLE_FILE,
        SDXL_HUB_ID,
        not_a_model,
        resolve_source,
        unsupported,
    )

    if source.startswith("builder:"):
        size = source.split(":", 1)[1]
        return build_pipeline(size, device="meta"), f"builder {size}"  # type: ignore[arg-type]
    path = Path(resolve_source(source, where)).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise EraseError(f"{where}: {path}: not a diffusers folder (no model_index.json)")
        pipe = _meta_pipeline(*_folder_configs(path, where))
        return pipe, _describe(pipe, f"folder {path} (configs only)")
    if path.suffix.lower() in _SINGLE_FILE:
        return _single_file_architecture(path, model_config, where)
    try:
        not_a_model(path)
    except EraseError as err:
        raise EraseError(f"{where}: {err}") from None
    if _HUB_ID.match(source):
        if SDXL_HUB_ID.search(source):
            raise unsupported(f"{where}: {source}: Stable Diffusion XL")
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, "model_index.json")
        if isinstance(cached, str):
            folder = Path(cached).parent
            pipe = _meta_pipeline(*_folder_configs(folder, where))
            return pipe, _describe(pipe, f"{source} in the local Hugging Face cache (configs only)")
        if source in SD1_HUB_IDS:
            pipe = build_pipeline("sd15", device="meta")
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
        unsupported,
    )

    if not path.is_file():
        raise EraseError(f"{where}: {path}: no such file")
    if path.suffix.lower() != ".safetensors":
        raise EraseError(f"{where}: {path}: a dry run reads the architecture from a .safetensors header; "
                         "convert the pickle checkpoint or run without --dry-run (--allow-pickle)")
    shapes = header_shapes(path)
    if SDXL_KEY in shapes:
        raise unsupported(f"{where}: {path}: a Stable Diffusion XL checkpoint")
    cfg = check_model_config(model_config, f"{where}: model_config")
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
        pipe = _meta_pipeline(unet, vae, text_config_from_shapes(shapes, kind, path), prediction)
        origin = f"{cfg.name} + {path.name} header ({len(shapes)} tensors)"
    _check_header(pipe, shapes, path, where)
    return pipe, _describe(pipe, origin)

BYTES = {"no": 4, "fp16": 2, "bf16": 2}
OPT_STATES = {"adamw": 2, "adam": 2, "sgd": 0}


def dry_run(cfg: RunConfig, where: str = "<config>") -> dict[str, Any]:
    objective = build_objective(cfg.method, cfg.objective, where)
    spec = cfg.params.train if cfg.params.train != "auto" else objective.default_params
    pipe, how = model_architecture(cfg.model, cfg.model_config, f"{where}: model")
    pipe.vae.requires_grad_(False)
    sel = select_parameters({"unet": pipe.unet, "text_encoder": pipe.text_encoder}, spec, cfg.params.exclude,
                            cfg.params.lora, f"{where}: params.train")
    t = cfg.train
    wbytes = BYTES[t.mixed_precision or "no"]  # unset: the launcher's choice, counted as fp32
    report: dict[str, Any] = {"architecture": how, "method": cfg.method, "param_set": spec, "kinds": sel.kinds, "modules": {},
                              "tensors": {m: _kinds_of_tensors(names) for m, names in sel.names.items()}}
    trainable_total = frozen_bytes = original_bytes = 0
    for name in ("unet", "text_encoder", "vae"):
        module = getattr(pipe, name)
        tr, tot = count(module)
        report["modules"][name] = {"trainable": tr, "total": tot}
        trainable_total += tr
        kind = sel.kinds.get(name)
        if kind in (None, "lora"):
            frozen_bytes += (tot - tr) * wbytes
        elif kind == "partial":
            frozen_bytes += (tot - tr) * 4
            original_bytes += tr * 4  # saved originals of the trained tensors
        else:
            original_bytes += tot * wbytes  # frozen copy
    trained_bytes = trainable_total * 4 * (1 + 1 + OPT_STATES[t.optimizer])  # fp32 weights + grads + optimizer
    estimate = frozen_bytes + original_bytes + trained_bytes
    report.update(
        trainable=trainable_total,
        total=sum(m["total"] for m in report["modules"].values()),
        forget_samples=len(expand(cfg.data.forget, f"{where}: data.forget")),
        retain_samples=len(expand(cfg.data.retain, f"{where}: data.retain")),
        needs=sorted(objective.needs),
        prompt_files=_prompt_files(cfg),
        memory_bytes={"frozen_weights": frozen_bytes, "original_model": original_bytes,
                      "trainable_weights_grads_optimizer": trained_bytes, "total_excluding_activations": estimate},
    )
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
        lines.append(f"  {name:<13} trainable {m['trainable']:>13,} / {m['total']:>13,}")
        t = r.get("tensors", {}).get(name)
        if t:
            shown = ", ".join(t["kinds"][:8]) + (f", ... ({len(t['kinds'])} kinds)" if len(t["kinds"]) > 8 else "")
            lines.append(f"  {'':<13} {t['count']} tensors: {shown}")
    lines.append(f"  total         trainable {r['trainable']:>13,} / {r['total']:>13,} ({100 * r['trainable'] / max(1, r['total']):.2f}%)")
    lines.append(f"  data: {r['forget_samples']} forget samples, {r['retain_samples']} retain samples; needs: {', '.join(r['needs']) or 'prompts only'}")
    lines += [f"  {line}" for line in r.get("prompt_files", [])]
    mem = r["memory_bytes"]
    lines.append("  estimated memory (weights, grads, optimizer; activations not included):")
    for k, v in mem.items():
        lines.append(f"    {k:<34} {v / gib:8.2f} GiB")
    return "\n".join(lines)
