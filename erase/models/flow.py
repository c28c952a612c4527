"""Flow-matching transformers (FLUX.1, SD3/3.5) behind `Models`: conditioning, the transformer call, timesteps.

Everything here is reached through `erase.models.core.Models` (`from_pipeline`, `encode`, `pred`,
`train_timesteps`, `sampler`, `latent_shape`); objectives never import it.

Flow matching (Lipman et al. 2023, https://arxiv.org/abs/2210.02747; Esser et al. 2024, "Scaling
Rectified Flow Transformers", https://arxiv.org/abs/2403.03206). With s in [0, 1] the forward process is

    x_t = (1 - s) x0 + s eps,      s = t / T   (t: the scheduler's timestep, T = num_train_timesteps = 1000)

and the transformer predicts the velocity v = dx_t/ds = eps - x0 (diffusers' training examples:
`target = noise - model_input`). At a fixed x_t a velocity implies

    eps(v) = x_t + (1 - s) v,      x0(v) = x_t - s v.

ESD's target in velocity space. ESD regresses the trained model on eps* = eps_u - eta (eps_c - eps_u),
a combination of the frozen model's predictions with coefficients (1 + eta, -eta) summing to 1. The map
from a noise prediction to the velocity it implies at the same x_t,

    v(eps) = eps - x0(eps),  x0(eps) = (x_t - s eps) / (1 - s)   =>   v(eps) = (eps - x_t) / (1 - s),

is affine in eps, so v(sum_i c_i eps_i) = sum_i c_i v(eps_i) whenever sum_i c_i = 1:

    v* = v(eps*) = (1 + eta) v(eps_u) - eta v(eps_c) = v_u - eta (v_c - v_u).

ESD's code, which forms the target from the frozen model's own predictions (here velocities), is therefore
unchanged, and ||v_theta - v*||^2 = ||eps_theta - eps*||^2 / (1 - s)^2 at the same x_t: ESD's objective in
the model's own parameterisation, each draw weighted by 1 / (1 - s)^2 (tests/test_parity_flow.py checks both
in float64). The same holds for concept ablation (the anchor's prediction) and every denoising loss, whose
target is `Models.target` = eps - x0. ESD's difficulty uses the noise the trajectory implies,
eps_hat = (x_t - (1 - s) x0) / s (`Models.alpha_sigma`).

Training timesteps, as diffusers' examples/dreambooth/train_dreambooth_lora_flux.py and _sd3.py draw them
(`compute_density_for_timestep_sampling`, then `noise_scheduler_copy.timesteps[indices]`): an index
into the timesteps of a fresh `FlowMatchEulerDiscreteScheduler` from the model's config. That table is
shifted where the config shifts statically (SD3: shift 3.0, s' = 3 s / (1 + 2 s)) and uniform where the
shift is resolution-dependent (FLUX.1-dev: `use_dynamic_shifting`, which the training scripts do not apply).
The density is the scripts' default `--weighting_scheme`: "none" (uniform) for FLUX, "logit_normal"
(mean 0, std 1) for SD3, whose loss weighting is then 1 (`compute_loss_weighting_for_sd3`). erase's draws
are integers k in [0, T) per sample (reproducible per sample id); `train_timesteps` maps them through
the inverse CDF, so the drawn index has the scripts' distribution. The SD3 script's default
`--precondition_outputs 1` regresses x0 = x_t - s v on x0 instead of v on eps - x0: the same minimiser with
each draw weighted by s^2; erase uses the velocity form (the script's `--precondition_outputs 0`), for
SD3 as for FLUX.

FLUX.1-dev is guidance-distilled: the guidance scale is an input embedding (training: 3.5, the examples'
`--guidance_scale` default; sampling: the row's guidance, one pass, no CFG, as FluxPipeline with
`true_cfg_scale` 1). FLUX.1-schnell has no guidance embedding. Latents are packed into 2x2 patches
(`FluxPipeline._pack_latents`) with image position ids (`_prepare_latent_image_ids`) and zero text ids;
`Models` keeps latents unpacked [B, C, h, w] everywhere and packs them only around the transformer call.
SD3 uses classifier-free guidance and takes [B, C, h, w] latents (it patchifies them itself).
"""

from __future__ import annotations

import hashlib
import math
import weakref
from typing import Any

import numpy as np
import torch
from torch import Tensor

# Pipelines' defaults: FluxPipeline max_sequence_length 512, StableDiffusion3Pipeline 256.
MAX_SEQUENCE_LENGTH = {"flux": 512, "sd3": 256}
# The training examples' default --weighting_scheme: FLUX "none" (uniform), SD3 "logit_normal" (0, 1).
TIMESTEP_SAMPLING = {"flux": "uniform", "sd3": "logit_normal"}
LOGIT_MEAN, LOGIT_STD = 0.0, 1.0
FLUX_TRAIN_GUIDANCE = 3.5  # train_dreambooth_lora_flux.py --guidance_scale default


def flow_models(cls: Any, pipe: Any, family: str, device, weight_dtype: torch.dtype, original) -> Any:
    """`Models` of a FluxPipeline or StableDiffusion3Pipeline (`Models.from_pipeline` calls this)."""
    import contextlib

    from diffusers import FlowMatchEulerDiscreteScheduler

    device = torch.device(device) if device is not None else pipe.transformer.device
    for name in ("text_encoder_2", "text_encoder_3"):  # T5 (and SD3's CLIP-G) stay frozen unless trained
        module = getattr(pipe, name, None)
        if module is not None and not any(p.requires_grad for p in module.parameters()):
            module.eval()
    return cls(
        unet=pipe.transformer, text_encoder=pipe.text_encoder, vae=pipe.vae, tokenizer=pipe.tokenizer,
        noise_scheduler=FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config), device=device,
        weight_dtype=weight_dtype, original=original or contextlib.nullcontext,
        text_encoder_2=pipe.text_encoder_2, tokenizer_2=pipe.tokenizer_2,
        text_encoder_3=getattr(pipe, "text_encoder_3", None), tokenizer_3=getattr(pipe, "tokenizer_3", None),
        family=family, guidance_embed=FLUX_TRAIN_GUIDANCE, max_sequence_length=MAX_SEQUENCE_LENGTH[family],
        timestep_sampling=TIMESTEP_SAMPLING[family],
    )


def combine_text(family: str, states: list[Tensor], pooled: list[Tensor | None]) -> Any:
    """The pipelines' conditioning from each encoder's states and pooled output (encoders in pipeline order).

    FLUX (FluxPipeline.encode_prompt): T5's last hidden states + CLIP's pooled output.
    SD3 (StableDiffusion3Pipeline.encode_prompt): CLIP-L and CLIP-G penultimate states side by side, padded
    with zeros to T5's width, then T5's states along the sequence; both CLIP pooled projections side by side."""
    from erase.models.core import Cond

    if family == "flux":
        return Cond(states[1], pooled[0])
    clip = torch.cat(states[:2], dim=-1)
    clip = torch.nn.functional.pad(clip, (0, states[2].shape[-1] - clip.shape[-1]))
    return Cond(torch.cat([clip, states[2]], dim=-2), torch.cat(pooled[:2], dim=-1))


def _timesteps(t: Tensor | float, b: int, device) -> Tensor:
    if not torch.is_tensor(t):
        t = torch.full((b,), float(t))
    elif t.ndim == 0:
        t = t.expand(b)
    return t.to(device)


def flow_pred(models: Any, x_t: Tensor, t: Tensor | float, cond: Any, float32: bool,
              guidance: Tensor | float | None) -> Tensor:
    """The transformer's velocity at (x_t [B, C, h, w], t, cond), called as FluxPipeline / StableDiffusion3Pipeline call it."""
    from diffusers import FluxPipeline

    from erase.models.core import param_dtype

    net = models.unet
    inner = getattr(net, "module", net)
    dtype = param_dtype(inner)
    b, device = x_t.shape[0], x_t.device
    t = _timesteps(t, b, device)
    embeds, pooled = cond.embeds.to(device, dtype), cond.pooled.to(device, dtype)
    if models.family == "flux":
        c, h, w = x_t.shape[1:]
        g = None
        if inner.config.guidance_embeds:
            g = guidance if guidance is not None else models.guidance_embed
            g = g.to(device, torch.float32).expand(b) if torch.is_tensor(g) else torch.full((b,), float(g), device=device)
        out = net(hidden_states=FluxPipeline._pack_latents(x_t.to(dtype), b, c, h, w), timestep=t.to(dtype) / 1000,
                  guidance=g, pooled_projections=pooled, encoder_hidden_states=embeds,
                  txt_ids=torch.zeros(embeds.shape[1], 3, device=device, dtype=dtype),
                  img_ids=FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, device, dtype), return_dict=False)[0]
        out = FluxPipeline._unpack_latents(out, h, w, 1)
    else:
        out = net(hidden_states=x_t.to(dtype), timestep=t if t.is_floating_point() else t.float(),
                  encoder_hidden_states=embeds, pooled_projections=pooled, return_dict=False)[0]
    return out.to(torch.promote_types(out.dtype, torch.float32)) if float32 else out


def train_table(models: Any) -> Tensor:
    """The training timesteps of a fresh scheduler from the model's config, in INCREASING noise [T]."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    key = id(models.noise_scheduler)
    cached = _TABLES.get(key)
    if cached is None or cached[0] is not models.noise_scheduler:
        table = FlowMatchEulerDiscreteScheduler.from_config(models.noise_scheduler.config).timesteps.flip(0).clone()
        _TABLES[key] = cached = (models.noise_scheduler, table)
    return cached[1]


_TABLES: dict[int, tuple[Any, Tensor]] = {}


def train_timesteps(models: Any, k: Tensor) -> Tensor:
    """Training timesteps [B] (float, the scheduler's sigma * T) of uniform integer draws k in [0, T).

    uniform: the k-th entry of the table (the examples' `indices = (u * T).long()` with u uniform);
    logit_normal: u = sigmoid(mean + std * Phi^-1((k + 0.5) / T)), index (u * T) of the examples' table
    (descending in noise), the examples' `compute_density_for_timestep_sampling("logit_normal")` by inverse CDF."""
    table = train_table(models)
    n = len(table)
    k = k.long().cpu()
    if models.timestep_sampling == "logit_normal":
        p = (k.double() + 0.5) / n
        z = math.sqrt(2.0) * torch.erfinv(2 * p - 1)
        u = torch.sigmoid(LOGIT_MEAN + LOGIT_STD * z)
        idx = (u * n).long().clamp(0, n - 1)  # the examples' `indices` into their (descending) table
        return table.flip(0)[idx].to(models.device)
    return table[k.clamp(0, n - 1)].to(models.device)


def flow_latent_shape(models: Any) -> tuple[int, int, int]:
    """(C, h, w) of the default latents: FLUX's at the VAE's sample size (FluxPipeline: 128 latents, 1024 px),
    SD3's at the transformer's sample_size."""
    cfg = getattr(models.unet, "module", models.unet).config
    if models.family == "flux":
        side = int(models.vae.config.sample_size) // models.vae_scale_factor
        return (int(cfg.in_channels) // 4, side, side)
    return (int(cfg.in_channels), int(cfg.sample_size), int(cfg.sample_size))


def flow_sampler(models: Any, steps: int, latent_hw: tuple[int, int], device=None):
    """FlowMatchEulerDiscreteScheduler with `steps` timesteps for latents [.., h, w], as the pipelines set them:
    FLUX sigmas linspace(1, 1/steps, steps) and mu = calculate_shift(image tokens) (FluxPipeline step 5);
    SD3 the scheduler's own schedule (mu only if its config shifts dynamically)."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    sched = FlowMatchEulerDiscreteScheduler.from_config(models.noise_scheduler.config)
    cfg = sched.config
    h, w = latent_hw
    if models.family == "flux":
        mu = calculate_shift((h // 2) * (w // 2), cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                             cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
        sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), device=device, mu=mu)
    else:
        kwargs = {}
        if cfg.get("use_dynamic_shifting", None):
            p = getattr(models.unet, "module", models.unet).config.patch_size
            kwargs["mu"] = calculate_shift((h // p) * (w // p), cfg.get("base_image_seq_len", 256),
                                           cfg.get("max_image_seq_len", 4096), cfg.get("base_shift", 0.5),
                                           cfg.get("max_shift", 1.16))
        sched.set_timesteps(steps, device=device, **kwargs)
    sched.set_begin_index(0)
    return sched


_VOCAB_MAPS: dict[tuple[str, str, int], Tensor] = {}
_TOKENIZER_KEYS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tokenizer_key(tokenizer: Any) -> str:
    """sha256 of what a tokenizer does (its `tokenizers` serialisation, else its class and vocabulary),
    remembered per tokenizer object: one map serves every load of the same tokenizers, and a new tokenizer
    at a freed one's address never gets the old one's map."""
    key = _TOKENIZER_KEYS.get(tokenizer)
    if key is None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        text = backend.to_str() if backend is not None else type(tokenizer).__name__ + repr(sorted(tokenizer.get_vocab().items()))
        key = _TOKENIZER_KEYS[tokenizer] = hashlib.sha256(text.encode()).hexdigest()
    return key


def vocab_map(clip_tokenizer: Any, tokenizer: Any, rows: int) -> Tensor:
    """A sparse [V_clip, rows] map from CLIP token ids to another vocabulary (T5's): row i spreads weight
    1/n over the n pieces the other tokenizer makes of CLIP token i's text (its unknown token if none).

    Attacks search CLIP's vocabulary (UnlearnDiffAtk's relaxed one-hot, AdvUnlearn's and concept inversion's
    rows, P4D's projection, MMA's one-hot); their tokens reach T5 through this map, so one token is the same
    text in every encoder. Built once per pair of tokenizers (seconds: T5 tokenises CLIP's 49408 tokens)."""
    key = (tokenizer_key(clip_tokenizer), tokenizer_key(tokenizer), rows)
    if key not in _VOCAB_MAPS:
        n = len(clip_tokenizer)
        texts = [s.strip() for s in clip_tokenizer.batch_decode([[i] for i in range(n)])]
        pieces = tokenizer(texts, add_special_tokens=False).input_ids
        unk = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else 0
        r, c, v = [], [], []
        for i, ids in enumerate(pieces):
            ids = [j for j in ids if j < rows] or [unk]
            r += [i] * len(ids)
            c += ids
            v += [1.0 / len(ids)] * len(ids)
        _VOCAB_MAPS[key] = torch.sparse_coo_tensor(torch.tensor([r, c]), torch.tensor(v), (n, rows),
                                                 check_invariants=False).coalesce()
    return _VOCAB_MAPS[key]


def transformer_inputs(family: str, latent_side: int, text_tokens: int):
    """`inputs(net, dtype) -> (args, kwargs)` of one batch-1 training forward at `latent_side` x `latent_side`
    latents with `text_tokens` T5 tokens (FLUX: packed tokens, ids, guidance; SD3: + the CLIP tokens), on the
    transformer's device: for erase.train.activations' meta-device count."""

    def inputs(net, dtype):
        from diffusers import FluxPipeline

        c = net.config
        device = next(net.parameters()).device
        meta = {"device": device, "dtype": dtype}
        pooled = torch.empty(1, c.pooled_projection_dim, **meta)
        t = torch.full((1,), 0.5, device=device)
        if family == "flux":
            n = (latent_side // 2) ** 2
            kwargs = {"hidden_states": torch.empty(1, n, c.in_channels, **meta), "timestep": t.to(dtype),
                      "encoder_hidden_states": torch.empty(1, text_tokens, c.joint_attention_dim, **meta),
                      "pooled_projections": pooled, "txt_ids": torch.zeros(text_tokens, 3, **meta),
                      "img_ids": FluxPipeline._prepare_latent_image_ids(1, latent_side // 2, latent_side // 2, device, dtype),
                      "guidance": torch.full((1,), 3.5, device=device) if c.guidance_embeds else None}
        else:
            kwargs = {"hidden_states": torch.empty(1, c.in_channels, latent_side, latent_side, **meta), "timestep": t * 1000,
                      "encoder_hidden_states": torch.empty(1, 77 + text_tokens, c.joint_attention_dim, **meta),
                      "pooled_projections": pooled}
        return (), kwargs

    return inputs
