"""How reproducible is SalUn's saliency mask? Jaccard agreement of two masks whose (t, noise) draws
use different seeds, for growing forget sets, with the official recipe (erase/objectives/salun.py:
per-sample draws, guided prediction, signed gradients summed over the set, then |.|) and with the
previous recipe (shared draws, unguided loss, |gradient| summed per batch).

    python scripts/measure_salun_mask.py --model zoo:digits --sizes 8 32 64
"""

from __future__ import annotations

import argparse
import json

import torch

from erase.models.sampling import sample_set
from erase.objectives.base import Batch, Draws, Models, denoising_loss
from erase.objectives.salun import SalUn, SalUnConfig
from erase.objectives.salun_mask import global_threshold, jaccard, saliency_masks
from erase.train.model import load_model


def masks(models: Models, x0, prompts, seed: int, recipe: str, fraction: float, batch: int) -> dict:
    params = {n: p for n, p in models.unet.named_parameters()}
    obj = SalUn(SalUnConfig(mask_fraction=fraction, saliency_batch_size=batch))

    def batches():
        for s in range(0, len(prompts), batch):
            ids = torch.arange(s, min(len(prompts), s + batch))
            yield Batch(forget_prompts=[prompts[i] for i in ids], forget_ids=ids, forget_latents=x0[ids],
                        rng=Draws(seed=seed, step=-1, shared=(recipe == "previous")))

    if recipe == "official":
        return saliency_masks(params, lambda: (obj.mask_loss(models, b) for b in batches()), fraction)
    scores = {n: torch.zeros(p.shape) for n, p in params.items()}  # previous: sum of |grad| per batch
    for b in batches():
        grads = torch.autograd.grad(denoising_loss(models, b, b.forget_latents, b.forget_prompts, b.forget_ids).mean(), list(params.values()))
        for n, g in zip(params, grads):
            scores[n] += g.abs()
    thr = global_threshold(scores, fraction)
    return {n: (s > thr).float() for n, s in scores.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="zoo:digits")
    ap.add_argument("--prompts", nargs="+", default=["a handwritten three", "the number 3", "digit three", "a three"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 32, 64])
    ap.add_argument("--fraction", type=float, default=0.5)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()

    pipe = load_model(args.model)
    models = Models.from_pipeline(pipe.to("cpu"))
    models.unet.requires_grad_(True)
    n_max = max(args.sizes)
    prompts = [args.prompts[i % len(args.prompts)] for i in range(n_max)]
    x0 = sample_set(models, prompts, 0, "mask", 20, 5.0)["latents"]
    out = {}
    for recipe in ("official", "previous"):
        for n in args.sizes:
            a = masks(models, x0[:n], prompts[:n], 1, recipe, args.fraction, args.batch)
            b = masks(models, x0[:n], prompts[:n], 2, recipe, args.fraction, args.batch)
            out[f"{recipe}/n{n}"] = round(jaccard(a, b), 4)
            print(recipe, n, out[f"{recipe}/n{n}"], flush=True)
    print(json.dumps({"model": args.model, "fraction": args.fraction, "jaccard": out}))


if __name__ == "__main__":
    main()
