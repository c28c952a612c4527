import random

import pytest
import torch

from erase.errors import EraseError
from erase.zoo.digits import (
    COLOUR_NAMES,
    DIGIT_WORDS,
    HELDOUT_TEMPLATES,
    TRAIN_TEMPLATES,
    exclusion_mask,
    load_digits_world,
    parse_exclude,
    sample_captions,
)


@pytest.fixture(scope="module")
def data():
    return load_digits_world()


def test_every_digit_in_every_colour_with_stratified_heldout(data):
    assert len(data) == 1797 * len(COLOUR_NAMES)
    assert data.images.shape[1:] == (3, 16, 16)
    assert data.images.min() >= -1 and data.images.max() <= 1
    for d in range(10):
        frac = data.heldout[data.digits == d].float().mean().item()
        assert 0.18 < frac < 0.22
    # The same glyph is held out in every colour, so no held-out shape was seen in another ink.
    n = 1797
    assert torch.equal(data.heldout[:n], data.heldout[n : 2 * n])


def test_ink_colours_are_what_the_labels_say(data):
    # The darkest pixel of each image carries its ink; channel order follows the colour's RGB.
    for k, name in enumerate(COLOUR_NAMES):
        imgs = data.images[data.colours == k][:50]
        flat = imgs.flatten(2)
        ink = flat.gather(2, flat.sum(1, keepdim=True).argmin(2, keepdim=True).expand(-1, 3, -1)).squeeze(2).mean(0)
        if name == "red":
            assert ink[0] > ink[1] + 0.5 and ink[0] > ink[2] + 0.5
        if name == "blue":
            assert ink[2] > ink[0] + 0.5


def test_captions_name_what_they_show(data):
    rng = random.Random(0)
    idx = torch.arange(0, len(data), 97)
    caps = sample_captions(data.digits[idx], data.colours[idx], rng, weights=(1, 0, 0))
    for c, d, k in zip(caps, data.digits[idx].tolist(), data.colours[idx].tolist()):
        assert (DIGIT_WORDS[d] in c or str(d) in c) and COLOUR_NAMES[k] in c


def test_heldout_templates_never_train():
    train = {t for ts in TRAIN_TEMPLATES.values() for t in ts}
    held = {t for ts in HELDOUT_TEMPLATES.values() for t in ts}
    assert not train & held


def test_exclude(data):
    ex = parse_exclude(["digit=3", "colour=red"])
    assert ex == [("digit", 3), ("colour", 1)]
    m = exclusion_mask(data, ex)
    assert m.sum() == (data.digits == 3).sum() + (data.colours == 1).sum() - ((data.digits == 3) & (data.colours == 1)).sum()
    assert parse_exclude(["digit=three"]) == [("digit", 3)]
    for bad in ("digit=12", "colour=pink", "shape=round"):
        with pytest.raises(EraseError, match=bad.split("=")[0]):
            parse_exclude([bad])
