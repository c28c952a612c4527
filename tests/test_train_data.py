import numpy as np
import pytest
import torch
from PIL import Image

from erase.errors import EraseError
from erase.train.config import DataConfig, PromptSet
from erase.train.data import RunData, expand, load_image_folder, sample_indices


def test_prompts_expand_over_templates_and_samples():
    ps = PromptSet(prompts=["three", "3"], templates=["a handwritten {}", "the number {}"], samples_per_prompt=2)
    out = expand(ps)
    assert len(out) == 8 and out[:4] == ["a handwritten three", "the number three", "a handwritten 3", "the number 3"]
    assert out[4:] == out[:4]
    with pytest.raises(ValueError, match="templates"):
        PromptSet(prompts=["x"], templates=["no placeholder"])


def test_prompt_file_adds_prompts_and_keys_the_cache(tmp_path):
    f = tmp_path / "retain.txt"
    f.write_text("a handwritten seven\nred ink\n")
    ps = PromptSet(prompts=["the number 1"], file=str(f), templates=["{}", "{}, scanned"])
    assert expand(ps) == ["the number 1", "the number 1, scanned", "a handwritten seven", "a handwritten seven, scanned",
                          "red ink", "red ink, scanned"]
    cfg = DataConfig(forget=PromptSet(prompts=["three"]), retain=PromptSet(file=str(f)))
    key = RunData(cfg, frozenset(), 0, tmp_path, "m").key
    f.write_text("a handwritten seven\nblue ink\n")  # same config, edited file: the caches must not be reused
    assert RunData(cfg, frozenset(), 0, tmp_path, "m").key != key
    missing = DataConfig(forget=PromptSet(prompts=["three"]), retain=PromptSet(file=str(tmp_path / "nope.txt")))
    with pytest.raises(EraseError, match=r"r.yaml: data.retain.file: .*nope.txt: no such suite file"):
        RunData(missing, frozenset(), 0, tmp_path, "m", where="r.yaml")


def test_relative_data_paths_resolve_from_the_config_folder_upwards(tmp_path, monkeypatch):
    from erase.train.config import RunConfig, resolve_data_paths

    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "keep.txt").write_text("a handwritten seven\n")
    (tmp_path / "configs" / "digits").mkdir(parents=True)
    cfg_path = tmp_path / "configs" / "digits" / "run.yaml"
    monkeypatch.chdir(tmp_path / "configs")  # started somewhere else than the project root
    cfg = RunConfig(model="zoo:digits", method="esd", data=DataConfig(forget=PromptSet(prompts=["three"]),
                                                                      retain=PromptSet(file="prompts/keep.txt")))
    assert resolve_data_paths(cfg, cfg_path).data.retain.file == str(tmp_path / "prompts" / "keep.txt")
    cfg.data.anchor.images = "no/such/folder"  # unresolvable paths stay as given, for the loader's error
    assert resolve_data_paths(cfg, cfg_path).data.anchor.images == "no/such/folder"


def test_sample_order_is_epoch_permutations_and_splits_evenly_over_processes():
    first = sample_indices(5, 0, 5, seed=1, stream="forget")
    assert sorted(first) == list(range(5))  # one epoch visits every sample once
    full = sample_indices(7, 12, 4, 1, "forget")
    ranks = [sample_indices(7, 12, 4, 1, "forget")[r * 2:(r + 1) * 2] for r in range(2)]
    assert ranks[0] + ranks[1] == full
    assert sample_indices(7, 0, 7, 2, "forget") != sample_indices(7, 0, 7, 1, "forget")  # the seed matters


def test_image_folder_with_captions(tmp_path):
    for i, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        Image.fromarray(np.full((20, 24, 3), colour, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "1.txt").write_text("a blue square\n")
    images, captions = load_image_folder(str(tmp_path), 16, "cfg: data.forget.images")
    assert images.shape == (2, 3, 16, 16) and images.min() >= -1 and images.max() <= 1
    assert images[0, 0].mean() > 0.9 and images[1, 2].mean() > 0.9
    assert captions == [None, "a blue square"]
    with pytest.raises(EraseError, match="cfg: data.forget.images: .*no such folder"):
        load_image_folder(str(tmp_path / "missing"), 16, "cfg: data.forget.images")


def test_missing_retain_or_anchor_data_is_a_config_error(tmp_path):
    cfg = DataConfig(forget=PromptSet(prompts=["three"]))
    with pytest.raises(EraseError, match="r.yaml: data.retain.prompts: this method needs retain data"):
        RunData(cfg, frozenset({"forget_images", "retain_images"}), 0, tmp_path, "k", where="r.yaml")
    with pytest.raises(EraseError, match="data.anchor.prompts"):
        RunData(cfg, frozenset({"anchor_images"}), 0, tmp_path, "k", where="r.yaml")


def test_cache_is_made_once_and_keyed_by_config(tmp_path):
    cfg = DataConfig(forget=PromptSet(prompts=["three"]))
    data = RunData(cfg, frozenset(), 0, tmp_path, "model-a")
    calls = []

    def make():
        calls.append(1)
        return {"x": torch.arange(3.0)}

    assert torch.equal(data.cached("t", make)["x"], torch.arange(3.0))
    assert torch.equal(RunData(cfg, frozenset(), 0, tmp_path, "model-a").cached("t", make)["x"], torch.arange(3.0))
    assert len(calls) == 1
    RunData(cfg, frozenset(), 0, tmp_path, "model-b").cached("t", make)  # another model: another cache
    assert len(calls) == 2
