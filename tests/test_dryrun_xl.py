"""`erase train --dry-run` on SDXL and SD-2.x: the shipped recipes at real size (meta device),
SDXL folders and single files (configs only), and the activation count behind the memory estimate."""

from __future__ import annotations

import re

import pytest
import torch

from erase.cli import main
from erase.config import load_config
from erase.errors import EraseError
from erase.export.single_file import write_single_file
from erase.models.builder import build_pipeline
from erase.resources import data_path
from erase.train.activations import count_unet_activations
from erase.train.config import RunConfig
from erase.train.dryrun import dry_run
from erase.train.params import select_parameters

RECIPES = sorted(data_path("configs/sdxl").glob("*.yaml")) + sorted(data_path("configs/sd2").glob("*.yaml"))
GIB = 1024**3
LINEAR_OR_CONV = (torch.nn.Linear, torch.nn.Conv2d)


def official_sdxl_esd(unet, method: str) -> int:
    """rohitgandikota/erasing esd_sdxl.py's selection, written from its rule (named_modules, Linear/Conv2d
    only): esd-x 'attn2' in the name; esd-u not 'attn2', not 'emb', and 'block' in the name."""
    total = 0
    for name, module in unet.named_modules():
        if not isinstance(module, LINEAR_OR_CONV):
            continue
        if (method == "x" and "attn2" in name) or (method == "u" and "attn2" not in name and "emb" not in name and "block" in name):
            total += sum(p.numel() for p in module.parameters(recurse=False))
    return total


def sd1_esd(unet, method: str, exclude: list[str]) -> int:
    """train-esd.py's names: xattn = every attn2 weight; noxattn = the rest minus the excluded names."""
    keep = (lambda n: ".attn2." in n) if method == "x" else (lambda n: ".attn2." not in n)
    return sum(p.numel() for n, p in unet.named_parameters() if keep(n) and not any(x in n for x in exclude))


def parse(text: str) -> dict:
    out = {m: (int(a.replace(",", "")), int(b.replace(",", "")))
           for m, a, b in re.findall(r"^\s+(unet|text_encoder_2|text_encoder|vae)\s+trainable\s+([\d,]+) /\s+([\d,]+)", text, re.MULTILINE)}
    for key in ("weights_grads_optimizer_bf16", "activations", "activations_gradient_checkpointing", "peak",
                "peak_gradient_checkpointing"):
        out[key] = float(re.search(rf"^\s+{key}\s+([\d.]+) GiB", text, re.MULTILINE).group(1))
    return out


@pytest.fixture(scope="module")
def real():
    return {size: build_pipeline(size, device="meta") for size in ("sdxl", "sd21")}


def test_recipes_cover_esd_x_and_u_with_and_without_loreun():
    for family in ("sdxl", "sd2"):
        cfgs = [load_config(RunConfig, p) for p in RECIPES if p.parent.name == family]
        combos = {(c.objective["variant"], c.concept, c.weighting.kind) for c in cfgs}
        assert combos == {("x", "Van Gogh style", "uniform"), ("x", "Van Gogh style", "dynamic"),
                          ("u", "nudity", "uniform"), ("u", "nudity", "dynamic")}, family


@pytest.mark.parametrize("path", RECIPES, ids=[f"{p.parent.name}-{p.stem}" for p in RECIPES])
def test_recipe_dry_runs_at_real_size(path, real, capsys):
    assert main(["train", "--config", str(path), "--dry-run"]) == 0
    text = capsys.readouterr().out
    cfg = load_config(RunConfig, path)
    got = parse(text)
    if path.parent.name == "sdxl":
        assert "SDXL architecture" in text and got["unet"][1] == 2_567_463_684
        assert got["unet"][0] == official_sdxl_esd(real["sdxl"].unet, cfg.objective["variant"])
        assert "1024x1024 px" in text and got["text_encoder_2"] == (0, 694_659_840)
    else:
        assert "SD-2.x architecture" in text and "v_prediction prediction" in text and "768x768 px" in text
        assert got["unet"][0] == sd1_esd(real["sd21"].unet, cfg.objective["variant"], cfg.params.exclude)
    assert got["text_encoder"][0] == 0
    # printed to 2 decimals: the sums agree to the rounding of three printed numbers
    assert abs(got["peak"] - got["weights_grads_optimizer_bf16"] - got["activations"]) <= 0.015
    assert abs(got["peak_gradient_checkpointing"] - got["weights_grads_optimizer_bf16"]
               - got["activations_gradient_checkpointing"]) <= 0.015
    assert 0 < got["activations_gradient_checkpointing"] < got["activations"]


def test_activation_count_on_meta_matches_real_tensors():
    """The meta-device count is the count of a real forward (tiny SDXL, CPU): same saved tensors,
    up to the few bytes where the CPU and meta kernels save different small tensors."""
    counts = {}
    for device in ("cpu", "meta"):
        pipe = build_pipeline("tiny-sdxl", device=device)
        select_parameters({"unet": pipe.unet, "text_encoder": pipe.text_encoder}, "xattn")
        counts[device] = count_unet_activations(pipe.unet)
    for key in ("no_checkpointing", "checkpointing"):
        assert counts["cpu"][key] > 0
        assert abs(counts["meta"][key] - counts["cpu"][key]) <= 0.01 * counts["cpu"][key], key


@pytest.mark.parametrize("autocast", [False, True], ids=["bf16-weights", "fp32-weights-bf16-autocast"])
def test_activation_count_matches_the_allocator(autocast):
    """Calibration on the CPU: what a real forward leaves allocated for the backward equals the count,
    both for bf16 weights (saved weights cost nothing: count less weight_copies) and for fp32 weights under
    bf16 autocast (the trainer's regime: the copies are real). Same attention stand-in in both; measured
    ratios 0.999 and 1.015 (autocast also keeps a few casts of small inputs)."""
    from erase.train.activations import _CountingAttnProcessor, _unet_inputs, allocated_by_forward

    pipe = build_pipeline("tiny-sdxl")
    select_parameters({"unet": pipe.unet, "text_encoder": pipe.text_encoder}, "xattn")
    pipe.unet.register_to_config(sample_size=32)
    est = count_unet_activations(pipe.unet)  # leaves the UNet in bf16
    args, kwargs = _unet_inputs(pipe.unet, torch.bfloat16)
    pipe.unet.set_attn_processor(_CountingAttnProcessor())
    if autocast:
        pipe.unet.to(torch.float32)
        args = (args[0].float(), args[1])
        kwargs = {"encoder_hidden_states": kwargs["encoder_hidden_states"].float(),
                  "added_cond_kwargs": {k: v.float() for k, v in kwargs["added_cond_kwargs"].items()}}
    want = est["no_checkpointing"] - (0 if autocast else est["weight_copies"])
    got = allocated_by_forward(pipe.unet, args, kwargs, autocast)
    assert 0.98 * want <= got <= 1.03 * want


def test_activation_count_follows_the_trainable_set_and_resolution():
    """Nothing trainable: nothing saved. Attention is counted as a flash kernel keeps it (no L x L matrix):
    at SDXL size the attention probabilities alone would be tens of GiB."""
    pipe = build_pipeline("sdxl", device="meta")
    pipe.unet.requires_grad_(False)
    assert count_unet_activations(pipe.unet)["no_checkpointing"] == 0
    select_parameters({"unet": pipe.unet, "text_encoder": pipe.text_encoder}, "xattn")
    full = count_unet_activations(pipe.unet)
    assert 2 * GIB < full["no_checkpointing"] < 30 * GIB and full["checkpointing"] < full["no_checkpointing"] / 4
    assert 0 < full["weight_copies"] < 2 * sum(p.numel() for p in pipe.unet.parameters())  # bf16 copies, at most all
    # a base already in bf16 (LoRA) saves its weights for free: the same count less the copies
    base = count_unet_activations(pipe.unet, weight_copies=False)
    assert base["no_checkpointing"] == full["no_checkpointing"] - full["weight_copies"] and base["weight_copies"] == 0
    pipe.unet.register_to_config(sample_size=64)  # 512 px: a quarter of the tokens (attention kept linear in L)
    half = count_unet_activations(pipe.unet)
    assert half["weight_copies"] == full["weight_copies"]
    assert half["no_checkpointing"] - half["weight_copies"] < (full["no_checkpointing"] - full["weight_copies"]) / 3


def _run_config(tmp_path, model: str, model_config: str | None = None) -> RunConfig:
    lines = [f"model: {model}", "method: esd", "concept: x", "objective: {variant: x}", "params: {train: xattn}",
             "data: {forget: {prompts: [x]}}"]
    if model_config:
        lines.append(f"model_config: {model_config}")
    (tmp_path / "run.yaml").write_text("\n".join(lines) + "\n")
    return load_config(RunConfig, tmp_path / "run.yaml")


def test_sdxl_folder_and_single_file_dry_run_from_configs(tmp_path):
    pipe = build_pipeline("tiny-sdxl")
    pipe.save_pretrained(tmp_path / "xl")
    path = write_single_file(pipe, tmp_path / "xl.safetensors")
    want = sd1_esd(pipe.unet, "x", [])
    folder = dry_run(_run_config(tmp_path, str(tmp_path / "xl")), activations=False)
    single = dry_run(_run_config(tmp_path, str(path), str(tmp_path / "xl")), activations=False)
    for report in (folder, single):
        assert report["architecture"].startswith("SDXL architecture")
        assert report["modules"]["unet"]["trainable"] == want
        assert report["modules"]["text_encoder_2"]["total"] == sum(p.numel() for p in pipe.text_encoder_2.parameters())
    assert "xl.safetensors header" in single["architecture"]


def _attn2(width: int, context: int) -> int:
    """One cross-attention's weights: to_q, to_out (width x width, to_out with bias), to_k, to_v (width x context)."""
    return 2 * width * width + width + 2 * width * context


# SDXL: 640-wide level 2 + 3 attentions x depth 2, 1280-wide 2 + 3 + mid x depth 10; SD-2.1: 5 + 5 + 6 blocks
SDXL_XATTN = 10 * _attn2(640, 2048) + 60 * _attn2(1280, 2048)
SD21_XATTN = 5 * _attn2(320, 1024) + 5 * _attn2(640, 1024) + 6 * _attn2(1280, 1024)


@pytest.mark.parametrize("size, family, trained", [("sdxl", "SDXL", SDXL_XATTN), ("sd21", "SD-2.x", SD21_XATTN)])
def test_builder_sources_are_described(tmp_path, size, family, trained):
    """builder:sdxl / builder:sd21: the family is named and ESD-x trains every attn2 weight."""
    report = dry_run(_run_config(tmp_path, f"builder:{size}"), activations=False)
    assert report["architecture"].startswith(f"{family} architecture from builder {size}")
    assert report["modules"]["unet"]["trainable"] == trained


def test_sdxl_single_file_with_an_sd1_config_is_refused(tmp_path):
    xl, sd1 = build_pipeline("tiny-sdxl"), build_pipeline("tiny")
    sd1.save_pretrained(tmp_path / "sd1")
    path = write_single_file(xl, tmp_path / "xl.safetensors")
    with pytest.raises(EraseError, match="SDXL checkpoint but the config describes SD-1.x"):
        dry_run(_run_config(tmp_path, str(path), str(tmp_path / "sd1")), activations=False)
    with pytest.raises(EraseError, match="needs model_config \\(an SDXL checkpoint: `--model-config DIR`"):
        dry_run(_run_config(tmp_path, str(path)), activations=False)
