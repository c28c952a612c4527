"""Time of one ESD-x training step (forward, target, backward) on the tiny random pipelines of each
family, interleaved in one process so machine load hits all alike; prints medians and the ratios
to SD-1. CPU, one thread unless told otherwise.

    OMP_NUM_THREADS=1 python scripts/measure_arch_step.py --sizes tiny tiny-sd2 tiny-sdxl --steps 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from erase.models.builder import build_pipeline
from erase.models.core import Models
from erase.models.sampling import sample_set
from erase.objectives.base import Batch, Draws
from erase.objectives.esd import Esd, EsdConfig
from erase.train.params import select_parameters

PROMPTS = ["a handwritten three", "the number 3", "a red three", "digit three"]


def setup(size: str):
    pipe = build_pipeline(size)
    select_parameters({"unet": pipe.unet, "text_encoder": pipe.text_encoder}, "xattn", [], None, "measure")
    models = Models.from_pipeline(pipe)
    obj = Esd(EsdConfig(ddim_steps=10))
    obj.cache = sample_set(models, PROMPTS, 0, "esd", 10, 3.0, keep_trajectory=True)
    params = [p for p in pipe.unet.parameters() if p.requires_grad]
    return models, obj, params


def step(models: Models, obj: Esd, params, i: int) -> float:
    batch = Batch(forget_prompts=PROMPTS, forget_ids=torch.arange(len(PROMPTS)), rng=Draws(seed=0, step=i))
    start = time.perf_counter()
    obj.losses(models, batch).forget.mean().backward()
    elapsed = time.perf_counter() - start
    for p in params:
        p.grad = None
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", nargs="+", default=["tiny", "tiny-sd2", "tiny-sdxl"])
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    runs = {s: setup(s) for s in args.sizes}
    times: dict[str, list[float]] = {s: [] for s in args.sizes}
    for i in range(args.steps + 2):
        for s, (models, obj, params) in runs.items():
            t = step(models, obj, params, i)
            if i >= 2:  # the first steps warm caches up
                times[s].append(t)
    med = {s: statistics.median(v) for s, v in times.items()}
    base = med[args.sizes[0]]
    print(json.dumps({s: {"median_s": round(m, 4), "ratio": round(m / base, 2)} for s, m in med.items()}, indent=1))


if __name__ == "__main__":
    main()
