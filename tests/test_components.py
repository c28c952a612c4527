"""Component overrides (erase/models/components.py): a released erased UNet / text encoder / LoRA on its base
model, in every key layout the releases use, audited and exported as released."""

import json

import pytest
import torch
from safetensors.torch import save_file

from erase.cli import main
from erase.errors import EraseError
from erase.export.single_file import clip_to_original, unet_to_original
from erase.models.components import apply_overrides, read_state_dict, unet_layout
from erase.resources import data_path


@pytest.fixture(scope="module")
def erased(make_tiny_pipeline, tmp_path_factory):
    """The tiny pipeline with a moved UNet and text encoder (as an erasure run leaves them), saved as a
    folder, plus its UNet / text encoder as the releases ship them."""
    root = tmp_path_factory.mktemp("erased")
    pipe = make_tiny_pipeline(0)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in [*pipe.unet.parameters(), *pipe.text_encoder.parameters()]:
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    pipe.save_pretrained(root / "model", safe_serialization=True)
    unet = {k: v.contiguous() for k, v in pipe.unet.state_dict().items()}
    save_file(unet, root / "unet_diffusers.safetensors")                        # ESD / UCE: diffusers keys
    save_file(unet_to_original(unet, pipe.unet.config), root / "unet_compvis.safetensors")  # SalUn: CompVis keys
    torch.save({"state_dict": unet_to_original(unet, pipe.unet.config)}, root / "unet_compvis.ckpt")
    text = {k: v.contiguous() for k, v in pipe.text_encoder.state_dict().items() if "position_ids" not in k}
    save_file(clip_to_original(text), root / "text_compvis.safetensors")
    pipe.text_encoder.save_pretrained(root / "text_encoder_dir")                    # AdvUnlearn: a CLIPTextModel folder
    return root, pipe


def _same(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name, layout", [("unet_diffusers.safetensors", "diffusers"),
                                          ("unet_compvis.safetensors", "compvis"), ("unet_compvis.ckpt", "compvis")])
def test_unet_layouts_give_the_erased_unet(erased, make_tiny_pipeline, name, layout):
    root, pipe = erased
    base = make_tiny_pipeline(0)
    assert not _same(base.unet, pipe.unet)
    rec = apply_overrides(base, unet=root / name, allow_pickle=name.endswith(".ckpt"))
    assert rec[0]["layout"] == layout and rec[0]["tensors"] == rec[0]["of"]
    assert _same(base.unet, pipe.unet) and not _same(base.text_encoder, pipe.text_encoder)


@pytest.mark.parametrize("name", ["text_compvis.safetensors", "text_encoder_dir"])
def test_text_encoder_file_or_folder(erased, make_tiny_pipeline, name):
    root, pipe = erased
    base = make_tiny_pipeline(0)
    apply_overrides(base, text_encoder=root / name)
    assert _same(base.text_encoder, pipe.text_encoder) and not _same(base.unet, pipe.unet)


def test_wrong_shapes_unknown_keys_and_pickles_are_one_line(erased, make_tiny_pipeline, tmp_path):
    root, _ = erased
    base = make_tiny_pipeline(0)
    state = read_state_dict(root / "unet_diffusers.safetensors", False, "--unet")
    key = "conv_in.weight"
    save_file({**state, key: torch.zeros(7, 4, 3, 3)}, tmp_path / "shape.safetensors")
    with pytest.raises(EraseError, match=r"^--unet .*shape.safetensors: conv_in.weight has shape \[7, 4, 3, 3\] but the base"):
        apply_overrides(base, unet=tmp_path / "shape.safetensors")
    save_file({**state, "down_blocks.9.extra.weight": torch.zeros(1)}, tmp_path / "extra.safetensors")
    with pytest.raises(EraseError, match="'down_blocks.9.extra.weight' is not in the base model's UNet2DConditionModel"):
        apply_overrides(base, unet=tmp_path / "extra.safetensors")
    with pytest.raises(EraseError, match="pickle checkpoints can run code"):
        apply_overrides(base, unet=root / "unet_compvis.ckpt")
    save_file({"foo.bar": torch.zeros(1)}, tmp_path / "odd.safetensors")
    with pytest.raises(EraseError, match="unknown UNet key layout"):
        apply_overrides(base, unet=tmp_path / "odd.safetensors")
    assert _same(base.unet, make_tiny_pipeline(0).unet)  # nothing half-applied by a refused file
    assert unet_layout(["input_blocks.0.0.weight"]) == "compvis-bare"


def test_lora_is_fused(make_tiny_pipeline, tmp_path):
    """A diffusers-format LoRA file (what `erase train` writes to RUN/lora) fused onto the base: the UNet's
    adapted layers become W + B A; the result is a plain pipeline."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from erase.export.lora import LORA_WEIGHTS

    src = make_tiny_pipeline(0)
    src.unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_v"], init_lora_weights=False))
    type(src).save_lora_weights(tmp_path, unet_lora_layers=get_peft_model_state_dict(src.unet), safe_serialization=True)
    base = make_tiny_pipeline(0)
    before = {k: v.clone() for k, v in base.unet.state_dict().items()}
    rec = apply_overrides(base, lora=tmp_path / LORA_WEIGHTS)
    after = base.unet.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert rec[0]["component"] == "lora" and changed and all(("to_q" in k or "to_v" in k) for k in changed)
    assert not any("lora" in k for k in after)  # fused and unloaded


def test_audit_with_unet_override_equals_auditing_the_erased_folder(erased, tiny_pipeline_dir, tmp_path):
    """The issue's done-when on the tiny model: `--unet FILE` (diffusers keys, then CompVis keys) on the base
    gives the same images and metrics as the erased folder, and results.json hashes what was read."""
    root, _ = erased
    common = ["--suite", str(data_path("prompts/digits/digit3.csv")), "--limit", "2", "--steps", "2",
              "--detector", "digits:three"]
    results = {}
    for name, extra in [("folder", ["--model", str(root / "model")]),
                        ("diffusers", ["--model", str(tiny_pipeline_dir), "--unet", str(root / "unet_diffusers.safetensors")]),
                        ("compvis", ["--model", str(tiny_pipeline_dir), "--unet", str(root / "unet_compvis.safetensors"),
                                     "--text-encoder", str(root / "text_encoder_dir")])]:
        if name != "compvis":
            extra += ["--text-encoder", str(root / "text_compvis.safetensors")]
        assert main(["audit", *extra, *common, "--out", str(tmp_path / name)]) == 0
        results[name] = json.loads((tmp_path / name / "results.json").read_text())
        results[name]["pngs"] = sorted(p.read_bytes() for p in (tmp_path / name / "images").glob("*.png"))
    for name in ("diffusers", "compvis"):
        assert results[name]["metrics"] == results["folder"]["metrics"]
        assert results[name]["pngs"] == results["folder"]["pngs"]
        sha = results[name]["sha256"]
        assert set(sha["overrides"]) == {"unet", "text_encoder"} and all(len(v) == 64 for v in sha["suite_files"].values())
        assert "unet/diffusion_pytorch_model.safetensors" in sha["model_weights"]
    assert results["diffusers"]["overrides"]["unet"].endswith("unet_diffusers.safetensors")


def test_export_writes_the_base_with_the_released_unet(erased, tiny_pipeline_dir, tmp_path):
    """`erase export BASE --unet FILE --to DIR`: a vanilla diffusers folder of the released model."""
    from diffusers import UNet2DConditionModel

    root, pipe = erased
    assert main(["export", str(tiny_pipeline_dir), "--unet", str(root / "unet_compvis.safetensors"),
                 "--to", str(tmp_path / "exp")]) == 0
    assert _same(UNet2DConditionModel.from_pretrained(tmp_path / "exp" / "unet"), pipe.unet)
    assert main(["bench", "speed", "--unet", str(root / "unet_compvis.safetensors")]) == 2
