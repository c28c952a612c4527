"""Every configs/sd15 recipe dry-runs at real SD-1.x size (meta device) and trains the right weights."""

from __future__ import annotations

import re

import pytest
import torch

from erase.cli import main
from erase.config import load_config
from erase.edit.registry import is_edit_config
from erase.models.builder import build_pipeline
from erase.resources import data_path
from erase.train.config import RunConfig
from erase.train.params import select_parameters

CONFIGS = sorted(p for p in data_path("configs/sd15").glob("*.yaml") if not is_edit_config(p))  # training recipes
XATTN_NAME = re.compile(r"\.attn2\.(to_q|to_k|to_v|to_out\.0)\.(weight|bias)$")


@pytest.fixture(scope="module")
def sd15():
    """Parameter names and sizes of the real SD-1.x UNet / text encoder (meta device: no memory)."""
    pipe = build_pipeline("sd15", device="meta")
    return {m: {n: p.numel() for n, p in getattr(pipe, m).named_parameters()} for m in ("unet", "text_encoder")}


def expected_trainable(sd15, spec: str, exclude: list[str]) -> dict[str, int]:
    """Trainable counts per module, by name filters written independently of erase.train.params."""
    unet, te = sd15["unet"], sd15["text_encoder"]
    keep = {
        "xattn": lambda n: ".attn2." in n,
        "noxattn": lambda n: ".attn2." not in n,
        "selfattn": lambda n: ".attn1." in n,
        "unet": lambda n: True,
        "xattn_kv": lambda n: ".attn2.to_k." in n or ".attn2.to_v." in n,
    }
    out = {"unet": 0, "text_encoder": 0}
    for part in spec.split("+"):
        if part == "text_encoder":
            out["text_encoder"] = sum(te.values())
        elif part == "text_encoder_layers":  # AdvUnlearn's text_encoder_full: all but the embeddings
            out["text_encoder"] = sum(v for n, v in te.items() if "embeddings." not in n)
        else:
            out["unet"] = sum(v for n, v in unet.items() if keep[part](n) and not any(x in n for x in exclude))
    return out


def test_there_are_recipes_for_every_method():
    methods = {load_config(RunConfig, c).method for c in CONFIGS}
    assert {"esd", "salun", "erasediff", "advunlearn"} <= methods
    # every method also comes with LoReUn
    loreun = {load_config(RunConfig, c).method for c in CONFIGS if load_config(RunConfig, c).weighting.kind != "uniform"}
    assert {"esd", "salun", "erasediff", "advunlearn"} <= loreun


def parse_report(text: str) -> dict:
    """The numbers `erase train --dry-run` prints."""
    out = {"modules": {}}
    out["param_set"] = re.search(r"trained parameter set: (\S+)", text).group(1)
    for m, tr, tot in re.findall(r"^\s+(unet|text_encoder|vae)\s+trainable\s+([\d,]+) /\s+([\d,]+)", text, re.MULTILINE):
        out["modules"][m] = {"trainable": int(tr.replace(",", "")), "total": int(tot.replace(",", ""))}
    out["memory_gib"] = float(re.search(r"total_excluding_activations\s+([\d.]+) GiB", text).group(1))
    return out


@pytest.mark.parametrize("path", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_dry_run(path, sd15, capsys):
    assert main(["train", "--config", str(path), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "SD-1.x architecture" in printed
    report = parse_report(printed)

    cfg = load_config(RunConfig, path)
    assert cfg.model in ("CompVis/stable-diffusion-v1-4", "stable-diffusion-v1-5/stable-diffusion-v1-5")
    spec = report["param_set"]
    want = expected_trainable(sd15, spec, cfg.params.exclude)
    got = {m: report["modules"][m]["trainable"] for m in ("unet", "text_encoder")}
    assert got == want, f"{path.name}: {spec}"
    assert report["modules"]["unet"]["total"] == sum(sd15["unet"].values()) > 850_000_000  # SD-1.x: 859.5M
    assert report["modules"]["vae"]["trainable"] == 0
    # fp32 weights + grads + 2 Adam states of what is trained, at the very least
    assert report["memory_gib"] * 1024**3 >= 0.99 * 16 * sum(got.values())
    if cfg.rum.enabled:
        assert "rum: 3 groups" in printed

    # the published choices
    if cfg.method == "esd" and cfg.objective.get("variant") == "u":
        assert spec == "noxattn" and got["unet"] < sum(sd15["unet"].values()) - 40_000_000
    if cfg.method == "esd" and cfg.objective.get("variant") == "x":
        assert spec == "xattn" and 40_000_000 < got["unet"] < 50_000_000
    if cfg.method == "advunlearn":
        # official text_encoder_full: 123,060,480 minus the token (49408 x 768) and position (77 x 768) embeddings
        assert spec == "text_encoder_layers" and got["unet"] == 0 and got["text_encoder"] == 123_060_480 - 49_485 * 768


def test_esd_x_trains_only_cross_attention_projections():
    cfg = load_config(RunConfig, CONFIGS[0].parent / "esd_x_vangogh.yaml")
    pipe = build_pipeline("sd15", device="meta")
    sel = select_parameters({"unet": pipe.unet, "text_encoder": pipe.text_encoder}, cfg.params.train)
    names = sel.names["unet"]
    assert names and all(XATTN_NAME.search(n) for n in names)
    assert {XATTN_NAME.search(n).group(1) for n in names} == {"to_q", "to_k", "to_v", "to_out.0"}
    assert not sel.trains("text_encoder")
    # ESD-u is the complement: no attn2 weight, and the official exclusions hold
    cfg_u = load_config(RunConfig, CONFIGS[0].parent / "esd_u_nudity.yaml")
    pipe = build_pipeline("sd15", device="meta")
    sel_u = select_parameters({"unet": pipe.unet, "text_encoder": pipe.text_encoder}, cfg_u.params.train, cfg_u.params.exclude)
    assert not any(".attn2." in n for n in sel_u.names["unet"])
    assert not any(n.startswith(("time_embedding.", "conv_out.", "conv_norm_out.")) for n in sel_u.names["unet"])
    assert any(".attn1." in n for n in sel_u.names["unet"])
    assert all(p.device == torch.device("meta") for p in pipe.unet.parameters())
