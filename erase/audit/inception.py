"""FID as the papers compute it: the TensorFlow FID Inception-v3, in torch, loading pytorch-fid's weights unchanged.

FID (Heusel et al. 2017, https://arxiv.org/abs/1706.08500) is the Frechet distance between the
2048-d pool3 features of this one network: the Inception-v3 of TF's 2015-12-05 FID graph. pytorch-fid
(mseitzer/pytorch-fid, `inception.py`) ports it as torchvision's `Inception3` with four blocks
replaced (`FIDInceptionA`, `FIDInceptionC`, `FIDInceptionE_1`, `FIDInceptionE_2`: average pooling
without the padded zeros, and a max pool in the last block's pool branch) and publishes the
weights as `pt_inception-2015-12-05-6726825d.pth`. torchvision does not install here, so the
network is written out below with the same module and parameter names (`Conv2d_1a_3x3.conv.weight`,
`Mixed_5b.branch5x5_1.bn.running_mean`, ..., `fc.weight` of 1008 classes), and that file loads
unchanged (`load_state_dict(strict=True)`).

Input as pytorch-fid's `InceptionV3(resize_input=True, normalize_input=True)`: images in [0, 1],
resized to 299 x 299 bilinearly (align_corners=False), scaled to [-1, 1]; the output is the
average-pooled 2048-d feature of Mixed_7c.

Checked line by line against the sources (every module, name, shape, kernel, stride, padding, pool,
eps, the resize, the normalisation and the feature point agree; tests/test_fid_inception_reference.py
holds the transcription and an independent functional forward):
- pytorch-fid `src/pytorch_fid/inception.py` (mseitzer/pytorch-fid@b9c18118): `fid_inception_v3` l.195-217
  (`inception_v3(num_classes=1008, aux_logits=False)`, the nine replaced blocks, strict `load_state_dict`);
  `FIDInceptionA` l.220-244, `FIDInceptionC` l.247-274, `FIDInceptionE_1` l.277-309 (avg_pool2d k3 s1 p1,
  count_include_pad=False); `FIDInceptionE_2` l.312-344 (max_pool2d k3 s1 p1); `InceptionV3.__init__`
  l.85-125 (block order, the two MaxPool2d(3, 2), AdaptiveAvgPool2d(1) after Mixed_7c) and `forward`
  l.147-151 (interpolate to 299 bilinear, align_corners=False; then 2 * x - 1).
- torchvision `torchvision/models/inception.py` (pytorch/vision@02a0a90b, line numbers of that copy):
  `Inception3.__init__` l.62-85 (stem Conv2d_1a_3x3 ... Conv2d_4a_3x3, maxpool1/2, Mixed_5b ... Mixed_7c,
  AuxLogits only with aux_logits, fc 2048 -> num_classes), `_forward` l.103-155; `InceptionA` l.176-212,
  `InceptionB` l.215-240 (max_pool2d k3 s2), `InceptionC` l.243-286, `InceptionD` l.289-317,
  `InceptionE` l.320-364, `BasicConv2d` l.398-407 (Conv2d bias=False, BatchNorm2d eps=0.001, ReLU).
The published file therefore holds exactly Inception3(aux_logits=False, num_classes=1008)'s tensors:
94 conv weights with 4 BN tensors each, fc.weight [1008, 2048], fc.bias; BatchNorm's num_batches_tracked
may be absent (torch fills it in, as here).

Weights: `--inception FILE`: the published .pth (a pickle: read with `torch.load(weights_only=True)`,
so it needs --allow-pickle) or a .safetensors conversion of it (`save_safetensors`); bare
`--inception` looks in torch hub's cache (`$TORCH_HOME/hub/checkpoints/`, where pytorch-fid puts it).
Nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from erase.errors import EraseError

FID_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"
FID_CLASSES = 1008  # the TF graph's classifier (unused by FID, kept so the published file loads strictly)


class BasicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, **kw):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _avg(x):
    """The FID blocks' average pool: padding not counted (TF's behaviour)."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x):
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionC(nn.Module):
    def __init__(self, cin: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for m in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            d = m(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionE(nn.Module):
    """FIDInceptionE_1 (`max_pool=False`: average pool without padding) and FIDInceptionE_2 (max pool)."""

    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pool = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg(x)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pool)], 1)


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3 (module names of torchvision's Inception3 with pytorch-fid's FID blocks)."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE(1280, max_pool=False)
        self.Mixed_7c = FIDInceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, FID_CLASSES)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] in [0, 1] -> pool3 features [N, 2048]."""
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
                     "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(self, name)(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def features(self, images, batch: int = 50) -> np.ndarray:
        """Float images [N, H, W, 3] in [0, 1] (an array, or a list of arrays of any sizes: each is
        resized to 299 on its own; pytorch-fid resizes a batch, whose images its DataLoader needs of one size,
        and the bilinear resize is per image, so the features are the same) -> [N, 2048] float64."""
        out = []
        for i in range(0, len(images), batch):
            chunk = list(images[i : i + batch])
            groups = [chunk] if len({np.shape(x) for x in chunk}) == 1 else [[x] for x in chunk]
            for g in groups:
                x = torch.from_numpy(np.ascontiguousarray(np.stack(g), dtype=np.float32)).permute(0, 3, 1, 2)
                out.append(self(x.to(self.fc.weight.device)).double().cpu().numpy())
        return np.concatenate(out)


def hub_cache_file() -> Path:
    """Where pytorch-fid's download lands: torch hub's checkpoints folder."""
    return Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS


def load_fid_inception(source: str | os.PathLike | None = "auto", allow_pickle: bool = False) -> FIDInceptionV3:
    """The FID network with the published weights from `source` (a .pth / .safetensors file; "auto":
    torch hub's cache), never downloaded. One line if the file is missing or is not these weights."""
    path = hub_cache_file() if source in (None, "auto") else Path(source).expanduser()
    if not path.is_file():
        raise EraseError(f"--inception {path}: no such file; download {FID_WEIGHTS} (pytorch-fid's FID weights, "
                         "github.com/mseitzer/pytorch-fid/releases) on a machine with internet and pass its path")
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    elif not allow_pickle:
        raise EraseError(f"--inception {path}: a pickle file; pass --allow-pickle to read it (weights only), or "
                         "convert it once to .safetensors")
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch raises many types for a bad file
            raise EraseError(f"--inception {path}: not a weights-only checkpoint ({str(err).splitlines()[0][:160]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EraseError(f"--inception {path}: not the FID Inception weights (not a flat state dict of tensors)")
    net = FIDInceptionV3()
    own = net.state_dict()
    # BatchNorm's step counters are not weights; a file saved without them loads as torch does it
    state = {**{k: v for k, v in own.items() if k.endswith("num_batches_tracked")}, **state}
    missing, unknown = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unknown:
        raise EraseError(f"--inception {path}: not the FID Inception weights ({len(missing)} tensors missing, e.g. "
                         f"{(missing or ['-'])[0]}; {len(unknown)} unknown, e.g. {(unknown or ['-'])[0]})")
    bad = [k for k in own if tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        raise EraseError(f"--inception {path}: {bad[0]} has shape {list(state[bad[0]].shape)}, the FID network's is "
                         f"{list(own[bad[0]].shape)}")
    net.load_state_dict(state, strict=True)
    return net.eval()


def save_safetensors(source: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Convert the published .pth once (weights-only read) into a .safetensors that loads without pickle."""
    from safetensors.torch import save_file

    net = load_fid_inception(source, allow_pickle=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out))
    return Path(out)


def reference_files(folder: str | os.PathLike, records: list[dict] | None = None) -> list[Path]:
    """The real images of --reference-images: every .png/.jpg there, or, when the suite rows carry COCO
    image ids (coco_30k.csv / coco_10k.csv), the files of those ids (COCO_val2014_000000203564.jpg ...)."""
    path = Path(folder).expanduser()
    files = sorted(p for p in path.glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if records:
        from erase.audit.suites import coco_image_files

        matched = coco_image_files(files, [str(r.get("id", "")) for r in records])
        if matched:
            return matched
    return files


def fid_of_audit(out: Path, records: list[dict], reference_images: str, weights: str, allow_pickle: bool) -> dict:
    """FID of an audit's images (OUT/images) against --reference-images, with the FID Inception-v3."""
    from erase.audit.generate import load_images
    from erase.audit.metrics import frechet_distance

    net = load_fid_inception(weights, allow_pickle=allow_pickle)
    files = reference_files(reference_images, records)
    if len(files) < 2:
        raise EraseError(f"--reference-images {reference_images}: need at least 2 images")
    gen = np.concatenate([net.features(load_images(out, records[i : i + 50])) for i in range(0, len(records), 50)])
    real = np.concatenate([net.features([load_images("/", [{"file": str(p.resolve())}])[0] for p in files[i : i + 50]])
                           for i in range(0, len(files), 50)])
    return {"fid": frechet_distance(gen, real),
            "fid_note": f"FID (pytorch-fid's FID Inception-v3, pool3) of {len(records)} generated vs {len(files)} reference "
                        "images; papers' COCO FIDs use 10k or 30k images, fewer images bias FID upwards"}
