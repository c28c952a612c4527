"""Data for classifier unlearning: digits or CIFAR-10, splits, and the three kinds of forget set.

Digits: scikit-learn's `load_digits()` (1797 images, 8x8, pixel values 0..16, scaled to [0, 1]),
split once (seed 0, stratified) into train 70% / validation 10% / test 20%. The validation split
is what hyperparameters are tuned on; the test split is only reported.

CIFAR-10: the binary release (`cifar-10-batches-bin/`: `data_batch_1..5.bin`, `test_batch.bin`,
each record 1 label byte + 3072 pixel bytes, channel-major 3 x 32 x 32) read with numpy, never
pickle. The last 5000 training images are the validation split. Pixels are normalised by the
usual CIFAR-10 channel means and standard deviations.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from erase.errors import EraseError

ForgetKind = Literal["random10", "class", "memorised"]
FORGET_CLASS = 3  # the class erased by --forget class (a fixed choice, the same for every seed)
CIFAR_RECORD = 1 + 3 * 32 * 32
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


@dataclass
class Split:
    x: Tensor  # [N, C, H, W] float32
    y: Tensor  # [N] int64

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, idx: Tensor) -> Split:
        return Split(self.x[idx], self.y[idx])

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), self.y.to(device))


@dataclass
class Dataset:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int

    def to(self, device: torch.device | str) -> Dataset:
        return Dataset(self.name, self.train.to(device), self.val.to(device), self.test.to(device), self.num_classes)


def load_digits(seed: int = 0) -> Dataset:
    """scikit-learn digits as [N, 1, 8, 8] in [0, 1]: stratified 70 / 10 / 20 split (fixed `seed`)."""
    from sklearn.datasets import load_digits as _load
    from sklearn.model_selection import train_test_split

    d = _load()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    y = d.target.astype(np.int64)
    idx = np.arange(len(y))
    tr, rest = train_test_split(idx, test_size=0.3, stratify=y, random_state=seed)
    va, te = train_test_split(rest, test_size=2 / 3, stratify=y[rest], random_state=seed)

    def split(i: np.ndarray) -> Split:
        return Split(torch.from_numpy(x[i]), torch.from_numpy(y[i]))

    return Dataset("digits", split(tr), split(va), split(te), 10)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary batch file -> (uint8 images [N, 3, 32, 32], int64 labels [N])."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % CIFAR_RECORD:
        raise EraseError(f"{path}: not a CIFAR-10 binary batch ({raw.size} bytes is not a multiple of {CIFAR_RECORD})")
    rec = raw.reshape(-1, CIFAR_RECORD)
    labels = rec[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise EraseError(f"{path}: label byte {int(labels.max())} out of range 0..9")
    return rec[:, 1:].reshape(-1, 3, 32, 32), labels


def load_cifar10(data_dir: str | Path, val_size: int = 5000) -> Dataset:
    """The CIFAR-10 binary folder (`cifar-10-batches-bin` or a folder holding it)."""
    root = Path(data_dir)
    if (root / "cifar-10-batches-bin").is_dir():
        root = root / "cifar-10-batches-bin"
    train_files = sorted(root.glob("data_batch_*.bin"))
    test_file = root / "test_batch.bin"
    if not train_files or not test_file.is_file():
        raise EraseError(f"{data_dir}: --data-dir must hold data_batch_*.bin and test_batch.bin (CIFAR-10 binary version)")
    xs, ys = zip(*(read_cifar_batch(f) for f in train_files))
    x, y = np.concatenate(xs), np.concatenate(ys)
    xt, yt = read_cifar_batch(test_file)
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)

    def split(a: np.ndarray, b: np.ndarray) -> Split:
        return Split((torch.from_numpy(a).float() / 255.0 - mean) / std, torch.from_numpy(b))

    val_size = min(val_size, len(y) // 10)
    return Dataset("cifar10", split(x[:-val_size], y[:-val_size]), split(x[-val_size:], y[-val_size:]),
                   split(xt, yt), 10)


def load(name: str, data_dir: str | Path | None = None) -> Dataset:
    if name == "digits":
        return load_digits()
    if name == "cifar10":
        if data_dir is None:
            raise EraseError("--data-dir: required with --data cifar10 (the cifar-10-batches-bin folder)")
        return load_cifar10(data_dir)
    raise EraseError(f"--data: unknown dataset {name!r} (choose digits or cifar10)")


def memorisation_ranked(memorisation: Tensor, n: int) -> Tensor:
    """RUM's non-random forget set: n/3 of the most, n/3 of the least, and n/3 of the
    mid-memorised training samples (closest to the score's MEDIAN: kairanzhao/RUM `main_forget.py:403-409`,
    whose last sort is by distance to the median), disjoint."""
    order = torch.argsort(memorisation, descending=True, stable=True)
    k = n // 3
    high, low = order[:k], order[-(n - 2 * k):] if n - 2 * k else order[:0]
    taken = set(high.tolist()) | set(low.tolist())
    mid_value = memorisation.median()
    by_mid = torch.argsort((memorisation - mid_value).abs(), stable=True).tolist()
    mid = torch.tensor([i for i in by_mid if i not in taken][:k], dtype=torch.long)
    return torch.cat([high, mid, low]).sort().values


def forget_indices(kind: ForgetKind, train: Split, seed: int, memorisation: Tensor | None = None,
                   fraction: float = 0.1) -> Tensor:
    """Indices (into the training split, sorted) of the forget set."""
    n = len(train)
    if kind == "random10":
        g = torch.Generator().manual_seed(seed)
        return torch.randperm(n, generator=g)[: round(fraction * n)].sort().values
    if kind == "class":
        return torch.nonzero(train.y.cpu() == FORGET_CLASS).flatten()
    if kind == "memorised":
        assert memorisation is not None and memorisation.shape == (n,), "memorised forget set needs a score per training sample"
        return memorisation_ranked(memorisation, round(fraction * n))
    raise ValueError(f"forget: unknown kind {kind!r}")
