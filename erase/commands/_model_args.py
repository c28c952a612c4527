"""`--config` and `--allow-pickle`: how every command that loads a model reads single files."""

from __future__ import annotations

import argparse

CONFIG_HELP = ("for a single-file model (.safetensors/.ckpt): a diffusers folder or folder of its configs "
               "(model_index.json), or an original-layout YAML (v1-inference.yaml, v2-inference.yaml, v2-inference-v.yaml)")
PICKLE_HELP = "read pickle checkpoints (.ckpt/.pt/.bin: they can run code when unpickled); weights-only loading"


def add_model_arguments(parser: argparse.ArgumentParser, config_flags: tuple[str, ...] = ("--config", "--model-config"),
                        components: bool = False) -> None:
    """Adds `--config FILE|DIR` (dest `model_config`; `erase train` uses `--model-config`, its
    `--config` is the run config) and `--allow-pickle`; with `components`, the overrides `--unet`,
    `--text-encoder`, `--lora` (erase/models/components.py; docs/releases.md)."""
    parser.add_argument(*config_flags, dest="model_config", metavar="DIR|YAML", help=CONFIG_HELP)
    parser.add_argument("--allow-pickle", action="store_true", help=PICKLE_HELP)
    if components:
        g = parser.add_argument_group("component overrides (a published erased checkpoint on its base model)")
        g.add_argument("--unet", metavar="FILE", help="UNet weights on top of the model: a diffusers-layout state dict "
                       "(.safetensors; .pt with --allow-pickle) or a CompVis checkpoint (model.diffusion_model.* keys)")
        g.add_argument("--text-encoder", metavar="FILE|DIR", help="text-encoder weights: a CLIPTextModel folder "
                       "(AdvUnlearn) or a state dict (text_model.* or CompVis cond_stage_model.transformer.* keys)")
        g.add_argument("--lora", metavar="FILE", help="a LoRA (diffusers/kohya/PEFT keys), fused into the model")


def model_kwargs(args: argparse.Namespace) -> dict:
    """The loader keywords (`erase.models.loading.load_pipeline`) the model arguments ask for."""
    kw = {"config": getattr(args, "model_config", None), "allow_pickle": bool(getattr(args, "allow_pickle", False))}
    for name in ("unet", "text_encoder", "lora"):
        if getattr(args, name, None) is not None:
            kw[name] = getattr(args, name)
    return kw
