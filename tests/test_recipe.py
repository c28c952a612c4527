"""The recipe code itself, on a miniature world that trains in seconds; and the shipped artifact."""

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from erase.tokenizer import clip_tokenizer
from erase.zoo.recipe import (
    DigitsRecipe,
    _template_token_ids,
    insert_noise_tokens,
    recipe_dict,
    train_digits_model,
)
from erase.zoo.registry import ARTIFACTS

MINI = {"vae_steps": 2, "vae_batch": 8, "steps": 3, "stop_step": 2, "bind_steps": 2, "batch": 4, "unet_channels": (32, 64), "text_width": 32,
            "warmup": 1}


def test_miniature_world_trains_and_loads_in_vanilla_diffusers(tmp_path):
    info = train_digits_model(DigitsRecipe(**MINI), tmp_path / "m", progress=False)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "m" / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16  # stored small
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "m")
    assert pipe.unet.dtype == pipe.text_encoder.dtype == torch.float32  # loaded for CPU use
    img = pipe("a red handwritten three", num_inference_steps=2, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert img.shape == (1, 16, 16, 3) and np.isfinite(img).all()
    saved = json.loads((tmp_path / "m" / "recipe.json").read_text())
    assert saved["recipe"] == recipe_dict(DigitsRecipe(**MINI)) and saved["n_train_images"] == info["n_train_images"]


def test_deterministic_and_exclusion(tmp_path):
    a = train_digits_model(DigitsRecipe(**MINI), tmp_path / "a", progress=False)
    train_digits_model(DigitsRecipe(**MINI), tmp_path / "b", progress=False)
    ua = StableDiffusionPipeline.from_pretrained(tmp_path / "a").unet.state_dict()
    ub = StableDiffusionPipeline.from_pretrained(tmp_path / "b").unet.state_dict()
    assert all(torch.equal(ua[k], ub[k]) for k in ua)
    c = train_digits_model(DigitsRecipe(**MINI, exclude=("digit=3",)), tmp_path / "c", progress=False)
    # 183 threes in 4 colours, 80% of them in the training split
    assert a["n_train_images"] - c["n_train_images"] == pytest.approx(183 * 4 * 0.8, abs=8)


def test_shipped_artifact_recipe_matches_code():
    meta = ARTIFACTS / "digits" / "recipe.json"
    assert meta.is_file(), "the digits model artifact is missing from the package"
    assert json.loads(meta.read_text())["recipe"] == recipe_dict(DigitsRecipe())
    size = sum(p.stat().st_size for p in (ARTIFACTS / "digits").rglob("*") if p.is_file())
    assert size < 25 * 2**20


def test_noise_tokens_keep_the_caption_and_avoid_template_words():
    import random

    tok = clip_tokenizer()
    known = _template_token_ids(tok)
    pool = torch.tensor([i for i in range(tok.bos_token_id) if i not in known])
    ids = tok(["a red handwritten three", "digit one"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    out = insert_noise_tokens(ids, 1.0, pool, random.Random(0))
    assert out.shape == ids.shape and (out[:, -1] == 49407).all()
    for a, b in zip(ids.tolist(), out.tolist()):
        body_a, body_b = a[1 : a.index(49407, 1)], b[1 : b.index(49407, 1)]
        assert 1 <= len(body_b) - len(body_a) <= 3
        it = iter(body_b)
        assert all(t in it for t in body_a)
        assert not (set(body_b) - set(body_a)) & known
    assert torch.equal(insert_noise_tokens(ids, 0.0, pool, random.Random(0)), ids)
