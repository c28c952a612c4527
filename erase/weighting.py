"""Per-sample weights for the forget term: uniform, or LoReUn (loss-based reweighting).

LoReUn (Loss-based Reweighting for Unlearning; "Data Itself Implicitly Provides Cues to Improve
Machine Unlearning"): forget samples whose loss is SMALL are the ones the model still knows
well and are the hardest to forget, so they get MORE weight:

    w_i = softmax_i(-l_i / tau) * B        (mean weight 1 over the normalisation set)
    L   = (1/B) sum_i w_i * L_forget_i + L_retain

* dynamic (LoReUn-d): l_i = the sample's loss under the CURRENT weights, detached, from the same
  forward pass as the objective (no extra compute).
* static (LoReUn-s): l_i = the sample's loss under the ORIGINAL weights, computed once before
  unlearning (averaged over `static_draws` timestep/noise draws) and cached per sample id.
* normalize="batch": the softmax runs over the (global, all-process) micro-batch, so the
  weights in every batch have mean exactly 1. normalize="global": it runs over the whole forget
  set (static: every sample; dynamic: the latest loss seen for each sample id so far), so a
  batch of easy samples is down-weighted as a whole; mean 1 over the forget set.

How l_i is estimated for a diffusion sample (decided by measurement, scripts/measure_difficulty.py;
numbers and commands in BENCHMARKS.md): the denoising error ||eps - eps_theta(x_t, c_i, t)||^2 of
ONE draw is dominated by the draw (t, eps), not by the sample, and training draws (t, eps) per
sample, as every official implementation does. Estimates, `estimate:`
* reference: a control variate. Before training, each sample's loss under the ORIGINAL
  weights is averaged over `static_draws` draws shared by every sample (the same t and noise for
  all; cached, as LoReUn-s). At each step the objective also reports the original model's loss
  at the sample's own draw (`Losses.reference`), and
      l_i = static_i + (loss_i(theta) - loss_i(theta_o))          (same draw in both terms)
  The draw's effect cancels in the difference, which is exactly how far training has moved the
  sample's loss; at the start l_i = static_i. Cost: ESD and AdvUnlearn already compute the
  original model's conditional prediction (their target), so it is free; image-based objectives
  (SalUn, GA, NegGrad+, EraseDiff, ablation) spend one no-grad forward of the original model.
* timestep: the loss divided by a running per-timestep baseline (the mean loss of all samples
  recently seen in the same one of `timestep_buckets` buckets of t, an EMA with
  `baseline_momentum`, fed by the gathered losses of every process), times the running mean over
  all timesteps to keep loss units. Free, but it leaves the noise's share of the draw.
* raw: the loss itself (fair only with `train.shared_draws: true`).
* auto (default): reference where the objective computes the original model's prediction at the
  same draw anyway (`Objective.reference_is_free`: ESD, AdvUnlearn), timestep elsewhere, so that
  LoReUn-d costs no extra model call (where it is not free, reference costs one no-grad forward
  of the original model per step: BENCHMARKS.md, "LoReUn-d's cost per step").
With `sample_momentum > 0` a sample's estimate is also averaged over its visits (an EMA per id).
Static LoReUn uses the static losses above unchanged.

Several concepts (a run's `concepts:`): the softmax runs over the samples of every concept together
(the batch, or with normalize="global" the whole forget set), so LoReUn moves weight ACROSS
concepts to the one the model still knows best; each concept's `weight` then multiplies its
samples' weights (`set_concepts`, normalised to mean 1 over the forget set), and
`concept_mean_weights` reports how much each concept received.

tau sets how peaked the weights are: difficulty is a mean squared error (~0.01-1), so useful
values are small (0.01-0.1 for eps-prediction MSEs); tau -> inf gives uniform weights.
With `standardize: true` the difficulties are first standardised over the normalisation set
(l -> (l - mean) / std over the batch, or over the forget-set table with `normalize: global`), so
tau is in units of the losses' own spread whatever their scale: the max/min weight ratio over the
set is exp((z_max - z_min) / tau). A classifier's training-set losses are ~1e-3 with a long tail,
where a fixed tau on the raw scale leaves the weights flat (BENCHMARKS.md, "The seeds' claims").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor


@dataclass
class WeightingConfig:
    """The `weighting:` mapping of a run config."""

    kind: Literal["uniform", "dynamic", "static"] = "uniform"
    tau: float = 0.05
    normalize: Literal["batch", "global"] = "batch"
    static_draws: int = 8  # static: (t, eps) draws averaged per sample before unlearning
    # dynamic: how a sample's current loss is estimated from one per-sample draw (module docstring):
    # reference = static + (loss - original model's loss at the same draw); timestep = loss over a
    # running per-timestep baseline; raw = the loss itself; auto = reference where the objective
    # computes the original model's prediction anyway (ESD, AdvUnlearn), else timestep
    estimate: Literal["auto", "reference", "timestep", "raw"] = "auto"
    standardize: bool = False  # z-score the difficulties over the normalisation set before softmax(-z / tau)
    timestep_buckets: int = 20  # estimate timestep: buckets of [0, T) for the baseline
    baseline_momentum: float = 0.9  # EMA of each bucket's mean (the first observations are averaged)
    sample_momentum: float = 0.0  # dynamic: EMA of each sample's difficulty over its visits (0 = latest)

    def __post_init__(self) -> None:
        if not self.tau > 0:
            raise ValueError(f"tau: must be > 0, got {self.tau}")
        if self.static_draws < 1:
            raise ValueError(f"static_draws: must be >= 1, got {self.static_draws}")
        if self.timestep_buckets < 1:
            raise ValueError(f"timestep_buckets: must be >= 1, got {self.timestep_buckets}")
        for name in ("baseline_momentum", "sample_momentum"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}: must be in [0, 1), got {getattr(self, name)}")


def loreun_weights(difficulty: Tensor, tau: float) -> Tensor:
    """softmax(-l / tau) * B: a smaller loss gets a larger weight; mean 1; no gradient."""
    l = difficulty.detach().float()
    return torch.softmax(-l / tau, dim=0) * l.numel()


class Weighting:
    """Computes forget-sample weights each step and keeps what a resumed run needs (state_dict).

    `num_samples` is the size of the forget set (ids are 0..N-1). Also accumulates the mean weight
    per sample id, so a run can report which samples were upweighted.
    """

    def __init__(self, config: WeightingConfig, num_samples: int, num_timesteps: int = 1000,
                 reference_is_free: bool = False):
        self.config = config
        # the estimate in use: "auto" picks reference only where it costs no extra model call
        self.estimate = config.estimate if config.estimate != "auto" else ("reference" if reference_is_free else "timestep")
        self.num_samples = num_samples
        self.num_timesteps = num_timesteps
        self.static: Tensor | None = None  # [N] original-model losses (static)
        self.latest = torch.full((num_samples,), float("nan"))  # [N] last dynamic loss per id (global)
        self.weight_sum = torch.zeros(num_samples, dtype=torch.float64)
        self.weight_count = torch.zeros(num_samples, dtype=torch.float64)
        nb = config.timestep_buckets
        # per-timestep baseline: EMA of the loss per bucket, its observation count, and the overall EMA
        self.bucket_mean = torch.zeros(nb + 1, dtype=torch.float64)  # last entry: over every timestep
        self.bucket_count = torch.zeros(nb + 1, dtype=torch.float64)
        self.concept_of: Tensor | None = None  # [N] concept index per sample (multi-concept runs)
        self.scale: Tensor | None = None  # [N] the concept weight of each sample, mean 1

    def set_concepts(self, concept_of: Tensor, weights: list[float]) -> None:
        """Samples' concepts [N] and each concept's weight: a sample's weight is multiplied by its
        concept's, normalised so that the mean over the forget set is 1."""
        concept_of = concept_of.detach().cpu().long()
        assert concept_of.shape == (self.num_samples,), f"concept ids must be [{self.num_samples}]"
        scale = torch.tensor(weights, dtype=torch.float32)[concept_of]
        self.concept_of, self.scale = concept_of, scale / scale.mean()

    def concept_mean_weights(self) -> list[float | None]:
        """Mean weight the samples of each concept received so far (None for a concept never drawn)."""
        if self.concept_of is None:
            return []
        out: list[float | None] = []
        for k in range(int(self.concept_of.max()) + 1):
            mask = self.concept_of == k
            n = float(self.weight_count[mask].sum())
            out.append(float(self.weight_sum[mask].sum()) / n if n else None)
        return out

    @property
    def needs_static(self) -> bool:
        """Static losses (original weights, shared draws) are needed: LoReUn-s, and LoReUn-d's reference estimate."""
        return self.config.kind == "static" or self.wants_reference

    @property
    def wants_reference(self) -> bool:
        """Objectives must report `Losses.reference` (the original model's loss at the same draw)."""
        return self.config.kind == "dynamic" and self.estimate == "reference"

    def set_static(self, losses: Tensor) -> None:
        assert losses.shape == (self.num_samples,), f"static losses must be [{self.num_samples}], got {tuple(losses.shape)}"
        self.static = losses.detach().float().cpu()

    def normalized(self, difficulty: Tensor, timesteps: Tensor | None) -> Tensor:
        """Difficulties divided by the running per-timestep baseline, in loss units (updated first)."""
        cfg = self.config
        d = difficulty.detach().double().cpu()
        if self.estimate != "timestep" or timesteps is None:
            return d.float()
        nb = cfg.timestep_buckets
        buckets = (timesteps.detach().cpu().long().clamp(0, self.num_timesteps - 1) * nb) // self.num_timesteps
        for b, x in zip(buckets.tolist(), d.tolist()):  # in gathered order: the same table on every rank
            for k in (b, nb):
                self.bucket_count[k] += 1
                rate = max(1.0 / float(self.bucket_count[k]), 1.0 - cfg.baseline_momentum)
                self.bucket_mean[k] += rate * (x - self.bucket_mean[k])
        base = self.bucket_mean[buckets].abs().clamp_min(1e-12)
        return (d * self.bucket_mean[nb].abs() / base).float()

    def __call__(self, difficulty: Tensor, ids: Tensor, timesteps: Tensor | None = None,
                 reference: Tensor | None = None) -> Tensor:
        """Weights [B] (float32, detached) for a micro-batch: difficulties, sample ids, and (estimates
        timestep / reference) the timesteps and the original model's losses at the same draws."""
        cfg = self.config
        ids = ids.detach().cpu().long()
        if cfg.kind == "uniform":
            w = torch.ones(len(ids))
        else:
            if cfg.kind == "static":
                assert self.static is not None, "static LoReUn needs set_static() before training"
                l = self.static[ids]
                table = self.static
            else:
                if self.wants_reference:
                    assert reference is not None, "estimate 'reference' needs Losses.reference from the objective"
                    assert self.static is not None, "estimate 'reference' needs set_static() before training"
                    l = self.static[ids] + (difficulty.detach().float().cpu() - reference.detach().float().cpu())
                else:
                    l = self.normalized(difficulty, timesteps)
                if cfg.sample_momentum > 0:
                    prev = self.latest[ids]
                    l = torch.where(torch.isnan(prev), l, cfg.sample_momentum * prev + (1 - cfg.sample_momentum) * l)
                self.latest[ids] = l
                table = self.latest[~torch.isnan(self.latest)]
            if cfg.standardize:
                ref = l if cfg.normalize == "batch" else table
                mu, sd = ref.mean(), (ref.std() if ref.numel() > 1 else torch.zeros(()))
                sd = sd if bool(sd > 0) else torch.ones(())
                l, table = (l - mu) / sd, (table - mu) / sd
            if cfg.normalize == "batch":
                w = loreun_weights(l, cfg.tau)
            else:
                # Softmax over the whole (seen) forget set, scaled so its mean weight is 1.
                log_z = torch.logsumexp(-table / cfg.tau, dim=0)
                w = torch.exp(-l / cfg.tau - log_z) * table.numel()
        if self.scale is not None:
            w = w * self.scale[ids]
        self.weight_sum.index_add_(0, ids, w.double())
        self.weight_count.index_add_(0, ids, torch.ones(len(ids), dtype=torch.float64))
        return w.to(difficulty.device)

    def mean_weights(self) -> Tensor:
        """Mean weight each sample id received so far (NaN for ids never drawn)."""
        return (self.weight_sum / self.weight_count).float()

    def state_dict(self) -> dict[str, Tensor]:
        state = {"latest": self.latest, "weight_sum": self.weight_sum, "weight_count": self.weight_count,
                 "bucket_mean": self.bucket_mean, "bucket_count": self.bucket_count}
        if self.static is not None:
            state["static"] = self.static
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.latest = state["latest"].clone()
        self.weight_sum = state["weight_sum"].clone()
        self.weight_count = state["weight_count"].clone()
        if "bucket_mean" in state:
            self.bucket_mean = state["bucket_mean"].clone()
            self.bucket_count = state["bucket_count"].clone()
        if "static" in state:
            self.static = state["static"].clone()
