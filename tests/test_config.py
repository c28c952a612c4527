from dataclasses import dataclass, field
from typing import Literal

import pytest

from erase.config import dump_yaml, load_config
from erase.errors import EraseError


@dataclass
class Train:
    lr: float = 1e-5
    steps: int = 10
    precision: Literal["no", "fp16", "bf16"] = "no"
    prompts: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"lr: must be positive, got {self.lr}")


@dataclass
class Root:
    model: str
    train: Train = field(default_factory=Train)


def write(tmp_path, text):
    p = tmp_path / "x.yaml"
    p.write_text(text)
    return p


def test_valid_and_yaml_exponent(tmp_path):
    cfg = load_config(Root, write(tmp_path, "model: m\ntrain:\n  lr: 1e-5\n  prompts: a cat\n"))
    assert cfg.train.lr == pytest.approx(1e-5) and cfg.train.prompts == ["a cat"]


@pytest.mark.parametrize("text,msg", [
    ("model: m\ntrain:\n  lr: 1e-5x\n", 'x.yaml: train.lr: expected a number, got "1e-5x"'),
    ("model: m\ntrain:\n  stepz: 3\n", "x.yaml: train.stepz: unknown key"),
    ("train:\n  lr: 1.0\n", "x.yaml: model: required key is missing"),
    ("model: m\ntrain:\n  steps: 2.5\n", "x.yaml: train.steps: expected an integer, got 2.5"),
    ("model: m\ntrain:\n  precision: fp8\n", "x.yaml: train.precision: expected one of no, fp16, bf16"),
    ("model: m\ntrain:\n  lr: -1\n", "x.yaml: train.lr: must be positive"),
    ("model: [unclosed\n", "x.yaml: line 2: invalid YAML"),
])
def test_errors_name_file_and_key(tmp_path, text, msg):
    with pytest.raises(EraseError) as err:
        load_config(Root, write(tmp_path, text))
    assert msg in str(err.value) and "\n" not in str(err.value)


def test_overrides_and_roundtrip(tmp_path):
    p = write(tmp_path, "model: m\n")
    cfg = load_config(Root, p, ["train.lr=3e-4", "train.precision=bf16"])
    assert cfg.train.lr == pytest.approx(3e-4) and cfg.train.precision == "bf16"
    again = load_config(Root, write(tmp_path, dump_yaml(cfg)))
    assert again == cfg
    with pytest.raises(EraseError, match="expected key=value"):
        load_config(Root, p, ["train.lr"])


def test_missing_file(tmp_path):
    with pytest.raises(EraseError, match="config file not found"):
        load_config(Root, tmp_path / "nope.yaml")
