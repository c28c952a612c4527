"""Batched, resumable, reproducible image generation for a prompt suite.

Each row's initial noise (and any noise an ancestral scheduler adds) comes from its own CPU
`torch.Generator` seeded with the row's seed, as diffusers does with a list of generators, so an
image depends on its row only: not on the batch size, the rows around it, or the machine's GPU
RNG. Conditional and unconditional halves run as one UNet batch and are combined with the row's
own guidance w:  eps = eps_u + w * (eps_c - eps_u)   (classifier-free guidance, Ho & Salimans,
https://arxiv.org/abs/2207.12598). The loop is diffusers' StableDiffusionPipeline loop, with the
guidance scale made per row so that I2P rows of different guidance still share a batch.

Outputs: `images/NNNNN.png` (atomic writes) and one line per image in a `RowLog` JSONL file,
appended after the PNG exists. A rerun reads the log, skips finished batches, and writes only the
missing rows: no duplicates, no gaps, and the same bits as an uninterrupted run with the same
batch size (another batch size can flip a rare pixel by 1/255 through batched float rounding). Only one batch of images is in memory at a time.

Several processes (`accelerate launch -m erase audit`): the batches are cut from the whole suite as
in one process and dealt round-robin (batch k to process k mod P), so every image is computed in
the same batch, with the same bits, as a one-process run. Each process logs its rows to its own
part file (`images.jsonl.part<rank>`), so it resumes its own rows; `merge_parts` folds the parts
into the one log (the main process, before and after generating).
"""

from __future__ import annotations

import inspect
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
)
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from tqdm.auto import tqdm

from erase.audit.suites import PromptRow
from erase.errors import EraseError
from erase.io import atomic_write_bytes, atomic_write_text
from erase.models.core import Conditioning, Models, denoiser
from erase.models.sampling import denoise_loop

SCHEDULERS = {
    "ddim": DDIMScheduler, "lms": LMSDiscreteScheduler, "pndm": PNDMScheduler, "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler, "dpm": DPMSolverMultistepScheduler, "ddpm": DDPMScheduler,
}

# rows -> conditioning (`Models.encode`: [B, 77, D], SDXL a `Cond`); attacks swap this to add their tokens or directions.
CondFn = Callable[[list[PromptRow]], Conditioning]


@dataclass(frozen=True)
class GenSettings:
    """What determines the pixels (recorded in results.json). `batch_size` does not."""

    scheduler: str = "ddim"
    steps: int = 50
    batch_size: int = 4

    def __post_init__(self):
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler: {self.scheduler!r} is not one of {', '.join(SCHEDULERS)}")
        if self.steps < 1:
            raise ValueError(f"steps: must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {self.batch_size}")


class RowLog:
    """An append-only JSONL file of finished rows keyed by `index`, safe against kills.

    On open, a torn last line (killed mid-write) and duplicate indices are dropped and the clean
    file is written back atomically; `append` flushes and fsyncs each batch.
    """

    def __init__(self, path: str | Path, clean: bool = True):
        self.path = Path(path)
        self.rows: dict[int, dict] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill; its row is simply redone
                self.rows.setdefault(int(rec["index"]), rec)
        if clean:  # `clean=False`: read only (another process owns the file)
            atomic_write_text(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.sorted()))

    def __contains__(self, index: int) -> bool:
        return index in self.rows

    def append(self, records: Iterable[dict]) -> None:
        records = [r for r in records if int(r["index"]) not in self.rows]
        with self.path.open("a", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        for r in records:
            self.rows[int(r["index"])] = r

    def sorted(self) -> list[dict]:
        return [self.rows[k] for k in sorted(self.rows)]


def make_scheduler(pipe, name: str):
    """A fresh scheduler of the named kind with the model's noise schedule (schedulers keep state)."""
    return SCHEDULERS[name].from_config(pipe.scheduler.config)


def default_size(pipe) -> int:
    return int(pipeline_models(pipe).latent_shape()[-1]) * pipe.vae_scale_factor


def row_generators(rows: list[PromptRow], pipe=None) -> list[torch.Generator]:
    """One CPU generator per row, seeded with the row's seed. Image k of a prompt made several times
    (`extra["sample"] = k`, erase.audit.suites.expand_rows) starts after the k images before it: the
    k-th slice of one `torch.randn((n, C, h, w), generator=torch.manual_seed(seed))`, as the official
    scripts draw a prompt's images (needs `pipe` for the latent shape)."""
    gens = []
    for r in rows:
        g = torch.Generator("cpu").manual_seed(int(r.seed))
        k = int(r.extra.get("sample", 0))
        if k:
            h, w = image_size(r, pipe)
            torch.randn((k, pipe.unet.config.in_channels, h // pipe.vae_scale_factor, w // pipe.vae_scale_factor),
                        generator=g)  # the draws of images 0..k-1 of this prompt
        gens.append(g)
    return gens


def pipeline_models(pipe) -> Models:
    """The (frozen) pipeline as `Models`: the one prompt-encoding and UNet-calling path."""
    return Models.from_pipeline(pipe, weight_dtype=denoiser(pipe).dtype)


@torch.no_grad()
def sample(pipe, cond: Conditioning, guidance: torch.Tensor, generators: list[torch.Generator],
           settings: GenSettings, height: int, width: int) -> np.ndarray:
    """Images [B, H, W, 3] float in [0, 1] from conditioning (`Models.encode`) with per-row guidance [B].

    The pipeline's own loop (StableDiffusionPipeline / StableDiffusionXLPipeline, no negative
    prompt) for the scheduler named in `settings`: the same pixels for the same generators. FLUX and
    SD3 sample as FluxPipeline / StableDiffusion3Pipeline do, with FlowMatchEulerDiscreteScheduler whatever
    `settings.scheduler` names (FLUX: one pass with the row's guidance as its guidance embedding).
    """
    models = pipeline_models(pipe)
    device, dtype = denoiser(pipe).device, denoiser(pipe).dtype
    b = len(cond)
    hw = (height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    # flow models (FLUX, SD3) always sample with FlowMatchEulerDiscreteScheduler, set as their pipelines set it
    sched = models.sampler(settings.steps, hw, SCHEDULERS[settings.scheduler], pipe.scheduler.config, device=device)
    shape = (b, models.latent_shape()[0], *hw)
    latents = randn_tensor(shape, generator=generators, device=device, dtype=dtype) * getattr(sched, "init_noise_sigma", 1.0)
    params = inspect.signature(sched.step).parameters
    kwargs = {k: v for k, v in (("generator", generators), ("eta", 0.0)) if k in params}
    latents = denoise_loop(models, sched, latents, cond.to(device, dtype), models.uncond(b).to(device, dtype),
                        guidance, step_kwargs=kwargs, float32=False)
    image = pipe.vae.decode(models.unscale(latents).to(pipe.vae.dtype), return_dict=False)[0]
    return (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()


def to_uint8(images: np.ndarray) -> np.ndarray:
    return (images * 255).round().astype(np.uint8)  # as diffusers' numpy_to_pil


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def batches(rows: list[PromptRow], size: int, pipe) -> Iterator[list[PromptRow]]:
    """Consecutive rows of one image size, at most `size` per batch."""
    batch: list[PromptRow] = []
    for r in rows:
        if batch and (len(batch) == size or image_size(batch[0], pipe) != image_size(r, pipe)):
            yield batch
            batch = []
        batch.append(r)
    if batch:
        yield batch


def image_size(row: PromptRow, pipe) -> tuple[int, int]:
    d = default_size(pipe)
    return row.height or d, row.width or d


def part_path(log: Path, rank: int) -> Path:
    return log.with_name(f"{log.name}.part{rank}")


def merge_parts(log_path: str | Path) -> RowLog:
    """Fold every process's part file into the log and remove the parts (one process calls this)."""
    log = RowLog(log_path)
    parts = sorted(log.path.parent.glob(f"{log.path.name}.part*"))
    for part in parts:
        log.append(RowLog(part).sorted())
        part.unlink()
    return RowLog(log_path) if parts else log  # reopened: written back in row order, as one process writes it


def generate_rows(pipe, rows: list[PromptRow], out_dir: str | Path, settings: GenSettings, *,
                  log_name: str = "images.jsonl", image_dir: str = "images", cond_fn: CondFn | None = None,
                  extra: Callable[[PromptRow], dict] | None = None, desc: str = "generating",
                  part: tuple[int, int] = (0, 1)) -> RowLog:
    """Make every row's image that the log does not have yet; return the log.

    `part=(rank, P)`: this process makes batches rank, rank + P, ... and logs them to its part file
    (returned); the caller merges the parts (`merge_parts`) once every process is done."""
    out_dir = Path(out_dir)
    rank, world = part
    done = RowLog(out_dir / log_name, clean=world == 1)
    log = done if world == 1 else RowLog(part_path(out_dir / log_name, rank))
    if cond_fn is None:
        models = pipeline_models(pipe)

        def cond_fn(batch):
            return models.encode([r.prompt for r in batch])
    # Batches are cut from the WHOLE suite, and a batch with any row missing is redone whole:
    # a resumed run then computes exactly the batches an uninterrupted one does, so its floats
    # (and PNGs) are bit-identical, not merely equal up to batched-BLAS rounding.
    mine = [r for k, b in enumerate(batches(rows, settings.batch_size, pipe)) if k % world == rank for r in b]
    have = lambda index: index in log or index in done
    with tqdm(total=len(mine), initial=sum(have(r.index) for r in mine), desc=desc, unit="img") as bar:
        for k, batch in enumerate(batches(rows, settings.batch_size, pipe)):
            if k % world != rank or all(have(r.index) for r in batch):
                continue
            h, w = image_size(batch[0], pipe)
            if h % pipe.vae_scale_factor or w % pipe.vae_scale_factor:
                raise EraseError(f"{batch[0].suite}: row {batch[0].id}: size {w}x{h} is not a multiple of {pipe.vae_scale_factor}")
            with torch.no_grad():
                cond = cond_fn(batch)
            imgs = to_uint8(sample(pipe, cond, torch.tensor([r.guidance for r in batch]), row_generators(batch, pipe), settings, h, w))
            records = []
            for r, img in zip(batch, imgs):
                if have(r.index):
                    continue
                rel = f"{image_dir}/{r.index:05d}.png"
                atomic_write_bytes(out_dir / rel, png_bytes(img))
                records.append({**r.to_json(), "file": rel, **(extra(r) if extra else {})})
            log.append(records)
            bar.update(len(records))
    missing = [r.index for r in mine if not have(r.index)]
    assert not missing, f"rows not generated: {missing[:5]}"
    return log


def load_images(out_dir: str | Path, records: list[dict]) -> np.ndarray:
    """The PNGs of `records` as float [N, H, W, 3] in [0, 1]."""
    return np.stack([np.asarray(Image.open(Path(out_dir) / r["file"]).convert("RGB"), dtype=np.float32) / 255.0
                     for r in records])
