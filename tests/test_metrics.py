"""Metrics against closed forms: Frechet distance of Gaussians, ASR bookkeeping, retention, CLIP score."""

import numpy as np
import pytest
import torch

from erase.audit.attacks.ringabell import attacked_conditioning, concept_pairs, concept_vector
from erase.audit.metrics import attack_rates, clip_score, frechet_distance, summarise
from erase.models.soft_prompt import encode_plain


def test_frechet_distance_matches_the_gaussian_formula():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20000, 3))
    b = rng.normal(size=(20000, 3)) * 2 + np.array([1.0, 0.0, -1.0])
    # N(0, I) vs N(mu, 4I): ||mu||^2 + tr(I + 4I - 2*2I) = 2 + 3
    assert frechet_distance(a, b) == pytest.approx(5.0, rel=0.03)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a[:2], b[:3]) >= 0  # singular covariances do not crash
    # the textbook formula with scipy's matrix square root on a non-isotropic case
    from scipy import linalg

    x, y = rng.normal(size=(50, 4)) @ rng.normal(size=(4, 4)), rng.normal(size=(60, 4)) + 0.5
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    ref = ((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * np.real(linalg.sqrtm(s1 @ s2)))
    assert frechet_distance(x, y) == pytest.approx(ref, rel=1e-6)


def test_rates_and_retention():
    recs = [{"label": "three", "detection": {"flag": True, "pred": "three"}},
            {"label": "three", "detection": {"flag": False, "pred": "eight"}},
            {"label": "one", "detection": {"flag": False, "pred": "one"}},
            {"label": "two", "detection": {"flag": False, "pred": "seven"}}]
    attacks = [{"pre": True, "success": True}, {"pre": False, "success": True}]
    m = summarise(recs, "three", attacks)
    assert m["concept_rate"] == 0.5 and m["retention_accuracy"] == 0.5 and m["label_counts"] == {"three": 1}
    assert (m["pre_asr"], m["asr"], m["attack_successes"]) == (0.5, 1.0, 1)
    assert attack_rates([])["asr"] is None
    nude = [{"detection": {"flag": True, "counted": ["FEET_EXPOSED", "BELLY_EXPOSED"]}},
            {"detection": {"flag": True, "counted": ["FEET_EXPOSED"]}}, {"detection": {"flag": False, "counted": []}}]
    m = summarise(nude, None)
    assert m["concept_rate"] == pytest.approx(2 / 3) and m["label_counts"] == {"BELLY_EXPOSED": 1, "FEET_EXPOSED": 2}
    assert m["retention_accuracy"] is None


def test_clip_score_scale():
    img = np.array([[1.0, 0.0], [0.0, 1.0]])
    txt = np.array([[0.6, 0.8], [0.0, -1.0]])
    assert clip_score(img, txt) == pytest.approx((60 + 0) / 2)  # negative cosines count as 0


def test_ringabell_vector_is_the_mean_difference(tiny_pipeline):
    pipe = tiny_pipeline
    pairs = concept_pairs("three", ("a photo of {}", "{}, detailed"))
    assert pairs == [("a photo of three", "a photo of"), ("three, detailed", ", detailed")]
    v = concept_vector(pipe.tokenizer, pipe.text_encoder, pairs)
    with torch.no_grad():
        want = (encode_plain(pipe.tokenizer, pipe.text_encoder, ["a photo of three", "three, detailed"])
                - encode_plain(pipe.tokenizer, pipe.text_encoder, ["a photo of", ", detailed"])).mean(0)
        base = encode_plain(pipe.tokenizer, pipe.text_encoder, ["a cat"])
    torch.testing.assert_close(v, want)
    torch.testing.assert_close(attacked_conditioning(pipe, ["a cat"], v, 2.0), base + 2 * v)
