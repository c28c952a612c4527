"""`erase export RUN_DIR --to DIR`: a run as a diffusers folder (+ single file, LoRA, model card)."""

from __future__ import annotations

import argparse

from erase.commands._model_args import add_model_arguments

RERUN = "fix the cause and rerun the same command"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR",
                        help="a training run directory, any diffusers folder, or a single-file model (with --config)")
    parser.add_argument("--to", required=True, metavar="DIR", help="output folder (written atomically)")
    parser.add_argument("--fp16", action="store_true",
                        help="also write fp16 variant files (variant='fp16'); the single file is then fp16 too")
    parser.add_argument("--single-file", action="store_true",
                        help="also write DIR/<DIR name>.safetensors in the original SD layout (A1111, ComfyUI, from_single_file)")
    parser.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    parser.add_argument("--license", default=None,
                        help="license for the model card (default: the base model's, creativeml-openrail-m for SD-1.x)")
    add_model_arguments(parser, components=True)


def run(args: argparse.Namespace) -> int:
    from erase.commands._model_args import model_kwargs
    from erase.export import export_run

    result = export_run(args.run_dir, args.to, fp16=args.fp16, single_file=args.single_file,
                        overwrite=args.overwrite, license=args.license, **model_kwargs(args))
    print(f"exported {len(result.files)} files to {result.out}")
    print(f"  diffusers: {result.pipeline}.from_pretrained({str(result.out)!r})" + (" (+ variant='fp16')" if result.fp16 else ""))
    if result.single_file:
        print(f"  single file: {result.single_file} (from_single_file(..., config={str(result.out)!r}))")
    if result.original_config:
        print(f"  original config: {result.original_config} (keep it beside the single file: A1111 reads the architecture and prediction type from it)")
    if result.lora:
        print(f"  LoRA: {result.lora} (pipe.load_lora_weights on the base model)")
    return 0
