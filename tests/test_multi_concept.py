"""Several concepts in one run: config checks, concept ids on forget samples, concept weights in the
weighting, per-concept audit rates and pinpoint-ness, multi-digit erasure comparison, the retrain name."""

import pytest
import torch

from erase.audit.metrics import concept_list, confusion, nearest_concepts, pinpoint, summarise
from erase.bench.digits_world import compare
from erase.config import from_dict
from erase.errors import EraseError
from erase.objectives.base import Draws
from erase.train.config import ConceptSpec, DataConfig, PromptSet, RunConfig
from erase.train.data import RunData, concept_samples
from erase.weighting import Weighting, WeightingConfig
from erase.zoo.digits import DIGIT_WORDS, parse_exclude
from erase.zoo.registry import reference_name

CONCEPTS = [ConceptSpec("three", ["three", "3"], templates=["{}", "a {}"]), ConceptSpec("five", ["five"], anchor=["a digit"], weight=3.0)]


def test_config_takes_concepts_or_forget_prompts_not_both():
    cfg = from_dict(RunConfig, {"model": "m", "method": "esd", "concepts": [{"name": "a", "prompts": ["x"]}, {"prompts": ["y"]}]}, "run.yaml")
    assert [c.name for c in cfg.concepts] == ["a", "y"] and cfg.concept == "a, y"
    with pytest.raises(EraseError, match="data.forget.prompts: give the forget prompts either"):
        from_dict(RunConfig, {"model": "m", "method": "esd", "concepts": [{"prompts": ["x"]}], "data": {"forget": {"prompts": ["z"]}}}, "run.yaml")
    with pytest.raises(EraseError, match=r"concepts\[0\]\.weight: must be a finite number > 0"):
        from_dict(RunConfig, {"model": "m", "method": "esd", "concepts": [{"prompts": ["x"], "weight": 0}]}, "run.yaml")
    with pytest.raises(EraseError, match="names must differ"):
        from_dict(RunConfig, {"model": "m", "method": "esd", "concepts": [{"prompts": ["x"]}, {"prompts": ["x"]}]}, "run.yaml")


def test_forget_samples_carry_their_concept_and_its_anchor(tmp_path):
    with pytest.raises(EraseError, match=r"concepts\[0\]\.anchor: concept 'three' has no anchor prompts while others do"):
        concept_samples(CONCEPTS, [])
    prompts, ids, anchors = concept_samples(CONCEPTS, ["a handwritten digit"])  # the shared anchor fills in
    assert prompts == ["three", "a three", "3", "a 3", "five"] and ids.tolist() == [0, 0, 0, 0, 1]
    assert anchors == ["a handwritten digit"] * 4 + ["a digit"]
    data = RunData(DataConfig(anchor=PromptSet(["a handwritten digit"])), frozenset(), 0, tmp_path, "k", concepts=CONCEPTS)
    b = data.batch([4, 0, 3], None, Draws(), torch.device("cpu"))
    assert b.forget_concepts.tolist() == [1, 0, 0] and b.anchor_prompts == ["a digit", "a handwritten digit", "a handwritten digit"]


def test_an_anchor_file_pairs_each_prompt_line_with_its_own_anchor(tmp_path):
    prompts = tmp_path / "three.txt"
    prompts.write_text("a handwritten 3\nred digit three\n")
    anchors = tmp_path / "eight.txt"
    anchors.write_text("a handwritten 8\nred digit eight\n")
    c = ConceptSpec("three", ["three"], file=str(prompts), templates=["{}", "{}, drawn"], samples_per_prompt=2,
                    anchor_file=str(anchors))
    with pytest.raises(EraseError, match=r"concepts\[0\]\.anchor_file: .*eight\.txt: 2 anchors for the 3 prompts of concept 'three'"):
        concept_samples([c], [])
    anchors.write_text("eight\na handwritten 8\nred digit eight\n")
    prompts_out, _, anchors_out = concept_samples([c], ["ignored: the concept's own anchors win"])
    pairs = list(zip(prompts_out, anchors_out))
    assert len(pairs) == 12 and pairs[:6] == [("three", "eight"), ("three, drawn", "eight"),
                                             ("a handwritten 3", "a handwritten 8"), ("a handwritten 3, drawn", "a handwritten 8"),
                                             ("red digit three", "red digit eight"), ("red digit three, drawn", "red digit eight")]
    assert pairs[6:] == pairs[:6]  # the second sample of every prompt, paired the same way
    with pytest.raises(EraseError, match=r"concepts\[0\]\.anchor_file: give anchor or anchor_file, not both"):
        from_dict(RunConfig, {"model": "m", "method": "esd", "concepts": [{"prompts": ["x"], "anchor": ["y"],
                                                                         "anchor_file": str(anchors)}]}, "run.yaml")
    with pytest.raises(EraseError, match=r"concepts\[0\]\.anchor: concept 'five' has no anchor prompts while others do"):
        concept_samples([ConceptSpec("five", ["five"]), c], [])  # a file's anchors count as anchors too
    with pytest.raises(EraseError, match=r"anchor_file: .*missing\.txt"):
        concept_samples([ConceptSpec("three", ["three"], anchor_file=str(tmp_path / "missing.txt"))], [])


def test_concept_weights_scale_samples_and_are_reported_per_concept():
    w = Weighting(WeightingConfig(kind="dynamic", estimate="raw", tau=0.1), 6)
    w.set_concepts(torch.tensor([0, 0, 0, 0, 1, 1]), [1.0, 3.0])
    assert torch.isclose(w.scale.mean(), torch.tensor(1.0)) and w.scale[4] / w.scale[0] == pytest.approx(3.0)
    ids = torch.tensor([0, 4])
    out = w(torch.tensor([0.5, 0.5]), ids)  # equal losses: LoReUn alone gives 1 and 1
    assert out[1] / out[0] == pytest.approx(3.0)
    assert w.concept_mean_weights() == pytest.approx([float(out[0]), float(out[1])])


def _rec(label, pred, probs=None):
    return {"label": label, "detection": {"flag": pred in ("three", "five"), "pred": pred, "labels": probs or {}}}


def test_audit_reports_each_concept_and_pinpoint_retention():
    assert concept_list("three, five") == ["three", "five"] and concept_list(None) == []
    recs = [_rec("three", "three"), _rec("three", "two"), _rec("five", "six"), _rec("eight", "eight"), _rec("eight", "zero"),
            _rec("two", "two")]
    m = summarise(recs, "three,five")
    assert m["per_concept"] == {"three": {"rate": 0.5, "n": 2}, "five": {"rate": 0.0, "n": 1}}
    assert m["n_concept_prompts"] == 3 and m["retention_accuracy"] == pytest.approx(2 / 3)
    p = lambda **kw: {k: kw.get(k, 0.0) for k in ("three", "five", "eight", "two")}
    base = [_rec("three", "three", p(three=0.8, eight=0.15, two=0.05)), _rec("five", "five", p(five=0.9, eight=0.1)),
            _rec("eight", "eight", p(eight=0.7, three=0.25, five=0.05)), _rec("two", "two", p(two=1.0))]
    conf = confusion(base)
    assert conf["three"]["eight"] == pytest.approx(0.15) and nearest_concepts(conf, "three", 1) == ["eight"]
    assert nearest_concepts(conf, "three", 2, exclude=("five",)) == ["eight", "two"]
    pin = pinpoint(recs, conf, ["three", "five"], k=1)
    assert pin["three"]["nearest"] == ["eight"] and pin["three"]["retention"] == 0.5  # one of the two eights kept
    assert summarise(recs, "three,five", base_confusion=conf)["pinpoint_retention"] == pytest.approx(2 / 3)  # k = 2: eight, two


def test_erasure_compares_several_digits_and_their_nearest():
    words = DIGIT_WORDS
    base = {"digit_accuracy_per_digit": {w: 1.0 for w in words}, "colour_accuracy": 1.0,
            "confusion": {a: {b: (0.9 if a == b else 0.1 if {a, b} == {"three", "eight"} else 0.0) for b in words} for a in words}}
    erased = {"digit_accuracy_per_digit": {**{w: 1.0 for w in words}, "three": 0.05, "five": 0.0, "eight": 0.0, "nine": 0.9},
              "colour_accuracy": 1.0}
    r = compare(erased, base, (3, 5, 8))
    assert r["erased_rates"] == {"three": 0.05, "five": 0.0, "eight": 0.0} and r["erased_rate"] == 0.05
    assert set(r["drop_per_digit"]) == set(words) - {"three", "five", "eight"} and r["worst_other_digit"] == "nine"
    assert not r["passed"] and r["max_other_drop"] == pytest.approx(0.1)
    assert compare(erased, base, 3)["erased_digit"] == "three"


def test_retrain_reference_names_group_one_axis():
    assert reference_name(["digit=3"]) == "digits-no-digit3" and reference_name(["colour=red"]) == "digits-no-colourred"
    assert reference_name(["digit=8", "digit=three", "digit=5"]) == reference_name(["digit=3,5,8"]) == "digits-no-digit358"
    assert parse_exclude(["digit=3,five", "digit=3"]) == [("digit", 3), ("digit", 5)]
    with pytest.raises(EraseError, match="--exclude digit=3,x"):
        parse_exclude(["digit=3,x"])


def test_generation_cells_get_pinpoint_from_the_base_confusions():
    from erase.bench.generation import gaps, with_pinpoint

    conf = {a: {b: (0.8 if a == b else 0.1 if {a, b} in ({"three", "eight"}, {"three", "five"}) else 0.0) for b in DIGIT_WORDS}
            for a in DIGIT_WORDS}
    m = {"per_digit": {**{w: 1.0 for w in DIGIT_WORDS}, "three": 0.0, "eight": 0.5}}
    with_pinpoint(m, "digit", {"confusion": conf})
    assert sorted(m["pinpoint_nearest"]) == ["eight", "five"] and m["pinpoint"] == pytest.approx(0.75)
    colour = {"per_digit": m["per_digit"]}
    with_pinpoint(colour, "colour", {"confusion": conf})
    assert "pinpoint" not in colour  # pinpoint-ness is the digit concept's
    assert gaps(m, {"pinpoint": 1.0})["pinpoint"] == pytest.approx(0.25)
