"""The digits world: scikit-learn's 1797 handwritten digits, enlarged, inked in colours, captioned.

Two concept axes, like UnlearnCanvas on a laptop: the *object* (which digit) and the *style*
(which ink colour). Captions come from templates; some name both axes, some only one, so that
"a handwritten three" means a three in any colour. A stratified image split and whole caption
templates are held out, so evaluation prompts were never seen in training.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Ink colours in RGB [0, 1] on white paper. Chosen to be far apart, so the colour judge is exact.
COLOURS: dict[str, tuple[float, float, float]] = {
    "black": (0.05, 0.05, 0.05),
    "red": (0.85, 0.08, 0.08),
    "green": (0.05, 0.55, 0.12),
    "blue": (0.08, 0.2, 0.9),
}
COLOUR_NAMES = tuple(COLOURS)
IMAGE_SIZE = 16

# {w} digit word, {n} numeral, {c} colour. Templates name both axes, the digit only, or the colour only.
TRAIN_TEMPLATES = {
    "both": ("a {c} handwritten {w}", "the number {n} written in {c}", "a handwritten {w} in {c} ink",
             "{c} digit {n}", "the digit {w}, {c}"),
    "digit": ("a handwritten {w}", "the number {n}", "digit {w}", "a {w}"),
    "colour": ("something handwritten in {c}", "{c} ink", "a {c} digit"),
}
HELDOUT_TEMPLATES = {
    "both": ("a drawing of the digit {w} in {c}", "{w}, written with a {c} pen"),
    "digit": ("a picture of the number {w}", "the numeral {n} written by hand"),
    "colour": ("a digit drawn with a {c} pen",),
}


def caption(template: str, digit: int, colour: str) -> str:
    return template.format(w=DIGIT_WORDS[digit], n=digit, c=colour)


@dataclass(frozen=True)
class DigitsData:
    """Images [N, 3, 16, 16] in [-1, 1], digit and colour labels, and a held-out mask."""

    images: torch.Tensor
    digits: torch.Tensor
    colours: torch.Tensor
    heldout: torch.Tensor  # bool: True = held-out image (never trained on)

    def __len__(self) -> int:
        return len(self.digits)

    def subset(self, mask: torch.Tensor) -> DigitsData:
        return DigitsData(self.images[mask], self.digits[mask], self.colours[mask], self.heldout[mask])


def _ink(glyphs: torch.Tensor, colour: tuple[float, float, float]) -> torch.Tensor:
    """White paper with ink of `colour` where glyph intensity is high. glyphs: [N, 1, H, W] in [0, 1]."""
    c = torch.tensor(colour).view(1, 3, 1, 1)
    return 1.0 - glyphs * (1.0 - c)


def load_digits_world(heldout_fraction: float = 0.2, seed: int = 0) -> DigitsData:
    """Every scikit-learn digit in every ink colour, at 16 px, with a stratified held-out split."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    glyphs = torch.tensor(raw.images, dtype=torch.float32).unsqueeze(1) / 16.0
    # Bilinear enlargement of 8 px strokes to 16 px: smooth edges, like ink.
    glyphs = F.interpolate(glyphs, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False).clamp(0, 1)
    labels = torch.tensor(raw.target, dtype=torch.long)
    rng = np.random.default_rng(seed)
    heldout = torch.zeros(len(labels), dtype=torch.bool)
    for d in range(10):
        idx = np.flatnonzero(raw.target == d)
        rng.shuffle(idx)
        heldout[torch.from_numpy(idx[: round(heldout_fraction * len(idx))])] = True
    images, digits, colours, held = [], [], [], []
    for k, rgb in enumerate(COLOURS.values()):
        images.append(_ink(glyphs, rgb) * 2 - 1)
        digits.append(labels)
        colours.append(torch.full_like(labels, k))
        held.append(heldout)
    return DigitsData(torch.cat(images), torch.cat(digits), torch.cat(colours), torch.cat(held))


def parse_exclude(items: list[str] | tuple[str, ...]) -> list[tuple[str, int]]:
    """`["digit=3", "colour=red"]` -> [("digit", 3), ("colour", 2)]; `digit=3,5,8` names several values
    of one axis (a multi-concept retrain reference); one-line errors otherwise."""
    from erase.errors import EraseError

    out: list[tuple[str, int]] = []
    pairs = []
    for item in items:
        axis, _, values = item.partition("=")
        pairs += [(item, axis, v) for v in values.split(",")]
    for item, axis, value in pairs:
        axis = axis.strip().replace("color", "colour")
        value = value.strip().lower()
        if axis == "digit":
            if value.isdigit() and int(value) < 10:
                out.append(("digit", int(value)))
            elif value in DIGIT_WORDS:
                out.append(("digit", DIGIT_WORDS.index(value)))
            else:
                raise EraseError(f"--exclude {item}: digit must be 0-9 or a word like 'three'")
        elif axis == "colour":
            if value not in COLOURS:
                raise EraseError(f"--exclude {item}: colour must be one of {', '.join(COLOURS)}")
            out.append(("colour", COLOUR_NAMES.index(value)))
        else:
            raise EraseError(f"--exclude {item}: expected digit=N or colour=NAME")
    return list(dict.fromkeys(out))


def exclusion_mask(data: DigitsData, exclude: list[tuple[str, int]]) -> torch.Tensor:
    """True for samples that carry an excluded concept (a retrain reference drops them)."""
    mask = torch.zeros(len(data), dtype=torch.bool)
    for axis, value in exclude:
        mask |= (data.digits if axis == "digit" else data.colours) == value
    return mask


def sample_captions(digits: torch.Tensor, colours: torch.Tensor, rng: random.Random,
                    templates: dict[str, tuple[str, ...]] = TRAIN_TEMPLATES,
                    weights: tuple[float, float, float] = (0.6, 0.3, 0.1)) -> list[str]:
    """One random caption per sample: both axes / digit only / colour only, with `weights`."""
    kinds = ("both", "digit", "colour")
    out = []
    for d, c in zip(digits.tolist(), colours.tolist()):
        kind = rng.choices(kinds, weights=weights)[0]
        out.append(caption(rng.choice(templates[kind]), d, COLOUR_NAMES[c]))
    return out
