"""Single files from every command, offline: `--config DIR` (a diffusers folder or a folder of its
configs) or an original-layout YAML; SD-2's OpenCLIP layout; `--allow-pickle`; byte-reproducible
single files; dry runs that read real configs or fail with one line."""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
import yaml
from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from safetensors import safe_open
from transformers import CLIPTextConfig, CLIPTextModel

from erase.cli import COMMANDS, main
from erase.errors import EraseError
from erase.export.single_file import (
    OPENCLIP_PREFIX,
    openclip_to_original,
    pipeline_to_original,
    write_single_file,
)
from erase.models.builder import unet_config
from erase.models.loading import check_supported_folder, load_pipeline
from erase.resources import data_path

CONFIGS = Path(__file__).resolve().parent / "fixtures" / "configs"
SUITE = data_path("prompts/digits/digit3.csv")


def tiny(kind: str, make_tiny_pipeline):
    """A tiny SD-1 or SD-2 architecture (SD-2: OpenCLIP-style GELU text encoder, linear attention
    projections, per-block head counts, v-prediction). Text width 64: one 64-wide head, so an
    original-layout YAML (which has no text-encoder sizes) describes it too."""
    torch.manual_seed(0 if kind == "sd1" else 1)
    pipe = make_tiny_pipeline()
    extra = {"attention_head_dim": [2, 4], "use_linear_projection": True} if kind == "sd2" else {}
    pipe.unet = UNet2DConditionModel(**dict(unet_config("tiny"), cross_attention_dim=64, **extra))
    pipe.text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1,
        max_position_embeddings=77, hidden_act="gelu" if kind == "sd2" else "quick_gelu", projection_dim=64))
    if kind == "sd2":
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    return pipe


@pytest.fixture(scope="module")
def files(make_tiny_pipeline, tmp_path_factory):
    """{kind: (pipeline, diffusers folder, single file, folder of configs only)}."""
    d = tmp_path_factory.mktemp("single")
    out = {}
    for kind in ("sd1", "sd2"):
        pipe = tiny(kind, make_tiny_pipeline)
        folder = d / f"{kind}_folder"
        pipe.save_pretrained(folder)
        configs = d / f"{kind}_configs"
        shutil.copytree(folder, configs, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
        out[kind] = (pipe, folder, write_single_file(pipe, d / f"{kind}.safetensors"), configs)
    return out


def assert_same_weights(a, b):
    for name in ("unet", "vae", "text_encoder"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert sa.keys() == sb.keys(), name
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name


def test_sd2_single_file_uses_the_openclip_layout(files):
    pipe, folder, path, _ = files["sd2"]
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
        meta = f.metadata()
    text = [k for k in keys if k.startswith("cond_stage_model.")]
    assert all(k.startswith(OPENCLIP_PREFIX) for k in text) and len(text) == 2 * 12 + 4
    assert OPENCLIP_PREFIX + "transformer.resblocks.1.attn.in_proj_weight" in text
    assert meta["layout"] == "ldm-stable-diffusion-v2"
    loaded = StableDiffusionPipeline.from_single_file(str(path), config=str(folder), local_files_only=True, safety_checker=None)
    assert_same_weights(pipe, loaded)


def test_real_size_sd2_text_encoder_has_280_openclip_tensors():
    """SD-2.1's text encoder as diffusers holds it (OpenCLIP ViT-H, penultimate layer: 23 x 1024)."""
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                         num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=1024)
    with torch.device("meta"):
        model = CLIPTextModel(cfg)
    keys = openclip_to_original(model.state_dict())
    assert len(keys) == 280 and all(k.startswith(OPENCLIP_PREFIX) for k in keys)
    assert keys[OPENCLIP_PREFIX + "transformer.resblocks.22.attn.in_proj_weight"].shape == (3072, 1024)


@pytest.mark.parametrize("kind, config", [("sd1", "folder"), ("sd1", "configs"), ("sd1", "tiny-v1-inference.yaml"),
                                          ("sd2", "configs"), ("sd2", "tiny-v2-inference-v.yaml")])
def test_load_single_file_offline_with_folder_configs_or_yaml(files, kind, config, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe, folder, path, configs = files[kind]
    cfg = {"folder": folder, "configs": configs}.get(config, CONFIGS / config)
    loaded = load_pipeline(path, config=cfg)
    assert_same_weights(pipe, loaded)
    assert loaded.scheduler.config.prediction_type == pipe.scheduler.config.prediction_type
    assert loaded.text_encoder.config.hidden_act == pipe.text_encoder.config.hidden_act


def test_v2_epsilon_yaml_gives_an_epsilon_scheduler(files, monkeypatch):
    """v2-inference.yaml (SD-2 base, 512 px) predicts noise; only v2-inference-v.yaml says v."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe, _, path, _ = files["sd2"]
    loaded = load_pipeline(path, config=CONFIGS / "tiny-v2-inference.yaml")
    assert loaded.scheduler.config.prediction_type == "epsilon"
    assert_same_weights(pipe, loaded)


def test_single_file_errors_are_one_line(files, tiny_pipeline, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, _, path, _ = files["sd1"]
    with pytest.raises(EraseError, match="needs --config DIR"):
        load_pipeline(path)
    (tmp_path / "bad.yaml").write_text("model: {params: {}}\n")
    with pytest.raises(EraseError, match="model.params.unet_config: missing"):
        load_pipeline(path, config=tmp_path / "bad.yaml")
    with pytest.raises(EraseError, match="no model_index.json"):
        load_pipeline(path, config=tmp_path)
    # builder "tiny" has a 32-wide text encoder: a YAML cannot say how many heads it has
    write_single_file(tiny_pipeline, tmp_path / "t.safetensors")
    with pytest.raises(EraseError, match="width 32 is not a multiple of 64"):
        load_pipeline(tmp_path / "t.safetensors", config=CONFIGS / "tiny-v1-inference.yaml")


def test_single_file_bytes_are_reproducible(files, tmp_path):
    pipe = files["sd1"][0]
    a, b = write_single_file(pipe, tmp_path / "a.safetensors"), write_single_file(pipe, tmp_path / "b.safetensors")
    assert a.read_bytes() == b.read_bytes()
    raw = a.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = raw[8 : 8 + n]
    assert header.index(b'"format"') < header.index(b'"layout"')  # sorted metadata keys
    assert list(json.loads(header)) == sorted(json.loads(header))


def test_cli_audit_and_export_take_single_files(files, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe, _, path, configs = files["sd2"]
    assert main(["audit", "--model", str(path), "--config", str(CONFIGS / "tiny-v2-inference-v.yaml"), "--suite", str(SUITE),
                 "--detector", "digits", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "12 prompts loaded" in out and "prompt<-prompt" in out
    assert "ok (SD-2.x: unet [32, 64] x 1, cross-attention 64; text encoder 2 x 64 (gelu)" in out and "v_prediction" in out
    assert main(["export", str(path), "--config", str(configs), "--to", str(tmp_path / "exp"), "--single-file"]) == 0
    assert_same_weights(pipe, StableDiffusionPipeline.from_pretrained(tmp_path / "exp"))
    assert (tmp_path / "exp" / "exp.safetensors").read_bytes() == path.read_bytes()


def test_allow_pickle_is_a_flag_of_every_model_command(files, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe, folder, _, _ = files["sd1"]
    ckpt = tmp_path / "m.ckpt"
    torch.save({"state_dict": pipeline_to_original(pipe)}, ckpt)
    args = ["audit", "--model", str(ckpt), "--config", str(folder), "--suite", str(SUITE), "--detector", "digits", "--dry-run"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "--allow-pickle" in err and len(err.splitlines()) == 1
    assert main([*args, "--allow-pickle"]) == 0
    assert_same_weights(pipe, load_pipeline(ckpt, config=folder, allow_pickle=True))
    for name in ("train", "audit", "export", "bench"):
        parser = argparse.ArgumentParser()
        importlib.import_module(COMMANDS[name][0]).add_arguments(parser)
        flags = {s for a in parser._actions for s in a.option_strings}
        assert "--allow-pickle" in flags and ({"--config", "--model-config"} & flags), name


def _sdxl_file(tmp_path: Path) -> Path:
    """A single file with SDXL's second text encoder (OpenCLIP bigG), a few tensors of it."""
    from safetensors.torch import save_file

    path = tmp_path / "xl.safetensors"
    save_file({"conditioner.embedders.1.model.positional_embedding": torch.zeros(77, 8),
               "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight": torch.zeros(77, 8)}, str(path))
    return path


def test_loading_refuses_unsupported_families(tmp_path):
    """SDXL, FLUX and SD3 are loaded (tests/test_sdxl.py, tests/test_end_to_end_flow.py); an SDXL file with an SD-1
    YAML is refused, and so is another family's folder, by its pipeline class (never by a model's name): SD-3 and
    FLUX Hub ids are only looked up (offline here: not in the cache)."""
    with pytest.raises(EraseError, match="an SDXL checkpoint needs --config DIR"):
        load_pipeline(_sdxl_file(tmp_path), config=CONFIGS / "tiny-v1-inference.yaml")
    for repo in ("stabilityai/stable-diffusion-3-medium-diffusers", "black-forest-labs/FLUX.1-dev"):
        with pytest.raises(EraseError, match=f"{repo}: not in the local Hugging Face cache"):
            load_pipeline(repo)
    folder = tmp_path / "kandinsky"
    folder.mkdir()
    (folder / "model_index.json").write_text('{"_class_name": "KandinskyPipeline"}')
    with pytest.raises(EraseError, match="KandinskyPipeline is not supported yet .*FluxPipeline, StableDiffusion3Pipeline"):
        check_supported_folder(folder)


def _train_config(tmp_path: Path, model: str, **extra) -> Path:
    cfg = {"model": model, "method": "esd", "objective": {"ddim_steps": 3},
           "data": {"forget": {"prompts": ["three"]}}, "train": {"steps": 1, "batch_size": 1}, **extra}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_dry_run_reads_single_file_headers(files, tmp_path, capsys):
    _, _, path, configs = files["sd2"]
    cfg = _train_config(tmp_path, str(path))
    assert main(["train", "--config", str(cfg), "--dry-run", "--model-config", str(CONFIGS / "tiny-v2-inference-v.yaml")]) == 0
    out = capsys.readouterr().out
    assert "SD-2.x architecture from tiny-v2-inference-v.yaml + sd2.safetensors header" in out and "assumed" not in out
    assert "text encoder 2 x 64 (gelu)" in out and "v_prediction prediction" in out
    assert main(["train", "--config", str(cfg), "--dry-run", "--model-config", str(configs)]) == 0
    assert "v_prediction prediction" in capsys.readouterr().out
    # the configs of another architecture do not match the header
    assert main(["train", "--config", str(cfg), "--dry-run", "--model-config", str(files["sd1"][3])]) == 2
    assert "the config is not this checkpoint's architecture" in capsys.readouterr().err


@pytest.mark.parametrize("model, message", [
    ("SINGLE", "a single file's architecture needs model_config"),
    ("someone/not-cached-model", "not in the local Hugging Face cache, and a dry run reads the model's configs"),
    ("SDXL_FOLDER", "text_encoder_2/config.json missing (a dry run reads the model's configs)"),  # SDXL: tests/test_dryrun_xl.py
    ("SDXL_FILE", "a single file's architecture needs model_config"),
    ("YAML", "a config file, not model weights: pass the checkpoint as the model"),
])
def test_dry_run_never_assumes_an_architecture(files, tmp_path, capsys, model, message, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if model == "SINGLE":
        model = str(files["sd1"][2])
    elif model == "SDXL_FOLDER":
        folder = tmp_path / "xl"
        shutil.copytree(files["sd1"][3], folder)
        index = json.loads((folder / "model_index.json").read_text())
        (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionXLPipeline"}))
        model = str(folder)
    elif model == "SDXL_FILE":
        model = str(_sdxl_file(tmp_path))
    elif model == "YAML":
        model = str(CONFIGS / "tiny-v1-inference.yaml")
    assert main(["train", "--config", str(_train_config(tmp_path, model)), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "assumed" not in err


def test_train_dry_run_reports_prompt_file_columns(tmp_path, capsys):
    fix = Path(__file__).resolve().parent / "fixtures" / "suites"
    cfg = _train_config(tmp_path, "builder:tiny", data={"forget": {"file": str(fix / "unsafe_copy.csv")},
                                                         "retain": {"file": str(fix / "case_num.csv")}})
    assert main(["train", "--config", str(cfg), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "data: 2 forget samples, 2 retain samples" in out
    assert "data.forget.file: unsafe_copy.csv: 2 prompts loaded, 3 rows skipped" in out
    assert "data.retain.file: case_num.csv columns: prompt<-prompt, id<-case_num; ignored: source" in out


def test_train_from_a_single_file(files, tmp_path, monkeypatch):
    """`erase train` on a single file: `--model-config` reaches the loader and is recorded in config.yaml.
    (A folder of configs, not a YAML: with a YAML diffusers sizes the UNet's default image 512 px,
    right for real SD-1.x and far too slow for a test on the tiny model.)"""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe, _, path, configs = files["sd1"]
    cfg = _train_config(tmp_path, str(path))
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run"), "--model-config", str(configs)]) == 0
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model_config"] == str(configs)
    trained = StableDiffusionPipeline.from_pretrained(tmp_path / "run" / "model")
    a, b = pipe.unet.state_dict(), trained.unet.state_dict()
    changed = [k for k in a if not torch.equal(a[k], b[k])]
    assert changed and all(".attn2." in k for k in changed)  # ESD-x default: cross-attention only
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run2")]) == 2  # offline, no config
