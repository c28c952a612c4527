"""Load a Stable Diffusion pipeline from a folder, a Hub id or a single-file checkpoint, then check it.

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
from diffusers import StableDiffusionPipeline
from diffusers.utils import logging as dlogging

from erase.errors import EraseError
from erase.tokenizer import check_tokenizer

if dlogging.get_verbosity() >= dlogging.ERROR:  # quiet (the CLI without --verbose): no loading bars either
    dlogging.disable_progress_bar()

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SINGLE_FILE = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _finish(pipe: StableDiffusionPipeline, source: str) -> StableDiffusionPipeline:
    pipe.safety_checker = None
    pipe.register_to_config(requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    check_pipeline(pipe, source)
    return pipe


def check_pipeline(pipe: StableDiffusionPipeline, source: str) -> None:
    """Shape agreements between components that diffusers does not check at load time."""
    te, unet, vae = pipe.text_encoder.config, pipe.unet.config, pipe.vae.config
    check_tokenizer(pipe.tokenizer, te.vocab_size, f"{source}: tokenizer")
    if unet.cross_attention_dim != te.hidden_size:
        raise EraseError(f"{source}: unet.cross_attention_dim is {unet.cross_attention_dim} but text_encoder.hidden_size is {te.hidden_size}")
    if unet.in_channels != vae.latent_channels:
        raise EraseError(f"{source}: unet.in_channels is {unet.in_channels} but vae.latent_channels is {vae.latent_channels}")
    for name in ("unet", "text_encoder", "vae"):
        module = getattr(pipe, name)
        bad = [n for n, p in module.named_parameters() if p.device.type != "meta" and p.is_floating_point() and not torch.isfinite(p).all()]
        if bad:
            raise EraseError(f"{source}: {name}.{bad[0]} contains NaN or inf weights ({len(bad)} tensors in all)")


def resolve_source(source: str | os.PathLike, where: str | None = None) -> str:
    """`zoo:NAME` -> the zoo model's folder; a training run directory -> its `RUN/model`;
    anything else unchanged. `where` prefixes errors (e.g. the config file and key)."""
    src = str(source)
    if src.startswith("zoo:"):
        from erase.zoo.registry import model_path

        try:
            src = str(model_path(src[4:]))
        except EraseError as err:
            raise EraseError(f"{where}: {err}" if where else str(err)) from None
    path = Path(src).expanduser()
    if not (path / "model_index.json").is_file() and (path / "model" / "model_index.json").is_file():
        src = str(path / "model")  # a run directory of `erase train`
    return src


def load_pipeline(
    source: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    allow_pickle: bool = False,
    config: str | os.PathLike | None = None,
    variant: str | None = None,
) -> StableDiffusionPipeline:
    """A StableDiffusionPipeline from a diffusers folder, a Hub id (local cache) or one checkpoint file.

    Args:
        source: `zoo:NAME` (an embedded model), a run directory, a folder with model_index.json, `owner/name` on the Hub, or a `.safetensors` file
            in the original SD layout (`.ckpt`/`.pt` need `allow_pickle`).
        config: for single files, a local diffusers folder whose configs describe the model;
            without it diffusers would fetch a config from the Hub, which fails offline.
        allow_pickle: read pickle checkpoints. They can run code when unpickled, so this is
            off unless the user asks; even then only `weights_only` loading is used.
    """
    src = resolve_source(source)
    path = Path(src).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise EraseError(f"{path}: not a diffusers folder (no model_index.json)")
        check_model_index(path / "model_index.json")
        try:
            pipe = StableDiffusionPipeline.from_pretrained(
                path, dtype=dtype, safety_checker=None, local_files_only=True,
                use_safetensors=None if allow_pickle else True, variant=variant,
            )
        except (OSError, ValueError, EnvironmentError) as err:
            raise EraseError(f"{path}: cannot load pipeline ({_first_line(err)})") from None
        return _finish(pipe, str(path))
    if path.suffix.lower() in _SINGLE_FILE:
        return _finish(_load_single_file(path, dtype, allow_pickle, config), str(path))
    if _HUB_ID.match(src):
        return _finish(_load_hub(src, dtype, variant), src)
    raise EraseError(f"{src}: no such folder or file, and not a Hub id of the form owner/name")


_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def check_model_index(path: Path) -> None:
    """model_index.json must describe a pipeline (diffusers fails on anything else with a KeyError)."""
    import json

    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise EraseError(f"{path}: not valid JSON ({_first_line(err)})") from None
    if not isinstance(index, dict) or not isinstance(index.get("_class_name"), str):
        raise EraseError(f"{path}: not a pipeline index (expected a JSON object with _class_name)")
    for name in _COMPONENTS:
        entry = index.get(name)
        if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(x, str) for x in entry)):
            raise EraseError(f"{path}: {name}: expected [library, class] for a Stable Diffusion component, got {str(entry)[:80]}")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _load_single_file(path: Path, dtype, allow_pickle: bool, config) -> StableDiffusionPipeline:
    if not path.is_file():
        raise EraseError(f"{path}: no such file")
    if path.suffix.lower() != ".safetensors" and not allow_pickle:
        raise EraseError(
            f"{path}: pickle checkpoints can run code when loaded; convert it to .safetensors or "
            "pass --allow-pickle to read it (weights only)"
        )
    kwargs: dict = dict(dtype=dtype, safety_checker=None, local_files_only=True)
    if config is not None:
        kwargs["config"] = str(config)
    elif hub_offline():
        raise EraseError(f"{path}: single-file loading needs --config DIR (a local diffusers folder of the same architecture) when offline")
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                next(iter(f.keys()), None)
        except Exception as err:  # noqa: BLE001 - any parse failure means a corrupt file
            raise EraseError(f"{path}: corrupt or truncated safetensors file ({_first_line(err)})") from None
    try:
        return StableDiffusionPipeline.from_single_file(str(path), **kwargs)
    except Exception as err:  # noqa: BLE001 - diffusers raises many types for a bad checkpoint
        raise EraseError(f"{path}: cannot load single-file checkpoint ({_first_line(err)})") from None


def _load_hub(repo_id: str, dtype, variant) -> StableDiffusionPipeline:
    try:
        return StableDiffusionPipeline.from_pretrained(
            repo_id, dtype=dtype, safety_checker=None, local_files_only=True,
            use_safetensors=True, variant=variant,
        )
    except (OSError, ValueError, EnvironmentError):
        pass
    if hub_offline():
        raise EraseError(
            f"{repo_id}: not in the local Hugging Face cache and HF_HUB_OFFLINE=1; download it on a machine "
            f"with internet (`hf download {repo_id}`) or pass a local folder"
        )
    try:
        return StableDiffusionPipeline.from_pretrained(repo_id, dtype=dtype, safety_checker=None, use_safetensors=True, variant=variant)
    except Exception as err:  # noqa: BLE001
        raise EraseError(f"{repo_id}: cannot download from the Hub ({_first_line(err)}); check the id, your network and `hf auth login`") from None
