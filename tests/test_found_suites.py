"""Found prompts become suites that `erase audit --suite` replays on another model (the transfer test)."""

import csv
import json

import numpy as np
import torch
from PIL import Image

from erase.audit.attacks import concept_inversion as ci
from erase.audit.attacks.found import load_embeddings, replay_cond_fn, save_embeddings, write_found
from erase.audit.generate import GenSettings, pipeline_models
from erase.audit.suites import PromptRow, read_suite
from erase.cli import main
from erase.models.loading import load_pipeline

ROWS = [PromptRow(index=i, id=f"c{i}", prompt=f"a handwritten three, take {i}", seed=40 + i, guidance=5.0, label="three")
        for i in range(3)]


def test_discrete_prompts_are_a_csv_suite(tmp_path):
    recs = [{"index": 0, "pre": True, "success": True},
            {"index": 1, "pre": False, "success": True, "adv_prompt": "tokens, found \"quoted\""},
            {"index": 2, "pre": False, "success": False, "adv_prompt": "other tokens"}]
    assert write_found("p4d", tmp_path, ROWS, recs) == "attack/found.csv"
    suite = read_suite(tmp_path / "attack" / "found.csv")
    assert [(r.id, r.prompt, r.seed, r.guidance, r.label) for r in suite.rows] == [
        ("c1", "tokens, found \"quoted\"", 41, 5.0, "three"), ("c2", "other tokens", 42, 5.0, "three")]
    assert suite.ignored_columns == ["attack", "success"] and not suite.skipped
    with (tmp_path / "attack" / "found.csv").open() as f:
        assert [r["success"] for r in csv.DictReader(f)] == ["1", "0"]
    assert write_found("relearn", tmp_path, ROWS, recs) is None


def test_a_missing_embeddings_file_skips_the_row(tmp_path):
    (tmp_path / "s.jsonl").write_text(json.dumps({"prompt": "{} x", "embeddings": "gone.safetensors"}) + "\n"
                                      + json.dumps({"prompt": "plain"}) + "\n")
    suite = read_suite(tmp_path / "s.jsonl")
    assert [r.prompt for r in suite.rows] == ["plain"] and "gone.safetensors" in suite.skipped[0]["reason"]


def test_added_vector_is_replayed_as_added(tiny_pipeline, tmp_path):
    models = pipeline_models(tiny_pipeline)
    delta = torch.randn(77, tiny_pipeline.text_encoder.config.hidden_size, generator=torch.Generator().manual_seed(0))
    save_embeddings(tmp_path / "v.safetensors", delta, "add")
    assert load_embeddings(tmp_path / "v.safetensors")[1] == "add"
    row = PromptRow(index=0, id="0", prompt="a three", seed=1, embeddings=str(tmp_path / "v.safetensors"))
    with torch.no_grad():
        got = replay_cond_fn(tiny_pipeline)([row, PromptRow(index=1, id="1", prompt="a two", seed=2)])
        want = torch.cat([models.encode(["a three"]) + delta, models.encode(["a two"])])
    torch.testing.assert_close(got, want)


def test_learned_tokens_replay_on_another_model_as_the_attack_renders_them(tiny_reference_dir, tiny_clip_dir, tmp_path):
    """Concept inversion's suite, replayed by `erase audit --suite` on another model, makes the same
    pixels as the attack's own render with that model."""
    other = load_pipeline(str(tiny_reference_dir))
    width = other.text_encoder.get_input_embeddings().weight.shape[1]
    embeds = torch.randn(1, width, generator=torch.Generator().manual_seed(3))
    save_embeddings(tmp_path / "attack" / "learned_embeds.safetensors", embeds, "slots")
    recs = [{"index": i, "pre": False, "success": False, "adv_prompt": "<learned> ..."} for i in range(2)]
    assert write_found("concept_inversion", tmp_path, ROWS[:2], recs) == "attack/found.jsonl"
    out = tmp_path / "replay"
    assert main(["audit", "--model", str(tiny_reference_dir), "--suite", str(tmp_path / "attack" / "found.jsonl"),
                 "--steps", "2", "--out", str(out), "--detector", f"clip:{tiny_clip_dir}:three"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["metrics"]["n_images"] == 2 and res["metrics"]["concept_rate"] is not None
    for i, row in enumerate(ROWS[:2]):
        want = ci.render(other, row, embeds, GenSettings(steps=2))
        got = np.asarray(Image.open(out / "images" / f"{i:05d}.png"), dtype=np.float32) / 255
        assert np.abs(got - want).max() <= 1 / 255 + 1e-6
    plain = np.asarray(Image.open(out / "images" / "00000.png"), dtype=np.float32) / 255
    from erase.audit.attacks.unlearndiffatk import render

    assert np.abs(plain - render(other, ROWS[0], ROWS[0].prompt, GenSettings(steps=2))).max() > 2 / 255  # not ignored
