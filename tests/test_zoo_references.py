"""Retrain references shipped as their UNet and text encoder on the base model's autoencoder:
a `--shared-vae` build on the miniature recipe, compacted and assembled back into a diffusers
folder; and the shipped references resolve through `zoo:NAME` and load."""

import json

import pytest
import torch

from erase.cli import main
from erase.errors import EraseError
from erase.models.loading import load_pipeline
from erase.zoo import registry
from erase.zoo.recipe import DigitsRecipe, train_digits_model

MINI = {"vae_steps": 2, "vae_batch": 8, "steps": 3, "stop_step": 2, "bind_steps": 2, "batch": 4,
        "unet_channels": (32, 64), "text_width": 32, "warmup": 1, "exclude": ("digit=3",)}


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_shared_vae_build_is_compacted_and_assembled(tmp_path, monkeypatch):
    monkeypatch.setenv("ERASE_CACHE", str(tmp_path / "cache"))
    info = train_digits_model(DigitsRecipe(**MINI), tmp_path / "ref", progress=False, vae_from=registry.ARTIFACTS / "digits")
    assert info["vae_from"] == "digits"
    built = load_pipeline(tmp_path / "ref")
    unet, text = _state(built.unet), _state(built.text_encoder)
    registry.compact(tmp_path / "ref")
    assert not (tmp_path / "ref" / "vae").exists() and not (tmp_path / "ref" / "model_index.json").exists()
    assert json.loads((tmp_path / "ref" / "shares.json").read_text())["base"] == "digits"
    folder = registry.assemble(tmp_path / "ref")
    assert folder.is_relative_to(tmp_path / "cache") and registry.assemble(tmp_path / "ref") == folder  # made once
    pipe = load_pipeline(folder)
    base = load_pipeline(registry.model_path("digits"))
    assert all(torch.equal(v, pipe.vae.state_dict()[k]) for k, v in base.vae.state_dict().items())
    assert all(torch.equal(v, pipe.unet.state_dict()[k]) for k, v in unet.items())
    assert all(torch.equal(v, pipe.text_encoder.state_dict()[k]) for k, v in text.items())
    # a model with its own autoencoder cannot be compacted: its UNet needs that autoencoder
    train_digits_model(DigitsRecipe(**MINI), tmp_path / "own", progress=False)
    with pytest.raises(EraseError, match="vae"):
        registry.compact(tmp_path / "own")
    assert (tmp_path / "own" / "vae").is_dir()


@pytest.mark.parametrize("name", sorted(n for n in registry.SHIPPED if n.startswith("digits-no-")))
def test_shipped_reference_resolves_and_loads(name, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ERASE_CACHE", str(tmp_path / "cache"))
    art = registry.ARTIFACTS / name
    assert (art / "shares.json").is_file() and (art / "unet").is_dir(), f"{name} is not in the package"
    size = sum(p.stat().st_size for p in art.rglob("*") if p.is_file())
    assert size < 16 * 2**20  # UNet + text encoder in fp16 only
    recipe = json.loads((art / "recipe.json").read_text())
    assert recipe["recipe"]["exclude"] and recipe["vae_from"] == "digits"
    pipe = load_pipeline(f"zoo:{name}")
    img = pipe("a handwritten seven", num_inference_steps=2, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert img.shape == (1, 16, 16, 3)
    assert main(["zoo", "list"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(name + " "))
    assert " yes " in row
