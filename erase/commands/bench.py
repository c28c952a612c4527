"""`erase bench NAME`: benchmarks that print what they measured in one run and save it as JSON.

- digits-world: the embedded model's quality on held-out phrasings (issue: the embedded default).
- retrain-rate: how often a model (e.g. the retrain-without-3 reference) draws a concept when asked.
- erasure: an erased model next to its base on the same held-out prompts and seeds: how often the
  erased digit is still drawn, and how many points every other digit and the ink colour lost
  (the engine's targets: erased <= 5%, every other digit within 5 points of the base).
- classification: classifier unlearning (every method x uniform / LoReUn-s / LoReUn-d x seed)
  against Retrain on scikit-learn digits or a local CIFAR-10 (erase/classification/).
- speed, generation, edit, attacks: erase/bench/speed.py, erase/bench/generation.py, erase/bench/edit.py and
  erase/bench/attacks.py (their own flags below).

Every bench writes `--out D` into `D/<bench name>/` (results, tables, grids): the shipped results
live in benchmarks/classification/, benchmarks/generation/ and benchmarks/attacks/, so `--out benchmarks`
rebuilds them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


def int_in(low: int, high: int | None = None):
    """argparse type: an integer in [low, high] (the error names the value and the range)."""
    want = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {want}, got {value}")
        return value

    return parse


def finite_float(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def seed_list(text: str) -> tuple[int, ...]:
    """argparse type of --seeds: "5" is seeds 0..4; "0,3,7" are those seeds; "2," is seed 2 alone."""
    parts = [x.strip() for x in text.split(",") if x.strip()]
    try:
        values = [int(x) for x in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count or a comma list of integers, got {text!r}") from None
    count = len(values) == 1 and "," not in text
    if count and values[0] == 0:
        raise argparse.ArgumentTypeError("'0' is a count of seeds (none); for seed 0 alone write '0,' (a one-seed list)")
    if not values or any(v < 0 for v in values) or (count and values[0] < 1):
        raise argparse.ArgumentTypeError(f"expected a count >= 1 or a comma list of seeds >= 0, got {text!r}")
    return tuple(range(values[0])) if count else tuple(values)


def digit_list(text: str) -> tuple[int, ...]:
    """argparse type of --digits: a comma list of distinct digits 0-9."""
    parts = [x.strip() for x in text.split(",") if x.strip()]
    if not parts or not all(x.isdigit() and int(x) < 10 for x in parts) or len(set(parts)) != len(parts):
        raise argparse.ArgumentTypeError(f"expected distinct digits 0-9 separated by commas, got {text!r}")
    return tuple(int(x) for x in parts)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from erase.bench.cli import add_bench_arguments
    from erase.commands._model_args import add_model_arguments

    p.add_argument("name", choices=["digits-world", "retrain-rate", "erasure", "classification", "speed", "generation",
                                    "edit", "attacks"])
    p.add_argument("--model", default="zoo:digits", help="model source (default zoo:digits; for erasure: the erased run)")
    p.add_argument("--base", default="zoo:digits", help="erasure: the model before erasing (default zoo:digits)")
    p.add_argument("--per-digit", type=int_in(1), default=50, help="images per digit (default 50: 500 in all)")
    p.add_argument("--digit", type=int_in(0, 9), default=3, help="retrain-rate/erasure: the digit asked for / erased (default 3)")
    p.add_argument("--digits", type=digit_list, metavar="D,D,...",
                   help="erasure: the digits a multi-concept run erased, e.g. 3,5,8 (instead of --digit)")
    p.add_argument("--guidance", type=finite_float, default=5.0)
    p.add_argument("--steps", type=int_in(1), default=25, help="DDIM steps (default 25)")
    p.add_argument("--seed", type=int_in(0, 2**32 - 1), default=0)
    p.add_argument("--out", type=Path, default=Path("bench_out"),
                   help="results go to OUT/<bench name>/ for every bench (default bench_out)")
    p.add_argument("--quick", action="store_true",
                   help="classification, speed, generation: the small CI variant (fewer epochs, budgets, seeds)")
    p.add_argument("--seeds", type=seed_list, metavar="N|S,S,...",
                   help="classification, generation: N seeds (0..N-1) or a comma list; one seed S alone: 'S,' "
                        "(defaults: 5 and 0,1,2)")
    add_model_arguments(p, components=True)
    c = p.add_argument_group("classification")
    c.add_argument("--forget", choices=["random10", "class", "memorised", "all"], default="random10",
                   help="forget set: a random 10%% of the training set, one whole class, RUM's memorisation-ranked "
                        "10%%, or all three (OUT/<forget>/ each)")
    c.add_argument("--data", choices=["digits", "cifar10"], default="digits")
    c.add_argument("--data-dir", default=None, help="--data cifar10: the cifar-10-batches-bin folder")
    c.add_argument("--tau", type=finite_float, default=None,
                   help="LoReUn temperature on standardised losses (default 1: weights exp(-z))")
    c.add_argument("--normalize", choices=["batch", "global"], default="batch",
                   help="LoReUn softmax over each batch's forget samples or over the whole forget set")
    add_bench_arguments(p)


def measure(source: str, prompts: list, args: argparse.Namespace, judges, overrides: bool = True) -> tuple[dict, np.ndarray]:
    """Generate `prompts` with `source` and judge them: (result dict, images). The component
    overrides (--unet, --text-encoder, --lora) apply to --model only, never to --base."""
    from erase.bench import digits_world as dw
    from erase.commands._model_args import model_kwargs
    from erase.models.loading import load_pipeline

    kw = model_kwargs(args)
    if not overrides:
        kw = {k: v for k, v in kw.items() if k in ("config", "allow_pickle")}
    pipe = load_pipeline(source, **kw)
    images = dw.generate(pipe, prompts, args.guidance, args.steps, desc=f"generating ({source})")
    return dw.judge(judges, images, prompts), images


def run_classification(args: argparse.Namespace) -> int:
    from erase.classification import bench as cb
    from erase.classification.methods import DEFAULT_TAU
    from erase.errors import EraseError

    if args.tau is not None and not args.tau > 0:
        raise EraseError(f"--tau: must be > 0, got {args.tau}")
    cfg = cb.BenchConfig(data=args.data, data_dir=args.data_dir, forget=args.forget, seeds=(2 if args.quick else 5) if args.seeds is None else args.seeds,
                         quick=args.quick, tau=DEFAULT_TAU if args.tau is None else args.tau, normalize=args.normalize,
                         tune=args.data == "digits",  # CIFAR-10 runs the official scripts' rates
                         **({"methods": ("Retrain", *[m for m in args.methods if m != "Retrain"])} if args.methods else {}))
    unknown = set(cfg.methods) - set(cb.M.METHODS)
    if unknown:
        raise EraseError(f"--methods: unknown classification method(s) {', '.join(sorted(unknown))} "
                         f"(choose from {', '.join(cb.M.METHODS)})")
    cb.run(cfg, args.out / "classification")  # every bench writes --out D into D/<bench>/
    return 0


def run(args: argparse.Namespace) -> int:
    import torch

    from erase.errors import EraseError

    overrides = {k: getattr(args, k) for k in ("unet", "text_encoder", "lora") if getattr(args, k, None)}
    if overrides and args.name not in ("digits-world", "retrain-rate", "erasure"):
        flag = "--" + next(iter(overrides)).replace("_", "-")
        raise EraseError(f"{flag}: erase bench {args.name} trains or builds its own models; component overrides apply "
                         "to digits-world, retrain-rate and erasure (the --model side)")

    if args.name == "classification":
        return run_classification(args)
    if args.name in ("speed", "generation", "edit", "attacks"):
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
    if overrides:
        result["overrides"] = overrides
    measured, images = measure(args.model, prompts, args, judges)
    out = args.out / args.name
    cols = args.per_digit if args.per_digit <= 50 else 25  # one digit per row when it fits
    if args.name == "erasure":
        base, base_images = measure(args.base, prompts, args, judges, overrides=False)
        result.update(dw.compare(measured, base, args.digits or args.digit, base_model=args.base))
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
