import numpy as np
import pytest

from erase.errors import EraseError
from erase.zoo.digits import load_digits_world
from erase.zoo.judges import evaluate_judges, load_judges


@pytest.fixture(scope="module")
def judges():
    return load_judges()


def test_shipped_judges_meet_their_accuracy(judges):
    m = evaluate_judges(judges, load_digits_world())
    assert m["digit_accuracy_heldout"] >= 0.97
    assert m["colour_accuracy_heldout"] >= 0.99


def test_any_size_and_bad_shapes(judges):
    data = load_digits_world()
    img = ((data.images[:20].permute(0, 2, 3, 1) + 1) / 2).numpy()
    big = np.repeat(np.repeat(img, 4, axis=1), 4, axis=2)  # 64 px
    assert (judges.predict(big)["digit"].argmax(1) == judges.predict(img)["digit"].argmax(1)).mean() >= 0.9
    assert judges.features(img).shape == (20, 128)
    with pytest.raises(EraseError, match=r"expected images \[N, H, W, 3\]"):
        judges.predict(img[..., 0])


def test_missing_or_corrupt_judges(tmp_path):
    with pytest.raises(EraseError, match="judges.json missing"):
        load_judges(tmp_path)
    import shutil

    from erase.zoo.registry import judges_path

    shutil.copytree(judges_path(), tmp_path / "j")
    (tmp_path / "j" / "digit.safetensors").write_bytes(b"garbage")
    with pytest.raises(EraseError, match="digit.safetensors: cannot load judge"):
        load_judges(tmp_path / "j")
