"""RUM's files: each group's images (PNG + caption per sample) and the retain folders of a phase."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from erase.io import atomic_dir


def write_images(models: Any, latents: Tensor, captions: Sequence[str], ids: Sequence[int], folder: Path) -> None:
    """PNG + caption sidecar per sample (names = sample ids, so sorted order = id order), atomically."""
    with atomic_dir(folder) as tmp:
        for start in range(0, len(ids), 16):
            chunk = list(ids[start:start + 16])
            imgs = models.decode(latents[torch.tensor(chunk)].to(models.device)).cpu()
            for i, img in zip(chunk, imgs):
                arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                Image.fromarray(arr).save(tmp / f"{i:05d}.png")
                (tmp / f"{i:05d}.txt").write_text(captions[i], encoding="utf-8")


def merge_folders(folders: list[Path], dest: Path) -> None:
    """One folder with every file of `folders` (prefixed by the folder's position, so names never clash)."""
    with atomic_dir(dest) as tmp:
        for k, folder in enumerate(folders):
            if folder.is_dir():
                for f in sorted(folder.iterdir()):
                    shutil.copy2(f, tmp / f"{k:02d}_{f.name}")
