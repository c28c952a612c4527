"""`erase bench NAME`: benchmarks that print what they measured in one run and save it as JSON.

- digits-world: the embedded model's quality on held-out phrasings (issue: the embedded default).
- retrain-rate: how often a model (e.g. the retrain-without-3 reference) draws a concept when asked.
- erasure: an erased model next to its base on the same held-out prompts and seeds: how often the
  erased digit is still drawn, and how many points every other digit and the ink colour lost
  (the engine's targets: erased <= 5%, every other digit within 5 points of the base).
- speed, generation: erase/bench/speed.py and erase/bench/generation.py (their own flags below).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


def add_arguments(p: argparse.ArgumentParser) -> None:
    from erase.bench.cli import add_bench_arguments

    p.add_argument("name", choices=["digits-world", "retrain-rate", "erasure", "speed", "generation"])
    p.add_argument("--model", default="zoo:digits", help="model source (default zoo:digits; for erasure: the erased run)")
    p.add_argument("--base", default="zoo:digits", help="erasure: the model before erasing (default zoo:digits)")
    p.add_argument("--per-digit", type=int, default=50, help="images per digit (default 50: 500 in all)")
    p.add_argument("--digit", type=int, default=3, help="retrain-rate/erasure: the digit asked for / erased (default 3)")
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--steps", type=int, default=25, help="DDIM steps (default 25)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("bench_out"), help="folder for JSON and grids")
    add_bench_arguments(p)


def measure(source: str, prompts: list, args: argparse.Namespace, judges) -> tuple[dict, "np.ndarray"]:
    """Generate `prompts` with `source` and judge them: (result dict, images)."""
    from erase.bench import digits_world as dw
    from erase.models.loading import load_pipeline

    pipe = load_pipeline(source)
    images = dw.generate(pipe, prompts, args.guidance, args.steps, desc=f"generating ({source})")
    return dw.judge(judges, images, prompts), images


def run(args: argparse.Namespace) -> int:
    import torch

    if args.name in ("speed", "generation"):
        from erase.bench.cli import run_bench

        return run_bench(args)

    from erase.bench import digits_world as dw
    from erase.io import atomic_write_json
    from erase.zoo.judges import load_judges

    torch.manual_seed(args.seed)
    t0 = time.time()
    judges = load_judges()
    digits = (args.digit,) if args.name == "retrain-rate" else tuple(range(10))
    prompts = dw.heldout_prompts(args.per_digit, args.seed, digits)
    result = {"benchmark": args.name, "model": args.model, "n_images": len(prompts), "guidance": args.guidance,
              "ddim_steps": args.steps, "seed": args.seed}
    measured, images = measure(args.model, prompts, args, judges)
    out = args.out / args.name
    cols = args.per_digit if args.per_digit <= 50 else 25  # one digit per row when it fits
    if args.name == "erasure":
        base, base_images = measure(args.base, prompts, args, judges)
        result.update(dw.compare(measured, base, args.digit, base_model=args.base))
        dw.save_grid(base_images, out / "grid_base.png", cols=cols)
    else:
        result.update(measured)
    if args.name == "digits-world":
        result.update(dw.frechet_report(judges, images, args.seed))
    result["seconds"] = round(time.time() - t0, 1)
    atomic_write_json(out / "result.json", result)
    dw.save_grid(images, out / "grid.png", cols=cols)
    print(json.dumps(result, indent=2))
    print(f"wrote {out / 'result.json'} and {out / 'grid.png'}")
    return 0
