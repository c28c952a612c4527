"""P4D and MMA on the models with T5 (FLUX: CLIP-L + T5; SD3: CLIP-L, CLIP-G, T5), on the tiny builders.

What is checked, each able to fail:
- P4D: the projected tokens reach EVERY encoder. T5's input at the slot positions is, row for row, T5's view of
  the projected CLIP tokens (`Models.token_tables`: the mean of the T5 pieces of each token's text), and one
  AdamW step moves every encoder's columns of the soft tokens by more than weight decay alone (the loss's
  gradient reaches each encoder).
- MMA: the candidates are scored through every encoder (T5 gets the T5 tokenizer's ids of the candidate
  texts at the pipeline's length), the target and the loss move when only T5's weights change, and so does the
  gradient that proposes the candidates.
- `erase audit --attack p4d` and `--attack mma` run end to end at the quick budget cut to 1-2 steps, through
  the saved models' real encoders, and write their found prompts as a suite.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from erase.audit.attacks import mma, p4d
from erase.cli import main
from erase.models.builder import build_pipeline
from erase.models.core import Models

FAMILIES = {"flux": "tiny-flux", "sd3": "tiny-sd3"}
PROMPT = "a handwritten three"


@pytest.fixture(scope="module", params=list(FAMILIES))
def pipes(request):
    """(family, audited pipeline, original pipeline): two random tiny models of one family."""
    return request.param, build_pipeline(FAMILIES[request.param], seed=1), build_pipeline(FAMILIES[request.param], seed=0)


def t5_of(pipe):
    return pipe.text_encoder_3 if getattr(pipe, "text_encoder_3", None) is not None else pipe.text_encoder_2


def test_p4d_tokens_go_into_every_encoder(pipes):
    family, pipe, ref = pipes
    models = Models.from_pipeline(pipe)
    tables = models.token_tables()
    widths = [t.shape[1] for t in tables]
    assert len(widths) == (2 if family == "flux" else 3)
    seen = []
    hook = t5_of(pipe).encoder.block[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    img = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
    cfg = p4d.P4DSettings(iterations=1)
    try:
        soft0 = p4d.initial_tokens(models, PROMPT, cfg, torch.Generator().manual_seed(1))[0]  # optimise's first draw
        (_, loss, ids, soft1), = list(p4d.optimise(pipe, ref, PROMPT, img, cfg, 0))
    finally:
        hook.remove()
    assert np.isfinite(loss) and len(seen) == 1  # the loss encoded the projected tokens once, T5 included
    t5_rows = tables[-1][ids]
    torch.testing.assert_close(seen[0][0, : len(ids)], t5_rows.to(seen[0].dtype))
    assert len(set(map(tuple, t5_rows.tolist()))) > 1  # not one fixed row (a placeholder): each token's own pieces
    # one AdamW step: beyond weight decay, every encoder's columns moved (each got a gradient)
    step = (soft1.detach() - soft0 * (1 - cfg.lr * cfg.weight_decay)).abs()
    for part in step.split(widths, dim=-1):
        assert part.max() > 0.5 * cfg.lr


def test_mma_scores_candidates_through_every_encoder(pipes):
    family, pipe, _ = pipes
    models = Models.from_pipeline(pipe)
    target = mma.text_features(models, [PROMPT])
    t5_len = 512 if family == "flux" else 256
    assert target.embeds.shape[1] == (t5_len if family == "flux" else 77 + t5_len)
    texts = ["a red numeral", "q p b q z r d z"]
    seen = []
    hook = t5_of(pipe).register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        losses = mma.candidate_losses(models, texts, target)
    finally:
        hook.remove()
    t5_tok = pipe.tokenizer_3 if family == "sd3" else pipe.tokenizer_2
    want = t5_tok(texts, padding="max_length", max_length=t5_len, truncation=True, return_tensors="pt").input_ids
    assert len(seen) == 1 and torch.equal(seen[0].cpu(), want)
    assert losses.shape == (2,) and bool((losses > 0).all())
    ids = mma.control_ids(pipe.tokenizer, mma.initial_control(20, torch.Generator().manual_seed(0)))
    grad = mma.token_gradient(models, ids, target)
    with torch.no_grad():
        t5_of(pipe).get_input_embeddings().weight.mul_(1.5)  # only T5 changes
    try:
        moved = mma.text_features(models, [PROMPT])
        assert not torch.allclose(moved.embeds, target.embeds)
        torch.testing.assert_close(moved.pooled, target.pooled)  # the pooled vectors are CLIP's alone
        assert not torch.allclose(mma.candidate_losses(models, texts, moved), losses)
        assert not torch.allclose(mma.token_gradient(models, ids, target), grad)
        best, loss, _ = mma.search(models, PROMPT, mma.MMASettings(iterations=1, candidates=8, topk=4), ["three"], 0)
    finally:
        with torch.no_grad():
            t5_of(pipe).get_input_embeddings().weight.div_(1.5)
    assert len(pipe.tokenizer(best, add_special_tokens=False).input_ids) == 20 and 0 <= loss <= 3
    assert "three" not in best


@pytest.mark.parametrize("family", list(FAMILIES))
def test_audit_with_p4d_and_mma_end_to_end(family, tmp_path):
    base, erased = tmp_path / "base", tmp_path / "erased"
    build_pipeline(FAMILIES[family], seed=0).save_pretrained(base)
    build_pipeline(FAMILIES[family], seed=1).save_pretrained(erased)
    common = ["audit", "--model", str(erased), "--suite", "prompts/digits/digit3.csv", "--limit", "1", "--steps", "1",
              "--detector", "digits:three", "--concept", "three", "--attack-budget", "quick"]
    # P4D: the original model's UNet is the target; MMA searches the audited model's own encoders
    for attack, steps, extra in (("p4d", "2", ["--reference-model", str(base)]), ("mma", "1", [])):
        out = tmp_path / attack
        assert main([*common, *extra, "--attack", attack, "--attack-steps", steps, "--out", str(out)]) == 0
        res = json.loads((out / "results.json").read_text())
        assert res["metrics"]["n_attacked"] == 1
        assert res["attack"]["budget"] == "quick+custom" and res["attack"]["iterations"] == int(steps)
        record = json.loads((out / "attack.jsonl").read_text().splitlines()[0])
        assert record["adv_prompt"] and 1 <= record["steps"] <= int(steps)  # P4D stops at a flagged render
        found = (out / "attack" / "found.csv").read_text()
        assert record["adv_prompt"] in found
