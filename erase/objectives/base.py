"""The contract between the trainer and the unlearning objectives.

Objectives know nothing of Accelerate, nor of the architecture. The trainer builds `Models`
(erase/models/core.py, `Models.from_pipeline`: trainable and frozen parts, `original()` to compute
with the ORIGINAL weights, `encode`, `pred` and the prediction type's `target`), hands each step
a `Batch`, and gets back `Losses`: a VECTOR of per-sample forget terms, a scalar retain term and a
detached per-sample difficulty for loss-based reweighting (LoReUn, see erase/weighting.py). Per step:

    out = objective.losses(models, batch)
    w = weighting(out.difficulty, batch.forget_ids)          # mean 1, no grad
    loss = (w * out.forget).mean() + (out.retain or 0)

Randomness (timesteps, noise) comes from `batch.rng`, which is a function of (seed, step,
micro-batch, sample id) only: a resumed run and a run split over several processes draw exactly
the same numbers as one uninterrupted single-process run.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from erase.models.core import Cond, Conditioning, Models  # noqa: F401 (Models lives with the models; re-exported)


@dataclass
class Draws:
    """Deterministic randomness for one micro-batch, independent of process rank and resume.

    By default (`shared=False`) each sample draws its own timestep and noise from its id, as every
    official implementation draws (t, eps) per sample for its training losses. `shared=True` gives
    every sample in the micro-batch the same draw (used for no-grad estimates that must compare
    samples on equal terms: static LoReUn, RUM scores). Two copies of one sample id in the same
    micro-batch (a batch larger than the set) get the same draw.
    """

    seed: int = 0
    step: int = 0
    micro: int = 0
    shared: bool = False

    def generator(self, stream: str, sample_id: int | None = None) -> torch.Generator:
        key = f"{self.seed}/{self.step}/{self.micro}/{stream}/{'*' if self.shared or sample_id is None else int(sample_id)}"
        g = torch.Generator(device="cpu")
        g.manual_seed(int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") & (2**63 - 1))
        return g

    def randint(self, ids: Tensor, low: int, high: int, stream: str = "t") -> Tensor:
        """One integer in [low, high) per sample id, [B] long (on CPU)."""
        return torch.stack([torch.randint(low, high, (), generator=self.generator(stream, int(i))) for i in ids])

    def randn(self, ids: Tensor, shape: tuple[int, ...], stream: str = "noise") -> Tensor:
        """Standard normal noise [B, *shape] (on CPU, float32)."""
        return torch.stack([torch.randn(shape, generator=self.generator(stream, int(i))) for i in ids])


@dataclass
class Batch:
    """One forget micro-batch (plus retain/anchor data when the objective needs them).

    forget_ids are stable sample ids (the index of the sample in the forget set): the static
    LoReUn cache and the weight logs are keyed by them. forget_concepts says which concept of a
    multi-concept run (`concepts:`) each sample belongs to. Latents are scaled VAE latents. Anchor
    prompts/latents (concept ablation) are aligned with the forget samples, one per forget sample.
    """

    forget_prompts: list[str]
    forget_ids: Tensor
    forget_latents: Tensor | None = None
    forget_concepts: Tensor | None = None  # [B] each sample's concept index (multi-concept runs; else zeros)
    retain_prompts: list[str] | None = None
    retain_latents: Tensor | None = None
    retain_ids: Tensor | None = None
    anchor_prompts: list[str] | None = None
    anchor_latents: Tensor | None = None
    rng: Draws = field(default_factory=Draws)
    # set by the trainer when the weighting needs `Losses.reference` (LoReUn-d, estimate: reference)
    want_reference: bool = False

    def __len__(self) -> int:
        return len(self.forget_prompts)


@dataclass
class Losses:
    """What an objective returns for one batch.

    forget: [B] per-sample forget TERM with grad, already signed/scaled (gradient ascent is negative).
    retain: scalar retain TERM with grad, already scaled (alpha * L_r), or None.
    difficulty: [B] detached per-sample loss for LoReUn; SMALL = the model still knows the sample.
    timesteps: [B] the timestep each difficulty was taken at (None if it has none).
    reference: [B] the same difficulty computed with the ORIGINAL weights at the same draw, when
    `batch.want_reference` (else None). LoReUn's draw-fair estimate (erase/weighting.py) is
    static_i + (difficulty_i - reference_i): the draw's effect cancels in the difference.
    """

    forget: Tensor
    retain: Tensor | None
    difficulty: Tensor
    logs: dict[str, float] = field(default_factory=dict)
    timesteps: Tensor | None = None
    reference: Tensor | None = None

    def __post_init__(self) -> None:
        assert self.forget.ndim == 1, f"forget term must be a vector [B], got shape {tuple(self.forget.shape)}"
        assert self.difficulty.shape == self.forget.shape, "difficulty must have the forget term's shape [B]"
        assert self.retain is None or self.retain.ndim == 0, "retain term must be a scalar"
        self.difficulty = self.difficulty.detach().float()
        if self.timesteps is not None:
            assert self.timesteps.shape == self.forget.shape, "timesteps must have the forget term's shape [B]"
            self.timesteps = self.timesteps.detach().long()
        if self.reference is not None:
            assert self.reference.shape == self.forget.shape, "reference must have the forget term's shape [B]"
            self.reference = self.reference.detach().float()


class SetupData(Protocol):
    """What `Objective.setup` sees of the data (built by erase.train.data)."""

    forget_prompts: list[str]  # one per forget sample, templates expanded; index = sample id
    retain_prompts: list[str]
    anchor_prompts: list[str]
    seed: int

    def forget_batches(self, batch_size: int) -> Iterator[Batch]:
        """One ordered pass over the forget set (ids 0..N-1), with whatever the objective needs."""
        ...

    def cached(self, name: str, make: Callable[[], dict[str, Tensor]]) -> dict[str, Tensor]:
        """Tensors from RUN/cache/<name>.safetensors, made once by `make()` (on the main process)."""
        ...


@dataclass
class ObjectiveConfig:
    """Base of every objective's hyperparameters (the `objective:` mapping of a run config)."""


class Objective:
    """An unlearning objective: per-sample forget terms, a retain term and a difficulty.

    Subclasses set `config_class` (an `ObjectiveConfig` dataclass), `needs` and `default_params`
    (a parameter set of erase.train.params, e.g. "xattn" for ESD-x), implement `losses`, and
    register themselves under their method name (erase/objectives/registry.py). Optional hooks:
    `setup` (one-time caches), `gradient_masks` (SalUn), `before_step` (inner loops).
    """

    config_class: ClassVar[type[ObjectiveConfig]] = ObjectiveConfig
    needs: ClassVar[frozenset[str]] = frozenset()
    # Losses.reference costs no extra model call (the objective computes the original model's
    # prediction at the same draw anyway): LoReUn-d's `estimate: auto` then uses it
    reference_is_free: ClassVar[bool] = False

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.config_class()

    @property
    def default_params(self) -> str:
        return "unet"

    def setup(self, models: Models, data: SetupData) -> None:
        """One-time work before training (caches built with `models.original()`)."""

    def losses(self, models: Models, batch: Batch) -> Losses:
        raise NotImplementedError

    def difficulty(self, models: Models, batch: Batch) -> Tensor:
        """[B] difficulty without gradients (used for static LoReUn under `models.original()`)."""
        with torch.no_grad():
            return self.losses(models, batch).difficulty

    def gradient_masks(self) -> dict[str, Tensor] | None:
        """Optional {trainable parameter name: 0/1 mask}; the trainer multiplies gradients by it."""
        return None

    def before_step(self, models: Models, batch: Batch, params: list[nn.Parameter]) -> None:
        """Optional hook run before each step's forward (e.g. an adversarial inner loop)."""

    def state_dict(self) -> dict[str, Tensor]:
        """Tensors the objective carries from step to step (e.g. AdvUnlearn's latest adversarial
        token); saved in every checkpoint so a resumed run continues exactly. Default: none."""
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore what `state_dict` returned."""

    def describe(self) -> dict[str, Any]:
        """The hyperparameters as plain values (run.json adds the method name from the run config)."""
        return dataclasses.asdict(self.config)


# --- small helpers shared by objectives -------------------------------------------------------

def per_sample_mse(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared error per sample: [B, ...] x [B, ...] -> [B], in float32 or wider (float64 stays float64)."""
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    return (a.to(dtype) - b.to(dtype)).pow(2).flatten(1).mean(1)


def noisy(models: Models, batch: Batch, x0: Tensor, ids: Tensor, stream: str = "") -> tuple[Tensor, Tensor, Tensor]:
    """(x_t, noise, t) for clean latents x0 with the batch's deterministic draws (t: `Models.train_timesteps`
    of a uniform integer draw: the draw itself for DDPM schedules, the flow-matching examples' timesteps for FLUX / SD3)."""
    t = models.train_timesteps(batch.rng.randint(ids, 0, models.num_train_timesteps, stream=f"t{stream}")).to(models.device)
    noise = batch.rng.randn(ids, tuple(x0.shape[1:]), stream=f"noise{stream}").to(models.device, x0.dtype)
    return models.add_noise(x0, noise, t), noise, t


def retain_loss(models: Models, batch: Batch, stream: str = "r") -> Tensor:
    """Mean ordinary diffusion loss on the batch's retain images with their prompts (scalar, with grad)."""
    assert batch.retain_latents is not None and batch.retain_prompts is not None, "this objective needs retain images"
    ids = batch.retain_ids if batch.retain_ids is not None else torch.arange(len(batch.retain_prompts))
    return denoising_loss(models, batch, batch.retain_latents, batch.retain_prompts, ids, stream).mean()


def denoising_loss(models: Models, batch: Batch, x0: Tensor, prompts: list[str], ids: Tensor, stream: str = "") -> Tensor:
    """Per-sample ordinary diffusion loss ||target - pred_theta(x_t, c, t)||^2, [B] with grad, where
    target is the noise (epsilon models) or v = alpha_t eps - sigma_t x_0 (v-prediction): `Models.target`."""
    return denoising_loss_t(models, batch, x0, prompts, ids, stream)[0]


def denoising_loss_t(models: Models, batch: Batch, x0: Tensor, prompts: list[str], ids: Tensor,
                     stream: str = "") -> tuple[Tensor, Tensor, Tensor | None]:
    """(per-sample denoising loss [B] with grad, its timesteps [B], the original model's loss at
    the same draw [B] when `batch.want_reference` else None)."""
    x_t, noise, t = noisy(models, batch, x0, ids, stream)
    target = models.target(x0, noise, t)
    loss = per_sample_mse(models.pred(x_t, t, models.encode(prompts)), target)
    return loss, t, original_error(models, batch, x_t, t, prompts, target)


def original_error(models: Models, batch: Batch, x_t: Tensor, t: Tensor, prompts: list[str], target: Tensor) -> Tensor | None:
    """||target - pred_o(x_t, c, t)||^2 [B] with the ORIGINAL weights when the batch asks for it (else
    None); `target` is the denoising target (`Models.target`: the noise for epsilon models)."""
    if not batch.want_reference:
        return None
    with models.original(), torch.no_grad():
        return per_sample_mse(models.pred(x_t, t, models.encode(prompts)), target)
