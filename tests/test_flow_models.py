"""FLUX.1 and SD3 at real size (meta device) and their parameter sets: the published transformer parameter
counts (diffusers 0.42.1, meta device, as issue 25 measured them), the dry run of the shipped recipes from a
folder holding only configs, and what `xattn` selects on a transformer."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

from erase.cli import main
from erase.config import load_config
from erase.models.builder import build_pipeline
from erase.models.builder_flow import FLUX_TRANSFORMERS, SD3_TRANSFORMERS
from erase.models.core import pipeline_modules
from erase.resources import data_path
from erase.train.config import RunConfig
from erase.train.dryrun import dry_run
from erase.train.params import select_parameters, trainable_modules

PUBLISHED = {"flux-dev": 11_901_408_320, "flux-schnell": 11_891_178_560, "sd35-large": 8_056_627_520,
             "sd35-medium": 2_243_171_520, "sd3-medium": 2_028_328_000}


@pytest.mark.parametrize("size", list(PUBLISHED))
def test_real_size_transformers_have_the_published_parameter_counts(size):
    cls, cfg = (FluxTransformer2DModel, FLUX_TRANSFORMERS[size]) if size.startswith("flux") else (
        SD3Transformer2DModel, SD3_TRANSFORMERS[size])
    with torch.device("meta"):
        net = cls(**cfg)
    assert sum(p.numel() for p in net.parameters()) == PUBLISHED[size]


def configs_folder(size: str, out: Path) -> Path:
    """A folder holding only the configs of a model (model_index.json and each component's config.json),
    written by diffusers / transformers from the real-size architecture: what `hf download ID --include '*.json'`
    gives for the published models."""
    pipe = build_pipeline(size, device="meta")
    pipe.save_config(out)
    for name in pipeline_modules(pipe):
        module = getattr(pipe, name)
        (module.save_config if hasattr(module, "save_config") else module.config.save_pretrained)(out / name)
    pipe.scheduler.save_config(out / "scheduler")
    return out


def test_flux_recipe_dry_runs_at_the_published_size_from_a_folder_of_configs(tmp_path, capsys):
    folder = configs_folder("flux-dev", tmp_path / "flux-dev")
    assert not list(folder.rglob("*.safetensors"))
    assert main(["train", "--config", "configs/flux/esd_x_nudity.yaml", "--dry-run", f"model={folder}",
                 "--num-gpus", "4", "--engine", "fsdp"]) == 0
    out = capsys.readouterr().out
    line = re.search(r"^\s+transformer\s+trainable\s+([\d,]+) /\s+([\d,]+)", out, re.MULTILINE)
    assert line.group(2) == "11,901,408,320"
    # LoRA rank 8 on add_q/k/v_proj and to_add_out (3072 x 3072) in 19 double blocks: 19 x 4 x 8 x (3072 + 3072)
    lora = 19 * 4 * 8 * (3072 + 3072)
    assert int(line.group(1).replace(",", "")) == lora
    assert "peak_gradient_checkpointing" in out
    # full and LoRA side by side: the same set in full is 19 x 4 x (3072^2 + 3072)
    side = out[out.index("full and LoRA side by side"):]
    assert re.search(r"LoRA rank 8\s+full", side)
    assert re.search(rf"transformer trainable\s+{lora:,}\s+{19 * 4 * (3072 * 3072 + 3072):,}", side)
    rows = [[float(x) for x in re.findall(r"([\d.]+) GiB", line)] for line in
            re.findall(r"^\s+peak(?:_gradient_checkpointing)?\s+(.*)$", side, re.MULTILINE)]
    (lora_peak, full_peak), (lora_ckpt, full_ckpt), (_, full_gpu), _ = rows  # one GPU, then per GPU under fsdp
    assert lora_ckpt < lora_peak < full_peak and full_ckpt < full_peak and lora_ckpt < full_ckpt
    # per GPU under FSDP2 on 4 GPUs: the full set's weights, gradients and Adam states are sharded (below one GPU's
    # peak); a LoRA run is refused (LoRA runs use ddp), as erase/train/engines.py refuses its launch
    assert full_gpu < full_peak
    assert "LoRA rank 8: a launch under fsdp refuses it: LoRA runs use ddp" in side


def test_sd3_recipe_dry_runs_at_the_published_size(tmp_path):
    folder = configs_folder("sd35-large", tmp_path / "sd35-large")
    for recipe in ("configs/sd3/esd_x_vangogh.yaml", "configs/sd3/esd_x_vangogh_loreun.yaml"):
        cfg = load_config(RunConfig, data_path(recipe), [f"model={folder}"])
        report = dry_run(cfg, recipe, activations=False)
        assert report["modules"]["transformer"]["total"] == 8_056_627_520
        # full training of the text stream's projections: 4 x (2432^2 + 2432) in 37 blocks, the last without to_add_out
        assert report["modules"]["transformer"]["trainable"] == (4 * 37 + 3) * (2432 * 2432 + 2432)
        assert report["modules"]["text_encoder_3"]["trainable"] == 0  # T5 stays frozen


@pytest.mark.parametrize("size", ["tiny-flux", "tiny-sd3"])
def test_text_attention_set_is_the_text_streams_joint_attention(size):
    pipe = build_pipeline(size)
    sel = select_parameters(trainable_modules(pipe), "xattn")
    kinds = {".".join(n.split(".")[-3:-1]) for n in sel.names["transformer"]}
    assert kinds == {"attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out"}
    assert all(n.startswith("transformer_blocks.") for n in sel.names["transformer"])  # FLUX: double blocks only
    rest = select_parameters(trainable_modules(build_pipeline(size)), "noxattn")
    assert not set(sel.names["transformer"]) & set(rest.names["transformer"])


def test_flux_single_file_layout_is_what_diffusers_reads_at_real_size():
    """erase's writer of Black Forest Labs' layout, read back by diffusers' own converter on the meta device:
    every key and shape of FLUX.1-dev's transformer comes back (tiny models are narrower than the converter's
    fixed 3072 and cannot be read by it)."""
    from erase.export.single_file_flux import check_reader

    with torch.device("meta"):
        net = FluxTransformer2DModel(**FLUX_TRANSFORMERS["flux-dev"])
    assert check_reader(net)


@pytest.mark.parametrize("size,detected", [("sd3-medium", "sd3"), ("sd35-medium", "sd35_medium"),
                                           ("sd35-large", "sd35_large")])
def test_sd3_all_in_one_layout_is_what_diffusers_reads_at_real_size(size, detected):
    """erase's SD3 all-in-one writer at the published architectures (meta device): diffusers' readers give back
    every key and shape of all five components (SD3.5-medium: the MMDiT-X `attn2` blocks too), and diffusers'
    model-type detection names the file as the published one (what from_single_file without `config` keys on)."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    from erase.export.single_file_sd3 import original_state, verify_sd3

    pipe = build_pipeline(size, device="meta")
    state = original_state(pipe)
    verify_sd3(state, pipe, values=False)
    assert infer_diffusers_model_type(state) == detected


def test_flux_single_file_values_come_back_through_diffusers_from_single_file(tmp_path):
    """Every value of the Black Forest Labs layout comes back through diffusers' own
    `FluxTransformer2DModel.from_single_file`. Its converter hard-codes FLUX.1's width (single_file_utils.py,
    convert_flux_transformer_checkpoint_to_diffusers: `inner_dim = 3072`, MLP ratio 4: the single blocks' fused
    linear1 is split at those sizes) and needs at least one double and one single block, so the model is FLUX.1's
    width (24 heads x 128) with one block of each kind and narrow inputs: 530M parameters, 1.06 GB in bf16 (the
    smallest model that reader takes). The weights are a random pool laid out at a different offset per tensor
    (every row distinct, so a swapped half, a q/k/v in the wrong place or a wrong split changes values), which is
    cheap to fill; the file goes through erase's writer (`write_flux_transformer`, the export's own)."""
    from erase.export.single_file import write_flux_transformer

    cfg = {**FLUX_TRANSFORMERS["flux-dev"], "in_channels": 4, "num_layers": 1, "num_single_layers": 1,
           "joint_attention_dim": 16, "pooled_projection_dim": 16}
    with torch.device("meta"):
        net = FluxTransformer2DModel(**cfg)
    net = net.to(torch.bfloat16).to_empty(device="cpu")
    pool = torch.randn(1_048_573, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)  # a prime length
    with torch.no_grad():
        for i, p in enumerate(net.parameters()):
            start, n = (7919 * i) % pool.numel(), p.numel()
            p.view(-1).copy_(pool.repeat(-(-(start + n) // pool.numel()))[start:start + n])
    net.save_config(tmp_path / "transformer")
    path = write_flux_transformer(net, tmp_path / "flux.safetensors", torch.bfloat16, 1024)
    back = FluxTransformer2DModel.from_single_file(str(path), config=str(tmp_path), subfolder="transformer",
                                                   torch_dtype=torch.bfloat16, local_files_only=True)
    want, got = net.state_dict(), back.state_dict()
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        assert f.metadata()["diffusers_reader"] == "checked"
