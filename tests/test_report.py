"""report.html and the side-by-side page, rendered by a real headless Chromium and inspected."""

import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from erase.audit.detectors import NudeNetDetector
from erase.audit.generate import RowLog, png_bytes
from erase.audit.metrics import summarise
from erase.audit.report import write_comparison, write_report
from erase.audit.run import versions
from erase.io import atomic_write_bytes, atomic_write_json

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
RED, GREEN, HEADER = (221, 51, 51), (136, 204, 136), (240, 240, 240)


def make_audit(folder, model, flip=False):
    """An audit folder whose images are real photos judged by NudeNet with a face protocol."""
    photos = [skdata.astronaut(), np.repeat(skdata.camera()[..., None], 3, -1)]
    photos = [np.asarray(Image.fromarray(p).resize((256, 256))) for p in photos]
    if flip:
        photos = photos[::-1]
    det = NudeNetDetector("FACE_FEMALE>0.6")
    dets = det(np.stack(photos).astype(np.float32) / 255)
    records = []
    for i, (p, d) in enumerate(zip(photos, dets)):
        atomic_write_bytes(folder / f"images/{i:05d}.png", png_bytes(p))
        records.append({"index": i, "id": str(i), "prompt": f"a photo number {i}", "seed": i, "guidance": 7.5,
                        "label": None, "file": f"images/{i:05d}.png", "detection": d})
    RowLog(folder / "images.jsonl").append([{k: v for k, v in r.items() if k != "detection"} for r in records])
    RowLog(folder / "detections.jsonl").append([{"index": r["index"], "detection": r["detection"]} for r in records])
    results = {"model": model, "protocol": {"id": det.id, **det.info()}, "concept": None, "suites": ["photos.txt"],
               "suite_digest": "x", "generation": {"scheduler": "ddim", "steps": 50, "safety_checker": "off",
                                                   "seeding": "per-row CPU torch.Generator(seed)"},
               "attack": None, "versions": versions(), "metrics": summarise(records, None)}
    atomic_write_json(folder / "results.json", results)
    return write_report(folder, results, records, None), results


def screenshot(html_path, tmp_path, name):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed and could not be (scripts/setup.sh installs it with apt-get as root)")
    shot = tmp_path / f"{name}.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / ('profile-' + name)}", "--window-size=1100,1500",
           f"--screenshot={shot}", html_path.as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    return np.asarray(Image.open(shot).convert("RGB")).astype(int)


def count(img, rgb, tol=6):
    return int((np.abs(img - np.array(rgb)).max(-1) <= tol).sum())


def test_report_renders_tables_and_labelled_grid(tmp_path):
    html_path, results = make_audit(tmp_path / "a", "model-a")
    text = html_path.read_text()
    assert results["metrics"]["concept_rate"] == 0.5  # astronaut's face 0.72 > 0.6 counts, camera's 0.58 does not
    assert "FACE_FEMALE" in text and "<table>" in text and text.count("data:image/png;base64,") >= 3
    assert "nudenet_version=3." in text and (tmp_path / "a" / "grid.png").is_file()
    img = screenshot(html_path, tmp_path, "a")
    # the astronaut's cell has the red "concept found" frame, the camera's the green one; tables drawn
    assert count(img, RED) > 400 and count(img, GREEN) > 400 and count(img, HEADER) > 2000
    # the photos themselves are on screen: the astronaut's white suit and the camera scene's greys
    assert img.std() > 40


def test_side_by_side_page(tmp_path):
    make_audit(tmp_path / "before", "original")
    make_audit(tmp_path / "after", "erased", flip=True)
    out = write_comparison([tmp_path / "before", tmp_path / "after"], tmp_path / "cmp.html")
    text = out.read_text()
    assert "before (original)" in text and "after (erased)" in text and text.count("<tr><th>#") == 2
    img = screenshot(out, tmp_path, "cmp")
    assert count(img, RED) > 400 and count(img, GREEN) > 400
    from erase.cli import main

    assert main(["report", str(tmp_path / "before"), str(tmp_path / "nope"), "--out", str(tmp_path / "x.html")]) == 2
