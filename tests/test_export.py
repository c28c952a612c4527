"""`erase export`: the exported folder loads in vanilla diffusers and reproduces the run's images."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from erase.cli import main
from erase.errors import EraseError
from erase.export import export_run

# fp32 export -> fp32 load: the same tensors through the same ops, so the images agree to float
# rounding; measured max |diff| is 0.0 on this CPU. fp16 variant (weights rounded to half, run
# in fp32): measured 5.6e-4 on 32-px tiny-model images in [0, 1]. LoRA: base + exported LoRA vs
# the live peft adapter measured 0.0, the fused folder 2.6e-6 (LORA_ATOL 1e-4); the LoRA itself
# moves the images by 0.078.
LORA_ATOL = 1e-4
FP32_ATOL = 1e-5
FP16_ATOL = 2e-2
PLANTED = "hf_plantedSECRET123"  # the token make_run plants in config.yaml: never exported


@pytest.fixture(scope="module")
def run(sample_images, make_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("run") / "esd-nudity"
    pipe, _ = make_run(root, audit=True, token=PLANTED)
    return root, pipe, sample_images(pipe)


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    root, _, _ = run
    out = tmp_path_factory.mktemp("export") / "erased-nudity"
    result = export_run(root, out, fp16=True)
    return out, result


def _vanilla(path, **kw):
    return StableDiffusionPipeline.from_pretrained(path, safety_checker=None, local_files_only=True, **kw)


def test_exported_folder_reproduces_run_images(tiny_pipeline, sample_images, run, exported):
    _, pipe, ref = run
    out, _ = exported
    loaded = _vanilla(out)
    loaded.set_progress_bar_config(disable=True)
    got = sample_images(loaded)
    assert np.abs(got - ref).max() <= FP32_ATOL
    # and the export is the erased model, not the base one
    assert np.abs(sample_images(tiny_pipeline) - ref).max() > 1e-3
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_export_contains_exactly_the_intended_files(exported):
    out, result = exported
    files = set(result.files)
    assert {"model_index.json", "README.md", "audit_grid.png", "audit_results.json",
            "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
            "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
            "text_encoder/model.fp16.safetensors", "tokenizer/tokenizer_config.json", "scheduler/scheduler_config.json"} <= files
    assert not any(f.startswith(("checkpoints", "cache", "logs")) or f.endswith((".bin", ".ckpt", ".pt")) for f in files)
    assert files == {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    # no leftovers of the atomic write beside the output
    assert [p.name for p in out.parent.iterdir()] == [out.name]
    # ordinary permissions, not the owner-only ones of the temp folder it was written in
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask
    assert (out / "audit_results.json").stat().st_mode & 0o777 == 0o666 & ~umask
    # the planted token in config.yaml's hub_token is redacted everywhere
    for p in out.rglob("*"):
        if p.is_file():
            assert PLANTED.encode() not in p.read_bytes(), p


def test_fp16_variant_loads(sample_images, run, exported):
    _, _, ref = run
    out, _ = exported
    half = _vanilla(out, variant="fp16", dtype=torch.float16)
    assert half.unet.dtype == torch.float16 and half.text_encoder.dtype == torch.float16
    assert load_file(out / "unet" / "diffusion_pytorch_model.fp16.safetensors")["conv_in.weight"].dtype == torch.float16
    half.to(torch.float32)  # CPU: run the fp16-rounded weights in fp32
    half.set_progress_bar_config(disable=True)
    diff = np.abs(sample_images(half) - ref).max()
    assert 0 < diff <= FP16_ATOL  # > 0: the weights really were rounded to half


def test_lora_run_exports_lora_that_reproduces_the_run(make_tiny_pipeline, sample_images, make_run, tmp_path):
    root = tmp_path / "lora-run"
    _, lora_ref = make_run(root, lora=True, token=PLANTED)
    out = tmp_path / "out"
    result = export_run(root, out)
    assert result.lora == out / "pytorch_lora_weights.safetensors"
    # base model + exported LoRA == the LoRA run (its live peft adapter)
    pipe = make_tiny_pipeline()
    pipe.load_lora_weights(out)
    got = sample_images(pipe)
    assert np.abs(got - lora_ref).max() <= LORA_ATOL
    assert np.abs(sample_images(make_tiny_pipeline()) - lora_ref).max() > 1e-3  # the LoRA is not a no-op
    # and the fused diffusers folder gives the same images
    fused = _vanilla(out)
    fused.set_progress_bar_config(disable=True)
    assert np.abs(sample_images(fused) - lora_ref).max() <= LORA_ATOL


def test_crash_leaves_no_half_written_folder(run, tmp_path, monkeypatch):
    root, _, _ = run
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("previous export")

    def boom(*args, **kwargs):
        raise RuntimeError("disk died mid-write")

    import erase.export.diffusers_folder as mod

    monkeypatch.setattr(mod, "build_card", boom)  # fails after all weights were written
    with pytest.raises(RuntimeError):
        export_run(root, out, single_file=True, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the temp folder is gone
    with pytest.raises(RuntimeError):
        export_run(root, tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()


@pytest.mark.slow  # a fresh interpreter importing torch + diffusers: ~10-25 s on the shared 2 cores
def test_kill_9_mid_export_leaves_no_target(run, tmp_path):
    """SIGKILL while the temp folder is being filled: the target never appears (only the
    hidden temp folder stays behind; nothing cleans up after kill -9)."""
    root, _, _ = run
    out = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "erase", "export", str(root), "--to", str(out), "--single-file", "--fp16"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            tmp = [p for p in tmp_path.glob(".killed.*.tmp") if (p / "unet").exists()]
            if tmp:
                break
            time.sleep(0.01)
        assert proc.poll() is None and tmp, "export finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert not out.exists()


def test_existing_target_needs_overwrite(run, tmp_path):
    root, _, _ = run
    (tmp_path / "out").mkdir()
    with pytest.raises(EraseError, match="--overwrite"):
        export_run(root, tmp_path / "out")
    for target in (root, root.parent, root / "model" / "x", root / "checkpoints"):
        with pytest.raises(EraseError, match="must not be the run directory"):
            export_run(root, target, overwrite=True)


def test_truncated_weights_give_one_line_error_naming_the_file(run, tmp_path, capsys):
    root, _, _ = run
    bad = tmp_path / "bad-run"
    shutil.copytree(root / "model", bad / "model")
    weights = bad / "model" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: os.path.getsize(weights) // 2])
    assert main(["export", str(bad), "--to", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(weights) in err and "truncated" in err
    assert not (tmp_path / "out").exists()


def test_cli_exports_a_bare_diffusers_folder(sample_images, run, tmp_path, capsys):
    root, _, ref = run
    assert main(["export", str(root / "model"), "--to", str(tmp_path / "plain")]) == 0
    assert "exported" in capsys.readouterr().out
    card = (tmp_path / "plain" / "README.md").read_text()
    assert "library_name: diffusers" in card and "concept-erasure" in card
    loaded = _vanilla(tmp_path / "plain")
    loaded.set_progress_bar_config(disable=True)
    assert np.abs(sample_images(loaded) - ref).max() <= FP32_ATOL
