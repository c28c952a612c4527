"""`erase edit` (UCE) end to end on the tiny model, its configs, and the scale bench's mechanics."""

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from erase.cli import main
from erase.config import load_config
from erase.edit.config import EditConfig
from erase.edit.registry import editor_names, is_edit_config
from erase.edit.runner import edit_set
from erase.models.core import Models
from erase.models.editing import cross_attention_kv, token_states
from erase.resources import data_path
from erase.train.config import resolve_data_paths

EDIT_CONFIGS = [p for p in sorted(data_path("configs").rglob("*.yaml")) if is_edit_config(p)]


def write(tmp_path: Path, model: str, **extra) -> Path:
    cfg = {"model": model, "method": "uce", "concepts": [{"name": "cat", "prompts": ["cat", "a red cat"], "anchor": ["dog"]}],
           "preserve": {"prompts": ["a car", "the sea"]}, **extra}
    path = tmp_path / "edit.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_edit_writes_a_run_directory_that_vanilla_diffusers_loads(tiny_pipeline_dir, tmp_path, capsys):
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "run"
    assert main(["edit", "--config", str(write(tmp_path, str(tiny_pipeline_dir))), "--out", str(out)]) == 0, capsys.readouterr().err
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "completed" and info["method"] == "uce" and info["concept"] == "cat"
    assert info["metrics"]["layers"] == 2 * len([n for n in cross_attention_kv(
        StableDiffusionPipeline.from_pretrained(tiny_pipeline_dir).unet) if n.endswith("to_k")])
    assert yaml.safe_load((out / "config.yaml").read_text())["edit"] == {}
    pipe = StableDiffusionPipeline.from_pretrained(out / "model")  # vanilla diffusers
    assert main(["export", str(out), "--to", str(tmp_path / "export")]) == 0  # the export reads it as a run
    card = (tmp_path / "export" / "README.md").read_text()
    assert "erased in closed form (`erase edit`, no training)" in card and "objective: `uce`" in card
    base = load_file(str(tiny_pipeline_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    new = load_file(str(out / "model" / "unet" / "diffusion_pytorch_model.safetensors"))
    changed = {k for k in base if not torch.equal(base[k], new[k])}
    assert changed and all(".attn2.to_k." in k or ".attn2.to_v." in k for k in changed)
    # the erase key's new values are the guide's old ones (closer than before the edit)
    m = Models.from_pipeline(pipe, device="cpu")
    with torch.no_grad():
        (c, g), (lc, lg) = token_states(m, ["cat", "dog"])
        c, g = c[lc], g[lg]
        name = next(iter(cross_attention_kv(pipe.unet)))
        w_new, w_old = new[f"{name}.weight"], base[f"{name}.weight"]
        assert (w_new @ c - w_old @ g).norm() < 0.5 * (w_old @ c - w_old @ g).norm()


def test_edit_bad_input_is_one_line_and_train_points_to_edit(tiny_pipeline_dir, tmp_path, capsys):
    path = write(tmp_path, str(tiny_pipeline_dir), edit={"lamb": 0})
    assert main(["edit", "--config", str(path), "--out", str(tmp_path / "x")]) == 2
    assert "edit.lamb: must be > 0" in capsys.readouterr().err
    path.write_text(yaml.safe_dump({"model": "builder:tiny", "method": "uce", "concepts": []}))
    assert main(["edit", "--config", str(path), "--out", str(tmp_path / "y")]) == 2
    assert "concepts: is empty" in capsys.readouterr().err
    assert main(["train", "--config", str(write(tmp_path, "builder:tiny")), "--dry-run"]) == 2
    assert "run `erase edit --config" in capsys.readouterr().err


@pytest.mark.parametrize("path", EDIT_CONFIGS, ids=lambda p: p.stem)
def test_shipped_edit_recipes_load(path, monkeypatch):
    monkeypatch.chdir(path.parent)
    cfg = resolve_data_paths(load_config(EditConfig, path), path)
    assert cfg.method in editor_names()
    edits = edit_set(cfg, str(path))
    assert edits.erase and len(edits.guide) == len(edits.erase) and not set(edits.erase) & set(edits.preserve)


def test_digits_uce_recipe_erases_three_and_preserves_the_rest():
    cfg = resolve_data_paths(load_config(EditConfig, data_path("configs/digits/uce.yaml")), data_path("configs/digits/uce.yaml"))
    edits = edit_set(cfg)
    names_three = re.compile(r"\b(three|3)\b")
    assert all(names_three.search(p) for p in edits.erase)
    assert edits.preserve and not [p for p in edits.preserve if names_three.search(p)]
    # each prompt is guided to its own phrasing with eight (anchor_file, line by line), the ink kept
    eight = {"three": "eight", "3": "8"}
    assert edits.guide == [re.sub(r"\ba (eight|8)\b", r"an \1", names_three.sub(lambda m: eight[m.group()], p))
                           for p in edits.erase]


@pytest.mark.parametrize("name", ["three_train", "three_train_both_names", "three_train_both_names_to_eight",
                                  "retain_not3", "retain_not3_near",
                                  "retain_not3_all", "retain_not3_all_names", "retain_not3_all_both_names"])
def test_uce_digits_prompt_sets_hold_no_heldout_phrasing(name):
    """The recipe and its validation grid (scripts/uce_digits_grid.py) edit with training phrasings only:
    every prompt is a training template's caption (either name of the digit) or a digit's bare name (the
    concept words themselves, as UCE's concept lists), none a held-out one. The guides to eight write "an
    eight" / "an 8" where the training caption reads "a eight" (template "a {w}"), as they were validated."""
    from erase.zoo.digits import COLOUR_NAMES, DIGIT_WORDS, HELDOUT_TEMPLATES, TRAIN_TEMPLATES, caption

    def captions(templates: dict) -> set[str]:
        ts = [t for kind in templates.values() for t in kind]
        ts += [t.replace("{w}", "@").replace("{n}", "{w}").replace("@", "{n}") for t in ts]  # the other name
        return {caption(t, d, c) for t in ts for d in range(10) for c in COLOUR_NAMES}

    prompts = {re.sub(r"^an (?=eight$|8$)", "a ", p) for p in data_path(f"prompts/digits/{name}.txt").read_text().splitlines() if p}
    assert prompts and prompts <= captions(TRAIN_TEMPLATES) | {*DIGIT_WORDS, *map(str, range(10))}
    assert not prompts & captions(HELDOUT_TEMPLATES)


def test_sdxl_edit_reads_both_encoders_states(tmp_path):
    """On SDXL the keys are both encoders' states side by side, and every projection of that width moves."""
    from erase.edit.base import EditSet
    from erase.edit.uce import Uce
    from erase.models.builder import build_pipeline

    pipe = build_pipeline("tiny-sdxl")
    m = Models.from_pipeline(pipe, device="cpu")
    width = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    before = {n: p.weight.detach().clone() for n, p in cross_attention_kv(pipe.unet).items()}
    info = Uce().edit(m, EditSet(["cat"], [""], [0], ["a dog"]))
    assert info["key_width"] == width and info["layers"] == len(before) > 0
    for n, p in cross_attention_kv(pipe.unet).items():
        assert p.weight.shape[1] == width and not torch.equal(p.weight, before[n])


def test_bench_edit_times_uce_and_one_esd_step(tmp_path, capsys):
    from erase.bench.edit import concept_names, run_edit_bench

    assert len(set(concept_names(300))) == 300
    r = run_edit_bench("tiny", 3, ratios=True, log=lambda s: None)
    assert r["seconds"] > 0 and r["edit"]["erase_keys"] == 3
    assert [x["concepts"] for x in r["ratios"]["uce"]] == [1, 10, 100] and r["ratios"]["esd_x_step_seconds"] > 0
    assert main(["bench", "edit", "--concepts", "x", "--arch", "tiny", "--out", str(tmp_path)]) == 2
    assert "--concepts x" in capsys.readouterr().err
