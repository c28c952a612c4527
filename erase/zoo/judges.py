"""The digits world's judges: a digit classifier, an ink-colour classifier, and a feature extractor.

They play the role that NudeNet, style classifiers and Inception play for real Stable Diffusion:
they decide whether a generated image shows the concept, and their penultimate features give a
Frechet distance between generated and real images (this world's FID). They are trained on the
real held-in digits with augmentations (shifts, blur, noise, contrast) so that they judge
generated images by shape and ink, not by pixel-exact texture.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save
from torch import nn
from tqdm.auto import tqdm

from erase.errors import EraseError
from erase.io import atomic_write_bytes, atomic_write_json
from erase.zoo.digits import COLOUR_NAMES, IMAGE_SIZE, DigitsData


class JudgeNet(nn.Module):
    """A small CNN on 16 px RGB images in [-1, 1]; `features` is its 128-d penultimate layer."""

    def __init__(self, n_classes: int, width: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16 * width, 128), nn.GELU(),
        )
        self.head = nn.Linear(128, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@dataclass(frozen=True)
class JudgeRecipe:
    seed: int = 0
    epochs: int = 20
    batch_size: int = 128
    lr: float = 2e-3
    width: int = 32


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Shifts of up to 1 px, blur, contrast and noise: what a generator's images vary in."""
    n = x.shape[0]
    pad = F.pad(x, (1, 1, 1, 1), mode="replicate")
    dx, dy = torch.randint(0, 3, (2,), generator=g).tolist()
    x = pad[:, :, dy : dy + IMAGE_SIZE, dx : dx + IMAGE_SIZE]
    if torch.rand((), generator=g) < 0.3:
        x = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1) * 0.5 + x * 0.5
    scale = 0.7 + 0.6 * torch.rand(n, 1, 1, 1, generator=g)
    x = (x - 1) * scale + 1  # contrast around the white paper
    x = x + 0.08 * torch.rand(n, 1, 1, 1, generator=g) * torch.randn(x.shape, generator=g)
    return x.clamp(-1, 1)


def train_judge(data: DigitsData, labels: torch.Tensor, n_classes: int, recipe: JudgeRecipe, desc: str) -> JudgeNet:
    torch.manual_seed(recipe.seed)
    g = torch.Generator().manual_seed(recipe.seed)
    rng = random.Random(recipe.seed)
    net = JudgeNet(n_classes, recipe.width)
    opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=1e-4)
    train = torch.nonzero(~data.heldout).squeeze(1).tolist()
    steps = recipe.epochs * (len(train) // recipe.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=steps)
    net.train()
    for _ in tqdm(range(steps), desc=desc, leave=False):
        idx = torch.tensor(rng.sample(train, recipe.batch_size))
        loss = F.cross_entropy(net(augment(data.images[idx], g)), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


class Judges:
    """Digit and colour judges. `predict` takes float images [N, H, W, 3] in [0, 1] (any H, W)."""

    def __init__(self, digit: JudgeNet, colour: JudgeNet):
        self.digit, self.colour = digit.eval(), colour.eval()

    @staticmethod
    def _prepare(images) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(images), dtype=torch.float32)
        if x.ndim != 4 or x.shape[-1] != 3:
            raise EraseError(f"judges: expected images [N, H, W, 3] in [0, 1], got shape {tuple(x.shape)}")
        x = x.permute(0, 3, 1, 2) * 2 - 1
        if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
            x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True, align_corners=False)
        return x

    @torch.no_grad()
    def predict(self, images, batch_size: int = 512) -> dict[str, np.ndarray]:
        x = self._prepare(images)
        d = torch.cat([self.digit(b).softmax(-1) for b in x.split(batch_size)])
        c = torch.cat([self.colour(b).softmax(-1) for b in x.split(batch_size)])
        return {"digit": d.numpy(), "colour": c.numpy()}

    @torch.no_grad()
    def features(self, images, batch_size: int = 512) -> np.ndarray:
        x = self._prepare(images)
        return torch.cat([self.digit.features(b) for b in x.split(batch_size)]).numpy().astype(np.float64)

    @property
    def colour_names(self) -> tuple[str, ...]:
        return COLOUR_NAMES

    def save(self, folder: str | Path, recipe: JudgeRecipe, metrics: dict) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, net in (("digit", self.digit), ("colour", self.colour)):
            state = {k: v.contiguous() for k, v in net.state_dict().items()}
            atomic_write_bytes(folder / f"{name}.safetensors", save(state))
        atomic_write_json(folder / "judges.json", {"recipe": asdict(recipe), "metrics": metrics,
                                                   "colours": list(COLOUR_NAMES), "image_size": IMAGE_SIZE})


def load_judges(folder: str | Path | None = None) -> Judges:
    """The shipped judges (or those in `folder`), loaded from safetensors."""
    if folder is None:
        from erase.zoo.registry import judges_path

        folder = judges_path()
    folder = Path(folder)
    meta_path = folder / "judges.json"
    if not meta_path.is_file():
        raise EraseError(f"{folder}: no judges here (judges.json missing); build them with `erase zoo build digits`")
    meta = json.loads(meta_path.read_text())
    width = meta["recipe"]["width"]
    nets = []
    for name, n in (("digit", 10), ("colour", len(meta["colours"]))):
        net = JudgeNet(n, width)
        try:
            net.load_state_dict(load_file(str(folder / f"{name}.safetensors")))
        except Exception as err:  # noqa: BLE001 - corrupt or mismatched file
            raise EraseError(f"{folder / (name + '.safetensors')}: cannot load judge ({str(err).splitlines()[0]})") from None
        nets.append(net)
    return Judges(*nets)


def evaluate_judges(judges: Judges, data: DigitsData) -> dict[str, float]:
    held = data.subset(data.heldout)
    imgs = ((held.images.permute(0, 2, 3, 1) + 1) / 2).numpy()
    p = judges.predict(imgs)
    return {
        "digit_accuracy_heldout": float((p["digit"].argmax(1) == held.digits.numpy()).mean()),
        "colour_accuracy_heldout": float((p["colour"].argmax(1) == held.colours.numpy()).mean()),
    }
