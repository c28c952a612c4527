"""SD-2.x end to end on the tiny random SD-2 v-prediction pipeline (OpenCLIP-style encoder, "!" padding):
conditioning, generation equal to vanilla StableDiffusionPipeline, every objective + LoReUn + RUM
training (2 steps each) with v targets, and `erase audit` with UnlearnDiffAtk and concept inversion.
"""

from __future__ import annotations

import pytest
import torch
from test_sdxl import audit_with_attacks, train_every_method, vanilla_matches

from erase.models.builder import build_pipeline
from erase.models.core import Models
from erase.models.loading import describe_pipeline, load_pipeline


@pytest.fixture(scope="module")
def sd2():
    return build_pipeline("tiny-sd2")


def test_sd2_conditioning_and_prediction_type(sd2):
    models = Models.from_pipeline(sd2)
    assert models.prediction_type == "v_prediction" and not models.is_sdxl
    cond = models.encode(["a red three"])
    want, _ = sd2.encode_prompt(["a red three"], device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
    torch.testing.assert_close(cond, want, rtol=0, atol=0)
    ids = models.tokenize(["a red three"])[0].tolist()
    assert ids[-1] == sd2.tokenizer.convert_tokens_to_ids("!")  # OpenCLIP pads with "!" (id 0), not EOS
    # the denoising target is v, not the noise
    x0, noise, t = torch.ones(1, 4, 16, 16), torch.zeros(1, 4, 16, 16), torch.tensor([500])
    assert not torch.equal(models.target(x0, noise, t), noise)
    assert "SD-2.x" in describe_pipeline(sd2) and "v_prediction" in describe_pipeline(sd2)


def test_sd2_generation_matches_vanilla_pipeline(sd2):
    assert vanilla_matches(sd2, ["a red three", "a handwritten seven"], [3, 11]) == 0.0


def test_sd2_trains_with_every_method_and_audits(tmp_path):
    runs = train_every_method("builder:tiny-sd2", tmp_path)
    base = build_pipeline("tiny-sd2")
    erased = load_pipeline(runs["esd-x"] / "model")
    assert erased.scheduler.config.prediction_type == "v_prediction"
    changed = [n for n, p in erased.unet.named_parameters() if not torch.equal(p, base.unet.state_dict()[n])]
    assert changed and all("attn2" in n for n in changed)
    base.save_pretrained(tmp_path / "original")
    audit_with_attacks(runs["esd-x"] / "model", str(tmp_path / "original"), tmp_path)
