"""Every configs/digits training recipe loads, builds its objective and finds its data; each has a LoReUn
twin. (The `erase edit` recipes, e.g. uce.yaml, are tests/test_edit.py's.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from erase.config import load_config, to_dict
from erase.edit.registry import is_edit_config
from erase.objectives import build_objective
from erase.resources import data_path
from erase.train.config import RunConfig, resolve_data_paths
from erase.train.data import concept_samples, expand
from erase.zoo.digits import DIGIT_WORDS

CONFIGS = sorted(p for p in data_path("configs/digits").glob("*.yaml") if not is_edit_config(p))


def load(path: Path) -> RunConfig:
    return resolve_data_paths(load_config(RunConfig, path), path)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_builds_and_its_prompts_name_the_right_digits(path, monkeypatch):
    monkeypatch.chdir(path.parent)  # data paths must resolve from anywhere, not only the repo root
    cfg = load(path)
    if not cfg.rum.enabled:
        build_objective(cfg.method, cfg.objective, str(path))
    retain = expand(cfg.data.retain)
    if cfg.concepts:  # a multi-concept recipe: each concept's prompts name its own digit
        prompts, ids, _ = concept_samples(cfg.concepts, [])
        erased = [c.name for c in cfg.concepts]
        for p, k in zip(prompts, ids.tolist()):
            d = DIGIT_WORDS.index(erased[k])
            assert erased[k] in p.split() or str(d) in p.split(), p
    else:
        prompts, erased = expand(cfg.data.forget), ["three"]
        assert prompts and all("three" in p or "3" in p for p in prompts)
    # Nothing that is kept may name an erased digit: that would train against the erasure.
    for w in erased:
        d = str(DIGIT_WORDS.index(w))
        assert not [p for p in retain if w in p.split() or d in p.split()], w


def test_shared_retain_set_covers_every_other_digit_in_every_ink():
    retain = expand(load(data_path("configs/digits/esd.yaml")).data.retain)
    for d, word in enumerate(DIGIT_WORDS):
        if d != 3:
            named = [p for p in retain if word in p.split() or str(d) in p.split()]
            assert {c for c in ("black", "red", "green", "blue") if any(c in p for p in named)} == {"black", "red", "green", "blue"}
    assert any(p.split()[0] in ("black", "red", "green", "blue") and "digit" not in p for p in retain)  # inks alone


@pytest.mark.parametrize("path", [p for p in CONFIGS if (p.parent / f"{p.stem}_loreun.yaml").is_file()], ids=lambda p: p.stem)
def test_loreun_twin_differs_only_in_weighting(path):
    plain, twin = to_dict(load(path)), to_dict(load(path.parent / f"{path.stem}_loreun.yaml"))
    assert plain.pop("weighting")["kind"] == "uniform" and twin.pop("weighting")["kind"] in ("dynamic", "static")
    assert plain == twin
