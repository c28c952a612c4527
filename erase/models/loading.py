"""Load a diffusion pipeline from a folder, a Hub id or a single-file checkpoint, then check it.

Families: SD-1.x and SD-2.x (StableDiffusionPipeline), SDXL (StableDiffusionXLPipeline), FLUX.1
(FluxPipeline) and SD3/3.5 (StableDiffusion3Pipeline), told apart by model_index.json (`_class_name`,
`text_encoder_2`) or, for single files, by their keys (`conditioner.embedders.1`: SDXL; `double_blocks.`:
a FLUX transformer in Black Forest Labs' layout; `joint_blocks.`: SD3). Other families (the SDXL refiner,
Kandinsky, PixArt, ...) are refused by their pipeline class, never by a model's name.

One place decides how weights are read, so every command gets the same guarantees:
safetensors by default; pickle (`.ckpt`/`.pt`) only with `allow_pickle=True` and then through
`torch.load(weights_only=True)`; never `trust_remote_code`; the safety checker off; and sanity
checks that turn silent breakage (a 2-token offline tokenizer, mismatched components) into one line.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from diffusers import (
    FluxPipeline,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from diffusers.utils import logging as dlogging

from erase.errors import EraseError
from erase.models.family import family_of
from erase.models.sources import resolve_source
from erase.tokenizer import check_tokenizer

if dlogging.get_verbosity() >= dlogging.ERROR:  # quiet (the CLI without --verbose): no loading bars either
    dlogging.disable_progress_bar()

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SINGLE_FILE = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


SDXL_KEY = "conditioner.embedders.1.model.positional_embedding"  # SDXL's second text encoder in a single file
FLUX_KEY = "double_blocks.0.img_attn.qkv.weight"  # a FLUX transformer in Black Forest Labs' layout (flux1-dev.safetensors)
SD3_KEY = "model.diffusion_model.joint_blocks.0.context_block.attn.qkv.weight"  # SD3's MMDiT in an all-in-one file
SDXL_HUB_ID = re.compile(r"stable-diffusion-xl|sdxl", re.IGNORECASE)  # SDXL by name (the dry run's estimates)
_YAML = (".yaml", ".yml")
Pipeline = StableDiffusionPipeline | StableDiffusionXLPipeline | FluxPipeline | StableDiffusion3Pipeline
FLOW_PIPELINES = {"FluxPipeline": FluxPipeline, "StableDiffusion3Pipeline": StableDiffusion3Pipeline}


def unsupported(what: str) -> EraseError:
    return EraseError(f"{what} is not supported yet (erase handles SD-1.x, SD-2.x, SDXL, FLUX.1 and SD3/3.5: "
                      "StableDiffusionPipeline, StableDiffusionXLPipeline, FluxPipeline, StableDiffusion3Pipeline)")


def is_sdxl(pipe) -> bool:
    return family_of(pipe).key == "sdxl"


def read_json_object(path: Path, where: str | None = None) -> dict:
    """A JSON file that must hold an object (configs, model_index.json, run.json); one-line errors."""
    import json

    prefix = f"{where}: " if where else ""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise EraseError(f"{prefix}{path}: not valid JSON ({_first_line(err)})") from None
    if not isinstance(data, dict):
        raise EraseError(f"{prefix}{path}: expected a JSON object at the top level")
    return data


def pipeline_class(index: dict, what: str) -> type:
    """The pipeline class of a model_index.json (SD, SDXL, FLUX, SD3); other classes are refused."""
    cls = str(index.get("_class_name", ""))
    if cls in FLOW_PIPELINES:
        missing = [n for n in flow_components(cls) if not isinstance(index.get(n), list) or index[n][0] is None]
        if missing:
            raise EraseError(f"{what}: model_index.json: {cls} without {' and '.join(missing)}")
        return FLOW_PIPELINES[cls]
    if "text_encoder_2" in index or cls.startswith("StableDiffusionXL"):
        if cls and cls != "StableDiffusionXLPipeline":
            raise unsupported(f"{what}: {cls}")
        if not isinstance(index.get("text_encoder"), list) or index["text_encoder"][0] is None:
            raise unsupported(f"{what}: {cls or 'an SDXL pipeline'} without the CLIP text encoder (the SDXL refiner)")
        missing = [n for n in _SDXL_COMPONENTS if not isinstance(index.get(n), list) or index[n][0] is None]
        if missing:
            raise EraseError(f"{what}: model_index.json: {cls} without {' and '.join(missing)} (SDXL has two text encoders)")
        return StableDiffusionXLPipeline
    if cls and (not cls.startswith("StableDiffusion") or cls.startswith("StableDiffusion3")):
        raise unsupported(f"{what}: {cls}")
    return StableDiffusionPipeline


def flow_components(cls: str) -> tuple[str, ...]:
    """The components a FluxPipeline / StableDiffusion3Pipeline folder must have."""
    texts = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
    if cls == "StableDiffusion3Pipeline":
        texts += ("text_encoder_3", "tokenizer_3")
    return ("transformer", "vae", "scheduler", *texts)


def check_supported_folder(path: Path, where: str | None = None) -> type:
    """Refuse a diffusers folder of an architecture erase does not handle (by its pipeline class);
    return the pipeline class that loads it."""
    prefix = f"{where}: " if where else ""
    return pipeline_class(read_json_object(path / "model_index.json", where), f"{prefix}{path}")


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def finish_pipeline(pipe: Pipeline, source: str) -> Pipeline:
    """Safety checker off, no progress bars, and `check_pipeline` (after any component override)."""
    if family_of(pipe).key in ("sd1", "sd2"):  # SDXL, FLUX and SD3 pipelines have no safety checker
        pipe.safety_checker = None
        pipe.register_to_config(requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    check_pipeline(pipe, source)
    return pipe


def describe_pipeline(pipe) -> str:
    """One line: 'SD-1.x: unet [...] x L, cross-attention D; text encoder ...; vae ...; prediction'."""
    if family_of(pipe).flow:
        return describe_flow(pipe)
    u, t = pipe.unet.config, pipe.text_encoder.config
    text = f"text encoder {t.num_hidden_layers} x {t.hidden_size} ({t.hidden_act})"
    kind = family_of(pipe).label
    if is_sdxl(pipe):
        t2 = pipe.text_encoder_2.config
        text = (f"text encoders {t.num_hidden_layers} x {t.hidden_size} ({t.hidden_act}) + {t2.num_hidden_layers} x "
                f"{t2.hidden_size} ({t2.hidden_act}, pooled {t2.projection_dim}); added conditioning {u.addition_embed_type}")
    return (f"{kind}: unet {list(u.block_out_channels)} x {u.layers_per_block}, cross-attention {u.cross_attention_dim}; "
            f"{text}; vae latent {pipe.vae.config.latent_channels}; "
            f"{pipe.scheduler.config.get('prediction_type', 'epsilon')} prediction")


def describe_flow(pipe) -> str:
    """One line for FLUX / SD3: blocks, widths, text encoders, VAE latents, guidance."""
    family, c = family_of(pipe), pipe.transformer.config
    texts = [getattr(pipe, n) for n in ("text_encoder", "text_encoder_2", "text_encoder_3") if getattr(pipe, n, None) is not None]
    words = []
    for te in texts:
        tc = te.config
        words.append(f"T5 {tc.num_layers} x {tc.d_model}" if hasattr(tc, "d_model")
                     else f"CLIP {tc.num_hidden_layers} x {tc.hidden_size} ({tc.hidden_act})")
    width = c.num_attention_heads * c.attention_head_dim
    if family.key == "flux":
        blocks = (f"{c.num_layers} double + {c.num_single_layers} single blocks x {width}, "
                  f"{'guidance embedding' if c.guidance_embeds else 'no guidance embedding'}")
    else:
        blocks = f"{c.num_layers} joint blocks x {width}{', qk norm' if getattr(c, 'qk_norm', None) else ''}"
    return (f"{family.label}: transformer {blocks}; text encoders {' + '.join(words)}; vae latent "
            f"{pipe.vae.config.latent_channels}; flow matching (velocity)")


def check_flow_pipeline(pipe: Pipeline, source: str) -> None:
    """FLUX / SD3 shape agreements: text widths vs the transformer's joint-attention and pooled inputs, latents."""
    family, c = family_of(pipe), pipe.transformer.config
    check_tokenizer(pipe.tokenizer, pipe.text_encoder.config.vocab_size, f"{source}: tokenizer")
    if family.key == "sd3":
        check_tokenizer(pipe.tokenizer_2, pipe.text_encoder_2.config.vocab_size, f"{source}: tokenizer_2")
    t5 = pipe.text_encoder_2 if family.key == "flux" else pipe.text_encoder_3
    if t5.config.d_model != c.joint_attention_dim:
        raise EraseError(f"{source}: transformer.joint_attention_dim is {c.joint_attention_dim} but the T5 encoder's d_model "
                         f"is {t5.config.d_model}")
    pooled = pipe.text_encoder.config.hidden_size if family.key == "flux" else (
        pipe.text_encoder.config.projection_dim + pipe.text_encoder_2.config.projection_dim)
    if c.pooled_projection_dim != pooled:
        raise EraseError(f"{source}: transformer.pooled_projection_dim is {c.pooled_projection_dim} but the CLIP pooled "
                         f"embedding is {pooled} wide")
    latent = pipe.vae.config.latent_channels * (4 if family.key == "flux" else 1)
    if c.in_channels != latent:
        raise EraseError(f"{source}: transformer.in_channels is {c.in_channels} but the VAE's latents give {latent}")


def check_pipeline(pipe: Pipeline, source: str) -> None:
    """Shape agreements between components that diffusers does not check at load time."""
    if family_of(pipe).flow:
        check_flow_pipeline(pipe, source)
        _check_finite(pipe, source)
        return
    te, unet, vae = pipe.text_encoder.config, pipe.unet.config, pipe.vae.config
    check_tokenizer(pipe.tokenizer, te.vocab_size, f"{source}: tokenizer")
    text_width, what = te.hidden_size, "text_encoder.hidden_size"
    if is_sdxl(pipe):
        te2 = pipe.text_encoder_2.config
        check_tokenizer(pipe.tokenizer_2, te2.vocab_size, f"{source}: tokenizer_2")
        text_width, what = te.hidden_size + te2.hidden_size, "text_encoder.hidden_size + text_encoder_2.hidden_size"
        if unet.addition_embed_type != "text_time":
            raise EraseError(f"{source}: unet.addition_embed_type is {unet.addition_embed_type!r}; SDXL's UNet takes 'text_time'")
        want = 6 * unet.addition_time_embed_dim + te2.projection_dim
        if unet.projection_class_embeddings_input_dim != want:
            raise EraseError(f"{source}: unet.projection_class_embeddings_input_dim is {unet.projection_class_embeddings_input_dim} "
                             f"but 6 size/crop ids x addition_time_embed_dim + text_encoder_2.projection_dim is {want}")
    if unet.cross_attention_dim != text_width:
        raise EraseError(f"{source}: unet.cross_attention_dim is {unet.cross_attention_dim} but {what} is {text_width}")
    if unet.in_channels != vae.latent_channels:
        raise EraseError(f"{source}: unet.in_channels is {unet.in_channels} but vae.latent_channels is {vae.latent_channels}")
    _check_finite(pipe, source)


def _check_finite(pipe: Pipeline, source: str) -> None:
    from erase.models.core import pipeline_modules

    for name in pipeline_modules(pipe):
        module = getattr(pipe, name)
        bad = [n for n, p in module.named_parameters() if p.device.type != "meta" and p.is_floating_point() and not torch.isfinite(p).all()]
        if bad:
            raise EraseError(f"{source}: {name}.{bad[0]} contains NaN or inf weights ({len(bad)} tensors in all)")


def load_pipeline(
    source: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    allow_pickle: bool = False,
    config: str | os.PathLike | None = None,
    variant: str | None = None,
    unet: str | os.PathLike | None = None,
    text_encoder: str | os.PathLike | None = None,
    lora: str | os.PathLike | None = None,
) -> Pipeline:
    """A StableDiffusionPipeline (SD-1/2), StableDiffusionXLPipeline, FluxPipeline or StableDiffusion3Pipeline
    from a diffusers folder, a Hub id (local cache first) or one checkpoint file.

    Args:
        source: `zoo:NAME` (an embedded model), a run directory, a folder with model_index.json, `owner/name` on the Hub, or a `.safetensors` file
            in the original SD layout (`.ckpt`/`.pt` need `allow_pickle`).
        config: for single files, a local diffusers folder (or a folder of its configs: model_index.json
            and the component config.json files) describing the model, or an original-layout YAML
            (v1-inference.yaml, v2-inference.yaml, v2-inference-v.yaml); without it diffusers would
            fetch a config from the Hub, which fails offline. Ignored for folders and Hub ids.
        unet, text_encoder, lora: component overrides on top of the loaded model (a published erased
            UNet or text encoder, a LoRA), `erase.models.components.apply_overrides`.
        allow_pickle: read pickle checkpoints. They can run code when unpickled, so this is
            off unless the user asks; even then only `weights_only` loading is used.
    """
    src = resolve_source(source)
    path = Path(src).expanduser()

    def _finish(pipe: Pipeline, where: str) -> Pipeline:
        if unet is not None or text_encoder is not None or lora is not None:
            from erase.models.components import apply_overrides

            apply_overrides(pipe, unet=unet, text_encoder=text_encoder, lora=lora, allow_pickle=allow_pickle)
        return finish_pipeline(pipe, where)

    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise EraseError(f"{path}: not a diffusers folder (no model_index.json)")
        check_model_index(path / "model_index.json")
        cls = check_supported_folder(path)
        try:
            pipe = cls.from_pretrained(
                path, dtype=dtype, local_files_only=True, use_safetensors=None if allow_pickle else True,
                variant=variant, **_no_extras(cls),
            )
        except (OSError, ValueError) as err:
            raise EraseError(f"{path}: cannot load pipeline ({_first_line(err)})") from None
        return _finish(pipe, str(path))
    if path.suffix.lower() in _SINGLE_FILE:
        return _finish(_load_single_file(path, dtype, allow_pickle, config), str(path))
    not_a_model(path)
    if _HUB_ID.match(src):
        return _finish(_load_hub(src, dtype, variant), src)
    raise EraseError(f"{src}: no such folder or file, and not a Hub id of the form owner/name")


def not_a_model(path: Path) -> None:
    """A YAML/JSON given as the model: say it is a config and where it goes."""
    if path.is_file() and path.suffix.lower() in (*_YAML, ".json"):
        raise EraseError(f"{path}: a config file, not model weights: pass the checkpoint as the model and this file as "
                         "--config (erase train: --model-config)")


_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_SDXL_COMPONENTS = ("text_encoder_2", "tokenizer_2")


def _no_extras(cls: type) -> dict:
    """from_pretrained keywords that switch off what erase never uses: the safety checker (SD) or
    the invisible watermark (SDXL; erase's own loops never call the pipeline)."""
    if cls in FLOW_PIPELINES.values():
        return {}
    return {"add_watermarker": False} if cls is StableDiffusionXLPipeline else {"safety_checker": None}


def check_model_index(path: Path) -> None:
    """model_index.json must describe a pipeline (diffusers fails on anything else with a KeyError)."""
    import json

    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise EraseError(f"{path}: not valid JSON ({_first_line(err)})") from None
    if not isinstance(index, dict) or not isinstance(index.get("_class_name"), str):
        raise EraseError(f"{path}: not a pipeline index (expected a JSON object with _class_name)")
    if index["_class_name"] in FLOW_PIPELINES:
        names: tuple[str, ...] = flow_components(index["_class_name"])
    else:
        names = _COMPONENTS + (_SDXL_COMPONENTS if "text_encoder_2" in index else ())
    for name in names:
        entry = index.get(name)
        if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(x, str) for x in entry)):
            raise EraseError(f"{path}: {name}: expected [library, class] for a Stable Diffusion component, got {str(entry)[:80]}")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def check_model_config(config: str | os.PathLike | None, where: str = "--config") -> Path | None:
    """`--config`: a diffusers folder / folder of configs (model_index.json) or an original-layout YAML."""
    if config is None:
        return None
    path = Path(config).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise EraseError(f"{where} {path}: not a diffusers folder or folder of configs (no model_index.json)")
        return path
    if path.is_file() and path.suffix.lower() in _YAML:
        return path
    if path.is_file():
        raise EraseError(f"{where} {path}: expected a folder with model_index.json or an original-layout .yaml (v1-inference.yaml, ...)")
    raise EraseError(f"{where} {path}: no such folder or file")


def read_original_yaml(path: Path) -> dict:
    """An original-layout (CompVis/Stability) inference YAML, checked for the keys diffusers reads."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise EraseError(f"{path}: not a readable YAML file ({_first_line(err)})") from None
    params = data.get("model", {}).get("params") if isinstance(data, dict) and isinstance(data.get("model"), dict) else None
    if not isinstance(params, dict):
        raise EraseError(f"{path}: model.params: missing (not an original-layout SD config such as v1-inference.yaml)")
    for key in ("unet_config", "first_stage_config", "cond_stage_config"):
        if not isinstance(params.get(key), dict):
            raise EraseError(f"{path}: model.params.{key}: missing (not an original-layout SD config such as v1-inference.yaml)")
    return data


def text_encoder_kind(original: dict) -> str:
    """'openclip' (SD-2's FrozenOpenCLIPEmbedder) or 'clip' (SD-1's FrozenCLIPEmbedder), from the YAML."""
    target = str(original["model"]["params"]["cond_stage_config"].get("target", ""))
    return "openclip" if "OpenCLIP" in target else "clip"


TEXT_PREFIX = {"openclip": "cond_stage_model.model.", "clip": "cond_stage_model.transformer."}


def header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape in a .safetensors file, from its header alone (no tensor is read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - not iterable
    except Exception as err:  # noqa: BLE001 - any parse failure means a corrupt file
        raise EraseError(f"{path}: corrupt or truncated safetensors file ({_first_line(err)})") from None


def text_config_from_shapes(shapes: dict[str, tuple[int, ...]], kind: str, path: Path):
    """The CLIPTextConfig of an original-layout text encoder ('clip' or 'openclip'), from tensor shapes:
    widths, depth, vocabulary and positions; heads = width / 64 (both published CLIP towers)."""
    from transformers import CLIPTextConfig

    from erase.tokenizer import CLIP_MAX_LENGTH

    prefix = TEXT_PREFIX[kind]
    try:
        if kind == "openclip":
            vocab, hidden = shapes[prefix + "token_embedding.weight"]
            blocks = {int(k.split(".")[4]) for k in shapes if k.startswith(prefix + "transformer.resblocks.")}
            layers = len(blocks - {23})  # diffusers drops OpenCLIP's last block (SD-2 uses the penultimate layer)
            inter = shapes[prefix + "transformer.resblocks.0.mlp.c_fc.weight"][0]
            positions = shapes[prefix + "positional_embedding"][0]
        else:
            tm = prefix + "text_model."
            vocab, hidden = shapes[tm + "embeddings.token_embedding.weight"]
            layers = len({k.split(".")[5] for k in shapes if k.startswith(tm + "encoder.layers.")})
            inter = shapes[tm + "encoder.layers.0.mlp.fc1.weight"][0]
            positions = shapes[tm + "embeddings.position_embedding.weight"][0]
    except KeyError as err:
        raise EraseError(f"{path}: tensor {err.args[0]} missing: not the {kind} text-encoder layout the config names") from None
    if hidden % 64:
        raise EraseError(f"{path}: text encoder width {hidden} is not a multiple of 64, so its attention heads cannot be "
                         "told from the weights; pass --config DIR (a diffusers folder of configs) instead of a YAML")
    if positions != CLIP_MAX_LENGTH:
        raise EraseError(f"{path}: text encoder has {positions} positions; SD's tokenizer makes {CLIP_MAX_LENGTH}")
    return CLIPTextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                          num_attention_heads=hidden // 64, max_position_embeddings=positions,
                          hidden_act="gelu" if kind == "openclip" else "quick_gelu", projection_dim=hidden,
                          bos_token_id=49406, eos_token_id=49407, pad_token_id=1)


def _yaml_components(path: Path, original: dict, dtype) -> dict:
    """What diffusers' legacy YAML path would fetch from the Hub, built offline instead: the CLIP
    tokenizer, the text encoder (config from the checkpoint's shapes and the YAML's embedder) and
    the scheduler (the YAML's beta schedule and parameterization)."""
    from diffusers import PNDMScheduler
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint
    from safetensors import safe_open
    from transformers import CLIPTextModel

    from erase.tokenizer import clip_tokenizer

    kind = text_encoder_kind(original)
    prefix = TEXT_PREFIX[kind]
    with safe_open(str(path), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}  # noqa: SIM118 - not iterable
    cfg = text_config_from_shapes({k: tuple(v.shape) for k, v in state.items()}, kind, path)
    text_encoder = CLIPTextModel(cfg)
    if kind == "openclip":
        weights = convert_open_clip_checkpoint(text_encoder, state, prefix=prefix)
    else:
        weights = convert_ldm_clip_checkpoint(state)
    own = set(text_encoder.state_dict())
    weights = {k if k in own else k.removeprefix("text_model."): v for k, v in weights.items()}
    weights = {k: v for k, v in weights.items() if k in own}
    missing = sorted(k for k in own - set(weights) if not k.endswith("position_ids"))
    if missing:
        raise EraseError(f"{path}: text encoder tensor {missing[0]} missing from the checkpoint ({len(missing)} in all)")
    text_encoder.load_state_dict(weights, strict=False)
    params = original["model"]["params"]
    scheduler = PNDMScheduler(
        num_train_timesteps=int(params.get("timesteps", 1000)), beta_start=float(params.get("linear_start", 0.00085)),
        beta_end=float(params.get("linear_end", 0.012)), beta_schedule="scaled_linear", skip_prk_steps=True,
        set_alpha_to_one=False, steps_offset=1,
        prediction_type="v_prediction" if params.get("parameterization") == "v" else "epsilon",
    )
    return {"tokenizer": clip_tokenizer(), "text_encoder": text_encoder.to(dtype), "scheduler": scheduler,
            "feature_extractor": None}


def _load_single_file(path: Path, dtype, allow_pickle: bool, config) -> Pipeline:
    if not path.is_file():
        raise EraseError(f"{path}: no such file")
    if path.suffix.lower() != ".safetensors" and not allow_pickle:
        raise EraseError(
            f"{path}: pickle checkpoints can run code when loaded; convert it to .safetensors or "
            "pass --allow-pickle to read it (weights only)"
        )
    kwargs: dict = {"dtype": dtype, "local_files_only": True}
    cfg = check_model_config(config)
    sdxl: bool | None = None  # unknown for pickle files until loaded
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                next(iter(f.keys()), None)
        except Exception as err:  # noqa: BLE001 - any parse failure means a corrupt file
            raise EraseError(f"{path}: corrupt or truncated safetensors file ({_first_line(err)})") from None
        shapes = header_shapes(path)
        if FLUX_KEY in shapes or SD3_KEY in shapes:
            return _load_flow_single_file(path, dtype, cfg, FLUX_KEY in shapes)
        sdxl = SDXL_KEY in shapes
    cls = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
    if cfg is not None and cfg.is_dir():
        cls = check_supported_folder(cfg, "--config")
        if sdxl is not None and sdxl != (cls is StableDiffusionXLPipeline):
            raise EraseError(f"{path}: {'an SDXL' if sdxl else 'an SD-1/2'} checkpoint (conditioner.embedders.1 keys "
                             f"{'present' if sdxl else 'absent'}), but --config {cfg} describes a {cls.__name__}")
    if sdxl and cfg is not None and cfg.suffix.lower() in _YAML:
        raise EraseError(f"{path}: an SDXL checkpoint needs --config DIR (a diffusers SDXL folder or a folder of its configs), "
                         "not a YAML")
    kwargs.update(_no_extras(cls))
    if cfg is not None and cfg.suffix.lower() in _YAML:
        if path.suffix.lower() != ".safetensors":
            raise EraseError(f"{path}: a YAML --config works with .safetensors files; pass --config DIR for pickle checkpoints")
        original = read_original_yaml(cfg)
        kwargs.update(original_config=str(cfg), **_yaml_components(path, original, dtype))
    elif cfg is not None:
        kwargs["config"] = str(cfg)
    elif hub_offline():
        raise EraseError(f"{path}: a single file needs --config DIR (a diffusers folder or folder of configs of the same "
                         "architecture) or --config FILE.yaml (v1-inference.yaml, v2-inference(-v).yaml) when offline")
    try:
        return cls.from_single_file(str(path), **kwargs)
    except EraseError:
        raise
    except Exception as err:  # noqa: BLE001 - diffusers raises many types for a bad checkpoint
        raise EraseError(f"{path}: cannot load single-file checkpoint ({_first_line(err)})") from None


def hub_snapshot(repo_id: str) -> Path | None:
    """The local Hugging Face cache folder of `repo_id` (never downloads), or None."""
    if not _HUB_ID.match(repo_id):
        return None
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached (or a bad id): the caller says what to do
        return None


def _load_flow_single_file(path: Path, dtype, cfg: Path | None, flux: bool) -> Pipeline:
    """A FLUX transformer file (Black Forest Labs' layout: the transformer alone, as flux1-dev.safetensors
    ships) or an SD3 all-in-one file, with `--config DIR` (a diffusers folder of the same architecture:
    its configs, and for FLUX the other components' weights, which the file does not hold)."""
    from diffusers import FluxTransformer2DModel

    kind = "a FLUX transformer (double_blocks.* keys)" if flux else "an SD3 checkpoint (joint_blocks.* keys)"
    if cfg is None or not cfg.is_dir():
        raise EraseError(f"{path}: {kind} needs --config DIR: a diffusers {'FluxPipeline' if flux else 'StableDiffusion3Pipeline'} "
                         "folder of the same architecture" + (" (the file holds only the transformer)" if flux else ""))
    cls = check_supported_folder(cfg, "--config")
    if cls is not (FluxPipeline if flux else StableDiffusion3Pipeline):
        raise EraseError(f"{path}: {kind}, but --config {cfg} describes a {cls.__name__}")
    try:
        if flux:
            transformer = FluxTransformer2DModel.from_single_file(str(path), config=str(cfg), subfolder="transformer",
                                                                  torch_dtype=dtype, local_files_only=True)
            return FluxPipeline.from_pretrained(cfg, transformer=transformer, dtype=dtype, local_files_only=True,
                                                use_safetensors=True)
        pipe = StableDiffusion3Pipeline.from_single_file(str(path), config=str(cfg), dtype=dtype, local_files_only=True)
        # diffusers 0.42.1's single-file T5 loader (create_diffusers_t5_model_from_checkpoint) never calls eval():
        # T5's dropout would stay on and every encoding would differ
        pipe.text_encoder_3.eval()
        return pipe
    except EraseError:
        raise
    except Exception as err:  # noqa: BLE001 - diffusers raises many types for a bad checkpoint
        raise EraseError(f"{path}: cannot load single-file checkpoint ({_first_line(err)})") from None


def _load_hub(repo_id: str, dtype, variant) -> Pipeline:
    """From the local cache, else (unless HF_HUB_OFFLINE) downloaded; the class from the repo's model_index.json."""
    from huggingface_hub import hf_hub_download

    for local in (True, False):
        if not local and hub_offline():
            raise EraseError(
                f"{repo_id}: not in the local Hugging Face cache and HF_HUB_OFFLINE=1; download it on a machine "
                f"with internet (`hf download {repo_id}`) or pass a local folder"
            )
        try:
            index = read_json_object(Path(hf_hub_download(repo_id, "model_index.json", local_files_only=local)), repo_id)
            cls = pipeline_class(index, repo_id)
            return cls.from_pretrained(repo_id, dtype=dtype, local_files_only=local, use_safetensors=True, variant=variant,
                                       **_no_extras(cls))
        except EraseError:
            raise
        except Exception as err:  # noqa: BLE001 - hub and loading errors come in many types
            if not local:
                raise EraseError(f"{repo_id}: cannot download from the Hub ({_first_line(err)}); check the id, your network "
                                 "and `hf auth login`") from None
    raise AssertionError("unreachable")
