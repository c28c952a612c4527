"""The relearning attack: a fine-tuned COPY, a concept-rate curve, the audited model never modified."""

import hashlib
import json

import numpy as np
import pytest

from erase.audit.attacks.relearn import RelearnSettings, concept_flags, relearn_curve, training_rows
from erase.audit.detectors import build_detector
from erase.audit.generate import GenSettings
from erase.audit.suites import PromptRow
from erase.cli import main


def weights_digest(pipe) -> str:
    h = hashlib.sha256()
    for name in ("unet", "text_encoder", "vae"):
        for k, v in sorted(getattr(pipe, name).state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def files_digest(folder) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_budgets_are_the_named_ones():
    quick, standard = RelearnSettings(budget="quick", **RelearnSettings.BUDGETS["quick"]), RelearnSettings()
    assert (quick.images, quick.checkpoints) == (8, (5, 10, 20))
    assert (standard.images, standard.checkpoints[-1], standard.budget) == (16, 200, "standard")
    with pytest.raises(ValueError, match="checkpoints"):
        RelearnSettings(checkpoints=(10, 5))
    rows = [PromptRow(index=i, id=str(i), prompt=f"p{i}", seed=100 + i) for i in range(3)]
    train = training_rows(rows, 8)
    assert [r.prompt for r in train] == ["p0", "p1", "p2"] * 2 + ["p0", "p1"]
    assert not {r.seed for r in train} & {r.seed for r in rows} and len({r.seed for r in train}) == 8


@pytest.mark.parametrize("params", ["full", "lora"])
def test_fine_tuning_changes_a_copy_never_the_audited_model(tiny_pipeline, tiny_clip_dir, params):
    pipe = tiny_pipeline
    before = weights_digest(pipe)
    flags_before = [p.requires_grad for p in pipe.unet.parameters()]
    rows = [PromptRow(index=i, id=str(i), prompt="a handwritten three", seed=7 + i) for i in range(2)]
    detector = build_detector(f"clip:{tiny_clip_dir}:three")
    gen = GenSettings(steps=2)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    images = np.random.default_rng(0).random((2, size, size, 3)).astype(np.float32)
    cfg = RelearnSettings(images=2, checkpoints=(1, 2), lr=1e-2, params=params)
    res = relearn_curve(pipe, rows, images, ["a handwritten three"] * 2, detector, gen, cfg, seed=0)
    assert weights_digest(pipe) == before  # the audited weights, bit for bit
    assert [p.requires_grad for p in pipe.unet.parameters()] == flags_before
    assert [c["steps"] for c in res["curve"]] == [0, 1, 2]
    assert all(0 <= c["concept_rate"] <= 1 and c["flagged"] <= 2 for c in res["curve"])
    assert all(np.isfinite(c["loss"]) for c in res["curve"][1:])
    assert res["steps_to_threshold"] in (None, 0, 1, 2) and res["n_prompts"] == 2
    _, plain = concept_flags(pipe, rows, detector, gen)
    assert np.abs(np.stack(res["final_images"]) - np.stack(plain)).max() > 1e-4  # the COPY was trained


def test_audit_relearn_writes_the_curve_and_the_reference_curve(tiny_pipeline_dir, tiny_reference_dir, tiny_clip_dir,
                                                                tmp_path):
    before = files_digest(tiny_pipeline_dir)
    out = tmp_path / "A"
    args = ["audit", "--model", str(tiny_pipeline_dir), "--suite", "prompts/digits/digit3.csv", "--limit", "2",
            "--steps", "2", "--out", str(out), "--detector", f"clip:{tiny_clip_dir}:three", "--attack", "relearn",
            "--attack-budget", "quick", "--relearn-checkpoints", "1,2", "--relearn-images", "2",
            "--reference-model", str(tiny_reference_dir), "--relearn-reference", str(tiny_reference_dir)]
    assert main(args) == 0
    res = json.loads((out / "results.json").read_text())
    rel = res["attack"]["relearn"]
    assert res["attack"]["budget"] == "quick+custom" and res["attack"]["checkpoints"] == [1, 2]
    assert [c["steps"] for c in rel["curve"]] == [0, 1, 2] and rel["n_prompts"] == 2
    assert [c["steps"] for c in rel["reference"]["curve"]] == [0, 1, 2]
    assert rel["reference"]["model"] == str(tiny_reference_dir) and "steps_to_threshold" in rel
    assert res["attack"]["found_suite"] is None  # relearning finds weights, not prompts
    assert len(list((out / "relearn_images").glob("*.png"))) == 2
    assert files_digest(tiny_pipeline_dir) == before
    # a rerun reuses the curve and reproduces results.json
    assert main(args) == 0
    assert json.loads((out / "results.json").read_text()) == res
