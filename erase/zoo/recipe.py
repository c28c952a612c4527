"""Training recipe of the digits world's text-to-image model (Stable Diffusion architecture).

Stage 1 trains a small AutoencoderKL (16 px RGB -> 8x8x4 latents). Stage 2 trains a
UNet2DConditionModel and a CLIPTextModel (real CLIP tokenizer, narrow width) jointly with the
epsilon objective of Stable Diffusion (Rombach et al. 2022, https://arxiv.org/abs/2112.10752),
SD-1.x's noise schedule, 10% caption dropout for classifier-free guidance, Min-SNR-gamma loss
weighting (Hang et al. 2023, https://arxiv.org/abs/2303.09556; diffusers' `compute_snr`) and EMA
weights (diffusers' `EMAModel`, with the recipe's decay schedule). The result is an
ordinary diffusers folder that vanilla `StableDiffusionPipeline.from_pretrained` loads.

Deterministic from `seed` on one machine; `exclude` drops every image of a concept (digit=3,
colour=red) to make the exact-unlearning reference (retraining without the data).
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.training_utils import EMAModel, compute_snr
from tqdm.auto import tqdm
from transformers import CLIPTextConfig, CLIPTextModel

from erase.io import atomic_dir, atomic_write_json
from erase.models.builder import SD_SCHEDULER
from erase.tokenizer import CLIP_MAX_LENGTH, CLIP_VOCAB_SIZE, clip_tokenizer
from erase.zoo.digits import DigitsData, exclusion_mask, load_digits_world, parse_exclude, sample_captions


@dataclass(frozen=True)
class DigitsRecipe:
    """Every number that decides the shipped model. Changing one changes the artifact."""

    seed: int = 0
    exclude: tuple[str, ...] = ()
    # Stage 1: autoencoder
    vae_steps: int = 300
    vae_batch: int = 64
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-6
    # Stage 2: UNet + text encoder
    steps: int = 2000
    batch: int = 32
    lr: float = 1e-3
    warmup: int = 100
    ema_decay: float = 0.995
    snr_gamma: float = 5.0
    caption_dropout: float = 0.1
    unet_channels: tuple[int, ...] = (64, 128)
    unet_layers: int = 1
    text_width: int = 64
    text_layers: int = 2
    # Stage 2 stops at `stop_step` of that cosine schedule; stage 3 continues from the EMA
    # weights with a constant learning rate and captions that always name the digit: the digit
    # binding appears much later than the colour binding (BENCHMARKS.md, "The digits recipe"), and
    # a constant rate lets a longer run extend a shorter one exactly.
    stop_step: int = 1250
    bind_steps: int = 1000
    bind_lr: float = 5e-4
    bind_caption_weights: tuple[float, float, float] = (0.5, 0.5, 0.0)
    # Probability that a stage-3 caption gets 1-3 random vocabulary tokens inserted at random
    # places. Without it the 2-layer text encoder binds digits for the training phrasings only
    # (BENCHMARKS.md, "The digits recipe"); with it, unknown words are ignored, as users expect of
    # "a picture of the number three".
    bind_token_noise: float = 0.5
    bf16_autocast: bool = False  # off: CPUs without AVX512-BF16 emulate bf16, slower than fp32

    def __post_init__(self) -> None:
        if not 0 < self.stop_step <= self.steps:
            raise ValueError(f"stop_step: must be in 1..steps ({self.steps}), got {self.stop_step}")
    caption_weights: tuple[float, float, float] = field(default=(0.6, 0.3, 0.1))


def build_models(r: DigitsRecipe) -> tuple[AutoencoderKL, UNet2DConditionModel, CLIPTextModel]:
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=32, sample_size=16,
    )
    n = len(r.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=r.unet_layers,
        block_out_channels=r.unet_channels, cross_attention_dim=r.text_width, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * n, up_block_types=("CrossAttnUpBlock2D",) * n,
        norm_num_groups=32,
    )
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE, hidden_size=r.text_width, intermediate_size=4 * r.text_width,
        num_hidden_layers=r.text_layers, num_attention_heads=4, max_position_embeddings=CLIP_MAX_LENGTH,
        hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=1, projection_dim=r.text_width,
    ))
    return vae, unet, text


def _cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_vae(vae: AutoencoderKL, data: DigitsData, r: DigitsRecipe, g: torch.Generator, rng: random.Random) -> float:
    opt = torch.optim.AdamW(vae.parameters(), lr=r.vae_lr, weight_decay=0.0)
    train = torch.nonzero(~data.heldout).squeeze(1).tolist()
    vae.train()
    loss = torch.tensor(0.0)
    for step in tqdm(range(r.vae_steps), desc="autoencoder", leave=False):
        for group in opt.param_groups:
            group["lr"] = r.vae_lr * _cosine(step, r.vae_steps, 50)
        x = data.images[torch.tensor(rng.sample(train, r.vae_batch))]
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        rec = vae.decode(z).sample
        loss = F.mse_loss(rec, x) + r.vae_kl_weight * post.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    vae.eval()
    return float(loss.detach())


def _snr_weights(sched: DDPMScheduler, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights min(SNR, gamma) / SNR for epsilon prediction (Hang et al. 2023),
    with diffusers' `compute_snr` (its training scripts' own helper)."""
    snr = compute_snr(sched, t)
    return torch.clamp(snr, max=gamma) / snr


class RecipeEMA(EMAModel):
    """diffusers' `EMAModel` with the recipe's decay schedule, the one the shipped model was trained
    with: min(ema_decay, (1 + s) / (10 + s)) at the s-th update (s from 0), i.e. n / (9 + n) at
    EMAModel's update n. EMAModel's own schedule starts with a plain copy (decay 0 at the first
    update), which would change the trained weights. `shadow` is the EMA module, updated in place
    (snapshots and the result are made of it)."""

    def __init__(self, live: torch.nn.Module, shadow: torch.nn.Module, decay: float):
        super().__init__(live.parameters(), decay=decay)
        self.shadow_params = list(shadow.parameters())

    def get_decay(self, optimization_step: int) -> float:
        return min(self.decay, optimization_step / (9 + optimization_step))


@dataclass
class _Stage:
    """What a diffusion stage trains: live and EMA copies of the UNet and text encoder."""

    unet: UNet2DConditionModel
    text: CLIPTextModel
    ema_unet: UNet2DConditionModel
    ema_text: CLIPTextModel


def _template_token_ids(tok) -> set[int]:
    """Every token of every caption template, digit word, numeral and colour (train and held-out)."""
    from erase.zoo.digits import COLOUR_NAMES, DIGIT_WORDS, HELDOUT_TEMPLATES, TRAIN_TEMPLATES

    words = [t for ts in (*TRAIN_TEMPLATES.values(), *HELDOUT_TEMPLATES.values()) for t in ts]
    words += list(DIGIT_WORDS) + [str(d) for d in range(10)] + list(COLOUR_NAMES)
    return {i for w in words for i in tok(w.replace("{", " ").replace("}", " ")).input_ids}


def insert_noise_tokens(ids: torch.Tensor, p: float, pool: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """Insert 1-3 tokens from `pool` at random places into a fraction `p` of padded captions."""
    out = ids.clone()
    eos = int(ids[0, -1])
    for row in range(ids.shape[0]):
        if rng.random() >= p:
            continue
        seq = ids[row].tolist()
        end = seq.index(eos, 1)
        body = seq[1:end]
        for _ in range(rng.randint(1, 3)):
            body.insert(rng.randint(0, len(body)), int(pool[rng.randrange(len(pool))]))
        seq = ([seq[0]] + body + [eos] * ids.shape[1])[: ids.shape[1]]
        seq[-1] = eos  # a caption cut at 77 tokens still ends with EOS, as the tokenizer does
        out[row] = torch.tensor(seq)
    return out


def _diffusion_stage(st: _Stage, r: DigitsRecipe, data: DigitsData, lat: torch.Tensor, steps: int, lr_at,
                     caption_weights, g: torch.Generator, rng: random.Random, desc: str, progress: bool,
                     on_step=None, token_noise: float = 0.0) -> list[float]:
    """Epsilon-prediction training with min-SNR weighting, caption dropout and EMA."""
    tok = clip_tokenizer()
    sched = DDPMScheduler(**{k: v for k, v in SD_SCHEDULER.items() if k != "set_alpha_to_one"})
    params = list(st.unet.parameters()) + list(st.text.parameters())
    opt = torch.optim.AdamW(params, lr=r.lr, weight_decay=1e-2)
    train = torch.nonzero(~data.heldout).squeeze(1).tolist()
    if token_noise:
        known = _template_token_ids(tok)
        pool = torch.tensor([i for i in range(tok.bos_token_id) if i not in known])
    st.unet.train()
    st.text.train()
    losses: list[float] = []
    emas = [(RecipeEMA(st.unet, st.ema_unet, r.ema_decay), st.unet), (RecipeEMA(st.text, st.ema_text, r.ema_decay), st.text)]
    bar = tqdm(range(steps), desc=desc, disable=not progress)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        idx = torch.tensor(rng.sample(train, r.batch))
        caps = sample_captions(data.digits[idx], data.colours[idx], rng, weights=caption_weights)
        caps = ["" if rng.random() < r.caption_dropout else c for c in caps]
        ids = tok(caps, padding="max_length", max_length=CLIP_MAX_LENGTH, truncation=True, return_tensors="pt").input_ids
        if token_noise:
            ids = insert_noise_tokens(ids, token_noise, pool, rng)
        x0 = lat[idx]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, sched.config.num_train_timesteps, (r.batch,), generator=g)
        xt = sched.add_noise(x0, noise, t)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=r.bf16_autocast):
            cond = st.text(ids)[0]
            pred = st.unet(xt, t, encoder_hidden_states=cond).sample
        per = F.mse_loss(pred.float(), noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (per * _snr_weights(sched, t, r.snr_gamma)).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        for ema, live in emas:
            ema.step(live.parameters())
        losses.append(float(loss.detach()))
        if step % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
        if on_step is not None:
            on_step(step + 1)
    return losses


def train_digits_model(r: DigitsRecipe, out: str | Path, progress: bool = True,
                       snapshot_every: int = 0, stage2_from: str | Path | None = None,
                       vae_from: str | Path | None = None) -> dict:
    """Train the recipe and write a diffusers folder (fp16 safetensors) plus recipe.json to `out`.

    `snapshot_every` saves EMA pipelines to `OUT.snapshots/` while training (to watch a long run).
    `stage2_from` starts stage 3 from a stage-2 snapshot folder instead of recomputing stages 1-2.
    `vae_from` (a diffusers folder) skips stage 1 and trains on that model's frozen autoencoder,
    as retrain references in the field reuse SD's VAE: the reference then ships its UNet and text
    encoder only (see `erase.zoo.registry`).
    """
    t0 = time.time()
    torch.manual_seed(r.seed)
    g = torch.Generator().manual_seed(r.seed)
    rng = random.Random(r.seed)
    data = load_digits_world(seed=r.seed)
    excluded = exclusion_mask(data, parse_exclude(list(r.exclude)))
    data = data.subset(~excluded)
    tok = clip_tokenizer()
    snaps = Path(str(out) + ".snapshots")
    if stage2_from is None:
        vae, unet, text = build_models(r)
        if vae_from is None:
            vae_loss = train_vae(vae, data, r, g, rng)
        else:
            vae = AutoencoderKL.from_pretrained(Path(vae_from) / "vae", torch_dtype=torch.float32).eval()
            vae_loss = float("nan")
        with torch.no_grad():
            lat = torch.cat([vae.encode(b).latent_dist.mean for b in data.images.split(512)])
        if vae_from is None:
            vae.register_to_config(scaling_factor=float(1.0 / lat[~data.heldout].std()))
        scale = vae.config.scaling_factor
        st = _Stage(unet, text, copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text).requires_grad_(False))

        def snap2(step: int) -> None:
            if snapshot_every and step % snapshot_every == 0 and step <= r.stop_step:
                _pipeline(vae, st.ema_unet, st.ema_text, tok).save_pretrained(snaps / f"step_{step}")

        lat = lat * scale
        losses = _diffusion_stage(st, r, data, lat, r.stop_step, lambda s: r.lr * _cosine(s, r.steps, r.warmup),
                                  r.caption_weights, g, rng, "text-to-image", progress, snap2)
    else:
        prev = StableDiffusionPipeline.from_pretrained(stage2_from, dtype=torch.float32)
        vae, losses, vae_loss = prev.vae, [], float("nan")
        st = _Stage(prev.unet, prev.text_encoder, None, None)  # type: ignore[arg-type]
        with torch.no_grad():
            lat = torch.cat([vae.encode(b).latent_dist.mean for b in data.images.split(512)]) * vae.config.scaling_factor
    scale = vae.config.scaling_factor
    # Stage 3: continue from the EMA weights with a constant rate and digit-naming captions. Its
    # own generators make it depend on stage 2's weights only (so it can start from a snapshot).
    g.manual_seed(r.seed + 1)
    rng.seed(r.seed + 1)
    live_u, live_t = copy.deepcopy(st.ema_unet or st.unet), copy.deepcopy(st.ema_text or st.text)
    st = _Stage(live_u.requires_grad_(True), live_t.requires_grad_(True),
                copy.deepcopy(live_u).requires_grad_(False), copy.deepcopy(live_t).requires_grad_(False))

    def snap3(step: int) -> None:
        if snapshot_every and step % snapshot_every == 0 and step < r.bind_steps:
            _pipeline(vae, st.ema_unet, st.ema_text, tok).save_pretrained(snaps / f"bind_{step}")

    losses += _diffusion_stage(st, r, data, lat, r.bind_steps, lambda s: r.bind_lr * min(1.0, (s + 1) / r.warmup),
                               r.bind_caption_weights, g, rng, "digit binding", progress, snap3, r.bind_token_noise)
    pipe = _pipeline(vae, st.ema_unet, st.ema_text, tok)
    info = {
        "recipe": recipe_dict(r),
        "train_seconds": round(time.time() - t0, 1),
        "vae_final_loss": vae_loss,
        "final_loss_mean_last_200": sum(losses[-200:]) / max(1, len(losses[-200:])),
        "n_train_images": int((~data.heldout).sum()),
        "latent_scaling_factor": scale,
    }
    if vae_from is not None:
        info["vae_from"] = Path(vae_from).name
    save_artifact(pipe, out, info)
    return info


def save_artifact(pipe: StableDiffusionPipeline, out: str | Path, info: dict) -> None:
    """The model as fp16 safetensors in a diffusers folder, with its recipe, written atomically."""
    with atomic_dir(out) as tmp:
        pipe.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
        # Weights are stored in fp16 (small artifact), but transformers also records fp16 as the
        # text encoder's load dtype; diffusers loads its models in fp32, so say fp32 for both.
        te_config = Path(tmp) / "text_encoder" / "config.json"
        atomic_write_json(te_config, {**json.loads(te_config.read_text()), "dtype": "float32"})
        atomic_write_json(Path(tmp) / "recipe.json", info)


def _pipeline(vae, unet, text, tok) -> StableDiffusionPipeline:
    return StableDiffusionPipeline(
        vae=vae, text_encoder=copy.deepcopy(text).eval(), tokenizer=tok, unet=copy.deepcopy(unet).eval(),
        scheduler=DDIMScheduler(**SD_SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


def recipe_dict(r: DigitsRecipe) -> dict:
    d = asdict(r)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
