"""Detectors on real inputs: NudeNet on scikit-image's photos, a tiny random CLIP built offline."""

import numpy as np
import pytest
import torch
from skimage import data as skdata
from transformers import CLIPModel

from erase.audit.detectors import ClipDetector, NudeNetDetector, build_detector
from erase.errors import EraseError
from erase.tokenizer import clip_tokenizer


@pytest.fixture(scope="module")
def photos():
    astronaut = skdata.astronaut().astype(np.float32) / 255
    camera = np.repeat(skdata.camera()[..., None], 3, -1).astype(np.float32) / 255
    return np.stack([astronaut, camera])


def test_nudenet_faces_labels_and_thresholds(photos):
    det = NudeNetDetector("FACE_F,FACE_M>0.6")  # NudeNet-2 names map to NudeNet-3 classes
    a, c = det(photos)
    assert a["labels"]["FACE_FEMALE"] == pytest.approx(0.72, abs=0.03)
    assert c["labels"]["FACE_MALE"] == pytest.approx(0.58, abs=0.03)
    assert a["flag"] and a["pred"] == "FACE_FEMALE" and a["counted"] == ["FACE_FEMALE"]
    assert not c["flag"]  # 0.58 is under 0.6
    assert det.id == "nudenet:custom:FACE_FEMALE,FACE_MALE>0.6"
    # both faces pass 0.5; with >= at exactly the astronaut's score it still counts, > does not
    assert [r["flag"] for r in NudeNetDetector("FACE_FEMALE,FACE_MALE>0.5")(photos)] == [True, True]
    s = a["labels"]["FACE_FEMALE"]
    assert NudeNetDetector(f"FACE_FEMALE>={s}")(photos[:1])[0]["flag"]
    assert not NudeNetDetector(f"FACE_FEMALE>{s}")(photos[:1])[0]["flag"]


def test_nudenet_named_protocols(photos):
    default = build_detector("nudenet")
    assert default.id == "nudenet:unlearndiffatk"
    info = default.info()
    assert info["threshold"] == 0.45 and len(info["labels"]) == 9 and info["nudenet_version"].startswith("3.")
    r = default(photos)
    assert [x["flag"] for x in r] == [False, False] and r[0]["labels"]["FACE_FEMALE"] > 0.6  # faces are recorded, not counted
    assert len(build_detector("nudenet:eval-unlearn").protocol.labels) == 6
    assert build_detector("nudenet:erasediff").protocol.inclusive
    blank = default(np.zeros((1, 64, 64, 3), np.float32))  # a black image: nothing detected, nothing flagged
    assert len(blank) == 1 and blank[0]["labels"] == {} and blank[0]["flag"] is False
    with pytest.raises(EraseError, match="unknown protocol"):
        build_detector("nudenet:strict")
    with pytest.raises(EraseError, match="unknown NudeNet label 'NOSE'"):
        build_detector("nudenet:NOSE>0.5")


@pytest.fixture(scope="module")
def tiny_clip(tiny_clip_dir):
    return tiny_clip_dir


def test_clip_zero_shot_matches_the_library(tiny_clip, photos):
    det = build_detector(f"clip:{tiny_clip}:an astronaut")
    assert isinstance(det, ClipDetector) and det.classes == ("an astronaut", "something else")
    out = det(photos)
    model = CLIPModel.from_pretrained(tiny_clip)
    tok = clip_tokenizer()
    ids = tok(["a photo of an astronaut", "a photo of something else"], padding="max_length", max_length=77,
              return_tensors="pt")
    with torch.no_grad():
        t = model.get_text_features(input_ids=ids.input_ids, attention_mask=ids.attention_mask)
        t = torch.nn.functional.normalize(getattr(t, "pooler_output", t), dim=-1)
        pix = det.clip._pixels(photos)
        i = torch.nn.functional.normalize(getattr(model.get_image_features(pixel_values=pix), "pooler_output", model.get_image_features(pixel_values=pix)), dim=-1)
        want = (model.logit_scale.exp() * i @ t.T).softmax(-1).numpy()
    got = np.array([[o["labels"]["an astronaut"], o["labels"]["something else"]] for o in out])
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert [o["flag"] for o in out] == list(want[:, 0] > want[:, 1])
    assert pix.shape == (2, 3, 32, 32) and det.features(photos).shape == (2, 16)
    with pytest.raises(EraseError, match="needs a concept"):
        build_detector(f"clip:{tiny_clip}")


def test_nudenet_classes_are_the_bundled_models():
    """NUDENET_CLASSES (from NudeNet's README) is the class list in the metadata of the ONNX model NudeNet ships."""
    import ast
    from importlib.resources import files

    import onnxruntime

    from erase.audit.detectors import NUDE_9, NUDENET_CLASSES

    session = onnxruntime.InferenceSession(str(files("nudenet") / "320n.onnx"), providers=["CPUExecutionProvider"])
    names = ast.literal_eval(session.get_modelmeta().custom_metadata_map["names"])
    assert tuple(names[i] for i in sorted(names)) == NUDENET_CLASSES
    assert set(NUDE_9) <= set(NUDENET_CLASSES)
