"""`erase bench NAME`: benchmarks that print what they measured in one run and save it as JSON.

- digits-world: the embedded model's quality on held-out phrasings (issue: the embedded default).
- retrain-rate: how often a model (e.g. the retrain-without-3 reference) draws a concept when asked.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", choices=["digits-world", "retrain-rate"])
    p.add_argument("--model", default="zoo:digits", help="model source (default zoo:digits)")
    p.add_argument("--per-digit", type=int, default=50, help="images per digit (default 50: 500 in all)")
    p.add_argument("--digit", type=int, default=3, help="retrain-rate: the digit asked for (default 3)")
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--steps", type=int, default=25, help="DDIM steps (default 25)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("bench_out"), help="folder for JSON and grids")


def run(args: argparse.Namespace) -> int:
    import torch

    from erase.bench import digits_world as dw
    from erase.io import atomic_write_json
    from erase.models.loading import load_pipeline
    from erase.zoo.judges import load_judges

    torch.manual_seed(args.seed)
    t0 = time.time()
    pipe = load_pipeline(args.model)
    judges = load_judges()
    digits = tuple(range(10)) if args.name == "digits-world" else (args.digit,)
    prompts = dw.heldout_prompts(args.per_digit, args.seed, digits)
    images = dw.generate(pipe, prompts, args.guidance, args.steps)
    result = {"benchmark": args.name, "model": args.model, "n_images": len(images), "guidance": args.guidance,
              "ddim_steps": args.steps, "seed": args.seed, **dw.judge(judges, images, prompts)}
    if args.name == "digits-world":
        result.update(dw.frechet_report(judges, images, args.seed))
    result["seconds"] = round(time.time() - t0, 1)
    out = args.out / args.name
    atomic_write_json(out / "result.json", result)
    dw.save_grid(images, out / "grid.png", cols=args.per_digit if args.per_digit <= 25 else 25)
    print(json.dumps(result, indent=2))
    print(f"wrote {out / 'result.json'} and {out / 'grid.png'}")
    return 0
