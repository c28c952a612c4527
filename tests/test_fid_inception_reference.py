"""The FID Inception-v3 (erase/audit/inception.py) against a transcription of the official definition.

The tables below are copied by hand from the sources, not from erase:
- torchvision `torchvision/models/inception.py` (pytorch/vision@02a0a90b): `Inception3.__init__` (the stem
  and the Mixed_* order), `InceptionA/B/C/D/E.__init__` (branch names, channels, kernels, strides,
  paddings), `BasicConv2d` (conv without bias, BatchNorm eps=0.001, ReLU);
- pytorch-fid `src/pytorch_fid/inception.py` (mseitzer/pytorch-fid@b9c18118): `fid_inception_v3` (l.195-217:
  `Inception3(num_classes=1008, aux_logits=False)`, Mixed_5b/5c/5d = FIDInceptionA, 6b-6e = FIDInceptionC,
  7b = FIDInceptionE_1, 7c = FIDInceptionE_2, strict `load_state_dict`), the FID blocks' forwards
  (l.220-344) and `InceptionV3.forward` (l.147-151: bilinear resize to 299, align_corners=False; 2x-1;
  blocks l.86-125 ending in AdaptiveAvgPool2d(1)).
From them: the full key -> shape list of the published pt_inception-2015-12-05-6726825d.pth, and an
independent functional forward that the module's pool3 features must equal.
"""

import pytest
import torch
import torch.nn.functional as F

from erase.audit.inception import FIDInceptionV3, load_fid_inception
from erase.errors import EraseError

# (branch, cin, cout, (kh, kw), stride, (ph, pw)) per block type, as torchvision's __init__s write them
A = lambda cin, pf: [
    ("branch1x1", cin, 64, (1, 1), 1, (0, 0)),
    ("branch5x5_1", cin, 48, (1, 1), 1, (0, 0)), ("branch5x5_2", 48, 64, (5, 5), 1, (2, 2)),
    ("branch3x3dbl_1", cin, 64, (1, 1), 1, (0, 0)), ("branch3x3dbl_2", 64, 96, (3, 3), 1, (1, 1)),
    ("branch3x3dbl_3", 96, 96, (3, 3), 1, (1, 1)),
    ("branch_pool", cin, pf, (1, 1), 1, (0, 0))]
B = lambda cin: [
    ("branch3x3", cin, 384, (3, 3), 2, (0, 0)),
    ("branch3x3dbl_1", cin, 64, (1, 1), 1, (0, 0)), ("branch3x3dbl_2", 64, 96, (3, 3), 1, (1, 1)),
    ("branch3x3dbl_3", 96, 96, (3, 3), 2, (0, 0))]
C = lambda cin, c7: [
    ("branch1x1", cin, 192, (1, 1), 1, (0, 0)),
    ("branch7x7_1", cin, c7, (1, 1), 1, (0, 0)), ("branch7x7_2", c7, c7, (1, 7), 1, (0, 3)),
    ("branch7x7_3", c7, 192, (7, 1), 1, (3, 0)),
    ("branch7x7dbl_1", cin, c7, (1, 1), 1, (0, 0)), ("branch7x7dbl_2", c7, c7, (7, 1), 1, (3, 0)),
    ("branch7x7dbl_3", c7, c7, (1, 7), 1, (0, 3)), ("branch7x7dbl_4", c7, c7, (7, 1), 1, (3, 0)),
    ("branch7x7dbl_5", c7, 192, (1, 7), 1, (0, 3)),
    ("branch_pool", cin, 192, (1, 1), 1, (0, 0))]
D = lambda cin: [
    ("branch3x3_1", cin, 192, (1, 1), 1, (0, 0)), ("branch3x3_2", 192, 320, (3, 3), 2, (0, 0)),
    ("branch7x7x3_1", cin, 192, (1, 1), 1, (0, 0)), ("branch7x7x3_2", 192, 192, (1, 7), 1, (0, 3)),
    ("branch7x7x3_3", 192, 192, (7, 1), 1, (3, 0)), ("branch7x7x3_4", 192, 192, (3, 3), 2, (0, 0))]
E = lambda cin: [
    ("branch1x1", cin, 320, (1, 1), 1, (0, 0)),
    ("branch3x3_1", cin, 384, (1, 1), 1, (0, 0)), ("branch3x3_2a", 384, 384, (1, 3), 1, (0, 1)),
    ("branch3x3_2b", 384, 384, (3, 1), 1, (1, 0)),
    ("branch3x3dbl_1", cin, 448, (1, 1), 1, (0, 0)), ("branch3x3dbl_2", 448, 384, (3, 3), 1, (1, 1)),
    ("branch3x3dbl_3a", 384, 384, (1, 3), 1, (0, 1)), ("branch3x3dbl_3b", 384, 384, (3, 1), 1, (1, 0)),
    ("branch_pool", cin, 192, (1, 1), 1, (0, 0))]
STEM = [("Conv2d_1a_3x3", 3, 32, (3, 3), 2, (0, 0)), ("Conv2d_2a_3x3", 32, 32, (3, 3), 1, (0, 0)),
        ("Conv2d_2b_3x3", 32, 64, (3, 3), 1, (1, 1)), ("Conv2d_3b_1x1", 64, 80, (1, 1), 1, (0, 0)),
        ("Conv2d_4a_3x3", 80, 192, (3, 3), 1, (0, 0))]
MIXED = {"Mixed_5b": A(192, 32), "Mixed_5c": A(256, 64), "Mixed_5d": A(288, 64), "Mixed_6a": B(288),
         "Mixed_6b": C(768, 128), "Mixed_6c": C(768, 160), "Mixed_6d": C(768, 160), "Mixed_6e": C(768, 192),
         "Mixed_7a": D(768), "Mixed_7b": E(1280), "Mixed_7c": E(2048)}
CONVS = {n: (cin, cout, k, s, p) for n, cin, cout, k, s, p in STEM}
CONVS.update({f"{m}.{n}": (cin, cout, k, s, p) for m, rows in MIXED.items() for n, cin, cout, k, s, p in rows})


def expected_keys() -> dict[str, tuple[int, ...]]:
    """Every tensor of the published file (fc of 1008 classes, no AuxLogits; BN step counters are torch's
    own buffers, absent from old checkpoints, listed apart)."""
    out = {}
    for name, (cin, cout, k, _, _) in CONVS.items():
        out[f"{name}.conv.weight"] = (cout, cin, *k)
        for t in ("weight", "bias", "running_mean", "running_var"):
            out[f"{name}.bn.{t}"] = (cout,)
    out["fc.weight"], out["fc.bias"] = (1008, 2048), (1008,)
    return out


def test_key_shape_list_and_conv_geometry_match_the_official_definition():
    assert len(CONVS) == 94
    sd = FIDInceptionV3().state_dict()
    want = expected_keys()
    assert {k: tuple(v.shape) for k, v in sd.items() if not k.endswith("num_batches_tracked")} == want
    assert {k for k in sd if k.endswith("num_batches_tracked")} == {f"{n}.bn.num_batches_tracked" for n in CONVS}
    net = FIDInceptionV3()
    for name, (_, _, k, s, p) in CONVS.items():
        m = net.get_submodule(name)
        assert (m.conv.kernel_size, m.conv.stride, m.conv.padding) == (k, (s, s), p), name
        assert m.conv.bias is None and m.bn.eps == 0.001 and m.conv.dilation == (1, 1) and m.conv.groups == 1, name


def _cbr(sd, name, x):
    _, _, _, s, p = CONVS[name]
    x = F.conv2d(x, sd[f"{name}.conv.weight"], stride=s, padding=p)
    x = F.batch_norm(x, sd[f"{name}.bn.running_mean"], sd[f"{name}.bn.running_var"], sd[f"{name}.bn.weight"],
                     sd[f"{name}.bn.bias"], False, 0.0, 0.001)
    return F.relu(x)


def _reference_pool3(sd, img):
    """pytorch-fid's InceptionV3(resize_input=True, normalize_input=True) on fid_inception_v3(), written
    out from the sources above (torchvision's InceptionB/D forwards; pytorch-fid's FID A/C/E_1/E_2)."""
    def c(name, x):
        return _cbr(sd, name, x)

    def tf_avg(x):
        return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)

    x = F.interpolate(img, size=(299, 299), mode="bilinear", align_corners=False)
    x = 2 * x - 1
    x = c("Conv2d_2b_3x3", c("Conv2d_2a_3x3", c("Conv2d_1a_3x3", x)))
    x = F.max_pool2d(x, kernel_size=3, stride=2)
    x = c("Conv2d_4a_3x3", c("Conv2d_3b_1x1", x))
    x = F.max_pool2d(x, kernel_size=3, stride=2)
    for m in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
        x = torch.cat([c(f"{m}.branch1x1", x), c(f"{m}.branch5x5_2", c(f"{m}.branch5x5_1", x)),
                       c(f"{m}.branch3x3dbl_3", c(f"{m}.branch3x3dbl_2", c(f"{m}.branch3x3dbl_1", x))),
                       c(f"{m}.branch_pool", tf_avg(x))], 1)
    m = "Mixed_6a"
    x = torch.cat([c(f"{m}.branch3x3", x),
                   c(f"{m}.branch3x3dbl_3", c(f"{m}.branch3x3dbl_2", c(f"{m}.branch3x3dbl_1", x))),
                   F.max_pool2d(x, kernel_size=3, stride=2)], 1)
    for m in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
        b7 = c(f"{m}.branch7x7_3", c(f"{m}.branch7x7_2", c(f"{m}.branch7x7_1", x)))
        d = x
        for i in range(1, 6):
            d = c(f"{m}.branch7x7dbl_{i}", d)
        x = torch.cat([c(f"{m}.branch1x1", x), b7, d, c(f"{m}.branch_pool", tf_avg(x))], 1)
    m = "Mixed_7a"
    b7 = x
    for i in range(1, 5):
        b7 = c(f"{m}.branch7x7x3_{i}", b7)
    x = torch.cat([c(f"{m}.branch3x3_2", c(f"{m}.branch3x3_1", x)), b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)
    for m, pool in (("Mixed_7b", tf_avg(x)), ("Mixed_7c", None)):
        if pool is None:  # FIDInceptionE_2: max pool in the pool branch
            pool = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        b3 = c(f"{m}.branch3x3_1", x)
        d = c(f"{m}.branch3x3dbl_2", c(f"{m}.branch3x3dbl_1", x))
        x = torch.cat([c(f"{m}.branch1x1", x), torch.cat([c(f"{m}.branch3x3_2a", b3), c(f"{m}.branch3x3_2b", b3)], 1),
                       torch.cat([c(f"{m}.branch3x3dbl_3a", d), c(f"{m}.branch3x3dbl_3b", d)], 1),
                       c(f"{m}.branch_pool", pool)], 1)
    return F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)


def test_file_with_exactly_the_official_keys_loads_strictly_and_gives_the_reference_pool3(tmp_path):
    """Random tensors under exactly the transcribed key set (as published: no step counters), saved as a
    .pth, load through load_fid_inception(allow_pickle=True) strictly; the features equal the reference."""
    g = torch.Generator().manual_seed(0)
    state = {}
    for k, shape in expected_keys().items():
        if k.endswith("conv.weight"):
            fan_in = shape[1] * shape[2] * shape[3]
            state[k] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        elif k.endswith("running_var"):
            state[k] = torch.rand(shape, generator=g) + 0.5
        else:
            state[k] = torch.randn(shape, generator=g) * 0.1
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(state, path)
    net = load_fid_inception(path, allow_pickle=True)
    loaded = net.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    img = torch.rand(1, 3, 37, 45, generator=g)
    with torch.no_grad():
        ref = _reference_pool3(state, img)
    got = net(img)
    assert got.shape == (1, 2048) and ref.abs().max() > 0
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    torch.save({**state, "AuxLogits.fc.weight": torch.zeros(1008, 768)}, path)
    with pytest.raises(EraseError, match="not the FID Inception weights"):
        load_fid_inception(path, allow_pickle=True)
    torch.save([state["fc.bias"]], path)  # a weights-only pickle that is not a state dict
    with pytest.raises(EraseError, match="not a flat state dict of tensors"):
        load_fid_inception(path, allow_pickle=True)
