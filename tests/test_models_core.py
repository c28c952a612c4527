"""erase.models stands alone: no imports of the layers above it, `zoo:` resolved through a registered
scheme, and the conditioning object's contract (Cond) that objectives rely on."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import erase
from erase.errors import EraseError
from erase.models.core import Cond
from erase.models.sources import register_scheme, resolve_source
from erase.zoo.registry import model_path

MODELS_DIR = Path(erase.__file__).parent / "models"
ABOVE = ("erase.zoo", "erase.objectives", "erase.train", "erase.audit", "erase.export", "erase.bench", "erase.commands",
         "erase.cli", "erase.rum")


def test_models_import_nothing_from_the_layers_above():
    for path in sorted(MODELS_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad = [n for n in names if n.startswith(ABOVE)]
            assert not bad, f"{path.name} imports {bad}"


def test_zoo_scheme_is_registered_by_the_zoo(tmp_path):
    assert resolve_source("zoo:digits") == str(model_path("digits"))
    with pytest.raises(EraseError, match=r"cfg.yaml: model: zoo:nope: no such model"):
        resolve_source("zoo:nope", "cfg.yaml: model")
    assert resolve_source(str(tmp_path)) == str(tmp_path)  # not a scheme, not a run dir: unchanged
    register_scheme("zoo", model_path)  # the same function again is fine
    with pytest.raises(ValueError, match="already registered"):
        register_scheme("zoo", lambda name: tmp_path)


def test_cond_behaves_as_the_conditioning_tensor_where_objectives_use_one():
    a = Cond(torch.ones(1, 3, 4), torch.ones(1, 2))
    b = Cond(torch.zeros(2, 3, 4), torch.zeros(2, 2))
    both = torch.cat([a.expand_as(b), b])
    assert isinstance(both, Cond) and both.shape == (4, 3, 4) and len(both) == 4 and both.pooled.shape == (4, 2)
    assert torch.equal(both.embeds[:2], torch.ones(2, 3, 4)) and torch.equal(both[2:].pooled, torch.zeros(2, 2))
    assert both.to(torch.float64).embeds.dtype == torch.float64
    with pytest.raises(TypeError, match="along the batch only"):
        torch.cat([a, a], dim=1)


@pytest.mark.parametrize("size, key", [("tiny", "sd1"), ("tiny-sd2", "sd2"), ("sd21", "sd2"), ("tiny-sdxl", "sdxl"),
                                       ("sdxl", "sdxl")])
def test_one_family_detection_names_every_builder_size(size, key):
    """erase.models.family decides the family; loading's description, SDXL check and the export all read it."""
    from erase.models.builder import build_pipeline
    from erase.models.family import family_of
    from erase.models.loading import describe_pipeline, is_sdxl

    pipe = build_pipeline(size, device="meta")
    family = family_of(pipe)
    assert family.key == key and is_sdxl(pipe) == (key == "sdxl")
    assert describe_pipeline(pipe).startswith(f"{family.label}: ")
