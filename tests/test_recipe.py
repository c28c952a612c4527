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


def test_library_ema_and_min_snr_equal_the_hand_written_code():
    """The recipe's EMA (diffusers' EMAModel with the recipe's decay schedule) and min-SNR weights (diffusers'
    compute_snr) against the code the shipped model was trained with, transcribed here, on the miniature
    recipe's UNet over 30 updates (decays from 0.1 to the 0.995 cap): equal to float rounding (torch's lerp
    and EMAModel's sub_ round differently; 1e-6 is ~10 float32 ulps of these weights)."""
    import copy

    from diffusers import DDPMScheduler

    from erase.models.builder import SD_SCHEDULER
    from erase.zoo.recipe import RecipeEMA, _snr_weights, build_models

    _, unet, _ = build_models(DigitsRecipe(**MINI))
    old_ema, new_ema = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(unet).requires_grad_(False)
    ema = RecipeEMA(unet, new_ema, decay=0.995)
    g = torch.Generator().manual_seed(0)
    for step in range(30):
        with torch.no_grad():
            for p in unet.parameters():  # a training step's change
                p.add_(0.01 * torch.randn(p.shape, generator=g))
        decay = min(0.995, (1 + step) / (10 + step))  # the hand-written EMA the shipped model used
        with torch.no_grad():
            for pe, pl in zip(old_ema.parameters(), unet.parameters()):
                pe.lerp_(pl, 1 - decay)
        ema.step(unet.parameters())
        assert abs(ema.cur_decay_value - decay) < 1e-12
    for a, b in zip(old_ema.parameters(), new_ema.parameters()):
        assert torch.allclose(a, b, rtol=0, atol=1e-6)
    assert not torch.equal(next(new_ema.parameters()), next(unet.parameters()))

    sched = DDPMScheduler(**{k: v for k, v in SD_SCHEDULER.items() if k != "set_alpha_to_one"})
    t = torch.arange(0, 1000, 7)
    abar = sched.alphas_cumprod[t]
    snr = abar / (1 - abar)
    assert torch.allclose(_snr_weights(sched, t, 5.0), torch.clamp(snr, max=5.0) / snr, rtol=1e-5, atol=0)
