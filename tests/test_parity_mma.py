"""Parity: MMA-Diffusion's text attack equals a transcription of the official code on a tiny model.

Official repository cure-lab/MMA-Diffusion, src/textual_attack.py; the transcriptions below follow
`CosineSimilarityLoss` (lines 28-47), `token_gradient` (52-110; the modified CLIPTextModel forward it
calls takes the summed token + position embeddings: encoder with the causal mask, final layer norm,
the state at the arg-max id = EOS), `logits` (114-127), `sample_control` (130-158),
`SDattack.get_filtered_cands` (182-202) and `step` (205-247), and `main`'s banned-token set (348-357).
Two marked substitutions: the banned set is passed in (official: `torch.load("tokens_to_remove_set.pt")`)
and the global RNG is seeded as our generator is (`torch.manual_seed(seed)`). The one deliberate
deviation (erase/audit/attacks/mma.py) is checked as such: the official's gradient row i belongs
to position i of [BOS, c_1 .. c_19], so its row i + 1 is our row i.
Everything runs in float64; gradients and losses agree to 1e-9 relative.
"""

import numpy as np
import torch
import torch.nn.functional as F

from erase.audit.attacks.mma import (
    MMASettings,
    banned_tokens,
    candidate_losses,
    control_ids,
    filter_candidates,
    initial_control,
    mma_step,
    sample_control,
    token_gradient,
)
from erase.models.core import Models

TARGET = "a handwritten three in red ink"


def text_model(te):
    return getattr(te, "text_model", te)  # transformers 5 folds text_model into CLIPTextModel


def official_cos_loss(x, y, reduction="mean"):  # lines 28-47
    loss = 1 - F.cosine_similarity(x, y, dim=1, eps=1e-6)
    return loss.mean() if reduction == "mean" else loss


def official_modified_forward(te, input_ids, input_embed):  # the modified CLIPTextModel.forward
    tm = text_model(te)
    n = input_ids.shape[1]
    causal = torch.triu(torch.full((n, n), torch.finfo(input_embed.dtype).min, dtype=input_embed.dtype), diagonal=1)
    out = tm.encoder(inputs_embeds=input_embed, attention_mask=causal[None, None])
    last = tm.final_layer_norm(out[0] if isinstance(out, tuple) else out.last_hidden_state)
    return last[torch.arange(last.shape[0]), input_ids.to(torch.int).argmax(dim=-1)]


def official_token_gradient(model, tokenizer, control, target_embeddings):  # lines 52-110
    input_ids = tokenizer(control, padding="max_length", max_length=77, return_tensors="pt", truncation=True)["input_ids"]
    embed_weights = text_model(model).embeddings.token_embedding.weight
    control_length = 20
    one_hot = torch.zeros(control_length, embed_weights.shape[0], dtype=embed_weights.dtype)
    one_hot.scatter_(1, input_ids[0][:control_length].unsqueeze(1),
                     torch.ones(one_hot.shape[0], 1, dtype=embed_weights.dtype))
    one_hot.requires_grad_()
    input_embeds = (one_hot @ embed_weights).unsqueeze(0)
    embeds = text_model(model).embeddings.token_embedding(input_ids)
    full_embeds = torch.cat([input_embeds, embeds[:, control_length:]], dim=1)
    pos_embeds = text_model(model).embeddings.position_embedding(torch.arange(0, 77)).unsqueeze(0)
    embeddings = official_modified_forward(model, input_ids, full_embeds + pos_embeds)
    loss = official_cos_loss(embeddings, target_embeddings)
    loss.backward()
    return one_hot.grad.clone()


def official_pooler(model, tokenizer, texts):  # `logits`, lines 114-127
    ids = tokenizer(texts, padding="max_length", max_length=77, return_tensors="pt", truncation=True)["input_ids"]
    return model(input_ids=ids)["pooler_output"]


def official_sample_control(grad, batch_size, topk, tokenizer, control_str, tokens_to_remove_set):  # lines 130-158
    for input_id in set(tokens_to_remove_set):  # SUBSTITUTION: the set is an argument
        grad[:, input_id] = np.inf
    top_indices = (-grad).topk(topk, dim=1).indices
    tokens = tokenizer.tokenize(control_str)
    control_toks = torch.Tensor(tokenizer.convert_tokens_to_ids(tokens)).type(torch.int64)
    original_control_toks = control_toks.repeat(batch_size, 1)
    new_token_pos = torch.arange(0, len(control_toks), len(control_toks) / batch_size).type(torch.int64)
    new_token_val = torch.gather(top_indices[new_token_pos], 1, torch.randint(0, topk, (batch_size, 1)))
    return original_control_toks.scatter_(1, new_token_pos.unsqueeze(-1), new_token_val)


def official_filtered_cands(tokenizer, control_cand, curr_control):  # lines 182-202
    cands, count = [], 0
    for i in range(control_cand.shape[0]):
        decoded = tokenizer.convert_ids_to_tokens(control_cand[i])
        decoded_str = "".join(decoded).replace("</w>", " ")[:-1]
        if decoded_str != curr_control and len(tokenizer(decoded_str, add_special_tokens=False).input_ids) == len(control_cand[i]):
            cands.append(decoded_str)
        else:
            count += 1
    return cands + [cands[-1]] * (len(control_cand) - len(cands))


def _setup(make_tiny_pipeline):
    pipe = make_tiny_pipeline(0).to(torch.float64)
    pipe.text_encoder.requires_grad_(False)
    models = Models.from_pipeline(pipe, weight_dtype=torch.float64)
    with torch.no_grad():
        target = official_pooler(pipe.text_encoder, pipe.tokenizer, TARGET)
    control = initial_control(20, torch.Generator().manual_seed(3))
    return pipe, models, target, control


def test_target_and_gradient_equal_the_official_up_to_the_documented_row_shift(make_tiny_pipeline):
    pipe, models, target, control = _setup(make_tiny_pipeline)
    torch.testing.assert_close(models.pooled([TARGET]), target, rtol=1e-12, atol=1e-12)
    ids = control_ids(pipe.tokenizer, control)
    assert len(ids) == 20 and len(control.split()) == 20
    ours = token_gradient(models, ids, target)
    official = official_token_gradient(pipe.text_encoder, pipe.tokenizer, control, target)
    assert official.abs().max() > 0
    # official row i + 1 is position i + 1 of the padded ids = control token i (row 0 is BOS's)
    torch.testing.assert_close(ours[:19], official[1:20], rtol=1e-9, atol=1e-9 * official.abs().max().item())
    assert not torch.allclose(ours[:19], official[:19])  # the shift is real: unshifted rows differ


def test_candidates_filter_losses_and_step_equal_the_official(make_tiny_pipeline):
    pipe, models, target, control = _setup(make_tiny_pipeline)
    tok = pipe.tokenizer
    banned = banned_tokens(tok, ["three", "3"])
    ids = control_ids(tok, control)
    grad = token_gradient(models, ids, target)
    grad = grad / grad.norm(dim=-1, keepdim=True)
    batch, topk = 64, 32
    ours = sample_control(grad, ids, batch, topk, banned, torch.Generator().manual_seed(9))
    torch.manual_seed(9)  # SUBSTITUTION: the global RNG seeded as our generator
    official = official_sample_control(grad.clone(), batch, topk, tok, control, banned)
    assert torch.equal(ours, official)
    assert not set(ours.flatten().tolist()) & (set(banned) - set(ids.tolist()))  # no banned token is ever put in
    cands = filter_candidates(tok, ours, control)
    assert cands == official_filtered_cands(tok, official, control)
    with torch.no_grad():
        off_loss = official_cos_loss(official_pooler(pipe.text_encoder, tok, cands), target, reduction=None)
    torch.testing.assert_close(candidate_losses(models, cands, target), off_loss, rtol=1e-9, atol=1e-12)
    # SDattack.step: the arg-min candidate becomes the control
    nxt, loss = mma_step(models, control, target, MMASettings(candidates=batch, topk=topk), banned,
                         torch.Generator().manual_seed(9))
    assert nxt == cands[int(off_loss.argmin())] and abs(loss - off_loss.min().item()) <= 1e-12
    assert loss < official_cos_loss(official_pooler(pipe.text_encoder, tok, control), target).item()


def test_banned_tokens_are_the_officials_construction():
    from erase.tokenizer import clip_tokenizer

    tok = clip_tokenizer()
    words = ["three", "nud"]
    official = set()
    for word in words:  # main, lines 349-355
        for token, token_id in tok.get_vocab().items():
            if word in token:
                official.add(token_id)
    assert set(banned_tokens(tok, words)) == official | {tok.bos_token_id, tok.eos_token_id}


def test_p4d_and_mma_go_through_both_sdxl_encoders():
    """SDXL: the found tokens enter both text encoders (P4D: soft embeddings side by side; MMA: both
    encoders' pooled embeddings, the one-hot shared), and the target moves when either encoder changes."""
    from erase.audit.attacks import mma, p4d
    from erase.models.builder import build_pipeline

    pipe, ref = build_pipeline("tiny-sdxl", seed=0), build_pipeline("tiny-sdxl", seed=1)
    models = Models.from_pipeline(pipe)
    widths = [w.shape[1] for w in models.embedding_tables()]
    pooled = models.pooled(["a handwritten three"])
    assert pooled.shape == (1, widths[0] + pipe.text_encoder_2.config.projection_dim)
    ids = control_ids(pipe.tokenizer, initial_control(20, torch.Generator().manual_seed(0)))
    grad = token_gradient(models, ids, pooled)
    with torch.no_grad():
        pipe.text_encoder_2.get_input_embeddings().weight.mul_(1.5)  # only encoder 2 changes
    assert not torch.allclose(token_gradient(models, ids, pooled), grad)
    best, loss, _ = mma.search(models, "a handwritten three", MMASettings(iterations=1, candidates=8, topk=4), ["three"], 0)
    assert len(pipe.tokenizer(best, add_special_tokens=False).input_ids) == 20 and 0 <= loss <= 2
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    img = np.random.default_rng(0).random((size, size, 3)).astype(np.float32)
    steps = list(p4d.optimise(pipe, ref, "a handwritten three", img, p4d.P4DSettings(iterations=1), 0))
    assert steps[0][3].shape == (16, sum(widths)) and np.isfinite(steps[0][1])
