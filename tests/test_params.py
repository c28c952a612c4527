import pytest
import torch

from erase.errors import EraseError
from erase.train.config import LoraOptions
from erase.train.params import select_parameters


def _trained(pipe):
    return {f"{m}.{n}" for m in ("unet", "text_encoder") for n, p in getattr(pipe, m).named_parameters() if p.requires_grad}


@pytest.mark.parametrize("spec, inside, outside", [
    ("xattn", ".attn2.", None),
    ("noxattn", None, ".attn2."),
    ("selfattn", ".attn1.", None),
])
def test_sets_select_by_name(make_tiny_pipeline, spec, inside, outside):
    pipe = make_tiny_pipeline()
    sel = select_parameters({"unet": pipe.unet, "text_encoder": pipe.text_encoder}, spec)
    names = _trained(pipe)
    assert names and all(n.startswith("unet.") for n in names)
    if inside:
        assert all(inside in n for n in names)
        assert names == {f"unet.{n}" for n, _ in pipe.unet.named_parameters() if inside in n}
    if outside:
        assert not any(outside in n for n in names)
        assert len(names) == sum(1 for n, _ in pipe.unet.named_parameters() if outside not in n)
    assert sel.kinds == {"unet": "partial"}


def test_full_unet_text_encoder_exclude_and_errors(make_tiny_pipeline):
    pipe = make_tiny_pipeline()
    sel = select_parameters({"unet": pipe.unet, "text_encoder": pipe.text_encoder}, "unet+text_encoder", exclude=["time_embedding"])
    assert sel.kinds == {"unet": "partial", "text_encoder": "full"}
    assert not any("time_embedding" in n for n in _trained(pipe))
    sel = select_parameters({"unet": pipe.unet, "text_encoder": pipe.text_encoder}, "unet")
    assert sel.kinds == {"unet": "full"} and not any(p.requires_grad for p in pipe.text_encoder.parameters())
    with pytest.raises(EraseError, match="unknown parameter set 'attn'"):
        select_parameters({"unet": pipe.unet, "text_encoder": pipe.text_encoder}, "attn")
    with pytest.raises(EraseError, match="selects no parameter"):
        select_parameters({"unet": pipe.unet, "text_encoder": pipe.text_encoder}, "xattn", exclude=["attn2"])


def test_lora_trains_only_adapters_on_the_chosen_layers(make_tiny_pipeline):
    pipe = make_tiny_pipeline()
    sel = select_parameters({"unet": pipe.unet, "text_encoder": pipe.text_encoder}, "xattn", lora=LoraOptions(rank=2))
    names = _trained(pipe)
    assert sel.kinds == {"unet": "lora"} and names
    assert all("lora_" in n and ".attn2." in n for n in names)
    assert all(".attn2." in t for t in sel.lora_targets["unet"])


@pytest.mark.parametrize("spec, lora, kind", [
    ("xattn", None, "partial"),
    ("unet", None, "full"),
    ("xattn", LoraOptions(rank=2), "lora"),
    ("text_encoder", None, "full"),
])
def test_original_context_computes_the_original_weights(latents, perturb, tiny_models, spec, lora, kind):
    models, _, sel = tiny_models(spec, lora)
    assert set(sel.kinds.values()) == {kind}
    x, t, prompts = latents(2), torch.tensor([500, 20]), ["a handwritten three", "seven"]

    def eps():
        return models.pred(x, t, models.encode(prompts))

    with torch.no_grad():
        before = eps()
    perturb(models, 0.5)
    with torch.no_grad():
        moved = eps()
    with models.original():
        orig = eps()
        assert not torch.is_grad_enabled()
    assert not torch.allclose(moved, before, atol=1e-5)
    assert torch.allclose(orig, before, atol=1e-6)
    after = eps()  # the context restores the trained weights
    assert torch.allclose(after.detach(), moved, atol=1e-6) and after.requires_grad
    extra = models.original.extra_bytes
    trained = sum(p.numel() * 4 for p in models.named_trainable().values())
    if kind == "lora":
        assert extra == 0
    elif kind == "partial":
        assert extra == trained  # only the trained tensors are kept


@pytest.mark.parametrize("spec, lora", [("xattn", None), ("xattn", LoraOptions(rank=2)), ("unet", None)])
def test_original_context_nests(latents, perturb, tiny_models, spec, lora):
    models, _, _ = tiny_models(spec, lora)
    x, t, prompts = latents(1), torch.tensor([300]), ["a three"]
    with torch.no_grad():
        before = models.pred(x, t, models.encode(prompts))
    perturb(models, 0.5)
    with models.original():
        with models.original():
            inner = models.pred(x, t, models.encode(prompts))
        outer = models.pred(x, t, models.encode(prompts))
    assert torch.allclose(inner, before, atol=1e-6) and torch.allclose(outer, before, atol=1e-6)
    with torch.no_grad():
        assert not torch.allclose(models.pred(x, t, models.encode(prompts)), before, atol=1e-5)
