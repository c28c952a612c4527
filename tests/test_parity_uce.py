"""UCE parity: `erase edit`'s closed form (erase/edit/uce.py, one solve for every layer) gives the weights
the official per-layer loops give, on a tiny random model.

Transcribed, with the model's own tokenizer, text encoder and `encode_prompt` (never erase's code):
- rohitgandikota/unified-concept-editing trainscripts/uce_sd_erase.py (28c81ed), `UCE`: keys are each
  prompt's last token state, `attention_mask.sum() - 2` (lines 29-42); v* from the ORIGINAL modules
  (44-53); per module mat1 = lamb W + s_e v* c^T + s_p v_p c_p^T, mat2 = lamb I + s_e c c^T + s_p c_p c_p^T,
  W = mat1 @ inverse(mat2) (56-82).
- the legacy train-scripts/train_erase.py (35e91e2), `edit_model(technique='replace')`: keys from the
  last token to the end, aligned with the guide's (lines 239-287), preserve prompts with every token (289-312).
"""

import copy

import pytest
import torch

from erase.edit.base import EditSet
from erase.edit.uce import Uce, UceConfig
from erase.models.core import Models

ERASE = ["a red cat", "cat", "a photo of a cat"]
GUIDE = ["", "", "a photo of a dog"]
PRESERVE = ["a dog", "a blue car", "the sea at night"]


def official_current(pipe, edit, guide, preserve, erase_scale, preserve_scale, lamb):
    """uce_sd_erase.py:12-82, on the tiny pipeline, returning the new weights by module name."""
    names, modules = [], []
    for name, module in pipe.unet.named_modules():
        if "attn2" in name and name.endswith(("to_v", "to_k")):  # line 18
            modules.append(module)
            names.append(name)
    original = copy.deepcopy(modules)
    embeds = {}
    for e in edit + guide + preserve:
        if e in embeds:
            continue
        t_emb = pipe.encode_prompt(prompt=e, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
        last = pipe.tokenizer(e, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True,
                              return_tensors="pt")["attention_mask"].sum() - 2
        embeds[e] = t_emb[0][:, last, :]
    outputs = {}
    for g in guide + preserve:
        if g in outputs:
            continue
        for m in original:
            outputs[g] = outputs.get(g, []) + [m(embeds[g])]
    new = {}
    for i, m in enumerate(original):
        w = m.weight
        mat1 = lamb * w
        mat2 = lamb * torch.eye(w.shape[1])
        for e, g in zip(edit, guide):
            c, v = embeds[e].T, outputs[g][i].T
            mat1 = mat1 + erase_scale * (v @ c.T)
            mat2 = mat2 + erase_scale * (c @ c.T)
        for p in preserve:
            c, v = embeds[p].T, outputs[p][i].T
            mat1 = mat1 + preserve_scale * (v @ c.T)
            mat2 = mat2 + preserve_scale * (c @ c.T)
        # line 82 inverts in float32 (`mat2.float()`): here in the model's float64, at least float32
        new[names[i]] = mat1 @ torch.inverse(mat2.to(torch.promote_types(mat2.dtype, torch.float32)))
    return new


def official_legacy(pipe, old_texts, new_texts, ret_texts, erase_scale, preserve_scale, lamb):
    """train_erase.py:227-312 (technique 'replace', with_to_k=True), returning the new weights by name."""
    names = [n for n, _ in pipe.unet.named_modules() if n.endswith(("attn2.to_v", "attn2.to_k"))]
    layers = dict(pipe.unet.named_modules())
    projections = [copy.deepcopy(layers[n]) for n in names]
    new_texts = [" " if t == "" else t for t in new_texts]  # lines 214-216
    new = {}
    for layer_num, name in enumerate(names):
        mat1 = lamb * projections[layer_num].weight
        mat2 = lamb * torch.eye(projections[layer_num].weight.shape[1])
        for old_text, new_text in zip(old_texts, new_texts):
            ti = pipe.tokenizer([old_text, new_text], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
            emb = pipe.text_encoder(ti.input_ids)[0]
            f, fn = ti.attention_mask[0].sum().item() - 2, ti.attention_mask[1].sum().item() - 2
            far = max(fn, f)
            old_emb = emb[0][f:len(emb[0]) - max(0, far - f)]
            new_emb = emb[1][fn:len(emb[1]) - max(0, far - fn)]
            value = projections[layer_num](new_emb)
            mat1 = mat1 + erase_scale * (value.unsqueeze(2) @ old_emb.unsqueeze(1)).sum(0)
            mat2 = mat2 + erase_scale * (old_emb.unsqueeze(2) @ old_emb.unsqueeze(1)).sum(0)
        for text in ret_texts:
            ti = pipe.tokenizer([text, text], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
            old_emb, new_emb = pipe.text_encoder(ti.input_ids)[0]
            value = projections[layer_num](new_emb)
            mat1 = mat1 + preserve_scale * (value.unsqueeze(2) @ old_emb.unsqueeze(1)).sum(0)
            mat2 = mat2 + preserve_scale * (old_emb.unsqueeze(2) @ old_emb.unsqueeze(1)).sum(0)
        new[name] = mat1 @ torch.inverse(mat2)
    return new


@pytest.mark.parametrize("tokens", ["last", "last_to_end"])
def test_uce_closed_form_equals_the_official_loops(make_tiny_pipeline, tokens):
    pipe = make_tiny_pipeline()
    pipe.unet.double()  # the official loops in float64 too: the comparison tests the algebra, not round-off
    pipe.text_encoder.double()
    scales = {"erase_scale": 1.0, "preserve_scale": 0.3, "lamb": 0.5}
    with torch.no_grad():
        if tokens == "last":
            want = official_current(pipe, ERASE, GUIDE, PRESERVE, **scales)
        else:
            want = official_legacy(pipe, ERASE, GUIDE, PRESERVE, **scales)
    before = {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}
    info = Uce(UceConfig(tokens=tokens, **scales)).edit(Models.from_pipeline(pipe, device="cpu"), EditSet(ERASE, GUIDE, [0, 0, 0], PRESERVE))
    assert info["layers"] == len(want) > 0
    for n, p in pipe.unet.named_parameters():
        name = n.removesuffix(".weight")
        if name in want:
            assert torch.allclose(p, want[name].to(p.dtype), rtol=1e-6, atol=1e-8), n
            assert not torch.equal(p, before[n])  # the edit moved it
        else:
            assert torch.equal(p, before[n]), n  # nothing else changes
