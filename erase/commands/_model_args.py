"""`--config` and `--allow-pickle`: how every command that loads a model reads single files."""

from __future__ import annotations

import argparse

CONFIG_HELP = ("for a single-file model (.safetensors/.ckpt): a diffusers folder or folder of its configs "
               "(model_index.json), or an original-layout YAML (v1-inference.yaml, v2-inference.yaml, v2-inference-v.yaml)")
PICKLE_HELP = "read pickle checkpoints (.ckpt/.pt/.bin: they can run code when unpickled); weights-only loading"


def add_model_arguments(parser: argparse.ArgumentParser, config_flags: tuple[str, ...] = ("--config", "--model-config")) -> None:
    """Adds `--config FILE|DIR` (dest `model_config`; `erase train` uses `--model-config`, its
    `--config` is the run config) and `--allow-pickle`."""
    parser.add_argument(*config_flags, dest="model_config", metavar="DIR|YAML", help=CONFIG_HELP)
    parser.add_argument("--allow-pickle", action="store_true", help=PICKLE_HELP)


def model_kwargs(args: argparse.Namespace) -> dict:
    """The loader keywords (`erase.models.loading.load_pipeline`) the model arguments ask for."""
    return {"config": getattr(args, "model_config", None), "allow_pickle": bool(getattr(args, "allow_pickle", False))}
