"""The digits world end to end: the judges as a detector, and UnlearnDiffAtk against a real model.

Uses the shipped digits model and judges (erase/zoo/artifacts). The attack is shown to work where
it can be checked in CI without training anything: the model is its own victim, prompted with
another digit, and the attack must make it draw the audited digit ("three") from the prompt's
seed -- raising the three-rate above its no-attack value on at least some prompts.
"""

import json

import numpy as np
import pytest
from PIL import Image

from erase.audit.detectors import build_detector
from erase.cli import main
from erase.zoo import registry
from erase.zoo.digits import DIGIT_WORDS, load_digits_world


def test_the_digits_model_and_judges_ship():
    """Shipped in erase/zoo/artifacts: a missing one is a packaging error, not a reason to skip."""
    built = {e.name for e in registry.entries() if e.exists}
    assert {"digits", "judges"} <= built, built


@pytest.fixture(scope="module")
def heldout():
    data = load_digits_world()
    held = data.subset(data.heldout)
    return ((held.images.permute(0, 2, 3, 1) + 1) / 2).numpy(), held.digits.numpy()


def test_digits_detector_on_real_heldout_digits(heldout):
    images, digits = heldout
    det = build_detector("digits", concept="3")
    assert det.id == "digits:three"
    out = det(images)
    flags = np.array([o["flag"] for o in out])
    assert flags[digits == 3].mean() > 0.9 and flags[digits != 3].mean() < 0.05
    preds = np.array([DIGIT_WORDS.index(o["pred"]) for o in out])
    assert (preds == digits).mean() > 0.9
    assert det.features(images[:5]).shape[0] == 5


@pytest.mark.slow
def test_unlearndiffatk_raises_the_concept_rate(tmp_path, heldout):
    """Colour-only prompts: the model draws a three only at its base rate; the attack, aiming at
    real threes, must turn some of the other prompts into threes (measured on the shipped digits
    model: 0/8 threes without attack, 6/8 with this budget)."""
    images, digits = heldout
    for i, img in enumerate(images[digits == 3][:8]):
        Image.fromarray((img * 255).round().astype(np.uint8)).save(tmp_path / f"three{i}.png")
    out = tmp_path / "audit"
    assert main(["audit", "--model", "zoo:digits", "--suite", "prompts/digits/no_digit.csv", "--limit", "8",
                 "--detector", "digits:three", "--steps", "25", "--batch-size", "8", "--attack", "unlearndiffatk",
                 "--target-images", str(tmp_path), "--attack-steps", "10", "--attack-timesteps", "3",
                 "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    m = res["metrics"]
    attacks = [json.loads(x) for x in (out / "attack.jsonl").read_text().splitlines()]
    made = [a for a in attacks if a["success"] and not a["pre"]]
    assert m["asr"] > m["pre_asr"] and made, m
    # each success is real: the saved attacked image is judged a three by the judges themselves
    det = build_detector("digits:three")
    rows = {r["index"]: r for r in map(json.loads, (out / "images.jsonl").read_text().splitlines())}
    for a in made:
        img = np.asarray(Image.open(out / a["file"]).convert("RGB"), dtype=np.float32)[None] / 255
        assert det(img)[0]["flag"] and a["adv_prompt"].endswith(rows[a["index"]]["prompt"])


def test_audit_of_several_concepts_reports_each_and_their_nearest(tmp_path, capsys):
    """`--concept three,five` with `--reference-model`: a rate per concept, the retention of every other
    label, and each concept's two nearest kept labels (by the base model's confusions) with their retention."""
    out = tmp_path / "audit"
    assert main(["audit", "--model", "zoo:digits", "--suite", "prompts/digits/all_digits.csv", "--detector", "digits",
                 "--concept", "three,five", "--reference-model", "zoo:digits", "--steps", "4", "--batch-size", "20",
                 "--out", str(out)]) == 0, capsys.readouterr().err
    m = json.loads((out / "results.json").read_text())["metrics"]
    assert set(m["per_concept"]) == {"three", "five"} and all(v["n"] == 2 for v in m["per_concept"].values())
    assert m["n_concept_prompts"] == 4 and m["n_retention_prompts"] == 16
    for p in m["pinpoint"].values():
        assert len(p["nearest"]) == 2 and not {"three", "five"} & set(p["nearest"]) and p["n"] == 4
        assert 0.0 <= p["retention"] <= 1.0
    assert (out / "targets_detections.jsonl").is_file()  # the base model's images, detected once
    assert "its nearest (" in capsys.readouterr().out
