"""How many shared timesteps does RUM's loss score need to rank forget samples reliably?

Scores the forget set of a run config twice with the ORIGINAL model, with two different noise
seeds, and prints the Spearman rank correlation between the two scorings for n_timesteps in
{1, 2, 5, 10}, with shared draws (every sample sees the same t and noise, erase.rum) and with
independent draws per sample. A partition is only meaningful if a re-scoring ranks the samples
the same way (rho near 1).

    python scripts/measure_rum_scores.py configs/digits/rum_esd.yaml
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from erase.config import load_config
from erase.resources import locate
from erase.rum import denoising_scores, shared_timesteps
from erase.rum.runner import frozen_models
from erase.train.config import RunConfig
from erase.train.data import RunData


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


@torch.no_grad()
def independent_scores(models, latents, prompts, n: int, seed: int) -> torch.Tensor:
    """The same estimate with a different (t, noise) draw for every sample (what RUM avoids)."""
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(len(prompts))
    cond = models.encode(list(prompts))
    for _ in range(n):
        t = torch.randint(0, models.num_train_timesteps, (len(prompts),), generator=g)
        eps = torch.randn(latents.shape, generator=g)
        pred = models.pred(models.add_noise(latents, eps, t), t, cond)
        out += (pred - eps).pow(2).flatten(1).mean(1)
    return out / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", type=locate, help="run config; configs/... means the shipped recipes")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(RunConfig, args.config)
    models = frozen_models(cfg, str(args.config))
    with tempfile.TemporaryDirectory() as tmp:
        data = RunData(cfg.data, frozenset({"forget_images"}), cfg.train.seed, Path(tmp), cache_key=cfg.model)
        data.prepare(models)
    lat, prompts = data.forget_latents, data.forget_prompts
    print(f"{args.config}: {len(prompts)} forget samples; Spearman rho between two scorings (seeds 0 and 1)")
    print(f"{'n_timesteps':>12} {'shared draws':>13} {'independent':>12}   shared t = {shared_timesteps(5).tolist()} (n=5)")
    for n in (1, 2, 5, 10):
        shared = spearman(denoising_scores(models, lat, prompts, n, seed=0), denoising_scores(models, lat, prompts, n, seed=1))
        indep = spearman(independent_scores(models, lat, prompts, n, 0), independent_scores(models, lat, prompts, n, 1))
        print(f"{n:>12} {shared:>13.3f} {indep:>12.3f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
