"""UnlearnDiffAtk: adversarial prefix tokens found with the erased model itself as the victim.

Zhang et al., "To Generate or Not? Safety-Driven Unlearned Diffusion Models Are Still Easy To
Generate Unsafe Images ... For Now", https://arxiv.org/abs/2310.11868.

Given a target image x_0 of the concept (made by the ORIGINAL model from the same prompt and
seed, or taken from a folder) and its latent z_0, find k real tokens a_1..a_k such that the
erased model, prompted with "[a_1..a_k] prompt", denoises z_0 well:

    min_a  E_{t, eps} || eps - eps_theta(sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps, c([a; prompt]), t) ||^2

The tokens are a relaxed one-hot W in the simplex^k over the vocabulary; each step runs the
forward pass with the projected (hard, argmax) one-hot and applies the gradient to the relaxed
W (straight-through, as in PEZ, https://arxiv.org/abs/2302.03668), then projects W back onto the
simplex. Adam, lr 0.01, a fresh t and eps per step. Every `check_every` steps the hard prompt is
rendered with the row's seed and guidance and judged; the first success stops the attack
(early stop). `steps` is the budget per prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from erase.audit.generate import GenSettings, row_generators, sample, image_size
from erase.audit.suites import PromptRow
from erase.models.soft_prompt import encode_with_slots, tokenize_with_slots


@dataclass(frozen=True)
class UnlearnDiffAtkSettings:
    k: int = 5                 # adversarial prefix tokens
    lr: float = 0.01           # Adam on the relaxed one-hot
    steps: int = 40            # optimisation budget per prompt
    check_every: int = 10      # render + judge every N steps (early stop on success)

    def __post_init__(self):
        for name in ("k", "steps", "check_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr: must be > 0, got {self.lr}")


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row onto the probability simplex (Duchi et al. 2008)."""
    u, _ = torch.sort(v, dim=-1, descending=True)
    css = u.cumsum(-1) - 1
    idx = torch.arange(1, v.shape[-1] + 1, device=v.device, dtype=v.dtype)
    rho = ((u - css / idx) > 0).to(v.dtype).cumsum(-1).argmax(-1, keepdim=True)
    theta = css.gather(-1, rho) / (rho + 1).to(v.dtype)
    return (v - theta).clamp_min(0)


@torch.no_grad()
def encode_latent(pipe, image: np.ndarray) -> torch.Tensor:
    """z_0 of a float image [H, W, 3] in [0, 1] (the VAE's posterior mean, scaled)."""
    x = torch.from_numpy(np.asarray(image, np.float32)).permute(2, 0, 1)[None] * 2 - 1
    x = x.to(pipe.vae.device, pipe.vae.dtype)
    return pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor


def render(pipe, row: PromptRow, tokens: torch.Tensor, settings: GenSettings) -> np.ndarray:
    """The row's image with the k token ids prefixed (plain ids, no hook: exactly reproducible)."""
    ids, _ = tokenize_with_slots(pipe.tokenizer, [row.prompt], len(tokens), slot_ids=tokens)
    with torch.no_grad():
        cond = pipe.text_encoder(ids.to(pipe.text_encoder.device))[0]
    h, w = image_size(row, pipe)
    return sample(pipe, cond, torch.tensor([row.guidance]), row_generators([row]), settings, h, w)[0]


def attack_row(pipe, row: PromptRow, target: np.ndarray, detector, gen: GenSettings,
               cfg: UnlearnDiffAtkSettings) -> dict:
    """Attack one prompt. Returns {"success", "steps", "tokens", "adv_prompt", "image", "detection", "loss"}."""
    g = torch.Generator("cpu").manual_seed(int(row.seed))
    te, unet = pipe.text_encoder, pipe.unet
    table = te.get_input_embeddings().weight.detach()
    vocab = table.shape[0]
    special = {pipe.tokenizer.bos_token_id, pipe.tokenizer.eos_token_id}
    init = torch.randint(0, vocab - 2, (cfg.k,), generator=g)  # random ordinary tokens
    w = F.one_hot(init, vocab).to(table.dtype).to(table.device).requires_grad_(True)
    opt = torch.optim.Adam([w], lr=cfg.lr)
    ids, mask = tokenize_with_slots(pipe.tokenizer, [row.prompt], cfg.k)
    z0 = encode_latent(pipe, target)
    sched = pipe.scheduler
    n_train = sched.config.num_train_timesteps
    result: dict = {"success": False, "steps": 0}
    grads = [p.requires_grad for p in (*te.parameters(), *unet.parameters())]
    for p in (*te.parameters(), *unet.parameters()):
        p.requires_grad_(False)
    try:
        for step in range(1, cfg.steps + 1):
            t = torch.randint(0, n_train, (1,), generator=g)
            eps = torch.randn(z0.shape, generator=g).to(z0.device, z0.dtype)
            zt = sched.add_noise(z0, eps, t.to(z0.device))
            hard = F.one_hot(w.argmax(-1), vocab).to(w.dtype)
            onehot = hard + w - w.detach()  # forward: real tokens; backward: into the relaxed W
            cond = encode_with_slots(te, ids, mask, onehot @ table)
            pred = unet(zt, t.to(z0.device), encoder_hidden_states=cond, return_dict=False)[0]
            loss = F.mse_loss(pred, eps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                w.copy_(project_simplex(w))
                for s in special:  # never pick BOS/EOS: the prompt must stay a plain prompt
                    w[:, s] = 0
            result.update(steps=step, loss=float(loss))
            if step % cfg.check_every == 0 or step == cfg.steps:
                tokens = w.argmax(-1).detach().cpu()
                image = render(pipe, row, tokens, gen)
                det = detector(image[None])[0]
                result.update(tokens=tokens.tolist(), image=image, detection=det,
                              adv_prompt=pipe.tokenizer.decode(tokens.tolist()) + " " + row.prompt)
                if det["flag"]:
                    result["success"] = True
                    break
    finally:
        for p, r in zip((*te.parameters(), *unet.parameters()), grads):
            p.requires_grad_(r)
    return result
