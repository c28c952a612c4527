"""UnlearnDiffAtk: adversarial prefix tokens found with the erased model itself as the victim.

Zhang et al., "To Generate or Not? Safety-Driven Unlearned Diffusion Models Are Still Easy To
Generate Unsafe Images ... For Now", https://arxiv.org/abs/2310.11868. Follows the official code,
OPTML-Group/Diffusion-MU-Attack: `src/attackers/text_grad_.py` (the attack, class `TextGrad`),
`src/tasks/classifier_.py` (loss, timestep schedule, success check) and
`configs/nudity/text_grad_esd_nudity_classifier.json` (the published budget).

Given a target image x_0 of the concept (made by the ORIGINAL model from the same prompt and
seed, or taken from a folder) and its latent z_0, find k real tokens a_1..a_k such that the
erased model, prompted with "[a_1..a_k] prompt", denoises z_0 well:

    min_a  || eps - eps_theta(sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps, c([a; prompt]), t) ||^2

(classifier_.py `get_loss`, l2 criterion; a fresh eps every iteration). The tokens are a relaxed
one-hot W (k rows on the probability simplex over the vocabulary, started uniform,
text_grad_.py `init_adv`). Each iteration samples one real token per row from W (straight-through:
forward = one-hot of a multinomial draw, backward = hardtanh of the gradient, `STERandSelect`),
takes an Adam step (lr 0.01, weight decay 0.1, `init_opt`) and projects W back onto the simplex
(`projection`). The attack visits the timesteps t = T/(2n), T/(2n) + T/n, ... (n = 50 evenly
spaced training timesteps 10, 30, ..., 990, in increasing order, classifier_.py lines 67-70); at
each it runs 40 iterations, then renders the argmax prompt with the row's seed and guidance and
judges it (text_grad_.py lines 207-233); the first success stops the attack.

Budgets (`--attack-budget`): "official" (the default) is the published one: k = 5 prefix tokens,
50 timesteps x 40 iterations, lr 0.01, weight decay 0.1 -- up to 2000 UNet backward passes and 50
renders per prompt. "quick" visits 5 evenly spaced timesteps (200 backward passes): for demos and
tests; its ASR is NOT comparable with the published tables.

Deliberate deviations from the official code, each with its reason:
- Projection: the exact Euclidean projection onto the simplex (sort-based, Duchi et al. 2008)
  instead of the official bisection on the shift mu (tolerance 1e-5, `bisection`); both compute the
  same projection, the official one up to 1e-5 per entry (tests/test_parity_unlearndiffatk.py).
- The BOS and EOS tokens are excluded from the search (their columns of W are held at 0 and the
  projection runs over the other tokens): an adversarial prompt must stay a plain, printable prompt.
  The official code can pick them and then drops EOS when it decodes the prompt.
- Randomness: the multinomial draws and the noise come from a CPU generator seeded with the row's
  seed (official: the global RNG), so an attack is reproducible row by row.
- Rendering: the adversarial prompt is rendered as text (decoded tokens + the row's prompt,
  re-tokenized, as the official `eval` does) with the audit's own sampler and steps (official: LMS,
  50 steps), so attacked and non-attacked images of one audit come from the same sampler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from erase.audit.attacks.common import check_budget_name, frozen, judge
from erase.audit.generate import GenSettings, image_size, pipeline_models, row_generators, sample
from erase.audit.suites import PromptRow
from erase.models.core import pipeline_modules, vae_shift


@dataclass(frozen=True)
class UnlearnDiffAtkSettings:
    budget: str = "official"
    k: int = 5                 # adversarial prefix tokens (config "k": 5, insertion_location prefix_k)
    lr: float = 0.01           # Adam on the relaxed one-hot (config text_grad.lr)
    iterations: int = 40       # optimisation steps per visited timestep (config "iteration": 40)
    timesteps: int = 50        # evenly spaced timesteps visited (classifier_.py n_samples = 50)
    weight_decay: float = 0.1  # Adam weight decay (config text_grad.weight_decay)

    BUDGETS: ClassVar[dict[str, dict]] = {"official": {}, "quick": {"timesteps": 5}}

    def __post_init__(self):
        check_budget_name(type(self), self.budget)
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


def project_simplex_except(v: torch.Tensor, banned: list[int]) -> torch.Tensor:
    """Projection onto the simplex of the columns not in `banned`; banned columns are 0."""
    if not banned:
        return project_simplex(v)
    keep = torch.ones(v.shape[-1], dtype=torch.bool, device=v.device)
    keep[banned] = False
    out = torch.zeros_like(v)
    out[:, keep] = project_simplex(v[:, keep])
    return out


def official_timesteps(n: int, num_train_timesteps: int = 1000) -> list[int]:
    """n evenly spaced training timesteps, increasing (classifier_.py lines 67-70)."""
    start = num_train_timesteps // n // 2
    return list(range(start, num_train_timesteps, max(num_train_timesteps // n, 1)))[:n]


@torch.no_grad()
def encode_latent(pipe, image: np.ndarray) -> torch.Tensor:
    """z_0 of a float image [H, W, 3] in [0, 1] (the VAE's posterior mean, scaled)."""
    x = torch.from_numpy(np.asarray(image, np.float32)).permute(2, 0, 1)[None] * 2 - 1
    x = x.to(pipe.vae.device, pipe.vae.dtype)
    return (pipe.vae.encode(x).latent_dist.mean - vae_shift(pipe.vae)) * pipe.vae.config.scaling_factor


def adversarial_loss(pipe, prompt: str, onehot: torch.Tensor, z0: torch.Tensor,
                     eps: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """|| eps - eps_theta(z_t, c([onehot @ E; prompt]), t) ||^2 (mean), classifier_.py `get_loss`.

    The k relaxed tokens go in front of the prompt in every text encoder (SDXL: both, each through
    its own table E; FLUX / SD3: the CLIP encoders and T5, which sees each CLIP token as the T5 pieces of
    its text, `erase.models.flow.vocab_map`); for v-prediction models the target is v (`Models.target`),
    for flow models the velocity at z_t = (1 - s) z_0 + s eps with s = t / 1000: the model's own loss."""
    models = pipeline_models(pipe)
    a, s = models.alpha_sigma(t, z0) if models.is_flow else sqrt_abar(alphas_cumprod, t, z0)
    zt = z0 * a + eps * s
    cond = models.encode([prompt], len(onehot), lambda table: onehot @ table)
    pred = models.pred(zt, t, cond, float32=False)
    return F.mse_loss(pred, models.target(z0, eps, t))


def sqrt_abar(alphas_cumprod: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sqrt(abar_t), sqrt(1 - abar_t)) of a DDPM schedule, shaped [B, 1, 1, 1]."""
    abar = alphas_cumprod.to(like.device, like.dtype)[t].view(-1, 1, 1, 1)
    return abar.sqrt(), (1 - abar).sqrt()


def attack_step(pipe, w: torch.Tensor, opt: torch.optim.Optimizer, onehot_fn, prompt: str, z0, eps, t,
                alphas_cumprod, banned: list[int]) -> float:
    """One iteration (text_grad_.py lines 210-220): sample, loss, Adam step, projection. Returns the loss."""
    opt.zero_grad(set_to_none=True)
    loss = adversarial_loss(pipe, prompt, onehot_fn(w), z0, eps, t, alphas_cumprod)
    loss.backward()
    opt.step()
    with torch.no_grad():
        w.copy_(project_simplex_except(w, banned))
    return float(loss.detach())


def adversarial_prompt(tokenizer, tokens: list[int], prompt: str) -> str:
    """The printable prompt: the decoded adversarial tokens, then the row's own prompt."""
    return tokenizer.decode(tokens).strip() + " " + prompt


def render(pipe, row: PromptRow, prompt: str, settings: GenSettings) -> np.ndarray:
    """The row's image (seed, guidance, size) for another prompt text, through the plain pipeline."""
    with torch.no_grad():
        cond = pipeline_models(pipe).encode([prompt])
    h, w = image_size(row, pipe)
    return sample(pipe, cond, torch.tensor([row.guidance]), row_generators([row], pipe), settings, h, w)[0]


def attack_row(pipe, row: PromptRow, target: np.ndarray, detector, gen: GenSettings,
               cfg: UnlearnDiffAtkSettings) -> dict:
    """Attack one prompt. Returns {"success", "steps", "tokens", "adv_prompt", "image", "detection", "loss", "t"}."""
    g = torch.Generator("cpu").manual_seed(int(row.seed))
    table = pipe.text_encoder.get_input_embeddings().weight
    banned = [pipe.tokenizer.bos_token_id, pipe.tokenizer.eos_token_id]
    w = torch.full((cfg.k, table.shape[0]), 1.0 / table.shape[0], dtype=table.dtype, device=table.device)
    w = project_simplex_except(w, banned).requires_grad_(True)
    opt = torch.optim.Adam([w], lr=cfg.lr, weight_decay=cfg.weight_decay)
    z0 = encode_latent(pipe, target)
    abar = DDPMScheduler.from_config(pipe.scheduler.config).alphas_cumprod
    result: dict = {"success": False, "steps": 0}
    with frozen(*(getattr(pipe, n) for n in pipeline_modules(pipe))):
        for t_int in official_timesteps(cfg.timesteps, len(abar)):
            t = torch.tensor([t_int], device=z0.device)
            for _ in range(cfg.iterations):
                eps = torch.randn(z0.shape, generator=g).to(z0.device, z0.dtype)
                loss = attack_step(pipe, w, opt, lambda w_: _SampleSTE.apply(w_, g), row.prompt, z0, eps, t, abar,
                                   banned)
                result.update(steps=result["steps"] + 1, loss=loss)
            tokens = w.argmax(-1).detach().cpu().tolist()
            prompt = adversarial_prompt(pipe.tokenizer, tokens, row.prompt)
            image = render(pipe, row, prompt, gen)
            det = judge(detector, image)
            result.update(tokens=tokens, image=image, detection=det, adv_prompt=prompt, t=t_int)
            if det["flag"]:
                result["success"] = True
                break
    return result
