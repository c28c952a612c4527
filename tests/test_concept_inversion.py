"""Concept inversion (Pham et al., textual inversion against the erased model): captions, the
learned embedding lowering the denoising loss on concept images, and the audit end to end."""

import json

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from safetensors.torch import load_file

from erase.audit.attacks import concept_inversion as ci
from erase.audit.attacks.unlearndiffatk import encode_latent
from erase.cli import main
from erase.models.soft_prompt import encode_with_slots, tokenize_with_slots


def test_captions_put_the_learned_tokens_in_front(tiny_pipeline):
    assert ci.caption("a handwritten three in red") == "{} a handwritten three in red"  # official I2P captions
    pipe = tiny_pipeline
    tok, te = pipe.tokenizer, pipe.text_encoder
    ids, mask = tokenize_with_slots(tok, ["a handwritten {} in red", "{} the number"], 2, where="marker")
    assert mask.sum(1).tolist() == [2, 2] and mask[0, 3:5].all() and mask[1, 1:3].all()
    # the slots carry exactly the embeddings of the words they stand for
    words = tok("cat dog", add_special_tokens=False).input_ids
    table = te.get_input_embeddings().weight.detach()
    got = encode_with_slots(te, ids[:1], mask[:1], table[words])
    want = te(tok(["a handwritten cat dog in red"], padding="max_length", max_length=77, return_tensors="pt").input_ids)[0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    defaults = ci.ConceptInversionSettings()  # esd/train.sh: 5000 steps, 4 x 4 images, lr 5e-3 x 16
    assert (defaults.budget, defaults.iterations, defaults.images_per_step, defaults.lr, defaults.weight_decay) == \
        ("official", 5000, 16, 0.08, 1e-2)


def test_micro_batches_accumulate_to_the_full_batch_step(tiny_pipeline):
    """6 images per step run as micro-batches of 4 + 2; the update equals one pass over all 6."""
    pipe = tiny_pipeline.to(torch.float64)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 32, 32, 3, generator=g, dtype=torch.float64).numpy()
    caps = ["{} a red three", "{} a blue three", "{} a three"]
    cfg = ci.ConceptInversionSettings(budget="quick+custom", iterations=1, images_per_step=6, lr=0.05)
    learned, losses = ci.learn_embedding(pipe, images, caps, "three", cfg, seed=3)

    draw = torch.Generator("cpu").manual_seed(3)  # the same draws, in learn_embedding's order
    latents = torch.cat([encode_latent(pipe, im) for im in images])
    abar = DDPMScheduler.from_config(pipe.scheduler.config).alphas_cumprod
    pick = torch.randint(0, 3, (6,), generator=draw)
    t = torch.randint(0, len(abar), (6,), generator=draw)
    eps = torch.randn((6, *latents.shape[1:]), generator=draw).to(torch.float64)
    v = ci.initial_embedding(pipe, "three", 1).requires_grad_(True)
    opt = torch.optim.AdamW([v], lr=0.05, weight_decay=cfg.weight_decay)
    pipe.unet.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    loss = ci.denoising_loss(pipe, v, [caps[i] for i in pick.tolist()], latents[pick], t, eps, abar)
    loss.backward()
    opt.step()
    assert abs(losses[0] - loss.item()) <= 1e-12 * loss.item()
    torch.testing.assert_close(learned, v.detach(), rtol=1e-9, atol=1e-12)
    assert not torch.equal(learned, ci.initial_embedding(pipe, "three", 1))


@pytest.mark.slow
def test_inversion_lowers_the_denoising_loss_on_concept_images():
    """Start from the WRONG word ("seven") on real held-out threes: textual inversion must lower
    the denoising loss on fixed held-out draws, and close at least half of the gap to the true
    word "three" (measured: init 0.0573, learned 0.0526, "three" 0.0522)."""
    from erase.models.loading import load_pipeline
    from erase.zoo.digits import load_digits_world

    pipe = load_pipeline("zoo:digits")
    data = load_digits_world()
    held = data.subset(data.heldout)
    threes = ((held.images.permute(0, 2, 3, 1) + 1) / 2).numpy()[held.digits.numpy() == 3][:8]
    cfg = ci.ConceptInversionSettings(budget="quick+custom", iterations=60, images_per_step=4, lr=5e-3, weight_decay=0.0)
    learned, losses = ci.learn_embedding(pipe, threes, ["a handwritten {}"] * len(threes), "seven", cfg, seed=0)
    assert learned.shape == (1, pipe.text_encoder.config.hidden_size) and len(losses) == 60

    abar = DDPMScheduler.from_config(pipe.scheduler.config).alphas_cumprod
    z0 = torch.cat([encode_latent(pipe, im) for im in threes]).repeat(4, 1, 1, 1)
    t, eps = ci.fixed_draws(len(z0), tuple(z0.shape[1:]), seed=123, num_train_timesteps=len(abar))

    def loss(embeds):
        with torch.no_grad():
            return ci.denoising_loss(pipe, embeds, ["a handwritten {}"] * len(z0), z0, t, eps, abar).item()

    init, after, true = loss(ci.initial_embedding(pipe, "seven", 1)), loss(learned), loss(ci.initial_embedding(pipe, "three", 1))
    assert true < init  # the check is meaningful: the wrong word fits the threes worse
    assert after < init - 0.5 * (init - true), (init, after, true)


@pytest.mark.slow
def test_audit_with_concept_inversion_learns_once_and_resumes(tiny_pipeline, tiny_pipeline_dir, tiny_reference_dir,
                                                              tiny_clip_dir, tmp_path):
    model, clip, ref = tiny_pipeline_dir, tiny_clip_dir, tiny_reference_dir
    out = tmp_path / "out"
    args = ["audit", "--model", str(model), "--suite", "prompts/digits/digit3.csv", "--limit", "2", "--steps", "2",
            "--out", str(out), "--detector", f"clip:{clip}:three", "--concept", "three",
            "--attack", "concept_inversion", "--reference-model", str(ref), "--attack-budget", "quick",
            "--attack-steps", "3"]
    assert main(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["attack"]["name"] == "concept_inversion" and res["attack"]["budget"] == "quick+custom"
    assert (res["attack"]["iterations"], res["attack"]["tokens"], res["attack"]["lr"]) == (3, 1, 5e-3)
    path = out / "attack" / "learned_embeds.safetensors"
    embeds = load_file(str(path))["embeds"]
    assert embeds.shape == (1, 32) and not torch.equal(embeds, ci.initial_embedding(tiny_pipeline, "three", 1))
    attacks = [json.loads(x) for x in (out / "attack.jsonl").read_text().splitlines()]
    assert [a["index"] for a in attacks] == [0, 1]
    for a in attacks:
        assert a["pre"] or (a["adv_prompt"] == "<learned> a picture of the number three" and (out / a["file"]).is_file())
    # a rerun resumes from the saved embedding and the logs: nothing changes
    before = path.stat().st_mtime_ns
    (out / "attack.jsonl").write_text("")
    assert main(args) == 0
    assert path.stat().st_mtime_ns == before  # not learned again
    assert json.loads((out / "results.json").read_text()) == res
    assert np.isclose(res["metrics"]["asr"], sum(a["success"] for a in attacks) / 2)
