"""`erase export`: a run directory -> one self-contained, atomically written model folder.

The folder is a complete diffusers pipeline (safetensors; optional fp16 variant files) that
vanilla `DiffusionPipeline.from_pretrained` loads as the model's own class (StableDiffusionPipeline
for SD-1.x/2.x, StableDiffusionXLPipeline for SDXL: `save_pretrained` of the loaded pipeline writes
its model_index.json, and the scheduler config keeps `prediction_type`), plus, on request, the same
weights as one original-layout `.safetensors` (single_file.py; for SD-2.x with its `.yaml`), the
run's LoRA (lora.py), the audit grid and results, and a model card (card.py). Which family the
model is comes from erase.export.layout, read off the loaded pipeline. It appears whole or not at all (`erase.io.atomic_dir`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from erase.errors import EraseError
from erase.export.card import AUDIT_GRID, AUDIT_RESULTS, build_card
from erase.export.lora import check_lora_file, export_lora
from erase.export.run import RunInfo, check_safetensors, read_run
from erase.export.single_file import write_original_config, write_single_file
from erase.io import atomic_dir, atomic_write_json, command_line, output_lock
from erase.models.family import family_of, prediction_type
from erase.models.loading import load_pipeline

_RUN_PARTS = {"model", "lora", "audit", "checkpoints", "cache", "logs"}


@dataclass
class ExportResult:
    out: Path
    single_file: Path | None = None
    original_config: Path | None = None  # SD-2.x: <name>.yaml beside the single file
    lora: Path | None = None
    fp16: bool = False
    files: list[str] = field(default_factory=list)
    pipeline: str = "StableDiffusionPipeline"  # the diffusers class that loads `out`


@contextlib.contextmanager
def _quiet_diffusers() -> Iterator[None]:
    from diffusers.utils import logging as dlogging

    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()
    try:
        yield
    finally:
        dlogging.set_verbosity(level)


def _variant_of(model_dir: Path) -> str | None:
    """'fp16' when the folder holds only fp16 variant weights (diffusers then needs variant='fp16')."""
    unet = model_dir / ("transformer" if (model_dir / "transformer").is_dir() else "unet")  # FLUX / SD3: the transformer
    if any(unet.glob("diffusion_pytorch_model*.fp16.safetensors")) and not any(
        p for p in unet.glob("diffusion_pytorch_model*.safetensors") if ".fp16." not in p.name
    ):
        return "fp16"
    return None


def _check_target(run: RunInfo, out: Path) -> None:
    src, dst = run.root.resolve(), out.resolve()
    inside_run_data = dst.parent == src and dst.name in _RUN_PARTS
    if dst == src or src.is_relative_to(dst) or dst.is_relative_to(run.model_dir.resolve()) or inside_run_data:
        raise EraseError(f"{out}: --to must not be the run directory, a folder containing it, or one of its parts ({', '.join(sorted(_RUN_PARTS))})")


def _publishable(folder: Path) -> None:
    """Ordinary permissions (the temp folder and temp files are created owner-only)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in (folder, *folder.rglob("*")):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def export_run(
    source: str | Path,
    out: str | Path,
    *,
    fp16: bool = False,
    single_file: bool = False,
    overwrite: bool = False,
    license: str | None = None,
    config: str | Path | None = None,
    allow_pickle: bool = False,
    unet: str | Path | None = None,
    text_encoder: str | Path | None = None,
    lora: str | Path | None = None,
) -> ExportResult:
    """Export run directory (or diffusers folder) `source` to folder `out`.

    Args:
        fp16: also write `*.fp16.safetensors` variant files (load with `variant="fp16"`) and write
            the single file in half precision (half the size; what A1111 users usually download).
        single_file: also write `<out name>.safetensors` in the original SD checkpoint layout.
        overwrite: replace an existing `out` (atomically: the old one stays until the new one is whole).
        config, allow_pickle: for a single-file `source` (see `erase.models.loading.load_pipeline`).
        unet, text_encoder, lora: component overrides on `source` (a released erased UNet / text
            encoder / LoRA on its base model: erase.models.components); the export is the result.
    """
    run = read_run(source)
    out = Path(out).expanduser()
    if out.is_symlink() and not out.exists():
        raise EraseError(f"{out}: a broken symlink or a symlink loop; remove it or choose another --to")
    if out.exists() and not out.is_dir():
        raise EraseError(f"{out}: exists and is not a folder; choose another --to")
    _check_target(run, out)
    if out.exists() and not overwrite:
        raise EraseError(f"{out}: already exists (pass --overwrite to replace it)")
    if run.model_dir.is_dir():
        check_safetensors(run.model_dir)
    if run.lora_file is not None:
        check_lora_file(run.lora_file)
    # One writer per destination; temp folders of killed exports to it are removed under the lock.
    with output_lock(out, command_line(), flag="--to"):
        return _export(run, out, fp16=fp16, single_file=single_file, overwrite=overwrite, license=license,
                       config=config, allow_pickle=allow_pickle,
                       overrides={k: v for k, v in (("unet", unet), ("text_encoder", text_encoder), ("lora", lora)) if v})


def _export(run: RunInfo, out: Path, *, fp16: bool, single_file: bool, overwrite: bool, license: str | None,
            config: str | Path | None, allow_pickle: bool, overrides: dict | None = None) -> ExportResult:
    steps = 3 + int(single_file) + int(fp16) + int(run.lora_file is not None)
    result = ExportResult(out=out, fp16=fp16)
    with tqdm(total=steps, desc=f"export {out.name}", unit="step") as bar:
        variant = _variant_of(run.model_dir) if run.model_dir.is_dir() else None
        pipe = load_pipeline(run.model_dir, variant=variant, config=config, allow_pickle=allow_pickle, **(overrides or {}))
        result.pipeline = family_of(pipe).pipeline
        bar.update()
        with atomic_dir(out, overwrite=overwrite) as tmp:
            pipe.save_pretrained(tmp, safe_serialization=True)
            bar.update()
            if single_file:
                name = f"{out.name}.safetensors"
                write_single_file(pipe, tmp / name, dtype=torch.float16 if fp16 else torch.float32)
                result.single_file = out / name
                yaml_path = write_original_config(pipe, tmp / f"{out.name}.yaml")
                result.original_config = out / yaml_path.name if yaml_path else None
                bar.update()
            if run.lora_file is not None:
                result.lora = out / export_lora(run.lora_file, tmp).name
                bar.update()
            if run.audit_results is not None:
                atomic_write_json(tmp / AUDIT_RESULTS, run.audit_results)
                if run.audit_grid is not None:
                    shutil.copyfile(run.audit_grid, tmp / AUDIT_GRID)
            if fp16:
                # After everything fp32 is written: the in-memory pipeline is cast in place. The
                # fp16 save rewrites the configs, and transformers records `dtype: float16` in
                # text_encoder/config.json, which would make a plain from_pretrained load the fp32
                # weights as fp16; so the fp32 pass's configs are put back afterwards.
                configs = {p: p.read_bytes() for p in tmp.rglob("*.json")}
                with _quiet_diffusers():  # "modules to keep in float32: []" warnings on a plain cast
                    pipe.to(dtype=torch.float16)
                pipe.save_pretrained(tmp, safe_serialization=True, variant="fp16")
                for path, data in configs.items():
                    path.write_bytes(data)
                bar.update()
            card = build_card(
                run, out.name, license=license,
                single_file=result.single_file.name if result.single_file else None,
                has_lora=result.lora is not None, has_fp16=fp16,
                has_audit_grid=run.audit_results is not None and run.audit_grid is not None,
                family=family_of(pipe), prediction=prediction_type(pipe),
                original_config=result.original_config.name if result.original_config else None,
            )
            card.save(tmp / "README.md")
            _publishable(tmp)
            result.files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
            bar.update()
    return result
