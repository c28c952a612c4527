"""UnlearnDiffAtk: adversarial prefix tokens found with the erased model itself as the victim.

Zhang et al., "To Generate or Not? Safety-Driven Unlearned Diffusion Models Are Still Easy To
Generate Unsafe Images ... For Now", https://arxiv.org/abs/2310.11868.

Given a target image x_0 of the concept (made by the ORIGINAL model from the same prompt and
seed, or taken from a folder) and its latent z_0, find k real tokens a_1..a_k such that the
erased model, prompted with "[a_1..a_k] prompt", denoises z_0 well:

    min_a  E_{t, eps} || eps - eps_theta(sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps, c([a; prompt]), t) ||^2

The tokens are a relaxed one-hot W (k rows on the probability simplex over the vocabulary,
started uniform). Each step samples real tokens from W (straight-through: the gradient reaches W
through hardtanh, as the authors' TextGrad attacker does), takes an Adam step (lr 0.01, weight
decay 0.1) and projects W back onto the simplex. The attack visits `timesteps` diffusion steps t
(drawn from the sampling schedule); at each it runs `iterations` steps (about 40 in the paper),
then renders the argmax prompt with the row's seed and guidance and judges it: the first success
stops the attack (early stop). The budget per prompt is timesteps x iterations UNet backward passes
plus `timesteps` renders.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from erase.audit.generate import GenSettings, image_size, make_scheduler, row_generators, sample, to_uint8
from erase.audit.suites import PromptRow
from erase.models.soft_prompt import encode_with_slots, tokenize_with_slots


@dataclass(frozen=True)
class UnlearnDiffAtkSettings:
    k: int = 5                 # adversarial prefix tokens
    lr: float = 0.01           # Adam on the relaxed one-hot
    iterations: int = 40       # optimisation steps per visited timestep
    timesteps: int = 5         # timesteps visited; the prompt is judged after each (early stop)
    weight_decay: float = 0.1

    def __post_init__(self):
        for name in ("k", "iterations", "timesteps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr: must be > 0, got {self.lr}")


class _SampleSTE(torch.autograd.Function):
    """Forward: one real token per row, sampled from the relaxed one-hot. Backward: hardtanh(grad)."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        idx = torch.multinomial(w.detach().float().cpu().clamp_min(0), 1, generator=generator).view(-1)
        return F.one_hot(idx, w.shape[-1]).to(w.dtype).to(w.device)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return F.hardtanh(grad), None


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
    special = [pipe.tokenizer.bos_token_id, pipe.tokenizer.eos_token_id]
    w = torch.full((cfg.k, vocab), 1.0 / vocab, dtype=table.dtype, device=table.device, requires_grad=True)
    opt = torch.optim.Adam([w], lr=cfg.lr, weight_decay=cfg.weight_decay)
    ids, mask = tokenize_with_slots(pipe.tokenizer, [row.prompt], cfg.k)
    z0 = encode_latent(pipe, target)
    sched = make_scheduler(pipe, gen.scheduler)
    sched.set_timesteps(gen.steps)
    noiser = DDPMScheduler.from_config(pipe.scheduler.config)
    pick = torch.randperm(len(sched.timesteps), generator=g)[: cfg.timesteps].sort().values
    result: dict = {"success": False, "steps": 0}
    flags = [p.requires_grad for p in (*te.parameters(), *unet.parameters())]
    for p in (*te.parameters(), *unet.parameters()):
        p.requires_grad_(False)
    try:
        for t in sched.timesteps[pick]:
            t = t.reshape(1).to(z0.device)
            for _ in range(cfg.iterations):
                eps = torch.randn(z0.shape, generator=g).to(z0.device, z0.dtype)
                zt = noiser.add_noise(z0, eps, t)  # the training schedule's q(z_t | z_0)
                onehot = _SampleSTE.apply(w, g)
                cond = encode_with_slots(te, ids, mask, onehot @ table)
                pred = unet(zt, t, encoder_hidden_states=cond, return_dict=False)[0]
                loss = F.mse_loss(pred, eps)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    w[:, special] = 0  # the prompt must stay a plain prompt: no BOS/EOS inside
                    w.copy_(project_simplex(w))
                    w[:, special] = 0
                result.update(steps=result["steps"] + 1, loss=float(loss.detach()))
            tokens = w.argmax(-1).detach().cpu()
            image = render(pipe, row, tokens, gen)
            det = detector(to_uint8(image[None]).astype(np.float32) / 255.0)[0]
            result.update(tokens=tokens.tolist(), image=image, detection=det,
                          adv_prompt=pipe.tokenizer.decode(tokens.tolist()) + " " + row.prompt)
            if det["flag"]:
                result["success"] = True
                break
    finally:
        for p, r in zip((*te.parameters(), *unet.parameters()), flags):
            p.requires_grad_(r)
    return result
