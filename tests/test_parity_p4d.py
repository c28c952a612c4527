"""Parity: P4D's optimisation equals a transcription of the official code on a tiny model.

Official repository joycenerd/P4D; the transcriptions below follow
- prompt_optimization/optimize_n.py: `initialize_prompt` (lines 21-47), `nn_project` (68-96, with
  sentence_transformers' `semantic_search(top_k=1, score_function=dot_score)` on `normalize_embeddings`
  written out: the arg-max of the cosine), and `optimize` (122-249: the latents, the projection, the
  padded embeddings, the noise/timestep draws, both UNet passes, the MSE, the gradient of the
  projection handed to the soft embeddings, AdamW);
- model/p4dn/modified_stable_diffusion_pipeline.py: `_encode_embeddings` (lines 68-115: token
  embeddings in, position embeddings, causal mask, encoder, final layer norm) and `_new_encode_prompt`
  (126-186: the target prompt through the ORIGINAL text encoder);
- prompt_optimization/optimize_k.py: `initialize_prompt` (lines 21-54) and the gradient mask (254-256).
The erased model here erases its UNet only (the original's text encoder, another UNet), the case in
which the official's use of the ORIGINAL text encoder for the adversarial tokens and ours of the
audited model's coincide. Three marked substitutions in the transcription, each a documented
deviation (erase/audit/attacks/p4d.py): the pad id after EOS (official 0, here the tokenizer's), the
VAE input range ([-1, 1], official [0, 1]) and the draws the official takes from the global RNG
(here `torch.manual_seed(seed + 1)`, the generator our side draws them from).
Both sides run in float64 with the official's float32 MSE; they agree to float64 round-off through
a float32 loss (rtol 1e-5 on the loss, 1e-4 on the soft embeddings after 3 AdamW steps of lr 0.1).
"""

import copy

import numpy as np
import torch
import torch.nn.functional as F

from erase.audit.attacks.p4d import P4DSettings, initial_tokens, optimise
from erase.models.core import Models

SEED, PROMPT, N_TOKENS, STEPS = 11, "a handwritten three", 16, 3


def text_model(te):
    """`text_encoder.text_model` (transformers 5 folds it into CLIPTextModel itself)."""
    return getattr(te, "text_model", te)


def official_encode_embeddings(te, prompt_ids, prompt_embeddings):  # _encode_embeddings, lines 68-99
    te = text_model(te)
    hidden = te.embeddings(inputs_embeds=prompt_embeddings)
    n = prompt_ids.shape[1]
    causal = torch.full((n, n), torch.finfo(hidden.dtype).min, dtype=hidden.dtype)
    causal = torch.triu(causal, diagonal=1)
    out = te.encoder(inputs_embeds=hidden, attention_mask=causal[None, None])
    return te.final_layer_norm(out[0] if isinstance(out, tuple) else out.last_hidden_state)


def official_nn_project(curr_embeds, embedding_layer):  # lines 68-96
    bsz, seq_len, emb_dim = curr_embeds.shape
    q = F.normalize(curr_embeds.reshape(-1, emb_dim), dim=-1)
    corpus = F.normalize(embedding_layer.weight, dim=-1)
    nn_indices = (q @ corpus.T).topk(1, dim=1).indices.reshape(bsz, seq_len)  # semantic_search top_k=1
    return embedding_layer(nn_indices), nn_indices


def official_run(orig, erased, target_img, seed, steps):
    """optimize_n.py `optimize` for `steps` iterations, batch 1, no filter. Returns [(loss, ids, prompt_embeds)]."""
    tokenizer, token_embedding = orig.tokenizer, text_model(orig.text_encoder).embeddings.token_embedding
    generator = torch.Generator().manual_seed(seed)            # run_p4dn.py line 223: gen.manual_seed(seed)
    torch.manual_seed(seed + 1)                                # SUBSTITUTION: the global RNG's state
    # initialize_prompt, lines 21-47
    prompt_ids = torch.randint(len(tokenizer.get_vocab()), (1, N_TOKENS))
    prompt_embeds = token_embedding(prompt_ids).detach()
    prompt_embeds.requires_grad = True
    dummy_ids = tokenizer.encode(" ".join(["<|startoftext|>"] * N_TOKENS))[1:-1]
    dummy_ids = [i if i != 49406 else -1 for i in dummy_ids]
    dummy_ids = [49406] + dummy_ids + [49407]
    dummy_ids += [tokenizer.pad_token_id] * (77 - len(dummy_ids))  # SUBSTITUTION: official pads with 0
    dummy_ids = torch.tensor([dummy_ids])
    tmp_dummy_ids = copy.deepcopy(dummy_ids)
    tmp_dummy_ids[tmp_dummy_ids == -1] = 0
    dummy_embeds = token_embedding(tmp_dummy_ids).detach()
    input_optimizer = torch.optim.AdamW([prompt_embeds], lr=0.1, weight_decay=0.1)
    with torch.no_grad():  # lines 137-144
        curr_images = torch.from_numpy(target_img).permute(2, 0, 1)[None].to(torch.float64)
        curr_images = curr_images * 2 - 1                      # SUBSTITUTION: the VAE's [-1, 1]
        all_latents = orig.vae.encode(curr_images).latent_dist.sample() * orig.vae.config.scaling_factor
    out = []
    for _ in range(steps):  # lines 150-249
        projected_embeds, nn_indices = official_nn_project(prompt_embeds, token_embedding)
        tmp_embeds = copy.deepcopy(prompt_embeds)
        tmp_embeds.data = projected_embeds.data
        tmp_embeds.requires_grad = True
        padded_embeds = copy.deepcopy(dummy_embeds)
        padded_embeds[:, 1 : N_TOKENS + 1] = tmp_embeds
        perm = torch.randperm(len(all_latents))
        latents = all_latents[perm[:1]]
        noise = torch.randn(latents.shape, generator=generator)  # float32, as the official draws it
        timesteps = torch.randint(0, 1000, (1,)).long()
        noisy_latents = orig.scheduler.add_noise(latents, noise, timesteps)
        with torch.no_grad():
            ids = tokenizer(PROMPT, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
            input_text_embeddings = orig.text_encoder(ids)[0]
        padded_text_embeddings = official_encode_embeddings(orig.text_encoder, dummy_ids, padded_embeds)
        target_model_pred = orig.unet(noisy_latents, timesteps, encoder_hidden_states=input_text_embeddings).sample
        padded_model_pred = erased.unet(noisy_latents, timesteps, encoder_hidden_states=padded_text_embeddings).sample
        loss = F.mse_loss(padded_model_pred.float(), target_model_pred.float(), reduction="mean")
        prompt_embeds.grad, = torch.autograd.grad(loss, [tmp_embeds])
        input_optimizer.step()
        input_optimizer.zero_grad()
        out.append((loss.item(), nn_indices[0].clone(), prompt_embeds.detach()[0].clone()))
    return out


def _models(make_tiny_pipeline):
    orig = make_tiny_pipeline(0).to(torch.float64)
    erased = make_tiny_pipeline(0).to(torch.float64)
    erased.unet = make_tiny_pipeline(1).unet.to(torch.float64)  # a UNet-only erasure
    for p in (orig, erased):
        for m in (p.unet, p.text_encoder, p.vae):
            m.requires_grad_(False)
    size = orig.unet.config.sample_size * orig.vae_scale_factor
    target = np.random.default_rng(0).random((size, size, 3)).astype(np.float32)
    return orig, erased, target


def test_p4d_n_iterations_equal_the_official_ones(make_tiny_pipeline):
    orig, erased, target = _models(make_tiny_pipeline)
    cfg = P4DSettings(budget="quick", iterations=STEPS)
    ours = [(loss, ids.clone(), soft.detach().clone()) for _, loss, ids, soft in optimise(erased, orig, PROMPT, target, cfg, SEED)]
    official = official_run(orig, erased, target, SEED, STEPS)
    assert len(ours) == len(official) == STEPS
    moved = (official[-1][2] - official[0][2]).abs().max()
    assert moved > 1e-3  # the soft embeddings moved: the comparison is not vacuous
    for (loss, ids, soft), (off_loss, off_ids, off_soft) in zip(ours, official):
        assert torch.equal(ids, off_ids)
        assert abs(loss - off_loss) <= 1e-5 * abs(off_loss)
        torch.testing.assert_close(soft, off_soft, rtol=1e-4, atol=1e-4 * off_soft.abs().max().item())
    assert len({round(x[0], 12) for x in official}) == STEPS  # fresh draws each iteration


def test_p4d_k_layout_and_gradient_mask_equal_the_official(make_tiny_pipeline):
    pipe = make_tiny_pipeline(0)
    models = Models.from_pipeline(pipe)
    tokenizer, token_embedding = pipe.tokenizer, text_model(pipe.text_encoder).embeddings.token_embedding
    prompt, every_k = "the numeral 3 written by hand in red ink", 3
    # optimize_k.py initialize_prompt, lines 21-46 (global RNG for the random tokens)
    text_id = tokenizer.encode(prompt)[1:-1]
    prompt_len = int(len(text_id) / every_k) + 1
    torch.manual_seed(5)
    prompt_ids = torch.randint(len(tokenizer.get_vocab()), (1, len(text_id) + prompt_len))
    chosen_idx = np.array([i for i in range(len(text_id) + prompt_len) if i % (every_k + 1) != 0])
    target_embedding = token_embedding(torch.tensor(text_id))
    prompt_embeds = token_embedding(prompt_ids).detach()
    for idx, i in enumerate(chosen_idx):
        prompt_embeds[0][i] = target_embedding[idx]
    soft, free = initial_tokens(models, prompt, P4DSettings(variant="k"), torch.Generator().manual_seed(5))
    assert torch.equal(soft, prompt_embeds[0])
    assert sorted(np.flatnonzero(~free.numpy()).tolist()) == chosen_idx.tolist()  # lines 254-256 zero these
