"""Parity: one UnlearnDiffAtk step equals a transcription of the official code on a tiny model.

Official repository OPTML-Group/Diffusion-MU-Attack; the transcriptions below follow
- src/attackers/text_grad_.py: `bisection` / `projection` (lines 20-66), `init_opt` (78-79),
  `split_embd` / `construct_embd` with prefix_k (81-94), the attack iteration (210-220),
  `STERandSelect` (240-255);
- src/tasks/classifier_.py: the noise schedule (line 66), `sampled_t` (67-70), `get_loss` (76-87),
  `str2id` (89-93), `id2embedding` (102-106);
- src/tasks/utils/text_encoder.py: `CustomTextEncoder.forward` (token embeddings in, causal mask,
  encoder, final layer norm).
The only change to the transcription is a seeded generator in `multinomial`, so both sides draw
the same tokens. Everything runs in float64 except the official noise coefficients
sqrt(abar_t), sqrt(1 - abar_t), which the official code takes in float32 (the scheduler's
dtype), so the loss and gradient agree to float32 rounding of two scalars (relative 2^-24 each;
we allow 16 times that); the projected iterate agrees to the official bisection's own tolerance
xi = 1e-5.
"""

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, LMSDiscreteScheduler

from erase.audit.attacks.unlearndiffatk import (
    _SampleSTE,
    attack_step,
    official_timesteps,
    project_simplex,
    project_simplex_except,
)

XI = 1e-5  # text_grad_.py `projection(self, curr_var, xi=1e-5)`


def official_bisection(a, eps, xi=1e-5, ub=1):  # text_grad_.py lines 20-56
    pa = torch.clip(a, 0, ub)
    if np.abs(torch.sum(pa).item() - eps) <= xi:
        return pa
    mu_l, mu_u = torch.min(a - 1).item(), torch.max(a).item()
    mu_a = (mu_u + mu_l) / 2
    while np.abs(mu_u - mu_l) > xi:
        mu_a = (mu_u + mu_l) / 2
        gu = torch.sum(torch.clip(a - mu_a, 0, ub)) - eps
        gu_l = torch.sum(torch.clip(a - mu_l, 0, ub)) - eps + 1e-8
        gu_u = torch.sum(torch.clip(a - mu_u, 0, ub)) - eps
        if gu == 0:
            break
        elif gu_l == 0:
            mu_a = mu_l
            break
        elif gu_u == 0:
            mu_a = mu_u
            break
        if gu * gu_l < 0:
            mu_u = mu_a
        elif gu * gu_u < 0:
            mu_l = mu_a
        else:
            raise AssertionError("bisection bracket lost")
    return torch.clip(a - mu_a, 0, ub)


def official_projection(curr_var, xi=1e-5):  # lines 59-66
    curr_var = torch.squeeze(curr_var, dim=0)
    return torch.stack([official_bisection(curr_var[i], eps=1, xi=xi, ub=1) for i in range(curr_var.size(0))]).unsqueeze(0)


class OfficialSTE(torch.autograd.Function):  # STERandSelect, lines 240-255 (+ a seeded generator)
    @staticmethod
    def forward(ctx, input, generator):
        input = torch.squeeze(input, dim=0)
        res = torch.multinomial(input.float(), 1, generator=generator)
        out = F.one_hot(res.view(-1), num_classes=input.size(-1)).to(input.dtype)
        return torch.unsqueeze(out, dim=0)

    @staticmethod
    def backward(ctx, grad_output):
        return F.hardtanh(grad_output).unsqueeze(0), None


def official_text_encoder(te, input_ids, inputs_embeds):  # CustomTextEncoder.forward
    hidden = te.embeddings(inputs_embeds=inputs_embeds)
    n = input_ids.shape[1]
    causal = torch.full((n, n), torch.finfo(hidden.dtype).min, dtype=hidden.dtype)
    cond = torch.arange(n)
    causal.masked_fill_(cond < (cond + 1).view(n, 1), 0)
    out = te.encoder(inputs_embeds=hidden, attention_mask=causal[None, None])
    return te.final_layer_norm(out[0] if isinstance(out, tuple) else out.last_hidden_state)


def official_loss(pipe, x0, t, input_ids, input_embeddings, noise):  # classifier_.py get_loss, lines 76-87
    sched = LMSDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                 num_train_timesteps=1000)
    noised = x0 * (sched.alphas_cumprod[t] ** 0.5).view(-1, 1, 1, 1) + \
        noise * ((1 - sched.alphas_cumprod[t]) ** 0.5).view(-1, 1, 1, 1)
    states = official_text_encoder(pipe.text_encoder, input_ids, input_embeddings)
    pred = pipe.unet(noised, t, encoder_hidden_states=states).sample
    return torch.nn.MSELoss()(noise, pred)


def test_one_attack_step_equals_the_official_step(tiny_pipeline):
    pipe = tiny_pipeline.to(torch.float64)
    pipe.unet.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    tok, k, prompt, t = pipe.tokenizer, 5, "a handwritten three", 330
    table = pipe.text_encoder.get_input_embeddings().weight  # task.all_embeddings
    vocab = table.shape[0]
    g = torch.Generator().manual_seed(0)
    w0 = official_projection(torch.rand(1, k, vocab, generator=g, dtype=torch.float64) ** 8 * 40)
    size = pipe.unet.config.sample_size
    x0 = torch.randn(1, 4, size, size, generator=g, dtype=torch.float64)
    noise = torch.randn(1, 4, size, size, generator=g, dtype=torch.float64)

    # the project's step
    w = w0[0].clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=0.01, weight_decay=0.1)
    abar = DDPMScheduler.from_config(pipe.scheduler.config).alphas_cumprod
    draw = torch.Generator().manual_seed(7)
    loss = attack_step(pipe, w, opt, lambda v: _SampleSTE.apply(v, draw), prompt, x0, noise,
                       torch.tensor([t]), abar, banned=[])

    # the official step (text_grad_.py lines 201-220, prefix_k)
    tok.pad_token = tok.eos_token
    input_ids = tok(prompt, padding="max_length", max_length=tok.model_max_length, return_tensors="pt",
                    truncation=True).input_ids
    orig_prompt_len = int((input_ids == 49407).nonzero(as_tuple=True)[1][0] - 1)
    input_embeddings = F.one_hot(input_ids.view(-1), num_classes=vocab).to(torch.float64)[None] @ table[None]
    sot, mid, _, eot = torch.split(input_embeddings, [1, orig_prompt_len, k, 76 - orig_prompt_len - k], dim=1)
    adv = w0.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([adv], lr=0.01, weight_decay=0.1)
    optimizer.zero_grad()
    adv_one_hot = OfficialSTE.apply(adv, torch.Generator().manual_seed(7))
    adv_input_embeddings = torch.cat([sot, adv_one_hot @ table[None], mid, eot], dim=1)
    off_loss = official_loss(pipe, x0, t, input_ids, adv_input_embeddings, noise)
    adv.grad = torch.autograd.grad(off_loss, [adv])[0]
    optimizer.step()
    adv.data = official_projection(adv).data

    rel = 16 * 2.0**-24  # float32 rounding of the official sqrt(abar_t) coefficients
    assert abs(loss - off_loss.item()) <= rel * abs(off_loss.item())
    torch.testing.assert_close(w.grad, adv.grad[0], rtol=rel, atol=rel * adv.grad.abs().max().item())
    assert (w.detach() - w0[0]).abs().max() > 100 * XI  # the step moved W: the comparison below is not vacuous
    assert (w.detach() - adv.detach()[0]).abs().max() <= XI
    assert torch.allclose(w.detach().sum(-1), torch.ones(k, dtype=torch.float64))


def test_projection_equals_the_official_bisection_and_respects_banned_tokens():
    g = torch.Generator().manual_seed(1)
    v = torch.randn(3, 500, generator=g, dtype=torch.float64) * 0.05 + 0.002
    assert (project_simplex(v) - official_projection(v[None])[0]).abs().max() <= XI
    banned = [0, 7]
    p = project_simplex_except(v, banned)
    keep = [i for i in range(v.shape[1]) if i not in banned]
    assert (p[:, banned] == 0).all()
    assert (p[:, keep] - official_projection(v[None, :, keep])[0]).abs().max() <= XI


def test_timestep_schedule_is_the_official_one():
    n_samples, T = 50, 1000  # classifier_.py lines 67-70
    start = T // n_samples // 2
    assert official_timesteps(50, T) == list(range(start, T, T // n_samples))[:n_samples]
