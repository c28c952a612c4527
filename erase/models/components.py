"""Component overrides on a base pipeline: erased checkpoints audited (and exported) as they were released.

Papers release the part they changed, not a pipeline (docs/releases.md lists each release's form):
a UNet state dict in diffusers keys (ESD's `diffusers-*.pt`, UCE), a CompVis checkpoint whose UNet
is under `model.diffusion_model.*` (SalUn, EraseDiff, the original-layout ESD), a text encoder
(AdvUnlearn: a transformers CLIPTextModel folder), or a LoRA. `apply_overrides` puts them on a
loaded base pipeline:

- the key layout is detected from the keys (diffusers, CompVis with or without its
  `model.diffusion_model.` prefix, CompVis / transformers text-encoder keys); CompVis UNets and
  text encoders are mapped with diffusers' own single-file converters
  (`diffusers.loaders.single_file_utils.convert_ldm_unet_checkpoint` / `convert_ldm_clip_checkpoint`);
- every tensor must name a tensor of the base component with the same shape: a checkpoint for
  another architecture is refused in one line naming the first tensor that does not fit; a
  partial state dict (some releases save only the layers they trained) replaces those tensors and
  the count is recorded;
- `.safetensors` is read as is; pickle files (`.pt`, `.ckpt`, `.bin`, `.pth`) only with
  `allow_pickle` and then through `torch.load(weights_only=True)`;
- a LoRA goes through diffusers' `load_lora_weights` (diffusers, kohya and PEFT key layouts) and
  is fused (`fuse_lora`, then `unload_lora_weights`), so the result is a plain pipeline.
"""

from __future__ import annotations

from pathlib import Path

import torch

from erase.errors import EraseError

PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
LDM_UNET = "model.diffusion_model."
LDM_BARE = ("input_blocks.", "middle_block.", "output_blocks.", "time_embed.")
DIFFUSERS_UNET = ("conv_in.", "down_blocks.", "mid_block.", "up_blocks.", "time_embedding.", "conv_out.", "conv_norm_out.")
LDM_TEXT = ("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer.")


def _first(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:200] if lines else type(err).__name__


def read_state_dict(path: str | Path, allow_pickle: bool, flag: str) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file, or (with allow_pickle) of a pickle checkpoint read with
    weights_only=True; a `state_dict` wrapper (Lightning / CompVis checkpoints) is unwrapped."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise EraseError(f"{flag} {path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as err:  # noqa: BLE001 - any parse failure means a corrupt file
            raise EraseError(f"{flag} {path}: corrupt or truncated safetensors file ({_first(err)})") from None
    elif suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise EraseError(f"{flag} {path}: pickle checkpoints can run code when loaded; convert it to .safetensors "
                             "or pass --allow-pickle to read it (weights only)")
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch raises many types for a bad file
            raise EraseError(f"{flag} {path}: cannot read it as a weights-only checkpoint ({_first(err)})") from None
    else:
        raise EraseError(f"{flag} {path}: expected a .safetensors file (or .pt/.ckpt/.bin with --allow-pickle)")
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise EraseError(f"{flag} {path}: holds a {type(state).__name__}, not a state dict of tensors")
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise EraseError(f"{flag} {path}: no tensors in it")
    return tensors


def unet_layout(keys: list[str]) -> str:
    """'compvis' (model.diffusion_model.*), 'compvis-bare' (input_blocks.* ...), 'diffusers' or 'diffusers-prefixed'."""
    if any(k.startswith(LDM_UNET) for k in keys):
        return "compvis"
    if any(k.startswith(LDM_BARE) for k in keys):
        return "compvis-bare"
    if any(k.startswith(DIFFUSERS_UNET) for k in keys):
        return "diffusers"
    if any(k.startswith("unet.") and k[5:].startswith(DIFFUSERS_UNET) for k in keys):
        return "diffusers-prefixed"
    raise EraseError(f"unknown UNet key layout (first key {min(keys)!r}): expected diffusers keys "
                     "(down_blocks.*) or CompVis keys (model.diffusion_model.*)")


def unet_state(state: dict[str, torch.Tensor], unet, flag: str, path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """A UNet state dict in diffusers keys, from any of the layouts `unet_layout` knows."""
    try:
        layout = unet_layout(list(state))
    except EraseError as err:
        raise EraseError(f"{flag} {path}: {err}") from None
    if layout == "diffusers":
        return state, layout
    if layout == "diffusers-prefixed":
        return {k[5:]: v for k, v in state.items() if k.startswith("unet.")}, layout
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    ldm = {k: v for k, v in state.items() if k.startswith(LDM_UNET)} if layout == "compvis" else \
        {LDM_UNET + k: v for k, v in state.items()}
    try:
        return convert_ldm_unet_checkpoint(ldm, dict(unet.config)), layout
    except (KeyError, IndexError, ValueError, RuntimeError) as err:
        raise EraseError(f"{flag} {path}: CompVis UNet keys do not fit the base model's UNet (missing {_first(err)}); "
                         "a partial CompVis checkpoint cannot be mapped, convert it with the full UNet") from None


def text_state(state: dict[str, torch.Tensor], flag: str, path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """A CLIPTextModel state dict with keys relative to its text model (embeddings.*, encoder.*,
    final_layer_norm.*), from transformers (with or without text_model.), diffusers-prefixed or CompVis keys.
    `load_into` adds the `text_model.` prefix back where the installed transformers keeps it."""
    keys = list(state)
    if any(k.startswith("text_encoder.") for k in keys):
        state, keys = {k.removeprefix("text_encoder."): v for k, v in state.items() if k.startswith("text_encoder.")}, None
        return text_state(state, flag, path)[0], "diffusers-prefixed"
    if any(k.startswith("text_model.") for k in keys):
        return {k.removeprefix("text_model."): v for k, v in state.items()}, "transformers"
    for prefix in LDM_TEXT:
        if any(k.startswith(prefix) for k in keys):
            from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint

            sub = {k: v for k, v in state.items() if k.startswith(prefix)}
            if prefix.endswith("transformer."):  # cond_stage_model.transformer.{embeddings,encoder,...}
                sub = {LDM_TEXT[0] + k.removeprefix(prefix): v for k, v in sub.items()}
            converted = convert_ldm_clip_checkpoint(sub)
            return {k.removeprefix("text_model."): v for k, v in converted.items()}, "compvis"
    if any(k.startswith(("embeddings.", "encoder.", "final_layer_norm.")) for k in keys):
        return state, "transformers"
    raise EraseError(f"{flag} {path}: unknown text-encoder key layout (first key {min(keys)!r}): expected "
                     "text_model.* (transformers) or cond_stage_model.transformer.* (CompVis)")


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], flag: str, path: Path, layout: str) -> dict:
    """Copy `state` into `module` (cast to its dtype): every key must exist there with the same shape."""
    own = module.state_dict()
    if any(k.startswith("text_model.") for k in own):  # text-encoder keys: transformers' own spelling
        state = {k if k.startswith("text_model.") else "text_model." + k: v for k, v in state.items()}
    unknown = [k for k in state if k not in own]
    if unknown:
        raise EraseError(f"{flag} {path}: tensor {unknown[0]!r} is not in the base model's {type(module).__name__} "
                         f"({len(unknown)} unknown of {len(state)}; {layout} layout): a checkpoint of another architecture?")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise EraseError(f"{flag} {path}: {k} has shape {list(v.shape)} but the base model's is {list(own[k].shape)}: "
                             "the checkpoint was made for another base model")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise EraseError(f"{flag} {path}: {bad[0]} contains NaN or inf ({len(bad)} tensors in all)")
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)
    counted = [k for k in own if not k.endswith("position_ids")]
    return {"layout": layout, "tensors": len(state), "of": len(counted)}


def _text_from_folder(folder: Path, allow_pickle: bool, flag: str) -> dict[str, torch.Tensor]:
    from transformers import CLIPTextModel

    if (folder / "model_index.json").is_file():
        folder = folder / "text_encoder"
    if not (folder / "config.json").is_file():
        raise EraseError(f"{flag} {folder}: not a text-encoder folder (config.json missing)")
    try:
        model = CLIPTextModel.from_pretrained(folder, local_files_only=True, use_safetensors=None if allow_pickle else True)
    except (OSError, ValueError) as err:
        raise EraseError(f"{flag} {folder}: cannot load CLIPTextModel ({_first(err)})") from None
    return model.state_dict()


def apply_overrides(pipe, *, unet: str | Path | None = None, text_encoder: str | Path | None = None,
                    lora: str | Path | None = None, allow_pickle: bool = False) -> list[dict]:
    """Replace the pipeline's UNet / text-encoder weights and fuse a LoRA; one record per override."""
    records = []
    if unet is not None:
        path = Path(unet).expanduser()
        state, layout = unet_state(read_state_dict(path, allow_pickle, "--unet"), pipe.unet, "--unet", path)
        records.append({"component": "unet", "file": str(path), **load_into(pipe.unet, state, "--unet", path, layout)})
    if text_encoder is not None:
        path = Path(text_encoder).expanduser()
        if path.is_dir():
            state, layout = text_state(_text_from_folder(path, allow_pickle, "--text-encoder"), "--text-encoder", path)
            layout = "transformers folder"
        else:
            state, layout = text_state(read_state_dict(path, allow_pickle, "--text-encoder"), "--text-encoder", path)
        records.append({"component": "text_encoder", "file": str(path),
                        **load_into(pipe.text_encoder, state, "--text-encoder", path, layout)})
    if lora is not None:
        path = Path(lora).expanduser()
        state = read_state_dict(path, allow_pickle, "--lora")
        try:
            pipe.load_lora_weights(state, adapter_name="erase_override")
            pipe.fuse_lora(lora_scale=1.0)
            pipe.unload_lora_weights()
        except Exception as err:  # noqa: BLE001 - diffusers/peft raise many types for a LoRA that does not fit
            raise EraseError(f"--lora {path}: does not fit the base model ({_first(err)})") from None
        records.append({"component": "lora", "file": str(path), "layout": "diffusers load_lora_weights", "tensors": len(state)})
    return records
