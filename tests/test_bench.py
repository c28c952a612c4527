import json

from erase.bench.digits_world import compare, heldout_prompts
from erase.cli import main
from erase.zoo.digits import COLOUR_NAMES, DIGIT_WORDS, HELDOUT_TEMPLATES, TRAIN_TEMPLATES, caption


def test_heldout_prompts_use_only_heldout_phrasings_half_with_colour():
    prompts = heldout_prompts(per_digit=6, seed=1)
    assert len(prompts) == 60 and [p.digit for p in prompts[:6]] == [0] * 6
    heldout = {caption(t, d, c) for ts in HELDOUT_TEMPLATES.values() for t in ts for d in range(10) for c in COLOUR_NAMES}
    train = {caption(t, d, c) for ts in TRAIN_TEMPLATES.values() for t in ts for d in range(10) for c in COLOUR_NAMES}
    assert all(p.text in heldout and p.text not in train for p in prompts)
    assert sum(p.colour is not None for p in prompts) == 30
    assert all(COLOUR_NAMES[p.colour] in p.text for p in prompts if p.colour is not None)
    assert len({p.seed for p in prompts}) == 60


def _judged(acc: dict[int, float], colour: float) -> dict:
    return {"digit_accuracy_per_digit": {DIGIT_WORDS[d]: a for d, a in acc.items()}, "colour_accuracy": colour}


def test_compare_reports_drops_and_applies_both_targets():
    base = _judged({d: 1.0 for d in range(10)}, 1.0)
    good = _judged({**{d: 1.0 for d in range(10)}, 3: 0.025, 2: 0.975}, 0.99)
    r = compare(good, base, 3)
    assert r["erased_rate"] == 0.025 and r["base_rate"] == 1.0
    assert "three" not in r["drop_per_digit"] and abs(r["max_other_drop"] - 0.025) < 1e-12
    assert r["worst_other_digit"] == "two" and abs(r["colour_drop"] - 0.01) < 1e-12 and r["passed"]
    collateral = _judged({**{d: 1.0 for d in range(10)}, 3: 0.0, 2: 0.9}, 0.79)
    assert not compare(collateral, base, 3)["passed"]
    not_erased = _judged({**{d: 1.0 for d in range(10)}, 3: 0.1}, 1.0)
    assert not compare(not_erased, base, 3)["passed"]


def test_bench_erasure_cli_model_against_itself_loses_nothing(tmp_path, capsys):
    args = ["bench", "erasure", "--model", "zoo:digits", "--base", "zoo:digits", "--per-digit", "2", "--steps", "4",
            "--out", str(tmp_path)]
    assert main(args) == 0
    r = json.loads((tmp_path / "erasure" / "result.json").read_text())
    # Same weights, same prompts, same per-prompt seeds: identical judgements.
    assert r["drop_per_digit"] == {w: 0.0 for w in DIGIT_WORDS if w != "three"}
    assert r["erased_rate"] == r["base_rate"] and r["colour_drop"] == 0.0 and r["n_images"] == 20
    assert r["max_other_drop"] == 0.0 and r["worst_other_digit"] is None
    assert (tmp_path / "erasure" / "grid.png").is_file() and (tmp_path / "erasure" / "grid_base.png").is_file()
