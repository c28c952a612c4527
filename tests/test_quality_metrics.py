"""FID with the FID Inception-v3 (erase/audit/inception.py) and the CLIP score with a real CLIPModel from the
Hub cache, offline, on random weights of the same architectures; COCO caption suites (coco_30k.csv)."""

import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from erase.audit.inception import FID_CLASSES, FIDInceptionV3, load_fid_inception
from erase.audit.metrics import frechet_distance
from erase.audit.suites import coco_image_files, read_suite
from erase.cli import main
from erase.errors import EraseError

# pytorch-fid's FID Inception-v3 = torchvision's Inception3(aux_logits=False, num_classes=1008) with its
# FID blocks: these parameter names and shapes are the published pt_inception-2015-12-05-6726825d.pth's.
EXPECTED = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3), "Conv2d_4a_3x3.bn.running_var": (192,),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1), "Mixed_5d.branch5x5_2.conv.weight": (64, 48, 5, 5),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3), "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
    "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3), "Mixed_7b.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
    "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1), "fc.weight": (1008, 2048), "fc.bias": (1008,),
}


@pytest.fixture(scope="module")
def fid_net():
    torch.manual_seed(0)
    net = FIDInceptionV3().eval()
    with torch.no_grad():  # He-initialised convs (torch's default init fades to zero over 94 layers) and BN
        for m in net.modules():  # statistics away from the identity, so a wrong block shows in the features
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net


def test_fid_network_has_pytorch_fids_names_and_shapes(fid_net):
    sd = fid_net.state_dict()
    for k, shape in EXPECTED.items():
        assert tuple(sd[k].shape) == shape, k
    assert not any(k.startswith("AuxLogits") for k in sd) and FID_CLASSES == 1008
    blocks = {k.split(".")[0] for k in sd}
    assert blocks == {"Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "fc",
                      *(f"Mixed_{b}" for b in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"))}
    # 94 conv+BN pairs (TF's graph), each conv weight + 4 BN tensors (+ the step counter torch adds)
    assert sum(k.endswith(".conv.weight") for k in sd) == 94


def test_weights_load_from_pth_and_safetensors_and_give_2048_features(fid_net, tmp_path):
    state = {k: v for k, v in fid_net.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "pt_inception-2015-12-05-6726825d.pth")  # as published: no step counters
    save_file(state, tmp_path / "fid.safetensors")
    with pytest.raises(EraseError, match="a pickle file; pass --allow-pickle"):
        load_fid_inception(tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    a = load_fid_inception(tmp_path / "pt_inception-2015-12-05-6726825d.pth", allow_pickle=True)
    b = load_fid_inception(tmp_path / "fid.safetensors")
    rng = np.random.default_rng(0)
    imgs = rng.random((3, 32, 40, 3), dtype=np.float32)
    fa, fb, f0 = a.features(imgs), b.features(imgs), fid_net.features(imgs)
    assert fa.shape == (3, 2048) and np.array_equal(fa, fb) and np.allclose(fa, f0)
    assert not np.allclose(fa[0], fa[1])  # the features depend on the image
    mixed = [imgs[0], rng.random((24, 24, 3), dtype=np.float32)]  # any sizes, as pytorch-fid reads real images
    assert a.features(mixed).shape == (2, 2048)
    save_file({k: v for k, v in state.items() if not k.startswith("fc.")}, tmp_path / "bad.safetensors")
    with pytest.raises(EraseError, match="not the FID Inception weights"):
        load_fid_inception(tmp_path / "bad.safetensors")
    with pytest.raises(EraseError, match="no such file"):
        load_fid_inception(tmp_path / "missing.pth")


def test_fid_blocks_pool_as_tf_does():
    """FIDInceptionA/C/E_1 average without the padded zeros, E_2 takes a max: on a constant input every
    pool branch sees the constant itself (torchvision's blocks would see smaller values at the borders)."""
    from erase.audit.inception import FIDInceptionE, _avg

    x = torch.full((1, 2, 5, 5), 3.0)
    assert torch.equal(_avg(x), x)
    e2 = FIDInceptionE(2, max_pool=True)
    assert e2.max_pool and not FIDInceptionE(2, max_pool=False).max_pool


def test_coco_caption_suite_and_its_images(tmp_path):
    csv = tmp_path / "coco_30k.csv"  # ESD / UCE's format: image_id, source, prompt, evaluation_seed
    csv.write_text("image_id,source,prompt,evaluation_seed\n000000203564,coco-30k,A bicycle replica with a clock.,41337\n"
                   "000000179765,coco-30k,A black motorcycle parked.,63155\n000000000001,coco-30k,A cat.,7\n")
    suite = read_suite(csv)
    assert [(r.id, r.seed) for r in suite.rows] == [("000000203564", 41337), ("000000179765", 63155), ("000000000001", 7)]
    assert suite.columns["id"] == "image_id" and suite.columns["seed"] == "evaluation_seed"
    files = [tmp_path / n for n in ("COCO_val2014_000000179765.jpg", "COCO_val2014_000000203564.jpg", "other.jpg")]
    assert coco_image_files(files, [r.id for r in suite.rows]) == [files[1], files[0]]


def test_audit_fid_and_clip_score_from_the_hub_cache(tiny_pipeline_dir, tiny_clip_dir, fid_net, tmp_path, monkeypatch):
    """--clip with no value is openai/clip-vit-large-patch14, read from the local Hub cache (here a random
    CLIPModel put there); --inception FILE adds FID against --reference-images; nothing is downloaded."""
    import shutil

    cache = tmp_path / "hub"
    snap = cache / "models--openai--clip-vit-large-patch14" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_clip_dir, snap)
    (cache / "models--openai--clip-vit-large-patch14" / "refs").mkdir()
    (cache / "models--openai--clip-vit-large-patch14" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    save_file({k: v for k, v in fid_net.state_dict().items()}, tmp_path / "fid.safetensors")
    real = tmp_path / "real"
    real.mkdir()
    from PIL import Image

    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(real / f"{i}.png")
    suite = tmp_path / "captions.txt"
    suite.write_text("a red three\na blue seven\n")
    out = tmp_path / "audit"
    assert main(["audit", "--model", str(tiny_pipeline_dir), "--suite", str(suite), "--steps", "2", "--detector",
                 "digits:three", "--clip", "--inception", str(tmp_path / "fid.safetensors"), "--reference-images",
                 str(real), "--out", str(out)]) == 0
    m = json.loads((out / "results.json").read_text())["metrics"]
    assert m["fid"] > 0 and re.search(r"2 generated vs 3 reference", m["fid_note"]) and m["clip_score"] >= 0
    assert "fid_judge" not in m and "fid_clip" not in m
    assert frechet_distance(np.eye(3), np.eye(3)) == pytest.approx(0, abs=1e-9)
