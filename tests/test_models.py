import json
import time

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import save_file

from erase.errors import EraseError
from erase.models.builder import build_pipeline, count_parameters
from erase.models.loading import load_pipeline


@pytest.fixture(scope="module")
def tiny_dir(tiny_pipeline_dir):
    return tiny_pipeline_dir


def test_vanilla_diffusers_loads_and_generates(tiny_dir):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_dir)
    assert pipe.safety_checker is None and len(pipe.tokenizer) == 49408
    out = pipe("a photo of a cat", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
               output_type="np").images
    assert out.shape == (1, 32, 32, 3) and np.isfinite(out).all() and out.std() > 0


def test_load_pipeline_matches_builder(tiny_dir, tiny_pipeline):
    pipe = load_pipeline(tiny_dir)
    ref = tiny_pipeline
    for (n, a), (_, b) in zip(pipe.unet.state_dict().items(), ref.unet.state_dict().items()):
        assert torch.equal(a, b), n


def test_sd15_meta_architecture():
    pipe = build_pipeline("sd15", device="meta")
    assert count_parameters(pipe.unet) == 859_520_964  # SD-1.x UNet
    assert count_parameters(pipe.text_encoder) == 123_060_480  # CLIP ViT-L/14 text tower
    assert next(pipe.unet.parameters()).device.type == "meta"


def test_sd2_and_sdxl_meta_architectures():
    """The real sizes, as the published config.json files give them (SD-2.1 768-v, SDXL base 1.0)."""
    sd2 = build_pipeline("sd21", device="meta")
    assert count_parameters(sd2.unet) == 865_910_724 and count_parameters(sd2.text_encoder) == 340_387_840
    assert sd2.scheduler.config.prediction_type == "v_prediction" and sd2.tokenizer.pad_token == "!"
    xl = build_pipeline("sdxl", device="meta")
    assert count_parameters(xl.unet) == 2_567_463_684
    assert count_parameters(xl.text_encoder) == 123_060_480 and count_parameters(xl.text_encoder_2) == 694_659_840
    assert xl.unet.config.projection_class_embeddings_input_dim == 2816  # 6 x 256 time ids + 1280 pooled
    assert xl.tokenizer.pad_token != xl.tokenizer_2.pad_token == "!"


@pytest.mark.parametrize("size", ["tiny-sd2", "tiny-sdxl"])
def test_tiny_sd2_and_sdxl_round_trip_in_vanilla_diffusers(size, tmp_path):
    from diffusers import DiffusionPipeline

    pipe = build_pipeline(size, seed=0)
    pipe.save_pretrained(tmp_path)
    loaded = DiffusionPipeline.from_pretrained(tmp_path)
    assert type(loaded) is type(pipe)
    images = [p("a photo of a cat", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                output_type="np", height=32, width=32).images for p in (pipe, loaded)]
    assert np.isfinite(images[0]).all() and images[0].std() > 0
    # identical weights (the SDXL reload differs by ~1e-6 in float32 kernels' summation order, never more)
    np.testing.assert_allclose(images[0], images[1], atol=1e-5, rtol=0)


def test_uncached_hub_id_fails_fast_and_clearly():
    import diffusers  # noqa: F401  (imported first: only the look-up is timed)

    t = time.time()
    with pytest.raises(EraseError, match=r"CompVis/stable-diffusion-v1-4: not in the local Hugging Face cache.*hf download"):
        load_pipeline("CompVis/stable-diffusion-v1-4")
    # No Hub retries: those take 20-200+ s; a local look-up takes milliseconds, so 60 s cannot be
    # reached by load on the machine, only by a network wait.
    assert time.time() - t < 60


def test_bad_sources(tmp_path, tiny_dir):
    with pytest.raises(EraseError, match="not a diffusers folder"):
        load_pipeline(tmp_path)
    with pytest.raises(EraseError, match="no such folder or file"):
        load_pipeline(tmp_path / "missing")
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not really")
    with pytest.raises(EraseError, match="pickle checkpoints can run code"):
        load_pipeline(ckpt)
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(EraseError, match="corrupt or truncated safetensors"):
        load_pipeline(bad, config=tiny_dir)


def test_sanity_checks_catch_silent_breakage(tmp_path, tiny_dir):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    # A tokenizer reduced to its special tokens: what an offline Hub load produces silently.
    (broken / "tokenizer" / "tokenizer.json").unlink()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    (broken / "tokenizer" / "vocab.json").write_text(json.dumps(vocab))
    (broken / "tokenizer" / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(EraseError, match="tokenizer has 2 tokens"):
        load_pipeline(broken)


def test_nan_weights_are_caught(tmp_path, tiny_dir):
    import shutil

    from safetensors.torch import load_file

    bad = tmp_path / "nan"
    shutil.copytree(tiny_dir, bad)
    f = bad / "unet" / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(f))
    key = next(k for k in sd if k.endswith("conv_in.weight"))
    sd[key] = torch.full_like(sd[key], float("nan"))
    save_file(sd, str(f))
    with pytest.raises(EraseError, match="NaN or inf"):
        load_pipeline(bad)
