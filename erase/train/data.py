"""Forget / retain / anchor data: prompts from templates, images from folders or generated once.

Forget samples are `prompts x templates x samples_per_prompt`; a sample's id is its index. A
multi-concept run (`concepts:`) concatenates its concepts' samples in order, and each sample
carries its concept's index (`forget_concepts`, `Batch.forget_concepts`); a concept's anchor
prompts pair with its own samples. When
an objective needs images and no folder is given, the ORIGINAL model generates one image per
sample (DDIM, seeded by (seed, sample id)) and the latents are cached in RUN/cache, so a resumed
run reuses them. Anchor data (concept ablation) is aligned with the forget samples: forget
sample i is paired with anchor prompt/image i mod (number of anchors).

Which samples a step uses is a pure function of (seed, step): a permutation of the set per epoch,
cut into global micro-batches, each split evenly over the processes. So resuming at step N needs
only N, and P processes see exactly the samples one process would.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load, save
from torch import Tensor

from erase.errors import EraseError
from erase.io import atomic_write_bytes
from erase.models.sampling import sample_set
from erase.objectives.base import Batch, Draws, Models
from erase.prompts import read_suite
from erase.train.config import ConceptSpec, DataConfig, PromptSet

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


_TOLD: set[tuple[str, str]] = set()


def expand(ps: PromptSet, where: str = "<config>") -> list[str]:
    """(prompts + file prompts) x templates x samples_per_prompt, in that nesting order (sample-major)."""
    prompts = list(ps.prompts)
    if ps.file:
        try:
            suite = read_suite(ps.file)
        except EraseError as err:  # the suite loader names the file; add the config key
            raise EraseError(f"{where}.file: {err}") from None
        prompts += [row.prompt for row in suite.rows]
        if suite.skipped and (where, ps.file) not in _TOLD:  # once per file and key, not per call
            _TOLD.add((where, ps.file))
            print(f"{where}.file: {suite.summary()}", file=sys.stderr)
    return [t.format(p) for _ in range(ps.samples_per_prompt) for p in prompts for t in ps.templates]


def sample_indices(n: int, start: int, count: int, seed: int, stream: str) -> list[int]:
    """Positions start..start+count of an endless sequence of per-epoch permutations of range(n)."""
    out = []
    for k in range(start, start + count):
        epoch, pos = divmod(k, n)
        out.append(int(_perm(n, seed, stream, epoch)[pos]))
    return out


_PERMS: dict[tuple, Tensor] = {}


def _perm(n: int, seed: int, stream: str, epoch: int) -> Tensor:
    key = (n, seed, stream, epoch)
    if key not in _PERMS:
        g = torch.Generator().manual_seed(int.from_bytes(hashlib.blake2b(repr(key).encode(), digest_size=8).digest(), "little") & (2**63 - 1))
        if len(_PERMS) > 64:
            _PERMS.clear()
        _PERMS[key] = torch.randperm(n, generator=g)
    return _PERMS[key]


def load_image_folder(folder: str, size: int, where: str) -> tuple[Tensor, list[str | None]]:
    """Images [N, 3, size, size] in [-1, 1] (sorted by name) and their sidecar captions (NAME.txt)."""
    from PIL import Image

    path = Path(folder).expanduser()
    if not path.is_dir():
        raise EraseError(f"{where}: {folder}: no such folder")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise EraseError(f"{where}: {folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    images, captions = [], []
    for f in files:
        try:
            img = Image.open(f).convert("RGB").resize((size, size), Image.BICUBIC)
        except OSError as err:
            raise EraseError(f"{where}: {f}: cannot read image ({err})") from None
        images.append(torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1))
        txt = f.with_suffix(".txt")
        captions.append(txt.read_text(encoding="utf-8").strip() if txt.is_file() else None)
    return torch.stack(images), captions


class RunData:
    """The run's data (implements erase.objectives.base.SetupData).

    `cached(name, make)` stores tensors in RUN/cache/<name>-<key>.safetensors, where key hashes
    the model source, data config and seed; `make` runs on the main process only and the other
    processes load its result after `wait()`.
    """

    def __init__(self, cfg: DataConfig, needs: frozenset[str], seed: int, cache_dir: Path, cache_key: str,
                 is_main: bool = True, wait: Callable[[], None] = lambda: None, where: str = "<config>",
                 concepts: list[ConceptSpec] | None = None):
        self.cfg, self.needs, self.seed = cfg, needs, seed
        self.cache_dir, self.is_main, self.wait, self.where = Path(cache_dir), is_main, wait, where
        self.concepts = list(concepts or [])
        self.retain_prompts = expand(cfg.retain, f"{where}: data.retain")
        self.anchor_prompts = expand(cfg.anchor, f"{where}: data.anchor")
        if self.concepts:
            self.forget_prompts, self.forget_concepts, self.anchor_prompts = concept_samples(
                self.concepts, self.anchor_prompts, where)
        else:
            self.forget_prompts = expand(cfg.forget, f"{where}: data.forget")
            self.forget_concepts = torch.zeros(len(self.forget_prompts), dtype=torch.long)
        # The key covers the expanded prompts, so editing a prompt file invalidates the caches.
        prompts = json.dumps([self.forget_prompts, self.retain_prompts, self.anchor_prompts])
        self.key = hashlib.sha256((cache_key + json.dumps(_plain(cfg), sort_keys=True) + prompts + str(seed)).encode()).hexdigest()[:12]
        self.forget_latents: Tensor | None = None
        self.retain_latents: Tensor | None = None
        self.anchor_latents: Tensor | None = None
        self.device = torch.device("cpu")
        if ("retain_images" in needs or "retain_prompts" in needs) and not self.retain_prompts and not cfg.retain.images:
            raise EraseError(f"{where}: data.retain.prompts: this method needs retain data; give retain prompts")
        if ("anchor_images" in needs or "anchor_prompts" in needs) and not self.anchor_prompts and not cfg.anchor.images:
            raise EraseError(f"{where}: data.anchor.prompts: this method needs anchor prompts")

    # --- caches -------------------------------------------------------------------------------
    def cached(self, name: str, make: Callable[[], dict[str, Tensor]]) -> dict[str, Tensor]:
        path = self.cache_dir / f"{name}-{self.key}.safetensors"
        if self.is_main and not path.is_file():
            tensors = {k: v.detach().cpu().contiguous() for k, v in make().items()}
            atomic_write_bytes(path, save(tensors))
        self.wait()
        try:
            return load(path.read_bytes())
        except Exception as err:  # noqa: BLE001 - a truncated cache is rebuilt by deleting it
            raise EraseError(f"{path}: corrupt cache file ({err}); delete it and rerun") from None

    # --- images -------------------------------------------------------------------------------
    def prepare(self, models: Models) -> None:
        """Load or generate the images the objective needs (as latents), with a progress bar."""
        size = image_size(models)
        self.device = models.device
        for role in ("forget", "retain", "anchor"):
            if f"{role}_images" not in self.needs:
                continue
            ps: PromptSet = getattr(self.cfg, role)
            if ps.images:
                images, captions = load_image_folder(ps.images, size, f"{self.where}: data.{role}.images")
                prompts = getattr(self, f"{role}_prompts") or [""]
                per_image = [c or prompts[i % len(prompts)] for i, c in enumerate(captions)]
                lat = self.cached(f"{role}_folder", lambda images=images: {"latents": torch.cat([models.latents(images[i:i + 16]) for i in range(0, len(images), 16)])})
                if role != "anchor":
                    setattr(self, f"{role}_prompts", per_image)
                else:
                    self.anchor_prompts = per_image
            else:
                prompts = self._generation_prompts(role)
                c = self.cfg
                lat = self.cached(f"{role}_images_s{c.generate_steps}_g{c.guidance}", lambda prompts=prompts, role=role, c=c: sample_set(
                    models, prompts, self.seed, role, c.generate_steps, c.guidance, c.generate_batch_size, desc=f"{role} images"))
            setattr(self, f"{role}_latents", lat["latents"])

    def _generation_prompts(self, role: str) -> list[str]:
        if role == "anchor":  # one anchor image per forget sample
            return [self.anchor_prompts[i % len(self.anchor_prompts)] for i in range(len(self.forget_prompts))]
        return getattr(self, f"{role}_prompts")

    # --- batches ------------------------------------------------------------------------------
    def batch(self, forget_idx: list[int], retain_idx: list[int] | None, draws: Draws, device: torch.device) -> Batch:
        ids = torch.tensor(forget_idx, dtype=torch.long)
        b = Batch(forget_prompts=[self.forget_prompts[i] for i in forget_idx], forget_ids=ids, rng=draws,
                  forget_concepts=self.forget_concepts[ids])
        if self.forget_latents is not None:
            b.forget_latents = self.forget_latents[ids].to(device)
        if retain_idx is not None:
            r = torch.tensor(retain_idx, dtype=torch.long)
            b.retain_prompts = [self.retain_prompts[i] for i in retain_idx]
            b.retain_ids = r
            if self.retain_latents is not None:
                b.retain_latents = self.retain_latents[r].to(device)
        if self.anchor_prompts:
            b.anchor_prompts = [self.anchor_prompts[i % len(self.anchor_prompts)] for i in forget_idx]
            if self.anchor_latents is not None:
                b.anchor_latents = self.anchor_latents[torch.tensor([i % len(self.anchor_latents) for i in forget_idx])].to(device)
        return b

    def uses_retain(self) -> bool:
        return bool({"retain_images", "retain_prompts"} & self.needs) and bool(self.retain_prompts)

    def forget_batches(self, batch_size: int, draw: int = 0, shared: bool = True) -> Iterator[Batch]:
        """One ordered pass over the forget set (ids 0..N-1).

        With `shared`, every batch of the pass uses the same (t, noise) draw number `draw`, so
        per-sample losses are comparable across the whole set. Negative step numbers keep these
        draws apart from the training steps'.
        """
        n = len(self.forget_prompts)
        for start in range(0, n, batch_size):
            idx = list(range(start, min(n, start + batch_size)))
            ridx = [i % len(self.retain_prompts) for i in idx] if self.uses_retain() else None
            yield self.batch(idx, ridx, Draws(seed=self.seed, step=-1 - draw, micro=0, shared=shared), self.device)


def concept_samples(concepts: list[ConceptSpec], shared_anchors: list[str],
                    where: str = "<config>") -> tuple[list[str], Tensor, list[str]]:
    """(forget prompts, their concept ids [N], anchor prompts, one per forget sample) of a multi-concept
    run: each concept's prompts expanded in order; a concept's anchors pair with its own samples
    (sample i of the concept takes anchor i mod len). Concepts without anchors take the shared
    `data.anchor` prompts; none at all: no anchors."""
    prompts: list[str] = []
    ids: list[int] = []
    anchors: list[str] = []
    for k, c in enumerate(concepts):
        ps = expand(c.prompt_set(), f"{where}: concepts[{k}]")
        own = list(c.anchor) or list(shared_anchors)
        if c.anchor_file:
            own = _paired_anchors(c, ps, f"{where}: concepts[{k}].anchor_file")
        if own:
            anchors += [own[i % len(own)] for i in range(len(ps))]
        elif anchors or any(x.anchor or x.anchor_file for x in concepts):
            raise EraseError(f"{where}: concepts[{k}].anchor: concept {c.name!r} has no anchor prompts while others do "
                             "(give every concept its anchor, or data.anchor for all)")
        prompts += ps
        ids += [k] * len(ps)
    return prompts, torch.tensor(ids, dtype=torch.long), anchors


def _paired_anchors(c: ConceptSpec, expanded: list[str], where: str) -> list[str]:
    """`anchor_file`'s lines, one per line of the concept's prompts, laid out as `expand` lays out the
    prompts (sample-major, then prompt, then template), so expanded prompt i takes anchor i."""
    try:
        suite = read_suite(c.anchor_file)
    except EraseError as err:  # the suite loader names the file; add the config key
        raise EraseError(f"{where}: {err}") from None
    if suite.skipped:
        raise EraseError(f"{where}: {c.anchor_file}: {suite.summary()}; its lines pair one to one with the "
                         "concept's prompts, so none may be unusable")
    lines = [row.prompt for row in suite.rows]
    n = len(expanded) // (len(c.templates) * c.samples_per_prompt)
    if len(lines) != n:
        raise EraseError(f"{where}: {c.anchor_file}: {len(lines)} anchors for the {n} prompts of concept {c.name!r} "
                         "(one per prompt, line by line)")
    return [a for _ in range(c.samples_per_prompt) for a in lines for _t in c.templates]


def image_size(models: Models) -> int:
    return int(models.latent_shape()[-1]) * models.vae_scale_factor


def _plain(obj):
    from erase.config import to_dict

    return to_dict(obj)
