"""`Models`: everything objectives, samplers and attacks compute with, for every supported architecture.

Architecture awareness lives here and nowhere else. `Models.from_pipeline(pipe)` reads from the
pipeline what differs between families, and the helpers below turn it into the same calls:

| | SD-1.x | SD-2.x | SDXL |
|---|---|---|---|
| pipeline | StableDiffusionPipeline | StableDiffusionPipeline | StableDiffusionXLPipeline |
| text encoders | CLIP ViT-L | OpenCLIP ViT-H (diffusers folders already drop its last layer) | CLIP ViT-L + OpenCLIP bigG (with projection) |
| `encode(prompts)` | last hidden state [B, 77, 768] | last hidden state [B, 77, 1024] | `Cond`: both encoders' PENULTIMATE hidden states concatenated [B, 77, 2048] + encoder 2's pooled projection [B, 1280] |
| UNet extras | none | none | `added_cond_kwargs`: pooled text embedding and `add_time_ids` (original size, crop top-left, target size) |
| prediction type | epsilon | v_prediction (768-v) or epsilon (base) | epsilon |

and the flow-matching transformers (erase/models/flow.py has their helpers and the derivations):

| | FLUX.1 (dev, schnell) | SD3 / SD3.5 |
|---|---|---|
| pipeline | FluxPipeline | StableDiffusion3Pipeline |
| denoiser (`unet` here, `transformer` in the pipeline) | FluxTransformer2DModel | SD3Transformer2DModel |
| text encoders | CLIP ViT-L (pooled only) + T5-XXL (sequence, 512 tokens) | CLIP ViT-L + OpenCLIP bigG (penultimate states + pooled projections) + T5-XXL (256 tokens) |
| `encode(prompts)` | `Cond`: T5 states [B, 512, 4096] + CLIP pooled [B, 768] | `Cond`: [CLIP-L ; CLIP-G] states padded to 4096, then T5, along the sequence [B, 333, 4096] + both pooled [B, 2048] |
| transformer extras | latents packed 2x2 into tokens, image/text position ids, timestep / 1000, the guidance embedding (FLUX.1-dev: 3.5) | none (timestep as is) |
| prediction | velocity v = eps - x0 | velocity v = eps - x0 |
| guidance | distilled: one pass with the guidance embedding (no CFG) | classifier-free guidance |

Prediction types. With x_t = alpha_t x_0 + sigma_t eps (alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t)),
an epsilon model predicts eps and a v-prediction model predicts v = alpha_t eps - sigma_t x_0.
`pred` returns the UNet's output as it is (eps or v); `target(x0, noise, t)` is what a denoising
loss regresses it on (the noise, or `scheduler.get_velocity(x0, noise, t)`); `to_eps` / `to_x0`
convert a prediction at a fixed x_t. A denoising loss ||target - pred||^2 is then each model's own
training loss (for v: ||v - v_theta||^2 = ||eps - eps_theta||^2 / alpha_t^2 at the same x_t).

Objectives whose target is a combination of predictions (ESD: eps_u - eta (eps_c - eps_u); concept
ablation: the anchor's prediction) need no change under v-prediction: at a fixed x_t the map from
an eps prediction to the v prediction,

    v(eps) = alpha_t eps - sigma_t x0(eps),  x0(eps) = (x_t - sigma_t eps) / alpha_t
           = eps / alpha_t - (sigma_t / alpha_t) x_t,

is AFFINE in eps. An affine map commutes with any combination whose coefficients sum to 1
(ESD: (1 + eta) - eta = 1): v(sum_i c_i eps_i) = sum_i c_i v(eps_i). So ESD's target computed from
the v predictions IS the v of ESD's eps target, and ||v_theta - v_target||^2 = ||eps_theta - eps_target||^2 / alpha_t^2:
the same minimiser, ESD's objective in the model's own parameterisation (tests/test_parity_vpred.py).

Flow matching (FLUX, SD3): x_t = (1 - s) x0 + s eps with s = t / 1000, where t is the scheduler's timestep
(`FlowMatchEulerDiscreteScheduler.timesteps`, s its sigma) and the prediction is the velocity v = eps - x0.
`target` is v, `to_eps` = x_t + (1 - s) v, `to_x0` = x_t - s v; training draws t as diffusers' flux/sd3
training examples do (`train_timesteps`). ESD's target needs no change for the same reason as under
v-prediction: at a fixed x_t, v(eps) = (eps - x_t) / (1 - s) is affine in eps (the derivation is in
erase/models/flow.py; tests/test_parity_flow.py checks it in float64).

Sampling: real SDXL ships an EulerDiscreteScheduler; erase's own loops (erase/models/sampling.py,
the audit's default `ddim`) build a DDIMScheduler from the pipeline's scheduler config (same betas,
prediction type and timestep spacing), which is what `StableDiffusionXLPipeline` does when given
`DDIMScheduler.from_config(pipe.scheduler.config)`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from erase.models.soft_prompt import run_text_encoder, tokenize_with_slots


@dataclass
class Cond:
    """Conditioning with extras (SDXL): cross-attention states [B, L, D] and the pooled text embedding [B, P].

    It behaves like the conditioning tensor where objectives and samplers use one:
    `torch.cat([uncond, cond])`, `uncond.expand_as(cond)`, `len(cond)`, `cond.shape`, `.to(...)`.
    The size/crop ids are not stored: `Models.pred` derives them from the latents' size, as the
    SDXL pipeline does by default (original size = target size = the image size, crop (0, 0)).
    """

    embeds: Tensor
    pooled: Tensor

    @property
    def shape(self) -> torch.Size:
        return self.embeds.shape

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def to(self, *args: Any, **kwargs: Any) -> Cond:
        return Cond(self.embeds.to(*args, **kwargs), self.pooled.to(*args, **kwargs))

    def detach(self) -> Cond:
        return Cond(self.embeds.detach(), self.pooled.detach())

    def expand_as(self, other: Cond) -> Cond:
        return self.expand(len(other))

    def expand(self, b: int, *_: int) -> Cond:
        return Cond(self.embeds.expand(b, -1, -1), self.pooled.expand(b, -1))

    def __getitem__(self, index: Any) -> Cond:
        return Cond(self.embeds[index], self.pooled[index])

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        """`torch.cat` of conditionings along the batch (the only torch function a Cond takes part in)."""
        kwargs = kwargs or {}
        if func is torch.cat:
            items, dim = args[0], kwargs.get("dim", args[1] if len(args) > 1 else 0)
            if dim != 0 or not all(isinstance(c, Cond) for c in items):
                raise TypeError("Cond: torch.cat joins conditionings along the batch only (dim 0)")
            return Cond(torch.cat([c.embeds for c in items]), torch.cat([c.pooled for c in items]))
        return NotImplemented


Conditioning = Tensor | Cond
# Embeddings for soft-prompt slots: one tensor (several encoders: their embeddings side by side,
# split by width), one tensor per encoder, or a function of an encoder's token-embedding table
# (e.g. `lambda W: onehot @ W`: the same relaxed tokens in every encoder).
SlotEmbeds = Tensor | Sequence[Tensor] | Callable[[Tensor], Tensor] | None


@dataclass
class Models:
    """Everything an objective computes with, built by the trainer (`Models.from_pipeline`).

    `unet` / `text_encoder` are the trainable modules (possibly peft- or DDP-wrapped); call them
    through `pred` and `encode`. Inside `with models.original():` the same calls compute the
    ORIGINAL weights (LoRA: adapter disabled; partial training: the trained tensors swapped with
    saved originals; full training: a frozen copy), always under `torch.no_grad()`.
    `text_encoder` is CLIP ViT-L in every family; SDXL's second text encoder (`text_encoder_2`,
    OpenCLIP bigG) is frozen unless the trainer trains it (parameter sets "text_encoder_2...").
    """

    unet: nn.Module
    text_encoder: nn.Module
    vae: Any  # diffusers AutoencoderKL
    tokenizer: Any  # CLIPTokenizer
    noise_scheduler: Any  # DDPMScheduler with the pipeline's training schedule and prediction type
    device: torch.device
    weight_dtype: torch.dtype = torch.float32
    original: Callable[[], AbstractContextManager[None]] = field(default=contextlib.nullcontext)
    # The mean of a tensor over the run's processes, equal on every process (the trainer sets it:
    # erase/train/engines.py; one process: the tensor itself). A collective: every process calls it
    # equally often. AdvUnlearn averages its attack's gradients with it, so all processes fit one attack.
    process_mean: Callable[[Tensor], Tensor] = field(default=lambda x: x)
    text_encoder_2: nn.Module | None = None  # SDXL: OpenCLIP bigG with projection (frozen unless trained)
    tokenizer_2: Any = None
    zero_uncond: bool = False  # SDXL's force_zeros_for_empty_prompt: the unconditional input is zeros
    family: str = "sd"  # "sd" (SD-1.x, SD-2.x, SDXL: a UNet), or the flow-matching "flux" / "sd3" (a transformer)
    text_encoder_3: nn.Module | None = None  # SD3's T5 (FLUX's T5 is text_encoder_2)
    tokenizer_3: Any = None
    guidance_embed: float = 3.5  # FLUX.1-dev's guidance embedding in training forwards (diffusers' examples: 3.5)
    max_sequence_length: int = 512  # T5 tokens (FluxPipeline 512, StableDiffusion3Pipeline 256)
    timestep_sampling: str = "uniform"  # flow: "uniform" (FLUX example's default) or "logit_normal" (SD3's)

    @classmethod
    def from_pipeline(cls, pipe: Any, device: torch.device | str | None = None, weight_dtype: torch.dtype = torch.float32,
                      original: Callable[[], AbstractContextManager[None]] | None = None,
                      train_text_encoder_2: bool = False) -> Models:
        """`Models` of a diffusers StableDiffusionPipeline or StableDiffusionXLPipeline.

        The training schedule is a DDPMScheduler from the pipeline's scheduler config (the same betas
        and prediction type, whatever sampler the pipeline ships). SDXL's second text encoder is
        frozen and moved to `device` in `weight_dtype` (`train_text_encoder_2`: left as the trainer set it); a VAE that asks for it (`force_upcast`: SDXL's
        overflows in float16) runs in float32, as diffusers' SDXL pipelines upcast it; the other
        modules are used where they are.
        """
        from diffusers import DDPMScheduler

        from erase.models.family import family_of

        family = family_of(pipe)
        if family.flow:
            from erase.models.flow import flow_models

            return flow_models(cls, pipe, family.key, device, weight_dtype, original)
        device = torch.device(device) if device is not None else pipe.unet.device
        te2 = getattr(pipe, "text_encoder_2", None)
        if te2 is not None and not train_text_encoder_2:
            te2.requires_grad_(False).eval()
            te2.to(device, dtype=weight_dtype)
        if getattr(pipe.vae.config, "force_upcast", False) and param_dtype(pipe.vae) == torch.float16:
            pipe.vae.to(dtype=torch.float32)
        return cls(
            unet=pipe.unet, text_encoder=pipe.text_encoder, vae=pipe.vae, tokenizer=pipe.tokenizer,
            noise_scheduler=DDPMScheduler.from_config(pipe.scheduler.config), device=device, weight_dtype=weight_dtype,
            original=original or contextlib.nullcontext, text_encoder_2=te2, tokenizer_2=getattr(pipe, "tokenizer_2", None),
            zero_uncond=bool(te2 is not None and getattr(pipe.config, "force_zeros_for_empty_prompt", False)),
        )

    # --- text -----------------------------------------------------------------------------------
    @property
    def is_sdxl(self) -> bool:
        return self.family == "sd" and self.text_encoder_2 is not None

    @property
    def is_flow(self) -> bool:
        return self.family in ("flux", "sd3")

    @property
    def denoiser_name(self) -> str:
        """The pipeline component `unet` holds: "unet", or "transformer" (FLUX, SD3)."""
        return "transformer" if self.is_flow else "unet"

    @property
    def transformer(self) -> nn.Module:
        """The denoiser under its pipeline name for FLUX / SD3 (the same module as `unet`)."""
        return self.unet

    @transformer.setter
    def transformer(self, module: nn.Module) -> None:
        self.unet = module

    def encoders(self) -> list[tuple[Any, nn.Module]]:
        """(tokenizer, text encoder) pairs in the order their hidden states are concatenated."""
        pairs = [(self.tokenizer, self.text_encoder)]
        if self.text_encoder_2 is not None:
            pairs.append((self.tokenizer_2, self.text_encoder_2))
        if self.text_encoder_3 is not None:
            pairs.append((self.tokenizer_3, self.text_encoder_3))
        return pairs

    def max_length(self, tokenizer: Any) -> int:
        """Tokens per prompt for this tokenizer: CLIP's 77, T5's `max_sequence_length`."""
        return self.max_sequence_length if self.is_flow and _is_t5(tokenizer) else int(tokenizer.model_max_length)

    def tokenize(self, prompts: list[str], tokenizer: Any = None, length: int | None = None) -> Tensor:
        tok = tokenizer or self.tokenizer
        ids = tok(list(prompts), padding="max_length", max_length=length or self.max_length(tok), truncation=True,
                  return_tensors="pt")
        return ids.input_ids.to(self.device)

    def encode(self, prompts: list[str], n_slots: int = 0, embeds: SlotEmbeds = None,
               where: Literal["prefix", "suffix", "marker"] = "prefix", length: int | None = None) -> Conditioning:
        """The conditioning of `prompts` as the pipeline computes it (see the module table).

        With `n_slots` > 0, each prompt gets that many free token positions (`where`: before the
        prompt, after it, or at a "{}" marker) whose token embeddings are `embeds` (see `SlotEmbeds`:
        a tensor [k, D] or [B, k, D] with, on SDXL, both encoders' embeddings side by side [.., 768 + 1280];
        gradients reach them): UnlearnDiffAtk's prefix tokens, AdvUnlearn's attack tokens, concept
        inversion's new tokens. On SDXL they go into BOTH encoders.
        `length` < 77 encodes only the first `length` positions (BOS, the prompt, EOS, padding): the
        encoders are causal, so those states equal the full sequence's (closed-form edits, which read
        the prompt's own positions only, save the padding's cost).
        """
        pairs = self.encoders()
        widths = [int(w.shape[-1]) for w in self.embedding_tables()] if n_slots else []
        states, pooled = [], []
        for i, (tok, te) in enumerate(pairs):
            if n_slots:
                ids, mask = tokenize_with_slots(tok, list(prompts), n_slots, where, max_length=self.max_length(tok))
                e = _slot_embeds(embeds, i, widths, te, self._vocab_map(i))
            else:
                ids, mask, e = self.tokenize(prompts, tok, length), None, None
            penultimate = self.is_sdxl or (self.family == "sd3" and not _is_t5(tok))
            hidden, pool = run_text_encoder(te, ids, mask, e, penultimate=penultimate)
            states.append(hidden)
            pooled.append(pool)
        if self.is_flow:
            from erase.models.flow import combine_text

            return combine_text(self.family, states, pooled)
        if not self.is_sdxl:
            return states[0]
        return Cond(torch.cat(states, dim=-1), pooled[-1])

    def pooled(self, prompts: list[str], n_slots: int = 0, embeds: SlotEmbeds = None,
               where: Literal["prefix", "suffix", "marker"] = "prefix") -> Tensor:
        """Every text encoder's pooled text embedding, side by side [B, sum P_i] (CLIP: `pooler_output`,
        the final-layer-normed state at EOS; SDXL's encoder 2: its projected `text_embeds`), with
        soft-prompt slots as in `encode`. MMA-Diffusion's text attack matches this."""
        widths = [int(w.shape[-1]) for w in self.embedding_tables()] if n_slots else []
        out = []
        for i, (tok, te) in enumerate(self.encoders()):
            if n_slots:
                ids, mask = tokenize_with_slots(tok, list(prompts), n_slots, where)
                e = _slot_embeds(embeds, i, widths, te)
            else:
                ids, mask, e = self.tokenize(prompts, tok), None, None
            out.append(run_text_encoder(te, ids, mask, e)[1])
        return torch.cat(out, dim=-1)

    def embedding_tables(self) -> list[Tensor]:
        """Each text encoder's token-embedding table [V, D_i], in `encoders()` order."""
        return [getattr(te, "module", te).get_input_embeddings().weight for _, te in self.encoders()]

    @property
    def vocab_size(self) -> int:
        return int(self.embedding_tables()[0].shape[0])

    def token_tables(self) -> list[Tensor]:
        """Each text encoder's token embeddings indexed by CLIP's ids [V_clip, D_i] (detached), in `encoders()`
        order: CLIP tables as they are; a T5 table as T5 sees a CLIP token, the mean embedding of the T5 pieces of
        its text (`erase.models.flow.vocab_map`). The one vocabulary discrete attacks search (P4D's projection)."""
        out = []
        for i, w in enumerate(self.embedding_tables()):
            w = w.detach()
            if hasattr(w, "full_tensor"):  # a table sharded by FSDP2 (a DTensor): gathered, on every process
                w = w.full_tensor()
            vmap = self._vocab_map(i)
            out.append(w if vmap is None else torch.sparse.mm(vmap.to(w.device, w.dtype), w))
        return out

    def token_embeddings(self, rows: Tensor) -> Tensor:
        """The embeddings of (CLIP) token ids `rows` [k] in every encoder, side by side [k, sum D_i] (detached):
        slot embeddings `encode` splits back per encoder (`token_tables`: T5's view of each CLIP token)."""
        return torch.cat([w[rows.to(w.device)] for w in self.token_tables()], dim=-1)

    def _vocab_map(self, i: int) -> Tensor | None:
        """Encoder i's [V_clip, V_i] map from CLIP token ids to its own vocabulary (None: the same ids)."""
        if not self.is_flow:
            return None
        tok = self.encoders()[i][0]
        if not _is_t5(tok):
            return None
        from erase.models.flow import vocab_map

        return vocab_map(self.tokenizer, tok, int(self.embedding_tables()[i].shape[0]))

    def ids_encoder(self) -> nn.Module | IdsEncoder:
        """A text encoder of token ids (of `tokenizer`) whose first output is the UNet's cross-attention
        states: the text encoder itself (SD-1/2), or both SDXL encoders' penultimate states side by
        side (`IdsEncoder`; the pooled embedding is not part of it). Ring-A-Bell searches this space."""
        if self.is_flow:
            from erase.errors import EraseError

            raise EraseError("--attack ringabell / ringabell_continuous: Ring-A-Bell searches CLIP's conditioning space; "
                             "FLUX and SD3 also condition on T5, which it does not cover (use unlearndiffatk or "
                             "concept_inversion)")
        return self.text_encoder if not self.is_sdxl else IdsEncoder(self)

    def uncond(self, n: int) -> Conditioning:
        """The unconditional input for classifier-free guidance, batch n: the empty prompt's
        conditioning, or zeros where the pipeline forces them (SDXL without a negative prompt)."""
        c = self.encode([""])
        if self.zero_uncond:
            c = Cond(torch.zeros_like(c.embeds), torch.zeros_like(c.pooled))
        return c.expand(n, -1, -1)

    # --- the UNet -------------------------------------------------------------------------------
    def pred(self, x_t: Tensor, t: Tensor | int, cond: Conditioning, float32: bool = True,
             guidance: Tensor | float | None = None) -> Tensor:
        """The UNet's prediction at (x_t, c, t) in its own parameterisation (eps, or v for
        v-prediction models; the velocity for flow models), in float32 (or wider: a float64 UNet stays float64) for the loss
        unless `float32=False` (the UNet's dtype). `guidance`: FLUX.1-dev's guidance embedding
        (default `guidance_embed`); other models ignore it."""
        if self.is_flow:
            from erase.models.flow import flow_pred

            return flow_pred(self, x_t, t, cond, float32, guidance)
        if not torch.is_tensor(t):
            t = torch.full((x_t.shape[0],), int(t), device=x_t.device, dtype=torch.long)
        elif t.ndim == 0:
            t = t.expand(x_t.shape[0])
        dtype = param_dtype(self.unet)
        kwargs = {}
        if isinstance(cond, Cond):
            kwargs["added_cond_kwargs"] = {"text_embeds": cond.pooled.to(x_t.device, dtype),
                                           "time_ids": self.time_ids(x_t).to(x_t.device, dtype)}
            cond = cond.embeds
        out = self.unet(x_t.to(dtype), t.to(x_t.device), encoder_hidden_states=cond.to(x_t.device, dtype), **kwargs).sample
        return out.to(torch.promote_types(out.dtype, torch.float32)) if float32 else out

    def time_ids(self, x_t: Tensor) -> Tensor:
        """SDXL's add_time_ids [B, 6] for latents x_t: (original size, crop top-left, target size) with
        original = target = the image size and crop (0, 0), the pipeline's defaults."""
        h, w = (int(s) * self.vae_scale_factor for s in x_t.shape[-2:])
        return torch.tensor([[h, w, 0, 0, h, w]], dtype=torch.float32).expand(x_t.shape[0], -1)

    def guided_pred(self, x: Tensor, t: Tensor, cond: Conditioning, uncond: Conditioning, guidance: Tensor | float,
                    float32: bool = True) -> Tensor:
        """The prediction a guided sampler steps with: pred_u + w (pred_c - pred_u) in one batch of both
        halves (classifier-free guidance on the model's own prediction, as diffusers' pipelines do);
        FLUX (guidance-distilled) runs one conditional pass with w as its guidance embedding."""
        if self.family == "flux":
            return self.pred(x, t, cond, float32=float32, guidance=guidance)
        b = x.shape[0]
        w = guidance.to(x.device, x.dtype).view(b, *([1] * (x.ndim - 1))) if torch.is_tensor(guidance) else guidance
        p_u, p_c = self.pred(torch.cat([x, x]), t, torch.cat([uncond, cond]), float32=float32).chunk(2)
        return p_u + w * (p_c - p_u)

    def sampler(self, steps: int, latent_hw: tuple[int, int], cls: Any = None, config: Any = None, device: Any = None):
        """A fresh scheduler with `steps` timesteps set for latents of size `latent_hw`, as the pipeline
        sets them: `cls` (default DDIM) from `config` (default the training schedule's); flow models
        always get FlowMatchEulerDiscreteScheduler from their own config (FLUX: sigmas
        linspace(1, 1/steps) and the resolution-dependent shift mu, as FluxPipeline sets them)."""
        if self.is_flow:
            from erase.models.flow import flow_sampler

            return flow_sampler(self, steps, latent_hw, device)
        from diffusers import DDIMScheduler

        sched = (cls or DDIMScheduler).from_config(config if config is not None else self.noise_scheduler.config)
        sched.set_timesteps(steps, device=device)
        return sched

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    # --- prediction type --------------------------------------------------------------------------
    @property
    def prediction_type(self) -> str:
        """'epsilon', 'v_prediction', or 'flow' (the velocity eps - x0 of flow matching)."""
        return "flow" if self.is_flow else str(self.noise_scheduler.config.prediction_type)

    def alpha_sigma(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """(a_t, s_t) of the forward process x_t = a_t x0 + s_t eps, shaped to broadcast against `like`:
        (sqrt(abar_t), sqrt(1 - abar_t)) for DDPM schedules, (1 - t / T, t / T) for flow matching."""
        if self.is_flow:
            s = (t.to(like.device, torch.float64) / self.num_train_timesteps).to(like.dtype)
            s = s.view(-1, *([1] * (like.ndim - 1)))
            return 1 - s, s
        abar = self.noise_scheduler.alphas_cumprod.to(like.device, like.dtype)[t.to(like.device).long()]
        abar = abar.view(-1, *([1] * (like.ndim - 1)))
        return abar.sqrt(), (1 - abar).sqrt()

    _alpha_sigma = alpha_sigma

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What a denoising loss regresses `pred` on: the noise (epsilon), v = alpha_t noise - sigma_t x0,
        or the flow-matching velocity noise - x0."""
        kind = self.prediction_type
        if kind == "epsilon":
            return noise
        if kind == "flow":
            return noise - x0
        if kind == "v_prediction":
            return self.noise_scheduler.get_velocity(x0, noise, t.to(x0.device))
        raise ValueError(f"prediction_type {kind!r} is not supported (epsilon, v_prediction)")

    def to_eps(self, x_t: Tensor, pred: Tensor, t: Tensor) -> Tensor:
        """The noise a prediction at x_t implies: eps = alpha_t v + sigma_t x_t for v-prediction."""
        if self.prediction_type == "epsilon":
            return pred
        alpha, sigma = self._alpha_sigma(t, x_t)
        if self.is_flow:
            return x_t + alpha * pred  # eps = x_t + (1 - s) v
        return alpha * pred + sigma * x_t

    def to_x0(self, x_t: Tensor, pred: Tensor, t: Tensor) -> Tensor:
        """The clean latents a prediction at x_t implies: (x_t - sigma_t eps) / alpha_t, or alpha_t x_t - sigma_t v."""
        alpha, sigma = self._alpha_sigma(t, x_t)
        if self.prediction_type == "epsilon":
            return (x_t - sigma * pred) / alpha
        if self.is_flow:
            return x_t - sigma * pred  # x0 = x_t - s v
        return alpha * x_t - sigma * pred

    # --- images -----------------------------------------------------------------------------------
    def latents(self, images: Tensor) -> Tensor:
        """VAE latents of images [B, 3, H, W] in [-1, 1], times the VAE's scaling factor (posterior mean)."""
        vae = self.vae
        with torch.no_grad():
            dist = vae.encode(images.to(self.device, param_dtype(vae))).latent_dist
            return (dist.mode().float() - _shift(vae)) * vae.config.scaling_factor

    def decode(self, latents: Tensor) -> Tensor:
        """Images [B, 3, H, W] in [0, 1] from scaled latents."""
        vae = self.vae
        with torch.no_grad():
            img = vae.decode(self.unscale(latents.to(self.device, param_dtype(vae)))).sample
        return (img.float() / 2 + 0.5).clamp(0, 1)

    def unscale(self, latents: Tensor) -> Tensor:
        """What the VAE decodes: latents / scaling_factor (+ shift_factor: FLUX's and SD3's VAEs)."""
        return latents / self.vae.config.scaling_factor + _shift(self.vae)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (the forward process of the training schedule);
        flow matching: (1 - s) x_0 + s eps."""
        if self.is_flow:
            a, s = self.alpha_sigma(t, x0)
            return a * x0 + s * noise
        return self.noise_scheduler.add_noise(x0, noise, t.to(x0.device))

    def train_timesteps(self, k: Tensor) -> Tensor:
        """The training timesteps of uniform draws k in [0, T): k itself for DDPM schedules; for flow
        models the scheduler's training timestep (sigma * T, shifted where the scheduler config shifts)
        of diffusers' flux/sd3 examples, in increasing noise (erase/models/flow.py)."""
        if not self.is_flow:
            return k
        from erase.models.flow import train_timesteps

        return train_timesteps(self, k)

    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the UNet's default latents."""
        cfg = getattr(self.unet, "module", self.unet).config
        if self.is_flow:
            from erase.models.flow import flow_latent_shape

            return flow_latent_shape(self)
        return (int(cfg.in_channels), int(cfg.sample_size), int(cfg.sample_size))

    def named_trainable(self) -> dict[str, nn.Parameter]:
        """Trainable parameters by name, prefixed "unet." / "text_encoder." / "text_encoder_2." (the keys of
        gradient masks)."""
        out = {}
        for prefix, module in ((self.denoiser_name, self.unet), ("text_encoder", self.text_encoder),
                               ("text_encoder_2", self.text_encoder_2), ("text_encoder_3", self.text_encoder_3)):
            if module is None:
                continue
            module = getattr(module, "module", module)  # an eventual DDP wrapper
            out.update({f"{prefix}.{n}": p for n, p in module.named_parameters() if p.requires_grad})
        return out

    @property
    def num_train_timesteps(self) -> int:
        return int(self.noise_scheduler.config.num_train_timesteps)


class IdsEncoder:
    """SDXL's two text encoders as one encoder of CLIP token ids: `enc(ids)[0]` is [B, L, D1 + D2].

    Encoder 2 gets the same ids with the padding after the first EOS written as its own tokenizer
    pads (OpenCLIP: "!"), so plain prompts encode exactly as `Models.encode` encodes them."""

    def __init__(self, models: Models):
        self.models = models

    @property
    def device(self) -> torch.device:
        return self.models.device

    def __call__(self, input_ids: Tensor) -> tuple[Tensor]:
        m = self.models
        ids2 = input_ids.clone()
        eos, pad = m.tokenizer_2.eos_token_id, m.tokenizer_2.pad_token_id
        after_eos = (input_ids == eos).int().cumsum(1) - (input_ids == eos).int() > 0
        ids2[after_eos] = pad if pad is not None else eos
        states = [run_text_encoder(te, ids, penultimate=True)[0] for (_, te), ids in zip(m.encoders(), (input_ids, ids2))]
        return (torch.cat(states, dim=-1),)


def _is_t5(tokenizer: Any) -> bool:
    """A T5 tokenizer (no BOS; FLUX's and SD3's third encoder), as opposed to CLIP's."""
    return "T5" in type(tokenizer).__name__


def _shift(vae: Any) -> float:
    """The VAE's latent shift (FLUX's and SD3's VAEs: latents = (z - shift) * scale; SD's: none, 0)."""
    return float(getattr(vae.config, "shift_factor", None) or 0.0)


vae_shift = _shift


def _slot_embeds(embeds: SlotEmbeds, i: int, widths: list[int], text_encoder: nn.Module,
                 vocab_map: Tensor | None = None) -> Tensor | None:
    """Encoder i's slot embeddings: a tensor is split along its last dimension by the encoders' widths.
    A function of the token table gets, for an encoder with its own vocabulary (T5), the table mapped
    onto CLIP's ids (`vocab_map` [V_clip, V_i] @ table)."""
    n = len(widths)
    if embeds is None or torch.is_tensor(embeds):
        if embeds is None or n == 1:
            return embeds
        if embeds.shape[-1] != sum(widths):
            raise ValueError(f"slot embeddings of width {embeds.shape[-1]}; this model's {n} text encoders take {' + '.join(map(str, widths))}")
        return embeds.split(widths, dim=-1)[i]
    if callable(embeds):
        table = getattr(text_encoder, "module", text_encoder).get_input_embeddings().weight
        if vocab_map is not None:
            table = torch.sparse.mm(vocab_map.to(table.device, table.dtype), table)
        return embeds(table)
    if len(embeds) != n:
        raise ValueError(f"{len(embeds)} slot embeddings for {n} text encoders")
    return embeds[i]


def pipeline_modules(pipe: Any) -> tuple[str, ...]:
    """The pipeline's modules with weights: unet (or FLUX's / SD3's transformer), text_encoder(s), vae
    (SDXL and FLUX add text_encoder_2, SD3 text_encoder_2 and text_encoder_3)."""
    return tuple(n for n in ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3", "vae")
                 if getattr(pipe, n, None) is not None)


def denoiser(pipe: Any) -> nn.Module:
    """The pipeline's denoising network: its UNet, or FLUX's / SD3's transformer."""
    unet = getattr(pipe, "unet", None)
    return unet if unet is not None else pipe.transformer


def param_dtype(module: nn.Module) -> torch.dtype:
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32
