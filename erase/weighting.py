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

How l_i is estimated for a diffusion sample (decided by measurement, scripts/measure_difficulty.py):
the denoising error ||eps - eps_theta(x_t, c_i, t)||^2 of ONE draw is dominated by the draw
(t, eps), not by the sample. Measured on the digits model (24 generated forget images of "3",
two independent estimates per estimator, Spearman rank correlation between them, 10 repeats):
    independent (t, eps) per sample, 1 draw:  rho = 0.14  (min -0.10; same top sample 10%)
    one (t, eps) shared by the batch:         rho = 0.79  (min  0.45; same top sample 30%)
    shared, mean of 8 draws:                  rho = 0.99  (min  0.94; same top sample 100%)
So with independent draws LoReUn would weight noise. The trainer therefore draws ONE (t, eps)
per micro-batch for the forget pass (`train.shared_draws: true`, the default; t still varies
from step to step), which makes the dynamic weights of a batch compare samples fairly at no
extra cost, and static LoReUn averages `static_draws` (default 8) shared draws per sample.

tau sets how peaked the weights are: difficulty is a mean squared error (~0.01-1), so useful
values are small (0.01-0.1 for eps-prediction MSEs); tau -> inf gives uniform weights.
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

    def __post_init__(self) -> None:
        if not self.tau > 0:
            raise ValueError(f"tau: must be > 0, got {self.tau}")
        if self.static_draws < 1:
            raise ValueError(f"static_draws: must be >= 1, got {self.static_draws}")


def loreun_weights(difficulty: Tensor, tau: float) -> Tensor:
    """softmax(-l / tau) * B: a smaller loss gets a larger weight; mean 1; no gradient."""
    l = difficulty.detach().float()
    return torch.softmax(-l / tau, dim=0) * l.numel()


class Weighting:
    """Computes forget-sample weights each step and keeps what a resumed run needs (state_dict).

    `num_samples` is the size of the forget set (ids are 0..N-1). Also accumulates the mean weight
    per sample id, so a run can report which samples were upweighted.
    """

    def __init__(self, config: WeightingConfig, num_samples: int):
        self.config = config
        self.num_samples = num_samples
        self.static: Tensor | None = None  # [N] original-model losses (static)
        self.latest = torch.full((num_samples,), float("nan"))  # [N] last dynamic loss per id (global)
        self.weight_sum = torch.zeros(num_samples, dtype=torch.float64)
        self.weight_count = torch.zeros(num_samples, dtype=torch.float64)

    @property
    def needs_static(self) -> bool:
        return self.config.kind == "static"

    def set_static(self, losses: Tensor) -> None:
        assert losses.shape == (self.num_samples,), f"static losses must be [{self.num_samples}], got {tuple(losses.shape)}"
        self.static = losses.detach().float().cpu()

    def __call__(self, difficulty: Tensor, ids: Tensor) -> Tensor:
        """Weights [B] (float32, detached) for a micro-batch with these difficulties and ids."""
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
                l = difficulty.detach().float().cpu()
                self.latest[ids] = l
                table = self.latest[~torch.isnan(self.latest)]
            if cfg.normalize == "batch":
                w = loreun_weights(l, cfg.tau)
            else:
                # Softmax over the whole (seen) forget set, scaled so its mean weight is 1.
                log_z = torch.logsumexp(-table / cfg.tau, dim=0)
                w = torch.exp(-l / cfg.tau - log_z) * table.numel()
        self.weight_sum.index_add_(0, ids, w.double())
        self.weight_count.index_add_(0, ids, torch.ones(len(ids), dtype=torch.float64))
        return w.to(difficulty.device)

    def mean_weights(self) -> Tensor:
        """Mean weight each sample id received so far (NaN for ids never drawn)."""
        return (self.weight_sum / self.weight_count).float()

    def state_dict(self) -> dict[str, Tensor]:
        state = {"latest": self.latest, "weight_sum": self.weight_sum, "weight_count": self.weight_count}
        if self.static is not None:
            state["static"] = self.static
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.latest = state["latest"].clone()
        self.weight_sum = state["weight_sum"].clone()
        self.weight_count = state["weight_count"].clone()
        if "static" in state:
            self.static = state["static"].clone()
